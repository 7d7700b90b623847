//! The storage seam: everything durable the engine keeps goes through the interfaces in this
//! module, and nothing above it names a backend's type.
//!
//! - A [`RecordLog`] is an append-only log of records with offsets: a topic's partition, a
//!   subscription's checkpoints, a subscription's dead-letter operations.
//! - A [`Storage`] is a backend: it keeps the topics' and subscriptions' metadata (their
//!   configurations), and opens the logs under them.
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
//!   opened again (what reached the medium is unknown; a reopen finds out).
//! - Records below [`RecordLog::start_offset`] were removed by retention or trimming.
//! - Methods block (they may do I/O): call them from a blocking thread, except
//!   [`RecordLog::read`] near the end, which is served from memory or the page cache and may
//!   run on an async task (see `partition.rs`), and the getters.

mod disk;
mod memory;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::TopicConfig;
use crate::error::EngineError;
use crate::subscription::spec::SubscriptionSpec;

/// A part of the store that is missing or unreadable, for readiness reports.
pub use keel_api::health::DataDirDamage;

#[cfg(test)]
pub(crate) use disk::log_for_tests as disk_log_for_tests;
pub use disk::{DiskStorage, LogSettings};
pub use memory::{Faults, MemoryStorage};

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

    /// Replaces the whole log with `payloads` at offsets from 0, atomically: after a crash the
    /// log holds either its old records or exactly these. (Compaction of a log of operations.)
    fn rewrite(&mut self, timestamp_ms: i64, payloads: &[&[u8]]) -> Result<(), StorageError>;
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

/// The logs of one subscription, as [`Storage::open_subscription`] returns them. (Per-key
/// handler state joins them here.)
pub struct SubscriptionLogs {
    /// Checkpoints, newest last.
    pub checkpoints: Box<dyn RecordLog>,
    /// Operations of the dead-letter queue.
    pub dead_letters: Box<dyn RecordLog>,
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

    /// Deletes a topic and everything under it, durably.
    fn delete_topic(&self, name: &str) -> Result<(), EngineError>;

    /// Opens (recovering) one partition of a stored topic.
    fn open_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<dyn RecordLog>, StorageError>;

    /// Every subscription stored, by name (none when subscriptions are damaged).
    fn subscriptions(&self) -> Result<Vec<StoredSubscription>, EngineError>;

    /// Stores a new subscription with its first checkpoint (and an empty dead-letter queue),
    /// durably and all or nothing.
    fn create_subscription(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
        checkpoint: &[u8],
    ) -> Result<(), EngineError>;

    /// Opens (recovering) a stored subscription's logs.
    fn open_subscription(&self, name: &str) -> Result<SubscriptionLogs, EngineError>;

    /// Deletes a subscription and its logs, durably.
    fn delete_subscription(&self, name: &str) -> Result<(), EngineError>;
}
