//! Alert rules: what `PUT /v1/alerts/{name}` takes (and the server's config file declares
//! under `[alerts.NAME]`), and what `GET /v1/alerts` and `GET /v1/alerts/{name}` answer.
//!
//! A rule reads one keel metric (as `GET /metrics` names it), keeps the series whose labels
//! match, turns each into a number (`function`) and either compares it with a threshold
//! (`kind = "threshold"`) or with a baseline it learns (`kind = "anomaly"`). Every member
//! but `kind` and `metric` may be left out; `docs/alerts.md` is the reference.
//!
//! ```
//! use keel_api::alerts::{AlertKind, AlertRule, Function};
//!
//! let rule: AlertRule = serde_json::from_str(
//!     r#"{"kind": "threshold", "metric": "keel_subscription_lag",
//!         "labels": {"subscription": "billing"}, "op": ">", "value": 10000, "for": "1m"}"#,
//! )?;
//! assert_eq!(rule.kind, AlertKind::Threshold);
//! assert_eq!(rule.function, Function::Value);
//! assert_eq!(rule.for_duration, std::time::Duration::from_secs(60));
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;

/// Whether a rule compares with a fixed threshold or with a learned baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The value compared with `value` by `op`.
    Threshold,
    /// The value's z-score against a baseline learned from its own history.
    Anomaly,
}

/// How a rule turns the matched series into the number it judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Function {
    /// The latest value (a gauge, or a counter's total).
    #[default]
    Value,
    /// A counter's increase per second over `window` (counter resets handled).
    Rate,
    /// A counter's increase over `window`.
    Increase,
    /// The increase of `metric` divided by the increase of `denominator` over `window`
    /// (an error ratio: failed attempts over all attempts).
    Ratio,
    /// The `quantile` of a histogram over `window`, from its buckets' increases, as
    /// Prometheus' `histogram_quantile` computes it. `metric` names the histogram (without
    /// `_bucket`).
    Quantile,
}

/// How series are gathered into alert instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Matched series that share the `by` labels are added up.
    #[default]
    Sum,
    /// The largest of them is taken.
    Max,
}

/// A comparison of a threshold rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Comparison {
    /// Fires while the value is above the threshold.
    #[serde(rename = ">")]
    Above,
    /// Fires while the value is at or above the threshold.
    #[serde(rename = ">=")]
    AtLeast,
    /// Fires while the value is below the threshold.
    #[serde(rename = "<")]
    Below,
    /// Fires while the value is at or below the threshold.
    #[serde(rename = "<=")]
    AtMost,
}

impl Comparison {
    /// Whether `value` compared with `threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Above => value > threshold,
            Comparison::AtLeast => value >= threshold,
            Comparison::Below => value < threshold,
            Comparison::AtMost => value <= threshold,
        }
    }

    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            Comparison::Above => ">",
            Comparison::AtLeast => ">=",
            Comparison::Below => "<",
            Comparison::AtMost => "<=",
        }
    }
}

/// Which departures from the baseline an anomaly rule flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Spikes and collapses.
    #[default]
    Both,
    /// Only values above the baseline (a spike, a latency drifting up).
    Up,
    /// Only values below the baseline (a publish rate collapsing).
    Down,
}

/// The other side of a ratio: a metric and its label matchers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// The metric's sample name, as `GET /metrics` writes it.
    pub metric: String,
    /// Labels a series must have, with these exact values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// An alert rule. Members that do not apply to its `kind` or `function` are refused, so a
/// misplaced setting is never silently ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// `threshold` or `anomaly`.
    pub kind: AlertKind,
    /// The metric's sample name, as `GET /metrics` writes it (`keel_subscription_lag`,
    /// `keel_publish_events_total`); for `quantile`, the histogram's name
    /// (`keel_fsync_seconds`). A metric that does not exist yet matches nothing until it does.
    pub metric: String,
    /// Labels a series must have, with these exact values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// How the series become a number: `value`, `rate`, `increase`, `ratio` or `quantile`.
    #[serde(default)]
    pub function: Function,
    /// The span `rate`, `increase`, `ratio` and `quantile` look back over (`"5m"`).
    #[serde(
        default,
        with = "duration::serde_text_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub window: Option<Duration>,
    /// For `quantile`: which one, between 0 and 1 (`0.99`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantile: Option<f64>,
    /// For `ratio`: the denominator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<Selector>,
    /// One alert instance per distinct value of these labels, its series aggregated. Left
    /// out: one instance per series (per subscription, per topic…); `[]`: one for all.
    /// Required for `ratio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Vec<String>>,
    /// How the series of one instance are aggregated: `sum` (the default) or `max`.
    #[serde(default, skip_serializing_if = "crate::is_default")]
    pub aggregate: Aggregation,
    /// Threshold rules: the comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Comparison>,
    /// Threshold rules: the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// How long the condition must hold before the alert fires (pending until then).
    #[serde(
        default,
        rename = "for",
        with = "duration::serde_text",
        skip_serializing_if = "Duration::is_zero"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub for_duration: Duration,
    /// How long an alert keeps firing after its condition cleared.
    #[serde(
        default,
        with = "duration::serde_text",
        skip_serializing_if = "Duration::is_zero"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub keep_firing_for: Duration,
    /// Anomaly rules: fire when the value is more than this many deviations from the
    /// baseline's mean (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z: Option<f64>,
    /// Anomaly rules: a firing alert resolves once the z-score is back under this (default
    /// half of `z`): the hysteresis that keeps a noisy value from flapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z_resolve: Option<f64>,
    /// Anomaly rules: how long the baseline learns before the rule may fire (default 30m).
    #[serde(
        default,
        with = "duration::serde_text_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub warm_up: Option<Duration>,
    /// Anomaly rules: the baseline's memory: an observation's weight halves after this long
    /// (default 1h). Independent of the evaluation interval, unlike a raw EWMA alpha.
    #[serde(
        default,
        with = "duration::serde_text_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub half_life: Option<Duration>,
    /// Anomaly rules: `both` (the default), `up` or `down`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// Anomaly rules: `daily` also learns a baseline per hour of the day (UTC) and judges by
    /// the current hour's once it has a day behind it, so a nightly lull or a daily batch is
    /// normal at its hour. Left out: one baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seasonality: Option<Seasonality>,
}

/// The cycle an anomaly rule's baseline may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Seasonality {
    /// One baseline per hour of the day, UTC.
    Daily,
}

/// Where an alert instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition does not hold.
    Inactive,
    /// The condition holds, for less than `for` so far.
    Pending,
    /// The condition held for `for` (or cleared less than `keep_firing_for` ago).
    Firing,
}

/// What an anomaly instance has learned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Baseline {
    /// The mean learned.
    pub mean: f64,
    /// The standard deviation learned (at least a floor: see `docs/alerts.md`).
    pub deviation: f64,
    /// Observations learned from.
    pub samples: u64,
    /// Whether the warm-up is over: only then may the rule fire.
    pub warmed_up: bool,
    /// With `seasonality: "daily"`, once the current hour's baseline judges: that hour
    /// (0–23, UTC). The figures above are then that hour's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false, maximum = 23))]
    pub hour_of_day: Option<u8>,
}

/// One alert instance: the series (or group of series) of one label set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertInstance {
    /// The instance's labels (the `by` labels, or the series' labels).
    pub labels: BTreeMap<String, String>,
    /// Where it is.
    pub state: AlertState,
    /// The value at the last evaluation (none: no data, such as a rate before two samples).
    #[cfg_attr(feature = "openapi", schema(required))]
    pub value: Option<f64>,
    /// Anomaly rules: the value's z-score against the baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub z: Option<f64>,
    /// Since when it is in `state` (RFC 3339); none while inactive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub since: Option<String>,
    /// Anomaly rules: the baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub baseline: Option<Baseline>,
}

/// A rule and its instances, as describe and list answer it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertStatus {
    /// The rule's name.
    pub name: String,
    /// The most severe state of its instances (`inactive` without any).
    pub state: AlertState,
    /// The rule.
    pub rule: AlertRule,
    /// When it was last evaluated (RFC 3339); none before the first evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub evaluated_at: Option<String>,
    /// Its instances, by labels.
    pub instances: Vec<AlertInstance>,
}

/// `GET /v1/alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertList {
    /// Every rule, by name.
    pub alerts: Vec<AlertStatus>,
}

/// The internal topic every alert transition (and other notices of keel) is appended to.
pub const NOTICES_TOPIC: &str = "_keel.alerts";
