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

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use keel_engine::storage::{Record, RecordLog, StorageError, Trimmed};
use tokio::sync::watch;

use crate::error::ClusterError;
use crate::nats::{Nats, REQUEST_TIMEOUT};

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
    ) -> Result<u64, PublishFailure> {
        let messages: Vec<(HeaderMap, Vec<u8>)> = payloads
            .iter()
            .enumerate()
            .map(|(index, payload)| {
                let mut headers = HeaderMap::new();
                headers.insert(TIME_HEADER, timestamp_ms.to_string().as_str());
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
            let published = self.publish(timestamp_ms, chunk, expected);
            let last_sequence = match (published, expected) {
                (Ok(last_sequence), _) => last_sequence,
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
        let last_sequence = self
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

/// Why a publish failed.
pub(crate) enum PublishFailure {
    /// The stream's last sequence was not the one expected: another writer got there first.
    Conflict(String),
    /// No stream takes the subject: the log was fenced for a newer lease holder (or deleted).
    NoStream,
    /// JetStream did not answer in time, or said it cannot (no quorum, no leader, no
    /// connection): the records may or may not be stored.
    Unavailable(String),
    /// Anything else.
    Other(String),
}

impl PublishFailure {
    /// The storage error of a failed append. Nothing JetStream answers can leave a log
    /// half-written on keel's side, so no failure poisons a log: a lease holder's log refuses
    /// a conflict or a fence for good (`Backend`: the subscription stops here and the cluster
    /// hosts it again, wherever its lease is), and everything else (no quorum, no leader, no
    /// connection, an answer that never came) is `Unavailable`: the append may or may not be
    /// stored, and the log takes appends again.
    fn into_storage_error(self, stream: &str, writers: Writers) -> StorageError {
        let op = format!("append to {stream}");
        let fenced = |detail: String| {
            StorageError::Backend(Box::new(ClusterError::JetStream {
                op: op.clone(),
                detail,
            }))
        };
        match (self, writers) {
            (PublishFailure::Conflict(detail), Writers::LeaseHolder) => fenced(format!(
                "another node wrote to this log ({detail}): this node no longer holds its lease"
            )),
            (PublishFailure::NoStream, Writers::LeaseHolder) => fenced(
                "the log no longer takes this node's writes: another node holds its lease now"
                    .into(),
            ),
            (failure, _) => {
                let detail = match failure {
                    PublishFailure::Conflict(detail)
                    | PublishFailure::Unavailable(detail)
                    | PublishFailure::Other(detail) => detail,
                    PublishFailure::NoStream => {
                        "no stream takes this topic's records (deleted by another node?)".into()
                    }
                };
                StorageError::Unavailable {
                    source: Box::new(ClusterError::JetStream { op, detail }),
                }
            }
        }
    }
}

/// Publishes `messages` on `subject`: one alone, or several as one atomic batch. Returns
/// the last message's stream sequence.
pub(crate) async fn publish_batch(
    nats: Nats,
    subject: String,
    mut messages: Vec<(HeaderMap, Vec<u8>)>,
) -> Result<u64, PublishFailure> {
    if messages.len() > 1 {
        let batch_id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let count = messages.len();
        for (index, (headers, _)) in messages.iter_mut().enumerate() {
            headers.insert(async_nats::header::NATS_BATCH_ID, batch_id.as_str());
            headers.insert(
                async_nats::header::NATS_BATCH_SEQUENCE,
                (index + 1).to_string().as_str(),
            );
            if index + 1 == count {
                headers.insert(async_nats::header::NATS_BATCH_COMMIT, "1");
            }
        }
        let last = messages.pop().expect("a batch has a last message");
        for (headers, payload) in messages {
            // The batch's messages before the commit need no answer; the commit's answer
            // covers the batch (a gap makes the server refuse it whole).
            nats.client
                .publish_with_headers(subject.clone(), headers, payload.into())
                .await
                .map_err(|error| PublishFailure::Unavailable(error.to_string()))?;
        }
        return publish_one(&nats, subject, last).await;
    }
    let last = messages.pop().expect("a publish has a message");
    publish_one(&nats, subject, last).await
}

async fn publish_one(
    nats: &Nats,
    subject: String,
    (headers, payload): (HeaderMap, Vec<u8>),
) -> Result<u64, PublishFailure> {
    use async_nats::jetstream::context::PublishErrorKind;
    let acknowledged = nats
        .jetstream
        .publish_with_headers(subject, headers, payload.into())
        .await;
    let acknowledged = match acknowledged {
        Ok(future) => future.await,
        Err(error) => Err(error),
    };
    match acknowledged {
        Ok(ack) => Ok(ack.sequence),
        Err(error) => Err(match error.kind() {
            PublishErrorKind::WrongLastSequence => PublishFailure::Conflict(error.to_string()),
            PublishErrorKind::StreamNotFound => PublishFailure::NoStream,
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                PublishFailure::Unavailable(error.to_string())
            }
            _ => PublishFailure::Other(error.to_string()),
        }),
    }
}

/// The stream's last sequence as JetStream states it in a refusal ("wrong last sequence: N").
fn last_sequence_in(detail: &str) -> Option<u64> {
    let (_, after) = detail.split_once("wrong last sequence: ")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
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

/// Up to `records_max` records from sequence `first_sequence` on, within `bytes_max` (at
/// least one), by one batch direct get (served by any replica; ADR-31).
async fn direct_get_batch(
    nats: Nats,
    stream: String,
    first_sequence: u64,
    records_max: usize,
    bytes_max: usize,
) -> Result<Vec<Record>, StorageError> {
    let request = serde_json::json!({
        "seq": first_sequence,
        "batch": records_max,
        "max_bytes": bytes_max.clamp(1, DIRECT_READ_BYTES_MAX),
    });
    let failed = |detail: String| {
        StorageError::Backend(Box::new(ClusterError::JetStream {
            op: format!("read {stream} from sequence {first_sequence}"),
            detail,
        }))
    };
    let inbox = nats.client.new_inbox();
    let mut replies = nats
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|error| failed(error.to_string()))?;
    nats.client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            request.to_string().into(),
        )
        .await
        .map_err(|error| failed(error.to_string()))?;
    let mut records = Vec::new();
    loop {
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, replies.next())
            .await
            .map_err(|_| StorageError::Unavailable {
                source: Box::new(ClusterError::JetStream {
                    op: format!("read {stream}"),
                    detail: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
                }),
            })?
            .ok_or_else(|| failed("the reply subscription ended".into()))?;
        match reply.status.map(|status| status.as_u16()) {
            // The end of the batch (204), or nothing at or after the sequence (404).
            Some(204) | Some(404) => return Ok(records),
            Some(status) => {
                return Err(failed(format!(
                    "status {status} {}",
                    reply.description.unwrap_or_default()
                )));
            }
            None => {}
        }
        let headers = reply.headers.as_ref();
        let header = |name: &str| {
            headers
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str().to_owned())
        };
        let sequence: u64 = header("Nats-Sequence")
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| failed("a message without its sequence".into()))?;
        let timestamp_ms = header(TIME_HEADER)
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        records.push(Record {
            offset: sequence - 1,
            timestamp_ms,
            payload: reply.payload.to_vec(),
        });
    }
}

/// The sequence of the first message stored at or after `timestamp_ms` by the stream's
/// clock, if any.
async fn first_at_or_after(
    nats: Nats,
    stream: String,
    timestamp_ms: i64,
) -> Result<Option<u64>, StorageError> {
    let start =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(timestamp_ms) * 1_000_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let start = start
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let request = serde_json::json!({ "start_time": start });
    let reply = nats
        .client
        .request(
            format!("$JS.API.DIRECT.GET.{stream}"),
            request.to_string().into(),
        )
        .await
        .map_err(|error| StorageError::from(ClusterError::jetstream("find by time", error)))?;
    if reply.status.map(|status| status.as_u16()) == Some(404) {
        return Ok(None);
    }
    Ok(reply
        .headers
        .as_ref()
        .and_then(|headers| headers.get("Nats-Sequence"))
        .and_then(|value| value.as_str().parse().ok()))
}

/// Follows a shared log from `first_sequence`: every record any node appends goes into the
/// tail and moves the end. Ends when the log is dropped.
async fn follow(
    jetstream: jetstream::Context,
    stream: String,
    mut first_sequence: u64,
    shared: std::sync::Weak<Shared>,
) {
    loop {
        let followed = follow_once(&jetstream, &stream, &mut first_sequence, &shared).await;
        if shared.strong_count() == 0 {
            return;
        }
        if let Err(error) = followed {
            tracing::warn!(stream, %error, "following a partition failed; starting again");
        }
        tokio::time::sleep(FOLLOWER_RESTART_DELAY).await;
    }
}

async fn follow_once(
    jetstream: &jetstream::Context,
    stream: &str,
    first_sequence: &mut u64,
    shared: &std::sync::Weak<Shared>,
) -> Result<(), ClusterError> {
    use jetstream::consumer::{DeliverPolicy, pull};
    let consumer = jetstream
        .create_consumer_on_stream(
            pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: *first_sequence,
                },
                ..Default::default()
            },
            stream,
        )
        .await
        .map_err(|error| ClusterError::jetstream(format!("follow {stream}"), error))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|error| ClusterError::jetstream(format!("follow {stream}"), error))?;
    loop {
        let next = tokio::time::timeout(FOLLOWER_IDLE_CHECK, messages.next()).await;
        let message = match next {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(()),
            Err(_) => {
                // Quiet for a while: make sure the consumer is not stuck (on a server that
                // went away) while the stream moved on.
                let info = jetstream
                    .get_stream(stream)
                    .await
                    .map_err(|error| ClusterError::jetstream(format!("follow {stream}"), error))?
                    .info()
                    .await
                    .map_err(|error| ClusterError::jetstream(format!("follow {stream}"), error))?
                    .state
                    .last_sequence;
                if info >= *first_sequence {
                    return Err(ClusterError::JetStream {
                        op: format!("follow {stream}"),
                        detail: format!(
                            "the follower is at sequence {first_sequence} and the stream at {info}: following it again"
                        ),
                    });
                }
                continue;
            }
        };
        let message =
            message.map_err(|error| ClusterError::jetstream(format!("follow {stream}"), error))?;
        let Some(shared) = shared.upgrade() else {
            return Ok(());
        };
        let info = message
            .info()
            .map_err(|error| ClusterError::jetstream(format!("follow {stream}"), error))?;
        let sequence = info.stream_sequence;
        let timestamp_ms = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(TIME_HEADER))
            .and_then(|value| value.as_str().parse().ok())
            .unwrap_or(0);
        let mut state = shared.state.lock().expect("log state lock");
        state.insert(Record {
            offset: sequence - 1,
            timestamp_ms,
            payload: message.payload.to_vec(),
        });
        if sequence > state.next_offset {
            state.bytes += message.payload.len() as u64;
            state.next_offset = sequence;
            shared.next_offset.send_replace(sequence);
        }
        *first_sequence = sequence + 1;
    }
}
