//! Push delivery: the dispatcher takes ready events within the circuit breaker and the rate
//! limit and sends each to the sink in a task of its own; each answer settles its event.

use std::sync::Arc;
use std::time::Duration;

use super::circuit::CircuitState;
use super::spec::SinkSpec;
use super::state::{Delivery, Outcome, REDRIVE_LANE, Settled};
use super::{Shared, attempt_labels, observe_ack};
use crate::clock::{format_rfc3339_ms, now_ms};
use crate::webhook::{AttemptOutcome, PushClient, SinkTarget};

/// Most events the dispatcher starts in one go before it looks at its signals again.
const DISPATCH_BATCH_MAX: usize = 256;

/// Sends the subscription's events to its sink until it stops.
pub(super) async fn dispatch(shared: Arc<Shared>, sink: SinkSpec) {
    let (Ok(url), Some(secret)) = (crate::webhook::validate_sink_url(&sink.url), sink.secret)
    else {
        tracing::error!(subscription = %shared.name, "push subscription without a valid sink; not delivering");
        return;
    };
    let target = Arc::new(SinkTarget { url, secret });
    let client = PushClient::with_idle_connections(shared.spec.max_in_flight as usize);
    let mut ready = shared.ready.subscribe();
    let mut stopping = shared.stopping.subscribe();
    let mut limiter = shared.spec.rate_limit.map(RateLimiter::new);
    loop {
        ready.borrow_and_update();
        let now = now_ms();
        let allowed = limiter
            .as_mut()
            .map_or(DISPATCH_BATCH_MAX, |l| l.available(now));
        let (deliveries, wake_at_ms) = take(&shared, allowed.min(DISPATCH_BATCH_MAX), now);
        if let Some(limiter) = &mut limiter {
            limiter.spend(deliveries.len());
        }
        let started = deliveries.len();
        for delivery in deliveries {
            let (shared, client, target) = (shared.clone(), client.clone(), target.clone());
            tokio::spawn(async move { attempt(&shared, &client, &target, delivery).await });
        }
        if started > 0 {
            continue;
        }
        // Nothing could start: wait for a change, the circuit's probe time or a token.
        let token_ms = limiter
            .as_ref()
            .filter(|_| allowed == 0)
            .map(|l| l.next_token_ms());
        let wake_ms = wake_at_ms.into_iter().chain(token_ms).min();
        let sleep_ms = wake_ms.map_or(60_000, |at| (at - now).clamp(1, 60_000));
        tokio::select! {
            _ = ready.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {}
            _ = stopping.wait_for(|stopping| *stopping) => return,
        }
    }
}

/// Takes what may start now, and when to look again if the circuit holds events back.
fn take(shared: &Shared, max: usize, now: i64) -> (Vec<Delivery>, Option<i64>) {
    let mut core = shared.core();
    if core.paused.is_some() || max == 0 {
        return (Vec::new(), None);
    }
    let permits = core
        .circuit
        .as_mut()
        .and_then(|circuit| circuit.permits(now));
    let deliveries = core
        .delivery
        .take_ready(permits.unwrap_or(max).min(max), None);
    if let Some(circuit) = &mut core.circuit {
        for _ in &deliveries {
            circuit.on_start();
        }
    }
    let probe_at = core
        .circuit
        .as_ref()
        .and_then(|circuit| circuit.probe_at_ms());
    (deliveries, probe_at)
}

/// Sends one event and settles it by the answer.
async fn attempt(shared: &Shared, client: &PushClient, target: &SinkTarget, delivery: Delivery) {
    let answer = client
        .deliver(
            target,
            &delivery.json,
            delivery.attempt,
            shared.spec.ack_timeout,
        )
        .await;
    let now = now_ms();
    let (outcome, label, gone) = match answer {
        AttemptOutcome::Delivered { .. } => (Outcome::Ack, "acked", false),
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
            false,
        ),
        AttemptOutcome::Gone { status } => (
            Outcome::Fail {
                status: Some(status),
                error: format!("{status} Gone: the sink wants no more events"),
                retry_after: None,
            },
            "failed",
            true,
        ),
        AttemptOutcome::Reject { status, error } => (
            Outcome::Reject {
                status: Some(status),
                error,
            },
            "rejected",
            false,
        ),
    };
    let sink_failed = matches!(outcome, Outcome::Fail { .. });
    let completed = {
        let mut core = shared.core();
        let mut outcome = outcome;
        if let Some(circuit) = &mut core.circuit {
            if sink_failed {
                // A failed probe of an open circuit does not spend the event's attempts:
                // while the sink is down, events wait instead of running out of retries.
                if circuit.state() == CircuitState::HalfOpen
                    && let Outcome::Fail { status, error, .. } = outcome
                {
                    outcome = Outcome::Probe { status, error };
                }
                circuit.on_failure(now);
            } else {
                circuit.on_success();
            }
        }
        if gone && core.paused.is_none() {
            tracing::warn!(subscription = %shared.name, "the sink answered 410 Gone; pausing the subscription");
            core.paused = Some(format!(
                "the sink answered 410 Gone at {}; resume the subscription once it accepts events again",
                format_rfc3339_ms(now)
            ));
        }
        let completed = core.delivery.complete(
            delivery.slot,
            delivery.lease,
            outcome,
            now,
            &shared.spec.retry,
            shared.random(),
        );
        if let Ok(completed) = &completed
            && completed.settled == Settled::Done
            && delivery.slot.lane == REDRIVE_LANE
        {
            core.redrive_acked
                .push(super::dlq::entry_id(completed.origin));
        }
        completed
    };
    shared
        .metrics
        .subscription_attempts
        .get_or_create(&attempt_labels(shared, label))
        .inc();
    match completed {
        Ok(completed) if completed.settled == Settled::Done => {
            if delivery.slot.lane != REDRIVE_LANE {
                observe_ack(shared, completed.published_ms);
            }
            shared.wake_readers();
        }
        Ok(completed) if matches!(completed.settled, Settled::RetryAt(_)) => {
            shared.timers.notify_one();
        }
        // Dead-lettering (the store writes it) or stale (a seek dropped the event).
        Ok(_) | Err(_) => {}
    }
    shared.changed(true);
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
