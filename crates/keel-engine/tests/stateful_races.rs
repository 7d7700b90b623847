//! Stateful subscriptions under interleavings the randomized test (`exactly_once.rs`) does not
//! draw: a seek while a handler call runs, a redrive racing a rebuild, a seek forward before a
//! rebuild. Each test states the contract of `docs/processing.md` it holds the engine to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel_api::state::{Emit, StatefulAck};
use keel_api::subscriptions::{NamedPosition, StartPosition};
use keel_engine::handler::{Delivered, HandlerError, Next, stateful_fn};
use keel_engine::storage::{Faults, MemoryStorage};
use keel_engine::subscription::pull::Settle;
use keel_engine::{Engine, EngineConfig, TopicConfig};
use serde_json::{Value, json};

const DEPOSITS: &str = "deposits";
const RECEIPTS: &str = "receipts";
const LEDGER: &str = "ledger";
const PATIENCE: Duration = Duration::from_secs(20);

async fn engine() -> Engine {
    let storage = Arc::new(MemoryStorage::new(Faults::default()));
    let config = EngineConfig::new("unused: the storage is in memory");
    Engine::open_with_storage(config, storage)
        .await
        .expect("open")
}

/// The deposits topic (`partitions`), a receipts topic whose dedupe hides no second receipt,
/// and the stateful subscription `ledger` (pull).
async fn create(engine: &Engine, partitions: u32) {
    for (topic, partitions, dedupe_window) in [
        (DEPOSITS, partitions, TopicConfig::default().dedupe_window),
        (RECEIPTS, 1, Duration::from_millis(1)),
    ] {
        let config = TopicConfig {
            partitions,
            dedupe_window,
            ..TopicConfig::default()
        };
        engine.create_topic(topic, config).await.expect("topic");
    }
    let spec = serde_json::from_value(json!({
        "topic": DEPOSITS, "start": "earliest", "ordering": "key", "stateful": true,
        "ack_timeout": "10m", "max_in_flight": 1000,
    }))
    .expect("a valid spec");
    engine
        .create_subscription(LEDGER, spec)
        .await
        .expect("subscription");
}

async fn deposit(engine: &Engine, id: &str, key: &str, amount: u64) {
    let json = json!({"specversion": "1.0", "id": id, "source": "/bank", "type": "deposit",
        "partitionkey": key, "data": {"amount": amount}});
    let event = keel_engine::event::from_value(json).expect("valid");
    engine
        .publish(DEPOSITS, vec![event])
        .await
        .expect("publish");
}

fn raw(value: &Value) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(value).expect("JSON")
}

/// The ledger's next state for a deposit, from the state a delivery carried.
fn next_balance(event: &Value, before: Option<Value>) -> Value {
    let before = before.unwrap_or_else(|| json!({"balance": 0, "count": 0}));
    json!({
        "balance": before["balance"].as_u64().unwrap_or(0)
            + event["data"]["amount"].as_u64().unwrap_or(0),
        "count": before["count"].as_u64().unwrap_or(0) + 1,
    })
}

fn receipt(event: &Value) -> Value {
    json!({"specversion": "1.0", "source": "/ledger", "type": "receipt",
        "partitionkey": event["partitionkey"], "data": {"deposit": event["id"]}})
}

/// Pulls once and commits every message with its key's next balance and a receipt. Returns
/// how many came.
async fn consume_once(engine: &Engine) -> usize {
    let pulled = engine
        .pull(LEDGER, 1000, Duration::from_millis(20))
        .await
        .expect("pull");
    let count = pulled.len();
    let acks = pulled
        .into_iter()
        .map(|message| {
            let event: Value = serde_json::from_str(&message.event).expect("JSON");
            let before = message
                .state
                .and_then(|state| state.state)
                .map(|state| serde_json::from_str(&state).expect("JSON"));
            StatefulAck {
                ack_id: message.ack_id,
                state: Some(raw(&next_balance(&event, before))),
                emit: vec![Emit {
                    topic: RECEIPTS.to_owned(),
                    event: raw(&receipt(&event)),
                }],
            }
        })
        .collect();
    engine
        .ack_with_commits(LEDGER, &[], acks)
        .await
        .expect("ack");
    count
}

/// Waits until `done` holds for the ledger's description.
async fn wait_until(
    engine: &Engine,
    what: &str,
    done: impl Fn(&keel_engine::subscription::SubscriptionInfo) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = engine.describe_subscription(LEDGER).expect("describe");
        if done(&info) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {info:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Pulls and commits until nothing is left to deliver.
async fn drain(engine: &Engine) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if consume_once(engine).await == 0 {
            let info = engine.describe_subscription(LEDGER).expect("describe");
            if info.lag == 0 && info.pending == 0 && info.in_flight == 0 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "never drained");
    }
}

async fn balance(engine: &Engine, key: &str) -> (u64, u64) {
    let state = engine.key_state(LEDGER, key).await.expect("state");
    let state: Value = serde_json::from_str(state.state.get()).expect("JSON");
    (
        state["balance"].as_u64().expect("balance"),
        state["count"].as_u64().expect("count"),
    )
}

/// The receipts topic's deposit ids, each with how many receipts it has.
async fn receipts(engine: &Engine) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let mut offset = 0;
    loop {
        let records = engine
            .read(RECEIPTS, 0, Some(offset), 1000, Duration::ZERO)
            .await
            .expect("read receipts")
            .records;
        let Some(last) = records.last() else {
            return counts;
        };
        offset = last.offset + 1;
        for record in records {
            let event: Value = serde_json::from_slice(&record.payload).expect("JSON");
            let deposit = event["data"]["deposit"].as_str().expect("id").to_owned();
            *counts.entry(deposit).or_default() += 1;
        }
    }
}

// Goal: a redriven event and its key's next event, in flight at once, both apply (the
// second one's commit conflicts and is delivered again) — also when the next event's
// delivery stopped being outstanding while its handler ran (a seek, or its ack deadline):
// the late result must not commit over the redriven event's update. Method: an in-process
// handler; d0 is refused into the dead-letter queue; d1's calls wait at a gate; a seek makes
// the first call's delivery stale; d0 is redriven and applied; then the gate opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_in_process_result_does_not_overwrite_a_redriven_commit() {
    let engine = engine().await;
    create(&engine, 1).await;
    deposit(&engine, "d0", "a", 1).await;
    deposit(&engine, "d1", "a", 10).await;
    let refused = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // d1's first call waits at `first`, its later calls at `later`.
    let (first, later) = (
        Arc::new(tokio::sync::Semaphore::new(0)),
        Arc::new(tokio::sync::Semaphore::new(0)),
    );
    let started = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (refused, calls, started) = (refused.clone(), calls.clone(), started.clone());
        let (first, later) = (first.clone(), later.clone());
        stateful_fn(move |event: Delivered, before: Option<Value>| {
            let (refused, calls, started) = (refused.clone(), calls.clone(), started.clone());
            let (first, later) = (first.clone(), later.clone());
            async move {
                let event_json: Value = event.event()?;
                if event.id() == "d0" && !refused.swap(true, Ordering::SeqCst) {
                    return Err(HandlerError::permanent("refused once"));
                }
                if event.id() == "d1" {
                    let gate = if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        started.notify_one();
                        first
                    } else {
                        later
                    };
                    let _permit = gate.acquire().await.expect("gate");
                }
                Ok(Next::state(next_balance(&event_json, before)))
            }
        })
    };
    let attached = engine.attach(LEDGER, handler).expect("attach");
    // d0 dead-lettered; d1's first call waits at the gate with the key's state at version 0.
    started.notified().await;
    wait_until(&engine, "d0 dead-lettered", |info| info.dlq_depth == 1).await;
    // The seek drops d1's delivery in flight: the call's result is stale from now on.
    engine
        .seek_subscription(LEDGER, &StartPosition::Named(NamedPosition::Earliest))
        .await
        .expect("seek");
    engine.dlq_redrive(LEDGER, None).await.expect("redrive");
    let deadline = Instant::now() + PATIENCE;
    while engine
        .key_state(LEDGER, "a")
        .await
        .map_or(0, |state| state.version)
        < 1
    {
        assert!(Instant::now() < deadline, "d0's redrive never applied");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The first call's result (computed from version 0) comes first; then the later calls'.
    first.add_permits(1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    later.add_permits(100);
    wait_until(&engine, "done", |info| {
        info.lag == 0 && info.pending == 0 && info.in_flight == 0 && info.dlq_depth == 0
    })
    .await;
    attached.stop().await;
    assert_eq!(
        balance(&engine, "a").await,
        (11, 2),
        "each deposit applied once"
    );
}

// Goal: a rebuild voids the dead-letter entries of the generation before, with their
// redrives: no redrive of an older entry is delivered after it (its event is replayed from
// its partition, and applied once). Method: 100 refused deposits on 256 partitions (a lane
// holds 64 events), all redriven, so that 36 wait in the queue for room; a rebuild while
// another task keeps asking for redrives (each wakes the redrive reader). Then every
// deposit must be applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_redrive_of_an_older_generation_is_delivered_after_a_rebuild() {
    let engine = Arc::new(engine().await);
    create(&engine, 256).await;
    const KEYS: usize = 100;
    for index in 0..KEYS {
        deposit(&engine, &format!("d{index}"), &format!("a{index}"), 1).await;
    }
    let mut rejected = 0;
    while rejected < KEYS {
        let pulled = engine
            .pull(LEDGER, 1000, Duration::from_millis(20))
            .await
            .expect("pull");
        let ids: Vec<String> = pulled.into_iter().map(|message| message.ack_id).collect();
        rejected += engine
            .settle(LEDGER, &ids, Settle::Reject)
            .await
            .expect("reject")
            .settled;
    }
    wait_until(&engine, "all dead-lettered", |info| info.dlq_depth == KEYS).await;
    engine.dlq_redrive(LEDGER, None).await.expect("redrive");
    wait_until(&engine, "the redrive lane full", |info| info.pending == 64).await;
    let stop = Arc::new(AtomicBool::new(false));
    let waker = {
        let (engine, stop) = (engine.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let _ = engine.dlq_redrive(LEDGER, None).await;
                tokio::task::yield_now().await;
            }
        })
    };
    engine.rebuild_state(LEDGER).await.expect("rebuild");
    stop.store(true, Ordering::SeqCst);
    waker.await.expect("waker");
    drain(&engine).await;
    let mut wrong = Vec::new();
    for index in 0..KEYS {
        let key = format!("a{index}");
        let found = balance(&engine, &key).await;
        if found != (1, 1) {
            wrong.push((key, found));
        }
    }
    assert!(
        wrong.is_empty(),
        "each deposit applied once; (balance, count) wrong for {wrong:?}"
    );
}

// Goal (docs/processing.md, "Rebuilding state"): "Events never applied before emit as
// usual" when a rebuild's replay applies them. Method: d1 is skipped by a seek forward
// (never delivered, never applied) while d0 and d2 of its key are applied; the rebuild's
// replay applies d1, and d1 must then have its one receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known bug, not fixed: a rebuild judges 'applied before' by the key's highest applied offset, which a seek forward passes without applying; run with --run-ignored all"]
async fn an_event_skipped_by_a_seek_emits_when_a_rebuild_applies_it() {
    let engine = engine().await;
    create(&engine, 1).await;
    deposit(&engine, "d0", "a", 1).await;
    drain(&engine).await;
    deposit(&engine, "d1", "a", 10).await;
    engine
        .seek_subscription(LEDGER, &StartPosition::Named(NamedPosition::Latest))
        .await
        .expect("seek");
    deposit(&engine, "d2", "a", 100).await;
    drain(&engine).await;
    assert_eq!(balance(&engine, "a").await, (101, 2), "d1 skipped");
    engine.rebuild_state(LEDGER).await.expect("rebuild");
    drain(&engine).await;
    assert_eq!(
        balance(&engine, "a").await,
        (111, 3),
        "the replay applies d1"
    );
    let receipts = receipts(&engine).await;
    let expected: BTreeMap<String, usize> = [("d0", 1), ("d1", 1), ("d2", 1)]
        .map(|(id, n)| (id.to_owned(), n))
        .into();
    assert_eq!(receipts, expected, "one receipt per applied deposit");
}

// Goal: two rebuilds asked for at once (a client retrying one, say) leave every deposit
// applied once in the rebuilt state. Method: an in-process ledger handler keeps running
// while pairs of rebuilds, the second a moment after the first, are asked for; after each
// pair, once everything is delivered, the balances must equal the sums of the deposits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rebuilds_leave_each_deposit_applied_once() {
    let engine = Arc::new(engine().await);
    create(&engine, 2).await;
    const KEYS: u64 = 8;
    let handler = stateful_fn(|event: Delivered, before: Option<Value>| async move {
        let event_json: Value = event.event()?;
        Ok(Next::state(next_balance(&event_json, before)))
    });
    let attached = engine.attach(LEDGER, handler).expect("attach");
    let mut sums = BTreeMap::new();
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..30u64 {
        for index in 0..KEYS * 2 {
            let key = format!("a{}", index % KEYS);
            let amount = rng.u64(1..100);
            deposit(&engine, &format!("d{round}-{index}"), &key, amount).await;
            let entry: &mut (u64, u64) = sums.entry(key).or_default();
            *entry = (entry.0 + amount, entry.1 + 1);
        }
        let first = {
            let engine = engine.clone();
            tokio::spawn(async move { engine.rebuild_state(LEDGER).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_micros(rng.u64(0..3000))).await;
        engine.rebuild_state(LEDGER).await.expect("second rebuild");
        first.await.expect("task").expect("first rebuild");
        wait_until(&engine, "drained", |info| {
            info.lag == 0 && info.pending == 0 && info.in_flight == 0
        })
        .await;
        let mut wrong = Vec::new();
        for (key, expected) in &sums {
            let found = balance(&engine, key).await;
            if found != *expected {
                wrong.push((key.clone(), found, *expected));
            }
        }
        assert!(
            wrong.is_empty(),
            "round {round}: (key, found, expected) wrong: {wrong:?}"
        );
    }
    attached.stop().await;
}
