//! A [`RecordLog`] on a JetStream stream: offset `n` is stream sequence `n + 1`.
//!
//! Two kinds:
//! - **Shared** (a topic's partition): any node appends. An append of several records is one
//!   atomic batch (ADR-50), so JetStream stores all of them at consecutive sequences or none,
//!   whoever else appends at the same time. Every node follows the stream with an ordered
//!   consumer that keeps the newest records in memory (`tail`), so that readers at the end
//!   (subscriptions, long polls) are served without a request, and learn of other nodes'
//!   appends through [`RecordLog::watch_next_offset`].
//! - **Owned** (a subscription's checkpoints, dead letters, state commits): only the holder
//!   of the subscription's lease appends, on the subject of its lease's epoch (the stream
//!   takes no other: `fence.rs`), and every append expects the last sequence it knows
//!   (`Nats-Expected-Last-Sequence`). A write of a deposed holder is refused by the server,
//!   never stored.
//!
//! Durability is JetStream's: an append returns once the stream's leader has it stored on a
//! quorum of its replicas (each server fsyncs on its `sync_interval`, see
//! `docs/cluster.md`). `sync` is therefore a no-op.
//!
//! Invariants:
//! - `next_offset` only grows, and every offset below it exists in the stream (it was
//!   acknowledged to someone, or delivered by the follower).
//! - `tail` holds records exactly as stored, at their offsets; it never holds an offset at
//!   or past `next_offset`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod direct;
mod follower;
mod publish;

use direct::{direct_get_batch, first_at_or_after};
use follower::follow;
use publish::{PublishFailure, last_sequence_in, publish_batch};

use async_nats::HeaderMap;
use async_nats::jetstream::stream;
use keel_engine::storage::{Appended, Record, RecordLog, StorageError, Trimmed};
use tokio::sync::watch;

use crate::error::ClusterError;
use crate::nats::Nats;

/// The keel timestamp of a record, milliseconds since the Unix epoch, as a header: stream
/// timestamps are the leader's clock, and a record's time is the writer's.
const TIME_HEADER: &str = "Keel-Time";
/// Most records one atomic batch may hold (the server's bound, ADR-50).
pub(crate) const BATCH_RECORDS_MAX: usize = 1000;
/// Records the tail keeps in memory, per followed log.
const TAIL_RECORDS_MAX: usize = 4096;
/// Bytes of payload the tail keeps in memory, per followed log.
const TAIL_BYTES_MAX: usize = 8 * 1024 * 1024;
/// A direct read served by a replica that has not yet stored a record known to exist is
/// tried again this often, this many times (replicas catch up within milliseconds).
const LAGGING_REPLICA_RETRY: Duration = Duration::from_millis(10);
const LAGGING_REPLICA_RETRIES_MAX: u32 = 200;
/// Most bytes one direct read asks for (the server takes an `int`; larger asks are bounded
/// by the records count anyway).
const DIRECT_READ_BYTES_MAX: usize = 64 * 1024 * 1024;
/// A follower that received nothing for this long checks that its stream did not move on
/// without it (a consumer left on a server that went away).
const FOLLOWER_IDLE_CHECK: Duration = Duration::from_secs(5);
/// A follower whose consumer failed starts again after this pause.
const FOLLOWER_RESTART_DELAY: Duration = Duration::from_millis(500);

/// Who writes a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writers {
    /// Any node (a topic's partition).
    Any,
    /// Only the lease holder, which expects the last sequence it knows.
    LeaseHolder,
}

/// A log on one stream.
pub(crate) struct JetStreamLog {
    nats: Nats,
    stream: String,
    subject: String,
    writers: Writers,
    /// Whether [`RecordLog::remove_before`] removes (a log whose records rebuild an in-memory
    /// table keeps them all).
    trimmed: bool,
    shared: Arc<Shared>,
    follower: Option<tokio::task::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    next_offset: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    start_offset: u64,
    next_offset: u64,
    bytes: u64,
    tail: BTreeMap<u64, Record>,
    tail_bytes: usize,
}

impl Drop for JetStreamLog {
    fn drop(&mut self) {
        if let Some(follower) = self.follower.take() {
            follower.abort();
        }
    }
}

impl JetStreamLog {
    /// Opens the log on `stream`, appending on `subject`; a log written by any node is
    /// followed from its end. Blocking.
    pub(crate) fn open(
        nats: &Nats,
        stream: &str,
        subject: &str,
        writers: Writers,
        trimmed: bool,
    ) -> Result<JetStreamLog, StorageError> {
        let info = stream_info(nats, stream)?;
        let state = State {
            start_offset: start_offset(&info.state),
            next_offset: info.state.last_sequence,
            bytes: info.state.bytes,
            ..State::default()
        };
        let next_offset = state.next_offset;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            next_offset: watch::Sender::new(next_offset),
        });
        let follower = (writers == Writers::Any).then(|| {
            nats.spawn(follow(
                nats.jetstream.clone(),
                stream.to_owned(),
                next_offset + 1,
                Arc::downgrade(&shared),
            ))
        });
        Ok(JetStreamLog {
            nats: nats.clone(),
            stream: stream.to_owned(),
            subject: subject.to_owned(),
            writers,
            trimmed,
            shared,
            follower,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("log state lock")
    }

    /// Reads from the stream (not the tail): a batch direct get, served by any replica. A
    /// replica that lacks records known to exist is asked again.
    fn read_stream(
        &self,
        from: u64,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Record>, StorageError> {
        let known_end = self.state().next_offset;
        for _ in 0..LAGGING_REPLICA_RETRIES_MAX {
            let (nats, stream) = (self.nats.clone(), self.stream.clone());
            let records = self.nats.block(direct_get_batch(
                nats,
                stream,
                from + 1,
                records_max,
                bytes_max,
            ))?;
            if !records.is_empty() || from >= known_end {
                // A replica may hold records this node has not learnt of yet (another node's
                // appends its follower has not delivered): they become readable here when the
                // end moves past them, so that reads and the end always agree.
                let records = records
                    .into_iter()
                    .take_while(|record| record.offset < known_end)
                    .collect();
                return Ok(records);
            }
            std::thread::sleep(LAGGING_REPLICA_RETRY);
        }
        Err(StorageError::Backend(Box::new(ClusterError::JetStream {
            op: format!("read {} from offset {from}", self.stream),
            detail: "no replica served records that were acknowledged; the stream's replicas may be lost".into(),
        })))
    }

    /// Publishes `payloads` (one message, or one atomic batch) and returns the last one's
    /// stream sequence.
    fn publish(
        &self,
        timestamp_ms: i64,
        payloads: &[&[u8]],
        expected_last_sequence: Option<u64>,
        ids: Option<&[String]>,
    ) -> Result<(u64, bool), PublishFailure> {
        let messages: Vec<(HeaderMap, Vec<u8>)> = payloads
            .iter()
            .enumerate()
            .map(|(index, payload)| {
                let mut headers = HeaderMap::new();
                headers.insert(TIME_HEADER, timestamp_ms.to_string().as_str());
                if let Some(ids) = ids {
                    headers.insert(async_nats::header::NATS_MESSAGE_ID, ids[index].as_str());
                }
                if index == 0
                    && let Some(sequence) = expected_last_sequence
                {
                    headers.insert(
                        async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
                        sequence.to_string().as_str(),
                    );
                }
                (headers, payload.to_vec())
            })
            .collect();
        let (nats, subject) = (self.nats.clone(), self.subject.clone());
        self.nats.block(publish_batch(nats, subject, messages))
    }

    /// Records appended by this node, at their offsets, go into the tail too: a reader woken
    /// by the new end finds them without a request.
    fn appended(&self, first_offset: u64, timestamp_ms: i64, payloads: &[&[u8]]) {
        let end = first_offset + payloads.len() as u64;
        let mut state = self.state();
        if self.writers == Writers::Any {
            for (index, payload) in payloads.iter().enumerate() {
                state.insert(Record {
                    offset: first_offset + index as u64,
                    timestamp_ms,
                    payload: payload.to_vec(),
                });
            }
        }
        state.bytes += payloads
            .iter()
            .map(|payload| payload.len() as u64)
            .sum::<u64>();
        if end > state.next_offset {
            state.next_offset = end;
            self.shared.next_offset.send_replace(end);
        }
    }

    fn refresh(&self) -> Result<stream::Info, StorageError> {
        let info = stream_info(&self.nats, &self.stream)?;
        let mut state = self.state();
        state.start_offset = start_offset(&info.state);
        state.bytes = info.state.bytes;
        let start = state.start_offset;
        state.drop_below(start);
        if info.state.last_sequence > state.next_offset {
            state.next_offset = info.state.last_sequence;
            self.shared.next_offset.send_replace(state.next_offset);
        }
        Ok(info)
    }
}

impl State {
    fn insert(&mut self, record: Record) {
        if record.offset < self.start_offset {
            return;
        }
        self.tail_bytes += record.payload.len();
        if let Some(replaced) = self.tail.insert(record.offset, record) {
            self.tail_bytes -= replaced.payload.len();
        }
        while self.tail.len() > TAIL_RECORDS_MAX || self.tail_bytes > TAIL_BYTES_MAX {
            let Some((_, oldest)) = self.tail.pop_first() else {
                break;
            };
            self.tail_bytes -= oldest.payload.len();
        }
    }

    fn drop_below(&mut self, offset: u64) {
        while let Some(entry) = self.tail.first_entry() {
            if *entry.key() >= offset {
                break;
            }
            self.tail_bytes -= entry.remove().payload.len();
        }
    }

    /// The records at `from` and after, if the tail holds `from` (and then as many in a row
    /// as it has, within the bounds).
    fn tail_from(&self, from: u64, records_max: usize, bytes_max: usize) -> Option<Vec<Record>> {
        if !self.tail.contains_key(&from) {
            return None;
        }
        let mut records: Vec<Record> = Vec::new();
        let mut bytes = 0;
        for (offset, record) in self.tail.range(from..) {
            let expected = from + records.len() as u64;
            let full = records.len() >= records_max
                || (!records.is_empty() && bytes + record.payload.len() > bytes_max);
            if *offset != expected || full {
                break;
            }
            bytes += record.payload.len();
            records.push(record.clone());
        }
        Some(records)
    }
}

impl RecordLog for JetStreamLog {
    fn append(
        &self,
        timestamp_ms: i64,
        payloads: &[&[u8]],
        _sync: bool,
    ) -> Result<u64, StorageError> {
        let expected = match self.writers {
            Writers::Any => None,
            Writers::LeaseHolder => Some(self.state().next_offset),
        };
        self.append_after(timestamp_ms, payloads, expected)
    }

    fn dedupes(&self) -> bool {
        // A partition: any node appends, and an append that timed out may be stored later.
        self.writers == Writers::Any
    }

    fn append_identified(
        &self,
        timestamp_ms: i64,
        payloads: &[&[u8]],
        ids: &[String],
        _sync: bool,
    ) -> Result<Appended, StorageError> {
        if payloads.len() > BATCH_RECORDS_MAX {
            // Beyond one atomic batch the ids are not used (such a commit is rare: a group
            // of requests of 1,000 events and more).
            let first_offset = self.append_after(timestamp_ms, payloads, None)?;
            return Ok(Appended {
                first_offset,
                already_stored: false,
            });
        }
        match self.publish(timestamp_ms, payloads, None, Some(ids)) {
            Ok((last_sequence, duplicate)) => {
                let first_offset = last_sequence - payloads.len() as u64;
                if !duplicate {
                    self.appended(first_offset, timestamp_ms, payloads);
                }
                Ok(Appended {
                    first_offset,
                    already_stored: duplicate,
                })
            }
            Err(PublishFailure::Duplicate) => self.append_each(timestamp_ms, payloads, ids),
            Err(failure) => Err(failure.into_storage_error(&self.stream, self.writers)),
        }
    }

    fn append_expecting(
        &self,
        timestamp_ms: i64,
        payloads: &[&[u8]],
        _sync: bool,
        expected_next_offset: u64,
    ) -> Result<u64, StorageError> {
        // The stream checks it: offset n is sequence n + 1, so the last sequence before the
        // append must be the expected next offset.
        self.append_after(timestamp_ms, payloads, Some(expected_next_offset))
    }

    fn sync(&self) -> Result<(), StorageError> {
        // Every acknowledged append is on a quorum of replicas already.
        Ok(())
    }

    fn read(
        &self,
        from: u64,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Record>, StorageError> {
        {
            let state = self.state();
            if from < state.start_offset || from > state.next_offset {
                return Err(StorageError::OffsetOutOfRange {
                    offset: from,
                    start_offset: state.start_offset,
                    next_offset: state.next_offset,
                });
            }
            if from == state.next_offset || records_max == 0 {
                return Ok(Vec::new());
            }
            if let Some(records) = state.tail_from(from, records_max, bytes_max) {
                return Ok(records);
            }
        }
        self.read_stream(from, records_max, bytes_max)
    }

    fn start_offset(&self) -> u64 {
        self.state().start_offset
    }

    fn next_offset(&self) -> u64 {
        self.state().next_offset
    }

    fn refresh_next_offset(&self) -> Result<u64, StorageError> {
        self.refresh()?;
        Ok(self.next_offset())
    }

    fn watch_next_offset(&self) -> watch::Receiver<u64> {
        self.shared.next_offset.subscribe()
    }

    fn size_bytes(&self) -> u64 {
        self.state().bytes
    }

    fn truncated_at_open_bytes(&self) -> u64 {
        // JetStream recovers its own files; nothing is cut at keel's level.
        0
    }

    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<u64, StorageError> {
        let (nats, stream) = (self.nats.clone(), self.stream.clone());
        let next_offset = self.next_offset();
        let found = self
            .nats
            .block(first_at_or_after(nats, stream, timestamp_ms))?;
        Ok(found.map_or(next_offset, |sequence| sequence - 1))
    }

    fn apply_retention(
        &self,
        _now_ms: i64,
        _age_ms_max: Option<u64>,
        _bytes_max: Option<u64>,
    ) -> Result<Trimmed, StorageError> {
        // The stream's own limits (max_age, max_bytes, set from the topic's retention) remove
        // old records as they pass; this only learns what they removed.
        let bytes_before = self.size_bytes();
        let info = self.refresh()?;
        Ok(Trimmed {
            segments: 0,
            bytes: bytes_before.saturating_sub(info.state.bytes),
        })
    }

    fn remove_before(&self, offset: u64) -> Result<Trimmed, StorageError> {
        if !self.trimmed {
            return Ok(Trimmed::default());
        }
        self.purge_below(offset)
    }

    fn rewrite(&mut self, timestamp_ms: i64, payloads: &[&[u8]]) -> Result<(), StorageError> {
        self.rewrite_atomically(timestamp_ms, payloads)
    }
}

impl JetStreamLog {
    /// An atomic batch refused for an id stored earlier: each record alone, with its id, so
    /// that those stored earlier answer their offsets and the others are stored. Consecutive
    /// offsets make one answer; scattered ones are [`StorageError::PartlyStored`].
    fn append_each(
        &self,
        timestamp_ms: i64,
        payloads: &[&[u8]],
        ids: &[String],
    ) -> Result<Appended, StorageError> {
        let mut offsets = Vec::with_capacity(payloads.len());
        for (payload, id) in payloads.iter().zip(ids) {
            let (sequence, duplicate) = self
                .publish(
                    timestamp_ms,
                    &[payload],
                    None,
                    Some(std::slice::from_ref(id)),
                )
                .map_err(|failure| failure.into_storage_error(&self.stream, self.writers))?;
            if !duplicate {
                self.appended(sequence - 1, timestamp_ms, &[payload]);
            }
            offsets.push(sequence - 1);
        }
        if offsets.windows(2).all(|pair| pair[1] == pair[0] + 1) {
            return Ok(Appended {
                first_offset: offsets[0],
                already_stored: true,
            });
        }
        Err(StorageError::PartlyStored)
    }

    /// Appends `payloads` in atomic batches, the first expecting the stream's last sequence
    /// to be `expected_last_sequence` (when given), each later one the sequence its
    /// predecessor ended at: the whole append has consecutive offsets, or fails.
    fn append_after(
        &self,
        timestamp_ms: i64,
        payloads: &[&[u8]],
        mut expected: Option<u64>,
    ) -> Result<u64, StorageError> {
        assert!(!payloads.is_empty(), "an append holds records");
        let mut first_offset = None;
        for (index, chunk) in payloads.chunks(BATCH_RECORDS_MAX).enumerate() {
            if index > 0 && expected.is_none() {
                expected =
                    first_offset.map(|first: u64| first + (index * BATCH_RECORDS_MAX) as u64);
            }
            let published = self.publish(timestamp_ms, chunk, expected, None);
            let last_sequence = match (published, expected) {
                (Ok((last_sequence, _)), _) => last_sequence,
                // A conditional append of a log any node writes: another got there first.
                (Err(PublishFailure::Conflict(detail)), Some(expected_next_offset))
                    if self.writers == Writers::Any =>
                {
                    let next_offset = last_sequence_in(&detail).unwrap_or(expected_next_offset + 1);
                    return Err(StorageError::Conflict {
                        expected_next_offset,
                        next_offset,
                    });
                }
                (Err(failure), _) => {
                    return Err(failure.into_storage_error(&self.stream, self.writers));
                }
            };
            let chunk_first = last_sequence - chunk.len() as u64;
            self.appended(chunk_first, timestamp_ms, chunk);
            first_offset.get_or_insert(chunk_first);
            expected = expected.map(|_| last_sequence);
        }
        Ok(first_offset.expect("at least one batch was published"))
    }

    /// Removes every record below `offset`.
    fn purge_below(&self, offset: u64) -> Result<Trimmed, StorageError> {
        let bytes_before = self.size_bytes();
        let (nats, stream) = (self.nats.clone(), self.stream.clone());
        self.nats.block(async move {
            let stream = nats
                .jetstream
                .get_stream_no_info(&stream)
                .await
                .map_err(|error| ClusterError::jetstream(format!("find stream {stream}"), error))?;
            // Purges every message below sequence offset + 1, that is below offset.
            stream
                .purge()
                .sequence(offset + 1)
                .await
                .map_err(|error| ClusterError::jetstream("purge", error))?;
            Ok::<_, ClusterError>(())
        })?;
        let info = self.refresh()?;
        Ok(Trimmed {
            segments: 0,
            bytes: bytes_before.saturating_sub(info.state.bytes),
        })
    }

    /// [`RecordLog::rewrite`]: one atomic batch that rolls the stream up.
    fn rewrite_atomically(
        &self,
        timestamp_ms: i64,
        payloads: &[&[u8]],
    ) -> Result<(), StorageError> {
        if payloads.len() > BATCH_RECORDS_MAX {
            return Err(StorageError::Backend(Box::new(ClusterError::JetStream {
                op: format!("rewrite {}", self.stream),
                detail: format!(
                    "{} records are more than one atomic batch holds ({BATCH_RECORDS_MAX}); the log is kept as it is",
                    payloads.len()
                ),
            })));
        }
        // One atomic batch whose first message rolls up the stream: the server removes every
        // earlier message and stores these, all or nothing.
        let expected = self.state().next_offset;
        let mut messages: Vec<(HeaderMap, Vec<u8>)> = Vec::with_capacity(payloads.len());
        for (index, payload) in payloads.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert(TIME_HEADER, timestamp_ms.to_string().as_str());
            if index == 0 {
                headers.insert(async_nats::header::NATS_ROLLUP, "all");
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
                    expected.to_string().as_str(),
                );
            }
            messages.push((headers, payload.to_vec()));
        }
        if messages.is_empty() {
            // Nothing to keep: a purge of everything, which cannot be raced by a deposed
            // holder (it can only remove, and the holder's next append is fenced).
            return self.purge_below(expected).map(|_| ());
        }
        let (nats, subject) = (self.nats.clone(), self.subject.clone());
        let (last_sequence, _) = self
            .nats
            .block(publish_batch(nats, subject, messages))
            .map_err(|failure| failure.into_storage_error(&self.stream, self.writers))?;
        let first_offset = last_sequence - payloads.len() as u64;
        {
            let mut state = self.state();
            state.start_offset = first_offset;
            state.drop_below(first_offset);
        }
        self.appended(first_offset, timestamp_ms, payloads);
        self.refresh()?;
        Ok(())
    }
}

fn stream_info(nats: &Nats, stream: &str) -> Result<stream::Info, StorageError> {
    let (jetstream, name) = (nats.jetstream.clone(), stream.to_owned());
    nats.block(async move {
        let mut stream = jetstream
            .get_stream(&name)
            .await
            .map_err(|error| ClusterError::jetstream(format!("find stream {name}"), error))?;
        let info = stream
            .info()
            .await
            .map_err(|error| ClusterError::jetstream(format!("describe stream {name}"), error))?;
        Ok::<_, ClusterError>(info.clone())
    })
    .map_err(StorageError::from)
}

fn start_offset(state: &stream::State) -> u64 {
    if state.messages == 0 {
        state.last_sequence
    } else {
        state.first_sequence - 1
    }
}
