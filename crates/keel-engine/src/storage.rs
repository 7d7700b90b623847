//! The storage seam: everything durable the engine keeps goes through the interfaces in this
//! module, and nothing above it names a backend's type.
//!
//! - A [`RecordLog`] is an append-only log of records with offsets: a topic's partition, a
//!   subscription's checkpoints, a subscription's dead-letter operations.
//! - A [`Storage`] is a backend: it keeps the topics' and subscriptions' metadata (their
//!   configurations), the alert rules and the API tokens, and opens the logs under them.
//!
//! Two backends implement it:
//! - [`DiskStorage`]: a data directory on local disk; each log is a `keel-log` log
//!   (`storage/disk.rs`, the default of `keel serve`);
//! - [`MemoryStorage`]: everything in memory, with seeded faults (failed appends and
//!   fsyncs, unsynced records lost, or a prefix of them kept, in a simulated crash) for
//!   in-process crash tests (`storage/memory.rs`).
//!
//! A new backend (cluster mode on NATS JetStream, say) implements [`Storage`] and
//! [`RecordLog`]; topics, publishing, subscriptions, delivery and recovery are written once,
//! above this seam.
//!
//! Contract of every [`RecordLog`]:
//! - Offsets are dense and start at 0; [`RecordLog::append`] assigns the next ones in order.
//! - A record is visible to [`RecordLog::read`] and counted by [`RecordLog::next_offset`] only
//!   once the append that holds it returned `Ok`; with `sync`, it is durable by then.
//! - After an append or sync failed, the log refuses every later append and sync until it is
//!   opened again (what reached the medium is unknown; a reopen finds out). One exception:
//!   an append refused with [`StorageError::Full`] kept nothing (not even across a crash),
//!   and the log takes appends again. Nor is one refused with [`StorageError::Unavailable`]
//!   (a replicated backend without a quorum; a disk log that found no file descriptor left to
//!   start a new segment, which kept nothing): the log takes appends again.
//! - Records below [`RecordLog::start_offset`] were removed by retention or trimming.
//! - Methods block (they may do I/O): call them from a blocking thread, except
//!   [`RecordLog::read`] near the end, which is served from memory or the page cache and may
//!   run on an async task (see `partition.rs`), and the getters.

mod disk;
mod memory;
mod table_map;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::TopicConfig;
use crate::error::EngineError;
use crate::subscription::spec::SubscriptionSpec;
use crate::tokens::TokenRecord;
use keel_api::alerts::AlertRule;

/// A part of the store that is missing or unreadable, for readiness reports.
pub use keel_api::health::DataDirDamage;

#[cfg(test)]
pub(crate) use disk::log_for_tests as disk_log_for_tests;
pub use disk::{DiskStorage, LogSettings};
pub use memory::{Faults, MemoryStorage};
pub use table_map::TableMap;

/// A record read from a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its offset in the log.
    pub offset: u64,
    /// When it was appended, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The bytes appended.
    pub payload: Vec<u8>,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Whole segments (or chunks) removed.
    pub segments: usize,
    /// Bytes freed.
    pub bytes: u64,
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The offset asked for is not in the log.
    #[error("offset {offset} is out of range [{start_offset}, {next_offset}]")]
    OffsetOutOfRange {
        /// Offset asked for.
        offset: u64,
        /// First offset kept.
        start_offset: u64,
        /// Next offset to be assigned.
        next_offset: u64,
    },
    /// Stored bytes failed a check (a checksum, a format) where they are known to be durable:
    /// restore from a backup or a replica.
    #[error("stored data is corrupt: {source}")]
    Corrupt {
        /// The backend's report.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The device is full: an append was refused and nothing of it kept; the log takes
    /// writes again (one may succeed once space returns).
    #[error("the device is full: {source}")]
    Full {
        /// The backend's report.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend cannot take the write now (a replicated backend without a quorum, or
    /// without a connection; a disk log out of file descriptors to start a new segment): the
    /// append may or may not have been kept (a retry with the same event ids is safe: dedupe),
    /// and the log takes writes again.
    #[error("the storage is unavailable: {source}")]
    Unavailable {
        /// The backend's report.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An identified append found some of its records stored by an earlier append (within
    /// the log's dedupe window) and not the others. Each of them is stored now (once), but
    /// not at consecutive offsets; appending each alone answers its offset.
    #[error("some records of the append were stored by an earlier append and others not")]
    PartlyStored,
    /// A conditional append found another record appended first (another writer, in a
    /// cluster); nothing of it was appended, and the log takes writes again.
    #[error(
        "the log's next offset is {next_offset}, not {expected_next_offset}: another writer appended first"
    )]
    Conflict {
        /// The next offset the append expected.
        expected_next_offset: u64,
        /// The next offset found (as far as known; at least this).
        next_offset: u64,
    },
    /// An earlier append or sync failed; the log takes no more writes until it is reopened.
    #[error("the log stopped accepting writes after an earlier failure: {cause}")]
    Poisoned {
        /// The first failure, as text.
        cause: String,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Any other failure of the backend.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// How an identified append went ([`RecordLog::append_identified`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The offset of the first record.
    pub first_offset: u64,
    /// Whether records were found stored already, by an earlier append of the same ids
    /// (all of them, or some with the others appended right after them): the offsets are
    /// theirs, and no keys are to be handed on for them.
    pub already_stored: bool,
}

/// An append-only log of records. Shared by readers and one writer: implementations are
/// `Send + Sync`. See the module documentation for the contract.
pub trait RecordLog: Send + Sync + 'static {
    /// Appends `payloads` stamped `timestamp_ms`, as one commit (group commit: one write and
    /// at most one fsync), and returns the first one's offset. With `sync` the records are
    /// durable when this returns `Ok`.
    fn append(
        &self,
        timestamp_ms: i64,
        payloads: &[&[u8]],
        sync: bool,
    ) -> Result<u64, StorageError>;

    /// Appends like [`RecordLog::append`] only if the log's next offset is
    /// `expected_next_offset` (no record appended since the caller looked), else fails with
    /// [`StorageError::Conflict`] and appends nothing. The default checks the next offset
    /// itself, which is exact for a log that only its caller writes (a partition's writer
    /// task, on one node); a log that several nodes write checks at the storage.
    fn append_expecting(
        &self,
        timestamp_ms: i64,
        payloads: &[&[u8]],
        sync: bool,
        expected_next_offset: u64,
    ) -> Result<u64, StorageError> {
        let next_offset = self.next_offset();
        if next_offset != expected_next_offset {
            return Err(StorageError::Conflict {
                expected_next_offset,
                next_offset,
            });
        }
        self.append(timestamp_ms, payloads, sync)
    }

    /// Whether the log dedupes appends by the ids [`RecordLog::append_identified`] gives (a
    /// replicated backend, where an append that seemed to fail may still be stored, and
    /// where several nodes append: its retry must not store the records twice).
    fn dedupes(&self) -> bool {
        false
    }

    /// Appends like [`RecordLog::append`], each record named by its id in `ids` (one per
    /// payload, unique). A log that dedupes answers the earlier records' offsets when all
    /// were stored by an earlier append within its window (`already_stored`), and fails with
    /// [`StorageError::PartlyStored`] when only some were. The default ignores the ids.
    fn append_identified(
        &self,
        timestamp_ms: i64,
        payloads: &[&[u8]],
        ids: &[String],
        sync: bool,
    ) -> Result<Appended, StorageError> {
        debug_assert_eq!(ids.len(), payloads.len());
        let first_offset = self.append(timestamp_ms, payloads, sync)?;
        Ok(Appended {
            first_offset,
            already_stored: false,
        })
    }

    /// Makes everything appended durable.
    fn sync(&self) -> Result<(), StorageError>;

    /// Up to `records_max` records from `from` in offset order, stopping before `bytes_max`
    /// bytes of payload (at least one record when any is there). Empty at the end.
    fn read(
        &self,
        from: u64,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Record>, StorageError>;

    /// The first offset kept.
    fn start_offset(&self) -> u64;

    /// One past the last visible record.
    fn next_offset(&self) -> u64;

    /// [`RecordLog::next_offset`] after asking the storage: a log other nodes append to
    /// learns of their records by following it, a little later; asked, it catches up at once
    /// (a read beyond the end it knows asks, before it refuses). Blocks; the default only
    /// answers [`RecordLog::next_offset`].
    fn refresh_next_offset(&self) -> Result<u64, StorageError> {
        Ok(self.next_offset())
    }

    /// The next offset as it moves: a reader at the end waits for it to change.
    fn watch_next_offset(&self) -> watch::Receiver<u64>;

    /// Bytes stored.
    fn size_bytes(&self) -> u64;

    /// Bytes of a torn tail that recovery cut when the log was opened.
    fn truncated_at_open_bytes(&self) -> u64;

    /// The first offset appended at or after `timestamp_ms` (the next offset when none is).
    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<u64, StorageError>;

    /// Removes the oldest records while they are older than `age_ms_max` or the log is larger
    /// than `bytes_max`, in whole segments, never the newest one.
    fn apply_retention(
        &self,
        now_ms: i64,
        age_ms_max: Option<u64>,
        bytes_max: Option<u64>,
    ) -> Result<Trimmed, StorageError>;

    /// Removes old records that are no longer needed, all below `offset`, in whole segments
    /// (never the newest one): `start_offset` stays at or below `offset`.
    fn remove_before(&self, offset: u64) -> Result<Trimmed, StorageError>;

    /// Replaces the whole log with `payloads` at offsets from 0, atomically: after a crash the
    /// log holds either its old records or exactly these. (Compaction of a log of operations.)
    fn rewrite(&mut self, timestamp_ms: i64, payloads: &[&[u8]]) -> Result<(), StorageError>;
}

/// The least key greater than every key that starts with `prefix` (`None`: every key from
/// `prefix` on starts with it, as when it is empty or all `0xFF`), for a backend's range
/// bound.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let kept = prefix.iter().rposition(|&byte| byte != 0xFF)?;
    let mut end = prefix[..=kept].to_vec();
    end[kept] += 1;
    Some(end)
}

/// A stored value found by name: the name, and the value or why it cannot be read.
pub type Listed<T> = (String, Result<T, String>);

/// A key and its value in a [`StateTable`].
pub type TableEntry = (Vec<u8>, Vec<u8>);
/// A key and its new value (none: removed) in a [`StateTable::write`].
pub type TableWrite = (Vec<u8>, Option<Vec<u8>>);

/// An ordered table of byte keys and values: a stateful subscription keeps its per-key state
/// in one, and a topic its per-key index of events. On disk with a bounded cache, so memory
/// stays flat however many keys there are.
///
/// Writes are visible at once and become durable together at the next
/// [`StateTable::snapshot`]; a crash goes back to the last snapshot, whole. Each write carries
/// a *mark* (the owner's record of what the table holds, such as how far a log of commits is
/// applied), stored atomically with it: after a crash, [`StateTable::mark`] says what the
/// snapshot held, so its owner replays from there. Methods block.
pub trait StateTable: Send + Sync + 'static {
    /// The value of `key`, with every write so far.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// The values of `keys`, in order, as one read (a backend overrides it to read them in
    /// one transaction).
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        keys.iter().map(|key| self.get(key)).collect()
    }

    /// Up to `max` entries whose key starts with `prefix` and sorts after `after`, in key
    /// order.
    fn scan(
        &self,
        prefix: &[u8],
        after: &[u8],
        max: usize,
    ) -> Result<Vec<TableEntry>, StorageError>;

    /// The entry with the greatest key that starts with `prefix`, if any.
    fn last(&self, prefix: &[u8]) -> Result<Option<TableEntry>, StorageError>;

    /// Sets (`Some`) or removes (`None`) keys and the mark, atomically; durable at the next
    /// snapshot. After a failure the table takes no more writes until it is opened again.
    fn write(&self, writes: &[TableWrite], mark: &[u8]) -> Result<(), StorageError>;

    /// Removes every key and sets the mark, atomically; durable at the next snapshot.
    fn clear(&self, mark: &[u8]) -> Result<(), StorageError>;

    /// Makes every write so far durable, with its mark.
    fn snapshot(&self) -> Result<(), StorageError>;

    /// The mark of the last write (after an open: of the last snapshot); none before any.
    fn mark(&self) -> Result<Option<Vec<u8>>, StorageError>;
}

/// What a stateful subscription stores its per-key state in, as [`Storage::open_state`]
/// returns it.
pub struct StateLogs {
    /// Commits (state changes and emitted events), each durable before its ack is answered.
    pub commits: Box<dyn RecordLog>,
    /// The keys' states, snapshotted now and then: a crash replays `commits` from the mark.
    pub table: Box<dyn StateTable>,
}

/// Which kind of metadata an operation touches, for [`Storage::check_usable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// Topics.
    Topics,
    /// Subscriptions.
    Subscriptions,
}

/// A topic found in storage: its name, and its configuration or why it cannot be read.
#[derive(Debug)]
pub struct StoredTopic {
    /// The name.
    pub name: String,
    /// The configuration, or why it cannot be read.
    pub config: Result<TopicConfig, String>,
}

/// A subscription found in storage: its name, and its spec or why it cannot be read.
#[derive(Debug)]
pub struct StoredSubscription {
    /// The name.
    pub name: String,
    /// The spec, or why it cannot be read.
    pub spec: Result<SubscriptionSpec, String>,
}

/// An alert rule found in storage: its name, and the rule or why it cannot be read.
#[derive(Debug)]
pub struct StoredAlertRule {
    /// The name.
    pub name: String,
    /// The rule, or why it cannot be read.
    pub rule: Result<AlertRule, String>,
}

/// The logs of one subscription, as [`Storage::open_subscription`] returns them. (A stateful
/// subscription's state is opened apart: [`Storage::open_state`].)
pub struct SubscriptionLogs {
    /// Checkpoints, newest last.
    pub checkpoints: Box<dyn RecordLog>,
    /// Operations of the dead-letter queue.
    pub dead_letters: Box<dyn RecordLog>,
    /// A stateful subscription's state: none as opened here; the engine adds it from
    /// [`Storage::open_state`].
    pub state: Option<StateLogs>,
}

/// A storage backend: topic and subscription metadata, and the logs under them. Methods block.
///
/// Invariant every backend keeps: what it lost (a directory, a manifest) is reported by
/// [`Storage::damage`] and refused by [`Storage::check_usable`], never taken for "nothing
/// there", so no acknowledged event turns into "no such topic".
pub trait Storage: Send + Sync + 'static {
    /// Parts of the store that are missing or unreadable; empty when it is whole.
    fn damage(&self) -> Vec<DataDirDamage>;

    /// Fails when metadata of `area` is damaged: nothing may be listed or created there.
    fn check_usable(&self, area: Area) -> Result<(), EngineError>;

    /// Every topic stored, by name (none when topics are damaged).
    fn topics(&self) -> Result<Vec<StoredTopic>, EngineError>;

    /// Stores a new topic and creates its empty partitions, durably and all or nothing.
    fn create_topic(&self, name: &str, config: &TopicConfig) -> Result<(), EngineError>;

    /// Deletes a topic and everything under it (its key index too), durably.
    fn delete_topic(&self, name: &str) -> Result<(), EngineError>;

    /// Opens a stored topic's per-key index (made with the topic by
    /// [`Storage::create_topic`]). The index is a cache the topic's log rebuilds: a missing or
    /// unreadable one is replaced by an empty table (no mark), never an error of the topic.
    fn open_key_index(&self, topic: &str) -> Result<Box<dyn StateTable>, EngineError>;

    /// Opens (recovering) one partition of a stored topic.
    fn open_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<dyn RecordLog>, StorageError>;

    /// Every subscription stored, by name (none when subscriptions are damaged).
    fn subscriptions(&self) -> Result<Vec<StoredSubscription>, EngineError>;

    /// Stores a new subscription with its first checkpoint (and an empty dead-letter queue,
    /// and for a stateful one an empty state), durably and all or nothing.
    fn create_subscription(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
        checkpoint: &[u8],
    ) -> Result<(), EngineError>;

    /// Replaces a stored subscription's spec (an update in place: its logs are kept),
    /// durably and atomically: after a crash the old spec or the new one is there, whole.
    fn replace_subscription_spec(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
    ) -> Result<(), EngineError>;

    /// Opens (recovering) a stored subscription's logs.
    fn open_subscription(&self, name: &str) -> Result<SubscriptionLogs, EngineError>;

    /// Opens (recovering) the per-key state of a stored stateful subscription (made with it
    /// by [`Storage::create_subscription`] when its spec is stateful).
    fn open_state(&self, name: &str) -> Result<StateLogs, EngineError>;

    /// Deletes a subscription and its logs, durably.
    fn delete_subscription(&self, name: &str) -> Result<(), EngineError>;

    /// Every alert rule stored (through the API or the configuration), by name.
    fn alert_rules(&self) -> Result<Vec<StoredAlertRule>, EngineError>;

    /// Stores an alert rule, replacing one of that name, durably and atomically: after a
    /// crash the old rule or the new one is there, whole.
    fn put_alert_rule(&self, name: &str, rule: &AlertRule) -> Result<(), EngineError>;

    /// Deletes an alert rule, durably; none of that name is not an error.
    fn delete_alert_rule(&self, name: &str) -> Result<(), EngineError>;

    /// Every API token stored, by id (an unreadable one is logged and left out: it
    /// authenticates nothing).
    fn tokens(&self) -> Result<Vec<TokenRecord>, EngineError>;

    /// Stores a token, durably.
    fn put_token(&self, token: &TokenRecord) -> Result<(), EngineError>;

    /// Deletes a token, durably; none of that id is not an error.
    fn delete_token(&self, id: &str) -> Result<(), EngineError>;

    /// Tells of changes to the tokens that other writers made (the other nodes of a
    /// cluster): the value moves on with each, and its holder reads them again. None for a
    /// store only this engine writes.
    fn token_changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// Bytes the medium under the store can still take for keel (on disk: the free space an
    /// unprivileged process may use, `statvfs`'s `f_bavail` blocks), or none when the backend
    /// has no such bound. Cheap (one system call): the engine asks about once a second, from
    /// a blocking thread.
    fn free_bytes(&self) -> Result<Option<u64>, StorageError>;

    /// Bytes the store holds, all of it: logs, indexes, tables, metadata, and deleted
    /// directories not removed yet. May visit every file: the engine asks only when a cap on
    /// it is set (`data_dir_bytes_max`), about once a second, from a blocking thread.
    fn stored_bytes(&self) -> Result<u64, StorageError>;
}
