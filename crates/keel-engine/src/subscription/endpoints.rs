//! A push subscription's endpoint group: which endpoint takes each delivery, and which
//! endpoints are available, from active health checks and passive outlier ejection
//! (`SinkSpec::endpoints`, `docs/delivery.md`). A plain state machine: time is passed in.
//!
//! An endpoint is **available** while it is healthy (its active checks pass, or it has none)
//! and not ejected. Only available endpoints are picked; with none available, events wait.
//!
//! - **Passive ejection**: `consecutive_failures` failed attempts in a row (a connection error,
//!   a timeout or a 5xx; not a 4xx or 429, which say nothing of the endpoint's health) eject
//!   it for `base_ejection_time` × its ejections so far (at most `max_ejection_time`), unless
//!   that would eject more than `max_ejected_percent` of the group (always at least one may
//!   be; a lone endpoint never is: the circuit breaker covers it). Its ejection count is forgotten once it has not been ejected for
//!   `max_ejection_time`.
//! - **Re-admission**: when its ejection ends, it is available again if it is healthy.
//! - **Active checks**: `unhealthy_threshold` failed checks in a row make it unhealthy,
//!   `healthy_threshold` passed ones healthy again (HAProxy's `fall` and `rise`).
//!
//! Per-key order: with `ordering: "key"` a key has one event in flight at a time, so when its
//! endpoint becomes unavailable the key moves to another only with its next delivery, once
//! the in-flight one has settled. `key_hash` uses rendezvous hashing, so only the keys of the
//! endpoint that left move, and they come back when it returns.

use keel_api::subscriptions::{EndpointSpec, OutlierPolicy, SinkHealth, Strategy};

use super::sink_health::{Cause, SinkOutages};

/// A change of an endpoint's availability, for logs, metrics and `_keel.alerts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Ejected after failed attempts, until then (ms).
    Ejected {
        endpoint: usize,
        failures: u32,
        until_ms: i64,
    },
    /// Its ejection ended and it is healthy: available again.
    Readmitted { endpoint: usize },
    /// Its health checks failed `unhealthy_threshold` times in a row.
    Unhealthy { endpoint: usize },
    /// Its health checks passed `healthy_threshold` times in a row.
    Healthy { endpoint: usize },
}

impl Change {
    /// The endpoint it is about.
    pub(crate) fn endpoint(&self) -> usize {
        match *self {
            Change::Ejected { endpoint, .. }
            | Change::Readmitted { endpoint }
            | Change::Unhealthy { endpoint }
            | Change::Healthy { endpoint } => endpoint,
        }
    }
}

/// What describe shows of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EndpointState {
    pub(crate) healthy: bool,
    pub(crate) ejected_until_ms: Option<i64>,
    pub(crate) ejections: u32,
    pub(crate) failures_in_row: u32,
}

/// Thresholds of active health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Thresholds {
    pub(crate) healthy: u32,
    pub(crate) unhealthy: u32,
}

/// An endpoint group's state.
#[derive(Debug)]
pub(crate) struct EndpointGroup {
    strategy: Strategy,
    outlier: OutlierPolicy,
    thresholds: Option<Thresholds>,
    endpoints: Vec<Endpoint>,
    /// The next turn of `round_robin` (and of keyless events under `key_hash`).
    turn: usize,
}

#[derive(Debug)]
struct Endpoint {
    weight: i64,
    /// Smooth weighted round robin's running weight.
    current: i64,
    /// By active checks; true without them.
    healthy: bool,
    /// Active checks in a row with the same result (passes or failures).
    checks_in_row: u32,
    /// Failed attempts in a row.
    failures_in_row: u32,
    /// Ejections so far (the next lasts this many times the base, plus one).
    ejections: u32,
    ejected_until_ms: Option<i64>,
    last_ejected_ms: i64,
    /// A stable hash of the URL, for rendezvous hashing.
    url_hash: u64,
    /// The first failure (an attempt or a check) after the last success.
    failing_since_ms: Option<i64>,
    /// Its outages: the times it was not available.
    outages: SinkOutages,
}

impl Endpoint {
    fn available(&self) -> bool {
        self.healthy && self.ejected_until_ms.is_none()
    }

    /// Records a success or failure at `now_ms` (for the time to detect).
    fn observe(&mut self, failed: bool, now_ms: i64) {
        if failed {
            self.failing_since_ms.get_or_insert(now_ms);
        } else {
            self.failing_since_ms = None;
        }
    }

    /// Follows a change of availability at `now_ms` (`was` before it) into its outages.
    fn follow(&mut self, was: bool, now_ms: i64, reason: impl FnOnce() -> String) {
        match (was, self.available()) {
            (true, false) => {
                let since = self.failing_since_ms.unwrap_or(now_ms);
                self.outages.down(Cause::Endpoints, since, now_ms, reason());
            }
            (false, true) => self.outages.up(Cause::Endpoints, now_ms),
            _ => {}
        }
    }
}

impl EndpointGroup {
    /// A group of `endpoints` (at least one), all healthy and admitted at first (at
    /// `now_ms`). With `thresholds`, health checks decide health; without, every endpoint is
    /// healthy.
    pub(crate) fn new(
        endpoints: &[EndpointSpec],
        strategy: Strategy,
        outlier: OutlierPolicy,
        thresholds: Option<Thresholds>,
        now_ms: i64,
    ) -> Self {
        assert!(!endpoints.is_empty(), "a group has an endpoint");
        let endpoints = endpoints
            .iter()
            .map(|spec| Endpoint {
                weight: i64::from(spec.weight.max(1)),
                current: 0,
                healthy: true,
                checks_in_row: 0,
                failures_in_row: 0,
                ejections: 0,
                ejected_until_ms: None,
                last_ejected_ms: i64::MIN,
                url_hash: crate::routing::fnv1a(spec.url.as_bytes()),
                failing_since_ms: None,
                outages: SinkOutages::new(now_ms),
            })
            .collect();
        EndpointGroup {
            strategy,
            outlier,
            thresholds,
            endpoints,
            turn: 0,
        }
    }

    /// What describe shows of `endpoint`.
    pub(crate) fn state(&self, endpoint: usize) -> EndpointState {
        let endpoint = &self.endpoints[endpoint];
        EndpointState {
            healthy: endpoint.healthy,
            ejected_until_ms: endpoint.ejected_until_ms,
            ejections: endpoint.ejections,
            failures_in_row: endpoint.failures_in_row,
        }
    }

    /// `endpoint`'s recovery figures at `now_ms`.
    pub(crate) fn health(&self, endpoint: usize, now_ms: i64) -> SinkHealth {
        self.endpoints[endpoint].outages.report(now_ms)
    }

    /// When the failures that made every endpoint unavailable began: the earliest first
    /// failure among them. None while one is available.
    pub(crate) fn all_down_since_ms(&self) -> Option<i64> {
        if self.endpoints.iter().any(Endpoint::available) {
            return None;
        }
        self.endpoints
            .iter()
            .filter_map(|endpoint| endpoint.outages.failing_since_ms())
            .min()
    }

    /// How many endpoints the group has.
    pub(crate) fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Ends the ejections due by `now_ms`; returns the endpoints available again.
    pub(crate) fn readmit(&mut self, now_ms: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        for (index, endpoint) in self.endpoints.iter_mut().enumerate() {
            if endpoint
                .ejected_until_ms
                .is_some_and(|until| until <= now_ms)
            {
                endpoint.ejected_until_ms = None;
                endpoint.failures_in_row = 0;
                endpoint.follow(false, now_ms, String::new);
                if endpoint.healthy {
                    changes.push(Change::Readmitted { endpoint: index });
                }
            }
        }
        changes
    }

    /// Whether `endpoint` may take deliveries.
    pub(crate) fn available(&self, endpoint: usize) -> bool {
        self.endpoints[endpoint].available()
    }

    /// When the next ejection ends, if one runs.
    pub(crate) fn next_readmission_ms(&self) -> Option<i64> {
        self.endpoints
            .iter()
            .filter_map(|endpoint| endpoint.ejected_until_ms)
            .min()
    }

    /// The endpoint for the next delivery (of an event with `key`), by the strategy among the
    /// available ones; none when none is available. Call [`readmit`](Self::readmit) first.
    /// `failovers` is how many endpoints could not be reached for this event just before:
    /// `failover` and `key_hash` then take the next one in their order (the first after
    /// that many), so that a retry at once goes elsewhere; the others move on by themselves.
    pub(crate) fn pick(&mut self, key: Option<&str>, failovers: u32) -> Option<usize> {
        let available: Vec<usize> = (0..self.endpoints.len())
            .filter(|&index| self.available(index))
            .collect();
        if available.is_empty() {
            return None;
        }
        let skip = failovers as usize % available.len();
        let picked = match (self.strategy, key) {
            (Strategy::Failover, _) => available[skip],
            (Strategy::KeyHash, Some(key)) => {
                // Rendezvous order: highest score first.
                let key_hash = crate::routing::fnv1a(key.as_bytes());
                let score = |index: usize| mix(key_hash ^ self.endpoints[index].url_hash);
                let mut ranked = available;
                if skip == 0 {
                    *ranked
                        .iter()
                        .max_by_key(|&&index| score(index))
                        .expect("one")
                } else {
                    ranked.sort_by_key(|&index| std::cmp::Reverse(score(index)));
                    ranked[skip]
                }
            }
            (Strategy::RoundRobin | Strategy::KeyHash, _) => {
                let picked = available[self.turn % available.len()];
                self.turn = self.turn.wrapping_add(1);
                picked
            }
            (Strategy::Weighted, _) => {
                // Smooth weighted round robin (nginx): each available endpoint gains its
                // weight; the richest is picked and pays the total.
                let total: i64 = available.iter().map(|&i| self.endpoints[i].weight).sum();
                for &index in &available {
                    let endpoint = &mut self.endpoints[index];
                    endpoint.current += endpoint.weight;
                }
                let picked = *available
                    .iter()
                    .max_by_key(|&&index| (self.endpoints[index].current, usize::MAX - index))
                    .expect("one is available");
                self.endpoints[picked].current -= total;
                picked
            }
        };
        Some(picked)
    }

    /// An attempt at `endpoint` ended: `failed` when by a connection error, a timeout or a
    /// 5xx. Returns the ejection it caused, if any.
    pub(crate) fn on_attempt(
        &mut self,
        endpoint: usize,
        failed: bool,
        now_ms: i64,
    ) -> Option<Change> {
        let ejected_now = self
            .endpoints
            .iter()
            .filter(|endpoint| endpoint.ejected_until_ms.is_some())
            .count();
        // A lone endpoint is never ejected: the circuit breaker covers it.
        let ejectable = match self.endpoints.len() {
            1 => 0,
            n => (n * self.outlier.max_ejected_percent as usize / 100).max(1),
        };
        let outlier = self.outlier;
        let state = &mut self.endpoints[endpoint];
        state.observe(failed, now_ms);
        if !failed {
            state.failures_in_row = 0;
            return None;
        }
        state.failures_in_row = state.failures_in_row.saturating_add(1);
        let eject = state.ejected_until_ms.is_none()
            && state.failures_in_row >= outlier.consecutive_failures
            && ejected_now < ejectable;
        if !eject {
            return None;
        }
        let max_ms = millis(outlier.max_ejection_time);
        if now_ms.saturating_sub(state.last_ejected_ms) >= max_ms {
            // Not ejected for a long while: this is a new fault, not the same one again.
            state.ejections = 0;
        }
        state.ejections = state.ejections.saturating_add(1);
        let length_ms = millis(outlier.base_ejection_time)
            .saturating_mul(i64::from(state.ejections))
            .min(max_ms);
        let until_ms = now_ms.saturating_add(length_ms);
        let was = state.available();
        state.ejected_until_ms = Some(until_ms);
        state.last_ejected_ms = now_ms;
        let failures = state.failures_in_row;
        state.follow(was, now_ms, || {
            format!("{failures} attempts in a row failed")
        });
        Some(Change::Ejected {
            endpoint,
            failures: state.failures_in_row,
            until_ms,
        })
    }

    /// An active health check of `endpoint` ended at `now_ms`. Returns its change of health,
    /// if any.
    pub(crate) fn on_check(
        &mut self,
        endpoint: usize,
        passed: bool,
        now_ms: i64,
    ) -> Option<Change> {
        let thresholds = self.thresholds?;
        let state = &mut self.endpoints[endpoint];
        state.observe(!passed, now_ms);
        if passed == state.healthy {
            state.checks_in_row = 0;
            return None;
        }
        state.checks_in_row += 1;
        let needed = if passed {
            thresholds.healthy
        } else {
            thresholds.unhealthy
        };
        if state.checks_in_row < needed {
            return None;
        }
        state.checks_in_row = 0;
        let was = state.available();
        state.healthy = passed;
        state.follow(was, now_ms, || {
            format!("{} health checks in a row failed", thresholds.unhealthy)
        });
        Some(if passed {
            Change::Healthy { endpoint }
        } else {
            Change::Unhealthy { endpoint }
        })
    }
}

/// A duration in whole milliseconds, saturating.
fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A 64-bit finaliser (splitmix64's), so that scores of related inputs are independent.
fn mix(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn group(weights: &[u32], strategy: Strategy, thresholds: Option<Thresholds>) -> EndpointGroup {
        let endpoints: Vec<EndpointSpec> = weights
            .iter()
            .enumerate()
            .map(|(index, &weight)| EndpointSpec {
                url: format!("http://e{index}/hook"),
                weight,
            })
            .collect();
        EndpointGroup::new(
            &endpoints,
            strategy,
            OutlierPolicy::default(),
            thresholds,
            0,
        )
    }

    fn picks(group: &mut EndpointGroup, count: usize) -> Vec<usize> {
        (0..count).map(|_| group.pick(None, 0).unwrap()).collect()
    }

    fn fail(group: &mut EndpointGroup, endpoint: usize, times: u32, now_ms: i64) -> Option<Change> {
        (0..times)
            .map(|_| group.on_attempt(endpoint, true, now_ms))
            .last()
            .flatten()
    }

    // Goal: each strategy shares events as documented among available endpoints.
    #[test]
    fn strategies_share_events() {
        let mut failover = group(&[1, 1, 1], Strategy::Failover, None);
        assert_eq!(picks(&mut failover, 3), [0, 0, 0]);
        let mut round_robin = group(&[1, 1, 1], Strategy::RoundRobin, None);
        assert_eq!(picks(&mut round_robin, 6), [0, 1, 2, 0, 1, 2]);
        let mut weighted = group(&[5, 1, 1], Strategy::Weighted, None);
        let seven = picks(&mut weighted, 7);
        assert_eq!(
            seven,
            [0, 0, 1, 0, 2, 0, 0],
            "smooth: the heavy one is spread out"
        );
        let mut counts = [0; 3];
        for picked in picks(&mut weighted, 700) {
            counts[picked] += 1;
        }
        assert_eq!(counts, [500, 100, 100]);
    }

    // Goal: key_hash keeps a key on one endpoint; when that endpoint leaves only its keys
    // move, and they come back when it returns.
    #[test]
    fn key_hash_moves_only_the_keys_of_an_endpoint_that_left() {
        let mut group = group(&[1, 1, 1], Strategy::KeyHash, None);
        let keys: Vec<String> = (0..300).map(|i| format!("order-{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| group.pick(Some(k), 0).unwrap())
            .collect();
        assert_eq!(
            before,
            keys.iter()
                .map(|k| group.pick(Some(k), 0).unwrap())
                .collect::<Vec<_>>()
        );
        for endpoint in 0..3 {
            let share = before.iter().filter(|&&e| e == endpoint).count();
            assert!(
                (60..140).contains(&share),
                "endpoint {endpoint} has {share} of 300 keys"
            );
        }
        let Some(Change::Ejected { until_ms, .. }) = fail(&mut group, 1, 5, 0) else {
            panic!("five failures eject");
        };
        for (key, &endpoint) in keys.iter().zip(&before) {
            let now = group.pick(Some(key), 0).unwrap();
            if endpoint == 1 {
                assert_ne!(now, 1, "{key} left the ejected endpoint");
            } else {
                assert_eq!(now, endpoint, "{key} stays where it was");
            }
        }
        assert_eq!(
            group.readmit(until_ms),
            [Change::Readmitted { endpoint: 1 }]
        );
        let after: Vec<usize> = keys
            .iter()
            .map(|k| group.pick(Some(k), 0).unwrap())
            .collect();
        assert_eq!(after, before, "the keys came back");
    }

    // Goal: consecutive failures eject for growing times, capped; a success resets the run;
    // ejection is limited to the allowed share; re-admission comes when the time is up.
    #[test]
    fn outliers_are_ejected_for_growing_times_within_the_share() {
        let mut group = group(&[1, 1, 1, 1], Strategy::RoundRobin, None);
        assert_eq!(fail(&mut group, 0, 4, 0), None);
        group.on_attempt(0, false, 0);
        assert_eq!(
            fail(&mut group, 0, 4, 0),
            None,
            "a success restarted the run"
        );
        let first = fail(&mut group, 0, 1, 1_000);
        assert_eq!(
            first,
            Some(Change::Ejected {
                endpoint: 0,
                failures: 5,
                until_ms: 11_000
            })
        );
        assert!(!group.available(0));
        assert!(picks(&mut group, 30).iter().all(|&e| e != 0));
        // 50 % of 4: a second may go, a third may not.
        assert!(fail(&mut group, 1, 5, 1_000).is_some());
        assert_eq!(
            fail(&mut group, 2, 10, 1_000),
            None,
            "at most half are ejected"
        );
        assert_eq!(group.next_readmission_ms(), Some(11_000));
        assert!(group.readmit(10_999).is_empty());
        assert_eq!(group.readmit(11_000).len(), 2);
        // Ejected again soon: twice as long; much later: the base again.
        let again = fail(&mut group, 0, 5, 12_000);
        assert_eq!(
            again,
            Some(Change::Ejected {
                endpoint: 0,
                failures: 5,
                until_ms: 32_000
            })
        );
        group.readmit(32_000);
        let later = 32_000 + Duration::from_secs(300).as_millis() as i64;
        let fresh = fail(&mut group, 0, 5, later);
        assert_eq!(
            fresh,
            Some(Change::Ejected {
                endpoint: 0,
                failures: 5,
                until_ms: later + 10_000
            })
        );
    }

    // Goal: a lone endpoint (a sink with one url) is never ejected, whatever fails: the
    // circuit breaker judges it.
    #[test]
    fn a_lone_endpoint_is_never_ejected() {
        let mut group = group(&[1], Strategy::RoundRobin, None);
        assert_eq!(fail(&mut group, 0, 50, 0), None);
        assert_eq!(group.pick(None, 0), Some(0));
    }

    // Goal: health checks flip health only after the thresholds in a row, an unhealthy
    // endpoint takes nothing, and an ejection ending re-admits only a healthy endpoint.
    #[test]
    fn health_checks_rise_and_fall() {
        let thresholds = Thresholds {
            healthy: 2,
            unhealthy: 3,
        };
        let mut group = group(&[1, 1], Strategy::Failover, Some(thresholds));
        assert_eq!(group.on_check(0, false, 0), None);
        assert_eq!(group.on_check(0, false, 0), None);
        assert_eq!(group.on_check(0, true, 0), None, "a pass breaks the run");
        group.on_check(0, false, 0);
        group.on_check(0, false, 0);
        assert_eq!(
            group.on_check(0, false, 0),
            Some(Change::Unhealthy { endpoint: 0 })
        );
        assert_eq!(group.pick(None, 0), Some(1), "failover to the healthy one");
        assert_eq!(group.on_check(0, true, 0), None);
        assert_eq!(
            group.on_check(0, true, 0),
            Some(Change::Healthy { endpoint: 0 })
        );
        assert_eq!(group.pick(None, 0), Some(0));

        // Ejected, and unhealthy by the time the ejection ends: not re-admitted.
        let Some(Change::Ejected { until_ms, .. }) = fail(&mut group, 0, 5, 0) else {
            panic!("ejected");
        };
        for _ in 0..3 {
            group.on_check(0, false, 0);
        }
        assert!(group.readmit(until_ms).is_empty());
        assert_eq!(group.pick(None, 0), Some(1));
        group.on_check(0, true, 0);
        assert_eq!(
            group.on_check(0, true, 0),
            Some(Change::Healthy { endpoint: 0 })
        );
        assert_eq!(group.pick(None, 0), Some(0));

        // None available: nothing is picked.
        for endpoint in 0..2 {
            for _ in 0..3 {
                group.on_check(endpoint, false, 0);
            }
        }
        assert_eq!(group.pick(None, 0), None);
    }

    // Goal: an endpoint's outage runs from its ejection (or unhealthy verdict) to its return,
    // its time to detect from its first failure, and the group is all down only while no
    // endpoint is available, since the earliest first failure.
    #[test]
    fn endpoints_have_recovery_figures() {
        let thresholds = Thresholds {
            healthy: 1,
            unhealthy: 2,
        };
        let mut group = group(&[1, 1], Strategy::RoundRobin, Some(thresholds));
        group.on_attempt(0, true, 1_000);
        let Some(Change::Ejected { until_ms, .. }) = fail(&mut group, 0, 4, 1_500) else {
            panic!("five failures eject");
        };
        assert_eq!(group.all_down_since_ms(), None, "endpoint 1 is available");
        group.on_check(1, false, 2_000);
        group.on_check(1, false, 3_000);
        assert_eq!(group.all_down_since_ms(), Some(1_000));
        assert_eq!(group.readmit(until_ms).len(), 1);
        assert_eq!(group.all_down_since_ms(), None);
        let health = group.health(0, until_ms + 10_000);
        let outage = health.last_outage.expect("an outage");
        assert_eq!(health.outages, 1);
        assert_eq!(outage.time_to_detect, Duration::from_millis(500));
        assert_eq!(
            outage.time_to_recover,
            Some(Duration::from_millis((until_ms - 1_500) as u64))
        );
        let unhealthy = group.health(1, 4_000);
        assert_eq!(unhealthy.outages, 1);
        assert_eq!(unhealthy.down_time, Duration::from_secs(1));
        assert_eq!(
            unhealthy.last_outage.expect("running").time_to_detect,
            Duration::from_secs(1),
            "from the first failed check"
        );
    }

    // Goal: after failovers, `failover` and `key_hash` take the next endpoint in their order
    // (a retry at once goes elsewhere, and wraps around), while the first pick is unchanged.
    #[test]
    fn failovers_move_on_in_the_strategys_order() {
        let mut failover = group(&[1, 1, 1], Strategy::Failover, None);
        let order: Vec<usize> = (0..4).map(|n| failover.pick(None, n).unwrap()).collect();
        assert_eq!(order, [0, 1, 2, 0]);
        let mut hashed = group(&[1, 1, 1], Strategy::KeyHash, None);
        for key in ["a", "b", "c", "order-7"] {
            let ranked: Vec<usize> = (0..3).map(|n| hashed.pick(Some(key), n).unwrap()).collect();
            assert_eq!(ranked[0], hashed.pick(Some(key), 0).unwrap(), "{key}");
            let mut distinct = ranked.clone();
            distinct.sort_unstable();
            assert_eq!(distinct, [0, 1, 2], "{key}: each endpoint once, {ranked:?}");
        }
    }
}
