//! The publish queue's high-water mark over HTTP, against a real server on a real socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use keel_engine::pressure::PressureConfig;
use keel_server::ServerConfig;
use keel_testkit::api::read_topic;
use keel_testkit::server::TestServer;
use reqwest::Method;
use serde_json::{Value, json};
use support::{BATCH, assert_problem, event};

/// Concurrent publishers per round.
const PUBLISHERS: usize = 16;
/// Rounds before the test gives up waiting for a refusal.
const ROUNDS_MAX: usize = 50;

// Invariant: past the high-water mark a publish answers 429 with `Retry-After` and a
// problem naming the setting, and stores nothing; every publish answered 200 is stored;
// each refusal is counted in `keel_publish_refused_total{reason="overloaded"}`.
// Method: a mark of one byte (so only one publish at a time is admitted), rounds of
// concurrent batch publishes until some are refused, then a read of the whole topic.
#[tokio::test]
async fn publish_past_the_high_water_mark_is_refused_with_retry_after_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(
        TestServer::start_with(ServerConfig {
            data_dir: dir.path().to_owned(),
            backpressure: PressureConfig {
                publish_queue_bytes_max: 1,
                disk_free_bytes_min: 0,
                ..PressureConfig::default()
            },
            ..ServerConfig::default()
        })
        .await,
    );
    assert_eq!(server.put_topic("t", json!({"partitions": 2})).await.0, 201);
    let (mut acked, mut refused) = (HashSet::new(), HashSet::new());
    for round in 0..ROUNDS_MAX {
        let publishes = (0..PUBLISHERS).map(|publisher| {
            let server = server.clone();
            tokio::spawn(async move {
                let ids: Vec<String> = (0..20)
                    .map(|n| format!("{round}-{publisher}-{n}"))
                    .collect();
                let events: Vec<Value> = ids.iter().map(|id| event(id, json!({}))).collect();
                let body = Value::Array(events).to_string();
                let path = "/v1/topics/t/events";
                let answer = server.request(Method::POST, path, Some(BATCH), body).await;
                (ids, answer)
            })
        });
        for publish in publishes.collect::<Vec<_>>() {
            let (ids, (status, body, headers)) = publish.await.unwrap();
            if status == 200 {
                acked.extend(ids);
                continue;
            }
            assert_problem(status, &body, 429, "publish_queue_bytes_max", "refused");
            assert_eq!(headers["retry-after"], "1", "{body}");
            assert_eq!(headers["content-type"], "application/problem+json");
            refused.extend(ids);
        }
        if !refused.is_empty() && round > 0 {
            break;
        }
    }
    assert!(!refused.is_empty(), "{ROUNDS_MAX} rounds without a 429");
    let stored: HashSet<String> = read_topic(&server.client, &server.url, "t")
        .await
        .iter()
        .map(|event| event["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored, acked, "exactly the acknowledged events are stored");
    let (_, metrics) = server.get("/metrics").await;
    let metrics = metrics.as_str().unwrap();
    let sample = "keel_publish_refused_total{reason=\"overloaded\"} ";
    let counted = metrics.lines().find_map(|line| line.strip_prefix(sample));
    assert_eq!(counted, Some((refused.len() / 20).to_string().as_str()));
    assert!(
        metrics.contains("keel_publish_queued_bytes 0\n"),
        "answered: none queued"
    );
}
