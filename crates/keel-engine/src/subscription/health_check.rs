//! Active health checks of a push subscription's endpoints: every `interval`, a `GET` of each
//! endpoint's health path (its scheme, host and port with the policy's `path`); a 2xx answer
//! within `timeout` passes, anything else fails. The results go to the endpoint group
//! (`endpoints.rs`), which flips an endpoint's health after its thresholds in a row.
//!
//! While keel holds the subscription paused (its sink failed past `pause_after`), an
//! endpoint passing `healthy_threshold` checks in a row, all after the pause, resumes it: an
//! endpoint that was healthy all along does not, since its checks told nothing of the failing
//! deliveries before the pause either.

use std::sync::Arc;

use keel_api::subscriptions::HealthCheckPolicy;

use super::Shared;
use super::sink::PushSink;
use crate::clock::now_ms;
use crate::webhook::{PushClient, Url};

/// What the checker needs: the subscription, its sink, each endpoint's probe URL.
pub(super) struct HealthChecks {
    shared: Arc<Shared>,
    sink: Arc<PushSink>,
    probes: Vec<Url>,
    policy: HealthCheckPolicy,
    client: PushClient,
}

impl HealthChecks {
    /// The checks of `sink`'s endpoints by `policy` (validated: its path starts with `/`).
    pub(super) fn new(shared: Arc<Shared>, sink: Arc<PushSink>, policy: HealthCheckPolicy) -> Self {
        let probes = sink
            .urls()
            .map(|url| url.join(&policy.path).unwrap_or_else(|_| url.clone()))
            .collect();
        let client = shared.sinks.client(1);
        HealthChecks {
            client,
            shared,
            sink,
            probes,
            policy,
        }
    }
}

/// Checks every endpoint every `interval` until the task is stopped (aborted). The probes
/// of one round run at once, so a hanging endpoint delays no other's check.
pub(super) async fn run(checks: Arc<HealthChecks>) {
    let mut ticker = tokio::time::interval(checks.policy.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per endpoint: checks passed in a row while keel held the subscription paused.
    let mut passes_in_pause = vec![0u32; checks.probes.len()];
    loop {
        ticker.tick().await;
        let paused_by_keel = checks.shared.paused_by_keel();
        if !paused_by_keel {
            passes_in_pause.fill(0);
        }
        let mut round = tokio::task::JoinSet::new();
        for (endpoint, url) in checks.probes.iter().enumerate() {
            let (client, url) = (checks.client.clone(), url.clone());
            let timeout = checks.policy.timeout;
            round.spawn(async move { (endpoint, client.probe(&url, timeout).await) });
        }
        while let Some(joined) = round.join_next().await {
            let Ok((endpoint, result)) = joined else {
                continue;
            };
            if let Err(failure) = &result {
                tracing::debug!(subscription = %checks.shared.name, endpoint, %failure, "health check failed");
            }
            if let Some(change) = checks.sink.on_check(endpoint, result.is_ok(), now_ms()) {
                checks.shared.endpoint_changed(&checks.sink, &change);
            }
            let passes = &mut passes_in_pause[endpoint];
            *passes = if paused_by_keel && result.is_ok() {
                *passes + 1
            } else {
                0
            };
        }
        let passed = passes_in_pause
            .iter()
            .position(|&passes| passes >= checks.policy.healthy_threshold);
        if let Some(endpoint) = passed {
            resume(&checks, endpoint).await;
            passes_in_pause.fill(0);
        }
    }
}

/// Resumes the subscription keel paused, since `endpoint` passed its checks, with a notice.
async fn resume(checks: &HealthChecks, endpoint: usize) {
    let shared = &checks.shared;
    let url = crate::webhook::redacted_url(&checks.probes[endpoint]);
    let why = format!(
        "the health check {url} passed {} times in a row",
        checks.policy.healthy_threshold
    );
    if let Err(error) = shared.resume_keels_pause(why).await {
        tracing::warn!(subscription = %shared.name, %error, "could not resume the subscription keel paused");
    }
}
