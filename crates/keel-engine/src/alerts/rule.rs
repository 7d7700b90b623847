//! The checks an alert rule and its name pass before keel stores it: each failure names the
//! member and what is wrong, so the API answers a precise problem.

use std::time::Duration;

use keel_api::alerts::{AlertKind, AlertRule, Function};

use crate::error::{AlertError, EngineError};
use crate::limits::{ALERT_DURATION_MAX, ALERT_NAME_BYTES_MAX, ALERT_WINDOW_MAX};

/// The default `z` of anomaly rules.
pub(crate) const Z_DEFAULT: f64 = 4.0;
/// The default warm-up of anomaly rules.
pub(crate) const WARM_UP_DEFAULT: Duration = Duration::from_secs(30 * 60);
/// The default half-life of anomaly baselines.
pub(crate) const HALF_LIFE_DEFAULT: Duration = Duration::from_secs(3600);

/// Checks a rule name: 1 to 128 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or
/// digit (it names a file).
pub fn validate_alert_name(name: &str) -> Result<(), EngineError> {
    if crate::config::is_plain_name(name, ALERT_NAME_BYTES_MAX) {
        return Ok(());
    }
    Err(EngineError::Alert(AlertError::InvalidName {
        name: name.to_owned(),
        detail: format!(
            "a rule name is 1 to {ALERT_NAME_BYTES_MAX} characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        ),
    }))
}

/// Checks a rule: every member its kind and function need is there and in range, and none
/// that they do not use is set.
pub fn validate_alert_rule(name: &str, rule: &AlertRule) -> Result<(), EngineError> {
    check(rule).map_err(|detail| {
        EngineError::Alert(AlertError::InvalidRule {
            name: name.to_owned(),
            detail,
        })
    })
}

fn check(rule: &AlertRule) -> Result<(), String> {
    check_metric_name("metric", &rule.metric)?;
    check_label_names("labels", rule.labels.keys())?;
    check_function(rule)?;
    for (member, duration) in [
        ("for", rule.for_duration),
        ("keep_firing_for", rule.keep_firing_for),
    ] {
        check_duration(member, Some(duration), Duration::ZERO, ALERT_DURATION_MAX)?;
    }
    match rule.kind {
        AlertKind::Threshold => check_threshold(rule),
        AlertKind::Anomaly => check_anomaly(rule),
    }
}

fn check_function(rule: &AlertRule) -> Result<(), String> {
    let function = serde_json::to_string(&rule.function).unwrap_or_default();
    let windowed = rule.function != Function::Value;
    match (windowed, rule.window) {
        (true, None) => return Err(format!("function {function} needs a window, like \"5m\"")),
        (false, Some(_)) => {
            return Err("window is for rate, increase, ratio and quantile; function value reads the latest value".into());
        }
        _ => check_duration(
            "window",
            rule.window,
            Duration::from_millis(1),
            ALERT_WINDOW_MAX,
        )?,
    }
    let is_quantile = rule.function == Function::Quantile;
    match (is_quantile, rule.quantile) {
        (true, None) => return Err("function quantile needs quantile, between 0 and 1".into()),
        (true, Some(q)) if !(0.0..=1.0).contains(&q) => {
            return Err(format!("quantile must be between 0 and 1, got {q}"));
        }
        (false, Some(_)) => {
            return Err(format!("quantile is for function quantile, not {function}"));
        }
        _ => {}
    }
    let is_ratio = rule.function == Function::Ratio;
    match (is_ratio, &rule.denominator) {
        (true, None) => {
            return Err(
                "function ratio needs a denominator: {\"metric\": …, \"labels\": {…}}".into(),
            );
        }
        (true, Some(denominator)) => {
            check_metric_name("denominator.metric", &denominator.metric)?;
            check_label_names("denominator.labels", denominator.labels.keys())?;
            if rule.by.is_none() {
                return Err("function ratio needs by: the labels both sides are grouped by, like [\"subscription\"], or [] for one total".into());
            }
        }
        (false, Some(_)) => {
            return Err(format!("denominator is for function ratio, not {function}"));
        }
        (false, None) => {}
    }
    check_label_names("by", rule.by.iter().flatten())
}

fn check_threshold(rule: &AlertRule) -> Result<(), String> {
    refuse_members(
        "threshold",
        [
            ("z", rule.z.is_some()),
            ("z_resolve", rule.z_resolve.is_some()),
            ("warm_up", rule.warm_up.is_some()),
            ("half_life", rule.half_life.is_some()),
            ("direction", rule.direction.is_some()),
            ("seasonality", rule.seasonality.is_some()),
        ],
    )?;
    if rule.op.is_none() {
        return Err("a threshold rule needs op: \">\", \">=\", \"<\" or \"<=\"".into());
    }
    match rule.value {
        None => Err("a threshold rule needs value, the threshold".into()),
        Some(value) if !value.is_finite() => Err(format!("value must be finite, got {value}")),
        Some(_) => Ok(()),
    }
}

fn check_anomaly(rule: &AlertRule) -> Result<(), String> {
    refuse_members(
        "anomaly",
        [("op", rule.op.is_some()), ("value", rule.value.is_some())],
    )?;
    let z = rule.z.unwrap_or(Z_DEFAULT);
    if !(z.is_finite() && z > 0.0) {
        return Err(format!("z must be a number above 0, got {z}"));
    }
    if let Some(z_resolve) = rule.z_resolve
        && !(z_resolve.is_finite() && z_resolve > 0.0 && z_resolve <= z)
    {
        return Err(format!(
            "z_resolve must be above 0 and at most z ({z}), got {z_resolve}"
        ));
    }
    check_duration("warm_up", rule.warm_up, Duration::ZERO, ALERT_DURATION_MAX)?;
    check_duration(
        "half_life",
        rule.half_life,
        Duration::from_secs(1),
        ALERT_DURATION_MAX,
    )
}

fn refuse_members<const N: usize>(kind: &str, members: [(&str, bool); N]) -> Result<(), String> {
    match members.iter().find(|(_, set)| *set) {
        Some((member, _)) => Err(format!("{member} is not used by {kind} rules; remove it")),
        None => Ok(()),
    }
}

fn check_duration(
    member: &str,
    duration: Option<Duration>,
    min: Duration,
    max: Duration,
) -> Result<(), String> {
    match duration {
        Some(duration) if duration < min || duration > max => Err(format!(
            "{member} must be between {} and {}, got {}",
            keel_api::duration::format(min),
            keel_api::duration::format(max),
            keel_api::duration::format(duration)
        )),
        _ => Ok(()),
    }
}

/// A Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn check_metric_name(member: &str, name: &str) -> Result<(), String> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if valid {
        return Ok(());
    }
    Err(format!(
        "{member} {name:?} is not a metric name (letters, digits, '_' and ':', not starting with a digit), such as \"keel_subscription_lag\""
    ))
}

/// Prometheus label names: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn check_label_names<'a>(
    member: &str,
    names: impl IntoIterator<Item = &'a String>,
) -> Result<(), String> {
    for name in names {
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("{member}: {name:?} is not a label name"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(json: serde_json::Value) -> String {
        let rule: AlertRule = serde_json::from_value(json).expect("parses");
        validate_alert_rule("r", &rule)
            .expect_err("refused")
            .to_string()
    }

    // Goal: every misplaced or missing member is refused by name; the four documented
    // examples pass.
    #[test]
    fn rules_are_checked_member_by_member() {
        use serde_json::json;
        for (rule, needle) in [
            (json!({"kind": "threshold", "metric": "keel_x"}), "needs op"),
            (
                json!({"kind": "threshold", "metric": "keel_x", "op": ">"}),
                "needs value",
            ),
            (
                json!({"kind": "threshold", "metric": "9x", "op": ">", "value": 1}),
                "metric \"9x\"",
            ),
            (
                json!({"kind": "threshold", "metric": "keel_x", "op": ">", "value": 1, "z": 3}),
                "z is not used",
            ),
            (
                json!({"kind": "anomaly", "metric": "keel_x", "op": ">"}),
                "op is not used",
            ),
            (
                json!({"kind": "anomaly", "metric": "keel_x", "function": "rate"}),
                "needs a window",
            ),
            (
                json!({"kind": "anomaly", "metric": "keel_x", "window": "1m"}),
                "window is for",
            ),
            (
                json!({"kind": "anomaly", "metric": "keel_x", "z": 2, "z_resolve": 3}),
                "z_resolve",
            ),
            (
                json!({"kind": "anomaly", "metric": "keel_x", "half_life": "0s"}),
                "half_life must be",
            ),
            (
                json!({"kind": "anomaly", "metric": "keel_x", "function": "quantile", "window": "1m"}),
                "needs quantile",
            ),
            (
                json!({"kind": "anomaly", "metric": "keel_x", "function": "quantile", "window": "1m", "quantile": 2}),
                "between 0 and 1",
            ),
            (
                json!({"kind": "anomaly", "metric": "keel_x", "function": "ratio", "window": "1m"}),
                "needs a denominator",
            ),
            (
                json!({"kind": "anomaly", "metric": "keel_x", "function": "ratio", "window": "1m", "denominator": {"metric": "keel_y"}}),
                "needs by",
            ),
            (
                json!({"kind": "anomaly", "metric": "keel_x", "labels": {"a-b": "x"}}),
                "not a label name",
            ),
            (
                json!({"kind": "anomaly", "metric": "keel_x", "function": "rate", "window": "2d"}),
                "window must be",
            ),
        ] {
            let error = error_of(rule.clone());
            assert!(error.contains(needle), "{rule}: {error}");
        }
        for good in [
            json!({"kind": "threshold", "metric": "keel_subscription_lag", "labels": {"subscription": "billing"}, "op": ">", "value": 10000, "for": "1m", "keep_firing_for": "30s"}),
            json!({"kind": "threshold", "metric": "keel_subscription_dlq_depth", "op": ">", "value": 0}),
            json!({"kind": "threshold", "metric": "keel_subscription_attempts_total", "labels": {"outcome": "failed"}, "function": "ratio", "window": "5m", "by": ["subscription"], "denominator": {"metric": "keel_subscription_attempts_total"}, "op": ">", "value": 0.05}),
            json!({"kind": "threshold", "metric": "keel_fsync_seconds", "function": "quantile", "quantile": 0.99, "window": "5m", "op": ">", "value": 0.05}),
            json!({"kind": "anomaly", "metric": "keel_publish_events_total", "function": "rate", "window": "1m", "z": 4, "warm_up": "30m"}),
        ] {
            let rule: AlertRule = serde_json::from_value(good.clone()).expect("parses");
            assert!(validate_alert_rule("r", &rule).is_ok(), "{good}");
        }
    }

    // Goal: rule names follow the file-safe rule.
    #[test]
    fn rule_names_are_file_safe() {
        assert!(validate_alert_name("billing-lag.v2").is_ok());
        for bad in ["", "../x", "a/b", "_x", &"x".repeat(129)] {
            assert!(validate_alert_name(bad).is_err(), "{bad}");
        }
    }
}
