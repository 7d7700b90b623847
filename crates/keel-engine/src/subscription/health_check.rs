//! Active health checks of a push subscription's endpoints: every `interval`, a `GET` of each
//! endpoint's health path (its scheme, host and port with the policy's `path`); a 2xx answer
//! within `timeout` passes, anything else fails. The results go to the endpoint group
//! (`endpoints.rs`), which flips an endpoint's health after its thresholds in a row.

use std::sync::Arc;

use keel_api::subscriptions::HealthCheckPolicy;

use super::Shared;
use super::sink::PushSink;
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
        HealthChecks {
            shared,
            sink,
            probes,
            policy,
            client: PushClient::with_idle_connections(1),
        }
    }
}

/// Checks every endpoint every `interval` until the task is stopped (aborted). The probes
/// of one round run at once, so a hanging endpoint delays no other's check.
pub(super) async fn run(checks: Arc<HealthChecks>) {
    let mut ticker = tokio::time::interval(checks.policy.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
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
            if let Some(change) = checks.sink.on_check(endpoint, result.is_ok()) {
                checks.shared.endpoint_changed(&checks.sink, &change);
            }
        }
    }
}
