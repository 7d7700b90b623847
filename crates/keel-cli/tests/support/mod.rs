//! What the binary's integration tests share: the `keel` binary they run, GETs of the HTTP
//! API, the Python examples they run ([`example`]), and (from the test kit) reads of whole
//! partitions and topics, publishes retried across restarts, and the run's seed.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod example;

use keel_testkit::process::KeelBinary;
use serde_json::Value;

/// The `keel` binary cargo built for these tests.
pub const KEEL: KeelBinary = KeelBinary::new(env!("CARGO_BIN_EXE_keel"));

pub use keel_testkit::api::{
    publish_until_acknowledged, read_partition, read_partition_from, read_topic,
};
pub use keel_testkit::random::seed;

/// A GET: its status and its body as JSON (a JSON string when the body is not JSON).
pub async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Publishes one event in the structured mode: the status and the answer as JSON.
pub async fn publish_event(
    client: &reqwest::Client,
    url: &str,
    topic: &str,
    event: &Value,
) -> (u16, Value) {
    let response = client
        .post(format!("{url}/v1/topics/{topic}/events"))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}
