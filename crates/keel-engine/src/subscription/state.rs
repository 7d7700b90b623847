//! The delivery state of one subscription: which events are pending, in flight, waiting for a
//! retry or being dead-lettered, and how far each partition is done. A plain state machine:
//! no I/O, no tasks, time passed in (milliseconds since the epoch), so it is tested directly.
//!
//! Each partition of the topic is a *lane*; events redriven from the dead-letter queue form
//! one more lane ([`REDRIVE_LANE`]), unordered, whose offsets are dead-letter log offsets.
//!
//! Invariants (checked by `check_invariants` in tests after every step):
//! - `lane.pending` holds exactly the matching events read from `lane.committed` up to
//!   `lane.cursor` that are not yet done (acknowledged or durably dead-lettered); `committed`
//!   is the first pending offset, or `cursor` when nothing is pending. Everything below
//!   `committed` is done, which is what a checkpoint records.
//! - With `ordering = key`, per key only the oldest pending event (the head of its queue in
//!   `lane.keys`) may be in flight, waiting or ready: that is per-key log order.
//! - `in_flight` counts events whose phase is `InFlight`, and never exceeds `max_in_flight`.
//! - An event sits in the ready queue at most once (`queued`); stale entries are skipped when
//!   popped.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::spec::{Ordering, RetryPolicy, retry_delay};

/// The lane of events redriven from the dead-letter queue.
pub(crate) const REDRIVE_LANE: u32 = u32::MAX;

/// Where an event sits: its lane (partition) and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Slot {
    pub(crate) lane: u32,
    pub(crate) offset: u64,
}

/// One finished attempt, as the dead-letter record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When the attempt ended, in milliseconds since the epoch.
    pub at_ms: i64,
    /// The sink's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// An endpoint of a group could not be reached and the event went to another one at
    /// once: a failover, which neither counts against `max_attempts` nor lengthens backoff.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failover: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// May be delivered once it is the head of its key.
    Ready,
    /// Delivered under `lease`; with a deadline (pull), it fails if not settled by then.
    InFlight {
        lease: u64,
        deadline_ms: Option<i64>,
    },
    /// Waits for its retry time.
    Waiting { due_ms: i64 },
    /// Its dead-letter entry is being written.
    DeadLettering,
}

#[derive(Debug, Clone)]
struct Pending {
    json: Arc<str>,
    key: Option<u64>,
    published_ms: i64,
    /// The event's original place (for redriven events, where it was first read).
    origin: (u32, u64),
    history: Vec<AttemptRecord>,
    /// Failed attempts in `history` that do not count against `max_attempts`: those the
    /// circuit breaker blamed on the sink, so that an outage does not burn an event's retries.
    uncounted: u32,
    phase: Phase,
    queued: bool,
    /// A stateful subscription's delivery in flight: the version of its key's state it
    /// carried. Its commit applies only while the key is still at that version.
    state_version: Option<u64>,
}

/// A record a reader offers: its offset, publish time, JSON and ordering key hash.
#[derive(Debug, Clone)]
pub(crate) struct Offered {
    pub(crate) offset: u64,
    pub(crate) published_ms: i64,
    pub(crate) json: Arc<str>,
    pub(crate) key: Option<u64>,
    /// Whether the subscription's filters match it; non-matching events are done at once.
    pub(crate) matches: bool,
    /// For the redrive lane: where the event was first read.
    pub(crate) origin: Option<(u32, u64)>,
}

/// An event handed to a handler.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) slot: Slot,
    pub(crate) lease: u64,
    /// 1 for the first attempt.
    pub(crate) attempt: u32,
    /// Failovers in a row just before this attempt: endpoints of a group that could not be
    /// reached for this event, one after the other (see `push.rs`).
    pub(crate) failovers: u32,
    pub(crate) json: Arc<str>,
    /// Where the event was first read (partition, offset).
    pub(crate) origin: (u32, u64),
}

/// A delivery in flight, as an ack finds it.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    pub(crate) json: Arc<str>,
    /// Where the event was first read (partition, offset).
    pub(crate) origin: (u32, u64),
    /// The version of its key's state it carried (a stateful subscription's).
    pub(crate) state_version: Option<u64>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Acknowledged: done.
    Ack,
    /// Failed; retried after the backoff (at least `retry_after`), or dead-lettered when it
    /// was the last attempt.
    Fail {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
    /// Not to be retried: dead-lettered now.
    Reject { status: Option<u16>, error: String },
    /// Failed with an explicit wait before the next attempt (a nack with a delay); still
    /// dead-lettered when it was the last attempt.
    Delay(Duration),
    /// Failed because the connection to the handler failed (push): retried as `Fail`,
    /// unless the circuit breaker turns it into `Blamed` first.
    ConnectionFailed { error: String, unreached: bool },
    /// Failed, and the circuit breaker blames the sink (`circuit.rs`, `Verdict`): recorded,
    /// not counted against `max_attempts`. With `at_once` the event is ready again at once
    /// (the open circuit holds it back); otherwise it waits the backoff of all its failed
    /// attempts.
    Blamed {
        status: Option<u16>,
        error: String,
        at_once: bool,
    },
}

/// An ended attempt: what became of the event, when it was published and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Completed {
    pub(crate) settled: Settled,
    pub(crate) published_ms: i64,
    pub(crate) origin: (u32, u64),
}

/// What became of an event after [`DeliveryState::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    Done,
    RetryAt(i64),
    DeadLettering,
}

/// The answer to an ack for an event that is no longer in flight under that lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stale;

/// An event to be written to the dead-letter queue.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub(crate) slot: Slot,
    pub(crate) origin: (u32, u64),
    pub(crate) json: Arc<str>,
    pub(crate) history: Vec<AttemptRecord>,
}

/// A lane's progress as a checkpoint stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LaneCheckpoint {
    /// Every event below is done.
    pub(crate) committed: u64,
    /// Events from `committed` up to here were read; those not in `undone` are done.
    pub(crate) cursor: u64,
    /// Offsets in `[committed, cursor)` not yet done, as (offset − committed, run length).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) undone: Vec<(u64, u64)>,
    /// Undone events that have failed before: their attempts and retry time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) retries: Vec<RetryCheckpoint>,
}

/// A failed event's attempts, kept across restarts so retries are neither lost nor early.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RetryCheckpoint {
    pub(crate) offset: u64,
    pub(crate) due_ms: i64,
    pub(crate) history: Vec<AttemptRecord>,
    /// Attempts in `history` not counted against `max_attempts` (blamed on the sink).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) uncounted: u32,
}

fn is_zero(count: &u32) -> bool {
    *count == 0
}

/// What a restored lane still has to skip while it re-reads up to its checkpointed cursor.
#[derive(Debug, Clone, Default)]
struct Restore {
    until: u64,
    undone: BTreeSet<u64>,
    retries: HashMap<u64, RetryCheckpoint>,
}

#[derive(Debug, Clone, Default)]
struct Lane {
    committed: u64,
    cursor: u64,
    pending: BTreeMap<u64, Pending>,
    /// Bytes of the events in `pending`.
    pending_bytes: usize,
    keys: HashMap<u64, VecDeque<u64>>,
    restore: Option<Restore>,
}

impl Lane {
    fn at(offset: u64) -> Self {
        Lane {
            committed: offset,
            cursor: offset,
            ..Lane::default()
        }
    }

    fn update_committed(&mut self) {
        self.committed = self
            .pending
            .first_key_value()
            .map_or(self.cursor, |(offset, _)| *offset);
    }

    fn is_head(&self, offset: u64, key: Option<u64>) -> bool {
        key.is_none_or(|key| self.keys.get(&key).and_then(|queue| queue.front()) == Some(&offset))
    }
}

/// Counters for describe and metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    pub(crate) delivered: u64,
    pub(crate) retried: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) skipped_by_retention: u64,
    pub(crate) last_error: Option<(i64, String)>,
}

/// The delivery state of one subscription.
#[derive(Debug)]
pub(crate) struct DeliveryState {
    ordering: Ordering,
    max_in_flight: usize,
    lane_pending_max: usize,
    lane_bytes_max: usize,
    lanes: Vec<Lane>,
    redrive: Lane,
    ready: VecDeque<Slot>,
    retry_timers: BTreeSet<(i64, Slot)>,
    deadlines: BTreeSet<(i64, Slot, u64)>,
    dead_letters: Vec<Slot>,
    in_flight: usize,
    next_lease: u64,
    /// Bumped by every change a checkpoint records.
    version: u64,
    pub(crate) counters: Counters,
}

impl DeliveryState {
    /// A state whose lanes start at the given offsets (new subscription or seek).
    pub(crate) fn new(
        ordering: Ordering,
        max_in_flight: usize,
        lane_pending_max: usize,
        starts: &[u64],
    ) -> Self {
        assert!(max_in_flight > 0 && lane_pending_max > 0);
        DeliveryState {
            ordering,
            max_in_flight,
            lane_pending_max,
            lane_bytes_max: usize::MAX,
            lanes: starts.iter().map(|&offset| Lane::at(offset)).collect(),
            redrive: Lane::default(),
            ready: VecDeque::new(),
            retry_timers: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            dead_letters: Vec::new(),
            in_flight: 0,
            next_lease: 1,
            version: 1,
            counters: Counters::default(),
        }
    }

    /// A state restored from checkpointed lanes: each lane re-reads from `committed` and
    /// skips what the checkpoint says is done.
    pub(crate) fn restore(
        ordering: Ordering,
        max_in_flight: usize,
        lane_pending_max: usize,
        checkpoints: &[LaneCheckpoint],
    ) -> Self {
        let starts: Vec<u64> = checkpoints.iter().map(|lane| lane.committed).collect();
        let mut state = Self::new(ordering, max_in_flight, lane_pending_max, &starts);
        for (lane, checkpoint) in state.lanes.iter_mut().zip(checkpoints) {
            let undone = checkpoint
                .undone
                .iter()
                .flat_map(|&(delta, run)| {
                    let first = checkpoint.committed + delta;
                    first..first + run
                })
                .collect();
            let retries = checkpoint
                .retries
                .iter()
                .map(|retry| (retry.offset, retry.clone()))
                .collect();
            lane.restore = Some(Restore {
                until: checkpoint.cursor,
                undone,
                retries,
            });
        }
        state
    }

    fn lane_mut(&mut self, lane: u32) -> &mut Lane {
        if lane == REDRIVE_LANE {
            &mut self.redrive
        } else {
            &mut self.lanes[lane as usize]
        }
    }

    fn lane(&self, lane: u32) -> &Lane {
        if lane == REDRIVE_LANE {
            &self.redrive
        } else {
            &self.lanes[lane as usize]
        }
    }

    /// The offset a lane's reader reads from next.
    pub(crate) fn cursor(&self, lane: u32) -> u64 {
        self.lane(lane).cursor
    }

    /// How many more events a lane may hold pending, and about how many more bytes of them
    /// (its reader waits at 0; a read returns at least one event, so a lane may pass its byte
    /// bound by one event).
    pub(crate) fn room(&self, lane: u32) -> (usize, usize) {
        let lane = self.lane(lane);
        let bytes = self.lane_bytes_max.saturating_sub(lane.pending_bytes);
        if bytes == 0 {
            return (0, 0);
        }
        let events = self.lane_pending_max.saturating_sub(lane.pending.len());
        (events, bytes)
    }

    /// Bounds the bytes of events each lane holds pending (default: unbounded).
    pub(crate) fn with_lane_bytes_max(mut self, lane_bytes_max: usize) -> Self {
        assert!(lane_bytes_max > 0);
        self.lane_bytes_max = lane_bytes_max;
        self
    }

    /// Every lane's cursor and committed offset, for lag.
    pub(crate) fn lane_positions(&self) -> Vec<(u64, u64)> {
        self.lanes
            .iter()
            .map(|lane| (lane.committed, lane.cursor))
            .collect()
    }

    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// Marks a change kept outside this state (pause) for the next checkpoint.
    pub(crate) fn touch(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Events held in memory, not yet done.
    pub(crate) fn pending_count(&self) -> usize {
        self.lanes
            .iter()
            .chain(std::iter::once(&self.redrive))
            .map(|lane| lane.pending.len())
            .sum()
    }

    /// Adds records a lane's reader read from `from`. Records that do not continue the lane
    /// (a read that raced a seek) are ignored. Returns whether any became ready.
    pub(crate) fn offer(&mut self, lane_number: u32, from: u64, records: Vec<Offered>) -> bool {
        if self.lane(lane_number).cursor != from || records.is_empty() {
            return false;
        }
        let mut any_ready = false;
        for record in records {
            any_ready |= self.offer_one(lane_number, record);
        }
        let lane = self.lane_mut(lane_number);
        if lane
            .restore
            .as_ref()
            .is_some_and(|restore| lane.cursor >= restore.until)
        {
            lane.restore = None;
        }
        lane.update_committed();
        self.version += 1;
        any_ready
    }

    fn offer_one(&mut self, lane_number: u32, record: Offered) -> bool {
        let ordered = self.ordering == Ordering::Key && lane_number != REDRIVE_LANE;
        let lane = self.lane_mut(lane_number);
        debug_assert!(
            record.offset >= lane.cursor,
            "records arrive in offset order"
        );
        lane.cursor = record.offset + 1;
        let (mut history, mut uncounted) = (Vec::new(), 0);
        let mut phase = Phase::Ready;
        if let Some(restore) = &mut lane.restore
            && record.offset < restore.until
        {
            if !restore.undone.remove(&record.offset) {
                return false;
            }
            if let Some(retry) = restore.retries.remove(&record.offset) {
                (history, uncounted) = (retry.history, retry.uncounted);
                phase = Phase::Waiting {
                    due_ms: retry.due_ms,
                };
            }
        }
        if !record.matches {
            return false;
        }
        let key = record.key.filter(|_| ordered);
        if let Some(key) = key {
            lane.keys.entry(key).or_default().push_back(record.offset);
        }
        let head = lane.is_head(record.offset, key);
        lane.pending_bytes += record.json.len();
        lane.pending.insert(
            record.offset,
            Pending {
                json: record.json,
                key,
                published_ms: record.published_ms,
                origin: record.origin.unwrap_or((lane_number, record.offset)),
                history,
                uncounted,
                phase,
                queued: false,
                state_version: None,
            },
        );
        let slot = Slot {
            lane: lane_number,
            offset: record.offset,
        };
        match phase {
            Phase::Waiting { due_ms } => {
                self.retry_timers.insert((due_ms, slot));
                false
            }
            _ if head => self.enqueue(slot),
            _ => false,
        }
    }

    /// Puts a ready head event in the ready queue (once).
    fn enqueue(&mut self, slot: Slot) -> bool {
        let lane = self.lane_mut(slot.lane);
        let Some(pending) = lane.pending.get_mut(&slot.offset) else {
            return false;
        };
        if pending.queued || pending.phase != Phase::Ready {
            return false;
        }
        pending.queued = true;
        self.ready.push_back(slot);
        true
    }

    /// Takes up to `max` ready events (within `max_in_flight`) and marks them in flight; with
    /// a `deadline_ms` an event not completed by then fails ("ack timeout").
    pub(crate) fn take_ready(&mut self, max: usize, deadline_ms: Option<i64>) -> Vec<Delivery> {
        let mut taken = Vec::new();
        while taken.len() < max && self.in_flight < self.max_in_flight {
            let Some(slot) = self.ready.pop_front() else {
                break;
            };
            let lease = self.next_lease;
            let lane = self.lane_mut(slot.lane);
            let Some(pending) = lane.pending.get_mut(&slot.offset) else {
                continue;
            };
            pending.queued = false;
            if pending.phase != Phase::Ready {
                continue;
            }
            pending.phase = Phase::InFlight { lease, deadline_ms };
            let attempt = u32::try_from(pending.history.len()).unwrap_or(u32::MAX) + 1;
            let failovers = pending
                .history
                .iter()
                .rev()
                .take_while(|record| record.failover)
                .count();
            taken.push(Delivery {
                slot,
                lease,
                attempt,
                failovers: u32::try_from(failovers).unwrap_or(u32::MAX),
                json: pending.json.clone(),
                origin: pending.origin,
            });
            self.next_lease += 1;
            self.in_flight += 1;
            if let Some(deadline_ms) = deadline_ms {
                self.deadlines.insert((deadline_ms, slot, lease));
            }
        }
        taken
    }

    /// The event, its origin and the key's state version it carried, when `slot` is in
    /// flight under `lease` (the delivery an ack id names is still outstanding).
    pub(crate) fn outstanding(&self, slot: Slot, lease: u64) -> Option<InFlight> {
        let pending = self.in_flight_under(slot, lease)?;
        Some(InFlight {
            json: pending.json.clone(),
            origin: pending.origin,
            state_version: pending.state_version,
        })
    }

    /// Notes the version of its key's state a delivery in flight carries.
    pub(crate) fn note_state_version(&mut self, slot: Slot, lease: u64, version: u64) {
        if self.in_flight_under(slot, lease).is_some() {
            let lane = self.lane_mut(slot.lane);
            if let Some(pending) = lane.pending.get_mut(&slot.offset) {
                pending.state_version = Some(version);
            }
        }
    }

    fn in_flight_under(&self, slot: Slot, lease: u64) -> Option<&Pending> {
        if slot.lane != REDRIVE_LANE && slot.lane as usize >= self.lanes.len() {
            return None;
        }
        let pending = self.lane(slot.lane).pending.get(&slot.offset)?;
        match pending.phase {
            Phase::InFlight { lease: current, .. } if current == lease => Some(pending),
            _ => None,
        }
    }

    /// Ends an attempt. `random` in [0, 1) draws the backoff jitter.
    pub(crate) fn complete(
        &mut self,
        slot: Slot,
        lease: u64,
        outcome: Outcome,
        now_ms: i64,
        policy: &RetryPolicy,
        random: f64,
    ) -> Result<Completed, Stale> {
        // The slot comes from a client's ack id: a lane that does not exist is stale, never
        // an index out of bounds.
        if slot.lane != REDRIVE_LANE && slot.lane as usize >= self.lanes.len() {
            return Err(Stale);
        }
        let lane = self.lane_mut(slot.lane);
        let pending = lane.pending.get_mut(&slot.offset).ok_or(Stale)?;
        let Phase::InFlight {
            lease: current,
            deadline_ms,
        } = pending.phase
        else {
            return Err(Stale);
        };
        if current != lease {
            return Err(Stale);
        }
        let (published_ms, origin) = (pending.published_ms, pending.origin);
        if let Some(deadline_ms) = deadline_ms {
            // Settled before its deadline: forget the deadline now, so the set holds only
            // deliveries in flight (it grew with throughput × ack_timeout before).
            self.deadlines.remove(&(deadline_ms, slot, lease));
        }
        let completed = |settled| Completed {
            settled,
            published_ms,
            origin,
        };
        self.in_flight -= 1;
        self.version += 1;
        let mut exact_delay = None;
        let mut counted = true;
        let (status, error, retry_after, retryable) = match outcome {
            Outcome::Ack => {
                self.counters.delivered += 1;
                self.finish(slot);
                return Ok(completed(Settled::Done));
            }
            Outcome::Fail {
                status,
                error,
                retry_after,
            } => (status, error, retry_after, true),
            Outcome::Reject { status, error } => (status, error, None, false),
            Outcome::Delay(delay) => {
                exact_delay = Some(delay);
                let text = crate::duration::format(delay);
                (None, format!("nacked with a delay of {text}"), None, true)
            }
            Outcome::ConnectionFailed { error, .. } => (None, error, None, true),
            Outcome::Blamed {
                status,
                error,
                at_once,
            } => {
                counted = false;
                exact_delay = at_once.then_some(Duration::ZERO);
                (status, error, None, true)
            }
        };
        self.counters.last_error = Some((now_ms, error.clone()));
        let pending = self
            .lane_mut(slot.lane)
            .pending
            .get_mut(&slot.offset)
            .expect("checked above");
        pending.history.push(AttemptRecord {
            at_ms: now_ms,
            status,
            error: Some(error),
            failover: !counted && exact_delay == Some(Duration::ZERO),
        });
        pending.uncounted += u32::from(!counted);
        let attempts = u32::try_from(pending.history.len()).unwrap_or(u32::MAX) - pending.uncounted;
        if !retryable || (counted && attempts >= policy.max_attempts) {
            pending.phase = Phase::DeadLettering;
            self.dead_letters.push(slot);
            return Ok(completed(Settled::DeadLettering));
        }
        // A blamed failure backs off by all the event's failed attempts but its failovers
        // (each went to another endpoint at once), so that a sink that keeps refusing one
        // event's connections is not tried in a tight loop, while bouncing between the dead
        // endpoints of a group does not stretch the wait once they are back.
        let failures = if counted {
            attempts
        } else {
            let waited = pending.history.iter().filter(|record| !record.failover);
            u32::try_from(waited.count()).unwrap_or(u32::MAX)
        };
        let delay =
            exact_delay.unwrap_or_else(|| retry_delay(policy, failures, random, retry_after));
        let due_ms = now_ms.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        pending.phase = Phase::Waiting { due_ms };
        self.retry_timers.insert((due_ms, slot));
        self.counters.retried += 1;
        Ok(completed(Settled::RetryAt(due_ms)))
    }

    /// Removes a done event; the next event of its key becomes ready.
    fn finish(&mut self, slot: Slot) {
        let lane = self.lane_mut(slot.lane);
        let Some(pending) = lane.pending.remove(&slot.offset) else {
            return;
        };
        lane.pending_bytes -= pending.json.len();
        let mut next = None;
        if let Some(key) = pending.key
            && let Some(queue) = lane.keys.get_mut(&key)
        {
            debug_assert_eq!(
                queue.front(),
                Some(&slot.offset),
                "only a key's head finishes"
            );
            queue.pop_front();
            next = queue.front().copied();
            if queue.is_empty() {
                lane.keys.remove(&key);
            }
        }
        lane.update_committed();
        if let Some(offset) = next {
            let next_slot = Slot {
                lane: slot.lane,
                offset,
            };
            let phase = self.lane(slot.lane).pending.get(&offset).map(|p| p.phase);
            match phase {
                Some(Phase::Waiting { due_ms }) => {
                    self.retry_timers.insert((due_ms, next_slot));
                }
                Some(_) => {
                    self.enqueue(next_slot);
                }
                None => {}
            }
        }
    }

    /// Fires due retry timers and expired ack deadlines. Returns whether any event became
    /// ready, and how many deliveries timed out.
    pub(crate) fn tick(&mut self, now_ms: i64, policy: &RetryPolicy, random: f64) -> (bool, usize) {
        let mut timed_out = 0;
        while let Some(&(deadline_ms, slot, lease)) = self.deadlines.first() {
            if deadline_ms > now_ms {
                break;
            }
            self.deadlines.pop_first();
            let timeout = Outcome::Fail {
                status: None,
                error: "not acknowledged within ack_timeout".to_owned(),
                retry_after: None,
            };
            if self
                .complete(slot, lease, timeout, now_ms, policy, random)
                .is_ok()
            {
                timed_out += 1;
            }
        }
        let mut any_ready = false;
        while let Some(&(due_ms, slot)) = self.retry_timers.first() {
            if due_ms > now_ms {
                break;
            }
            self.retry_timers.pop_first();
            let lane = self.lane_mut(slot.lane);
            let Some(pending) = lane.pending.get(&slot.offset) else {
                continue;
            };
            if pending.phase != (Phase::Waiting { due_ms }) {
                continue;
            }
            let head = lane.is_head(slot.offset, pending.key);
            let pending = lane.pending.get_mut(&slot.offset).expect("looked up above");
            pending.phase = Phase::Ready;
            if head {
                any_ready |= self.enqueue(slot);
            }
        }
        (any_ready, timed_out)
    }

    /// When [`tick`](Self::tick) has something to do next.
    pub(crate) fn next_timer_ms(&self) -> Option<i64> {
        let retry = self.retry_timers.first().map(|(due, _)| *due);
        let deadline = self.deadlines.first().map(|(deadline, _, _)| *deadline);
        retry.into_iter().chain(deadline).min()
    }

    /// Takes the events waiting to be dead-lettered (the caller writes them durably, then
    /// calls [`finish_dead_letters`](Self::finish_dead_letters)).
    pub(crate) fn dead_letters_to_write(&self) -> Vec<DeadLetter> {
        self.dead_letters
            .iter()
            .filter_map(|slot| {
                let pending = self.lane(slot.lane).pending.get(&slot.offset)?;
                Some(DeadLetter {
                    slot: *slot,
                    origin: pending.origin,
                    json: pending.json.clone(),
                    history: pending.history.clone(),
                })
            })
            .collect()
    }

    /// The dead letters just written are durable: their events are done.
    pub(crate) fn finish_dead_letters(&mut self, written: &[DeadLetter]) {
        for letter in written {
            self.dead_letters.retain(|slot| *slot != letter.slot);
            let is_dying = self
                .lane(letter.slot.lane)
                .pending
                .get(&letter.slot.offset)
                .is_some_and(|pending| pending.phase == Phase::DeadLettering);
            if is_dying {
                self.counters.dead_lettered += 1;
                self.finish(letter.slot);
            }
        }
        self.version += 1;
    }

    /// Moves lanes to new offsets (seek): everything pending is dropped, in-flight acks turn
    /// stale, and the redrive lane is kept unless `drop_redriven` (a state rebuild replays the
    /// redriven events).
    pub(crate) fn seek(&mut self, starts: &[u64], drop_redriven: bool) {
        assert_eq!(starts.len(), self.lanes.len());
        self.lanes = starts.iter().map(|&offset| Lane::at(offset)).collect();
        if drop_redriven {
            // Its offsets go on from where they were: a stale ack must not name a new event.
            self.redrive = Lane::at(self.redrive.cursor);
        }
        let kept = |slot: &Slot| slot.lane == REDRIVE_LANE && !drop_redriven;
        self.ready.retain(|slot| kept(slot));
        self.retry_timers.retain(|(_, slot)| kept(slot));
        self.deadlines.retain(|(_, slot, _)| kept(slot));
        self.dead_letters.retain(|slot| kept(slot));
        self.in_flight = self
            .redrive
            .pending
            .values()
            .filter(|pending| matches!(pending.phase, Phase::InFlight { .. }))
            .count();
        self.version += 1;
    }

    /// A lane's oldest events are gone (retention deleted them before delivery): its reader
    /// continues at `start`. What a restored checkpoint says about offsets from `start` on is
    /// kept: events done before the restart stay done.
    pub(crate) fn skip_to(&mut self, lane_number: u32, start: u64) {
        let lane = self.lane_mut(lane_number);
        if lane.cursor >= start {
            return;
        }
        let skipped = match &mut lane.restore {
            Some(restore) => {
                // Below `until`, only the offsets still undone were lost; beyond it, all.
                let kept = restore.undone.split_off(&start);
                let lost = restore.undone.len() as u64 + start.saturating_sub(restore.until);
                restore.undone = kept;
                restore.retries.retain(|offset, _| *offset >= start);
                lost
            }
            None => start - lane.cursor,
        };
        lane.cursor = start;
        if lane
            .restore
            .as_ref()
            .is_some_and(|restore| restore.until <= start)
        {
            lane.restore = None;
        }
        lane.update_committed();
        self.counters.skipped_by_retention += skipped;
        self.version += 1;
    }

    /// Each lane's progress for a checkpoint.
    pub(crate) fn checkpoint(&self) -> Vec<LaneCheckpoint> {
        self.lanes.iter().map(checkpoint_lane).collect()
    }

    /// The redrive lane's pending offsets (dead-letter log offsets), for its reader.
    pub(crate) fn redrive_pending(&self) -> usize {
        self.redrive.pending.len()
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        let mut in_flight = 0;
        for lane in self.lanes.iter().chain(std::iter::once(&self.redrive)) {
            let bytes: usize = lane.pending.values().map(|p| p.json.len()).sum();
            assert_eq!(bytes, lane.pending_bytes, "pending bytes are counted");
            let first = lane.pending.keys().next().copied().unwrap_or(lane.cursor);
            assert_eq!(
                lane.committed, first,
                "committed is the first pending offset"
            );
            for (offset, pending) in &lane.pending {
                assert!(*offset < lane.cursor);
                if matches!(pending.phase, Phase::InFlight { .. }) {
                    in_flight += 1;
                }
                if pending.phase != Phase::Ready && pending.key.is_some() {
                    assert!(
                        lane.is_head(*offset, pending.key),
                        "only a key's head is active"
                    );
                }
            }
        }
        assert_eq!(in_flight, self.in_flight);
        let with_deadline = self
            .lanes
            .iter()
            .chain(std::iter::once(&self.redrive))
            .flat_map(|lane| lane.pending.values())
            .filter(|pending| {
                matches!(
                    pending.phase,
                    Phase::InFlight {
                        deadline_ms: Some(_),
                        ..
                    }
                )
            })
            .count();
        assert_eq!(
            with_deadline,
            self.deadlines.len(),
            "a deadline per pulled delivery"
        );
        assert!(self.in_flight <= self.max_in_flight);
        let mut seen = std::collections::HashSet::new();
        for slot in &self.ready {
            if self.lane(slot.lane).pending.contains_key(&slot.offset) {
                assert!(seen.insert(*slot), "an event is queued at most once");
            }
        }
    }
}

fn checkpoint_lane(lane: &Lane) -> LaneCheckpoint {
    let restore = lane.restore.as_ref();
    // While a lane re-reads after a restore, the offsets it has not reached yet keep their
    // checkpointed state (a rare case: merge through a set).
    let cursor = restore.map_or(lane.cursor, |restore| restore.until.max(lane.cursor));
    let merged: Option<BTreeSet<u64>> = restore.map(|restore| {
        let pending = lane.pending.keys().copied();
        pending.chain(restore.undone.iter().copied()).collect()
    });
    let offsets: Box<dyn Iterator<Item = u64>> = match &merged {
        Some(merged) => Box::new(merged.iter().copied()),
        None => Box::new(lane.pending.keys().copied()),
    };
    let mut offsets = offsets.peekable();
    // Below the first undone offset (or the cursor) everything is done.
    let committed = offsets.peek().copied().unwrap_or(cursor);
    let mut undone: Vec<(u64, u64)> = Vec::new();
    for offset in offsets {
        let delta = offset - committed;
        match undone.last_mut() {
            Some((start, run)) if *start + *run == delta => *run += 1,
            _ => undone.push((delta, 1)),
        }
    }
    let mut retries: Vec<RetryCheckpoint> = lane
        .pending
        .iter()
        .filter(|(_, pending)| !pending.history.is_empty())
        .map(|(offset, pending)| RetryCheckpoint {
            offset: *offset,
            due_ms: match pending.phase {
                Phase::Waiting { due_ms } => due_ms,
                _ => 0,
            },
            history: pending.history.clone(),
            uncounted: pending.uncounted,
        })
        .collect();
    if let Some(restore) = restore {
        retries.extend(restore.retries.values().cloned());
    }
    LaneCheckpoint {
        committed,
        cursor,
        undone,
        retries,
    }
}

#[cfg(test)]
mod tests;
