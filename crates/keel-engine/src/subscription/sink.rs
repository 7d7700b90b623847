//! A push subscription's sink as its dispatcher, its health checker and describe share it:
//! the endpoints' targets (URL and signing secret) and the group's state (`endpoints.rs`).
//! A sink with one `url` is a group of one endpoint, without outlier ejection (the circuit
//! breaker covers it) but with health checks when it has them.

use std::sync::{Arc, Mutex};

use keel_api::subscriptions::{EndpointInfo, EndpointSpec, PreviousSecret, Strategy};

use super::endpoints::{Change, EndpointGroup, Thresholds};
use super::spec::SinkSpec;
use crate::clock::format_rfc3339_ms;
use crate::egress::EgressPolicy;
use crate::webhook::{AttemptOutcome, SinkTarget, Url, WebhookSecret};

/// A push subscription's sink.
pub(crate) struct PushSink {
    group: Mutex<EndpointGroup>,
    targets: Vec<Arc<SinkTarget>>,
    strategy: Strategy,
    /// Whether it has active health checks.
    checked: bool,
    /// How long it may fail before keel pauses the subscription.
    pause_after: Option<std::time::Duration>,
}

impl PushSink {
    /// The sink of a (validated) spec; the error says what is wrong with it.
    pub(crate) fn new(spec: &SinkSpec) -> Result<PushSink, String> {
        let secret = spec
            .secret
            .clone()
            .ok_or("the push subscription has no signing secret")?;
        let previous_secret = match &spec.previous_secret {
            Some(previous) => Some(previous_key(previous)?),
            None => None,
        };
        let endpoints = endpoints_of(spec);
        let targets = endpoints
            .iter()
            .map(|endpoint| {
                let url = crate::webhook::validate_sink_url(&endpoint.url)?;
                let secret = secret.clone();
                let previous_secret = previous_secret.clone();
                Ok(Arc::new(SinkTarget {
                    url,
                    secret,
                    previous_secret,
                }))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let thresholds = spec.health_check.as_ref().map(|check| Thresholds {
            healthy: check.healthy_threshold,
            unhealthy: check.unhealthy_threshold,
        });
        let group = EndpointGroup::new(
            &endpoints,
            spec.strategy,
            spec.outlier_detection,
            thresholds,
            crate::clock::now_ms(),
        );
        Ok(PushSink {
            group: Mutex::new(group),
            targets,
            strategy: spec.strategy,
            checked: spec.health_check.is_some(),
            pause_after: spec.pause_after,
        })
    }

    fn group(&self) -> std::sync::MutexGuard<'_, EndpointGroup> {
        self.group.lock().expect("endpoint group lock")
    }

    /// Each endpoint's URL, in order.
    pub(crate) fn urls(&self) -> impl Iterator<Item = &Url> {
        self.targets.iter().map(|target| &target.url)
    }

    /// Where and how to send to `endpoint`.
    pub(crate) fn target(&self, endpoint: usize) -> Arc<SinkTarget> {
        self.targets[endpoint].clone()
    }

    /// Ends the ejections due by `now_ms`. Returns the changes, whether an endpoint is
    /// available, and when the next ejection ends.
    pub(crate) fn readmit(&self, now_ms: i64) -> (Vec<Change>, bool, Option<i64>) {
        let mut group = self.group();
        let changes = group.readmit(now_ms);
        let available = (0..group.len()).any(|endpoint| group.available(endpoint));
        (changes, available, group.next_readmission_ms())
    }

    /// The endpoint for an event (its stored JSON) after `failovers` endpoints could not be
    /// reached for it: the key matters only to `key_hash`.
    pub(crate) fn pick(&self, event_json: &str, failovers: u32) -> Option<usize> {
        let key = (self.strategy == Strategy::KeyHash)
            .then(|| crate::event::key_of(event_json.as_bytes()))
            .flatten();
        self.group().pick(key.as_deref(), failovers)
    }

    /// How many endpoints it has.
    pub(crate) fn len(&self) -> usize {
        self.targets.len()
    }

    /// Records an attempt's answer at `endpoint`: a connection failure, a timeout or a 5xx
    /// counts against it. Returns the ejection it caused, and whether another endpoint is
    /// available to take the event at once.
    pub(crate) fn record(
        &self,
        endpoint: usize,
        answer: &AttemptOutcome,
        now_ms: i64,
    ) -> (Option<Change>, bool) {
        let failed = match answer {
            AttemptOutcome::ConnectionFailed { .. } => true,
            AttemptOutcome::Retry { status, .. } => status.is_none_or(|status| status >= 500),
            AttemptOutcome::Delivered { .. }
            | AttemptOutcome::Gone { .. }
            | AttemptOutcome::Reject { .. } => false,
        };
        let mut group = self.group();
        let change = group.on_attempt(endpoint, failed, now_ms);
        let others = (0..group.len()).any(|other| other != endpoint && group.available(other));
        (change, others)
    }

    /// A health check's result for `endpoint` at `now_ms`; returns its change of health.
    pub(crate) fn on_check(&self, endpoint: usize, passed: bool, now_ms: i64) -> Option<Change> {
        self.group().on_check(endpoint, passed, now_ms)
    }

    /// When the failures that left no endpoint available began; none while one is.
    pub(crate) fn all_down_since_ms(&self) -> Option<i64> {
        self.group().all_down_since_ms()
    }

    /// Whether outages can be told apart from the endpoints alone: the sink is a group, or
    /// has health checks.
    pub(crate) fn judges_endpoints(&self) -> bool {
        self.targets.len() > 1 || self.checked
    }

    /// Whether it has active health checks.
    pub(crate) fn health_checked(&self) -> bool {
        self.checked
    }

    /// How long it may fail before keel pauses the subscription (`SinkSpec::pause_after`).
    pub(crate) fn pause_after(&self) -> Option<std::time::Duration> {
        self.pause_after
    }

    /// Each endpoint's state at `now_ms`, for describe.
    pub(crate) fn describe(&self, now_ms: i64) -> Vec<EndpointInfo> {
        let group = self.group();
        (0..group.len())
            .map(|endpoint| {
                let state = group.state(endpoint);
                EndpointInfo {
                    url: crate::webhook::redacted_url(&self.targets[endpoint].url).to_string(),
                    available: group.available(endpoint),
                    healthy: state.healthy,
                    ejected_until: state.ejected_until_ms.map(format_rfc3339_ms),
                    ejections: state.ejections,
                    failures_in_row: state.failures_in_row,
                    health: Some(group.health(endpoint, now_ms)),
                }
            })
            .collect()
    }

    /// The URL an endpoint's change is about, for logs and notices.
    pub(crate) fn url_of(&self, change: &Change) -> &Url {
        &self.targets[change.endpoint()].url
    }
}

/// A rotated-out secret and when it stops signing (Unix milliseconds).
fn previous_key(previous: &PreviousSecret<WebhookSecret>) -> Result<(WebhookSecret, i64), String> {
    let secret = previous
        .secret
        .clone()
        .ok_or("sink.previous_secret has no secret")?;
    let until_ms = crate::clock::parse_rfc3339_ms(&previous.until).ok_or_else(|| {
        format!(
            "sink.previous_secret.until {:?} is not an RFC 3339 time",
            previous.until
        )
    })?;
    Ok((secret, until_ms))
}

/// The endpoints of a sink spec: its group, or its one `url`.
pub(crate) fn endpoints_of(spec: &SinkSpec) -> Vec<EndpointSpec> {
    if spec.endpoints.is_empty() {
        vec![EndpointSpec {
            url: spec.url.clone(),
            weight: 1,
        }]
    } else {
        spec.endpoints.clone()
    }
}

/// Refuses a sink whose URL's host is an address `policy` denies (a host name is checked at
/// each connection instead: what it resolves to may change), naming the member.
pub(crate) fn check_egress(spec: &SinkSpec, policy: EgressPolicy) -> Result<(), String> {
    let endpoints = endpoints_of(spec);
    for (index, endpoint) in endpoints.iter().enumerate() {
        let member = if spec.endpoints.is_empty() {
            "sink.url".to_owned()
        } else {
            format!("sink.endpoints[{index}].url")
        };
        let url = crate::webhook::validate_sink_url(&endpoint.url)
            .map_err(|detail| format!("{member}: {detail}"))?;
        policy
            .check_url(&url)
            .map_err(|denied| format!("{member}: {denied}"))?;
    }
    Ok(())
}

/// Logs an endpoint's change of availability.
pub(crate) fn log_change(subscription: &str, url: &Url, change: &Change) {
    let endpoint = crate::webhook::redacted_url(url);
    match change {
        Change::Ejected {
            failures, until_ms, ..
        } => {
            let until = format_rfc3339_ms(*until_ms);
            tracing::warn!(subscription, %endpoint, failures, %until, "endpoint ejected after failed attempts; its share goes to the others");
        }
        Change::Unhealthy { .. } => {
            tracing::warn!(subscription, %endpoint, "endpoint unhealthy by its health checks; its share goes to the others");
        }
        Change::Readmitted { .. } => {
            tracing::info!(subscription, %endpoint, "endpoint admitted again after its ejection");
        }
        Change::Healthy { .. } => {
            tracing::info!(subscription, %endpoint, "endpoint healthy again by its health checks");
        }
    }
}
