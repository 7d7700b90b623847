//! Push delivery, a mode of the delivery interface (`delivery.rs`): the dispatcher takes
//! ready events within the circuit breaker and the rate limit and sends each to the sink in a
//! task of its own; each answer settles its event.

mod handshake;

use std::time::Duration;

use super::delivery::{Answer, Deliveries, Settlement};
use super::keyed_state::Found;
use super::sink::PushSink;
use super::spec::Delivery;
use super::state::{Delivery as Taken, Outcome};
use crate::clock::{format_rfc3339_ms, now_ms};
use crate::supervisor::{CatchUnwind, panic_message};
use crate::webhook::{AttemptOutcome, PushClient};
use keel_api::state::CommitAnswer;
use std::sync::Arc;

/// Most events the dispatcher starts in one go before it looks at its signals again.
const DISPATCH_BATCH_MAX: usize = 256;

/// Sends the subscription's events to its sink's endpoints until it stops.
pub(super) async fn dispatch(deliveries: Deliveries, sink: Arc<PushSink>) {
    let mut client = deliveries
        .sinks()
        .client(deliveries.spec().max_in_flight as usize);
    if let Delivery::Push(spec) = &deliveries.spec().delivery
        && spec.handshake
    {
        // Invariant: no event is taken before every endpoint agreed.
        match handshake::until_agreed(&deliveries, &sink, client).await {
            Some(agreed) => client = agreed,
            None => return,
        }
    }
    let mut ready = deliveries.ready();
    let mut stopping = deliveries.stopping();
    let mut limiter = deliveries.spec().rate_limit.map(RateLimiter::new);
    let pause_after = sink.pause_after();
    loop {
        ready.borrow_and_update();
        let now = now_ms();
        let (changes, available, readmission_ms) = sink.readmit(now);
        for change in &changes {
            deliveries.endpoint_changed(&sink, change);
        }
        let pause_check_ms = pause_after
            .and_then(|after| deliveries.pause_if_failing(after, sink.health_checked(), now));
        let allowed = limiter
            .as_mut()
            .map_or(DISPATCH_BATCH_MAX, |l| l.available(now));
        // Paused: nothing starts until a resume bumps `ready`. No endpoint available: nothing
        // starts until one is readmitted or healthy again.
        let (taken, wake_at_ms) = if available {
            deliveries
                .take(allowed.min(DISPATCH_BATCH_MAX), None, now)
                .unwrap_or_default()
        } else {
            (Vec::new(), None)
        };
        if let Some(limiter) = &mut limiter {
            limiter.spend(taken.len());
        }
        let started = taken.len();
        for delivery in taken {
            let (deliveries, client, sink) = (deliveries.clone(), client.clone(), sink.clone());
            // Some while one is available (checked above, under the same state).
            let endpoint = sink
                .pick(&delivery.json, delivery.failovers)
                .unwrap_or_default();
            let mut stopped = stopping.clone();
            tokio::spawn(async move {
                let (slot, lease) = (delivery.slot, delivery.lease);
                let attempt =
                    std::pin::pin!(attempt(&deliveries, &client, (&sink, endpoint), delivery));
                // A stop (delete, update, shutdown) drops the attempt: its settlement could no
                // longer be stored, and the event is delivered again from the checkpoint (at
                // least once). Dropped, it no longer holds the subscription's logs open.
                let finished = tokio::select! {
                    finished = CatchUnwind(attempt) => finished,
                    _ = stopped.wait_for(|stopping| *stopping) => return,
                };
                if let Err(panic) = finished {
                    // A bug: the attempt counts as failed rather than staying in flight.
                    let error = format!(
                        "the push attempt failed on a bug in keel: {}",
                        panic_message(panic.as_ref())
                    );
                    let outcome = Outcome::Fail {
                        status: None,
                        error,
                        retry_after: None,
                    };
                    deliveries.settle(
                        vec![Settlement {
                            slot,
                            lease,
                            outcome,
                        }],
                        "failed",
                    );
                }
            });
        }
        if started > 0 {
            continue;
        }
        // Nothing could start: wait for a change, the circuit's probe time or a token.
        let token_ms = limiter
            .as_ref()
            .filter(|_| allowed == 0)
            .map(|l| l.next_token_ms());
        let wake_ms = wake_at_ms
            .into_iter()
            .chain(token_ms)
            .chain(readmission_ms)
            .chain(pause_check_ms)
            .min();
        let sleep_ms = wake_ms.map_or(60_000, |at| (at - now).clamp(1, 60_000));
        tokio::select! {
            _ = ready.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {}
            _ = stopping.wait_for(|stopping| *stopping) => return,
        }
    }
}

/// Sends one event and settles it by the answer. For a stateful subscription the request
/// carries the key's state, and a 2xx answer's body is committed first (see `commit`).
async fn attempt(
    deliveries: &Deliveries,
    client: &PushClient,
    (sink, endpoint): (&PushSink, usize),
    delivery: Taken,
) {
    let target = &*sink.target(endpoint);
    let timeout = deliveries.spec().ack_timeout;
    let json = &delivery.json;
    // Read before the state: a rebuild after this makes the commit stale.
    let generation = deliveries.keyed().map_or(0, |keyed| keyed.generation());
    let state = match deliveries.keyed() {
        None => None,
        Some(_) => match deliveries.find_state(std::slice::from_ref(&delivery)).await {
            // Applied before a crash or by an earlier delivery: `find_state` settled it.
            Ok(found) if found.first() == Some(&Found::Applied) => return,
            Ok(mut found) => match found.pop() {
                Some(Found::Deliver(state)) => state,
                _ => None,
            },
            // The state cannot be read: the subscription refuses service already.
            Err(_) => return,
        },
    };
    let answer = match &state {
        Some(state) => {
            let (answer, body) = client
                .deliver_stateful(target, json, delivery.attempt, timeout, state)
                .await;
            match answer {
                AttemptOutcome::Delivered { .. } => {
                    commit(deliveries, (&delivery, generation), &body).await
                }
                answer => answer,
            }
        }
        None => {
            client
                .deliver(target, json, delivery.attempt, timeout)
                .await
        }
    };
    let (change, others_available) = sink.record(endpoint, &answer, now_ms());
    if let Some(change) = &change {
        deliveries.endpoint_changed(sink, change);
    }
    let (outcome, label) = match answer {
        AttemptOutcome::Delivered { .. } => (Outcome::Ack, "acked"),
        AttemptOutcome::Retry {
            status,
            error,
            retry_after,
        } => (
            Outcome::Fail {
                status,
                error,
                retry_after,
            },
            "failed",
        ),
        // One endpoint of a group is down while another is available: the group, not the
        // circuit, judges the endpoint (its failures eject it). A request that never reached
        // it goes to another endpoint at once without spending an attempt; one that was cut
        // off may have reached it (the event may be the cause), so it is an ordinary failed
        // attempt. (With no other available, the sink as a whole is down: the circuit judges,
        // as for one URL.) Invariant: an event fails over at once at most once per endpoint
        // in a row; when every endpoint failed it (all down, some not ejectable under the
        // cap), the circuit judges it and it waits its backoff, so a group of dead endpoints
        // is never tried in a tight loop.
        AttemptOutcome::ConnectionFailed { error, unreached }
            if others_available && (delivery.failovers as usize) + 1 < sink.len() =>
        {
            let endpoint = crate::webhook::redacted_url(&target.url);
            let error = format!("{error} (endpoint {endpoint})");
            let outcome = if unreached {
                Outcome::Blamed {
                    status: None,
                    error,
                    at_once: true,
                }
            } else {
                Outcome::Fail {
                    status: None,
                    error,
                    retry_after: None,
                }
            };
            (outcome, "failed")
        }
        AttemptOutcome::ConnectionFailed { error, unreached } => {
            (Outcome::ConnectionFailed { error, unreached }, "failed")
        }
        AttemptOutcome::Gone { status } => {
            deliveries.pause(format!(
                "the sink answered 410 Gone at {}; resume the subscription once it accepts events again",
                format_rfc3339_ms(now_ms())
            ));
            let error = format!("{status} Gone: the sink wants no more events");
            let outcome = Outcome::Fail {
                status: Some(status),
                error,
                retry_after: None,
            };
            (outcome, "failed")
        }
        AttemptOutcome::Reject { status, error } => (
            Outcome::Reject {
                status: Some(status),
                error,
            },
            "rejected",
        ),
    };
    let settlement = Settlement {
        slot: delivery.slot,
        lease: delivery.lease,
        outcome,
    };
    deliveries.settle(vec![settlement], label);
}

/// Commits a stateful sink's 2xx answer: an empty body keeps the key's state; otherwise it
/// is `{"state": …, "emit": […]}`, as one ack of a pull. An answer that is not a valid commit
/// counts as a failed attempt (retried, then dead-lettered), with the reason.
async fn commit(deliveries: &Deliveries, delivery: (&Taken, u64), body: &[u8]) -> AttemptOutcome {
    let failed = |error: String| AttemptOutcome::Retry {
        status: None,
        error: format!("the sink's 2xx answer is not a commit: {error}"),
        retry_after: None,
    };
    let answer: CommitAnswer = if body.iter().all(u8::is_ascii_whitespace) {
        CommitAnswer::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(answer) => answer,
            Err(error) => return failed(error.to_string()),
        }
    };
    let (delivery, generation) = delivery;
    let answers = vec![Answer {
        delivery,
        generation,
        state: answer.state,
        emit: answer.emit,
    }];
    match deliveries
        .commit_answers(answers)
        .await
        .map(|mut results| results.pop())
    {
        Ok(Some(Ok(())) | None) => AttemptOutcome::Delivered { status: 200 },
        Ok(Some(Err(error))) | Err(error) => failed(error.to_string()),
    }
}

/// A token bucket: `rate` deliveries per second, bursting up to one second's worth.
#[derive(Debug)]
struct RateLimiter {
    rate: f64,
    tokens: f64,
    updated_ms: i64,
}

impl RateLimiter {
    fn new(rate: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            tokens: 1.0,
            updated_ms: now_ms(),
        }
    }

    /// Whole tokens available at `now_ms`.
    fn available(&mut self, now_ms: i64) -> usize {
        let elapsed_s = (now_ms - self.updated_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed_s * self.rate).min(self.rate.max(1.0));
        self.updated_ms = now_ms;
        self.tokens.floor() as usize
    }

    fn spend(&mut self, count: usize) {
        self.tokens -= count as f64;
    }

    /// When the next whole token arrives.
    fn next_token_ms(&self) -> i64 {
        let missing = (1.0 - self.tokens).max(0.0);
        self.updated_ms + (missing / self.rate * 1000.0).ceil() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the bucket allows `rate` per second after the first token, bursts at most one
    // second's worth, and says when the next token comes.
    #[test]
    fn rate_limiter_paces_deliveries() {
        let mut limiter = RateLimiter::new(10);
        let start = limiter.updated_ms;
        assert_eq!(limiter.available(start), 1);
        limiter.spend(1);
        assert_eq!(limiter.available(start), 0);
        assert_eq!(limiter.next_token_ms(), start + 100);
        assert_eq!(limiter.available(start + 250), 2);
        assert_eq!(
            limiter.available(start + 60_000),
            10,
            "burst capped at a second"
        );
    }
}
