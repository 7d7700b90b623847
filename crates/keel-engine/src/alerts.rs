//! Alert rules and their evaluation. The engine evaluates every rule once per evaluation
//! interval (`engine/alerts.rs` runs the task): it reads the metrics registry's exposition,
//! keeps a bounded history of the series rules read, computes each rule's value per
//! instance (`query.rs`), steps each instance's state machine (`instance.rs`), learns
//! anomaly baselines (`baseline.rs`), and returns the transitions for the caller to append
//! to `_keel.alerts` (see `notices.rs`).
//!
//! Everything here is synchronous and takes the time as an argument, so tests drive hours of
//! evaluations in milliseconds. Rule state lives in memory: after a restart, instances start
//! inactive and baselines warm up again.

mod baseline;
mod instance;
mod query;
mod rule;
mod series;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use keel_api::alerts::{AlertInstance, AlertKind, AlertRule, AlertState, AlertStatus};

use crate::clock::format_rfc3339_ms;
use crate::limits::ALERT_INSTANCES_MAX;
use baseline::{Learned, beyond};
use instance::{Instance, Transition};
use query::InstanceLabels;
use series::{History, Snapshot};

pub use rule::{validate_alert_name, validate_alert_rule};

/// A transition to tell operators: appended to `_keel.alerts` as `alert.firing` or
/// `alert.resolved`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertNotice {
    /// The rule's name.
    pub rule: String,
    /// `firing` or `resolved`.
    pub firing: bool,
    /// What the event's `data` holds (see `docs/alerts.md`).
    pub data: serde_json::Value,
}

impl AlertNotice {
    /// The notice's kind, for [`crate::notices::Notices::emit`].
    pub fn kind(&self) -> &'static str {
        if self.firing {
            "alert.firing"
        } else {
            "alert.resolved"
        }
    }
}

/// One instance: its state machine, its last value and, for anomaly rules, its baseline.
#[derive(Debug, Clone)]
struct Tracked {
    instance: Instance,
    value: Option<f64>,
    z: Option<f64>,
    baseline: Option<Learned>,
    /// When it last had a value.
    seen_ms: i64,
}

/// A rule and its instances.
#[derive(Debug)]
struct RuleState {
    rule: AlertRule,
    instances: BTreeMap<InstanceLabels, Tracked>,
    evaluated_ms: Option<i64>,
}

/// Every rule, and the metric history they read. Not thread-safe: the engine keeps it behind
/// a mutex, held for one evaluation or one change of rules.
#[derive(Debug, Default)]
pub(crate) struct Alerts {
    rules: BTreeMap<String, RuleState>,
    history: History,
}

/// Whether a put made, changed or kept a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulePut {
    /// A new rule.
    Created,
    /// It replaced another rule of that name (whose instances start over).
    Replaced,
    /// The same rule was there: nothing changed.
    Unchanged,
}

impl Alerts {
    /// The number of rules.
    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there is no rule.
    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a rule of that name exists.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.rules.contains_key(name)
    }

    /// Sets a rule (checked by the caller). A replaced rule's firing instances resolve: the
    /// notices returned say so.
    pub(crate) fn put(
        &mut self,
        name: &str,
        rule: AlertRule,
        now_ms: i64,
    ) -> (RulePut, Vec<AlertNotice>) {
        let fresh = RuleState {
            rule,
            instances: BTreeMap::new(),
            evaluated_ms: None,
        };
        match self.rules.insert(name.to_owned(), fresh) {
            None => (RulePut::Created, Vec::new()),
            Some(old) if old.rule == self.rules[name].rule => {
                self.rules.insert(name.to_owned(), old);
                (RulePut::Unchanged, Vec::new())
            }
            Some(old) => (
                RulePut::Replaced,
                resolve_all(name, old, now_ms, "replaced"),
            ),
        }
    }

    /// Removes a rule; its firing instances resolve. None when there was no such rule.
    pub(crate) fn remove(&mut self, name: &str, now_ms: i64) -> Option<Vec<AlertNotice>> {
        let old = self.rules.remove(name)?;
        Some(resolve_all(name, old, now_ms, "deleted"))
    }

    /// The sample names the rules read.
    pub(crate) fn wanted(&self) -> HashSet<String> {
        let rules = self.rules.values();
        rules
            .flat_map(|state| query::sample_names(&state.rule))
            .collect()
    }

    /// Evaluates every rule against the exposition `text` read at `now_ms`; returns the
    /// transitions to tell.
    pub(crate) fn evaluate(&mut self, text: &str, now_ms: i64) -> Vec<AlertNotice> {
        let snapshot = Snapshot::parse(text, &self.wanted(), now_ms);
        let window_max = self
            .rules
            .values()
            .filter_map(|state| state.rule.window)
            .max();
        let keep_ms = window_max.map_or(0, |window| window.as_millis() as i64);
        self.history.push(snapshot, keep_ms);
        let mut notices = Vec::new();
        for (name, state) in &mut self.rules {
            let values = query::evaluate(&state.rule, &self.history);
            notices.extend(step_rule(name, state, values, now_ms));
        }
        notices
    }

    /// How many instances are firing, per rule.
    pub(crate) fn firing(&self) -> impl Iterator<Item = (&str, usize)> {
        self.rules.iter().map(|(name, state)| {
            let firing = state.instances.values();
            let count = firing
                .filter(|tracked| tracked.instance.state == AlertState::Firing)
                .count();
            (name.as_str(), count)
        })
    }

    /// A rule's status, for the API.
    pub(crate) fn status(&self, name: &str, now_ms: i64) -> Option<AlertStatus> {
        let state = self.rules.get(name)?;
        let instances: Vec<AlertInstance> = state
            .instances
            .iter()
            .map(|(labels, tracked)| instance_view(&state.rule, labels, tracked, now_ms))
            .collect();
        Some(AlertStatus {
            name: name.to_owned(),
            state: instances
                .iter()
                .map(|instance| instance.state)
                .max()
                .unwrap_or(AlertState::Inactive),
            rule: state.rule.clone(),
            evaluated_at: state.evaluated_ms.map(format_rfc3339_ms),
            instances,
        })
    }

    /// Every rule's status, by name.
    pub(crate) fn statuses(&self, now_ms: i64) -> Vec<AlertStatus> {
        let names = self.rules.keys();
        names.filter_map(|name| self.status(name, now_ms)).collect()
    }
}

/// Steps every instance of a rule with this evaluation's values; instances without a value
/// see their condition cleared.
fn step_rule(
    name: &str,
    state: &mut RuleState,
    mut values: BTreeMap<InstanceLabels, f64>,
    now_ms: i64,
) -> Vec<AlertNotice> {
    state.evaluated_ms = Some(now_ms);
    if values.len() > ALERT_INSTANCES_MAX {
        tracing::warn!(
            rule = name,
            series = values.len(),
            max = ALERT_INSTANCES_MAX,
            "the alert rule matches more instances than it tracks; group them with `by`"
        );
        values = values.into_iter().take(ALERT_INSTANCES_MAX).collect();
    }
    for labels in values.keys() {
        if !state.instances.contains_key(labels) {
            let tracked = Tracked {
                instance: Instance::new(now_ms),
                value: None,
                z: None,
                baseline: None,
                seen_ms: now_ms,
            };
            state.instances.insert(labels.clone(), tracked);
        }
    }
    let rule = &state.rule;
    let mut notices = Vec::new();
    state.instances.retain(|labels, tracked| {
        let value = values.get(labels).copied();
        let transition = step_instance(rule, tracked, value, now_ms);
        if let Some(transition) = transition {
            let firing = transition == Transition::Fired;
            notices.push(notice(name, rule, labels, tracked, firing, now_ms, None));
        }
        keep_instance(rule, tracked, now_ms)
    });
    notices
}

/// One instance's evaluation: judges the value (and for anomaly rules learns it).
fn step_instance(
    rule: &AlertRule,
    tracked: &mut Tracked,
    value: Option<f64>,
    now_ms: i64,
) -> Option<Transition> {
    tracked.value = value;
    // A baseline made by this observation has learned it already.
    let learned_before = tracked.baseline.is_some();
    let holds = match (value, rule.kind) {
        (None, _) => false,
        (Some(value), AlertKind::Threshold) => {
            tracked.seen_ms = now_ms;
            let (op, threshold) = (rule.op?, rule.value?);
            op.holds(value, threshold)
        }
        (Some(value), AlertKind::Anomaly) => {
            tracked.seen_ms = now_ms;
            judge_anomaly(rule, tracked, value, now_ms)
        }
    };
    let transition = tracked
        .instance
        .step(now_ms, holds, rule.for_duration, rule.keep_firing_for);
    if let (Some(value), Some(baseline), true) = (value, &mut tracked.baseline, learned_before) {
        // Learned after judging, and slowly while the alert is on, so an anomaly does not
        // teach the baseline that it is normal.
        let slowed = tracked.instance.state != AlertState::Inactive;
        baseline.learn(value, now_ms, half_life(rule), slowed);
    }
    transition
}

/// Whether an anomaly rule's condition holds: the z-score is beyond `z` (beyond `z_resolve`
/// once pending or firing: the hysteresis), after the warm-up.
fn judge_anomaly(rule: &AlertRule, tracked: &mut Tracked, value: f64, now_ms: i64) -> bool {
    let Some(baseline) = &tracked.baseline else {
        // The first observation starts the baseline; it is learned, not judged.
        let daily = rule.seasonality == Some(keel_api::alerts::Seasonality::Daily);
        tracked.baseline = Some(Learned::new(value, now_ms, daily));
        tracked.z = None;
        return false;
    };
    let z = baseline.z(value, now_ms);
    tracked.z = Some(z);
    let z_fire = rule.z.unwrap_or(rule::Z_DEFAULT);
    let limit = match tracked.instance.state {
        AlertState::Inactive => z_fire,
        AlertState::Pending | AlertState::Firing => rule.z_resolve.unwrap_or(z_fire / 2.0),
    };
    let warm_up = rule.warm_up.unwrap_or(rule::WARM_UP_DEFAULT);
    baseline.warmed_up(now_ms, warm_up) && beyond(z, limit, rule.direction.unwrap_or_default())
}

fn half_life(rule: &AlertRule) -> Duration {
    rule.half_life.unwrap_or(rule::HALF_LIFE_DEFAULT)
}

/// Whether an instance is still worth tracking: an inactive one whose series went away is
/// forgotten (an anomaly baseline after one half-life without data).
fn keep_instance(rule: &AlertRule, tracked: &Tracked, now_ms: i64) -> bool {
    if tracked.value.is_some() || tracked.instance.state != AlertState::Inactive {
        return true;
    }
    let grace_ms = match rule.kind {
        AlertKind::Threshold => 0,
        AlertKind::Anomaly => half_life(rule).as_millis() as i64,
    };
    now_ms - tracked.seen_ms < grace_ms
}

/// Resolves every firing instance of a rule that is replaced or deleted.
fn resolve_all(name: &str, old: RuleState, now_ms: i64, why: &str) -> Vec<AlertNotice> {
    let firing = old
        .instances
        .iter()
        .filter(|(_, tracked)| tracked.instance.state == AlertState::Firing);
    firing
        .map(|(labels, tracked)| {
            let reason = format!("the rule was {why}");
            notice(
                name,
                &old.rule,
                labels,
                tracked,
                false,
                now_ms,
                Some(reason),
            )
        })
        .collect()
}

/// The notice of a transition, with what the event's `data` holds.
fn notice(
    name: &str,
    rule: &AlertRule,
    labels: &InstanceLabels,
    tracked: &Tracked,
    firing: bool,
    now_ms: i64,
    reason: Option<String>,
) -> AlertNotice {
    let view = instance_view(rule, labels, tracked, now_ms);
    let mut data = serde_json::json!({
        "rule": name,
        "state": if firing { "firing" } else { "resolved" },
        "labels": labels,
        "metric": rule.metric,
        "value": tracked.value,
        "since": format_rfc3339_ms(now_ms),
        "kind": rule.kind,
    });
    let extra = [
        ("op", rule.op.map(|op| serde_json::json!(op.symbol()))),
        (
            "threshold",
            rule.value.map(|value| serde_json::json!(value)),
        ),
        ("z", view.z.map(|z| serde_json::json!(z))),
        ("baseline", view.baseline.map(|b| serde_json::json!(b))),
        ("reason", reason.map(serde_json::Value::String)),
    ];
    for (member, value) in extra {
        if let Some(value) = value {
            data[member] = value;
        }
    }
    AlertNotice {
        rule: name.to_owned(),
        firing,
        data,
    }
}

fn instance_view(
    rule: &AlertRule,
    labels: &InstanceLabels,
    tracked: &Tracked,
    now_ms: i64,
) -> AlertInstance {
    let state = tracked.instance.state;
    let warm_up = rule.warm_up.unwrap_or(rule::WARM_UP_DEFAULT);
    AlertInstance {
        labels: labels.clone(),
        state,
        value: tracked.value,
        z: tracked.z,
        since: (state != AlertState::Inactive)
            .then(|| format_rfc3339_ms(tracked.instance.since_ms)),
        baseline: tracked
            .baseline
            .as_ref()
            .map(|baseline| baseline.view(now_ms, warm_up)),
    }
}

#[cfg(test)]
mod tests;
