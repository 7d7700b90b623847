//! The pull consumer against a real server: bounded concurrency, handler errors and panics
//! nacked and redelivered, rejects dead-lettered, a graceful shutdown that settles what ran,
//! and per-key state kept through stateful acks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_api::subscriptions::{NamedPosition, Ordering, StartPosition, SubscriptionSettings};
use keel_api::topics::TopicSettings;
use keel_client::{Client, Consumer, ConsumerBuilder, Message, Outcome};
use keel_testkit::server::TestServer;
use serde_json::{Value, json};
use support::{client, event, wait_until};

/// A server with topic `orders` (`partitions`) and a pull subscription `work` on it from the
/// earliest event, with `ordering` and `stateful` as given.
async fn setup(partitions: u32, ordering: Ordering, stateful: bool) -> (TestServer, Client) {
    let server = TestServer::start_in_temp_dir().await;
    let client = client(&server.url);
    let topic = TopicSettings {
        partitions: Some(partitions),
        ..TopicSettings::default()
    };
    client.create_topic("orders", &topic).await.unwrap();
    let subscription = SubscriptionSettings {
        topic: "orders".to_owned(),
        start: Some(StartPosition::Named(NamedPosition::Earliest)),
        ordering: Some(ordering),
        stateful,
        ..SubscriptionSettings::default()
    };
    client
        .create_subscription("work", &subscription)
        .await
        .unwrap();
    (server, client)
}

/// Publishes events `0..count` with `data` = `{"n": n}` and key `k{n % keys}`.
async fn publish(client: &Client, count: usize, keys: usize) {
    let events: Vec<Value> = (0..count)
        .map(|n| {
            let id = format!("e{n}");
            event(
                Some(&id),
                json!({"partitionkey": format!("k{}", n % keys), "data": {"n": n}}),
            )
        })
        .collect();
    client.publish_batch("orders", &events).await.unwrap();
}

fn consumer(client: &Client) -> ConsumerBuilder {
    Consumer::builder(client.clone(), "work")
        .pull_wait(Duration::from_millis(200))
        .retry_delay(Duration::from_millis(20), Duration::from_millis(100))
}

/// The `n` of an event's data.
fn number(message: &Message) -> u64 {
    let event: Value = message.event().unwrap();
    event["data"]["n"].as_u64().unwrap()
}

// Goal: no more handlers run at once than the bound, yet they do run in parallel, and every
// event is handled and acked. Method: 60 events, a bound of 4, handlers that sleep and track
// the most in flight at once.
#[tokio::test]
async fn handlers_run_in_parallel_within_the_bound() {
    let (server, client) = setup(2, Ordering::None, false).await;
    publish(&client, 60, 60).await;
    let running = Arc::new(AtomicUsize::new(0));
    let running_max = Arc::new(AtomicUsize::new(0));
    let (now, most) = (Arc::clone(&running), Arc::clone(&running_max));
    let consumer = consumer(&client)
        .concurrency(4)
        .start(move |_message: Message| {
            let (now, most) = (Arc::clone(&now), Arc::clone(&most));
            async move {
                let in_flight = now.fetch_add(1, AtomicOrdering::SeqCst) + 1;
                most.fetch_max(in_flight, AtomicOrdering::SeqCst);
                tokio::time::sleep(Duration::from_millis(15)).await;
                now.fetch_sub(1, AtomicOrdering::SeqCst);
                Ok(Outcome::Ack)
            }
        });
    wait_until("60 acks", async || consumer.stats().acked >= 60).await;
    let stats = consumer.shutdown().await;
    let most = running_max.load(AtomicOrdering::SeqCst);
    assert!(most <= 4, "{most} handlers ran at once");
    assert!(most >= 2, "handlers ran one at a time");
    assert_eq!((stats.handled, stats.acked, stats.failed), (60, 60, 0));
    let described = client.describe_subscription("work").await.unwrap().value();
    assert_eq!(
        (described.lag, described.in_flight),
        (0, 0),
        "{described:?}"
    );
    server.stop().await;
}

// Goal: a handler error and a handler panic each cost one attempt (the message comes back),
// and the loop goes on; a reject sends its event to the dead-letter queue at once.
// Method: 10 events; event 3 fails and event 5 panics on their first attempt, event 7 is
// rejected; the rest are acked.
#[tokio::test]
async fn errors_and_panics_are_retried_and_rejects_dead_lettered() {
    let (server, client) = setup(1, Ordering::None, false).await;
    publish(&client, 10, 10).await;
    let attempts: Arc<Mutex<BTreeMap<u64, Vec<u32>>>> = Arc::default();
    let seen = Arc::clone(&attempts);
    let consumer = consumer(&client)
        .concurrency(3)
        .start(move |message: Message| {
            let seen = Arc::clone(&seen);
            async move {
                let n = number(&message);
                let attempt = message.attempt();
                seen.lock().unwrap().entry(n).or_default().push(attempt);
                match (n, attempt) {
                    (3, 1) => Err("a failure the handler reports".into()),
                    (5, 1) => panic!("a handler bug"),
                    (7, _) => Ok(Outcome::Reject),
                    _ => Ok(Outcome::Ack),
                }
            }
        });
    wait_until("9 acks and a reject", async || {
        let stats = consumer.stats();
        stats.acked >= 9 && stats.rejected >= 1
    })
    .await;
    let stats = consumer.shutdown().await;
    assert_eq!((stats.failed, stats.panicked), (1, 1), "{stats:?}");
    assert_eq!(
        (stats.acked, stats.rejected, stats.nacked),
        (9, 1, 2),
        "{stats:?}"
    );
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(attempts[&3], [1, 2], "the failed event came back");
    assert_eq!(attempts[&5], [1, 2], "the panicked event came back");
    assert_eq!(attempts[&7], [1], "a reject is not retried");
    let dead = client.list_dead_letters("work", None, None).await.unwrap();
    let entries = dead.value().entries;
    assert_eq!(entries.len(), 1);
    let event: Value = serde_json::from_str(entries[0].event.get()).unwrap();
    assert_eq!(event["id"], "e7");
    server.stop().await;
}

// Goal: shutdown waits for the handlers that are running and sends their acks, so nothing
// they finished is delivered again. Method: slow handlers; shut down while they run, then
// check that every handled event was acked and nothing is left in flight.
#[tokio::test]
async fn shutdown_waits_for_running_handlers_and_flushes_acks() {
    let (server, client) = setup(1, Ordering::None, false).await;
    publish(&client, 20, 20).await;
    let started = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&started);
    let consumer = consumer(&client)
        .concurrency(5)
        .ack_linger(Duration::from_millis(500))
        .start(move |_message: Message| {
            let count = Arc::clone(&count);
            async move {
                count.fetch_add(1, AtomicOrdering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(Outcome::Ack)
            }
        });
    wait_until("5 handlers running", async || {
        started.load(AtomicOrdering::SeqCst) >= 5
    })
    .await;
    let stats = consumer.shutdown().await;
    assert!(stats.handled >= 5, "{stats:?}");
    assert_eq!(
        stats.acked, stats.handled,
        "every handled event acked: {stats:?}"
    );
    assert_eq!(started.load(AtomicOrdering::SeqCst) as u64, stats.handled);
    let described = client.describe_subscription("work").await.unwrap().value();
    assert_eq!(described.in_flight, 0, "{described:?}");
    assert_eq!(described.lag, 20 - stats.handled, "{described:?}");
    server.stop().await;
}

// Goal: a stateful consumer keeps a per-key counter across events through `AckWith`, reading
// the state each message carries. Method: 30 events over 3 keys on a stateful, key-ordered
// subscription; each handler adds one to its key's count; read the states back.
#[tokio::test]
async fn stateful_consumer_keeps_a_count_per_key() {
    #[derive(serde::Serialize, serde::Deserialize, Default)]
    struct Count {
        count: u64,
    }
    let (server, client) = setup(2, Ordering::Key, true).await;
    publish(&client, 30, 3).await;
    let consumer = consumer(&client)
        .concurrency(8)
        .start(|message: Message| async move {
            let mut state: Count = message.state()?.unwrap_or_default();
            assert_eq!(
                message.state_version(),
                Some(state.count),
                "one commit per event"
            );
            state.count += 1;
            Ok(Outcome::ack_with_state(&state)?)
        });
    wait_until("30 commits", async || consumer.stats().acked >= 30).await;
    let stats = consumer.shutdown().await;
    assert_eq!(
        (stats.acked, stats.failed, stats.panicked),
        (30, 0, 0),
        "{stats:?}"
    );
    for key in ["k0", "k1", "k2"] {
        let answer = client.key_state("work", key).await.unwrap();
        let state = answer.value();
        assert_eq!(state.state.get(), r#"{"count":10}"#, "{key}");
        assert_eq!(state.version, 10);
    }
    let listed = client.list_state("work", None, Some(2)).await.unwrap();
    let page = listed.value();
    assert_eq!(page.keys.len(), 2);
    assert_eq!(page.next_after.as_deref(), Some("k1"));
    server.stop().await;
}

// Goal: one stale commit does not sink the others sent with it. The server refuses a whole
// ack call (409) when a commit names a delivery no longer outstanding; the consumer then
// sends each commit alone, so only the stale one is refused and the rest apply at once.
// Method: ack timeout 2 s; the first attempt at k0's event sleeps 3 s (its redelivery at 2 s
// commits meanwhile); k1's event is published at 2.2 s; a 1.2 s linger puts the redelivery's
// ack, k1's and the stale one in one call. Without the split all three count stale, and the
// two good ones wait for their redelivery.
#[tokio::test]
async fn a_stale_commit_is_refused_alone() {
    #[derive(serde::Serialize, serde::Deserialize, Default)]
    struct Count {
        count: u64,
    }
    let server = TestServer::start_in_temp_dir().await;
    let client = client(&server.url);
    client
        .create_topic("orders", &TopicSettings::default())
        .await
        .unwrap();
    let subscription = SubscriptionSettings {
        topic: "orders".to_owned(),
        start: Some(StartPosition::Named(NamedPosition::Earliest)),
        ordering: Some(Ordering::Key),
        stateful: true,
        ack_timeout: Some("2s".to_owned()),
        ..SubscriptionSettings::default()
    };
    client
        .create_subscription("work", &subscription)
        .await
        .unwrap();
    let slow_once = Arc::new(AtomicUsize::new(0));
    let consumer = consumer(&client)
        .ack_linger(Duration::from_millis(1200))
        .start(move |message: Message| {
            let slow_once = slow_once.clone();
            async move {
                let mut state: Count = message.state()?.unwrap_or_default();
                if number(&message) == 0 && slow_once.fetch_add(1, AtomicOrdering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                state.count += 1;
                Ok(Outcome::ack_with_state(&state)?)
            }
        });
    let k0 = event(Some("e0"), json!({"partitionkey": "k0", "data": {"n": 0}}));
    client.publish_batch("orders", &[k0]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let k1 = event(Some("e1"), json!({"partitionkey": "k1", "data": {"n": 1}}));
    client.publish_batch("orders", &[k1]).await.unwrap();
    wait_until("both events committed", async || {
        consumer.stats().acked >= 2
    })
    .await;
    let stats = consumer.shutdown().await;
    assert_eq!(
        (stats.handled, stats.acked, stats.stale),
        (3, 2, 1),
        "{stats:?}"
    );
    for key in ["k0", "k1"] {
        let answer = client.key_state("work", key).await.unwrap();
        assert_eq!(answer.value().state.get(), r#"{"count":1}"#, "{key}");
    }
    server.stop().await;
}
