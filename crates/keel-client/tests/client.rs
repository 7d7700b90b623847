//! Every typed call of the client against a real server: topics, publish and read,
//! subscriptions, pull and settle, dead letters, per-key state, and the errors it maps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use keel_api::dead_letters::RedriveRequest;
use keel_api::state::{CommitOutcome, Emit, StatefulAck};
use keel_api::subscriptions::{NamedPosition, Ordering, StartPosition, SubscriptionSettings};
use keel_api::topics::TopicSettings;
use keel_client::{Client, ClientError, StatusCode};
use keel_testkit::server::TestServer;
use serde_json::value::to_raw_value;
use serde_json::{Value, json};
use support::{client, event};

fn settings(partitions: u32) -> TopicSettings {
    TopicSettings {
        partitions: Some(partitions),
        ..TopicSettings::default()
    }
}

fn pull_subscription(topic: &str) -> SubscriptionSettings {
    SubscriptionSettings {
        topic: topic.to_owned(),
        start: Some(StartPosition::Named(NamedPosition::Earliest)),
        ..SubscriptionSettings::default()
    }
}

/// Pulls until `count` messages came (they may come over several pulls); their ack ids and
/// events' ids.
async fn pull_n(client: &Client, name: &str, count: usize) -> Vec<(String, String, u32)> {
    let mut pulled = Vec::new();
    for _ in 0..50 {
        let answer = client
            .pull(
                name,
                Some(count - pulled.len()),
                Some(Duration::from_millis(200)),
            )
            .await
            .unwrap();
        for message in answer.value().messages {
            let event: Value = serde_json::from_str(message.event.get()).unwrap();
            let id = event["id"].as_str().unwrap().to_owned();
            pulled.push((message.ack_id.into_owned(), id, message.attempt));
        }
        if pulled.len() >= count {
            return pulled;
        }
    }
    panic!("only {} of {count} messages came", pulled.len());
}

// Goal: the topic calls round-trip: create (201, then 200 for the same), list, describe,
// a conflicting create and a missing topic as problems, delete.
#[tokio::test]
async fn topic_calls_round_trip() {
    let server = TestServer::start_in_temp_dir().await;
    let client = client(&server.url);
    let created = client.create_topic("orders", &settings(3)).await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.value().partitions.len(), 3);
    let again = client.create_topic("orders", &settings(3)).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let conflict = client
        .create_topic("orders", &settings(2))
        .await
        .unwrap_err();
    assert_eq!(conflict.status(), Some(StatusCode::CONFLICT), "{conflict}");
    assert!(!conflict.is_retryable());
    let names: Vec<String> = client
        .list_topics()
        .await
        .unwrap()
        .value()
        .topics
        .into_iter()
        .map(|topic| topic.name)
        .collect();
    assert_eq!(names, ["orders"]);
    let described = client.describe_topic("orders").await.unwrap().value();
    assert_eq!(described.dedupe_window, Duration::from_secs(120));
    client.delete_topic("orders", false).await.unwrap();
    let missing = client.describe_topic("orders").await.unwrap_err();
    let ClientError::Problem { status, detail, .. } = &missing else {
        panic!("a problem: {missing}");
    };
    assert_eq!(*status, StatusCode::NOT_FOUND);
    assert!(detail.as_deref().unwrap().contains("orders"), "{missing}");
    server.stop().await;
}

// Goal: publish (single and batch) answers positions, a repeat is a duplicate, and read
// gives the events back in order from an offset.
#[tokio::test]
async fn publish_and_read_round_trip() {
    let server = TestServer::start_in_temp_dir().await;
    let client = client(&server.url);
    client.create_topic("orders", &settings(1)).await.unwrap();
    let one = event(Some("a"), json!({"data": 1}));
    let first = client.publish("orders", &one).await.unwrap().value();
    assert_eq!(
        (first.results[0].offset, first.results[0].duplicate),
        (0, false)
    );
    let batch = [event(Some("b"), json!({})), event(Some("c"), json!({}))];
    let results = client
        .publish_batch("orders", &batch)
        .await
        .unwrap()
        .value();
    let offsets: Vec<u64> = results.results.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [1, 2]);
    let repeat = client.publish("orders", &one).await.unwrap().value();
    assert_eq!(
        (repeat.results[0].offset, repeat.results[0].duplicate),
        (0, true)
    );
    let read = client.read("orders", 0, 1, 10, None).await.unwrap();
    let records = read.value();
    let ids: Vec<Value> = records
        .records
        .iter()
        .map(|record| serde_json::from_str::<Value>(record.event.get()).unwrap()["id"].clone())
        .collect();
    assert_eq!(ids, [json!("b"), json!("c")]);
    assert_eq!(records.next_read_offset(1), 3);
    // A long poll at the end waits, then answers empty.
    let started = std::time::Instant::now();
    let empty = client
        .read("orders", 0, 3, 10, Some(Duration::from_millis(300)))
        .await;
    assert!(empty.unwrap().value().records.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
    server.stop().await;
}

// Goal: the subscription calls round-trip: create, list, describe, pause, resume, seek, and
// pull with ack, nack (redelivered) and reject (dead-lettered); then the dead-letter calls:
// list, show, redrive (delivered again), purge; and delete.
#[tokio::test]
async fn subscription_and_dead_letter_calls_round_trip() {
    let server = TestServer::start_in_temp_dir().await;
    let client = client(&server.url);
    client.create_topic("orders", &settings(1)).await.unwrap();
    let created = client
        .create_subscription("work", &pull_subscription("orders"))
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let listed = client.list_subscriptions().await.unwrap().value();
    assert_eq!(listed.subscriptions[0].name, "work");
    let paused = client.pause_subscription("work").await.unwrap().value();
    assert!(paused.paused.is_some());
    let resumed = client.resume_subscription("work").await.unwrap().value();
    assert!(resumed.paused.is_none());
    let events = [
        event(Some("a"), json!({})),
        event(Some("b"), json!({})),
        event(Some("c"), json!({})),
    ];
    client.publish_batch("orders", &events).await.unwrap();
    let pulled = pull_n(&client, "work", 3).await;
    let ack_id = |id: &str| pulled.iter().find(|p| p.1 == id).unwrap().0.clone();
    let acked = client.ack("work", vec![ack_id("a")]).await.unwrap().value();
    assert_eq!((acked.settled, acked.stale.len()), (1, 0));
    let nacked = client
        .nack("work", vec![ack_id("b")], Some(Duration::from_millis(10)))
        .await
        .unwrap();
    assert_eq!(nacked.value().settled, 1);
    client.reject("work", vec![ack_id("c")]).await.unwrap();
    let again = pull_n(&client, "work", 1).await;
    assert_eq!(
        (again[0].1.as_str(), again[0].2),
        ("b", 2),
        "nacked, then redelivered"
    );
    let stale = client.ack("work", vec![ack_id("a")]).await.unwrap().value();
    assert_eq!(stale.stale, [ack_id("a")], "a second ack is stale");
    client.ack("work", vec![again[0].0.clone()]).await.unwrap();
    // Dead letters: c is there; show it, redrive it, get it again, then reject and purge.
    let page = client
        .list_dead_letters("work", Some(10), None)
        .await
        .unwrap();
    let entry_id = page.value().entries[0].id.to_string();
    let shown = client.show_dead_letter("work", &entry_id).await.unwrap();
    let event: Value = serde_json::from_str(shown.value().event.get()).unwrap();
    assert_eq!(event["id"], "c");
    let request = RedriveRequest {
        ids: Some(vec![entry_id]),
        all: false,
    };
    let redriven = client.redrive_dead_letters("work", &request).await.unwrap();
    assert_eq!(redriven.value().redriven, 1);
    let back = pull_n(&client, "work", 1).await;
    assert_eq!(back[0].1, "c");
    client
        .reject("work", vec![back[0].0.clone()])
        .await
        .unwrap();
    let purged = client.purge_dead_letters("work").await.unwrap().value();
    assert!(purged.purged >= 1, "{purged:?}");
    let sought = client
        .seek_subscription("work", StartPosition::Named(NamedPosition::Earliest))
        .await
        .unwrap()
        .value();
    assert_eq!(sought.lag, 3, "sought back to the start: {sought:?}");
    let redelivered = pull_n(&client, "work", 3).await;
    let ids: Vec<&str> = redelivered.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let described = client.describe_subscription("work").await.unwrap().value();
    assert_eq!(described.in_flight, 3, "{described:?}");
    client.delete_subscription("work").await.unwrap();
    let gone = client.describe_subscription("work").await.unwrap_err();
    assert_eq!(gone.status(), Some(StatusCode::NOT_FOUND));
    server.stop().await;
}

// Goal: a stateful ack commits the key's state and an emitted event, its result says
// applied, and the state reads back by key and in the listing.
#[tokio::test]
async fn stateful_ack_and_state_calls_round_trip() {
    let server = TestServer::start_in_temp_dir().await;
    let client = client(&server.url);
    client.create_topic("orders", &settings(1)).await.unwrap();
    client.create_topic("receipts", &settings(1)).await.unwrap();
    let spec = SubscriptionSettings {
        ordering: Some(Ordering::Key),
        stateful: true,
        ..pull_subscription("orders")
    };
    client.create_subscription("ledger", &spec).await.unwrap();
    let deposit = event(
        Some("d1"),
        json!({"partitionkey": "alice", "data": {"amount": 5}}),
    );
    client.publish("orders", &deposit).await.unwrap();
    let answer = client
        .pull("ledger", Some(1), Some(Duration::from_secs(2)))
        .await
        .unwrap();
    let message = &answer.value().messages[0];
    // A key without state: `"state": null` (read as none) at version 0.
    assert_eq!(
        (message.state.map(|s| s.get()), message.state_version),
        (None, Some(0))
    );
    let receipt = json!({"specversion": "1.0", "source": "ledger", "type": "receipt",
        "data": {"balance": 5}});
    let ack = StatefulAck {
        ack_id: message.ack_id.to_string(),
        state: Some(to_raw_value(&json!({"balance": 5})).unwrap()),
        emit: vec![Emit {
            topic: "receipts".to_owned(),
            event: to_raw_value(&receipt).unwrap(),
        }],
    };
    let result = client
        .ack_stateful("ledger", vec![ack])
        .await
        .unwrap()
        .value();
    assert_eq!(result.results[0].outcome, CommitOutcome::Applied);
    assert_eq!(result.results[0].state_version, Some(1));
    let state = client.key_state("ledger", "alice").await.unwrap();
    assert_eq!(state.value().state.get(), r#"{"balance":5}"#);
    let listed = client.list_state("ledger", None, None).await.unwrap();
    assert_eq!(listed.value().keys[0].key, "alice");
    assert!(listed.value().next_after.is_none());
    let after = client
        .list_state("ledger", Some("alice"), Some(5))
        .await
        .unwrap();
    assert!(after.value().keys.is_empty());
    let emitted = client.read("receipts", 0, 0, 10, None).await.unwrap();
    assert_eq!(emitted.value().records.len(), 1);
    let missing = client.key_state("ledger", "bob").await.unwrap_err();
    assert_eq!(missing.status(), Some(StatusCode::NOT_FOUND));
    server.stop().await;
}

// Goal: a server that is not there is `Unreachable` (retryable), naming the server; a call
// that outlives the request timeout is a retryable `Timeout`.
#[tokio::test]
async fn unreachable_and_timeout_are_retryable_errors() {
    let address = format!("127.0.0.1:{}", keel_testkit::process::free_port());
    let error = client(&address).list_topics().await.unwrap_err();
    assert!(matches!(error, ClientError::Unreachable { .. }), "{error}");
    assert!(error.is_retryable());
    assert_eq!(
        error.to_string(),
        format!("cannot reach keel at {address} (is \"keel serve\" running?)")
    );
    let server = TestServer::start_in_temp_dir().await;
    // Created by a patient client: a loaded machine may take longer than the impatient
    // client's timeout to create a topic (an fsync or two).
    client(&server.url)
        .create_topic("orders", &settings(1))
        .await
        .unwrap();
    let impatient = Client::builder(&server.url)
        .request_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let slow = impatient
        .read("orders", 0, 0, 10, Some(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert!(matches!(slow, ClientError::Timeout { .. }), "{slow}");
    assert!(slow.is_retryable());
    server.stop().await;
}
