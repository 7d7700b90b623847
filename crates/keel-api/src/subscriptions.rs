//! Subscriptions: the spec `PUT /v1/subscriptions/{name}` takes (and `subscription.json` and
//! the server's config file store), what a client sends to create one, what describe, list
//! and create answer, and the seek request.
//!
//! The spec is generic over how it holds its filters and the sink's secret. A client uses the
//! defaults: filters as their JSON (the dialects of the CloudEvents Subscriptions API, plus
//! `cel`), the secret as its `whsec_` text. keel's engine uses the same struct with filters
//! compiled and the secret decoded, so a spec's members, defaults and spelling exist once.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::duration;

/// Filters as a client holds them: the JSON of each filter object, in order.
pub type FilterJson = Vec<Value>;

/// Where a new subscription starts reading, or where a seek moves it: `"earliest"`,
/// `"latest"` or `{"time": RFC 3339}`.
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
        match Value::deserialize(deserializer)? {
            Value::String(name) => match name.as_str() {
                "earliest" => Ok(StartPosition::Named(NamedPosition::Earliest)),
                "latest" => Ok(StartPosition::Named(NamedPosition::Latest)),
                _ => Err(bad()),
            },
            Value::Object(object) if object.len() == 1 => match object.get("time") {
                Some(Value::String(time)) => Ok(StartPosition::Time { time: time.clone() }),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

/// `"earliest"`, `"latest"`, or an object with only `time` (a string), as the hand-written
/// `Deserialize` above reads it.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for StartPosition {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Type};
        let time = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "time",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("RFC 3339.")),
            )
            .required("time")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        OneOfBuilder::new()
            .item(<NamedPosition as utoipa::PartialSchema>::schema())
            .item(time)
            .description(Some(
                r#"Where to start or seek to: "earliest", "latest" or {"time": "<RFC 3339>"}: the first event appended at or after that time."#,
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for StartPosition {}

/// The named ends of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NamedPosition {
    /// The oldest retained event.
    Earliest,
    /// Only events published from now on.
    Latest,
}

/// Delivery order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; after the last failure the event is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The backoff ceiling after the first failure.
    #[serde(default = "default_initial", with = "duration::serde_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub initial: Duration,
    /// The largest backoff ceiling.
    #[serde(default = "default_max", with = "duration::serde_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
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

/// The circuit breaker of a push sink: it tells a flaky sink (fails some requests) from one
/// that is down (fails them all, or cannot be reached), and stops sending only to the latter
/// (`docs/delivery.md`, "Circuit breaker").
///
/// Closed, it opens when the answers of the last `window` hold at least `min_calls` calls and
/// `failure_rate_percent` % or more of them failed, or at once after `connect_failures`
/// attempts in a row that got no answer because the connection failed. Open, it sends nothing
/// for `cool_down`; then up to `probes` requests go, and their failure rate closes it (under
/// the threshold) or opens it again for twice as long, up to `cool_down_max`.
///
/// Reads the old form `{"failures": N, "cool_down": "10s"}` too: `failures` is the old name of
/// `min_calls` (N calls in the window before it may open), and an old member holding the old
/// default (5 failures, 10 s) reads as not chosen, so as today's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(try_from = "CircuitPolicyJson")]
// Read through `CircuitPolicyJson`, every member may be left out: hence `required = false`.
pub struct CircuitPolicy {
    /// Whether the breaker runs. Off, every failed attempt spends one of the event's attempts,
    /// also while the sink is down.
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub enabled: bool,
    /// The share of failed calls in the window, in percent, at which the circuit opens.
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub failure_rate_percent: u32,
    /// How far back the failure rate looks.
    #[serde(with = "duration::serde_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText, required = false))]
    pub window: Duration,
    /// Calls the window must hold before its failure rate can open the circuit.
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub min_calls: u32,
    /// Attempts in a row whose connection failed (refused, connect timeout, dropped before an
    /// answer) that open the circuit at once, whatever the window holds.
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub connect_failures: u32,
    /// Requests let through when half-open; their failure rate decides.
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub probes: u32,
    /// How long it stays open before the first probes.
    #[serde(with = "duration::serde_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText, required = false))]
    pub cool_down: Duration,
    /// The longest it stays open: each failed round of probes doubles the wait up to this.
    #[serde(with = "duration::serde_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText, required = false))]
    pub cool_down_max: Duration,
}

impl Default for CircuitPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_rate_percent: 50,
            window: Duration::from_secs(10),
            min_calls: 100,
            connect_failures: 3,
            probes: 10,
            cool_down: Duration::from_secs(5),
            cool_down_max: Duration::from_secs(300),
        }
    }
}

/// The old breaker's defaults, which every spec stored before the failure-rate breaker holds
/// unless it chose its own: `{"failures": 5, "cool_down": "10s"}`.
const OLD_DEFAULT_FAILURES: u32 = 5;
const OLD_DEFAULT_COOL_DOWN: Duration = Duration::from_secs(10);

/// [`CircuitPolicy`] as JSON may give it: any member left out takes its default, and the old
/// member `failures` names `min_calls`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CircuitPolicyJson {
    enabled: Option<bool>,
    failure_rate_percent: Option<u32>,
    #[serde(default, with = "duration::serde_text_option")]
    window: Option<Duration>,
    min_calls: Option<u32>,
    /// The old breaker's "failed attempts in a row that open the circuit".
    failures: Option<u32>,
    connect_failures: Option<u32>,
    probes: Option<u32>,
    #[serde(default, with = "duration::serde_text_option")]
    cool_down: Option<Duration>,
    #[serde(default, with = "duration::serde_text_option")]
    cool_down_max: Option<Duration>,
}

impl TryFrom<CircuitPolicyJson> for CircuitPolicy {
    type Error = String;

    fn try_from(json: CircuitPolicyJson) -> Result<Self, String> {
        if json.failures.is_some() && json.min_calls.is_some() {
            return Err(
                "circuit_breaker.failures is the old name of circuit_breaker.min_calls: \
                        give only min_calls"
                    .to_owned(),
            );
        }
        let default = CircuitPolicy::default();
        // An old spec always carries both old members, so their old defaults say nothing was
        // chosen: they read as today's defaults (a declared subscription in the config file,
        // or a repeated create, then still matches the stored spec).
        let old_form = json.failures.is_some();
        let chosen = |given: Option<Duration>, old_default: Duration| {
            given.filter(|value| !(old_form && *value == old_default))
        };
        let failures = json
            .failures
            .filter(|failures| *failures != OLD_DEFAULT_FAILURES);
        let cool_down = chosen(json.cool_down, OLD_DEFAULT_COOL_DOWN);
        Ok(CircuitPolicy {
            enabled: json.enabled.unwrap_or(default.enabled),
            failure_rate_percent: json
                .failure_rate_percent
                .unwrap_or(default.failure_rate_percent),
            window: json.window.unwrap_or(default.window),
            min_calls: json.min_calls.or(failures).unwrap_or(default.min_calls),
            connect_failures: json.connect_failures.unwrap_or(default.connect_failures),
            probes: json.probes.unwrap_or(default.probes),
            cool_down: cool_down.unwrap_or(default.cool_down),
            cool_down_max: json.cool_down_max.unwrap_or(default.cool_down_max),
        })
    }
}

/// An HTTP sink for push delivery: one URL, or a group of endpoints that share the events by
/// a strategy, with health checks and outlier ejection (`docs/delivery.md`, endpoint groups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, bound(deserialize = "Secret: Deserialize<'de>"))]
#[cfg_attr(feature = "openapi", schema(bound = ""))]
pub struct SinkSpec<Secret = String> {
    /// `http://` or `https://` URL events are POSTed to; empty when `endpoints` are given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// An endpoint group instead of one `url`: at least two, each with its URL and weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointSpec>,
    /// How a group's endpoints share the events (default `round_robin`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub strategy: Strategy,
    /// Active health checks of a group's endpoints; none when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckPolicy>,
    /// Passive outlier ejection of a group's failing endpoints.
    #[serde(default, skip_serializing_if = "is_default")]
    pub outlier_detection: OutlierPolicy,
    /// Pause the subscription once the sink has been failing this long (its circuit open or
    /// no endpoint available); off when left out. Keel's pause is announced on
    /// `_keel.alerts`; it ends by `resume`, or by itself once a health check passes.
    #[serde(
        default,
        with = "duration::serde_text_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub pause_after: Option<Duration>,
    /// The Standard Webhooks signing secret (`whsec_…`); generated when not given. Describe
    /// never shows it: it is `null` there. A group's endpoints share it.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub secret: Option<Secret>,
    /// Run the CloudEvents webhook validation handshake (an `OPTIONS` request with
    /// `WebHook-Request-Origin`) with every endpoint before delivering: no event is sent
    /// until each answers 2xx with `WebHook-Allowed-Origin` naming keel (or `*`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handshake: bool,
    /// The secret before the last rotation, which still signs each request beside `secret`
    /// until its time ends (`POST /v1/subscriptions/{name}/secret/rotate`). Describe shows
    /// its end, never the secret; it is left out once its time has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = PreviousSecret))]
    pub previous_secret: Option<PreviousSecret<Secret>>,
}

/// A rotated-out signing secret in its overlap period: requests carry its signature too, so
/// that a receiver still holding it verifies them until it switches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, bound(deserialize = "Secret: Deserialize<'de>"))]
#[cfg_attr(feature = "openapi", schema(bound = ""))]
pub struct PreviousSecret<Secret = String> {
    /// The previous secret (`whsec_…`); `null` in describe.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub secret: Option<Secret>,
    /// When it stops signing (RFC 3339).
    pub until: String,
}

/// The body of `POST /v1/subscriptions/{name}/secret/rotate`: how long the current secret
/// keeps signing beside the new one, and the new secret (generated when left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RotateSecretRequest {
    /// The overlap, as text (`"24h"`); left out or `"0s"`, the current secret stops at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub overlap: Option<String>,
    /// The new secret (`whsec_…`); left out, keel generates one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The answer to a secret rotation: the new secret, shown this once, and until when the
/// previous one still signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RotatedSecret {
    /// The new signing secret (`whsec_…`).
    pub secret: String,
    /// When the previous secret stops signing (RFC 3339); none without an overlap.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub previous_secret_until: Option<String>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// One endpoint of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// `http://` or `https://` URL events are POSTed to.
    pub url: String,
    /// Its share with the `weighted` strategy (1 to 1000; default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// How a group's endpoints share the events. Only available endpoints (healthy, not
/// ejected) are chosen; with none available, events wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The first available endpoint in the listed order takes every event.
    Failover,
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// In proportion to the endpoints' weights (smooth weighted round robin).
    Weighted,
    /// A key's events go to one endpoint while it is available (rendezvous hashing: when an
    /// endpoint leaves, only its keys move). Events without a key go round robin.
    KeyHash,
}

/// Active health checks: a `GET` of each endpoint's `path` every `interval`. An endpoint is
/// unhealthy after `unhealthy_threshold` failed checks in a row (no 2xx within `timeout`) and
/// healthy again after `healthy_threshold` passed ones, like HAProxy's `fall` and `rise`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HealthCheckPolicy {
    /// The path (and query) probed on each endpoint's scheme, host and port (default
    /// `/healthz`).
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Time between checks of one endpoint (default 1s).
    #[serde(default = "default_health_interval", with = "duration::serde_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub interval: Duration,
    /// Longest wait for a check's answer (default 500ms).
    #[serde(default = "default_health_timeout", with = "duration::serde_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub timeout: Duration,
    /// Passed checks in a row that make an unhealthy endpoint healthy (default 2).
    #[serde(default = "default_rise")]
    pub healthy_threshold: u32,
    /// Failed checks in a row that make a healthy endpoint unhealthy (default 2).
    #[serde(default = "default_fall")]
    pub unhealthy_threshold: u32,
}

fn default_health_path() -> String {
    "/healthz".to_owned()
}
fn default_health_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_health_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    2
}

impl Default for HealthCheckPolicy {
    fn default() -> Self {
        Self {
            path: default_health_path(),
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            healthy_threshold: default_rise(),
            unhealthy_threshold: default_fall(),
        }
    }
}

/// Passive outlier ejection, like Envoy's: an endpoint whose attempts fail
/// `consecutive_failures` times in a row (a connection error, a timeout or a 5xx) is ejected
/// for `base_ejection_time` × the number of times it was ejected (at most
/// `max_ejection_time`), then admitted again (once its health check passes, with one). At most
/// `max_ejected_percent` of the endpoints are ejected at once (always at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OutlierPolicy {
    /// Failed attempts in a row that eject an endpoint (default 5).
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// The first ejection's length (default 10s).
    #[serde(default = "default_base_ejection", with = "duration::serde_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub base_ejection_time: Duration,
    /// The longest ejection (default 5m).
    #[serde(default = "default_max_ejection", with = "duration::serde_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub max_ejection_time: Duration,
    /// The largest share of endpoints ejected at once, in percent (default 50).
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: u32,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(10)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejected_percent() -> u32 {
    50
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            base_ejection_time: default_base_ejection(),
            max_ejection_time: default_max_ejection(),
            max_ejected_percent: default_max_ejected_percent(),
        }
    }
}

/// A subscription's specification. Every member but `topic` may be left out of the JSON: it
/// then takes its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[serde(bound(deserialize = "Filters: Deserialize<'de> + Default, Secret: Deserialize<'de>"))]
#[cfg_attr(feature = "openapi", schema(bound = ""))]
pub struct SubscriptionSpec<Filters = FilterJson, Secret = String> {
    /// The topic it reads.
    pub topic: String,
    /// All must match for an event to be delivered (CloudEvents Subscriptions API dialects).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub filters: Filters,
    /// How events reach their handler. In JSON it is the `sink` member: a sink pushes to
    /// that webhook, `null` or none pulls.
    #[serde(rename = "sink", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Delivery))]
    pub delivery: Delivery<Secret>,
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
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
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
    /// Keeps one JSON state value per `partitionkey`, committed with each ack (requires
    /// `"ordering": "key"`; see `docs/processing.md`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stateful: bool,
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

impl<Filters, Secret> SubscriptionSpec<Filters, Secret> {
    /// Whether events are pushed (else pulled).
    pub fn is_push(&self) -> bool {
        self.mode() == DeliveryMode::Push
    }

    /// How events are delivered.
    pub fn mode(&self) -> DeliveryMode {
        match self.delivery {
            Delivery::Pull => DeliveryMode::Pull,
            Delivery::Push(_) => DeliveryMode::Push,
        }
    }
}

/// How a subscription's events reach their handler: one value per delivery mode, each with
/// what that mode needs. (In JSON, the spec's `sink` member: see [`SubscriptionSpec`].)
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Delivery<Secret = String> {
    /// Consumers pull events and acknowledge them.
    #[default]
    Pull,
    /// keel POSTs each event to this sink.
    Push(SinkSpec<Secret>),
}

impl<Secret: Serialize> Serialize for Delivery<Secret> {
    /// As the `sink` member: the sink, or `null` for pull.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Delivery::Pull => serializer.serialize_none(),
            Delivery::Push(sink) => serializer.serialize_some(sink),
        }
    }
}

impl<'de, Secret: Deserialize<'de>> Deserialize<'de> for Delivery<Secret> {
    /// From the `sink` member: a sink pushes, `null` pulls.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let sink = Option::<SinkSpec<Secret>>::deserialize(deserializer)?;
        Ok(sink.map_or(Delivery::Pull, Delivery::Push))
    }
}

/// The `sink` member: `null` pulls, a [`SinkSpec`] pushes (the serde impls above).
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Delivery {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Ref, Type};
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .item(Ref::from_schema_name(<SinkSpec as utoipa::ToSchema>::name()))
            .description(Some(
                "How events reach their handler: a sink pushes to that webhook, `null` pulls.",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Delivery {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::{PartialSchema, ToSchema};
        schemas.push((
            <SinkSpec as ToSchema>::name().into_owned(),
            <SinkSpec as PartialSchema>::schema(),
        ));
        <SinkSpec as ToSchema>::schemas(schemas);
    }
}

/// The body of `PUT /v1/subscriptions/{name}` as a client writes it: only the settings it
/// sets, so the server's defaults apply to the rest. Durations are text (`"30s"`) passed on as
/// given: the server reads the body as a [`SubscriptionSpec`] and names a bad value in its
/// error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSettings {
    /// The topic to read.
    pub topic: String,
    /// Filter objects, all of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub filters: FilterJson,
    /// Push to this sink; none = pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkSettings>,
    /// Where a new subscription starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartPosition>,
    /// Delivery order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<Ordering>,
    /// Most events delivered and not yet acknowledged at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// How long a delivery may stay unacknowledged, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub ack_timeout: Option<String>,
    /// Retries and backoff; left out when it sets nothing.
    #[serde(default, skip_serializing_if = "crate::is_default")]
    pub retry: RetrySettings,
    /// The push sink's circuit breaker; left out when it sets nothing.
    #[serde(default, skip_serializing_if = "crate::is_default")]
    pub circuit_breaker: CircuitSettings,
    /// Most deliveries started per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// Keep one JSON state value per `partitionkey`, committed with each ack (requires
    /// `ordering: key`); left out when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stateful: bool,
}

/// The push sink a client sets in [`SubscriptionSettings`]: one `url`, or a group of
/// `endpoints` with the group's settings; each is [`SinkSpec`]'s member of the same name,
/// durations as text, left out when not set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SinkSettings {
    /// `http://` or `https://` URL events are POSTed to; empty for a group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// An endpoint group instead of one `url`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointSpec>,
    /// How a group's endpoints share the events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Active health checks; none = no checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSettings>,
    /// Passive outlier ejection of a group's endpoints; left out when it sets nothing.
    #[serde(default, skip_serializing_if = "crate::is_default")]
    pub outlier_detection: OutlierSettings,
    /// Pause the subscription once the sink has been failing this long, as text (`"1h"`);
    /// left out, never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub pause_after: Option<String>,
    /// The signing secret (`whsec_…`); left out, the server generates one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Run the CloudEvents webhook validation handshake before delivering; left out when
    /// false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handshake: bool,
}

/// The health check settings a client sets in [`SinkSettings`]; each is
/// [`HealthCheckPolicy`]'s member of the same name, durations as text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckSettings {
    /// The path probed on each endpoint's host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between checks of one endpoint, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub interval: Option<String>,
    /// Longest wait for a check's answer, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub timeout: Option<String>,
    /// Passed checks in a row that make an endpoint healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Failed checks in a row that make an endpoint unhealthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
}

/// The outlier ejection settings a client sets in [`SinkSettings`]; each is
/// [`OutlierPolicy`]'s member of the same name, durations as text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct OutlierSettings {
    /// Failed attempts in a row that eject an endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// The first ejection's length, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub base_ejection_time: Option<String>,
    /// The longest ejection, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub max_ejection_time: Option<String>,
    /// The largest share of endpoints ejected at once, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejected_percent: Option<u32>,
}

/// The retry settings a client sets in [`SubscriptionSettings`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts in all, the first included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The backoff ceiling after the first failure, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub initial: Option<String>,
    /// The largest backoff ceiling, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub max: Option<String>,
    /// Growth of the ceiling per failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
}

/// The circuit breaker settings a client sets in [`SubscriptionSettings`]; each is
/// [`CircuitPolicy`]'s member of the same name, durations as text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct CircuitSettings {
    /// Whether the breaker runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The failure rate, in percent, at which the circuit opens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_rate_percent: Option<u32>,
    /// How far back the failure rate looks, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub window: Option<String>,
    /// Calls in the window before its failure rate counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_calls: Option<u32>,
    /// Failed connections in a row that open the circuit at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_failures: Option<u32>,
    /// Requests let through when half-open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    /// How long it stays open before probing, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub cool_down: Option<String>,
    /// The longest it stays open, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub cool_down_max: Option<String>,
}

/// How a subscription delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// keel POSTs each event to the sink.
    Push,
    /// Consumers pull events and acknowledge them.
    Pull,
}

impl std::fmt::Display for DeliveryMode {
    /// As the API spells it: `push` or `pull`.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            DeliveryMode::Push => "push",
            DeliveryMode::Pull => "pull",
        })
    }
}

/// Where a push sink's circuit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// No requests until the cool-down ends.
    Open,
    /// One probe request is allowed.
    HalfOpen,
}

impl CircuitState {
    /// The value `GET /metrics` reports for it in `keel_subscription_circuit_state`: 0 closed,
    /// 1 open, 2 half-open.
    pub fn gauge_value(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

/// A subscription as describe (`GET /v1/subscriptions/{name}`), pause, resume and seek answer
/// it: its spec (never the secret), state, counters and per-partition progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(bound(deserialize = "Filters: Deserialize<'de> + Default, Secret: Deserialize<'de>"))]
#[cfg_attr(feature = "openapi", schema(bound = ""))]
pub struct SubscriptionInfo<Filters = FilterJson, Secret = String> {
    /// Its name.
    pub name: String,
    /// Its spec, its members inline; the sink's secret is always none here.
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(value_type = SpecMembers, inline))]
    pub spec: SubscriptionSpec<Filters, Secret>,
    /// How it delivers.
    pub mode: DeliveryMode,
    /// Why it is paused, when it is.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub paused: Option<String>,
    /// Matching or not, events published and not yet done.
    pub lag: u64,
    /// Events delivered and not yet acknowledged.
    pub in_flight: usize,
    /// Events read and held in memory, not yet done.
    pub pending: usize,
    /// Events acknowledged since the server started.
    pub delivered: u64,
    /// Failed attempts followed by a retry since the server started.
    pub retried: u64,
    /// Events dead-lettered since the server started.
    pub dead_lettered: u64,
    /// Events retention deleted before they were delivered, since the server started.
    pub skipped_by_retention: u64,
    /// Entries in the dead-letter queue.
    pub dlq_depth: usize,
    /// The push sink's circuit; none for pull.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub circuit: Option<CircuitState>,
    /// The push sink's outages as its circuit breaker saw them; none for pull. (Absent from
    /// the answers of a keel from before it.)
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required))]
    pub sink_health: Option<SinkHealth>,
    /// A push sink's endpoints (one for a sink with a `url`): whether each is available,
    /// healthy, ejected; empty for pull.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointInfo>,
    /// A sink with `handshake`: where its validation handshake stands (`passed at …`, or why
    /// delivery waits); none without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub handshake: Option<String>,
    /// The last failure.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub last_error: Option<LastError>,
    /// Why it refuses service, when it does (its storage failed).
    #[cfg_attr(feature = "openapi", schema(required))]
    pub unavailable: Option<String>,
    /// Progress per partition.
    pub partitions: Vec<PartitionProgress>,
}

/// One endpoint of a push sink, as describe shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndpointInfo {
    /// Its URL (without user info).
    pub url: String,
    /// Whether it takes deliveries: healthy and not ejected.
    pub available: bool,
    /// Its active health checks pass (true without health checks).
    pub healthy: bool,
    /// While ejected after failed attempts: until when (RFC 3339).
    #[cfg_attr(feature = "openapi", schema(required))]
    pub ejected_until: Option<String>,
    /// Times it was ejected (forgotten after `max_ejection_time` without one).
    pub ejections: u32,
    /// Its failed attempts in a row.
    pub failures_in_row: u32,
    /// Its recovery figures: an outage runs from its ejection or unhealthy verdict to its
    /// return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub health: Option<SinkHealth>,
}

/// A push sink's (or one endpoint's) outages since the server started. A sink's outage runs
/// while its circuit is open or half-open or none of its endpoints is available; an
/// endpoint's while it is ejected or unhealthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SinkHealth {
    /// When counting started: the subscription's start (RFC 3339).
    pub since: String,
    /// Outages so far.
    pub outages: u64,
    /// Time in outages, the running one included.
    #[serde(with = "duration::serde_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub down_time: Duration,
    /// Mean time between failures: the time up divided by the outages; none before the first.
    #[serde(with = "duration::serde_text_option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<duration::DurationText>, required))]
    pub mtbf: Option<Duration>,
    /// Mean time to recover: the time down divided by the outages; none before the first.
    #[serde(with = "duration::serde_text_option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<duration::DurationText>, required))]
    pub mttr: Option<Duration>,
    /// MTBF / (MTBF + MTTR), the share of time up: 1 before any outage.
    pub availability: f64,
    /// The last outage, when there was one.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub last_outage: Option<Outage>,
}

/// One outage of a push sink or endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Outage {
    /// When it was detected: the circuit opened, the endpoint was ejected… (RFC 3339).
    pub opened_at: String,
    /// Why, e.g. `3 connections in a row failed`.
    pub reason: String,
    /// From the first failure after the last success to the detection.
    #[serde(with = "duration::serde_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub time_to_detect: Duration,
    /// When it ended; none while the outage lasts.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub closed_at: Option<String>,
    /// From the detection to the end; none while the outage lasts.
    #[serde(with = "duration::serde_text_option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<duration::DurationText>, required))]
    pub time_to_recover: Option<Duration>,
}

/// The last failure of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LastError {
    /// When (RFC 3339).
    pub at: String,
    /// What.
    pub error: String,
}

/// A subscription's progress on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartitionProgress {
    /// The partition.
    pub partition: u32,
    /// Every event below is done.
    pub committed: u64,
    /// The next offset to read.
    pub cursor: u64,
    /// The partition's next offset.
    pub next_offset: u64,
}

/// [`SubscriptionSpec`]'s schema as [`SubscriptionInfo`] inlines it among its own members:
/// open to them, where a spec alone refuses unknown members.
#[cfg(feature = "openapi")]
struct SpecMembers;

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for SpecMembers {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::{RefOr, schema::Schema};
        let mut schema = <SubscriptionSpec as utoipa::PartialSchema>::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.additional_properties = None;
        }
        schema
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for SpecMembers {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <SubscriptionSpec as utoipa::ToSchema>::schemas(schemas);
    }
}

/// The answer to `GET /v1/subscriptions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(bound(deserialize = "Filters: Deserialize<'de> + Default, Secret: Deserialize<'de>"))]
#[cfg_attr(feature = "openapi", schema(bound = ""))]
pub struct SubscriptionList<Filters = FilterJson, Secret = String> {
    /// Every subscription, by name.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<SubscriptionInfo>))]
    pub subscriptions: Vec<SubscriptionInfo<Filters, Secret>>,
}

/// The answer to a create: the subscription, and the signing secret keel generated for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(bound(deserialize = "Filters: Deserialize<'de> + Default, Secret: Deserialize<'de>"))]
#[cfg_attr(feature = "openapi", schema(bound = ""))]
pub struct CreatedSubscription<Filters = FilterJson, Secret = String> {
    /// The subscription, its members inline.
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(value_type = SubscriptionInfo))]
    pub info: SubscriptionInfo<Filters, Secret>,
    /// The sink's signing secret: only when keel generated it, in this answer only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub secret: Option<String>,
    /// The members an update changed in place, as the spec spells them (`sink.url`,
    /// `retry`); left out on a create and when the spec was unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
}

/// The body of `POST /v1/subscriptions/{name}/seek`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SeekRequest {
    /// Where to read from next.
    pub to: StartPosition,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: what a client sends is read by the server as the spec it means: settings left out
    // take their defaults, given ones their value. Method: send empty and full settings, read
    // each back as the server does.
    #[test]
    fn settings_read_as_the_spec_they_give() {
        let read = |settings: &SubscriptionSettings| {
            let body = serde_json::to_string(settings).expect("settings serialise");
            serde_json::from_str::<SubscriptionSpec>(&body).expect("the server reads them")
        };
        let minimal = SubscriptionSettings {
            topic: "orders".to_owned(),
            ..SubscriptionSettings::default()
        };
        let body = serde_json::to_string(&minimal).expect("serialise");
        assert_eq!(body, r#"{"topic":"orders"}"#);
        let defaults: SubscriptionSpec = serde_json::from_str(&body).expect("spec");
        assert_eq!(read(&minimal), defaults);
        assert_eq!(defaults.max_in_flight, 100);
        assert_eq!(defaults.start, StartPosition::Default);
        let full = SubscriptionSettings {
            topic: "orders".to_owned(),
            filters: vec![serde_json::json!({"exact": {"type": "a"}})],
            sink: Some(SinkSettings {
                url: "http://sink.test/hook".to_owned(),
                secret: Some("whsec_x".to_owned()),
                ..SinkSettings::default()
            }),
            start: Some(StartPosition::Named(NamedPosition::Earliest)),
            ordering: Some(Ordering::Key),
            max_in_flight: Some(7),
            ack_timeout: Some("500ms".to_owned()),
            retry: RetrySettings {
                max_attempts: Some(3),
                initial: Some("50ms".to_owned()),
                max: Some("2s".to_owned()),
                multiplier: Some(1.5),
            },
            circuit_breaker: CircuitSettings {
                enabled: Some(true),
                failure_rate_percent: Some(40),
                window: Some("5s".to_owned()),
                min_calls: Some(2),
                connect_failures: Some(4),
                probes: Some(3),
                cool_down: Some("300ms".to_owned()),
                cool_down_max: Some("1m".to_owned()),
            },
            rate_limit: Some(20),
            stateful: false,
        };
        let expected = SubscriptionSpec {
            topic: "orders".to_owned(),
            filters: full.filters.clone(),
            delivery: Delivery::Push(SinkSpec {
                url: "http://sink.test/hook".to_owned(),
                endpoints: Vec::new(),
                strategy: Strategy::default(),
                health_check: None,
                outlier_detection: OutlierPolicy::default(),
                pause_after: None,
                handshake: false,
                secret: Some("whsec_x".to_owned()),
                previous_secret: None,
            }),
            start: StartPosition::Named(NamedPosition::Earliest),
            ordering: Ordering::Key,
            max_in_flight: 7,
            ack_timeout: Duration::from_millis(500),
            retry: RetryPolicy {
                max_attempts: 3,
                initial: Duration::from_millis(50),
                max: Duration::from_secs(2),
                multiplier: 1.5,
            },
            circuit_breaker: CircuitPolicy {
                enabled: true,
                failure_rate_percent: 40,
                window: Duration::from_secs(5),
                min_calls: 2,
                connect_failures: 4,
                probes: 3,
                cool_down: Duration::from_millis(300),
                cool_down_max: Duration::from_secs(60),
            },
            rate_limit: Some(20),
            stateful: false,
        };
        assert_eq!(read(&full), expected);
    }

    // Goal: an endpoint group's settings read as the sink they give: members left out take
    // their defaults, given ones their value, a health check with no member set is on with
    // the default policy. Method: send a group's settings, read them back as the server does.
    #[test]
    fn group_settings_read_as_the_sink_they_give() {
        let endpoint = |url: &str, weight| EndpointSpec {
            url: url.to_owned(),
            weight,
        };
        let settings = SinkSettings {
            endpoints: vec![endpoint("http://a/h", 3), endpoint("http://b/h", 1)],
            strategy: Some(Strategy::Weighted),
            health_check: Some(HealthCheckSettings {
                interval: Some("250ms".to_owned()),
                ..HealthCheckSettings::default()
            }),
            outlier_detection: OutlierSettings {
                consecutive_failures: Some(2),
                max_ejection_time: Some("1m".to_owned()),
                ..OutlierSettings::default()
            },
            pause_after: Some("2h".to_owned()),
            ..SinkSettings::default()
        };
        let body = serde_json::to_string(&settings).expect("settings serialise");
        let sink: SinkSpec = serde_json::from_str(&body).expect("the server reads them");
        let expected = SinkSpec {
            url: String::new(),
            endpoints: settings.endpoints.clone(),
            strategy: Strategy::Weighted,
            health_check: Some(HealthCheckPolicy {
                interval: Duration::from_millis(250),
                ..HealthCheckPolicy::default()
            }),
            outlier_detection: OutlierPolicy {
                consecutive_failures: 2,
                max_ejection_time: Duration::from_secs(60),
                ..OutlierPolicy::default()
            },
            pause_after: Some(Duration::from_secs(7200)),
            handshake: false,
            secret: None,
            previous_secret: None,
        };
        assert_eq!(sink, expected);
        let checks_on = SinkSettings {
            url: "http://a/h".to_owned(),
            health_check: Some(HealthCheckSettings::default()),
            ..SinkSettings::default()
        };
        assert_eq!(
            serde_json::to_string(&checks_on).expect("serialise"),
            r#"{"url":"http://a/h","health_check":{}}"#
        );
    }

    // Goal: describe's answer reads back into the typed form, its spec inline, the create
    // answer's secret beside it. Method: parse a create answer as keel writes it.
    #[test]
    fn created_answer_reads_with_its_spec_inline() {
        let body = r#"{"name":"hooks","topic":"orders","filters":[],
            "sink":{"url":"http://h/x","secret":null},"start":"earliest","ordering":"key",
            "max_in_flight":100,"ack_timeout":"30s",
            "retry":{"max_attempts":10,"initial":"1s","max":"5m","multiplier":2.0},
            "circuit_breaker":{"failures":5,"cool_down":"10s"},"mode":"push","paused":null,
            "lag":0,"in_flight":0,"pending":0,"delivered":0,"retried":0,"dead_lettered":0,
            "skipped_by_retention":0,"dlq_depth":0,"circuit":"half_open","last_error":null,
            "unavailable":null,"partitions":[],"secret":"whsec_new"}"#;
        let created: CreatedSubscription = serde_json::from_str(body).expect("create answer");
        assert_eq!(created.secret.as_deref(), Some("whsec_new"));
        assert_eq!(created.info.mode, DeliveryMode::Push);
        assert_eq!(created.info.circuit, Some(CircuitState::HalfOpen));
        assert_eq!(created.info.spec.retry, RetryPolicy::default());
        assert_eq!(created.info.sink_health, None, "absent before keel had it");
        let Delivery::Push(sink) = created.info.spec.delivery else {
            panic!("a push sink");
        };
        assert_eq!((sink.url.as_str(), sink.secret), ("http://h/x", None));
    }

    // Goal: a circuit breaker stored by a keel from before the failure-rate breaker still
    // reads: its `failures` as `min_calls` and its cool-down kept, the rest defaulted, and the
    // old defaults (which every old spec holds unless it chose its own) as today's defaults;
    // it writes back in the new form; giving both names is refused. Method: read old and
    // mixed JSON, write one back.
    #[test]
    fn old_circuit_breaker_reads_as_min_calls() {
        let old: CircuitPolicy =
            serde_json::from_str(r#"{"failures": 7, "cool_down": "20s"}"#).expect("old form");
        let expected = CircuitPolicy {
            min_calls: 7,
            cool_down: Duration::from_secs(20),
            ..CircuitPolicy::default()
        };
        assert_eq!(old, expected);
        let written = serde_json::to_value(old).expect("serialise");
        assert_eq!(written["min_calls"], 7);
        assert!(written.get("failures").is_none(), "{written}");
        let back: CircuitPolicy = serde_json::from_value(written).expect("reads back");
        assert_eq!(back, old);
        let old_defaults: CircuitPolicy =
            serde_json::from_str(r#"{"failures": 5, "cool_down": "10s"}"#).expect("old form");
        assert_eq!(old_defaults, CircuitPolicy::default());
        let new_form: CircuitPolicy =
            serde_json::from_str(r#"{"cool_down": "10s"}"#).expect("new form");
        assert_eq!(
            new_form.cool_down,
            Duration::from_secs(10),
            "chosen in the new form"
        );
        let empty: CircuitPolicy = serde_json::from_str("{}").expect("all defaults");
        assert_eq!(empty, CircuitPolicy::default());
        let both = serde_json::from_str::<CircuitPolicy>(r#"{"failures": 3, "min_calls": 4}"#)
            .expect_err("both names");
        assert!(both.to_string().contains("old name"), "{both}");
        let unknown = serde_json::from_str::<CircuitPolicy>(r#"{"failure_rate": 3}"#)
            .expect_err("unknown member");
        assert!(unknown.to_string().contains("failure_rate"), "{unknown}");
    }
}
