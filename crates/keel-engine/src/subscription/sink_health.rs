//! Recovery figures of a push sink and of each endpoint of a group. An outage runs from the
//! moment something holds the sink down to the moment nothing does:
//!
//! - the sink: its circuit breaker is open or half-open (from the opening to the closing,
//!   half-open rounds included), or none of its group's endpoints is available;
//! - an endpoint: it is ejected or unhealthy by its health checks.
//!
//! The figures:
//!
//! - time to detect: the first failure after the last success → the outage's start;
//! - time to recover: the outage's start → its end;
//! - MTBF = time up / outages, MTTR = time down / outages (the running outage counted up to
//!   now), availability = MTBF / (MTBF + MTTR) = time up / time since start.
//!
//! Kept in memory since the subscription started, like the other counters of describe.

use std::time::Duration;

use keel_api::subscriptions::{CircuitState, Outage, SinkHealth};

use super::circuit::Transition;
use crate::clock::format_rfc3339_ms;

/// What may hold a sink down. An outage lasts while at least one of them does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The circuit is open or half-open.
    Circuit,
    /// No endpoint is available (or, for one endpoint's figures: it is not available).
    Endpoints,
}

/// One outage, in milliseconds.
#[derive(Debug, Clone)]
struct OutageSpan {
    failing_since_ms: i64,
    opened_ms: i64,
    closed_ms: Option<i64>,
    reason: String,
}

/// A sink's (or an endpoint's) outages since `since_ms`.
#[derive(Debug, Clone)]
pub(crate) struct SinkOutages {
    since_ms: i64,
    outages: u64,
    /// Time in the outages that ended.
    ended_down_ms: i64,
    /// The running or last outage.
    last: Option<OutageSpan>,
    /// The causes holding the sink down now, by [`Cause`] (circuit, endpoints).
    held_down: [bool; 2],
}

impl SinkOutages {
    pub(crate) fn new(since_ms: i64) -> Self {
        SinkOutages {
            since_ms,
            outages: 0,
            ended_down_ms: 0,
            last: None,
            held_down: [false; 2],
        }
    }

    /// Follows a transition of the circuit: an opening from closed holds the sink down, a
    /// closing lets it go. Returns whether an outage started.
    pub(crate) fn record(&mut self, transition: &Transition) -> bool {
        match (transition.from, transition.to) {
            (CircuitState::Closed, _) => self.down(
                Cause::Circuit,
                transition.failing_since_ms.unwrap_or(transition.at_ms),
                transition.at_ms,
                transition.reason.to_string(),
            ),
            (_, CircuitState::Closed) => {
                self.up(Cause::Circuit, transition.at_ms);
                false
            }
            _ => false,
        }
    }

    /// `cause` holds the sink down from `at_ms` (its failures began at `failing_since_ms`).
    /// Returns whether an outage started (nothing held it down before).
    pub(crate) fn down(
        &mut self,
        cause: Cause,
        failing_since_ms: i64,
        at_ms: i64,
        reason: String,
    ) -> bool {
        let running = self.running();
        self.held_down[cause as usize] = true;
        if running {
            return false;
        }
        self.outages += 1;
        self.last = Some(OutageSpan {
            failing_since_ms: failing_since_ms.min(at_ms),
            opened_ms: at_ms,
            closed_ms: None,
            reason,
        });
        true
    }

    /// `cause` no longer holds the sink down from `at_ms`; the outage ends when nothing does.
    pub(crate) fn up(&mut self, cause: Cause, at_ms: i64) {
        let running = self.running();
        self.held_down[cause as usize] = false;
        if !running || self.running() {
            return;
        }
        if let Some(last) = &mut self.last {
            last.closed_ms = Some(at_ms);
            self.ended_down_ms += at_ms - last.opened_ms;
        }
    }

    /// Whether an outage is running.
    pub(crate) fn running(&self) -> bool {
        self.held_down.contains(&true)
    }

    /// When the running outage's failures began; none when no outage runs.
    pub(crate) fn failing_since_ms(&self) -> Option<i64> {
        self.last
            .as_ref()
            .filter(|_| self.running())
            .map(|last| last.failing_since_ms)
    }

    /// The figures at `now_ms`.
    pub(crate) fn report(&self, now_ms: i64) -> SinkHealth {
        let running_ms = self
            .last
            .as_ref()
            .filter(|last| last.closed_ms.is_none())
            .map_or(0, |last| now_ms - last.opened_ms);
        let down_ms = (self.ended_down_ms + running_ms).max(0);
        let up_ms = (now_ms - self.since_ms - down_ms).max(0);
        let mean = |total_ms: i64| {
            (self.outages > 0).then(|| millis(total_ms / self.outages.max(1) as i64))
        };
        let availability = if up_ms + down_ms == 0 {
            1.0
        } else {
            up_ms as f64 / (up_ms + down_ms) as f64
        };
        SinkHealth {
            since: format_rfc3339_ms(self.since_ms),
            outages: self.outages,
            down_time: millis(down_ms),
            mtbf: mean(up_ms),
            mttr: mean(down_ms),
            availability,
            last_outage: self.last.as_ref().map(|last| Outage {
                opened_at: format_rfc3339_ms(last.opened_ms),
                reason: last.reason.clone(),
                time_to_detect: millis(last.opened_ms - last.failing_since_ms),
                closed_at: last.closed_ms.map(format_rfc3339_ms),
                time_to_recover: last.closed_ms.map(|closed| millis(closed - last.opened_ms)),
            }),
        }
    }
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::circuit::Reason;

    fn transition(from: CircuitState, to: CircuitState, at_ms: i64) -> Transition {
        Transition {
            from,
            to,
            reason: Reason::ConnectFailures { in_row: 3 },
            at_ms,
            failing_since_ms: (from == CircuitState::Closed).then_some(at_ms - 200),
        }
    }

    // Goal: the figures follow the definitions: an outage from opening to closing (half-open
    // rounds and reopenings inside it), detect time from the first failure, MTBF and MTTR as
    // time up and down over outages, availability as their share; a running outage counts up
    // to now. Method: two outages on a made-up clock.
    #[test]
    fn outages_give_mtbf_mttr_and_availability() {
        use CircuitState::{Closed, HalfOpen, Open};
        let mut outages = SinkOutages::new(0);
        let healthy = outages.report(10_000);
        assert_eq!((healthy.outages, healthy.availability), (0, 1.0));
        assert_eq!(
            (healthy.mtbf, healthy.mttr, healthy.last_outage),
            (None, None, None)
        );
        assert!(outages.record(&transition(Closed, Open, 10_000)));
        assert!(!outages.record(&transition(Open, HalfOpen, 12_000)));
        assert!(!outages.record(&transition(HalfOpen, Open, 12_100)));
        assert!(!outages.record(&transition(Open, HalfOpen, 14_000)));
        assert!(!outages.record(&transition(HalfOpen, Closed, 15_000)));
        let one = outages.report(20_000);
        let last = one.last_outage.clone().expect("an outage");
        assert_eq!(last.time_to_detect, Duration::from_millis(200));
        assert_eq!(last.time_to_recover, Some(Duration::from_secs(5)));
        assert_eq!(one.mtbf, Some(Duration::from_secs(15)));
        assert_eq!(one.mttr, Some(Duration::from_secs(5)));
        assert_eq!(one.availability, 0.75);
        outages.record(&transition(Closed, Open, 30_000));
        let running = outages.report(40_000);
        assert_eq!(running.outages, 2);
        assert_eq!(
            running.down_time,
            Duration::from_secs(15),
            "5 s, then 10 s running"
        );
        assert_eq!(running.mttr, Some(Duration::from_millis(7_500)));
        assert_eq!(running.mtbf, Some(Duration::from_millis(12_500)));
        assert_eq!(running.last_outage.expect("running").time_to_recover, None);
    }

    // Goal: with two causes, the outage lasts while either holds the sink down: one outage,
    // from the first cause's start to the last one's end.
    #[test]
    fn an_outage_lasts_while_any_cause_holds() {
        let mut outages = SinkOutages::new(0);
        assert!(outages.down(Cause::Endpoints, 900, 1_000, "no endpoint".to_owned()));
        assert!(!outages.down(Cause::Circuit, 1_500, 2_000, "circuit".to_owned()));
        outages.up(Cause::Endpoints, 3_000);
        assert_eq!(
            outages.failing_since_ms(),
            Some(900),
            "the circuit still holds"
        );
        outages.up(Cause::Circuit, 4_000);
        assert_eq!(outages.failing_since_ms(), None);
        let health = outages.report(10_000);
        assert_eq!(health.outages, 1);
        assert_eq!(health.down_time, Duration::from_secs(3));
        assert_eq!(
            health.last_outage.expect("one").reason,
            "no endpoint",
            "the first cause names it"
        );
    }
}
