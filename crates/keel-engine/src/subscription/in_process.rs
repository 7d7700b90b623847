//! In-process delivery, a mode of the delivery interface (`delivery.rs`): a Rust handler
//! attached to a subscription takes its events directly, each in a task of its own, and its
//! result settles the event (`crate::handler` has the contract).
//!
//! Each handler call runs in a task of its own, which catches a panic of the call (it is
//! counted as a failed attempt) and drops a call that runs past `ack_timeout` (counted as one
//! too): a bad handler costs its own event's attempts, never the engine. Finished calls
//! go to one settler, which commits the successes of everything finished meanwhile in one
//! group commit and settles them together.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::delivery::{Answer, Deliveries, Settlement};
use super::keyed_state::Found;
use super::state::{Delivery, Outcome};
use crate::clock::now_ms;
use crate::handler::{Delivered, Handled, Handler, HandlerError};
use crate::supervisor::{CatchUnwind, panic_message};

/// Most finished calls settled together.
const SETTLE_BATCH_MAX: usize = 1024;

/// How long stopping waits for handler calls in flight to finish.
pub(crate) const DRAIN_WAIT_MAX: Duration = Duration::from_secs(30);

/// Runs `handler` on the subscription's events until `stop` (its handle) or `detach` (an
/// update) turns true, or the subscription stops; then stops taking events and waits (up to
/// [`DRAIN_WAIT_MAX`]) for the calls in flight to finish and be settled.
pub(super) async fn run(
    deliveries: Deliveries,
    handler: Arc<dyn Handler>,
    mut stop: watch::Receiver<bool>,
    mut detach: watch::Receiver<bool>,
) {
    let mut ready = deliveries.ready();
    let mut stopping = deliveries.stopping();
    let timeout = deliveries.spec().ack_timeout;
    let deadline_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    let mut calls = JoinSet::new();
    let (finished, results) = mpsc::unbounded_channel();
    let settler = tokio::spawn(settle_finished(deliveries.clone(), results));
    loop {
        ready.borrow_and_update();
        if deliveries.check_available().is_err() {
            // Its storage failed: it refuses service until a restart, and spends no attempts.
            break;
        }
        let now = now_ms();
        // A paused subscription hands out nothing until a resume bumps `ready`.
        let (taken, _) = deliveries
            .take(usize::MAX, Some(now.saturating_add(deadline_ms)), now)
            .unwrap_or_default();
        // Read before the states: a rebuild after this makes the commits stale.
        let generation = deliveries.keyed().map_or(0, |keyed| keyed.generation());
        let found = match deliveries.keyed() {
            _ if taken.is_empty() => Vec::new(),
            None => vec![Found::Deliver(None); taken.len()],
            Some(_) => match deliveries.find_state(&taken).await {
                Ok(found) => found,
                // The state cannot be read: the subscription refuses service already.
                Err(_) => break,
            },
        };
        for (delivery, found) in taken.into_iter().zip(found) {
            // Applied before: `find_state` settled it.
            let Found::Deliver(state) = found else {
                continue;
            };
            let (handler, finished) = (handler.clone(), finished.clone());
            calls.spawn(async move {
                let started = Started {
                    delivery,
                    generation,
                    state,
                };
                call(handler, started, timeout, finished).await;
            });
        }
        tokio::select! {
            _ = ready.changed() => {}
            Some(_) = calls.join_next(), if !calls.is_empty() => {}
            _ = stop.wait_for(|stop| *stop) => break,
            _ = detach.wait_for(|detach| *detach) => break,
            _ = stopping.wait_for(|stopping| *stopping) => return,
        }
    }
    let drained = tokio::time::timeout(DRAIN_WAIT_MAX, async {
        while calls.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(subscription = %deliveries.name(), "handler calls still running after the drain wait; their events will be delivered again");
    }
    calls.abort_all();
    // Every sender gone, the settler settles what is left and ends.
    drop(finished);
    let _ = settler.await;
}

/// A delivery about to be handled: the rebuild generation read before its state, and its
/// key's state.
struct Started {
    delivery: Delivery,
    generation: u64,
    state: Option<crate::subscription::KeyState>,
}

/// One handler call, settled by its result.
async fn call(
    handler: Arc<dyn Handler>,
    started: Started,
    timeout: Duration,
    finished: mpsc::UnboundedSender<Finished>,
) {
    let Started {
        delivery,
        generation,
        state,
    } = started;
    let event = Delivered {
        json: delivery.json.clone(),
        partition: delivery.origin.0,
        offset: delivery.origin.1,
        attempt: delivery.attempt,
        state,
    };
    let called = tokio::time::timeout(timeout, CatchUnwind(handler.handle(event))).await;
    let result = match called {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(panic)) => Err(format!(
            "the handler panicked: {}",
            panic_message(panic.as_ref())
        )),
        // The call is dropped: its future runs no further.
        Err(_) => Err(format!(
            "the handler ran past the ack_timeout of {}",
            crate::duration::format(timeout)
        )),
    };
    let _ = finished.send(Finished {
        delivery,
        generation,
        result,
    });
}

/// A handler call's end, for the settler.
struct Finished {
    delivery: Delivery,
    generation: u64,
    result: Result<Result<Handled, HandlerError>, String>,
}

/// Settles finished calls in groups: the successes' commits in one group commit, then every
/// settlement of the group at once. Runs until every call's sender is gone.
async fn settle_finished(deliveries: Deliveries, mut finished: mpsc::UnboundedReceiver<Finished>) {
    let mut batch = Vec::new();
    while finished.recv_many(&mut batch, SETTLE_BATCH_MAX).await > 0 {
        let mut group = std::mem::take(&mut batch);
        // The successes' effects move into their commits.
        let answers = group
            .iter_mut()
            .filter_map(|finished| match &mut finished.result {
                Ok(Ok(handled)) => Some(Answer {
                    delivery: &finished.delivery,
                    generation: finished.generation,
                    state: handled.state.take(),
                    emit: std::mem::take(&mut handled.emit),
                }),
                _ => None,
            })
            .collect();
        let mut committed = match deliveries.commit_answers(answers).await {
            Ok(committed) => committed.into_iter(),
            // The state cannot be stored: the subscription refuses service, and these events
            // are delivered again after the restart, their attempts not spent.
            Err(_) => return,
        };
        let mut by_label: Vec<(&'static str, Vec<Settlement>)> = Vec::new();
        for finished in group {
            let (outcome, label) = match finished.result {
                Ok(Ok(_)) => match committed.next() {
                    Some(Err(error)) => (
                        fail(format!("the handler's result cannot be committed: {error}")),
                        "failed",
                    ),
                    _ => (Outcome::Ack, "acked"),
                },
                Ok(Err(HandlerError::Retry {
                    delay: Some(delay), ..
                })) => (Outcome::Delay(delay), "nacked"),
                Ok(Err(HandlerError::Retry {
                    reason,
                    delay: None,
                })) => (fail(reason), "failed"),
                Ok(Err(HandlerError::Permanent { reason })) => (
                    Outcome::Reject {
                        status: None,
                        error: reason,
                    },
                    "rejected",
                ),
                Err(error) => (fail(error), "failed"),
            };
            let settlement = Settlement {
                slot: finished.delivery.slot,
                lease: finished.delivery.lease,
                outcome,
            };
            match by_label.iter_mut().find(|(known, _)| *known == label) {
                Some((_, settlements)) => settlements.push(settlement),
                None => by_label.push((label, vec![settlement])),
            }
        }
        for (label, settlements) in by_label {
            deliveries.settle(settlements, label);
        }
    }
}

fn fail(error: String) -> Outcome {
    Outcome::Fail {
        status: None,
        error,
        retry_after: None,
    }
}
