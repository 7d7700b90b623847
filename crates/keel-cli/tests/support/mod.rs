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

/// A PUT of `body` to the API path `path` (a topic or a subscription) of the server at `url`;
/// fails the test unless it succeeds.
pub async fn put(client: &reqwest::Client, url: &str, path: &str, body: Value) {
    let response = client
        .put(format!("{url}{path}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "PUT {path}: {status} {text}");
}

/// Publishes one batch to `topic`: the events `e-{id}` for each id, keyed `k-{id % keys}`,
/// with `{"n": id}` as data; fails the test unless all are acknowledged.
pub async fn publish_batch(
    client: &reqwest::Client,
    url: &str,
    topic: &str,
    ids: std::ops::Range<usize>,
    keys: usize,
) {
    let batch: Vec<Value> = ids
        .map(|id| {
            serde_json::json!({"specversion": "1.0", "id": format!("e-{id}"), "source": "/test",
                "type": "t", "partitionkey": format!("k-{}", id % keys), "data": {"n": id}})
        })
        .collect();
    let response = client
        .post(format!("{url}/v1/topics/{topic}/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::Array(batch).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Posts `events` to `topic` in one batch (batched content mode), whatever the answer.
pub async fn post_batch(
    client: &reqwest::Client,
    url: &str,
    topic: &str,
    events: Vec<Value>,
) -> reqwest::Response {
    client
        .post(format!("{url}/v1/topics/{topic}/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::Array(events).to_string())
        .send()
        .await
        .unwrap()
}

/// Runs `fiu-ctrl -c COMMAND PID`: enables or disables a libfiu failure point in a process run
/// under `fiu-run -x`.
pub fn fiu_ctrl(pid: u32, command: &str) {
    let status = std::process::Command::new("fiu-ctrl")
        .args(["-c", command, &pid.to_string()])
        .status()
        .expect("fiu-ctrl runs");
    assert!(status.success(), "fiu-ctrl {command}");
}

/// Whether libfiu's `fiu-run` is missing, so a fault-injection test must be skipped: allowed
/// only with `KEEL_SKIP_FIU` set, otherwise the test fails saying what to install.
pub fn fiu_missing() -> bool {
    let missing = std::process::Command::new("fiu-run")
        .arg("-h")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_err();
    assert!(
        !missing || std::env::var("KEEL_SKIP_FIU").is_ok(),
        "fiu-run is missing: run scripts/install-test-deps.sh (or set KEEL_SKIP_FIU=1 to skip this test)"
    );
    missing
}

/// The notices on keel's `_keel.alerts` topic so far, as (type, subject) pairs in order.
pub async fn alert_notices(client: &reqwest::Client, url: &str) -> Vec<(String, String)> {
    let read_url = format!("{url}/v1/topics/_keel.alerts/partitions/0/events?from=0&max=100");
    let (status, read) = get(client, &read_url).await;
    assert_eq!(status, 200, "{read}");
    read["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| {
            let event = &record["event"];
            let kind = event["type"].as_str().unwrap().to_owned();
            (kind, event["subject"].as_str().unwrap().to_owned())
        })
        .collect()
}
