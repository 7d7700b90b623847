//! A subscription's specification: what `PUT /v1/subscriptions/{name}` takes and
//! `subscription.json` stores. The struct is keel-api's, held here with filters compiled and the
//! secret decoded; this module adds the checks against keel's limits and the retry backoff.

use std::time::Duration;

use crate::duration;
use crate::error::{EngineError, SubscriptionError};
use crate::filter::Filters;
use crate::limits::{
    ACK_TIMEOUT_MAX, IN_FLIGHT_MAX, RETRY_ATTEMPTS_MAX, RETRY_DELAY_MAX,
    SUBSCRIPTION_NAME_BYTES_MAX,
};
use crate::webhook::WebhookSecret;

pub use keel_api::subscriptions::{
    CircuitPolicy, NamedPosition, Ordering, RetryPolicy, StartPosition,
};

/// A subscription's specification as the engine holds it: filters compiled, the sink's secret
/// decoded.
pub type SubscriptionSpec = keel_api::subscriptions::SubscriptionSpec<Filters, WebhookSecret>;

/// An HTTP sink for push delivery, its secret decoded.
pub type SinkSpec = keel_api::subscriptions::SinkSpec<WebhookSecret>;

/// How a subscription's events reach their handler, the sink's secret decoded.
pub type Delivery = keel_api::subscriptions::Delivery<WebhookSecret>;

/// The wait after `failures` failed attempts of a delivery under `policy`, drawn with full
/// jitter from `random` in [0, 1), raised to `at_least` (a sink's `Retry-After`).
pub fn retry_delay(
    policy: &RetryPolicy,
    failures: u32,
    random: f64,
    at_least: Option<Duration>,
) -> Duration {
    let exponent = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
    let ceiling_s = (policy.initial.as_secs_f64() * policy.multiplier.powi(exponent))
        .min(policy.max.as_secs_f64());
    let jittered = Duration::from_secs_f64((ceiling_s * random.clamp(0.0, 1.0)).max(0.0));
    jittered
        .max(at_least.unwrap_or_default())
        .min(RETRY_DELAY_MAX)
}

/// Checks every value of a spec against its bound; the message names the field.
pub fn validate_subscription_spec(spec: &SubscriptionSpec) -> Result<(), EngineError> {
    let invalid = |detail: String| {
        Err(EngineError::Subscription(SubscriptionError::Invalid {
            detail,
        }))
    };
    if !(1..=IN_FLIGHT_MAX).contains(&spec.max_in_flight) {
        return invalid(format!(
            "max_in_flight must be between 1 and {IN_FLIGHT_MAX}"
        ));
    }
    if spec.ack_timeout < Duration::from_millis(100) || spec.ack_timeout > ACK_TIMEOUT_MAX {
        return invalid(format!(
            "ack_timeout must be between 100ms and {}",
            duration::format(ACK_TIMEOUT_MAX)
        ));
    }
    validate_retry(&spec.retry)?;
    validate_circuit(&spec.circuit_breaker)?;
    if spec.rate_limit == Some(0) {
        return invalid("rate_limit must be at least 1 event per second".to_owned());
    }
    if let StartPosition::Time { time } = &spec.start
        && crate::clock::parse_rfc3339_ms(time).is_none()
    {
        return invalid(format!(
            "start.time {time:?} is not an RFC 3339 timestamp with its offset, like 2026-11-25T10:00:00Z"
        ));
    }
    let push = spec.is_push();
    if !push && spec.circuit_breaker != CircuitPolicy::default() {
        return invalid(
            "circuit_breaker applies to push subscriptions only (give a sink, or leave it out)"
                .to_owned(),
        );
    }
    if !push && spec.rate_limit.is_some() {
        return invalid(
            "rate_limit applies to push subscriptions only: pull consumers set their pace by pulling"
                .to_owned(),
        );
    }
    if spec.stateful && spec.ordering != Ordering::Key {
        return invalid(
            "stateful requires \"ordering\": \"key\": a key's events must reach the handler one at a time, in order, for its state to follow them".to_owned(),
        );
    }
    if let Delivery::Push(sink) = &spec.delivery {
        validate_sink(sink).or_else(invalid)?;
    }
    Ok(())
}

/// Refuses a push sink whose URL's host is an address `policy` denies, naming the member; a
/// host name passes (its addresses are checked at each connection, as they may change).
pub fn validate_egress(
    spec: &SubscriptionSpec,
    policy: crate::egress::EgressPolicy,
) -> Result<(), EngineError> {
    match &spec.delivery {
        Delivery::Push(sink) => super::sink::check_egress(sink, policy)
            .map_err(|detail| EngineError::Subscription(SubscriptionError::Invalid { detail })),
        Delivery::Pull => Ok(()),
    }
}

/// Fewest endpoints in a group: one endpoint is a `url`.
pub const ENDPOINTS_MIN: usize = 2;
/// Most endpoints in a group.
pub const ENDPOINTS_MAX: usize = 16;
/// Largest endpoint weight.
pub const ENDPOINT_WEIGHT_MAX: u32 = 1000;
/// The shortest `sink.pause_after`: shorter would pause on a blip the breaker rides out.
pub const PAUSE_AFTER_MIN: Duration = Duration::from_secs(1);
/// The longest `sink.pause_after`.
pub const PAUSE_AFTER_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Checks a push sink: one `url`, or a group of `endpoints`, and the group's policies.
fn validate_sink(sink: &SinkSpec) -> Result<(), String> {
    use keel_api::subscriptions::Strategy;
    match (sink.url.is_empty(), sink.endpoints.is_empty()) {
        (false, false) => {
            return Err("sink: give either url or endpoints, not both".to_owned());
        }
        (true, true) => {
            return Err("sink: give a url, or endpoints (a group of URLs)".to_owned());
        }
        (false, true) => {
            crate::webhook::validate_sink_url(&sink.url)
                .map_err(|detail| format!("sink.url: {detail}"))?;
            if sink.strategy != Strategy::default() {
                return Err(
                    "sink.strategy applies to endpoint groups: give endpoints instead of url"
                        .to_owned(),
                );
            }
        }
        (true, false) => validate_endpoints(&sink.endpoints)?,
    }
    if let Some(check) = &sink.health_check {
        validate_health_check(check)?;
    }
    if let Some(previous) = &sink.previous_secret
        && crate::clock::parse_rfc3339_ms(&previous.until).is_none()
    {
        return Err(format!(
            "sink.previous_secret.until {:?} is not an RFC 3339 timestamp with its offset, like 2026-11-25T10:00:00Z",
            previous.until
        ));
    }
    let outlier = &sink.outlier_detection;
    if !(1..=1000).contains(&outlier.consecutive_failures) {
        return Err(
            "sink.outlier_detection.consecutive_failures must be between 1 and 1000".to_owned(),
        );
    }
    let ejection_max = Duration::from_secs(3600);
    if outlier.base_ejection_time.is_zero()
        || outlier.base_ejection_time > outlier.max_ejection_time
        || outlier.max_ejection_time > ejection_max
    {
        return Err(format!(
            "sink.outlier_detection: base_ejection_time must be above 0 and at most max_ejection_time, which is at most {}",
            duration::format(ejection_max)
        ));
    }
    if !(1..=100).contains(&outlier.max_ejected_percent) {
        return Err(
            "sink.outlier_detection.max_ejected_percent must be between 1 and 100".to_owned(),
        );
    }
    if let Some(after) = sink.pause_after
        && !(PAUSE_AFTER_MIN..=PAUSE_AFTER_MAX).contains(&after)
    {
        return Err(format!(
            "sink.pause_after must be between {} and {}",
            duration::format(PAUSE_AFTER_MIN),
            duration::format(PAUSE_AFTER_MAX)
        ));
    }
    // Checked after its values, so a bad one is named for what is wrong with it.
    if !sink.url.is_empty() && *outlier != Default::default() {
        return Err(
            "sink.outlier_detection applies to endpoint groups: a lone url is never ejected (its circuit breaker covers it)"
                .to_owned(),
        );
    }
    Ok(())
}

fn validate_endpoints(endpoints: &[keel_api::subscriptions::EndpointSpec]) -> Result<(), String> {
    if endpoints.len() > ENDPOINTS_MAX {
        return Err(format!("sink.endpoints: at most {ENDPOINTS_MAX} endpoints"));
    }
    let mut seen = std::collections::HashSet::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        let url = crate::webhook::validate_sink_url(&endpoint.url)
            .map_err(|detail| format!("sink.endpoints[{index}].url: {detail}"))?;
        if !seen.insert(url) {
            return Err(format!(
                "sink.endpoints[{index}].url {:?} is listed twice",
                endpoint.url
            ));
        }
        if !(1..=ENDPOINT_WEIGHT_MAX).contains(&endpoint.weight) {
            return Err(format!(
                "sink.endpoints[{index}].weight must be between 1 and {ENDPOINT_WEIGHT_MAX}"
            ));
        }
    }
    // After the endpoints' own checks, so a lone bad endpoint is named for what is wrong
    // with it.
    if endpoints.len() < ENDPOINTS_MIN {
        return Err(format!(
            "sink.endpoints: a group has at least {ENDPOINTS_MIN} endpoints, got {}; for one endpoint give sink.url",
            endpoints.len()
        ));
    }
    Ok(())
}

fn validate_health_check(check: &keel_api::subscriptions::HealthCheckPolicy) -> Result<(), String> {
    let (interval_min, interval_max) = (Duration::from_millis(100), Duration::from_secs(3600));
    if check.interval < interval_min || check.interval > interval_max {
        return Err(format!(
            "sink.health_check.interval must be between {} and {}",
            duration::format(interval_min),
            duration::format(interval_max)
        ));
    }
    if check.timeout.is_zero() || check.timeout > check.interval {
        return Err(
            "sink.health_check.timeout must be above 0 and at most the interval".to_owned(),
        );
    }
    if !(1..=100).contains(&check.healthy_threshold)
        || !(1..=100).contains(&check.unhealthy_threshold)
    {
        return Err(
            "sink.health_check.healthy_threshold and unhealthy_threshold must be between 1 and 100"
                .to_owned(),
        );
    }
    if !check.path.starts_with('/') {
        return Err(format!(
            "sink.health_check.path {:?} must start with '/': it is probed on each endpoint's host",
            check.path
        ));
    }
    Ok(())
}

fn validate_circuit(circuit: &CircuitPolicy) -> Result<(), EngineError> {
    use super::circuit::{COOL_DOWN_LIMIT, PROBES_MAX, WINDOW_BUCKETS, WINDOW_LIMIT};
    let window_min = Duration::from_millis(WINDOW_BUCKETS as u64);
    let detail = if !(1..=100).contains(&circuit.failure_rate_percent) {
        "circuit_breaker.failure_rate_percent must be between 1 and 100".to_owned()
    } else if circuit.window < window_min || circuit.window > WINDOW_LIMIT {
        format!(
            "circuit_breaker.window must be between {} and {}",
            duration::format(window_min),
            duration::format(WINDOW_LIMIT)
        )
    } else if circuit.min_calls == 0 {
        "circuit_breaker.min_calls must be at least 1".to_owned()
    } else if circuit.connect_failures == 0 {
        "circuit_breaker.connect_failures must be at least 1".to_owned()
    } else if !(1..=PROBES_MAX).contains(&circuit.probes) {
        format!("circuit_breaker.probes must be between 1 and {PROBES_MAX}")
    } else if circuit.cool_down.is_zero() || circuit.cool_down > circuit.cool_down_max {
        "circuit_breaker.cool_down must be above 0 and at most circuit_breaker.cool_down_max"
            .to_owned()
    } else if circuit.cool_down_max > COOL_DOWN_LIMIT {
        format!(
            "circuit_breaker.cool_down_max must be at most {}",
            duration::format(COOL_DOWN_LIMIT)
        )
    } else {
        return Ok(());
    };
    Err(EngineError::Subscription(SubscriptionError::Invalid {
        detail,
    }))
}

fn validate_retry(retry: &RetryPolicy) -> Result<(), EngineError> {
    let detail = if !(1..=RETRY_ATTEMPTS_MAX).contains(&retry.max_attempts) {
        format!("retry.max_attempts must be between 1 and {RETRY_ATTEMPTS_MAX}")
    } else if retry.initial.is_zero() || retry.initial > retry.max {
        "retry.initial must be above 0 and at most retry.max".to_owned()
    } else if retry.max > RETRY_DELAY_MAX {
        format!(
            "retry.max must be at most {}",
            duration::format(RETRY_DELAY_MAX)
        )
    } else if !(1.0..=10.0).contains(&retry.multiplier) {
        "retry.multiplier must be between 1 and 10".to_owned()
    } else {
        return Ok(());
    };
    Err(EngineError::Subscription(SubscriptionError::Invalid {
        detail,
    }))
}

/// Checks a subscription name: the same rules as a topic name.
pub fn validate_subscription_name(name: &str) -> Result<(), EngineError> {
    let valid = !name.is_empty()
        && name.len() <= SUBSCRIPTION_NAME_BYTES_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(EngineError::Subscription(SubscriptionError::Invalid {
            detail: format!(
                "invalid subscription name {name:?}: use 1 to {SUBSCRIPTION_NAME_BYTES_MAX} ASCII letters, digits, '-', '_' or '.', not starting with '.'"
            ),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the backoff ceiling grows by the multiplier up to max, full jitter scales it, and
    // a Retry-After raises the delay.
    #[test]
    fn backoff_grows_jitters_and_honours_retry_after() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
            multiplier: 2.0,
        };
        let ceilings: Vec<u64> = (1..=6)
            .map(|failures| retry_delay(&policy, failures, 0.999_999, None).as_secs())
            .collect();
        assert_eq!(ceilings, [0, 1, 3, 7, 7, 7]);
        assert_eq!(retry_delay(&policy, 3, 0.5, None), Duration::from_secs(2));
        assert_eq!(retry_delay(&policy, 1, 0.0, None), Duration::ZERO);
        assert_eq!(
            retry_delay(&policy, 1, 0.0, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
    }

    // Goal: every malformed sink (url and endpoints, endpoints' URLs and weights, the
    // group's policies) is refused with a message naming the member, and good ones pass.
    #[test]
    fn sinks_are_checked_member_by_member() {
        let sink = |json: serde_json::Value| -> SinkSpec { serde_json::from_value(json).unwrap() };
        let (a, b) = ("http://a.test/hook", "http://b.test/hook");
        let good = [
            serde_json::json!({"url": a}),
            serde_json::json!({"url": a, "health_check": {"path": "/up"}}),
            serde_json::json!({"url": a, "pause_after": "1h"}),
            serde_json::json!({"endpoints": [{"url": a}, {"url": b, "weight": 3}], "strategy": "weighted"}),
        ];
        for json in good {
            assert_eq!(validate_sink(&sink(json.clone())), Ok(()), "{json}");
        }
        let bad = [
            (
                serde_json::json!({"url": a, "endpoints": [{"url": b}]}),
                "not both",
            ),
            (serde_json::json!({}), "give a url"),
            (
                serde_json::json!({"url": a, "strategy": "failover"}),
                "sink.strategy",
            ),
            (
                serde_json::json!({"endpoints": [{"url": a}, {"url": a}]}),
                "listed twice",
            ),
            (
                serde_json::json!({"endpoints": [{"url": "ftp://x/"}]}),
                "sink.endpoints[0].url",
            ),
            (
                serde_json::json!({"endpoints": [{"url": a, "weight": 0}]}),
                "weight",
            ),
            (
                serde_json::json!({"url": a, "pause_after": "500ms"}),
                "sink.pause_after must be between 1s and 30d",
            ),
            (
                serde_json::json!({"endpoints": [{"url": a}]}),
                "at least 2 endpoints, got 1",
            ),
            (
                serde_json::json!({"url": a, "outlier_detection": {"consecutive_failures": 3}}),
                "sink.outlier_detection applies to endpoint groups",
            ),
            (
                serde_json::json!({"url": a, "health_check": {"path": "up"}}),
                "start with '/'",
            ),
            (
                serde_json::json!({"url": a, "health_check": {"interval": "1s", "timeout": "2s"}}),
                "timeout",
            ),
            (
                serde_json::json!({"url": a, "outlier_detection": {"max_ejected_percent": 0}}),
                "max_ejected_percent",
            ),
            (
                serde_json::json!({"url": a, "outlier_detection": {"base_ejection_time": "10m", "max_ejection_time": "1m"}}),
                "base_ejection_time",
            ),
        ];
        for (json, needle) in bad {
            let error = validate_sink(&sink(json.clone())).unwrap_err();
            assert!(error.contains(needle), "{json}: {error}");
        }
    }

    // Goal: defaults fill every field left out, and unknown fields are refused.
    #[test]
    fn spec_defaults_and_unknown_fields() {
        let spec: SubscriptionSpec = serde_json::from_str(r#"{"topic": "orders"}"#).expect("spec");
        assert_eq!(spec.max_in_flight, 100);
        assert_eq!(spec.ordering, Ordering::None);
        assert_eq!(spec.start, StartPosition::Default);
        assert!(validate_subscription_spec(&spec).is_ok());
        let error = serde_json::from_str::<SubscriptionSpec>(r#"{"topic": "o", "colour": 1}"#)
            .expect_err("unknown field");
        assert!(error.to_string().contains("colour"), "{error}");
        let spec: SubscriptionSpec =
            serde_json::from_str(r#"{"topic": "o", "start": {"time": "2026-01-01T00:00:00Z"}}"#)
                .expect("time start");
        assert!(matches!(spec.start, StartPosition::Time { .. }));
    }
}
