//! A subscription's specification: what `PUT /v1/subscriptions/{name}` takes and
//! `subscription.json` stores.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;
use crate::error::EngineError;
use crate::filter::Filter;
use crate::limits::{
    ACK_TIMEOUT_MAX, IN_FLIGHT_MAX, RETRY_ATTEMPTS_MAX, RETRY_DELAY_MAX,
    SUBSCRIPTION_NAME_BYTES_MAX,
};
use crate::webhook::WebhookSecret;

/// Where a new subscription starts reading: `"earliest"`, `"latest"` or
/// `{"time": RFC 3339}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case", untagged)]
pub enum StartPosition {
    /// `"earliest"` or `"latest"`.
    Named(NamedPosition),
    /// `{"time": "2026-11-25T10:00:00Z"}`: the first event appended at or after that time.
    Time {
        /// RFC 3339.
        time: String,
    },
    /// Not given: `latest`.
    #[default]
    #[serde(skip)]
    Default,
}

impl<'de> Deserialize<'de> for StartPosition {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bad = || {
            serde::de::Error::custom(
                r#"a position is "earliest", "latest" or {"time": "<RFC 3339 timestamp>"}"#,
            )
        };
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(name) => match name.as_str() {
                "earliest" => Ok(StartPosition::Named(NamedPosition::Earliest)),
                "latest" => Ok(StartPosition::Named(NamedPosition::Latest)),
                _ => Err(bad()),
            },
            serde_json::Value::Object(object) if object.len() == 1 => match object.get("time") {
                Some(serde_json::Value::String(time)) => {
                    Ok(StartPosition::Time { time: time.clone() })
                }
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

/// The named ends of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedPosition {
    /// The oldest retained event.
    Earliest,
    /// Only events published from now on.
    Latest,
}

/// Delivery order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Per key (`partitionkey`): one event of a key in flight at a time, in log order. Events
    /// without a key are not ordered.
    Key,
    /// No order: up to `max_in_flight` events at once.
    #[default]
    None,
}

/// Retries: exponential backoff with full jitter. Attempt n (n ≥ 1 failed attempts) waits a
/// random time in [0, min(max, initial × multiplier^(n-1))], but never less than a sink's
/// `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; after the last failure the event is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The backoff ceiling after the first failure.
    #[serde(default = "default_initial", with = "duration::serde_text")]
    pub initial: Duration,
    /// The largest backoff ceiling.
    #[serde(default = "default_max", with = "duration::serde_text")]
    pub max: Duration,
    /// Growth of the ceiling per failure.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
}

fn default_max_attempts() -> u32 {
    10
}
fn default_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_max() -> Duration {
    Duration::from_secs(300)
}
fn default_multiplier() -> f64 {
    2.0
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial: default_initial(),
            max: default_max(),
            multiplier: default_multiplier(),
        }
    }
}

impl RetryPolicy {
    /// The wait after `failures` failed attempts, drawn with full jitter from `random` in
    /// [0, 1), raised to `at_least` (a sink's `Retry-After`).
    pub fn delay(&self, failures: u32, random: f64, at_least: Option<Duration>) -> Duration {
        let exponent = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
        let ceiling_s = (self.initial.as_secs_f64() * self.multiplier.powi(exponent))
            .min(self.max.as_secs_f64());
        let jittered = Duration::from_secs_f64((ceiling_s * random.clamp(0.0, 1.0)).max(0.0));
        jittered
            .max(at_least.unwrap_or_default())
            .min(RETRY_DELAY_MAX)
    }
}

/// The circuit breaker of a push sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitPolicy {
    /// Failed attempts in a row that open the circuit.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// How long it stays open before a probe.
    #[serde(default = "default_cool_down", with = "duration::serde_text")]
    pub cool_down: Duration,
}

fn default_failures() -> u32 {
    5
}
fn default_cool_down() -> Duration {
    Duration::from_secs(10)
}

impl Default for CircuitPolicy {
    fn default() -> Self {
        Self {
            failures: default_failures(),
            cool_down: default_cool_down(),
        }
    }
}

/// An HTTP sink for push delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// `http://` or `https://` URL events are POSTed to.
    pub url: String,
    /// The Standard Webhooks signing secret; generated when not given.
    #[serde(default)]
    pub secret: Option<WebhookSecret>,
}

/// A subscription's specification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// The topic it reads.
    pub topic: String,
    /// All must match for an event to be delivered (CloudEvents Subscriptions API dialects).
    #[serde(default, deserialize_with = "crate::filter::deserialize_all")]
    pub filters: Vec<Filter>,
    /// Push to this sink; none = pull.
    #[serde(default)]
    pub sink: Option<SinkSpec>,
    /// Where a new subscription starts (default `latest`).
    #[serde(default, skip_serializing_if = "is_default_start")]
    pub start: StartPosition,
    /// Delivery order.
    #[serde(default)]
    pub ordering: Ordering,
    /// Most events delivered and not yet acknowledged at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// How long a delivery may stay unacknowledged (pull) or an HTTP attempt may take (push)
    /// before it counts as failed.
    #[serde(default = "default_ack_timeout", with = "duration::serde_text")]
    pub ack_timeout: Duration,
    /// Retries and backoff.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// The push sink's circuit breaker.
    #[serde(default)]
    pub circuit_breaker: CircuitPolicy,
    /// Most deliveries started per second; none = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
}

fn is_default_start(start: &StartPosition) -> bool {
    *start == StartPosition::Default
}
fn default_max_in_flight() -> u32 {
    100
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}

impl SubscriptionSpec {
    /// Checks every value against its bound; the message names the field.
    pub fn validate(&self) -> Result<(), EngineError> {
        let invalid = |detail: String| Err(EngineError::InvalidSubscription { detail });
        if !(1..=IN_FLIGHT_MAX).contains(&self.max_in_flight) {
            return invalid(format!(
                "max_in_flight must be between 1 and {IN_FLIGHT_MAX}"
            ));
        }
        if self.ack_timeout < Duration::from_millis(100) || self.ack_timeout > ACK_TIMEOUT_MAX {
            return invalid(format!(
                "ack_timeout must be between 100ms and {}",
                duration::format(ACK_TIMEOUT_MAX)
            ));
        }
        self.validate_retry()?;
        if self.circuit_breaker.failures == 0 {
            return invalid("circuit_breaker.failures must be at least 1".to_owned());
        }
        let cool_down_max = super::circuit::COOL_DOWN_MAX;
        if self.circuit_breaker.cool_down.is_zero()
            || self.circuit_breaker.cool_down > cool_down_max
        {
            return invalid(format!(
                "circuit_breaker.cool_down must be above 0 and at most {}",
                duration::format(cool_down_max)
            ));
        }
        if self.rate_limit == Some(0) {
            return invalid("rate_limit must be at least 1 event per second".to_owned());
        }
        if let StartPosition::Time { time } = &self.start
            && crate::clock::parse_rfc3339_ms(time).is_none()
        {
            return invalid(format!(
                "start.time {time:?} is not an RFC 3339 timestamp with its offset, like 2026-11-25T10:00:00Z"
            ));
        }
        if self.sink.is_none() && self.circuit_breaker != CircuitPolicy::default() {
            return invalid(
                "circuit_breaker applies to push subscriptions only (give a sink, or leave it out)"
                    .to_owned(),
            );
        }
        if self.sink.is_none() && self.rate_limit.is_some() {
            return invalid(
                "rate_limit applies to push subscriptions only: pull consumers set their pace by pulling"
                    .to_owned(),
            );
        }
        if let Some(sink) = &self.sink {
            crate::webhook::validate_sink_url(&sink.url)
                .map(drop)
                .or_else(|detail| invalid(format!("sink.url: {detail}")))?;
        }
        Ok(())
    }

    fn validate_retry(&self) -> Result<(), EngineError> {
        let retry = &self.retry;
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
        Err(EngineError::InvalidSubscription { detail })
    }

    /// Whether events are pushed (else pulled).
    pub fn is_push(&self) -> bool {
        self.sink.is_some()
    }
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
        Err(EngineError::InvalidSubscription {
            detail: format!(
                "invalid subscription name {name:?}: use 1 to {SUBSCRIPTION_NAME_BYTES_MAX} ASCII letters, digits, '-', '_' or '.', not starting with '.'"
            ),
        })
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
            .map(|failures| policy.delay(failures, 0.999_999, None).as_secs())
            .collect();
        assert_eq!(ceilings, [0, 1, 3, 7, 7, 7]);
        assert_eq!(policy.delay(3, 0.5, None), Duration::from_secs(2));
        assert_eq!(policy.delay(1, 0.0, None), Duration::ZERO);
        assert_eq!(
            policy.delay(1, 0.0, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
    }

    // Goal: defaults fill every field left out, and unknown fields are refused.
    #[test]
    fn spec_defaults_and_unknown_fields() {
        let spec: SubscriptionSpec = serde_json::from_str(r#"{"topic": "orders"}"#).expect("spec");
        assert_eq!(spec.max_in_flight, 100);
        assert_eq!(spec.ordering, Ordering::None);
        assert_eq!(spec.start, StartPosition::Default);
        assert!(spec.validate().is_ok());
        let error = serde_json::from_str::<SubscriptionSpec>(r#"{"topic": "o", "colour": 1}"#)
            .expect_err("unknown field");
        assert!(error.to_string().contains("colour"), "{error}");
        let spec: SubscriptionSpec =
            serde_json::from_str(r#"{"topic": "o", "start": {"time": "2026-01-01T00:00:00Z"}}"#)
                .expect("time start");
        assert!(matches!(spec.start, StartPosition::Time { .. }));
    }
}
