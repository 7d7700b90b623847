//! The delivery interface: how a delivery mode takes a subscription's events and settles
//! them. Push (a webhook), pull (consumers over HTTP) and, next, in-process handlers are peers
//! on it: each takes ready deliveries with [`Deliveries::take`], hands each to its handler,
//! and settles each with an [`Outcome`] through [`Deliveries::settle`]. Everything that
//! follows an attempt happens there, once: the delivery state machine, the circuit breaker,
//! the attempt and latency metrics, the bookkeeping of redriven dead letters, and the
//! wake-ups of readers, timer and store (see `signals.rs`).
//!
//! To add a delivery mode: a module beside `push.rs` and `pull.rs` that receives a
//! [`Deliveries`], and a variant of the spec's delivery mode that `Subscription::start`
//! starts it for.

use std::sync::Arc;

use tokio::sync::watch;

use super::Shared;
use super::circuit::{Failure, Transition};
use super::dlq::entry_id;
use super::keyed_state::{Committed, Effects, Found, KeyedState, Position, commit_request};
use super::spec::SubscriptionSpec;
use super::state::{Delivery, Outcome, REDRIVE_LANE, Settled, Slot, Stale};
use crate::clock::{format_rfc3339_ms, now_ms};
use crate::error::EngineError;

/// A subscription's delivery interface, as a delivery mode sees it. Cheap to clone.
#[derive(Clone)]
pub(super) struct Deliveries {
    shared: Arc<Shared>,
}

/// A handler's answer to commit ([`Deliveries::commit_answers`]).
pub(super) struct Answer<'a> {
    pub(super) delivery: &'a Delivery,
    /// The rebuild generation read before the delivery's state.
    pub(super) generation: u64,
    pub(super) state: Option<Box<serde_json::value::RawValue>>,
    pub(super) emit: Vec<keel_api::state::Emit>,
}

/// An outstanding delivery, when it still is.
pub(super) type Outstanding = Option<super::state::InFlight>;

/// One delivery's end, as a mode reports it.
pub(super) struct Settlement {
    /// The delivery, as [`Deliveries::take`] handed it out.
    pub(super) slot: Slot,
    /// Its lease: a settlement of an older delivery of the same event is stale.
    pub(super) lease: u64,
    /// How the handler answered.
    pub(super) outcome: Outcome,
}

impl Deliveries {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Deliveries { shared }
    }

    /// The subscription's name.
    pub(super) fn name(&self) -> &str {
        &self.shared.name
    }

    /// The subscription's spec.
    pub(super) fn spec(&self) -> &SubscriptionSpec {
        &self.shared.spec
    }

    /// Records where the sink's validation handshake stands, for describe.
    pub(super) fn set_handshake(&self, status: String) {
        self.shared.core().handshake = Some(status);
    }

    /// Builds the sink's HTTP clients.
    pub(super) fn sinks(&self) -> &crate::webhook::SinkClients {
        &self.shared.sinks
    }

    /// Part of every pull ack id: ids from before a restart are stale.
    pub(super) fn boot(&self) -> u32 {
        self.shared.boot
    }

    /// Bumped when events may be taken.
    pub(super) fn ready(&self) -> watch::Receiver<u64> {
        self.shared.signals.ready()
    }

    /// Turns true when the subscription stops.
    pub(super) fn stopping(&self) -> watch::Receiver<bool> {
        self.shared.signals.stopping()
    }

    /// Turns true when keel shuts down (long polls answer early).
    pub(super) fn closing(&self) -> watch::Receiver<bool> {
        self.shared.closing.clone()
    }

    /// Fails when the subscription's storage failed.
    pub(super) fn check_available(&self) -> Result<(), EngineError> {
        self.shared.durability.check_available(&self.shared.name)
    }

    /// Waits until the subscription's state at `version` is durable.
    pub(super) async fn wait_durable(&self, version: u64) -> Result<(), EngineError> {
        self.shared
            .durability
            .wait(&self.shared.name, version)
            .await
    }

    /// A stateful subscription's per-key state.
    pub(super) fn keyed(&self) -> Option<&KeyedState> {
        self.shared.keyed.as_ref()
    }

    /// For each ack id's delivery (lane and offset, lease): its event and origin while it is
    /// outstanding.
    pub(super) fn outstanding(&self, deliveries: &[(Slot, u64)]) -> Vec<Outstanding> {
        let core = self.shared.core();
        deliveries
            .iter()
            .map(|(slot, lease)| core.delivery.outstanding(*slot, *lease))
            .collect()
    }

    /// For each taken delivery of a stateful subscription, whether its commit was applied
    /// already, or its key's state. Those applied are settled as done here. (A caller that
    /// commits later reads the rebuild generation before this.)
    pub(super) async fn find_state(&self, taken: &[Delivery]) -> Result<Vec<Found>, EngineError> {
        let positions: Vec<(Arc<str>, Position)> = taken
            .iter()
            .map(|delivery| {
                (
                    delivery.json.clone(),
                    position(delivery.slot, delivery.origin),
                )
            })
            .collect();
        let shared = self.shared.clone();
        let found = tokio::task::spawn_blocking(move || {
            let mut found = match &shared.keyed {
                Some(keyed) => keyed.find(&positions)?,
                None => vec![Found::Deliver(None); positions.len()],
            };
            dead_lettered_already(&shared, &positions, &mut found);
            Ok::<_, EngineError>(found)
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)??;
        {
            let mut core = self.shared.core();
            for (delivery, found) in taken.iter().zip(&found) {
                if let Found::Deliver(Some(state)) = found {
                    let (slot, lease) = (delivery.slot, delivery.lease);
                    core.delivery.note_state_version(slot, lease, state.version);
                }
            }
        }
        let applied: Vec<Settlement> = taken
            .iter()
            .zip(&found)
            .filter(|(_, found)| **found == Found::Applied)
            .map(|(delivery, _)| Settlement {
                slot: delivery.slot,
                lease: delivery.lease,
                outcome: Outcome::Ack,
            })
            .collect();
        if !applied.is_empty() {
            self.settle(applied, "applied_before");
        }
        Ok(found)
    }

    /// Commits handlers' answers (a push sink's 2xx, in-process handlers' results), each for
    /// its delivery and the rebuild generation read before its state: the key's new state and
    /// the events to emit, in one group commit. Each answer is done also when its event's
    /// commit was applied before (stale); an answer whose delivery is no longer outstanding
    /// commits nothing (its settlement is stale); an invalid one gets its own error. Fails
    /// whole when the state cannot be stored. The caller settles the deliveries afterwards.
    pub(super) async fn commit_answers(
        &self,
        answers: Vec<Answer<'_>>,
    ) -> Result<Vec<Result<(), EngineError>>, EngineError> {
        let Some(keyed) = self.keyed() else {
            return Ok(answers.iter().map(|_| Ok(())).collect());
        };
        let mut results = Vec::with_capacity(answers.len());
        let (mut requests, mut committing) = (Vec::new(), Vec::new());
        let named: Vec<(Slot, u64)> = answers
            .iter()
            .map(|answer| (answer.delivery.slot, answer.delivery.lease))
            .collect();
        let outstanding = self.outstanding(&named);
        for (answer, in_flight) in answers.into_iter().zip(outstanding) {
            let delivery = answer.delivery;
            // No longer outstanding (its ack deadline passed, a seek or a rebuild dropped
            // it): nothing is committed, as for a pull ack; its settlement is stale, and the
            // event comes again. (Committed, it would skip the check of the state's version.)
            let Some(in_flight) = in_flight else {
                results.push(Ok(()));
                continue;
            };
            let based_on = in_flight.state_version;
            let request = Effects::checked(0, answer.state, answer.emit, &self.shared.targets)
                .and_then(|effects| {
                    let position = position(delivery.slot, delivery.origin);
                    let basis = (position, answer.generation, based_on);
                    commit_request(keyed.emitter(), &delivery.json, basis, 0, &effects)
                });
            match request {
                Ok(Some(request)) => {
                    requests.push(request);
                    committing.push(results.len());
                }
                Ok(None) => {}
                Err(error) => {
                    results.push(Err(error));
                    continue;
                }
            }
            results.push(Ok(()));
        }
        let committed = keyed.commit(requests).await?;
        for (index, outcome) in committing.into_iter().zip(committed) {
            if outcome == Committed::Conflict {
                results[index] = Err(keyed.conflict());
            }
        }
        Ok(results)
    }

    /// Takes up to `max` ready deliveries, within `max_in_flight` and the circuit breaker,
    /// each in flight until settled (or, with `deadline_ms`, until then). Also answers when
    /// an open circuit lets the next probe through. Fails with the reason while paused.
    /// Why nothing may be handed out here now: in a cluster, this node's lease may have
    /// lapsed.
    pub(super) fn lapsed(&self) -> Option<String> {
        self.shared.lapsed()
    }

    pub(super) fn take(
        &self,
        max: usize,
        deadline_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(Vec<Delivery>, Option<i64>), String> {
        if let Some(reason) = self.shared.lapsed() {
            return Err(reason);
        }
        let mut core = self.shared.core();
        if let Some(reason) = &core.paused {
            return Err(reason.clone());
        }
        if core.rebuilding {
            return Ok((Vec::new(), None));
        }
        let (permits, transition) = match core.circuit.as_mut() {
            Some(circuit) => {
                let transition = circuit.poll(now_ms);
                (circuit.permits(), transition)
            }
            None => (None, None),
        };
        let taken = core
            .delivery
            .take_ready(permits.unwrap_or(max).min(max), deadline_ms);
        if let Some(circuit) = core.circuit.as_mut() {
            for delivery in &taken {
                circuit.on_start(delivery.lease);
            }
        }
        let probe_at_ms = core.circuit.as_ref().and_then(|c| c.probe_at_ms());
        core.follow(transition.as_ref());
        drop(core);
        self.shared.announce(transition);
        if deadline_ms.is_some() && !taken.is_empty() {
            self.shared.signals.wake_timer();
        }
        Ok((taken, probe_at_ms))
    }

    /// Settles deliveries: each is done, retried, dead-lettered or stale (its lease is no
    /// longer the one in flight). Counts the settled ones under `label` in the attempts
    /// metric. Returns what became of each and the state's version, which
    /// [`Deliveries::wait_durable`] waits for.
    pub(super) fn settle(
        &self,
        settlements: Vec<Settlement>,
        label: &'static str,
    ) -> (Vec<Result<Settled, Stale>>, u64) {
        let shared = &self.shared;
        let now = now_ms();
        let mut results = Vec::with_capacity(settlements.len());
        let mut acked_published_ms = Vec::new();
        let mut transitions = Vec::new();
        let version = {
            let mut core = shared.core();
            for settlement in settlements {
                let (outcome, transition) = core.judge(settlement.lease, settlement.outcome, now);
                core.follow(transition.as_ref());
                transitions.extend(transition);
                let completed = core.delivery.complete(
                    settlement.slot,
                    settlement.lease,
                    outcome,
                    now,
                    &shared.spec.retry,
                    fastrand::f64(),
                );
                if let Ok(completed) = &completed
                    && completed.settled == Settled::Done
                {
                    if settlement.slot.lane == REDRIVE_LANE {
                        // Its dead-letter entry goes once the store writes the next round.
                        core.redrive_acked.push(entry_id(completed.origin));
                    } else {
                        acked_published_ms.push(completed.published_ms);
                    }
                }
                results.push(completed.map(|completed| completed.settled));
            }
            core.delivery.version()
        };
        for transition in transitions {
            shared.announce(Some(transition));
        }
        let settled = results.iter().filter(|result| result.is_ok()).count();
        shared.count_attempts(label, settled as u64);
        for published_ms in acked_published_ms {
            shared.observe_ack(published_ms);
        }
        if results.contains(&Ok(Settled::Done)) {
            shared.signals.wake_readers();
        }
        if results.iter().any(|r| matches!(r, Ok(Settled::RetryAt(_)))) {
            shared.signals.wake_timer();
        }
        shared.signals.changed(true);
        (results, version)
    }

    /// Reports a change of one of the sink's endpoints (logged; a gain wakes the dispatcher).
    pub(super) fn endpoint_changed(
        &self,
        sink: &super::sink::PushSink,
        change: &super::endpoints::Change,
    ) {
        self.shared.endpoint_changed(sink, change);
    }

    /// Pauses the subscription when its sink has been failing for `pause_after` by `now_ms`
    /// (an outage running, counted from the last resume at the earliest), with a notice; a
    /// passing health check resumes it (`health_check.rs`), or an operator. Returns when to
    /// look again while the sink fails but not yet for long enough.
    pub(super) fn pause_if_failing(
        &self,
        pause_after: std::time::Duration,
        health_checked: bool,
        now_ms: i64,
    ) -> Option<i64> {
        let shared = &self.shared;
        let mut core = shared.core();
        if core.paused.is_some() {
            return None;
        }
        let Some(failing_since) = core.sink_outages.as_ref()?.failing_since_ms() else {
            // The outage is over: a later one's pause may be resumed by health checks again.
            core.checks_resumed_in_outage = false;
            return None;
        };
        let after_ms = i64::try_from(pause_after.as_millis()).unwrap_or(i64::MAX);
        let due_ms = failing_since
            .max(core.pause_clock_ms)
            .saturating_add(after_ms);
        if now_ms < due_ms {
            return Some(due_ms);
        }
        let resumes = if core.checks_resumed_in_outage {
            "its health checks pass while its deliveries fail, so they no longer resume it: resume it once the sink is fixed"
        } else if health_checked {
            "it resumes by itself once a health check passes, or resume it"
        } else {
            "resume it once the sink is fixed"
        };
        let reason = format!(
            "keel paused it: the sink has been failing since {} (sink.pause_after is {}); {resumes} (keel sub resume {})",
            format_rfc3339_ms(failing_since),
            keel_api::duration::format(pause_after),
            shared.name
        );
        tracing::warn!(subscription = %shared.name, %reason, "pausing the subscription");
        let data = serde_json::json!({
            "subscription": shared.name,
            "reason": reason,
            "by": "keel",
            "failing_since": format_rfc3339_ms(failing_since),
        });
        shared
            .notices
            .report("subscription.paused", &shared.name, data);
        core.paused = Some(reason);
        core.auto_paused = true;
        core.delivery.touch();
        drop(core);
        shared.signals.changed(true);
        None
    }

    /// Pauses the subscription (when it is not paused already) for `reason`: the handler
    /// asked for no more events.
    pub(super) fn pause(&self, reason: String) {
        let mut core = self.shared.core();
        if core.paused.is_none() {
            tracing::warn!(subscription = %self.shared.name, %reason, "pausing the subscription");
            let data = serde_json::json!({"subscription": self.shared.name, "reason": reason});
            self.shared
                .notices
                .report("subscription.paused", &self.shared.name, data);
            core.paused = Some(reason);
        }
    }
}

/// Settles as done the deliveries from a partition whose event is in the dead-letter queue:
/// a copy of an event dead-lettered before a crash (the checkpoint had not recorded it yet)
/// or before a seek back. The event belongs to the queue, and is applied when redriven:
/// were this copy applied too, its redrive would apply it again.
///
/// Also settles as done the redriven deliveries whose entry is no longer in the queue of the
/// state's generation: a redrive handed over while a rebuild was switching over (after its
/// seek dropped the redrive lane, before the generation moved on). The rebuild voided the
/// entry, and its replay delivers the event from its partition; were the redriven copy
/// applied too, the event would count twice. Blocking.
fn dead_lettered_already(
    shared: &super::Shared,
    positions: &[(Arc<str>, Position)],
    found: &mut [Found],
) {
    if shared.keyed.is_none() {
        return;
    }
    let redriven = positions
        .iter()
        .any(|(_, position)| position.redriven.is_some());
    if !redriven && shared.dlq_depth.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        return;
    }
    // An entry of an older generation is void: the rebuild's replay (this copy, perhaps)
    // decides its event again.
    let generation = shared.generation();
    let dlq = shared.dlq.lock().expect("dlq lock");
    for ((_, position), found) in positions.iter().zip(found) {
        if !matches!(found, Found::Deliver(Some(_))) {
            continue;
        }
        let live = dlq.contains(&entry_id(position.origin), generation);
        // A partition's copy of a live entry's event, or a redrive of a void entry.
        if live == position.redriven.is_none() {
            *found = Found::Applied;
        }
    }
}

/// Where a delivery's event is, for its commit: a redriven one is also named by its
/// dead-letter entry.
pub(super) fn position(slot: Slot, origin: (u32, u64)) -> Position {
    Position {
        origin,
        redriven: (slot.lane == REDRIVE_LANE).then(|| entry_id(origin)),
    }
}

impl super::Core {
    /// Runs an attempt's outcome through the circuit breaker, when the mode has one, and
    /// returns the outcome to settle with and the circuit's change of state. A failure the
    /// breaker blames on the sink (`circuit::Verdict`) becomes `Blamed`: it does not spend the
    /// event's attempts, so that while the sink is down events wait instead of running out of
    /// retries. Without a breaker every failure spends an attempt.
    fn judge(
        &mut self,
        lease: u64,
        outcome: Outcome,
        now_ms: i64,
    ) -> (Outcome, Option<Transition>) {
        let failure = match &outcome {
            Outcome::Fail { .. } => Some(Failure::Answered),
            Outcome::ConnectionFailed { unreached, .. } => Some(Failure::Connection {
                unreached: *unreached,
            }),
            // The handler answered (a 4xx refusal included) or there was no attempt.
            Outcome::Ack | Outcome::Reject { .. } | Outcome::Delay(_) | Outcome::Blamed { .. } => {
                None
            }
        };
        let verdict = self
            .circuit
            .as_mut()
            .map(|circuit| circuit.judge(lease, failure, now_ms));
        let blamed = verdict
            .as_ref()
            .is_some_and(|verdict| verdict.blamed_on_sink);
        let at_once = verdict.as_ref().is_some_and(|verdict| verdict.held_back);
        let outcome = match outcome {
            Outcome::Fail { status, error, .. } if blamed => Outcome::Blamed {
                status,
                error,
                at_once,
            },
            Outcome::ConnectionFailed { error, .. } if blamed => Outcome::Blamed {
                status: None,
                error,
                at_once,
            },
            Outcome::ConnectionFailed { error, .. } => Outcome::Fail {
                status: None,
                error,
                retry_after: None,
            },
            outcome => outcome,
        };
        (outcome, verdict.and_then(|verdict| verdict.transition))
    }

    /// Counts a change of the circuit into the sink's outages.
    fn follow(&mut self, transition: Option<&Transition>) {
        if let (Some(outages), Some(transition)) = (&mut self.sink_outages, transition) {
            outages.record(transition);
        }
    }
}
