//! The publisher against a real server: batching answers each event its own position, ids
//! are given before the first attempt, a retry after a lost answer reuses them (so nothing is
//! stored twice), and an error that will not pass is not retried.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keel_api::topics::TopicSettings;
use keel_client::{ClientError, EventIds, Publisher, StatusCode};
use keel_testkit::server::TestServer;
use serde_json::json;
use support::{LosingProxy, client, event};

async fn server_with_topic(partitions: u32) -> TestServer {
    let server = TestServer::start_in_temp_dir().await;
    let settings = TopicSettings {
        partitions: Some(partitions),
        ..TopicSettings::default()
    };
    client(&server.url)
        .create_topic("orders", &settings)
        .await
        .unwrap();
    server
}

/// The ids of every event stored in `orders`, one entry per stored record.
async fn stored_ids(server: &TestServer, partitions: u32) -> Vec<String> {
    let client = client(&server.url);
    let mut ids = Vec::new();
    for partition in 0..partitions {
        let answer = client
            .read("orders", partition, 0, 1000, None)
            .await
            .unwrap();
        for record in answer.value().records {
            let event: serde_json::Value = serde_json::from_str(record.event.get()).unwrap();
            ids.push(event["id"].as_str().unwrap().to_owned());
        }
    }
    ids
}

// Goal: events sent together go out in batches and each caller gets its own event's
// position; events without an id get one before sending, and keep it. Method: queue 250
// events (half with ids) with a small batch bound, await every receipt, read the topic back.
#[tokio::test]
async fn batches_answer_each_event_with_its_position() {
    let server = server_with_topic(3).await;
    let publisher = Publisher::builder(client(&server.url), "orders")
        .batch_events_max(40)
        .ids(EventIds::with_prefix("gen".to_owned()))
        .start();
    let mut receipts = Vec::new();
    for n in 0..250 {
        let id = format!("own-{n}");
        let id = (n % 2 == 0).then_some(id.as_str());
        let key = format!("k{}", n % 7);
        let receipt = publisher
            .send(event(id, json!({"partitionkey": key, "data": {"n": n}})))
            .await
            .unwrap();
        receipts.push(receipt);
    }
    let mut positions = BTreeSet::new();
    for (n, receipt) in receipts.into_iter().enumerate() {
        let id = receipt.id().to_owned();
        let result = receipt.await.unwrap();
        assert_eq!(result.id, id);
        if n % 2 == 0 {
            assert_eq!(id, format!("own-{n}"));
        } else {
            assert!(id.starts_with("gen-"), "{id}");
        }
        assert!(!result.duplicate);
        assert!(
            positions.insert((result.partition, result.offset)),
            "{result:?}"
        );
    }
    publisher.close().await;
    let stored = stored_ids(&server, 3).await;
    assert_eq!(stored.len(), 250);
    assert_eq!(stored.iter().collect::<BTreeSet<_>>().len(), 250);
}

// Goal: a batch whose answer is lost after the server stored it is retried with the same ids,
// and keel's dedupe answers the original positions instead of storing the events again.
// Method: publish through a proxy that forwards the first request and drops its answer; the
// events have no ids of their own, so only the publisher's id reuse prevents duplicates.
#[tokio::test]
async fn retry_after_a_lost_answer_reuses_ids_and_stores_nothing_twice() {
    let server = server_with_topic(1).await;
    let proxy = LosingProxy::start(&server.url).await;
    let publisher = Publisher::builder(client(&proxy.url), "orders")
        .linger(Duration::from_millis(50))
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .start();
    let mut receipts = Vec::new();
    for n in 0..20 {
        receipts.push(
            publisher
                .send(event(None, json!({"data": n})))
                .await
                .unwrap(),
        );
    }
    let mut results = Vec::new();
    for receipt in receipts {
        results.push(receipt.await.unwrap());
    }
    publisher.close().await;
    assert!(
        proxy.connections.load(Ordering::SeqCst) >= 2,
        "a retry was made"
    );
    assert!(
        results.iter().all(|result| result.duplicate),
        "the retry found every event stored by the lost attempt: {results:?}"
    );
    let stored = stored_ids(&server, 1).await;
    assert_eq!(stored.len(), 20, "nothing stored twice");
    let answered: Vec<String> = results.into_iter().map(|result| result.id).collect();
    assert_eq!(stored, answered);
}

// Goal: an answer that will not change by retrying (404: no such topic) ends the batch at
// once and reaches every caller; a non-object is refused before it is queued.
#[tokio::test]
async fn permanent_errors_are_not_retried() {
    let server = TestServer::start_in_temp_dir().await;
    let publisher = Publisher::builder(client(&server.url), "missing")
        .attempts_max(50)
        .backoff(Duration::from_secs(1), Duration::from_secs(1))
        .start();
    let started = std::time::Instant::now();
    let error = publisher.publish(event(None, json!({}))).await.unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::NOT_FOUND), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no backoff was waited"
    );
    let refused = publisher.send(json!([1, 2])).await.unwrap_err();
    assert!(
        matches!(refused, ClientError::InvalidEvent { .. }),
        "{refused}"
    );
    publisher.close().await;
}
