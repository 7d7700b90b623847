//! In-process handlers on a real data directory: the contract of push and pull (ack, retry
//! with backoff, dead-letter), a panicking or hanging handler counted as a failure while the
//! other keys flow, typed stateful handlers with emitted events, and a stop that drains the
//! calls in flight.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keel_engine::handler::{Delivered, Handled, HandlerError, Next, handler_fn, stateful_fn};
use keel_engine::{Engine, EngineConfig, TopicConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(20);

async fn engine_with(dir: &tempfile::TempDir, topics: &[&str]) -> Engine {
    let engine = Engine::open(EngineConfig::new(dir.path())).await.unwrap();
    for topic in topics {
        let config = TopicConfig {
            partitions: 2,
            ..TopicConfig::default()
        };
        engine.create_topic(topic, config).await.unwrap();
    }
    engine
}

/// An engine with topic `orders` and a subscription `name` to it from the earliest event.
async fn engine_with_subscription(dir: &tempfile::TempDir, name: &str) -> Engine {
    let engine = engine_with(dir, &["orders"]).await;
    let spec = json!({"topic": "orders", "start": "earliest"});
    subscribe(&engine, name, spec).await;
    engine
}

async fn subscribe(engine: &Engine, name: &str, spec: serde_json::Value) {
    let spec = serde_json::from_value(spec).unwrap();
    engine.create_subscription(name, spec).await.unwrap();
}

async fn publish(engine: &Engine, topic: &str, id: &str, key: &str, data: serde_json::Value) {
    let event = json!({"specversion": "1.0", "id": id, "source": "/test", "type": "t",
        "partitionkey": key, "data": data});
    let event = keel_engine::event::from_value(event).unwrap();
    engine.publish(topic, vec![event]).await.unwrap();
}

/// Waits until `done` holds for the subscription's description.
async fn wait_until(
    engine: &Engine,
    name: &str,
    what: &str,
    done: impl Fn(&keel_engine::subscription::SubscriptionInfo) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = engine.describe_subscription(name).unwrap();
        if done(&info) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Goal: `Ok` acks, a retryable error is retried, a permanent one dead-letters at once, and a
// panic or a call past the ack timeout counts as a failed attempt (dead-lettered after the
// last), while the other keys keep flowing. Method: one handler whose behaviour is chosen by
// the event's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_results_ack_retry_dead_letter_and_panics_are_failures() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(&dir, &["orders"]).await;
    subscribe(
        &engine,
        "work",
        json!({"topic": "orders", "start": "earliest", "ordering": "key", "ack_timeout": "300ms",
            "retry": {"max_attempts": 3, "initial": "10ms", "max": "50ms"}}),
    )
    .await;
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let attached = engine
        .attach(
            "work",
            handler_fn(move |event: Delivered| {
                let counter = counter.clone();
                async move {
                    match event.key().as_deref() {
                        Some("flaky") if event.attempt() == 1 => {
                            Err(HandlerError::retry("not yet"))
                        }
                        Some("bad") => Err(HandlerError::permanent("invalid order")),
                        Some("panics") => panic!("the handler broke on {}", event.id()),
                        Some("hangs") => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            Ok(Handled::ack())
                        }
                        _ => {
                            counter.fetch_add(1, Ordering::SeqCst);
                            Ok(Handled::ack())
                        }
                    }
                }
            }),
        )
        .unwrap();
    for key in ["hangs", "panics", "bad", "flaky"] {
        publish(&engine, "orders", key, key, json!({})).await;
    }
    for n in 0..20 {
        publish(
            &engine,
            "orders",
            &format!("ok-{n}"),
            &format!("k{n}"),
            json!({}),
        )
        .await;
    }
    // The good keys flow while `hangs` holds its own key.
    let deadline = Instant::now() + PATIENCE;
    while handled.load(Ordering::SeqCst) < 21 {
        assert!(Instant::now() < deadline, "good keys stuck at {handled:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until(&engine, "work", "drained", |info| {
        info.lag == 0 && info.in_flight == 0 && info.dlq_depth == 3
    })
    .await;
    let (entries, _) = engine.dlq_list("work", None, 10).await.unwrap();
    let error_of = |id: &str| {
        let entry = entries
            .iter()
            .find(|entry| entry.event.get().contains(&format!("\"id\":\"{id}\"")))
            .unwrap_or_else(|| panic!("{id} dead-lettered: {entries:?}"));
        (entry.attempts, entry.last_error.clone().unwrap_or_default())
    };
    let (attempts, error) = error_of("bad");
    assert_eq!(attempts, 1, "a permanent error dead-letters at once");
    assert!(error.contains("invalid order"), "{error}");
    let (attempts, error) = error_of("panics");
    assert_eq!(attempts, 3, "a panic is a failed attempt, retried");
    assert!(
        error.contains("panicked") && error.contains("broke on panics"),
        "{error}"
    );
    let (attempts, error) = error_of("hangs");
    assert_eq!(attempts, 3);
    assert!(error.contains("ack_timeout"), "{error}");
    attached.stop().await;
}

#[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
struct Balance {
    total: i64,
    deposits: u32,
}

// Goal: a stateful handler gets its key's state typed, and its next state and emitted events
// are committed with the ack. Method: deposits over two accounts; the balances and receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_handlers_keep_typed_state_and_emit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(&dir, &["deposits", "receipts"]).await;
    subscribe(
        &engine,
        "ledger",
        json!({"topic": "deposits", "start": "earliest", "ordering": "key", "stateful": true}),
    )
    .await;
    let attached = engine
        .attach(
            "ledger",
            stateful_fn(|event: Delivered, balance: Option<Balance>| async move {
                let amount = event.data::<serde_json::Value>()?["amount"]
                    .as_i64()
                    .ok_or_else(|| HandlerError::permanent("no amount"))?;
                let before = balance.unwrap_or_default();
                let after = Balance {
                    total: before.total + amount,
                    deposits: before.deposits + 1,
                };
                let receipt = json!({"specversion": "1.0", "source": "/ledger", "type": "receipt",
                    "data": {"deposit": event.id(), "total": after.total}});
                Ok(Next::state(after).emit("receipts", receipt))
            }),
        )
        .unwrap();
    let amounts = [5, 7, 11, 13, 17, 19];
    for (n, amount) in amounts.iter().enumerate() {
        let account = if n % 2 == 0 { "a" } else { "b" };
        publish(
            &engine,
            "deposits",
            &format!("d{n}"),
            account,
            json!({"amount": amount}),
        )
        .await;
    }
    wait_until(&engine, "ledger", "drained", |info| {
        info.lag == 0 && info.in_flight == 0
    })
    .await;
    for (account, total) in [("a", 5 + 11 + 17), ("b", 7 + 13 + 19)] {
        let stored = engine.key_state("ledger", account).await.unwrap();
        let balance: Balance = serde_json::from_str(stored.state.get()).unwrap();
        assert_eq!(balance, Balance { total, deposits: 3 });
        assert_eq!(stored.version, 3);
    }
    let mut receipts = 0;
    for partition in 0..2 {
        let batch = engine
            .read("receipts", partition, Some(0), 100, Duration::ZERO)
            .await
            .unwrap();
        receipts += batch.records.len();
    }
    assert_eq!(receipts, amounts.len(), "one receipt per deposit");
    attached.stop().await;
}

// Goal: stopping a handler (and shutting the engine down) drains the calls in flight: each
// call that started is finished and settled, none cut off. Method: slow calls, stop at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_drains_calls_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_subscription(&dir, "slow").await;
    let (started, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (started_count, finished_count) = (started.clone(), finished.clone());
    let attached = engine
        .attach(
            "slow",
            handler_fn(move |_event: Delivered| {
                let (started, finished) = (started_count.clone(), finished_count.clone());
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    finished.fetch_add(1, Ordering::SeqCst);
                    Ok(Handled::ack())
                }
            }),
        )
        .unwrap();
    for n in 0..5 {
        publish(
            &engine,
            "orders",
            &format!("e{n}"),
            &format!("k{n}"),
            json!({}),
        )
        .await;
    }
    let deadline = Instant::now() + PATIENCE;
    while started.load(Ordering::SeqCst) < 5 {
        assert!(Instant::now() < deadline, "calls never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    attached.stop().await;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        5,
        "stop waited for every call"
    );
    let info = engine.describe_subscription("slow").unwrap();
    assert_eq!((info.in_flight, info.lag), (0, 0), "{info:?}");
    engine.shut_down().await;
}

// Goal: an in-process handler attached to a subscription keeps handling its events across an
// update of the subscription in place, and its handle still stops it afterwards. Method: a
// handler counting events; one event before the update, one after; then a stop, and one more
// event that nobody handles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_handler_moves_to_the_updated_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_subscription(&dir, "work").await;
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let attached = engine
        .attach(
            "work",
            handler_fn(move |_event: Delivered| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Ok(Handled::ack())
                }
            }),
        )
        .unwrap();
    publish(&engine, "orders", "before", "k", json!({})).await;
    wait_until(&engine, "work", "the first event handled", |info| {
        info.delivered == 1
    })
    .await;

    let updated = json!({"topic": "orders", "start": "earliest", "ack_timeout": "1m"});
    let updated = engine
        .create_subscription("work", serde_json::from_value(updated).unwrap())
        .await
        .unwrap();
    assert_eq!(updated.created, keel_engine::Created::Updated);
    assert_eq!(updated.changed, ["ack_timeout"]);
    publish(&engine, "orders", "after", "k", json!({})).await;
    wait_until(&engine, "work", "the second event handled", |info| {
        info.delivered == 1 && info.lag == 0
    })
    .await;
    assert_eq!(handled.load(Ordering::SeqCst), 2, "each event once");

    tokio::time::timeout(PATIENCE, attached.stop())
        .await
        .expect("the handle stops the handler after the update");
    publish(&engine, "orders", "stopped", "k", json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        handled.load(Ordering::SeqCst),
        2,
        "stopped: nothing more handled"
    );
    engine.shut_down().await;
}
