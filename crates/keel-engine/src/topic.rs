//! A topic: its configuration, partitions and dedupe table, and publishing into it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::clock::now_ms;
use crate::config::{FsyncPolicy, TopicConfig};
use crate::dedupe::{Dedupe, Lookup, Outcome, PairHash, Position};
use crate::error::{EngineError, PublishError, StreamError, TopicError};
use crate::event::{self, Event};
use crate::key_index::KeyIndex;
use crate::limits::{DEDUPE_ENTRIES_MAX, READ_RECORDS_MAX};
use crate::metrics::{Metrics, TopicLabels};
use crate::partition::Partition;
use crate::pressure::Admission;
use crate::routing::partition_for_key;
use crate::storage::{Record, Storage};
use crate::supervisor::Supervisor;

/// Keyless events sent to one partition before the sticky partition moves on.
const STICKY_EVENTS: u64 = 1024;
/// A request with at least this many keyless events gets a partition of its own.
const LARGE_REQUEST_EVENTS: u64 = 32;

pub use keel_api::publish::PublishResult;
pub use keel_api::topics::TopicInfo;

/// How one event of a publish is answered.
enum Plan {
    New(PairHash),
    Stored(Position),
    Pending(watch::Receiver<Outcome>, usize),
    SameRequest(usize),
}

/// The engine's topics by name, shared with the stateful subscriptions.
pub(crate) type TopicMap = Arc<std::sync::RwLock<BTreeMap<String, Arc<Topic>>>>;

/// Where a stateful subscription's handlers may emit events: the engine's topics, and the
/// largest event it accepts.
#[derive(Clone)]
pub(crate) struct EmitTargets {
    pub(crate) topics: TopicMap,
    pub(crate) event_bytes_max: usize,
}

impl EmitTargets {
    /// The topic named `name`, when it exists.
    pub(crate) fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }
}

/// A topic.
pub(crate) struct Topic {
    pub(crate) name: String,
    pub(crate) config: TopicConfig,
    partitions: Vec<Partition>,
    dedupe: Mutex<Dedupe>,
    /// Keyless events routed so far; their partition changes every `STICKY_EVENTS` of them.
    keyless_routed: AtomicU64,
    /// Requests of at least `LARGE_REQUEST_EVENTS` keyless events routed so far.
    large_requests_routed: AtomicU64,
    metrics: Arc<Metrics>,
    labels: TopicLabels,
    /// The per-key index of events, or why it could not be opened (the topic still takes
    /// and serves events; key streams and conditional appends answer 503).
    key_index: Result<Arc<KeyIndex>, String>,
}

impl Topic {
    /// Opens a stored topic: recovers each partition's log, rebuilds the dedupe table.
    /// Blocking. A partition whose log fails recovery is kept, refusing service.
    pub(crate) fn open(
        storage: &dyn Storage,
        name: &str,
        config: TopicConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let partitions = (0..config.partitions)
            .map(|number| {
                let log = storage.open_partition(name, number);
                Partition::start(name, number, log, config.fsync, metrics.clone())
            })
            .collect::<Vec<_>>();
        let key_index = KeyIndex::open(storage, name, &partitions).map_err(|error| {
            tracing::error!(topic = name, %error, "the key index cannot be opened");
            format!("{error}. Restart keel to rebuild it from the log")
        });
        let window_ms = i64::try_from(config.dedupe_window.as_millis()).unwrap_or(i64::MAX);
        let topic = Arc::new(Self {
            name: name.to_owned(),
            config,
            partitions,
            dedupe: Mutex::new(Dedupe::new(window_ms)),
            keyless_routed: AtomicU64::new(0),
            large_requests_routed: AtomicU64::new(0),
            labels: TopicLabels {
                topic: name.to_owned(),
            },
            metrics,
            key_index,
        });
        topic.rebuild_dedupe(window_ms);
        if let Ok(key_index) = &topic.key_index {
            let weak = Arc::downgrade(&topic);
            key_index.observe_reads(Box::new(move |partition, records| {
                if let Some(topic) = weak.upgrade() {
                    topic.observe_stored(partition, records);
                }
            }));
        }
        topic
    }

    /// Learns the events of records read back from a partition that this process's writer
    /// did not store (in a cluster, another node's): publishing one of them again through
    /// this node within the dedupe window is then a duplicate, not a second event. The key
    /// index's followers read those records anyway, so this costs a parse of each one's
    /// source and id, and nothing on the publish path.
    fn observe_stored(&self, partition: u32, records: &[Record]) {
        let mut dedupe = self.dedupe.lock().expect("dedupe lock");
        let mut evicted_early = 0;
        for record in records {
            if let Some((source, id)) = event::identity_of(&record.payload) {
                let pair = dedupe.hash(&source, &id);
                let position = Position {
                    partition,
                    offset: record.offset,
                };
                evicted_early += dedupe.observed(pair, position, record.timestamp_ms);
            }
        }
        drop(dedupe);
        self.count_evicted_early(evicted_early);
    }

    /// Starts the topic's background tasks (the key index's, the `interval` fsync). Call
    /// inside the runtime.
    pub(crate) fn start_tasks(&self, supervisor: &Arc<Supervisor>) {
        if let Ok(key_index) = &self.key_index {
            key_index.start(&self.partitions, supervisor);
        }
        if self.config.fsync == FsyncPolicy::Interval {
            for partition in &self.partitions {
                partition.spawn_interval_sync(self.config.fsync_interval);
            }
        }
    }

    /// Refills the dedupe table from the last window of every partition: the newest
    /// `DEDUPE_ENTRIES_MAX` pairs of the topic, as the running table held them, however the
    /// events were spread over partitions. Each partition is scanned for at most its newest
    /// `DEDUPE_ENTRIES_MAX` events within the window, and the candidates are cut back to the
    /// newest `DEDUPE_ENTRIES_MAX` after each, so at most twice that many are held.
    fn rebuild_dedupe(&self, window_ms: i64) {
        let now = now_ms();
        let mut dedupe = self.dedupe.lock().expect("dedupe lock");
        let mut newest: Vec<(i64, PairHash, Position)> = Vec::new();
        for (number, partition) in (0u32..).zip(&self.partitions) {
            let Ok(since_window) = partition.offset_for_timestamp(now.saturating_sub(window_ms))
            else {
                continue;
            };
            let info = partition.info();
            let mut offset = since_window
                .max(info.next_offset.saturating_sub(DEDUPE_ENTRIES_MAX as u64))
                .max(info.start_offset);
            while let Ok(records) = partition.scan(offset, READ_RECORDS_MAX) {
                let Some(last) = records.last() else { break };
                offset = last.offset + 1;
                for record in records {
                    if let Some((source, id)) = event::identity_of(&record.payload) {
                        let position = Position {
                            partition: number,
                            offset: record.offset,
                        };
                        newest.push((record.timestamp_ms, dedupe.hash(&source, &id), position));
                    }
                }
            }
            keep_newest(&mut newest, DEDUPE_ENTRIES_MAX);
        }
        for (timestamp_ms, pair, position) in &newest {
            dedupe.stored(*pair, *position, *timestamp_ms);
        }
        dedupe.expire(now);
        if !newest.is_empty() {
            tracing::info!(topic = %self.name, events = newest.len(), "rebuilt the dedupe table from the log");
        }
    }

    /// Forgets dedupe entries past their window (the publish path does this too; this call
    /// frees the memory of topics nobody publishes to).
    pub(crate) fn expire_dedupe(&self) {
        let evicted_early = self.dedupe.lock().expect("dedupe lock").expire(now_ms());
        self.count_evicted_early(evicted_early);
    }

    fn count_evicted_early(&self, evicted_early: u64) {
        if evicted_early > 0 {
            self.metrics
                .dedupe_evicted_early
                .get_or_create(&self.labels)
                .inc_by(evicted_early);
        }
    }

    pub(crate) fn partition(&self, number: u32) -> Result<&Partition, EngineError> {
        self.partitions.get(number as usize).ok_or_else(|| {
            EngineError::Topic(TopicError::PartitionNotFound {
                topic: self.name.clone(),
                partition: number,
                partitions: self.config.partitions,
            })
        })
    }

    pub(crate) fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    pub(crate) fn info(&self) -> TopicInfo {
        TopicInfo {
            name: self.name.clone(),
            partitions: self.partitions.iter().map(Partition::info).collect(),
            retention: self.config.retention,
            fsync: self.config.fsync,
            fsync_interval: self.config.fsync_interval,
            dedupe_window: self.config.dedupe_window,
        }
    }

    /// Publishes events: new ones are appended (durable per the fsync policy when this
    /// returns), repeated (source, id) pairs answer with the original position.
    /// `admission` (backpressure's count of the publish) is held until the events are
    /// appended or failed, even when the caller stops waiting.
    pub(crate) async fn publish(
        self: &Arc<Self>,
        events: Vec<Event>,
        admission: Admission,
    ) -> Result<Vec<PublishResult>, EngineError> {
        self.publish_expecting(events, admission, None).await
    }

    /// [`Topic::publish`], appending (events that all go to one partition) only if the
    /// partition's next offset is `expected_next_offset` when given; else
    /// [`StreamError::Contended`](crate::error::StreamError::Contended) and nothing appended.
    pub(crate) async fn publish_expecting(
        self: &Arc<Self>,
        events: Vec<Event>,
        admission: Admission,
        expected_next_offset: Option<u64>,
    ) -> Result<Vec<PublishResult>, EngineError> {
        let (outcome_sender, outcome) = watch::channel(None);
        let plans = self.plan(&events, &outcome);
        let ids: Vec<String> = events.iter().map(|event| event.id().to_owned()).collect();
        // Only a duplicate waiting on another publish can fail on its own: keep its source
        // for the error, and allocate nothing for the others.
        let sources: Vec<Option<String>> = events
            .iter()
            .zip(&plans)
            .map(|(event, plan)| {
                matches!(plan, Plan::Pending(..)).then(|| event.source().to_owned())
            })
            .collect();
        let groups = self.route(events, &plans);
        // Spawned so that a publisher hanging up cannot leave reservations pending forever.
        let topic = self.clone();
        let new_pairs: Vec<Option<PairHash>> = plans
            .iter()
            .map(|plan| match plan {
                Plan::New(pair) => Some(*pair),
                _ => None,
            })
            .collect();
        let positions = tokio::spawn(async move {
            let _admission = admission;
            topic
                .append_groups(groups, new_pairs, outcome_sender, expected_next_offset)
                .await
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)??;
        let mut results = Vec::with_capacity(plans.len());
        for (index, plan) in plans.into_iter().enumerate() {
            let (position, duplicate) = match plan {
                Plan::New(_) => (positions[index], false),
                Plan::Stored(position) => (Some(position), true),
                Plan::SameRequest(first) => (positions[first], true),
                Plan::Pending(outcome, at) => (wait_for_original(outcome, at).await, true),
            };
            let Some(position) = position else {
                let source_attr = sources[index].clone().unwrap_or_default();
                let id = ids[index].clone();
                return Err(EngineError::Publish(PublishError::OriginalFailed {
                    source_attr,
                    id,
                }));
            };
            results.push(PublishResult {
                id: ids[index].clone(),
                partition: position.partition,
                offset: position.offset,
                duplicate,
            });
        }
        let duplicates = results.iter().filter(|result| result.duplicate).count() as u64;
        if duplicates > 0 {
            self.metrics
                .publish_duplicates
                .get_or_create(&self.labels)
                .inc_by(duplicates);
        }
        Ok(results)
    }

    /// Decides per event: new (reserved), stored, pending elsewhere, or a repeat in this request.
    fn plan(&self, events: &[Event], outcome: &watch::Receiver<Outcome>) -> Vec<Plan> {
        let now = now_ms();
        let mut dedupe = self.dedupe.lock().expect("dedupe lock");
        let evicted_early = dedupe.expire(now);
        self.count_evicted_early(evicted_early);
        let mut in_request: HashMap<PairHash, usize> = HashMap::new();
        let mut plans = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let pair = dedupe.hash(event.source(), event.id());
            if let Some(&first) = in_request.get(&pair) {
                plans.push(Plan::SameRequest(first));
                continue;
            }
            plans.push(match dedupe.check_and_reserve(pair, outcome, index) {
                Lookup::New => {
                    in_request.insert(pair, index);
                    Plan::New(pair)
                }
                Lookup::Stored(position) => Plan::Stored(position),
                Lookup::Pending(outcome, at) => Plan::Pending(outcome, at),
            });
        }
        plans
    }

    /// Groups the new events by partition: keyed ones by key, keyless ones all to one
    /// sticky partition (see `sticky_partition`).
    fn route(&self, events: Vec<Event>, plans: &[Plan]) -> BTreeMap<u32, (Vec<Event>, Vec<usize>)> {
        let keyless = events
            .iter()
            .zip(plans)
            .filter(|(e, p)| e.key().is_none() && matches!(p, Plan::New(_)))
            .count();
        let sticky = self.sticky_partition(keyless as u64);
        let mut groups: BTreeMap<u32, (Vec<Event>, Vec<usize>)> = BTreeMap::new();
        for (index, event) in events.into_iter().enumerate() {
            if !matches!(plans[index], Plan::New(_)) {
                continue;
            }
            let partition = match event.key() {
                Some(key) => partition_for_key(key, self.config.partitions),
                None => sticky,
            };
            let group = groups.entry(partition).or_default();
            group.0.push(event);
            group.1.push(index);
        }
        groups
    }

    /// The partition for a request's keyless events. Small requests share a partition that
    /// moves on round-robin after every `STICKY_EVENTS` keyless events (Kafka's sticky
    /// partitioner): concurrent small publishes then share one group commit — one fsync for
    /// many requests — instead of each paying an fsync on another file. Large requests
    /// amortise their own fsync, so each takes the next partition and they commit in
    /// parallel. Over time every partition gets the same share. A partition that refuses
    /// service is skipped.
    fn sticky_partition(&self, keyless: u64) -> u32 {
        let turn = if keyless >= LARGE_REQUEST_EVENTS {
            self.large_requests_routed.fetch_add(1, Ordering::Relaxed)
        } else {
            self.keyless_routed.fetch_add(keyless, Ordering::Relaxed) / STICKY_EVENTS
        };
        let count = self.config.partitions;
        let start = u32::try_from(turn % u64::from(count)).expect("below the partition count");
        (0..count)
            .map(|step| (start + step) % count)
            .find(|&number| self.partitions[number as usize].unavailable().is_none())
            .unwrap_or(start)
    }

    async fn append_groups(
        self: Arc<Self>,
        groups: BTreeMap<u32, (Vec<Event>, Vec<usize>)>,
        new_pairs: Vec<Option<PairHash>>,
        outcome: watch::Sender<Outcome>,
        expected_next_offset: Option<u64>,
    ) -> Result<Vec<Option<Position>>, EngineError> {
        debug_assert!(expected_next_offset.is_none() || groups.len() <= 1);
        let mut positions = vec![None; new_pairs.len()];
        // All or nothing: a batch that needs a partition refusing service appends nowhere.
        // (Once queued, a write failing on one partition while another succeeds cannot be
        // undone; the error then reports the failure and a retry is deduplicated.)
        let refusing = groups.keys().find_map(|&number| {
            let reason = self.partitions[number as usize].unavailable()?;
            Some(EngineError::Topic(TopicError::PartitionUnavailable {
                topic: self.name.clone(),
                partition: number,
                reason,
            }))
        });
        if let Some(error) = refusing {
            self.settle(&new_pairs, &positions);
            outcome.send_replace(Some(Ok(positions)));
            return Err(error);
        }
        // All groups are queued before any answer is awaited, so the partitions commit them
        // concurrently without a task per partition.
        let mut queued = Vec::with_capacity(groups.len());
        for (number, (events, indexes)) in groups {
            let bytes: u64 = events.iter().map(|event| event.json().len() as u64).sum();
            let count = events.len() as u64;
            let answer = self.partitions[number as usize]
                .enqueue(events, expected_next_offset)
                .await;
            queued.push((number, indexes, count, bytes, answer));
        }
        let mut first_error = None;
        for (number, indexes, count, bytes, answer) in queued {
            let committed = match answer {
                Ok(answer) => answer.await.unwrap_or(Err(EngineError::ShuttingDown)),
                Err(error) => Err(error),
            };
            match committed {
                Ok(first_offset) => {
                    for (index, offset) in indexes.into_iter().zip(first_offset..) {
                        positions[index] = Some(Position {
                            partition: number,
                            offset,
                        });
                    }
                    self.metrics
                        .publish_events
                        .get_or_create(&self.labels)
                        .inc_by(count);
                    self.metrics
                        .publish_bytes
                        .get_or_create(&self.labels)
                        .inc_by(bytes);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        self.settle(&new_pairs, &positions);
        outcome.send_replace(Some(Ok(positions.clone())));
        match first_error {
            Some(error) => Err(error),
            None => Ok(positions),
        }
    }

    /// Turns this request's reservations into stored entries, or releases the failed ones.
    fn settle(&self, new_pairs: &[Option<PairHash>], positions: &[Option<Position>]) {
        let now = now_ms();
        let mut evicted_early = 0;
        let mut dedupe = self.dedupe.lock().expect("dedupe lock");
        for (pair, position) in new_pairs.iter().zip(positions) {
            match (pair, position) {
                (Some(pair), Some(position)) => {
                    evicted_early += dedupe.stored(*pair, *position, now)
                }
                (Some(pair), None) => dedupe.release(*pair),
                (None, _) => {}
            }
        }
        drop(dedupe);
        self.count_evicted_early(evicted_early);
    }

    /// Stops the writers after they finish what is queued, then the key index.
    pub(crate) async fn shut_down(&self) {
        for partition in &self.partitions {
            partition.shut_down().await;
        }
        if let Ok(key_index) = &self.key_index {
            key_index.shut_down().await;
        }
    }

    /// The key index, or why it refuses service.
    pub(crate) fn key_index(&self, partition: u32) -> Result<&Arc<KeyIndex>, EngineError> {
        self.key_index.as_ref().map_err(|reason| {
            EngineError::Stream(StreamError::IndexUnavailable {
                topic: self.name.clone(),
                partition,
                reason: reason.clone(),
            })
        })
    }

    /// Whether every event is a duplicate of one stored within the dedupe window (a retry of
    /// an earlier publish that succeeded).
    pub(crate) fn all_stored(&self, events: &[Event]) -> bool {
        let mut dedupe = self.dedupe.lock().expect("dedupe lock");
        let evicted_early = dedupe.expire(now_ms());
        let stored = events
            .iter()
            .all(|event| dedupe.is_stored(dedupe.hash(event.source(), event.id())));
        drop(dedupe);
        self.count_evicted_early(evicted_early);
        stored
    }
}

/// Sorts `entries` by timestamp and drops all but the newest `count`.
fn keep_newest(entries: &mut Vec<(i64, PairHash, Position)>, count: usize) {
    entries.sort_by_key(|(timestamp_ms, ..)| *timestamp_ms);
    let excess = entries.len().saturating_sub(count);
    entries.drain(..excess);
}

async fn wait_for_original(
    mut outcome: watch::Receiver<Outcome>,
    index: usize,
) -> Option<Position> {
    let settled = outcome.wait_for(Option::is_some).await.ok()?;
    match settled.as_ref() {
        Some(Ok(positions)) => positions.get(index).copied().flatten(),
        _ => None,
    }
}
