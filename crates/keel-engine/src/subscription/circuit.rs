//! The circuit breaker of a push subscription's sink: it tells a flaky sink from a dead one.
//!
//! - **Closed**: requests flow. Each answer goes into a sliding window over the last
//!   `window` of time (in [`WINDOW_BUCKETS`] buckets). The circuit opens when the window holds
//!   at least `min_calls` answers and `failure_rate_percent` % or more of them failed (a sink
//!   failing a third of its requests at random stays well under 50 % and keeps flowing), or
//!   at once when `connect_failures` attempts in a row failed at the connection (refused,
//!   connect timeout, dropped before an answer: a sink that is down), without waiting for
//!   `min_calls`.
//! - **Open**: nothing is sent for the cool-down; events wait.
//! - **Half-open**: up to `probes` requests go. As soon as their failure rate is sure to stay
//!   under the threshold the circuit closes (and the cool-down starts over at `cool_down`); as
//!   soon as it is sure to reach it, the circuit opens again for twice the last cool-down, at
//!   most `cool_down_max`.
//!
//! Time is passed in (milliseconds), so the breaker is a plain state machine. Each change of
//! state comes out as a [`Transition`] with its reason, from [`CircuitBreaker::poll`] or
//! [`CircuitBreaker::judge`], for the caller to log, count and (later) announce.
//!
//! Which answers belong to which state: leases grow with every delivery, so a probe is a
//! delivery whose lease is at least the first one taken in the current half-open state. An
//! answer to a request sent before the circuit opened (or before the current half-open state)
//! changes nothing.

use std::fmt;
use std::time::Duration;

pub use keel_api::subscriptions::{CircuitPolicy, CircuitState};

/// Longest cool-down a policy may give (`cool_down_max` included).
pub const COOL_DOWN_LIMIT: Duration = Duration::from_secs(3600);
/// Longest failure-rate window a policy may give.
pub const WINDOW_LIMIT: Duration = Duration::from_secs(3600);
/// Most probes a policy may let through when half-open.
pub const PROBES_MAX: u32 = 1000;
/// Buckets the window is kept in: the window slides by a tenth of its span.
pub const WINDOW_BUCKETS: usize = 10;

/// What an attempt's failure says about the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The sink answered, but with a failure (5xx, 429, …), or did not answer in time.
    Answered,
    /// The connection failed: it could not be made (refused, connect timeout, no route), or
    /// it dropped before an answer.
    Connection {
        /// Whether the request never reached the sink (the connection could not be made): the
        /// event cannot be the cause.
        unreached: bool,
    },
}

/// A change of the circuit's state, with its reason and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: CircuitState,
    pub(crate) to: CircuitState,
    pub(crate) reason: Reason,
    pub(crate) at_ms: i64,
    /// When opening from closed: the first failure after the last success (the outage's start
    /// as far as the breaker can tell).
    pub(crate) failing_since_ms: Option<i64>,
}

/// Why the circuit changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The window's failure rate reached the threshold.
    FailureRate { failures: u32, calls: u32 },
    /// Connections failed this many times in a row.
    ConnectFailures { in_row: u32 },
    /// The cool-down ended: probes may go.
    CoolDownOver,
    /// The probes' failure rate reached the threshold.
    ProbesFailed { failures: u32, probes: u32 },
    /// The probes' failure rate stays under the threshold.
    ProbesPassed { successes: u32, probes: u32 },
}

impl Reason {
    /// A short name for logs and metrics.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Reason::FailureRate { .. } => "failure_rate",
            Reason::ConnectFailures { .. } => "connect_failures",
            Reason::CoolDownOver => "cool_down_over",
            Reason::ProbesFailed { .. } => "probes_failed",
            Reason::ProbesPassed { .. } => "probes_passed",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::FailureRate { failures, calls } => {
                write!(formatter, "{failures} of the last {calls} calls failed")
            }
            Reason::ConnectFailures { in_row } => {
                write!(formatter, "{in_row} connections in a row failed")
            }
            Reason::CoolDownOver => formatter.write_str("the cool-down ended"),
            Reason::ProbesFailed { failures, probes } => {
                write!(formatter, "{failures} of {probes} probes failed")
            }
            Reason::ProbesPassed { successes, probes } => {
                write!(formatter, "{successes} of {probes} probes succeeded")
            }
        }
    }
}

/// What the breaker made of an attempt's answer ([`CircuitBreaker::judge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The failure is the sink's, not the event's: it must not spend the event's attempts.
    /// True when the request never reached the sink, or when the circuit is open or half-open
    /// after the judgement (this failure opened it, came back while it was open, or was a
    /// failed probe).
    pub(crate) blamed_on_sink: bool,
    /// The event may be tried again at once: the circuit is not closed, so it holds it back.
    pub(crate) held_back: bool,
    /// The state change this answer caused, if any.
    pub(crate) transition: Option<Transition>,
}

/// Calls and failures in one bucket of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// The bucket's number since time 0 (time / bucket span): a bucket of an older number is
    /// stale and counts nothing.
    number: i64,
    calls: u32,
    failures: u32,
}

/// The failure-rate window: the answers of the last `window`, in [`WINDOW_BUCKETS`] buckets.
#[derive(Debug, Clone)]
struct Window {
    bucket_ms: i64,
    buckets: [Bucket; WINDOW_BUCKETS],
}

impl Window {
    fn new(window: Duration) -> Self {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        Window {
            bucket_ms: (window_ms / WINDOW_BUCKETS as i64).max(1),
            buckets: [Bucket::default(); WINDOW_BUCKETS],
        }
    }

    /// Records an answer at `now_ms` and returns the window's (calls, failures).
    fn record(&mut self, now_ms: i64, failed: bool) -> (u32, u32) {
        let number = now_ms.div_euclid(self.bucket_ms);
        let bucket = &mut self.buckets[number.rem_euclid(WINDOW_BUCKETS as i64) as usize];
        if bucket.number != number {
            *bucket = Bucket {
                number,
                calls: 0,
                failures: 0,
            };
        }
        bucket.calls = bucket.calls.saturating_add(1);
        bucket.failures = bucket.failures.saturating_add(u32::from(failed));
        // Invariant: only the buckets of the last WINDOW_BUCKETS numbers count.
        let oldest = number - (WINDOW_BUCKETS as i64 - 1);
        self.buckets
            .iter()
            .filter(|bucket| bucket.number >= oldest)
            .fold((0u32, 0u32), |(calls, failures), bucket| {
                (
                    calls.saturating_add(bucket.calls),
                    failures.saturating_add(bucket.failures),
                )
            })
    }

    fn clear(&mut self) {
        self.buckets = [Bucket::default(); WINDOW_BUCKETS];
    }
}

/// The half-open state's probes.
#[derive(Debug, Clone, Copy, Default)]
struct Probes {
    /// The lease of the first probe; answers to older leases are not probes.
    first_lease: Option<u64>,
    started: u32,
    successes: u32,
    failures: u32,
}

/// A circuit breaker; time is passed in (milliseconds), so it is a plain state machine.
#[derive(Debug, Clone)]
pub(crate) struct CircuitBreaker {
    policy: CircuitPolicy,
    state: CircuitState,
    window: Window,
    /// Connection failures since the last answer or success, while closed.
    connect_failures_in_row: u32,
    /// The first failure after the last success, while closed.
    failing_since_ms: Option<i64>,
    /// When open: when the probes may go.
    probe_at_ms: i64,
    /// The cool-down of the current (or next) opening, doubled on each failed round of probes.
    cool_down: Duration,
    probes: Probes,
}

impl CircuitBreaker {
    /// A closed breaker under `policy` (checked by `validate_subscription_spec`).
    pub(crate) fn new(policy: CircuitPolicy) -> Self {
        assert!(
            policy.min_calls > 0 && policy.connect_failures > 0 && policy.probes > 0,
            "a circuit needs calls to judge by: {policy:?}"
        );
        Self {
            policy,
            state: CircuitState::Closed,
            window: Window::new(policy.window),
            connect_failures_in_row: 0,
            failing_since_ms: None,
            probe_at_ms: 0,
            cool_down: policy.cool_down,
            probes: Probes::default(),
        }
    }

    /// Moves an open circuit to half-open once its cool-down is over.
    pub(crate) fn poll(&mut self, now_ms: i64) -> Option<Transition> {
        if self.state != CircuitState::Open || now_ms < self.probe_at_ms {
            return None;
        }
        self.probes = Probes::default();
        Some(self.change(CircuitState::HalfOpen, Reason::CoolDownOver, now_ms))
    }

    /// How many requests may start now: unbounded when closed, none when open, the probes not
    /// yet sent when half-open.
    pub(crate) fn permits(&self) -> Option<usize> {
        match self.state {
            CircuitState::Closed => None,
            CircuitState::Open => Some(0),
            CircuitState::HalfOpen => {
                Some(self.policy.probes.saturating_sub(self.probes.started) as usize)
            }
        }
    }

    /// A request starts under `lease` (after [`permits`](Self::permits) allowed it).
    pub(crate) fn on_start(&mut self, lease: u64) {
        if self.state == CircuitState::HalfOpen {
            self.probes.first_lease.get_or_insert(lease);
            self.probes.started += 1;
        }
    }

    /// Judges the answer to the request sent under `lease`: `None` for a success, else what
    /// the failure says about the sink.
    pub(crate) fn judge(&mut self, lease: u64, failure: Option<Failure>, now_ms: i64) -> Verdict {
        let transition = match self.state {
            CircuitState::Closed => self.judge_closed(failure, now_ms),
            CircuitState::Open => None,
            CircuitState::HalfOpen => self.judge_probe(lease, failure.is_some(), now_ms),
        };
        let held_back = self.state != CircuitState::Closed;
        let unreached = matches!(failure, Some(Failure::Connection { unreached: true }));
        Verdict {
            blamed_on_sink: failure.is_some() && (unreached || held_back),
            held_back,
            transition,
        }
    }

    fn judge_closed(&mut self, failure: Option<Failure>, now_ms: i64) -> Option<Transition> {
        let Some(failure) = failure else {
            self.failing_since_ms = None;
            self.connect_failures_in_row = 0;
            self.window.record(now_ms, false);
            return None;
        };
        self.failing_since_ms.get_or_insert(now_ms);
        let (calls, failures) = self.window.record(now_ms, true);
        self.connect_failures_in_row = match failure {
            Failure::Connection { .. } => self.connect_failures_in_row + 1,
            Failure::Answered => 0,
        };
        let reason = if self.connect_failures_in_row >= self.policy.connect_failures {
            Reason::ConnectFailures {
                in_row: self.connect_failures_in_row,
            }
        } else if calls >= self.policy.min_calls
            && u64::from(failures) * 100 >= u64::from(calls) * u64::from(self.rate())
        {
            Reason::FailureRate { failures, calls }
        } else {
            return None;
        };
        Some(self.open(reason, now_ms))
    }

    fn judge_probe(&mut self, lease: u64, failed: bool, now_ms: i64) -> Option<Transition> {
        if self.probes.first_lease.is_none_or(|first| lease < first) {
            return None;
        }
        let (total, rate) = (u64::from(self.policy.probes), u64::from(self.rate()));
        let probes = &mut self.probes;
        if failed {
            probes.failures += 1;
        } else {
            probes.successes += 1;
        }
        // The rate is final once it cannot change sides: failures alone reach the threshold,
        // or even with every probe still out failing it stays under.
        if u64::from(probes.failures) * 100 >= total * rate {
            let reason = Reason::ProbesFailed {
                failures: probes.failures,
                probes: self.policy.probes,
            };
            self.cool_down = (self.cool_down * 2).min(self.policy.cool_down_max);
            return Some(self.open(reason, now_ms));
        }
        if (total - u64::from(probes.successes)) * 100 < total * rate {
            let reason = Reason::ProbesPassed {
                successes: probes.successes,
                probes: self.policy.probes,
            };
            self.cool_down = self.policy.cool_down;
            self.window.clear();
            self.connect_failures_in_row = 0;
            self.failing_since_ms = None;
            return Some(self.change(CircuitState::Closed, reason, now_ms));
        }
        None
    }

    fn rate(&self) -> u32 {
        self.policy.failure_rate_percent
    }

    fn open(&mut self, reason: Reason, now_ms: i64) -> Transition {
        let cool_down_ms = i64::try_from(self.cool_down.as_millis()).unwrap_or(i64::MAX);
        self.probe_at_ms = now_ms.saturating_add(cool_down_ms);
        self.change(CircuitState::Open, reason, now_ms)
    }

    fn change(&mut self, to: CircuitState, reason: Reason, now_ms: i64) -> Transition {
        let from = std::mem::replace(&mut self.state, to);
        Transition {
            from,
            to,
            reason,
            at_ms: now_ms,
            failing_since_ms: (from == CircuitState::Closed)
                .then_some(self.failing_since_ms.unwrap_or(now_ms)),
        }
    }

    pub(crate) fn state(&self) -> CircuitState {
        self.state
    }

    /// Ends an open circuit's cool-down at `now_ms`: the next poll lets the probes go (an
    /// operator resumed the subscription, or a health check passed).
    pub(crate) fn probe_now(&mut self, now_ms: i64) {
        if self.state == CircuitState::Open {
            self.probe_at_ms = self.probe_at_ms.min(now_ms);
        }
    }

    /// When open: when the probes may go.
    pub(crate) fn probe_at_ms(&self) -> Option<i64> {
        (self.state == CircuitState::Open).then_some(self.probe_at_ms)
    }
}

#[cfg(test)]
mod tests;
