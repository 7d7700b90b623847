//! What the binary's integration tests share besides the test kit: the `keel` binary they
//! run, reads of whole partitions over the HTTP API, and the Python examples they run
//! ([`example`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code, unreachable_pub)]

pub mod example;

use std::time::{Duration, Instant};

use keel_testkit::process::KeelBinary;
use serde_json::Value;

/// The `keel` binary cargo built for these tests.
pub const KEEL: KeelBinary = KeelBinary::new(env!("CARGO_BIN_EXE_keel"));

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

/// Every event of a topic, over all its partitions.
pub async fn read_topic(client: &reqwest::Client, url: &str, topic: &str) -> Vec<Value> {
    let (status, info) = get(client, &format!("{url}/v1/topics/{topic}")).await;
    assert_eq!(status, 200, "{info}");
    let partitions = info["partitions"].as_array().unwrap().len() as u32;
    let mut events = Vec::new();
    for partition in 0..partitions {
        let records = read_partition(client, url, topic, partition).await;
        events.extend(records.into_iter().map(|r| r["event"].clone()));
    }
    events
}

/// Reads a whole partition from offset 0.
pub async fn read_partition(
    client: &reqwest::Client,
    url: &str,
    topic: &str,
    partition: u32,
) -> Vec<Value> {
    let (start, records) = read_partition_from(client, url, topic, partition, 0).await;
    assert_eq!(
        start, 0,
        "{topic}/{partition} starts at offset {start}, not 0"
    );
    records
}

/// Reads a partition from offset `from` to its end. Retention may move the partition's start
/// above the offset read (the read answers 404 naming the new start): the read then starts
/// again from there (everything read so far is below it). Returns the offset the records
/// start at and the records.
pub async fn read_partition_from(
    client: &reqwest::Client,
    url: &str,
    topic: &str,
    partition: u32,
    from: u64,
) -> (u64, Vec<Value>) {
    let (mut start, mut from) = (from, from);
    let mut records: Vec<Value> = Vec::new();
    loop {
        let response = client
            .get(format!(
                "{url}/v1/topics/{topic}/partitions/{partition}/events?from={from}&max=1000"
            ))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("read answered {text}"));
        if status == 404
            && let Some(moved) = body["start_offset"].as_u64()
        {
            (start, from) = (moved, moved);
            records.clear();
            continue;
        }
        let batch = body["records"]
            .as_array()
            .unwrap_or_else(|| panic!("read answered {text}"))
            .clone();
        if batch.is_empty() {
            return (start, records);
        }
        from = body["next_offset"].as_u64().unwrap();
        records.extend(batch);
    }
}

/// The run's seed: `KEEL_TEST_SEED`, or the clock. Printed so a failing run can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("KEEL_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.unwrap().as_nanos() as u64
        });
    eprintln!("{test}: seed {seed} (KEEL_TEST_SEED={seed} replays it)");
    seed
}

/// Publishes a batch, retrying until it is acknowledged (a restart in between is fine: dedupe
/// returns the original positions of events stored before a crash). Returns the results.
pub async fn publish_until_acknowledged(
    client: &reqwest::Client,
    url: &str,
    topic: &str,
    events: &[Value],
) -> Vec<Value> {
    let body = Value::Array(events.to_vec()).to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = client
            .post(format!("{url}/v1/topics/{topic}/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(body.clone())
            .send()
            .await;
        let last = match response {
            Ok(response) if response.status() == 200 => match response.text().await {
                Ok(text) => {
                    let answer: Value = serde_json::from_str(&text).unwrap();
                    return answer["results"].as_array().unwrap().clone();
                }
                Err(error) => error.to_string(),
            },
            Ok(response) => format!("status {}", response.status()),
            Err(error) => error.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "publish not acknowledged within 30 s; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
