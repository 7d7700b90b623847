//! Push delivery: one stored event, one signed HTTP request to a subscription's sink, and what
//! the answer means for the event.
//!
//! The request is a `POST` in the CloudEvents HTTP **binary** content mode (HTTP protocol
//! binding 1.0.2 §3.1): `ce-*` headers, `Content-Type` from `datacontenttype`, body = data.
//! It is signed per **Standard Webhooks** 1.0.0, so any Standard Webhooks library verifies it:
//!
//! - `webhook-id`: the event id, as its `ce-id` header carries it (percent-encoded, which leaves
//!   ids of printable ASCII without space, `"` or `%` unchanged);
//! - `webhook-timestamp`: Unix seconds at the attempt;
//! - `webhook-signature`: `v1,` + base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}`
//!   keyed with the subscription's [`WebhookSecret`]; while a rotated-out secret's overlap
//!   lasts, its own `v1,` signature follows after a space ([`SinkTarget::signatures`]).
//!
//! `keel-attempt: <n>` numbers the attempt (1 for the first).
//!
//! An event with a valid `traceparent` attribute (CloudEvents distributed tracing extension)
//! keeps it in its `ce-traceparent` header, and the request also carries the HTTP
//! `traceparent` (and `tracestate`) of the attempt's own span, a child of the event's span
//! (`crate::trace_context`).
//!
//! A stateful subscription's request also carries the event's key state
//! ([`PushClient::deliver_stateful`]): `keel-state-version: <n>`, and when the key has a
//! state, `keel-state: <base64 of its JSON>` with `keel-state-signature`, signed as the body is
//! but over the `keel-state` header's text (`{webhook-id}.{webhook-timestamp}.{keel-state}`),
//! so the same Standard Webhooks library verifies it. Its 2xx answer's body (at most
//! [`COMMIT_ANSWER_BYTES_MAX`]) is the commit it asks for (`docs/processing.md`).
//!
//! The binary mode's mapping, the inverse of publishing in binary mode, is in
//! [`crate::event::http`], beside the rest of the CloudEvents HTTP binding.
//!
//! The answer is an [`AttemptOutcome`] (DESIGN.md §3): 2xx delivered; 410 gone; 408, 429, 5xx,
//! 3xx (redirects are never followed), timeouts and connection errors retried, with
//! `Retry-After` read; every other 4xx rejected. At most [`RESPONSE_BYTES_MAX`] of a response
//! body are read, so a connection stays reusable without a sink making keel read without end.

mod response;
mod signature;
mod trust;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use tracing::Instrument as _;

use crate::egress::{EgressPolicy, GuardedResolver, HostLookup, SystemLookup};
use crate::trace_context::TraceContext;

pub use reqwest::Url;
pub use signature::WebhookSecret;

use response::Reply;

/// Most bytes of a response body read; a longer body is abandoned with its connection.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// Most bytes of a stateful subscription's 2xx answer (the key's new state and events to
/// emit); a longer one counts as a failed attempt.
pub const COMMIT_ANSWER_BYTES_MAX: usize = 1024 * 1024;
/// Most bytes of a response body quoted in an error.
pub const ERROR_BODY_BYTES_MAX: usize = 200;
/// Longest wait a sink's `Retry-After` can ask for; longer asks are cut to it.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(60 * 60);
/// Most idle keep-alive connections kept per sink host.
pub const IDLE_CONNECTIONS_PER_HOST_MAX: usize = 64;
/// The W3C Trace Context header naming keel's attempt span as the sink's parent.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C Trace Context vendor state, passed on from the event.
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The validation handshake's request: who asks to send (CloudEvents HTTP webhook §4.1).
const WEBHOOK_REQUEST_ORIGIN: HeaderName = HeaderName::from_static("webhook-request-origin");
/// The validation handshake's request: the rate asked for, in requests per minute.
const WEBHOOK_REQUEST_RATE: HeaderName = HeaderName::from_static("webhook-request-rate");
/// The validation handshake's answer: who may send (the origin asked, or `*`).
const WEBHOOK_ALLOWED_ORIGIN: HeaderName = HeaderName::from_static("webhook-allowed-origin");
/// How long an idle keep-alive connection is kept.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest wait for a connection to a sink (TCP and TLS handshakes): room for one lost SYN
/// (Linux resends it after 1 s), short enough that a sink whose host is gone is told from a
/// slow one within seconds (the circuit breaker opens on failed connections in a row).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const _: () = assert!(ERROR_BODY_BYTES_MAX <= RESPONSE_BYTES_MAX);

/// The answer to one delivery attempt, classified per keel's delivery contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The sink took the event (2xx): ack it.
    Delivered {
        /// The 2xx status.
        status: u16,
    },
    /// Try again later: 408, 429, 5xx, 3xx, an answer that broke off or a timeout.
    Retry {
        /// The status, when the sink answered.
        status: Option<u16>,
        /// What happened, for the failure record: e.g. `503 Service Unavailable: <body start>`,
        /// `timed out after 5s`, `cannot connect: ...: connection refused`.
        error: String,
        /// The sink's `Retry-After`, capped at [`RETRY_AFTER_MAX`].
        retry_after: Option<Duration>,
    },
    /// Try again later: the connection failed before any answer.
    ConnectionFailed {
        /// What happened, e.g. `cannot connect: tcp connect error: connection refused`.
        error: String,
        /// Whether the request never reached the sink: the connection could not be made
        /// (refused, [`CONNECT_TIMEOUT`], no route). Otherwise it dropped after the request
        /// went out.
        unreached: bool,
    },
    /// 410 Gone: the sink wants no more events; the caller pauses the subscription.
    Gone {
        /// The status (410).
        status: u16,
    },
    /// Any other 4xx: the sink refuses this event; dead-letter it at once.
    Reject {
        /// The 4xx status.
        status: u16,
        /// The status line and the start of the body, e.g. `400 Bad Request: <body start>`.
        error: String,
    },
}

/// Where and how to push a subscription's events. Serialises as
/// `{"url": "https://…", "secret": "whsec_…"}` (the previous secret is not serialised);
/// `Debug` hides the secrets and any password in the URL.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkTarget {
    /// The sink's URL: http or https, checked by [`validate_sink_url`].
    #[serde(with = "url_text")]
    pub url: Url,
    /// The key every request is signed with.
    pub secret: WebhookSecret,
    /// The key before the last rotation, and when it stops signing (Unix milliseconds):
    /// until then every request carries its signature too.
    #[serde(skip)]
    pub previous_secret: Option<(WebhookSecret, i64)>,
}

impl SinkTarget {
    /// A target signed with `secret` alone.
    pub fn new(url: Url, secret: WebhookSecret) -> SinkTarget {
        SinkTarget {
            url,
            secret,
            previous_secret: None,
        }
    }

    /// The `webhook-signature` value for one message at `now_ms`: the current secret's
    /// signature, then, while the previous secret's overlap lasts, its signature after a
    /// space (Standard Webhooks: a space-delimited list, any of which may verify).
    pub fn signatures(&self, msg_id: &str, timestamp_s: i64, body: &[u8], now_ms: i64) -> String {
        let current = self.secret.sign(msg_id, timestamp_s, body);
        match &self.previous_secret {
            Some((previous, until_ms)) if now_ms < *until_ms => {
                format!("{current} {}", previous.sign(msg_id, timestamp_s, body))
            }
            _ => current,
        }
    }
}

impl fmt::Debug for SinkTarget {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SinkTarget")
            .field("url", &redacted_url(&self.url).as_str())
            .field("secret", &self.secret)
            .field(
                "previous_secret_until_ms",
                &self.previous_secret.as_ref().map(|(_, until_ms)| until_ms),
            )
            .finish()
    }
}

/// The URL with any password replaced, for logs.
pub(crate) fn redacted_url(url: &Url) -> Url {
    let mut url = url.clone();
    if url.password().is_some() {
        // Only fails for URLs that cannot have credentials, and this one has some.
        let _ = url.set_password(Some("redacted"));
    }
    url
}

/// Checks a sink URL: absolute, `http` or `https`, with a host. Credentials in the URL are
/// allowed (sent as basic auth). The error says what is wrong.
pub fn validate_sink_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim())
        .map_err(|error| format!("the sink URL is not a valid absolute URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the sink URL must use http or https, not {:?}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the sink URL has no host".to_owned());
    }
    Ok(url)
}

/// Serde for [`SinkTarget::url`]: a string, checked by [`validate_sink_url`].
mod url_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Url;

    pub(super) fn serialize<S: Serializer>(url: &Url, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(url.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Url, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::validate_sink_url(&text).map_err(serde::de::Error::custom)
    }
}

/// What every sink client of an engine shares: the egress policy's resolver and the roots
/// HTTPS sinks are verified against (`trust.rs`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct SinkClients {
    resolver: Arc<GuardedResolver>,
    roots: Arc<[reqwest::Certificate]>,
    origin: Arc<str>,
    /// `origin` as a header value (checked when made).
    origin_header: HeaderValue,
}

/// The settings sink clients are built from (`[webhooks]` in the server's config).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Which addresses sink requests may connect to.
    pub egress: EgressPolicy,
    /// A PEM file of certificate authorities trusted for HTTPS sinks, beside the system's.
    pub ca_bundle: Option<std::path::PathBuf>,
    /// How host names are resolved (the system's resolver; tests give a hosts table).
    pub lookup: Arc<dyn HostLookup>,
    /// The name keel sends as `WebHook-Request-Origin` in validation handshakes, and as
    /// `Origin` to sinks that passed one: a DNS name for this keel (all its nodes).
    pub origin: String,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            egress: EgressPolicy::default(),
            ca_bundle: None,
            lookup: Arc::new(SystemLookup),
            origin: default_origin(),
        }
    }
}

/// Checks an origin: a host name (letters, digits, `-`, `.`), as the handshake's header
/// carries it; the error names the setting.
fn validate_origin(origin: &str) -> Result<HeaderValue, String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.');
    if origin.is_empty() || origin.len() > 253 || !origin.chars().all(valid) {
        return Err(format!(
            "webhooks.origin {origin:?} is not a host name (letters, digits, '-' and '.', at most 253)"
        ));
    }
    header_value("origin", origin)
}

/// The host's name (from `uname`), the handshake's origin when none is configured; `keel`
/// when the host's name is not a valid origin.
pub fn default_origin() -> String {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    if validate_origin(&name).is_ok() {
        name
    } else {
        "keel".to_owned()
    }
}

impl SinkClients {
    /// Loads the roots (the system's and the bundle's) for `settings`; the error says what
    /// is wrong with the bundle.
    pub fn new(settings: &WebhookSettings) -> Result<SinkClients, String> {
        let origin_header = validate_origin(&settings.origin)?;
        let roots = trust::load_roots(settings.ca_bundle.as_deref())?;
        Ok(SinkClients {
            resolver: Arc::new(GuardedResolver::new(
                settings.egress,
                settings.lookup.clone(),
            )),
            roots: roots.into(),
            origin: settings.origin.as_str().into(),
            origin_header,
        })
    }

    /// The origin as the `Origin` header of deliveries to a sink that agreed to it.
    pub fn origin_header(&self) -> HeaderValue {
        self.origin_header.clone()
    }

    /// The origin keel names itself by in validation handshakes.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The egress policy.
    pub fn policy(&self) -> EgressPolicy {
        self.resolver.policy()
    }

    /// A client with its own connection pool, keeping up to `idle_max` idle connections per
    /// host: a subscription passes its `max_in_flight`, so every concurrent delivery finds a
    /// kept-alive connection instead of opening (and closing) one (measured: with 64 kept and
    /// 1,000 in flight, over half of all deliveries opened a new connection).
    ///
    /// Keep-alive and pooling per host, redirects never followed, user agent
    /// `keel/<version>`, every new connection's addresses checked by the egress policy, no
    /// proxy from the environment (a proxy would resolve names behind the policy's back),
    /// https through rustls with the loaded roots only.
    pub fn client(&self, idle_max: usize) -> PushClient {
        let builder = reqwest::Client::builder()
            .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(self.resolver.clone())
            .tls_built_in_root_certs(false)
            .pool_max_idle_per_host(idle_max.max(1))
            .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT);
        let client = self
            .roots
            .iter()
            .fold(builder, |builder, root| {
                builder.add_root_certificate(root.clone())
            })
            .build()
            // Building fails only for a TLS backend that cannot start, bad custom settings or
            // a root rustls refuses: the roots were checked when loaded (`trust.rs`) and the
            // other settings are fixed.
            .expect("the HTTP client's checked configuration builds");
        PushClient {
            client,
            policy: self.policy(),
            origin: None,
        }
    }
}

/// Sends events to sinks. Cheap to clone (one shared connection pool); made by
/// [`SinkClients::client`].
#[derive(Debug, Clone)]
pub struct PushClient {
    client: reqwest::Client,
    /// Checks URLs whose host is an address (the resolver checks the others).
    policy: EgressPolicy,
    /// The `Origin` header every delivery carries: for a sink that passed the validation
    /// handshake, the origin it allowed.
    origin: Option<HeaderValue>,
}

impl Default for PushClient {
    fn default() -> Self {
        Self::new()
    }
}

impl PushClient {
    /// A client of the default settings (the standard egress policy, the system's resolver
    /// and roots), keeping up to [`IDLE_CONNECTIONS_PER_HOST_MAX`] idle connections per host.
    pub fn new() -> PushClient {
        SinkClients::new(&WebhookSettings::default())
            // Without a bundle, loading the roots cannot fail.
            .expect("the system's roots load")
            .client(IDLE_CONNECTIONS_PER_HOST_MAX)
    }

    /// The client with every delivery carrying `Origin: origin`, as the CloudEvents HTTP
    /// webhook spec asks of a sender once a sink allowed that origin.
    pub fn with_origin(mut self, origin: HeaderValue) -> PushClient {
        self.origin = Some(origin);
        self
    }

    /// The CloudEvents webhook validation handshake (HTTP webhook spec §4.1): `OPTIONS url`
    /// with `WebHook-Request-Origin: origin` (and `WebHook-Request-Rate` when given, per
    /// minute), within `timeout`. `Ok` when the sink answers 2xx with `WebHook-Allowed-Origin`
    /// equal to `origin` or `*`; otherwise why not. (The callback variant, and enforcing a
    /// `WebHook-Allowed-Rate`, are left out.)
    pub async fn handshake(
        &self,
        url: &Url,
        origin: &str,
        rate_per_minute: Option<u64>,
        timeout: Duration,
    ) -> Result<(), String> {
        if let Some(error) = self.refused(url) {
            return Err(error);
        }
        let mut request = self
            .client
            .request(reqwest::Method::OPTIONS, url.clone())
            .header(WEBHOOK_REQUEST_ORIGIN, header_value("origin", origin)?);
        if let Some(rate) = rate_per_minute {
            request = request.header(WEBHOOK_REQUEST_RATE, rate.to_string());
        }
        let reply = match tokio::time::timeout(timeout, exchange(request, 0)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => return Err(failure_text(&error)),
            Err(_elapsed) => {
                return Err(format!(
                    "no answer to the validation handshake within {}",
                    crate::duration::format(timeout)
                ));
            }
        };
        let status = reply.status;
        match reply.allowed_origin.as_deref().map(str::trim) {
            Some(allowed)
                if status.is_success()
                    && (allowed == "*" || allowed.eq_ignore_ascii_case(origin)) =>
            {
                Ok(())
            }
            Some(allowed) => Err(format!(
                "the validation handshake answered {status} allowing origin {allowed:?}, not {origin:?}"
            )),
            None => Err(format!(
                "the validation handshake answered {status} without WebHook-Allowed-Origin: the sink did not agree to receive events from {origin:?}"
            )),
        }
    }

    /// The refusal of a request to `url` when its host is an address the policy denies.
    fn refused(&self, url: &Url) -> Option<String> {
        self.policy
            .check_url(url)
            .err()
            .map(|denied| denied.to_string())
    }

    /// Delivers one event: `event_json` is its stored CloudEvents JSON object, `attempt` the
    /// attempt's number (1 for the first), `timeout` the limit for the whole exchange,
    /// connecting and reading the answer included.
    ///
    /// Never fails: every failure is a [`AttemptOutcome::Retry`]. Stored JSON that is not an
    /// event (a bug or a corrupted store) is retried too, so the event ends in the dead-letter
    /// queue with the reason rather than being lost.
    pub async fn deliver(
        &self,
        target: &SinkTarget,
        event_json: &str,
        attempt: u32,
        timeout: Duration,
    ) -> AttemptOutcome {
        if let Some(error) = self.refused(&target.url) {
            return refusal(error);
        }
        let timestamp_s = crate::clock::now_ms() / 1000;
        let (request, span) = match self.signed_request(target, event_json, attempt, timestamp_s) {
            Ok(signed) => (signed.request, signed.span),
            Err(error) => return transport_failure(error),
        };
        async {
            let outcome = exchange_within(request, timeout).await;
            tracing::debug!(
                url = %redacted_url(&target.url),
                attempt,
                outcome = ?outcome,
                "push attempt"
            );
            outcome
        }
        .instrument(span)
        .await
    }

    /// Delivers one event of a stateful subscription with its key's state, and returns the
    /// outcome with the body of a 2xx answer (the commit the sink asks for; empty when it
    /// asks for none). The state goes in headers, signed like the body (module docs):
    /// `keel-state-version`, and when the key has a state, `keel-state` (its JSON in base64)
    /// and `keel-state-signature`.
    pub async fn deliver_stateful(
        &self,
        target: &SinkTarget,
        event_json: &str,
        attempt: u32,
        timeout: Duration,
        state: &crate::subscription::KeyState,
    ) -> (AttemptOutcome, Vec<u8>) {
        if let Some(error) = self.refused(&target.url) {
            return (refusal(error), Vec::new());
        }
        let timestamp_s = crate::clock::now_ms() / 1000;
        let request = self
            .signed_request(target, event_json, attempt, timestamp_s)
            .and_then(|Signed { request, id, span }| {
                let mut request = request.header("keel-state-version", state.version.to_string());
                if let Some(json) = &state.state {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(json.as_bytes());
                    let now_ms = crate::clock::now_ms();
                    let signature = target.signatures(&id, timestamp_s, encoded.as_bytes(), now_ms);
                    request = request
                        .header("keel-state", header_value("keel-state", &encoded)?)
                        .header("keel-state-signature", signature);
                }
                Ok((request, span))
            });
        let (request, span) = match request {
            Ok(request) => request,
            Err(error) => return (transport_failure(error), Vec::new()),
        };
        let exchanged = tokio::time::timeout(timeout, exchange(request, COMMIT_ANSWER_BYTES_MAX))
            .instrument(span)
            .await;
        match exchanged {
            Ok(Ok(reply)) => {
                let outcome = response::classify(&reply, crate::clock::now_ms() / 1000);
                (outcome, reply.body)
            }
            Ok(Err(error)) => (connection_failure(&error), Vec::new()),
            Err(_elapsed) => (
                transport_failure(format!(
                    "timed out after {}",
                    crate::duration::format(timeout)
                )),
                Vec::new(),
            ),
        }
    }

    /// An endpoint's health check: `GET url`. `Ok` for a 2xx answer within `timeout` (its
    /// body read up to [`RESPONSE_BYTES_MAX`]), else why not.
    pub async fn probe(&self, url: &Url, timeout: Duration) -> Result<(), String> {
        if let Some(error) = self.refused(url) {
            return Err(error);
        }
        let request = self.client.get(url.clone());
        match tokio::time::timeout(timeout, exchange(request, 0)).await {
            Ok(Ok(reply)) if reply.status.is_success() => Ok(()),
            Ok(Ok(reply)) => Err(format!("the health check answered {}", reply.status)),
            Ok(Err(error)) => Err(failure_text(&error)),
            Err(_elapsed) => Err(format!(
                "the health check had no answer within {}",
                crate::duration::format(timeout)
            )),
        }
    }

    /// The request for one attempt (binary-mode headers and body, signature, attempt
    /// number, trace context), the `webhook-id` it is signed with, and its span.
    fn signed_request(
        &self,
        target: &SinkTarget,
        event_json: &str,
        attempt: u32,
        timestamp_s: i64,
    ) -> Result<Signed, String> {
        let parts = crate::event::http::binary_request(event_json)
            .map_err(|error| format!("cannot build the request from the stored event: {error}"))?;
        let now_ms = crate::clock::now_ms();
        let signature = target.signatures(&parts.id, timestamp_s, &parts.body, now_ms);
        let mut headers = reqwest::header::HeaderMap::with_capacity(parts.headers.len() + 5);
        for (name, value) in &parts.headers {
            headers.insert(header_name(name)?, header_value(name, value)?);
        }
        if let Some(content_type) = &parts.content_type {
            headers.insert(CONTENT_TYPE, header_value("content-type", content_type)?);
        }
        let signing = [
            ("webhook-id", parts.id.clone()),
            ("webhook-timestamp", timestamp_s.to_string()),
            ("webhook-signature", signature),
            ("keel-attempt", attempt.to_string()),
        ];
        for (name, value) in signing {
            headers.insert(header_name(name)?, header_value(name, &value)?);
        }
        if let Some(origin) = &self.origin {
            headers.insert(reqwest::header::ORIGIN, origin.clone());
        }
        let span = join_trace(&parts, &mut headers, attempt);
        let request = self
            .client
            .post(target.url.clone())
            .headers(headers)
            .body(parts.body);
        Ok(Signed {
            request,
            id: parts.id,
            span,
        })
    }
}

/// One attempt's request, ready to send.
struct Signed {
    request: reqwest::RequestBuilder,
    /// The `webhook-id` it is signed with.
    id: String,
    /// The attempt's span: in the event's trace, or none when the event has no valid
    /// `traceparent`.
    span: tracing::Span,
}

/// Joins the event's trace, when it has a valid `traceparent` (`crate::trace_context`): the
/// attempt is a child span of the event's span, and the request's HTTP `traceparent` header
/// names it as the parent (with the event's `tracestate`, when it fits in a header), so the
/// sink's tracing continues under keel's hop. Returns the attempt's span.
fn join_trace(
    parts: &crate::event::http::BinaryRequest,
    headers: &mut reqwest::header::HeaderMap,
    attempt: u32,
) -> tracing::Span {
    let Some(parent) = parts.traceparent.as_deref().and_then(TraceContext::parse) else {
        return tracing::Span::none();
    };
    let hop = parent.child();
    if let Ok(value) = HeaderValue::from_str(&hop.to_string()) {
        headers.insert(TRACEPARENT, value);
    }
    if let Some(Ok(value)) = parts.tracestate.as_deref().map(HeaderValue::from_str) {
        headers.insert(TRACESTATE, value);
    }
    tracing::info_span!(
        "push",
        trace_id = %hop.trace_id_hex(),
        span_id = %hop.span_id_hex(),
        parent_id = %parent.span_id_hex(),
        event_id = %parts.id,
        attempt,
    )
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("cannot build the request: {name:?} is not a valid header name"))
}

fn header_value(name: &str, value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value)
        .map_err(|_| format!("cannot build the request: the {name} value is not a valid header"))
}

/// A failure before or without any answer from the sink.
fn transport_failure(error: String) -> AttemptOutcome {
    AttemptOutcome::Retry {
        status: None,
        error,
        retry_after: None,
    }
}

/// A request the egress policy refused: it never reached the sink, as a connection that
/// cannot be made (the circuit breaker judges the sink; the event's attempts are not spent
/// while it is open).
fn refusal(error: String) -> AttemptOutcome {
    AttemptOutcome::ConnectionFailed {
        error,
        unreached: true,
    }
}

/// A request that got no answer: its connection failed, before or after the request went out.
fn connection_failure(error: &reqwest::Error) -> AttemptOutcome {
    AttemptOutcome::ConnectionFailed {
        error: failure_text(error),
        unreached: error.is_connect(),
    }
}

/// Words a failed request: the egress policy's refusal alone when it refused the connection
/// (the resolver's), otherwise the stage and causes (`response::transport_error`).
fn failure_text(error: &reqwest::Error) -> String {
    match crate::egress::denial_in(error) {
        Some(denied) => denied.to_string(),
        None => response::transport_error(error),
    }
}

/// Sends the request and reads the answer, all within `timeout`.
async fn exchange_within(request: reqwest::RequestBuilder, timeout: Duration) -> AttemptOutcome {
    match tokio::time::timeout(timeout, exchange(request, 0)).await {
        Ok(Ok(reply)) => response::classify(&reply, crate::clock::now_ms() / 1000),
        Ok(Err(error)) => connection_failure(&error),
        Err(_elapsed) => transport_failure(format!(
            "timed out after {}",
            crate::duration::format(timeout)
        )),
    }
}

/// Sends the request, then reads the headers classification needs and at most
/// [`RESPONSE_BYTES_MAX`] of the body (or `keep_max`, when more): reading a body to its end
/// lets the connection be reused, and a longer body is dropped with its connection. Up to
/// `keep_max` bytes of the body are kept whole; a longer body counts as broken off.
async fn exchange(
    request: reqwest::RequestBuilder,
    keep_max: usize,
) -> Result<Reply, reqwest::Error> {
    let mut response = request.send().await?;
    let header_text = |name| {
        response
            .headers()
            .get(name)
            .map(|value: &HeaderValue| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let location = header_text(LOCATION);
    let retry_after = header_text(RETRY_AFTER);
    let allowed_origin = header_text(WEBHOOK_ALLOWED_ORIGIN);
    let mut body_start = Vec::new();
    let mut body = Vec::new();
    let mut body_bytes = 0;
    let mut body_error = None;
    while body_bytes < RESPONSE_BYTES_MAX.max(keep_max) {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = ERROR_BODY_BYTES_MAX.saturating_sub(body_start.len());
                body_start.extend_from_slice(chunk.get(..room).unwrap_or(&chunk));
                body_bytes += chunk.len();
                if keep_max > 0 {
                    if body_bytes > keep_max {
                        body_error = Some(format!("the answer is over {keep_max} bytes"));
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
            }
            Ok(None) => break,
            Err(error) => {
                body_error = Some(response::error_causes(&error));
                break;
            }
        }
    }
    Ok(Reply {
        status: response.status(),
        location,
        retry_after,
        allowed_origin,
        body_start,
        body,
        body_error,
    })
}
