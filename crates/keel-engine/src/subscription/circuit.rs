//! The circuit breaker of a push subscription's sink.
//!
//! Closed: requests flow. After `failures_max` failed attempts in a row it opens: no request
//! is sent for `cool_down`, and events wait without spending attempts. Then it half-opens and
//! lets one probe through: a success closes it, a failure opens it again for twice the last
//! cool-down (at most [`COOL_DOWN_MAX`]).

use std::time::Duration;

/// Longest an open circuit waits before its next probe.
pub const COOL_DOWN_MAX: Duration = Duration::from_secs(300);

pub use keel_api::subscriptions::CircuitState;

/// A circuit breaker; time is passed in (milliseconds), so it is a plain state machine.
#[derive(Debug, Clone)]
pub(crate) struct CircuitBreaker {
    failures_max: u32,
    cool_down_initial: Duration,
    failures_in_row: u32,
    state: CircuitState,
    /// When open: when the next probe may go.
    probe_at_ms: i64,
    /// When open: the cool-down that is running, doubled on each failed probe.
    cool_down: Duration,
    probe_in_flight: bool,
}

impl CircuitBreaker {
    pub(crate) fn new(failures_max: u32, cool_down: Duration) -> Self {
        assert!(
            failures_max > 0,
            "a circuit needs at least one failure to open"
        );
        Self {
            failures_max,
            cool_down_initial: cool_down,
            failures_in_row: 0,
            state: CircuitState::Closed,
            probe_at_ms: 0,
            cool_down,
            probe_in_flight: false,
        }
    }

    /// How many requests may start now: unbounded when closed, one probe when half-open.
    pub(crate) fn permits(&mut self, now_ms: i64) -> Option<usize> {
        if self.state == CircuitState::Open && now_ms >= self.probe_at_ms {
            self.state = CircuitState::HalfOpen;
        }
        match self.state {
            CircuitState::Closed => None,
            CircuitState::Open => Some(0),
            CircuitState::HalfOpen => Some(usize::from(!self.probe_in_flight)),
        }
    }

    /// A request starts (after [`permits`](Self::permits) allowed it).
    pub(crate) fn on_start(&mut self) {
        if self.state == CircuitState::HalfOpen {
            self.probe_in_flight = true;
        }
    }

    pub(crate) fn on_success(&mut self) {
        self.failures_in_row = 0;
        self.probe_in_flight = false;
        self.state = CircuitState::Closed;
        self.cool_down = self.cool_down_initial;
    }

    pub(crate) fn on_failure(&mut self, now_ms: i64) {
        self.failures_in_row = self.failures_in_row.saturating_add(1);
        match self.state {
            CircuitState::HalfOpen => {
                self.probe_in_flight = false;
                self.cool_down = (self.cool_down * 2).min(COOL_DOWN_MAX);
                self.open(now_ms);
            }
            CircuitState::Closed if self.failures_in_row >= self.failures_max => self.open(now_ms),
            CircuitState::Closed | CircuitState::Open => {}
        }
    }

    fn open(&mut self, now_ms: i64) {
        self.state = CircuitState::Open;
        let cool_down_ms = i64::try_from(self.cool_down.as_millis()).unwrap_or(i64::MAX);
        self.probe_at_ms = now_ms.saturating_add(cool_down_ms);
    }

    pub(crate) fn state(&self) -> CircuitState {
        self.state
    }

    /// When open: when the next probe may go.
    pub(crate) fn probe_at_ms(&self) -> Option<i64> {
        (self.state == CircuitState::Open).then_some(self.probe_at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a run of failures opens the circuit, the cool-down blocks requests, one probe goes
    // through when it ends, and its outcome closes or re-opens (with a doubled cool-down).
    #[test]
    fn circuit_opens_probes_and_closes() {
        let mut circuit = CircuitBreaker::new(3, Duration::from_secs(10));
        assert_eq!(circuit.permits(0), None);
        circuit.on_failure(0);
        circuit.on_failure(0);
        assert_eq!(circuit.state(), CircuitState::Closed);
        circuit.on_failure(1_000);
        assert_eq!(circuit.state(), CircuitState::Open);
        assert_eq!(circuit.permits(10_999), Some(0));
        assert_eq!(circuit.permits(11_000), Some(1));
        circuit.on_start();
        assert_eq!(circuit.permits(11_000), Some(0), "one probe at a time");
        circuit.on_failure(12_000);
        assert_eq!(circuit.probe_at_ms(), Some(32_000), "cool-down doubled");
        assert_eq!(circuit.permits(32_000), Some(1));
        circuit.on_start();
        circuit.on_success();
        assert_eq!(circuit.state(), CircuitState::Closed);
        assert_eq!(circuit.permits(32_000), None);
        // A success resets the run: two more failures do not open it.
        circuit.on_failure(40_000);
        circuit.on_failure(40_000);
        assert_eq!(circuit.state(), CircuitState::Closed);
    }
}
