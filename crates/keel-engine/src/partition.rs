//! One partition of a topic: its log (behind the storage seam), and the writer task that
//! group-commits appends.
//!
//! Invariants:
//! - Only the writer task appends to the log, so offsets are assigned in queue order.
//! - An append request is answered `Ok` only after `RecordLog::append` returned `Ok` for a
//!   commit that holds all its records (with `fsync = always`, after the fsync).
//! - Readers only see records of successful commits (the log's contract).
//! - After a failed write or fsync the partition answers every later append with an error
//!   until keel restarts and recovery has checked the log; it never retries the fsync.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::FsyncPolicy;
use crate::error::{DataError, EngineError, TopicError};
use crate::event::Event;
use crate::key_index::KeyHandoff;
use crate::limits::{APPEND_QUEUE_CAPACITY, GROUP_COMMIT_BYTES_MAX, GROUP_COMMIT_REQUESTS_MAX};
use crate::metrics::{Metrics, PartitionLabels, TopicLabels};
use crate::storage::{Appended, Record, RecordLog, StorageError};

/// A read this close to the end of the log runs inline (see [`Partition::read`]).
const INLINE_READ_RECORDS_MAX: u64 = 64;
/// Most bytes an inline read returns (at least one record).
const INLINE_READ_BYTES_MAX: usize = 256 * 1024;

/// Events to append to one partition, answered with the offset of the first.
pub(crate) struct AppendRequest {
    pub(crate) events: Vec<Event>,
    /// Append only if the partition's next offset is this (a conditional append's check,
    /// exact across the nodes of a cluster); committed alone, not in a group.
    pub(crate) expected_next_offset: Option<u64>,
    pub(crate) reply: oneshot::Sender<Result<u64, EngineError>>,
    enqueued: Instant,
}

enum Command {
    Append(AppendRequest),
    /// Fsync what is written (the `interval` policy's tick).
    Sync,
}

/// State shared by the writer task and readers.
struct Shared {
    topic: String,
    number: u32,
    /// The log; `None` when it could not be opened (see `unavailable`).
    log: Option<Arc<dyn RecordLog>>,
    /// Why the partition refuses service, once it does.
    unavailable: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
}

/// A partition of a topic.
pub(crate) struct Partition {
    shared: Arc<Shared>,
    /// The keys of committed events, handed from the writer to the key index.
    key_handoff: Arc<KeyHandoff>,
    queue: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

pub use keel_api::topics::PartitionInfo;

impl Partition {
    /// Wraps an opened log (or the error that kept it from opening) and starts its writer.
    pub(crate) fn start(
        topic: &str,
        number: u32,
        log: Result<Arc<dyn RecordLog>, StorageError>,
        fsync: FsyncPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (log, unavailable) = match log {
            Ok(log) => {
                let truncated_bytes = log.truncated_at_open_bytes();
                if truncated_bytes > 0 {
                    metrics.recovery_truncated_bytes.inc_by(truncated_bytes);
                    tracing::warn!(
                        topic,
                        partition = number,
                        bytes = truncated_bytes,
                        "recovery cut a torn tail"
                    );
                }
                (Some(log), None)
            }
            Err(error) => {
                let reason = format!(
                    "its log failed recovery and is not served: {error}. Restore the partition's files from a backup or a replica; or, to start it empty, replace its directory with an empty one"
                );
                tracing::error!(topic, partition = number, %error, "partition refuses service");
                (None, Some(reason))
            }
        };
        let shared = Arc::new(Shared {
            topic: topic.to_owned(),
            number,
            log,
            unavailable: Mutex::new(unavailable),
            metrics,
        });
        shared.publish_gauges();
        let key_handoff = Arc::new(KeyHandoff::default());
        let (queue, writer) = match shared.log.clone() {
            Some(log) => {
                let (sender, receiver) = mpsc::channel(APPEND_QUEUE_CAPACITY);
                let writer = Writer::new(shared.clone(), log, fsync, key_handoff.clone());
                (Some(sender), Some(tokio::spawn(writer.run(receiver))))
            }
            None => (None, None),
        };
        Self {
            shared,
            key_handoff,
            queue: Mutex::new(queue),
            writer: Mutex::new(writer),
        }
    }

    /// Starts the periodic fsync of the `interval` policy.
    pub(crate) fn spawn_interval_sync(&self, interval: Duration) {
        let Some(weak) = self.sender().map(|sender| sender.downgrade()) else {
            return;
        };
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let Some(sender) = weak.upgrade() else { return };
                // A full queue means the writer is busy; its next tick will sync.
                let _ = sender.try_send(Command::Sync);
            }
        });
    }

    fn sender(&self) -> Option<mpsc::Sender<Command>> {
        self.queue.lock().expect("queue lock").clone()
    }

    /// Why the partition refuses service, if it does.
    pub(crate) fn unavailable(&self) -> Option<String> {
        self.shared
            .unavailable
            .lock()
            .expect("unavailable lock")
            .clone()
    }

    fn unavailable_error(&self, reason: String) -> EngineError {
        EngineError::Topic(TopicError::PartitionUnavailable {
            topic: self.shared.topic.clone(),
            partition: self.shared.number,
            reason,
        })
    }

    /// The partition's log, for readers beside the writer (the key index); an error when it
    /// refuses service because its log could not be opened.
    pub(crate) fn record_log(&self) -> Result<Arc<dyn RecordLog>, EngineError> {
        self.log().cloned()
    }

    /// Where the writer hands the keys of committed events to the key index.
    pub(crate) fn key_handoff(&self) -> Arc<KeyHandoff> {
        self.key_handoff.clone()
    }

    fn log(&self) -> Result<&Arc<dyn RecordLog>, EngineError> {
        match &self.shared.log {
            Some(log) => Ok(log),
            None => Err(self.unavailable_error(self.unavailable().unwrap_or_default())),
        }
    }

    /// Queues events for the writer (waiting while the queue is full: backpressure) and
    /// returns the receiver of the first one's offset, sent once they are committed.
    pub(crate) async fn enqueue(
        &self,
        events: Vec<Event>,
        expected_next_offset: Option<u64>,
    ) -> Result<oneshot::Receiver<Result<u64, EngineError>>, EngineError> {
        if let Some(reason) = self.unavailable() {
            return Err(self.unavailable_error(reason));
        }
        let sender = self.sender().ok_or(EngineError::ShuttingDown)?;
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            events,
            expected_next_offset,
            reply,
            enqueued: Instant::now(),
        };
        sender
            .send(Command::Append(request))
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        Ok(answer)
    }

    /// Figures for describe.
    pub(crate) fn info(&self) -> PartitionInfo {
        let log = self.shared.log.as_ref();
        PartitionInfo {
            partition: self.shared.number,
            start_offset: log.map_or(0, |log| log.start_offset()),
            next_offset: log.map_or(0, |log| log.next_offset()),
            bytes: log.map_or(0, |log| log.size_bytes()),
            unavailable: self.unavailable(),
        }
    }

    /// Reads up to `records_max` records from `from`, waiting up to `wait` for the first.
    /// Reads at the tail (at most [`INLINE_READ_RECORDS_MAX`] records behind) run on the
    /// calling task; others on the blocking pool.
    /// A long poll ends early when `closing` turns true (shutdown).
    pub(crate) async fn read(
        &self,
        from: Option<u64>,
        records_max: usize,
        bytes_max: usize,
        wait: Duration,
        mut closing: watch::Receiver<bool>,
    ) -> Result<(Vec<Record>, u64), EngineError> {
        let log = self.log()?.clone();
        let from = from.unwrap_or_else(|| log.start_offset());
        if from > log.next_offset() {
            // Beyond the end this node knows: in a cluster, another node may have appended it
            // a moment ago.
            let refreshed = log.clone();
            let _ = tokio::task::spawn_blocking(move || refreshed.refresh_next_offset()).await;
        }
        self.check_offset(&*log, from)?;
        if !wait.is_zero() {
            let mut committed = log.watch_next_offset();
            // A timeout simply means nothing arrived: answer with no records.
            let arrived = committed.wait_for(|next| *next > from);
            tokio::select! {
                _ = tokio::time::timeout(wait, arrived) => {}
                _ = closing.wait_for(|closing| *closing) => {}
            }
        }
        let tail = log.next_offset().saturating_sub(from) <= INLINE_READ_RECORDS_MAX;
        let records = if tail {
            // A few records at the tail were just written: they are in the page cache and
            // reading them takes microseconds, less than the hop to the blocking pool, whose
            // wake-up is most of a follower's latency. (Reads take no lock a commit holds.)
            log.read(from, records_max, bytes_max.min(INLINE_READ_BYTES_MAX))
        } else {
            tokio::task::spawn_blocking(move || log.read(from, records_max, bytes_max))
                .await
                .map_err(|_| EngineError::ShuttingDown)?
        };
        let records = records.map_err(|source| self.read_error(from, source))?;
        let next_offset = records.last().map_or(from, |record| record.offset + 1);
        Ok((records, next_offset))
    }

    fn check_offset(&self, log: &dyn RecordLog, offset: u64) -> Result<(), EngineError> {
        let (topic, partition) = (self.shared.topic.clone(), self.shared.number);
        let (start_offset, next_offset) = (log.start_offset(), log.next_offset());
        if offset > next_offset {
            return Err(EngineError::Topic(TopicError::OffsetBeyondEnd {
                topic,
                partition,
                offset,
                next_offset,
            }));
        }
        if offset < start_offset {
            return Err(EngineError::Topic(TopicError::OffsetBeforeStart {
                topic,
                partition,
                offset,
                start_offset,
            }));
        }
        Ok(())
    }

    fn read_error(&self, from: u64, source: StorageError) -> EngineError {
        let (topic, partition) = (self.shared.topic.clone(), self.shared.number);
        match source {
            // Retention may have moved the start between the check and the read.
            StorageError::OffsetOutOfRange { start_offset, .. } if from < start_offset => {
                EngineError::Topic(TopicError::OffsetBeforeStart {
                    topic,
                    partition,
                    offset: from,
                    start_offset,
                })
            }
            StorageError::Corrupt { .. } => {
                let reason = format!(
                    "a stored record failed its checksum: {source}. Restore the partition's files from a backup or a replica"
                );
                self.shared.refuse_service(reason.clone());
                tracing::error!(topic = %self.shared.topic, partition = self.shared.number, %source, "corrupt record on read");
                self.unavailable_error(reason)
            }
            other => EngineError::Data(DataError::Storage {
                context: format!("read {topic:?} partition {partition}"),
                source: other,
            }),
        }
    }

    /// The first offset appended at or after `timestamp_ms`.
    pub(crate) fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<u64, EngineError> {
        let log = self.log()?;
        log.offset_for_timestamp(timestamp_ms).map_err(|source| {
            EngineError::Data(DataError::Storage {
                context: "time index lookup".into(),
                source,
            })
        })
    }

    /// Reads records without waiting and without the offset checks (recovery scans).
    pub(crate) fn scan(&self, from: u64, records_max: usize) -> Result<Vec<Record>, EngineError> {
        let log = self.log()?;
        log.read(from, records_max, crate::limits::READ_BYTES_MAX)
            .map_err(|source| {
                EngineError::Data(DataError::Storage {
                    context: "scan".into(),
                    source,
                })
            })
    }

    /// Applies retention and refreshes the size gauges; returns the bytes freed.
    pub(crate) fn apply_retention(
        &self,
        now_ms: i64,
        age_ms_max: Option<u64>,
        bytes_max: Option<u64>,
    ) -> u64 {
        let Some(log) = &self.shared.log else {
            return 0;
        };
        let freed_bytes = match log.apply_retention(now_ms, age_ms_max, bytes_max) {
            Ok(trimmed) => {
                if trimmed.segments > 0 {
                    tracing::info!(
                        topic = %self.shared.topic, partition = self.shared.number,
                        segments = trimmed.segments, bytes = trimmed.bytes, start_offset = log.start_offset(),
                        "retention deleted segments"
                    );
                }
                trimmed.bytes
            }
            Err(error) => {
                tracing::warn!(topic = %self.shared.topic, partition = self.shared.number, %error, "retention failed; will retry");
                0
            }
        };
        self.shared.publish_gauges();
        freed_bytes
    }

    /// Stops taking appends, lets the writer finish what is queued (and fsync it), and waits
    /// for it.
    pub(crate) async fn shut_down(&self) {
        self.queue.lock().expect("queue lock").take();
        let writer = self.writer.lock().expect("writer lock").take();
        if let Some(writer) = writer
            && writer.await.is_err()
        {
            tracing::error!(topic = %self.shared.topic, partition = self.shared.number, "writer panicked");
        }
    }
}

impl Shared {
    fn publish_gauges(&self) {
        let labels = PartitionLabels::new(&self.topic, self.number);
        if let Some(log) = &self.log {
            self.metrics
                .partition_bytes
                .get_or_create(&labels)
                .set(gauge_value(log.size_bytes()));
            self.metrics
                .partition_start_offset
                .get_or_create(&labels)
                .set(gauge_value(log.start_offset()));
            self.metrics
                .partition_next_offset
                .get_or_create(&labels)
                .set(gauge_value(log.next_offset()));
        }
        let unavailable = self.unavailable.lock().expect("unavailable lock").is_some();
        self.metrics
            .partition_unavailable
            .get_or_create(&labels)
            .set(i64::from(unavailable));
    }

    fn refuse_service(&self, reason: String) {
        tracing::error!(topic = %self.topic, partition = self.number, %reason, "partition stops accepting writes");
        self.unavailable
            .lock()
            .expect("unavailable lock")
            .get_or_insert(reason);
        self.publish_gauges();
    }
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The writer's state.
struct Writer {
    shared: Arc<Shared>,
    log: Arc<dyn RecordLog>,
    fsync: FsyncPolicy,
    key_handoff: Arc<KeyHandoff>,
    /// Timestamps are kept non-decreasing within the partition so the time index is ordered.
    last_timestamp_ms: i64,
    topic_labels: TopicLabels,
}

impl Writer {
    fn new(
        shared: Arc<Shared>,
        log: Arc<dyn RecordLog>,
        fsync: FsyncPolicy,
        key_handoff: Arc<KeyHandoff>,
    ) -> Self {
        let topic_labels = TopicLabels {
            topic: shared.topic.clone(),
        };
        Self {
            shared,
            log,
            fsync,
            key_handoff,
            last_timestamp_ms: 0,
            topic_labels,
        }
    }

    /// Waits for appends as a task (a few hundred bytes per partition, however many there
    /// are) and runs each group's write and fsync on tokio's blocking pool, whose threads are
    /// shared by all partitions: memory and threads follow the commits in progress, not the
    /// partition count.
    async fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        let shared = self.shared.clone();
        let mut group = Vec::with_capacity(GROUP_COMMIT_REQUESTS_MAX);
        while let Some(first) = receiver.recv().await {
            group.push(first);
            self.fill_group(&mut receiver, &mut group);
            let committed = tokio::task::spawn_blocking(move || {
                self.commit_group(&mut group);
                (self, group)
            });
            let writer = match committed.await {
                Ok(writer) => writer,
                Err(panic) => {
                    // A bug: say so where operators look, and refuse what is still queued.
                    let reason = format!(
                        "its writer failed ({panic}); this is a bug in keel: restart it, and report the log"
                    );
                    shared.refuse_service(reason);
                    return;
                }
            };
            (self, group) = writer;
        }
        // The queue is closed and drained: make what `interval`/`never` wrote durable too.
        if self.fsync != FsyncPolicy::Always {
            let (log, shared) = (self.log.clone(), self.shared.clone());
            let synced = tokio::task::spawn_blocking(move || log.sync()).await;
            if let Ok(Err(error)) = synced {
                tracing::error!(topic = %shared.topic, partition = shared.number, %error, "final fsync failed");
            }
        }
    }

    /// Takes whatever else is queued, up to the group limits: one fsync will cover them all.
    fn fill_group(&self, receiver: &mut mpsc::Receiver<Command>, group: &mut Vec<Command>) {
        let mut bytes = group.iter().map(command_bytes).sum::<usize>();
        while group.len() < GROUP_COMMIT_REQUESTS_MAX && bytes < GROUP_COMMIT_BYTES_MAX {
            match receiver.try_recv() {
                Ok(command) => {
                    bytes += command_bytes(&command);
                    group.push(command);
                }
                Err(_) => break,
            }
        }
    }

    fn commit_group(&mut self, group: &mut Vec<Command>) {
        let mut requests = Vec::with_capacity(group.len());
        let mut sync_requested = false;
        for command in group.drain(..) {
            match command {
                Command::Sync => sync_requested = true,
                Command::Append(request) => requests.push(request),
            }
        }
        // A conditional append commits alone, after the group: its check is of the log as
        // the group left it.
        let (expecting, requests): (Vec<_>, Vec<_>) = requests
            .into_iter()
            .partition(|request| request.expected_next_offset.is_some());
        if !requests.is_empty() || sync_requested {
            self.commit_requests(requests, sync_requested);
        }
        for request in expecting {
            self.commit_requests(vec![request], false);
        }
    }

    fn commit_requests(&mut self, requests: Vec<AppendRequest>, sync_requested: bool) {
        let records: usize = requests.iter().map(|request| request.events.len()).sum();
        let started = Instant::now();
        let committed = self.commit(&requests, sync_requested);
        if requests.len() > 1 && matches!(committed, Err(StorageError::PartlyStored)) {
            // Some requests were retries of commits stored earlier (in a cluster): each alone
            // is then either stored already, whole, or new.
            for request in requests {
                self.commit_requests(vec![request], false);
            }
            return;
        }
        let metrics = &self.shared.metrics;
        let synced = self.fsync == FsyncPolicy::Always || sync_requested;
        if committed.is_ok() && synced {
            let seconds = started.elapsed().as_secs_f64();
            metrics
                .fsync_seconds
                .get_or_create(&self.topic_labels)
                .observe(seconds);
        }
        metrics
            .commit_records
            .get_or_create(&self.topic_labels)
            .observe(records as f64);
        self.answer(requests, committed);
    }

    /// Appends every request's events as one commit, fsynced as the policy (or an `interval`
    /// tick) asks; returns the first event's offset.
    fn commit(
        &mut self,
        requests: &[AppendRequest],
        sync_requested: bool,
    ) -> Result<u64, StorageError> {
        // Timestamps are kept non-decreasing within the partition so the time index is ordered.
        self.last_timestamp_ms = self.last_timestamp_ms.max(crate::clock::now_ms());
        let payloads: Vec<&[u8]> = requests
            .iter()
            .flat_map(|request| request.events.iter().map(|event| event.json().as_bytes()))
            .collect();
        let sync = self.fsync == FsyncPolicy::Always;
        let expected = requests
            .first()
            .and_then(|request| request.expected_next_offset);
        let timestamp_ms = self.last_timestamp_ms;
        let appended = match expected {
            Some(expected) => Appended {
                first_offset: self
                    .log
                    .append_expecting(timestamp_ms, &payloads, sync, expected)?,
                already_stored: false,
            },
            None if payloads.is_empty() => Appended {
                first_offset: self.log.next_offset(),
                already_stored: true,
            },
            None if self.log.dedupes() => {
                let ids: Vec<String> = requests
                    .iter()
                    .flat_map(|request| request.events.iter().map(message_id))
                    .collect();
                self.log
                    .append_identified(timestamp_ms, &payloads, &ids, sync)?
            }
            None => Appended {
                first_offset: self.log.append(timestamp_ms, &payloads, sync)?,
                already_stored: false,
            },
        };
        let first_offset = appended.first_offset;
        if !appended.already_stored {
            // The records are in the log (readers see them): their keys are the index's.
            let keys = requests
                .iter()
                .flat_map(|request| request.events.iter().map(Event::key));
            self.key_handoff.hand(first_offset, keys);
        }
        if sync_requested && self.fsync == FsyncPolicy::Interval {
            self.log.sync()?;
        }
        Ok(first_offset)
    }

    /// Answers each request of a commit. A commit refused for a full device leaves the log
    /// whole and writable (see `StorageError::Full`): its publishers get 507 and the partition
    /// stays in service; so does one the storage could not take now (`Unavailable`, 503);
    /// any other failure takes the partition out of service.
    fn answer(&self, requests: Vec<AppendRequest>, committed: Result<u64, StorageError>) {
        match committed {
            Ok(first_offset) => {
                let append_seconds = self
                    .shared
                    .metrics
                    .append_seconds
                    .get_or_create(&self.topic_labels);
                let mut offset = first_offset;
                for request in requests {
                    append_seconds.observe(request.enqueued.elapsed().as_secs_f64());
                    // The publisher may have given up waiting; the events are stored anyway.
                    let _ = request.reply.send(Ok(offset));
                    offset += request.events.len() as u64;
                }
                self.shared.publish_gauges();
            }
            Err(StorageError::Full { source }) => {
                tracing::warn!(topic = %self.shared.topic, partition = self.shared.number, error = %source, "a commit was refused: the device is full");
                let refused = crate::metrics::RefusalLabels {
                    reason: "disk_full",
                };
                self.shared
                    .metrics
                    .publish_refused
                    .get_or_create(&refused)
                    .inc_by(requests.len() as u64);
                for request in requests {
                    let limit = crate::error::StorageLimit::DeviceFull;
                    let error =
                        EngineError::Publish(crate::error::PublishError::StorageFull { limit });
                    let _ = request.reply.send(Err(error));
                }
            }
            Err(StorageError::PartlyStored) => {
                for request in requests {
                    let error = EngineError::Publish(crate::error::PublishError::PartlyStored);
                    let _ = request.reply.send(Err(error));
                }
            }
            Err(StorageError::Conflict {
                expected_next_offset,
                next_offset,
            }) => {
                for request in requests {
                    let error = EngineError::Stream(crate::error::StreamError::Contended {
                        expected_next_offset,
                        next_offset,
                    });
                    let _ = request.reply.send(Err(error));
                }
            }
            Err(StorageError::Unavailable { source }) => {
                tracing::warn!(topic = %self.shared.topic, partition = self.shared.number, error = %source, "a commit failed: the storage is unavailable");
                for request in requests {
                    let detail = source.to_string();
                    let error =
                        EngineError::Publish(crate::error::PublishError::StorageUnavailable {
                            detail,
                        });
                    let _ = request.reply.send(Err(error));
                }
            }
            Err(cause) => {
                let reason = format!(
                    "a write or fsync failed ({cause}); the events of that commit were not acknowledged. Fix the disk, then restart keel: recovery checks the log and serves the partition again"
                );
                self.shared.refuse_service(reason.clone());
                for request in requests {
                    let error = EngineError::Topic(TopicError::PartitionUnavailable {
                        topic: self.shared.topic.clone(),
                        partition: self.shared.number,
                        reason: reason.clone(),
                    });
                    let _ = request.reply.send(Err(error));
                }
            }
        }
    }
}

/// The id an event is appended under in a log that dedupes (`RecordLog::dedupes`): its
/// (source, id) pair, hashed so that any text fits a message header, and alike on every node.
fn message_id(event: &Event) -> String {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(event.source().as_bytes());
    // Separates source from id: ("ab", "c") and ("a", "bc") differ.
    hasher.update([0xff]);
    hasher.update(event.id().as_bytes());
    let digest = hasher.finalize();
    digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn command_bytes(command: &Command) -> usize {
    match command {
        Command::Append(request) => request.events.iter().map(|event| event.json().len()).sum(),
        Command::Sync => 0,
    }
}
