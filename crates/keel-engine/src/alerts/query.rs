//! What a rule measures: its function applied to the matched series over the history, one
//! value per alert instance (a label set).

use std::collections::BTreeMap;

use keel_api::alerts::{Aggregation, AlertRule, Function};

use super::series::{History, Labels, increase};

/// An instance's labels.
pub(crate) type InstanceLabels = BTreeMap<String, String>;

/// The label a histogram's bucket series carry for their upper bound.
const BUCKET_LABEL: &str = "le";

/// The sample names a rule reads.
pub(crate) fn sample_names(rule: &AlertRule) -> Vec<String> {
    let mut names = vec![match rule.function {
        Function::Quantile => format!("{}_bucket", rule.metric),
        _ => rule.metric.clone(),
    }];
    if let Some(denominator) = &rule.denominator {
        names.push(denominator.metric.clone());
    }
    names
}

/// The rule's value for each instance, at the newest snapshot. An instance with no value
/// (a rate before two samples, a ratio over nothing) is left out.
pub(crate) fn evaluate(rule: &AlertRule, history: &History) -> BTreeMap<InstanceLabels, f64> {
    let matchers: Labels = rule.labels.clone().into_iter().collect();
    let window_ms = rule.window.map_or(0, |window| {
        i64::try_from(window.as_millis()).unwrap_or(i64::MAX)
    });
    let by = rule.by.as_deref();
    match rule.function {
        Function::Value => {
            let series = history.latest().into_iter().flat_map(|latest| {
                latest
                    .matching(&rule.metric, &matchers)
                    .map(|(labels, value)| (labels.clone(), value))
            });
            aggregate(series, by, rule.aggregate)
        }
        Function::Rate | Function::Increase => {
            let per_second = rule.function == Function::Rate;
            let series = increases(history, &rule.metric, &matchers, window_ms).map(
                move |(labels, increase, span_ms)| {
                    let value = if per_second {
                        increase * 1000.0 / span_ms as f64
                    } else {
                        increase
                    };
                    (labels, value)
                },
            );
            aggregate(series, by, rule.aggregate)
        }
        Function::Ratio => ratio(rule, history, &matchers, window_ms),
        Function::Quantile => quantiles(rule, history, &matchers, window_ms),
    }
}

/// Each matched counter series' increase over the window, with the span it covers: only
/// series seen over at least half the window, so that a series that just appeared (or a
/// rule just made) gives no value from a sliver of it.
fn increases<'a>(
    history: &'a History,
    name: &'a str,
    matchers: &'a Labels,
    window_ms: i64,
) -> impl Iterator<Item = (Labels, f64, i64)> + 'a {
    history.latest().into_iter().flat_map(move |latest| {
        latest
            .matching(name, matchers)
            .filter_map(move |(labels, _)| {
                let (total, span_ms) = increase(history, name, labels, window_ms)?;
                (span_ms * 2 >= window_ms).then(|| (labels.clone(), total, span_ms))
            })
    })
}

/// The instance a series belongs to: its `by` labels, or all of them (less a histogram's
/// `le`) for one instance per series.
fn instance_of(labels: &Labels, by: Option<&[String]>) -> InstanceLabels {
    let kept = labels.iter().filter(|(name, _)| match by {
        Some(by) => by.contains(name),
        None => name != BUCKET_LABEL,
    });
    kept.cloned().collect()
}

/// Gathers series into instances by `by`, summing or taking the largest.
fn aggregate(
    series: impl Iterator<Item = (Labels, f64)>,
    by: Option<&[String]>,
    aggregation: Aggregation,
) -> BTreeMap<InstanceLabels, f64> {
    let mut instances: BTreeMap<InstanceLabels, f64> = BTreeMap::new();
    for (labels, value) in series {
        let instance = instance_of(&labels, by);
        instances
            .entry(instance)
            .and_modify(|total| match aggregation {
                Aggregation::Sum => *total += value,
                Aggregation::Max => *total = total.max(value),
            })
            .or_insert(value);
    }
    instances
}

/// The numerator's increase over the denominator's, per instance; none where the
/// denominator did not grow.
fn ratio(
    rule: &AlertRule,
    history: &History,
    matchers: &Labels,
    window_ms: i64,
) -> BTreeMap<InstanceLabels, f64> {
    let Some(denominator) = &rule.denominator else {
        return BTreeMap::new();
    };
    let by = rule.by.as_deref();
    let summed = |name: &str, matchers: &Labels| {
        let series =
            increases(history, name, matchers, window_ms).map(|(labels, total, _)| (labels, total));
        aggregate(series, by, Aggregation::Sum)
    };
    let numerators = summed(&rule.metric, matchers);
    let denominator_matchers: Labels = denominator.labels.clone().into_iter().collect();
    let denominators = summed(&denominator.metric, &denominator_matchers);
    denominators
        .into_iter()
        .filter(|(_, total)| *total > 0.0)
        .map(|(instance, total)| {
            let numerator = numerators.get(&instance).copied().unwrap_or(0.0);
            (instance, numerator / total)
        })
        .collect()
}

/// The histogram quantile of each instance from its buckets' increases over the window.
fn quantiles(
    rule: &AlertRule,
    history: &History,
    matchers: &Labels,
    window_ms: i64,
) -> BTreeMap<InstanceLabels, f64> {
    let quantile = rule.quantile.unwrap_or(0.5);
    let bucket_name = format!("{}_bucket", rule.metric);
    let mut buckets: BTreeMap<InstanceLabels, Vec<(f64, f64)>> = BTreeMap::new();
    for (labels, total, _) in increases(history, &bucket_name, matchers, window_ms) {
        let Some(bound) = labels
            .iter()
            .find(|(name, _)| name == BUCKET_LABEL)
            .and_then(|(_, bound)| bound.parse::<f64>().ok())
        else {
            continue;
        };
        let instance = instance_of(&labels, rule.by.as_deref());
        buckets.entry(instance).or_default().push((bound, total));
    }
    buckets
        .into_iter()
        .filter_map(|(instance, mut counts)| {
            // Series of one instance with the same bound (several topics summed) add up.
            counts.sort_by(|a, b| a.0.total_cmp(&b.0));
            counts.dedup_by(|later, earlier| {
                let same = later.0 == earlier.0;
                if same {
                    earlier.1 += later.1;
                }
                same
            });
            Some((instance, histogram_quantile(quantile, &counts)?))
        })
        .collect()
}

/// Prometheus' `histogram_quantile`: `buckets` are (upper bound, cumulative count) sorted by
/// bound, the last one `+Inf`. The quantile is interpolated linearly inside the bucket it
/// falls in (from 0 for the first bucket); one in the `+Inf` bucket is the highest finite
/// bound. None without observations or without the `+Inf` bucket.
pub(crate) fn histogram_quantile(quantile: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let &(last_bound, observations) = buckets.last()?;
    if last_bound != f64::INFINITY || observations <= 0.0 || buckets.len() < 2 {
        return None;
    }
    let rank = quantile * observations;
    let index = buckets.iter().position(|(_, count)| *count >= rank)?;
    if index == buckets.len() - 1 {
        return Some(buckets[buckets.len() - 2].0);
    }
    let (bound, count) = buckets[index];
    let (lower_bound, lower_count) = match index {
        0 if bound <= 0.0 => return Some(bound),
        0 => (0.0, 0.0),
        _ => buckets[index - 1],
    };
    if count == lower_count {
        return Some(bound);
    }
    Some(lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::series::Snapshot;

    fn rule(json: serde_json::Value) -> AlertRule {
        serde_json::from_value(json).expect("a rule")
    }

    fn history_of(texts: &[(i64, &str)], rule: &AlertRule) -> History {
        let wanted = sample_names(rule).into_iter().collect();
        let mut history = History::default();
        for (at_ms, text) in texts {
            history.push(Snapshot::parse(text, &wanted, *at_ms), i64::MAX);
        }
        history
    }

    fn instance(pairs: &[(&str, &str)]) -> InstanceLabels {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    // Goal: histogram_quantile matches Prometheus: linear inside a bucket, the highest finite
    // bound in +Inf, nothing without observations.
    #[test]
    fn histogram_quantile_interpolates_like_prometheus() {
        let buckets = [
            (0.1, 50.0),
            (0.2, 90.0),
            (0.4, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(histogram_quantile(0.5, &buckets), Some(0.1));
        let p70 = histogram_quantile(0.7, &buckets).unwrap();
        assert!((p70 - 0.15).abs() < 1e-9, "{p70}");
        let p95 = histogram_quantile(0.95, &buckets).unwrap();
        assert!((p95 - 0.3).abs() < 1e-9, "{p95}");
        let p25 = histogram_quantile(0.25, &buckets).unwrap();
        assert!((p25 - 0.05).abs() < 1e-9, "{p25}");
        let overflow = [(0.1, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(histogram_quantile(0.99, &overflow), Some(0.1));
        assert_eq!(
            histogram_quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
    }

    // Goal: a quantile over a window uses bucket increases, per series by default, across
    // series with `by: []`.
    #[test]
    fn quantile_over_a_window_uses_bucket_increases() {
        let rule = rule(
            serde_json::json!({"kind": "threshold", "metric": "keel_fsync_seconds",
            "function": "quantile", "quantile": 0.99, "window": "1m", "op": ">", "value": 0.05}),
        );
        let buckets = |fast: u32, slow: u32| {
            format!(
                "keel_fsync_seconds_bucket{{le=\"0.01\",topic=\"a\"}} {fast}\n\
                 keel_fsync_seconds_bucket{{le=\"0.1\",topic=\"a\"}} {}\n\
                 keel_fsync_seconds_bucket{{le=\"+Inf\",topic=\"a\"}} {}\n",
                fast + slow,
                fast + slow
            )
        };
        // Before the window: 1000 fast ones; within it: 10 fast, 90 slow.
        let (before, after) = (buckets(1000, 0), buckets(1010, 90));
        let history = history_of(&[(0, &before), (60_000, &after)], &rule);
        let values = evaluate(&rule, &history);
        let p99 = values[&instance(&[("topic", "a")])];
        assert!(p99 > 0.09 && p99 <= 0.1, "{p99}");
    }

    // Goal: a ratio divides summed increases per `by` group and leaves out groups whose
    // denominator did not grow.
    #[test]
    fn ratio_divides_increases_per_group() {
        let rule = rule(serde_json::json!({"kind": "threshold",
            "metric": "keel_subscription_attempts_total", "labels": {"outcome": "failed"},
            "function": "ratio", "window": "1s", "by": ["subscription"], "op": ">", "value": 0.05,
            "denominator": {"metric": "keel_subscription_attempts_total"}}));
        let text = |failed: u32, acked: u32, idle: u32| {
            format!(
                "keel_subscription_attempts_total{{outcome=\"failed\",subscription=\"s\"}} {failed}\n\
                 keel_subscription_attempts_total{{outcome=\"acked\",subscription=\"s\"}} {acked}\n\
                 keel_subscription_attempts_total{{outcome=\"acked\",subscription=\"idle\"}} {idle}\n"
            )
        };
        let (first, second) = (text(0, 0, 5), text(10, 30, 5));
        let history = history_of(&[(0, &first), (1000, &second)], &rule);
        let values = evaluate(&rule, &history);
        assert_eq!(values.len(), 1, "{values:?}");
        assert_eq!(values[&instance(&[("subscription", "s")])], 0.25);
    }

    // Goal: rates are per series unless `by` groups them; `max` takes the largest.
    #[test]
    fn rates_are_per_series_or_aggregated_by_labels() {
        let text = |a: u32, b: u32| {
            format!(
                "keel_publish_events_total{{topic=\"a\"}} {a}\nkeel_publish_events_total{{topic=\"b\"}} {b}\n"
            )
        };
        let (first, second) = (text(0, 0), text(100, 300));
        let per_series = rule(serde_json::json!({"kind": "anomaly",
            "metric": "keel_publish_events_total", "function": "rate", "window": "10s"}));
        let history = history_of(&[(0, &first), (10_000, &second)], &per_series);
        let values = evaluate(&per_series, &history);
        assert_eq!(values[&instance(&[("topic", "a")])], 10.0);
        assert_eq!(values[&instance(&[("topic", "b")])], 30.0);
        let summed = AlertRule {
            by: Some(Vec::new()),
            ..per_series.clone()
        };
        assert_eq!(evaluate(&summed, &history)[&instance(&[])], 40.0);
        let largest = AlertRule {
            aggregate: Aggregation::Max,
            ..summed
        };
        assert_eq!(evaluate(&largest, &history)[&instance(&[])], 30.0);
    }
}
