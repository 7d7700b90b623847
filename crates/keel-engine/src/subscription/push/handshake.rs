//! The CloudEvents webhook validation handshake of a sink with `handshake` (CloudEvents HTTP
//! webhook spec §4.1, abuse protection): before the dispatcher delivers anything, every
//! endpoint must answer an `OPTIONS` request carrying `WebHook-Request-Origin` with a 2xx and
//! `WebHook-Allowed-Origin` naming keel's origin (or `*`). Until each has, no event is sent,
//! describe's `handshake` says why, and the handshake is tried again with a growing wait.
//! Once passed, every delivery carries `Origin` (the spec's ask of a sender).
//!
//! The state is in memory: each start of the dispatcher (a restart of keel, an update of the
//! subscription) does the handshake again, so a sink that withdrew its agreement is asked.

use std::time::Duration;

use super::super::delivery::Deliveries;
use super::super::sink::PushSink;
use crate::clock::{format_rfc3339_ms, now_ms};
use crate::webhook::{PushClient, redacted_url};

/// The wait after the first refused handshake; it doubles after each refusal in a row.
const RETRY_WAIT_INITIAL: Duration = Duration::from_secs(1);
/// The longest wait between handshakes.
const RETRY_WAIT_MAX: Duration = Duration::from_secs(60);

/// Does the handshake with every endpoint until all agree; returns the client to deliver
/// with (carrying `Origin`), or none when the subscription stops first.
pub(super) async fn until_agreed(
    deliveries: &Deliveries,
    sink: &PushSink,
    client: PushClient,
) -> Option<PushClient> {
    let sinks = deliveries.sinks();
    let origin = sinks.origin().to_owned();
    let mut stopping = deliveries.stopping();
    let mut wait = RETRY_WAIT_INITIAL;
    deliveries.set_handshake(format!(
        "pending: the validation handshake (origin {origin:?}) is under way; no event is delivered until the sink agrees"
    ));
    loop {
        let refusal = tokio::select! {
            refusal = first_refusal(deliveries, sink, &client, &origin) => refusal,
            _ = stopping.wait_for(|stopping| *stopping) => return None,
        };
        let Some(refusal) = refusal else {
            let passed = format_rfc3339_ms(now_ms());
            deliveries.set_handshake(format!("passed at {passed} (origin {origin:?})"));
            return Some(client.with_origin(sinks.origin_header()));
        };
        let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        let next = format_rfc3339_ms(now_ms().saturating_add(wait_ms));
        deliveries.set_handshake(format!(
            "no event is delivered until the sink agrees: {refusal}; next try at {next}"
        ));
        tracing::warn!(subscription = %deliveries.name(), %refusal, "the sink refused the validation handshake; delivery waits");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopping.wait_for(|stopping| *stopping) => return None,
        }
        wait = (wait * 2).min(RETRY_WAIT_MAX);
    }
}

/// The first endpoint that does not agree, and why; none when all do.
async fn first_refusal(
    deliveries: &Deliveries,
    sink: &PushSink,
    client: &PushClient,
    origin: &str,
) -> Option<String> {
    let spec = deliveries.spec();
    let rate_per_minute = spec.rate_limit.map(|per_second| u64::from(per_second) * 60);
    for url in sink.urls() {
        let answer = client
            .handshake(url, origin, rate_per_minute, spec.ack_timeout)
            .await;
        if let Err(reason) = answer {
            return Some(format!("{}: {reason}", redacted_url(url)));
        }
    }
    None
}
