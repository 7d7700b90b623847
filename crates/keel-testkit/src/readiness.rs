//! Waiting for a starting keel to finish recovery, for both harnesses.

use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a starting keel may take to answer `/readyz` with 200 (or "damaged"); generous
/// because the test machine is shared and tests run in parallel.
pub(crate) const READY_WAIT: Duration = Duration::from_secs(30);

/// Pause between two `/readyz` polls.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How recovery ended.
pub(crate) enum Readiness {
    /// `/readyz` answered 200: ready, or degraded with some partitions refusing service.
    Ready,
    /// `/readyz` says the data directory is damaged (it stays 503): this body.
    Damaged(String),
}

/// Polls `{url}/readyz` until recovery ends; `None` if it has not after [`READY_WAIT`].
pub(crate) async fn wait_ready(client: &reqwest::Client, url: &str) -> Option<Readiness> {
    let deadline = Instant::now() + READY_WAIT;
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{url}/readyz")).send().await {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if status == 200 {
                return Some(Readiness::Ready);
            }
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if body["status"] == "damaged" {
                return Some(Readiness::Damaged(text));
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    None
}
