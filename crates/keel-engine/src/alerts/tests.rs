//! Evaluation with the time passed in: threshold rules over a gauge, anomaly rules over a
//! counter's rate across many simulated hours.

use super::*;

const INTERVAL_MS: i64 = 15_000;

fn rule(json: serde_json::Value) -> AlertRule {
    let rule: AlertRule = serde_json::from_value(json).expect("a rule");
    validate_alert_rule("r", &rule).expect("valid");
    rule
}

fn lag_text(lag: u64) -> String {
    format!(
        "keel_subscription_lag{{subscription=\"billing\"}} {lag}\nkeel_subscription_lag{{subscription=\"other\"}} 0\n"
    )
}

/// A standard normal draw (Box–Muller) from a seeded generator.
fn gaussian(rng: &mut fastrand::Rng) -> f64 {
    let (u, v) = (rng.f64().max(f64::MIN_POSITIVE), rng.f64());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

// Goal: a lag rule with `for` fires at the first evaluation after the condition held `for`
// (so within `for` plus one interval), only for the subscription over the threshold, and
// resolves at the first evaluation under it; each transition is one notice with the value
// and threshold.
#[test]
fn threshold_rule_fires_after_for_and_resolves() {
    let mut alerts = Alerts::default();
    let lag = rule(
        serde_json::json!({"kind": "threshold", "metric": "keel_subscription_lag",
        "op": ">", "value": 10000, "for": "1m"}),
    );
    assert_eq!(alerts.put("lag", lag, 0).0, RulePut::Created);
    let mut fired_at = None;
    let mut resolved_at = None;
    // Over the threshold from 60 s to 300 s.
    for step in 0..40 {
        let now = step * INTERVAL_MS;
        let value = if (60_000..300_000).contains(&now) {
            20_000
        } else {
            5
        };
        for notice in alerts.evaluate(&lag_text(value), now) {
            assert_eq!(
                notice.data["labels"]["subscription"], "billing",
                "{notice:?}"
            );
            assert_eq!(notice.data["threshold"], 10000.0);
            match notice.firing {
                true => fired_at = fired_at.or(Some(now)),
                false => resolved_at = resolved_at.or(Some(now)),
            }
        }
        if now == 90_000 {
            let status = alerts.status("lag", now).expect("status");
            assert_eq!(status.state, AlertState::Pending, "{status:?}");
        }
    }
    assert_eq!(fired_at, Some(120_000), "60 s in, plus `for`");
    assert_eq!(resolved_at, Some(300_000));
    let status = alerts.status("lag", 600_000).expect("status");
    assert_eq!(status.state, AlertState::Inactive);
}

// Goal: replacing or deleting a rule with firing instances resolves them (no alert is left
// firing at a receiver), and putting the same rule again changes nothing.
#[test]
fn replacing_or_deleting_a_rule_resolves_its_firing_instances() {
    let mut alerts = Alerts::default();
    let json = serde_json::json!({"kind": "threshold", "metric": "keel_subscription_lag",
        "op": ">", "value": 10});
    alerts.put("lag", rule(json.clone()), 0);
    assert_eq!(alerts.evaluate(&lag_text(50), 0).len(), 1);
    assert_eq!(
        alerts.put("lag", rule(json.clone()), 1).0,
        RulePut::Unchanged
    );
    let mut changed = json.clone();
    changed["value"] = serde_json::json!(20);
    let (put, notices) = alerts.put("lag", rule(changed), 2);
    assert_eq!(put, RulePut::Replaced);
    assert_eq!(notices.len(), 1);
    assert!(!notices[0].firing);
    assert_eq!(notices[0].data["reason"], "the rule was replaced");
    assert_eq!(alerts.evaluate(&lag_text(50), 3).len(), 1, "fires again");
    let deleted = alerts.remove("lag", 4).expect("was there");
    assert_eq!(deleted.len(), 1);
    assert_eq!(alerts.remove("lag", 5), None);
}

/// Runs a publish-rate anomaly rule over `hours` of a counter growing at `rate(t)` events per
/// second with Gaussian noise (relative `noise`), one evaluation every 15 s; returns each
/// notice's time and whether it fired.
fn simulate_rate(
    rule_json: serde_json::Value,
    seed: u64,
    hours: i64,
    noise: f64,
    rate: impl Fn(i64) -> f64,
) -> (Alerts, Vec<(i64, bool)>) {
    let mut alerts = Alerts::default();
    alerts.put("publish", rule(rule_json), 0);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut total = 0.0;
    let mut notices = Vec::new();
    for step in 0..hours * 3600 * 1000 / INTERVAL_MS {
        let now = step * INTERVAL_MS;
        let events = rate(now) * (INTERVAL_MS / 1000) as f64 * (1.0 + noise * gaussian(&mut rng));
        total += events.max(0.0).round();
        let text = format!("keel_publish_events_total{{topic=\"orders\"}} {total}\n");
        for notice in alerts.evaluate(&text, now) {
            notices.push((now, notice.firing));
        }
    }
    (alerts, notices)
}

fn publish_rate_rule() -> serde_json::Value {
    serde_json::json!({"kind": "anomaly", "metric": "keel_publish_events_total",
        "function": "rate", "window": "1m", "z": 4, "for": "1m", "warm_up": "30m",
        "half_life": "1h"})
}

// Goal: a steady publish rate with normal noise never fires the anomaly rule over a week of
// evaluations every 15 s (40,320 of them per seed, five seeds), with 5% and 20% noise.
// Method: a deterministic simulation; the seed is in the failure message.
#[test]
fn steady_noisy_rate_never_fires_over_a_simulated_week() {
    for seed in 1..=5 {
        for noise in [0.05, 0.2] {
            let (alerts, notices) =
                simulate_rate(publish_rate_rule(), seed, 7 * 24, noise, |_| 100.0);
            assert!(
                notices.is_empty(),
                "seed {seed}, noise {noise}: {notices:?}"
            );
            let status = alerts
                .status("publish", 7 * 24 * 3_600_000)
                .expect("status");
            let baseline = status.instances[0].baseline.clone().expect("a baseline");
            assert!(baseline.warmed_up);
            assert!((baseline.mean - 100.0).abs() < 10.0, "{baseline:?}");
        }
    }
}

// Goal: after a steady baseline, a collapse of the publish rate fires within two minutes
// (`for` is one),
// and recovery resolves it (hysteresis: once, not flapping); the baseline did not learn the
// collapse as normal meanwhile.
#[test]
fn collapsing_rate_fires_and_recovery_resolves() {
    let hour = 3_600_000;
    let (alerts, notices) = simulate_rate(publish_rate_rule(), 11, 4, 0.05, |now| {
        if (2 * hour..2 * hour + 20 * 60_000).contains(&now) {
            2.0
        } else {
            100.0
        }
    });
    assert_eq!(notices.len(), 2, "{notices:?}");
    let (fired, resolved) = (notices[0], notices[1]);
    assert!(fired.1 && !resolved.1);
    assert!(
        fired.0 >= 2 * hour + 60_000 && fired.0 <= 2 * hour + 120_000,
        "{fired:?}"
    );
    let recovered = 2 * hour + 20 * 60_000;
    assert!(
        resolved.0 >= recovered && resolved.0 <= recovered + 120_000,
        "{resolved:?}"
    );
    let status = alerts.status("publish", 4 * hour).expect("status");
    let baseline = status.instances[0].baseline.clone().expect("a baseline");
    assert!((baseline.mean - 100.0).abs() < 10.0, "{baseline:?}");
}

// Goal: no anomaly rule fires during its warm-up, however wild the value: a collapse from
// minute 20 to 25 (of a 30-minute warm-up) is learned, not flagged; the same collapse after
// the warm-up fires.
#[test]
fn anomaly_rule_is_silent_during_warm_up() {
    let minute = 60_000;
    let collapse_at = |start: i64| {
        move |now: i64| {
            if (start..start + 5 * minute).contains(&now) {
                0.0
            } else {
                100.0
            }
        }
    };
    let (alerts, during) = simulate_rate(publish_rate_rule(), 3, 1, 0.05, collapse_at(20 * minute));
    assert!(during.is_empty(), "{during:?}");
    let status = alerts.status("publish", 3_600_000).expect("status");
    assert!(
        status.instances[0]
            .baseline
            .as_ref()
            .is_some_and(|b| b.warmed_up)
    );
    let (_, after) = simulate_rate(publish_rate_rule(), 3, 1, 0.05, collapse_at(40 * minute));
    assert!(
        after
            .first()
            .is_some_and(|(at, firing)| *firing && *at >= 40 * minute),
        "{after:?}"
    );
}

// Goal: a `direction: "up"` rule ignores a collapse and flags a spike.
#[test]
fn direction_limits_what_fires() {
    let mut json = publish_rate_rule();
    json["direction"] = serde_json::json!("up");
    let hour = 3_600_000;
    let (_, collapse) = simulate_rate(json.clone(), 5, 3, 0.05, |now| {
        if now > 2 * hour { 1.0 } else { 100.0 }
    });
    assert!(collapse.is_empty(), "{collapse:?}");
    let (_, spike) = simulate_rate(
        json,
        5,
        3,
        0.05,
        |now| {
            if now > 2 * hour { 500.0 } else { 100.0 }
        },
    );
    assert!(
        spike.first().is_some_and(|(_, firing)| *firing),
        "{spike:?}"
    );
}

// Goal: with `seasonality: "daily"`, a batch that lifts the publish rate tenfold every day
// from 02:00 to 02:20 UTC is flagged on its first day only (before its hour has a day
// behind it), while the same rule without seasonality flags it every day; and the seasonal
// rule still flags a collapse at an hour that is normally busy. Method: five simulated days.
#[test]
fn daily_seasonality_learns_a_daily_batch() {
    let (hour, day) = (3_600_000, 24 * 3_600_000);
    let batch = |now: i64| {
        let at = now.rem_euclid(day);
        if (2 * hour..2 * hour + 20 * 60_000).contains(&at) {
            1000.0
        } else {
            100.0
        }
    };
    let days_fired = |notices: &[(i64, bool)]| -> Vec<i64> {
        let mut days: Vec<i64> = notices
            .iter()
            .filter(|(_, firing)| *firing)
            .map(|(at, _)| at / day)
            .collect();
        days.dedup();
        days
    };
    let (_, plain) = simulate_rate(publish_rate_rule(), 3, 5 * 24, 0.05, batch);
    assert_eq!(days_fired(&plain), [0, 1, 2, 3, 4], "{plain:?}");
    let mut seasonal = publish_rate_rule();
    seasonal["seasonality"] = serde_json::json!("daily");
    let (alerts, daily) = simulate_rate(seasonal.clone(), 3, 5 * 24, 0.05, batch);
    assert_eq!(days_fired(&daily), [0], "{daily:?}");
    let status = alerts.status("publish", 5 * day - 1).expect("status");
    let baseline = status.instances[0].baseline.clone().expect("a baseline");
    assert_eq!(baseline.hour_of_day, Some(23), "{baseline:?}");

    // Day 4 at 14:00 the rate collapses for 20 minutes: flagged within two minutes.
    let collapse_at = 4 * day + 14 * hour;
    let (_, collapse) = simulate_rate(seasonal, 3, 5 * 24, 0.05, |now| {
        if (collapse_at..collapse_at + 20 * 60_000).contains(&now) {
            5.0
        } else {
            batch(now)
        }
    });
    assert!(
        collapse
            .iter()
            .any(|&(at, firing)| firing && (collapse_at..collapse_at + 120_000).contains(&at)),
        "{collapse:?}"
    );
}

// Goal: a series flat at 0 that starts moving (an idle topic starting to take events) fires
// with a finite z-score, never an infinite or undefined one, and a lasting new level becomes
// normal and resolves (after about nine half-lives: 9.2 h with seed 5). Method: two idle
// hours, then a steady 20 events/s for a day.
#[test]
fn a_series_leaving_zero_fires_finitely_and_resolves() {
    let hour = 3_600_000;
    let mut rule = publish_rate_rule();
    rule["warm_up"] = serde_json::json!("10m");
    let (alerts, notices) =
        simulate_rate(
            rule,
            5,
            26,
            0.05,
            |now| {
                if now < 2 * hour { 0.0 } else { 20.0 }
            },
        );
    let status = alerts.status("publish", 26 * hour).expect("status");
    assert!(
        notices
            .first()
            .is_some_and(|&(at, firing)| firing && at < 2 * hour + 5 * 60_000),
        "{notices:?}"
    );
    let resolved = notices.iter().find(|(_, firing)| !firing);
    assert!(
        resolved.is_some(),
        "the new level never became normal: {notices:?}"
    );
    let z = status.instances[0].z.expect("a z-score");
    assert!(z.is_finite() && z.abs() < 4.0, "{z}");
}
