//! A topic's per-key index of events: for every `partitionkey`, its events' positions by
//! version (the key's k-th event in log order has version k), kept in a [`StateTable`] so
//! that reading one key's stream touches only that key's records, never the rest of the log.
//!
//! The log stays the truth; the index is a cache it rebuilds:
//!
//! - One *follower* task per partition indexes the partition's records behind the writer
//!   (like a subscription's reader: it waits on the log's next offset) and writes, per batch
//!   of records, one table write: an entry per keyed event, with the *mark* (per partition,
//!   the offset indexed up to). Nothing of this is on the publish path: the writer never waits
//!   for it. While nobody reads, a follower gathers records for up to
//!   [`KEY_INDEX_GATHER_WAIT`] before a write, so the table's transactions stay few at any
//!   publish rate; a waiting reader makes it index at once.
//! - The follower takes the records' keys from the partition's writer ([`KeyHandoff`]: after
//!   each commit, its offsets and its keyed events' keys, which routing read already), so it
//!   neither reads records back nor parses them. It reads the log instead only for what was
//!   not handed: after a restart, the records between the mark and this run's first commit;
//!   and records whose keys the writer dropped because the follower fell far behind.
//! - A snapshot (every [`KEY_INDEX_SNAPSHOT_RECORDS`] records or
//!   [`KEY_INDEX_SNAPSHOT_INTERVAL`], and at shutdown) makes the table durable with its mark.
//!   After a crash the table is its last snapshot, whole, and the followers read the log again
//!   from the mark: that is the rebuild (a table lost or unreadable starts from offset 0).
//! - Readers (a key's stream, a conditional append's version check) first wait until the
//!   partition is indexed up to the log's next offset as they found it, so every answer counts
//!   every event appended before the request.
//!
//! Table layout (big-endian numbers, so a prefix scan returns a key's events in version order,
//! and its last entry gives its version):
//!
//! ```text
//! b'e' ‖ u32 key length ‖ key ‖ u64 version  →  u32 partition ‖ u64 offset
//! mark                                        =  u8 format (2) ‖ u64 indexed-up-to offset,
//!                                                per partition
//! ```
//!
//! The key's length in the entry prefix keeps key "a" from matching the entries of "ab". A
//! key's version (its event count) is the version of its last entry: retention leaves entries
//! in place, so it never goes down. (Format 1 also kept each key's version as an entry of its
//! own: a second insert per key and batch. Its mark has no format byte, so an index of format
//! 1 is rebuilt from the log at open.)
//!
//! Invariants: a key lives in one partition (routing by key), so one follower assigns all its
//! versions, in log order, each once; the table holds exactly the entries of the records below
//! the mark, whether their keys were handed or read (the handed key is the event's validated
//! `partitionkey`, the one [`event::key_of`] reads from the stored record). An index ahead of
//! its log (a crash lost records that were indexed but not fsynced, with a `fsync` policy
//! other than `always`) is cleared and rebuilt at open.

mod handoff;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

use crate::error::{EngineError, StreamError};
use crate::event;
use crate::limits::{
    KEY_INDEX_GATHER_RECORDS, KEY_INDEX_GATHER_WAIT, KEY_INDEX_SNAPSHOT_INTERVAL,
    KEY_INDEX_SNAPSHOT_RECORDS, KEY_INDEX_VERSION_CACHE_KEYS, KEY_INDEX_WAIT_MAX,
    KEY_STREAM_ENTRIES_SCANNED_MAX, READ_BYTES_MAX, READ_RECORDS_MAX,
};
use crate::partition::Partition;
use crate::storage::{Record, RecordLog, StateTable, Storage, StorageError, TableWrite};
use crate::supervisor::Supervisor;
pub(crate) use handoff::KeyHandoff;
use handoff::{KeyedRecord, Take};

/// Prefix of the entries of events.
const ENTRY_PREFIX: u8 = b'e';
/// Bytes of an entry's value: partition and offset.
const ENTRY_VALUE_BYTES: usize = 4 + 8;
/// The table layout's format, the mark's first byte. A mark of another format (format 1, the
/// first, had no such byte and kept each key's version in an entry of its own) is refused at
/// open, so the index is rebuilt from the log.
const MARK_FORMAT: u8 = 2;

/// How far a partition is indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Progress {
    /// Every record below this offset is indexed.
    Indexed(u64),
    /// Indexing stopped: the index cannot answer for this partition until a restart.
    Failed(String),
}

/// One event of a key's stream.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    /// Its version: it is the key's `version`-th event.
    pub version: u64,
    /// Its partition.
    pub partition: u32,
    /// The stored record (offset, timestamp, event).
    pub record: Record,
}

/// A page of one key's events, in version order.
#[derive(Debug, Clone)]
pub struct KeyStream {
    /// The key.
    pub key: String,
    /// The events from the version asked for, without those retention removed.
    pub records: Vec<StreamRecord>,
    /// The key's version: how many events it has had (retention does not lower it).
    pub version: u64,
    /// The version to read from next; past `version` once the stream is read whole.
    pub next_version: u64,
}

/// A topic's key index: the table, the followers' progress, and the per-partition turns of
/// conditional appends.
pub(crate) struct KeyIndex {
    topic: String,
    table: Arc<dyn StateTable>,
    /// Per partition: the offset indexed up to, as the table holds it (the mark).
    covered: Mutex<Vec<u64>>,
    /// Per partition: how far it is indexed, as readers wait on it.
    progress: Vec<watch::Sender<Progress>>,
    /// Per partition: conditional appends take turns, from their version check to the end of
    /// their append.
    append_turns: Vec<Arc<tokio::sync::Mutex<()>>>,
    /// Per partition: a reader waits for the follower, which then indexes at once instead of
    /// gathering more records first.
    demand: Vec<Notify>,
    /// The versions of keys indexed lately, as the table holds them (at most
    /// `KEY_INDEX_VERSION_CACHE_KEYS`, emptied when full): spares the followers a table read
    /// per keyed event. Only followers write it, after their table write succeeded.
    versions: Mutex<HashMap<String, u64>>,
    /// Records indexed since the last snapshot.
    unsnapshotted: AtomicU64,
    snapshot_due: Notify,
    stopping: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Told of the records the followers read from the log, by partition: records no writer
    /// of this process handed over (another node's, in a cluster), which the topic's dedupe
    /// table learns from.
    read_observer: std::sync::OnceLock<ReadObserver>,
}

/// What [`KeyIndex::observe_reads`] calls with the records a follower read, by partition.
pub(crate) type ReadObserver = Box<dyn Fn(u32, &[crate::storage::Record]) + Send + Sync>;

impl KeyIndex {
    /// Opens a topic's index: reads its mark, and clears it when it cannot be used (no mark,
    /// another partition count, ahead of a log). Blocking.
    pub(crate) fn open(
        storage: &dyn Storage,
        topic: &str,
        partitions: &[Partition],
    ) -> Result<Arc<Self>, EngineError> {
        let table: Arc<dyn StateTable> = Arc::from(storage.open_key_index(topic)?);
        let stored = table
            .mark()
            .map_err(|source| storage_error(topic, source))?;
        let mark = stored
            .as_deref()
            .and_then(|mark| decode_mark(mark, partitions.len()));
        let ahead = mark.as_ref().and_then(|mark| {
            partitions
                .iter()
                .zip(mark)
                .position(|(partition, &covered)| {
                    partition
                        .record_log()
                        .is_ok_and(|log| covered > log.next_offset())
                })
        });
        let covered = match (mark, ahead) {
            (Some(mark), None) => mark,
            (mark, ahead) => {
                if let Some(partition) = ahead {
                    tracing::warn!(
                        topic,
                        partition,
                        "the key index is ahead of the log (a crash lost unsynced records); rebuilding it"
                    );
                } else if mark.is_none() && stored.is_some() {
                    tracing::warn!(
                        topic,
                        "the key index's mark is unreadable or of an older format; rebuilding it"
                    );
                }
                let zeros = vec![0; partitions.len()];
                table
                    .clear(&encode_mark(&zeros))
                    .map_err(|source| storage_error(topic, source))?;
                zeros
            }
        };
        let progress = covered
            .iter()
            .map(|&offset| watch::Sender::new(Progress::Indexed(offset)))
            .collect();
        let append_turns = partitions
            .iter()
            .map(|_| Arc::new(tokio::sync::Mutex::new(())))
            .collect();
        Ok(Arc::new(KeyIndex {
            topic: topic.to_owned(),
            table,
            covered: Mutex::new(covered),
            progress,
            append_turns,
            demand: partitions.iter().map(|_| Notify::new()).collect(),
            versions: Mutex::new(HashMap::new()),
            unsnapshotted: AtomicU64::new(0),
            snapshot_due: Notify::new(),
            stopping: watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
            read_observer: std::sync::OnceLock::new(),
        }))
    }

    /// Starts a follower per partition and the snapshot task under `supervisor`, named
    /// `topic/{topic}/key_index/{partition}` and `topic/{topic}/key_index/snapshots`: each
    /// starts over from what the table covers; a follower that keeps failing fails its
    /// partition's index (streams answer 503), the snapshot task all of them. Call inside the
    /// runtime.
    /// Has `observer` told of every record a follower reads from the log (set once).
    pub(crate) fn observe_reads(&self, observer: ReadObserver) {
        let _ = self.read_observer.set(observer);
    }

    pub(crate) fn start(self: &Arc<Self>, partitions: &[Partition], supervisor: &Arc<Supervisor>) {
        let mut tasks = self.tasks.lock().expect("tasks lock");
        for (number, partition) in (0u32..).zip(partitions) {
            match partition.record_log() {
                Ok(log) => {
                    let (index, failing) = (self.clone(), self.clone());
                    let handoff = partition.key_handoff();
                    tasks.push(supervisor.spawn(
                        format!("topic/{}/key_index/{number}", self.topic),
                        Box::new(move |reason| failing.fail(number, reason)),
                        move || index.clone().follow(number, log.clone(), handoff.clone()),
                    ));
                }
                Err(error) => self.fail(number, error.to_string()),
            }
        }
        let (index, failing) = (self.clone(), self.clone());
        let partitions = partitions.len() as u32;
        tasks.push(supervisor.spawn(
            format!("topic/{}/key_index/snapshots", self.topic),
            Box::new(move |reason| {
                for number in 0..partitions {
                    failing.fail(number, reason.clone());
                }
            }),
            move || index.clone().snapshots(),
        ));
    }

    /// Stops the tasks and snapshots what they indexed, so a restart reads nothing again.
    pub(crate) async fn shut_down(self: &Arc<Self>) {
        self.stopping.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for task in tasks {
            let _ = task.await;
        }
        let index = self.clone();
        let snapshot = tokio::task::spawn_blocking(move || index.table.snapshot()).await;
        if let Ok(Err(error)) = snapshot {
            tracing::warn!(topic = %self.topic, %error, "the final snapshot of the key index failed; the next start rebuilds from the last one");
        }
    }

    /// The turn of conditional appends to `partition`.
    pub(crate) fn append_turn(&self, partition: u32) -> Arc<tokio::sync::Mutex<()>> {
        self.append_turns[partition as usize].clone()
    }

    fn fail(&self, partition: u32, reason: String) {
        tracing::error!(topic = %self.topic, partition, %reason, "the key index stops for this partition until a restart");
        self.progress[partition as usize].send_replace(Progress::Failed(reason));
    }

    /// The offset partition `partition` is indexed up to: every version read now counts the
    /// records below it.
    pub(crate) fn indexed_up_to(&self, partition: u32) -> u64 {
        self.covered(partition)
    }

    fn covered(&self, partition: u32) -> u64 {
        self.covered.lock().expect("covered lock")[partition as usize]
    }

    /// Indexes the partition's records as they are appended, until stopped or failed.
    async fn follow(
        self: Arc<Self>,
        partition: u32,
        log: Arc<dyn RecordLog>,
        handoff: Arc<KeyHandoff>,
    ) {
        let mut next_offset = log.watch_next_offset();
        let mut stopping = self.stopping.subscribe();
        loop {
            if *stopping.borrow() {
                return;
            }
            let covered = self.covered(partition);
            if log.next_offset() <= covered {
                tokio::select! {
                    changed = next_offset.wait_for(|next| *next > covered) => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = stopping.wait_for(|stopping| *stopping) => return,
                }
                continue;
            }
            if log.next_offset() - covered < KEY_INDEX_GATHER_RECORDS {
                // Gathers records for one table write per `KEY_INDEX_GATHER_WAIT` rather than
                // one per commit (a redb transaction costs far more than indexing a record),
                // unless a reader is waiting.
                tokio::select! {
                    () = tokio::time::sleep(KEY_INDEX_GATHER_WAIT) => {}
                    () = self.demand[partition as usize].notified() => {}
                    _ = stopping.wait_for(|stopping| *stopping) => return,
                }
            }
            let (index, reader, handed) = (self.clone(), log.clone(), handoff.clone());
            let indexed = tokio::task::spawn_blocking(move || {
                index.index_batch(partition, &*reader, &handed)
            })
            .await;
            match indexed {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return self.fail(partition, format!("{error}")),
                Err(panic) => return self.fail(partition, format!("a bug in keel: {panic}")),
            }
        }
    }

    /// Indexes the partition's next records, with the keys its writer handed over or, when it
    /// did not hand the next ones, read from the log: one table write with the mark. Blocking.
    fn index_batch(
        &self,
        partition: u32,
        log: &dyn RecordLog,
        handoff: &KeyHandoff,
    ) -> Result<(), StorageError> {
        let covered = self.covered(partition);
        let end = log.next_offset();
        if end <= covered {
            return Ok(());
        }
        let (keyed, next) = match handoff.take(covered, end) {
            Take::Handed { keyed, next } => (keyed, next),
            Take::ReadLog { up_to } => self.read_keys(partition, log, covered, up_to)?,
        };
        self.write_entries(partition, &keyed, next)?;
        let indexed = next - covered;
        if self.unsnapshotted.fetch_add(indexed, Ordering::Relaxed) + indexed
            >= KEY_INDEX_SNAPSHOT_RECORDS
        {
            self.snapshot_due.notify_one();
        }
        Ok(())
    }

    /// The keyed records among the partition's records from `covered` (at most
    /// `READ_RECORDS_MAX`, below `up_to`), read from the log, and the offset they reach.
    fn read_keys(
        &self,
        partition: u32,
        log: &dyn RecordLog,
        covered: u64,
        up_to: u64,
    ) -> Result<(Vec<KeyedRecord>, u64), StorageError> {
        let mut from = covered;
        let start_offset = log.start_offset();
        if from < start_offset {
            // Only when the index was rebuilt after retention removed records: their events
            // are not counted in their keys' versions.
            tracing::warn!(topic = %self.topic, partition, from, start_offset, "retention removed records before the key index read them; their keys' versions leave them out");
            from = start_offset;
        }
        if from >= up_to {
            return Ok((Vec::new(), from));
        }
        let records_max = usize::try_from(up_to - from)
            .map_or(READ_RECORDS_MAX, |wanted| wanted.min(READ_RECORDS_MAX));
        let records = match log.read(from, records_max, READ_BYTES_MAX) {
            Err(StorageError::OffsetOutOfRange { start_offset, .. }) if from < start_offset => {
                Vec::new()
            }
            other => other?,
        };
        if let Some(observer) = self.read_observer.get() {
            observer(partition, &records);
        }
        let next = records
            .last()
            .map_or(from.max(log.start_offset()), |record| record.offset + 1);
        let keyed = records
            .iter()
            .filter_map(|record| Some((record.offset, event::key_of(&record.payload)?)))
            .collect();
        Ok((keyed, next))
    }

    /// Writes the entries of `keyed` (records of `partition`, in offset order), numbering each
    /// key's events on from its version, with the mark `next`; then tells readers.
    fn write_entries(
        &self,
        partition: u32,
        keyed: &[KeyedRecord],
        next: u64,
    ) -> Result<(), StorageError> {
        let mut versions: HashMap<&str, u64> = HashMap::new();
        let mut writes: Vec<TableWrite> = Vec::with_capacity(keyed.len());
        for (offset, key) in keyed {
            let version = match versions.get_mut(key.as_str()) {
                Some(version) => version,
                None => {
                    let cached = self
                        .versions
                        .lock()
                        .expect("versions lock")
                        .get(key)
                        .copied();
                    let stored = match cached {
                        Some(version) => version,
                        None => stored_version(&*self.table, key)?,
                    };
                    versions.entry(key).or_insert(stored)
                }
            };
            *version += 1;
            writes.push((
                entry_key(key, *version),
                Some(entry_value(partition, *offset)),
            ));
        }
        let mut covered = self.covered.lock().expect("covered lock");
        let mut mark = covered.clone();
        mark[partition as usize] = next;
        self.table.write(&writes, &encode_mark(&mark))?;
        *covered = mark;
        drop(covered);
        let mut cache = self.versions.lock().expect("versions lock");
        if cache.len() + versions.len() > KEY_INDEX_VERSION_CACHE_KEYS {
            cache.clear();
        }
        cache.extend(
            versions
                .into_iter()
                .map(|(key, version)| (key.to_owned(), version)),
        );
        drop(cache);
        self.progress[partition as usize].send_replace(Progress::Indexed(next));
        Ok(())
    }

    /// Snapshots the table every `KEY_INDEX_SNAPSHOT_INTERVAL`, or sooner when
    /// `KEY_INDEX_SNAPSHOT_RECORDS` were indexed, while records are indexed.
    async fn snapshots(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        loop {
            tokio::select! {
                () = tokio::time::sleep(KEY_INDEX_SNAPSHOT_INTERVAL) => {}
                () = self.snapshot_due.notified() => {}
                _ = stopping.wait_for(|stopping| *stopping) => return,
            }
            if self.unsnapshotted.swap(0, Ordering::Relaxed) == 0 {
                continue;
            }
            let index = self.clone();
            let snapshot = tokio::task::spawn_blocking(move || index.table.snapshot()).await;
            if let Ok(Err(error)) = snapshot {
                // The table takes no more writes: the followers fail at their next batch.
                tracing::error!(topic = %self.topic, %error, "a snapshot of the key index failed");
                return;
            }
        }
    }

    /// Waits until `partition` is indexed up to the log's next offset as it is now.
    pub(crate) async fn caught_up(
        &self,
        partition: u32,
        log: &dyn RecordLog,
    ) -> Result<(), EngineError> {
        let target = log.next_offset();
        let mut progress = self.progress[partition as usize].subscribe();
        if !matches!(&*progress.borrow(), Progress::Indexed(offset) if *offset >= target) {
            // Kept as a permit when the follower is busy: it will not gather after this batch.
            self.demand[partition as usize].notify_one();
        }
        let reached = progress.wait_for(|progress| match progress {
            Progress::Indexed(offset) => *offset >= target,
            Progress::Failed(_) => true,
        });
        let reason = match tokio::time::timeout(KEY_INDEX_WAIT_MAX, reached).await {
            Ok(Ok(progress)) => match &*progress {
                Progress::Indexed(_) => return Ok(()),
                Progress::Failed(reason) => {
                    format!("{reason}. Restart keel: the index is rebuilt from the log")
                }
            },
            Ok(Err(_)) => return Err(EngineError::ShuttingDown),
            Err(_) => format!(
                "it did not catch up with the log within {}s (it is rebuilding after a restart, or keel is overloaded); retry",
                KEY_INDEX_WAIT_MAX.as_secs()
            ),
        };
        Err(EngineError::Stream(StreamError::IndexUnavailable {
            topic: self.topic.clone(),
            partition,
            reason,
        }))
    }

    /// The key's version (its event count). Blocking; call after [`KeyIndex::caught_up`].
    pub(crate) fn version(&self, key: &str) -> Result<u64, EngineError> {
        stored_version(&*self.table, key).map_err(|source| storage_error(&self.topic, source))
    }

    /// Up to `records_max` of the key's events from `from_version`, leaving out those
    /// retention removed. Reads the index and then only the key's records. Blocking; call
    /// after [`KeyIndex::caught_up`].
    pub(crate) fn read_stream(
        &self,
        log: &dyn RecordLog,
        key: &str,
        from_version: u64,
        records_max: usize,
    ) -> Result<KeyStream, EngineError> {
        assert!(
            from_version >= 1 && records_max >= 1,
            "checked by the caller"
        );
        let failed = |source| storage_error(&self.topic, source);
        let version = stored_version(&*self.table, key).map_err(failed)?;
        let prefix = entry_prefix(key);
        let mut after = entry_key(key, from_version - 1);
        let mut stream = KeyStream {
            key: key.to_owned(),
            records: Vec::new(),
            version,
            next_version: from_version,
        };
        let (mut scanned, mut bytes) = (0, 0);
        while stream.records.len() < records_max && scanned < KEY_STREAM_ENTRIES_SCANNED_MAX {
            let wanted = records_max - stream.records.len();
            let entries = self.table.scan(&prefix, &after, wanted).map_err(failed)?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            after.clone_from(last);
            scanned += entries.len();
            let positions: Vec<(u64, u32, u64)> = entries
                .iter()
                .filter_map(|(key, value)| decode_entry(key, value))
                .collect();
            // Entries whose records retention removed are passed over, not returned.
            let start_offset = log.start_offset();
            let kept: Vec<(u64, u32, u64)> = positions
                .iter()
                .copied()
                .filter(|&(_, _, offset)| offset >= start_offset)
                .collect();
            for (version, partition, record) in read_positions(log, &kept).map_err(failed)? {
                if !stream.records.is_empty() && bytes + record.payload.len() > READ_BYTES_MAX {
                    return Ok(stream);
                }
                bytes += record.payload.len();
                stream.next_version = version + 1;
                stream.records.push(StreamRecord {
                    version,
                    partition,
                    record,
                });
            }
            if let Some(&(version, ..)) = positions.last() {
                stream.next_version = stream.next_version.max(version + 1);
            }
        }
        Ok(stream)
    }
}

/// The records at `positions` (version, partition, offset), reading each run of adjacent
/// offsets at once; a run that retention removed meanwhile is left out.
fn read_positions(
    log: &dyn RecordLog,
    positions: &[(u64, u32, u64)],
) -> Result<Vec<(u64, u32, Record)>, StorageError> {
    let mut found = Vec::with_capacity(positions.len());
    let mut at = 0;
    while at < positions.len() {
        let (_, _, first) = positions[at];
        let run = positions[at..]
            .iter()
            .zip(first..)
            .take_while(|((_, _, offset), expected)| offset == expected)
            .count();
        let records = match log.read(first, run, READ_BYTES_MAX) {
            Err(StorageError::OffsetOutOfRange { .. }) if first < log.start_offset() => Vec::new(),
            other => other?,
        };
        // A read stops early at its byte bound: the rest of the run is read next round.
        let taken = if records.is_empty() {
            run
        } else {
            records.len()
        };
        for ((version, partition, offset), record) in positions[at..at + taken].iter().zip(records)
        {
            assert_eq!(
                record.offset, *offset,
                "the log answers the offsets asked for"
            );
            found.push((*version, *partition, record));
        }
        at += taken;
    }
    Ok(found)
}

/// The key's version: the version of its last entry (entries sort by version), 0 without one.
fn stored_version(table: &dyn StateTable, key: &str) -> Result<u64, StorageError> {
    let prefix = entry_prefix(key);
    let Some((entry, _)) = table.last(&prefix)? else {
        return Ok(0);
    };
    let bytes: [u8; 8] = entry[prefix.len()..]
        .try_into()
        .map_err(|_| corrupt("an entry key"))?;
    Ok(u64::from_be_bytes(bytes))
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt {
        source: format!("the key index holds {what} of the wrong length").into(),
    }
}

fn storage_error(topic: &str, source: StorageError) -> EngineError {
    EngineError::Data(crate::error::DataError::Storage {
        context: format!("the key index of topic {topic:?}"),
        source,
    })
}

fn entry_prefix(key: &str) -> Vec<u8> {
    let length = u32::try_from(key.len()).expect("keys are far below 4 GiB");
    let mut prefix = Vec::with_capacity(1 + 4 + key.len() + 8);
    prefix.push(ENTRY_PREFIX);
    prefix.extend_from_slice(&length.to_be_bytes());
    prefix.extend_from_slice(key.as_bytes());
    prefix
}

fn entry_key(key: &str, version: u64) -> Vec<u8> {
    let mut entry = entry_prefix(key);
    entry.extend_from_slice(&version.to_be_bytes());
    entry
}

fn entry_value(partition: u32, offset: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(ENTRY_VALUE_BYTES);
    value.extend_from_slice(&partition.to_be_bytes());
    value.extend_from_slice(&offset.to_be_bytes());
    value
}

/// (version, partition, offset) of an entry; `None` for bytes that are not one.
fn decode_entry(key: &[u8], value: &[u8]) -> Option<(u64, u32, u64)> {
    let version = u64::from_be_bytes(key.get(key.len().checked_sub(8)?..)?.try_into().ok()?);
    if value.len() != ENTRY_VALUE_BYTES {
        return None;
    }
    let partition = u32::from_be_bytes(value[..4].try_into().ok()?);
    let offset = u64::from_be_bytes(value[4..].try_into().ok()?);
    Some((version, partition, offset))
}

fn encode_mark(covered: &[u64]) -> Vec<u8> {
    std::iter::once(MARK_FORMAT)
        .chain(covered.iter().flat_map(|offset| offset.to_be_bytes()))
        .collect()
}

/// The per-partition offsets of a mark; `None` when it is not one of this format for
/// `partitions`.
fn decode_mark(mark: &[u8], partitions: usize) -> Option<Vec<u64>> {
    let (&MARK_FORMAT, offsets) = mark.split_first()? else {
        return None;
    };
    if offsets.len() != partitions * 8 {
        return None;
    }
    let offsets = offsets
        .chunks_exact(8)
        .map(|chunk| u64::from_be_bytes(chunk.try_into().expect("chunks of 8 bytes")));
    Some(offsets.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a key's entries sort by version, and no other key's entries share its prefix
    // (not even a key it is a prefix of).
    #[test]
    fn entries_of_a_key_sort_by_version_and_only_they_share_its_prefix() {
        let prefix = entry_prefix("a");
        assert!(entry_key("a", 2) < entry_key("a", 256));
        assert!(entry_key("a", 256) < entry_key("a", u64::MAX));
        assert!(entry_key("a", 7).starts_with(&prefix));
        assert!(!entry_key("ab", 1).starts_with(&prefix));
        let value = entry_value(3, 99);
        assert_eq!(decode_entry(&entry_key("a", 5), &value), Some((5, 3, 99)));
        assert_eq!(decode_entry(&entry_key("a", 5), b"short"), None);
    }

    // Goal: the key the writer hands over (the validated event's `partitionkey`, which routed
    // it) is the key the index reads from the stored record after a restart: the top-level
    // `partitionkey`, also behind an escaped member name, never one nested in `data`; keyless
    // events have none. Method: a table of stored events, both ways.
    #[test]
    fn the_key_of_a_stored_event_is_its_top_level_partitionkey() {
        let head = r#"{"specversion":"1.0","source":"s","type":"t","id":"1""#;
        let cases: [(&str, Option<&str>); 5] = [
            (r#","partitionkey":"a"}"#, Some("a")),
            (r#","data":{"partitionkey":"nested"}}"#, None),
            (r#","partitionk\u0065y":"escaped"}"#, Some("escaped")),
            (r#","data":"x"}"#, None),
            (r#","partitionkey":"k\"q"}"#, Some("k\"q")),
        ];
        for (tail, key) in cases {
            let json = format!("{head}{tail}");
            assert_eq!(event::key_of(json.as_bytes()).as_deref(), key, "{json}");
            let handed = event::parse_structured(json.as_bytes()).expect("a valid event");
            assert_eq!(handed.key(), key, "{json}");
        }
    }

    // Goal: a mark round-trips, and one for another partition count is refused.
    #[test]
    fn marks_round_trip_and_check_the_partition_count() {
        let mark = encode_mark(&[0, 7, u64::MAX]);
        assert_eq!(decode_mark(&mark, 3), Some(vec![0, 7, u64::MAX]));
        assert_eq!(decode_mark(&mark, 2), None);
        let first_format = [0u64, 7, 9].map(u64::to_be_bytes).concat();
        assert_eq!(decode_mark(&first_format, 3), None, "format 1 is rebuilt");
    }
}
