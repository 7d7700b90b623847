//! What the binary's integration tests share besides the test kit: the `keel` binary they
//! run, and reads of whole partitions over the HTTP API.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code, unreachable_pub)]

use keel_testkit::process::KeelBinary;
use serde_json::Value;

/// The `keel` binary cargo built for these tests.
pub const KEEL: KeelBinary = KeelBinary::new(env!("CARGO_BIN_EXE_keel"));

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
