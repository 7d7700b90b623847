//! Calls on keel's HTTP API that tests of a keel in another process share: reading whole
//! partitions, and publishing across restarts until a publish is acknowledged.

use std::time::{Duration, Instant};

use serde_json::Value;

/// How long [`publish_until_acknowledged`] keeps trying.
const PUBLISH_WAIT: Duration = Duration::from_secs(30);

/// Pause between two attempts of a publish.
const PUBLISH_RETRY_PAUSE: Duration = Duration::from_millis(20);

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

/// Every event of a topic (the records' `event`s), partition after partition.
pub async fn read_topic(client: &reqwest::Client, url: &str, topic: &str) -> Vec<Value> {
    let response = client
        .get(format!("{url}/v1/topics/{topic}"))
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    let info: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let partitions = info["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("describe {topic} answered {text}"))
        .len() as u32;
    let mut events = Vec::new();
    for partition in 0..partitions {
        let records = read_partition(client, url, topic, partition).await;
        events.extend(records.into_iter().map(|record| record["event"].clone()));
    }
    events
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
    let deadline = Instant::now() + PUBLISH_WAIT;
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
            "publish not acknowledged within {PUBLISH_WAIT:?}; last: {last}"
        );
        tokio::time::sleep(PUBLISH_RETRY_PAUSE).await;
    }
}
