//! Exactly-once processing under crashes and faults, in-process on the seeded in-memory
//! storage: a stateful consumer (pull calls, or an in-process handler) keeps per-account
//! balances in keel's state and emits a receipt per deposit, while deposits are published; each life ends in a simulated power
//! loss (unsynced records dropped, or a torn prefix kept), with append and fsync failures
//! injected throughout.
//!
//! Invariants, checked at the end on a storage without faults, once everything is drained:
//! 1. Every account's balance equals the sum of the deposits stored for it, and its count the
//!    number of them: no deposit applied twice, none skipped, whatever crashed when.
//! 2. The receipts topic holds exactly one receipt per stored deposit: no emitted event
//!    duplicated or missing, though some lives rebuild the state (drop it and replay every
//!    deposit) at random moments.
//! 3. Every publish answered `Ok` is stored.
//! 4. In-process mode, a chain: a second stateful handler turns each receipt into one
//!    notification; each deposit has exactly one notification at the end of the chain.
//!
//! The consumer also refuses some deposits into the dead-letter queue, and redrives them at
//! random moments and at the end: a rebuild's replay meets dead-lettered events below what
//! their keys have applied, which must count once and emit their receipt once. It seeks the
//! ledger back to its first deposit now and then: what comes round again must be settled
//! without a second application (a dead-lettered deposit's copy included), and a result of a
//! delivery the seek dropped must commit nothing.
//!
//! A failure prints its seed; `KEEL_TEST_SEED=N` replays it, `KEEL_EXACTLY_ONCE_SEEDS=N` runs N
//! seeds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_api::state::{Emit, StatefulAck};
use keel_api::subscriptions::{NamedPosition, StartPosition};
use keel_engine::handler::{Delivered, Next, stateful_fn};
use keel_engine::subscription::pull::Settle;
use keel_engine::{Engine, TopicConfig};
use serde_json::{Value, json};

mod support;

const DEPOSITS: &str = "deposits";
const RECEIPTS: &str = "receipts";
/// The chain's second step (in-process mode): each receipt becomes one notification.
const NOTIFICATIONS: &str = "notifications";
const NOTIFY: &str = "notify";
const LEDGER: &str = "ledger";
const ACCOUNTS: u64 = 6;
const LIVES: usize = 4;
const STEPS: usize = 40;
const SEEDS: u64 = 30;
const FAILURES_PPM: u32 = 15_000;
/// Deliveries the consumer refuses (dead-letters), per hundred, before the last life.
const REFUSED_PERCENT: u8 = 6;
const DRAIN_WAIT: Duration = Duration::from_secs(60);

/// How the deposits are consumed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Consumer {
    /// Pulls, and acks with state and an emitted receipt (the HTTP consumer's calls).
    Pull,
    /// An in-process stateful handler attached to the subscription.
    InProcess,
}

#[test]
fn balances_equal_the_sum_of_deposits_across_crashes() {
    run_seeds(Consumer::Pull);
}

#[test]
fn in_process_handlers_keep_exact_balances_across_crashes() {
    run_seeds(Consumer::InProcess);
}

// Goal: an event dead-lettered, then purged, then applied by a rebuild's replay, counts
// once and emits its receipt once, although its key had applied a later event before the
// rebuild (whose replay emits nothing again).
#[test]
fn a_purged_event_applied_by_a_rebuild_emits_once() {
    // One life, without injected failures.
    support::run_lives(0, 1, 0, async |engine, _| {
        create(engine).await.expect("create");
        let mut model = Model::default();
        for (id, amount) in [("d0", 5), ("d1", 7)] {
            let json = json!({"specversion": "1.0", "id": id, "source": "/bank",
                "type": "deposit", "partitionkey": "a0", "data": {"amount": amount}});
            let event = keel_engine::event::from_value(json).expect("valid");
            let stored = engine
                .publish(DEPOSITS, vec![event])
                .await
                .expect("publish");
            model
                .published
                .insert(id.to_owned(), (stored[0].partition, stored[0].offset));
        }
        // d0 is refused; d1, its key's next, is applied with its receipt.
        let first = engine
            .pull(LEDGER, 10, Duration::from_secs(1))
            .await
            .expect("pull");
        assert_eq!(first.len(), 1, "one event of the key at a time");
        engine
            .settle(LEDGER, &[first[0].ack_id.clone()], Settle::Reject)
            .await
            .expect("reject");
        let mut rng = fastrand::Rng::with_seed(1);
        while consume(engine, &mut model, &mut rng, true)
            .await
            .expect("consume")
            == 0
        {}
        assert_eq!(engine.dlq_purge(LEDGER).await.expect("purge"), 1);
        engine.rebuild_state(LEDGER).await.expect("rebuild");
        check(engine, &model, Consumer::Pull)
            .await
            .expect("each deposit counted once, with one receipt");
        Ok(())
    })
    .expect("one life");
}

fn run_seeds(consumer: Consumer) {
    let seeds = support::seeds("KEEL_EXACTLY_ONCE_SEEDS", SEEDS);
    let (mut failures, mut applied, mut rebuilds, mut refused) = (0, 0, 0, 0);
    for seed in seeds {
        match run_seed(seed, consumer) {
            Ok(report) => {
                failures += report.failed_operations;
                applied += report.applied_before_crash;
                rebuilds += report.rebuilds;
                refused += report.refused.load(std::sync::atomic::Ordering::Relaxed);
            }
            Err(violation) => panic!(
                "seed {seed} ({consumer:?}): {violation}\nreplay: KEEL_TEST_SEED={seed} cargo test -p keel-engine --test exactly_once"
            ),
        }
    }
    assert!(failures > 0, "the runs met injected failures");
    if consumer == Consumer::Pull {
        assert!(applied > 0, "the runs committed state before their crashes");
    }
    assert!(rebuilds > 0, "the runs rebuilt the state");
    assert!(refused > 0, "the runs dead-lettered deposits");
}

#[derive(Default)]
struct Report {
    failed_operations: usize,
    /// Commits answered applied in lives that then crashed.
    applied_before_crash: usize,
    /// State rebuilds answered `Ok`.
    rebuilds: usize,
    /// Deliveries refused into the dead-letter queue.
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Default)]
struct Model {
    next_deposit: u64,
    /// Deposit id → (partition, offset), for every publish answered `Ok`.
    published: BTreeMap<String, (u32, u64)>,
    report: Report,
}

fn run_seed(seed: u64, consumer: Consumer) -> Result<Report, String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model = Model::default();
    support::run_lives(seed, LIVES, FAILURES_PPM, async |engine, life| {
        let last = life.last;
        if life.number == 0 {
            create(engine).await?;
        }
        if consumer == Consumer::InProcess {
            let refuse = (!last).then(|| model.report.refused.clone());
            for (name, attached) in [
                (LEDGER, engine.attach(LEDGER, ledger_handler(refuse))),
                (NOTIFY, engine.attach(NOTIFY, notify_handler())),
            ] {
                match attached {
                    Ok(_) => {}
                    // Injected failures can make a life's recovery fail: it serves nothing.
                    Err(error) if last => {
                        return Err(format!("attach {name} without faults: {error}"));
                    }
                    Err(_) => model.report.failed_operations += 1,
                }
            }
        }
        if last {
            return check(engine, &model, consumer).await;
        }
        for _ in 0..STEPS {
            match rng.u8(..100) {
                0..45 => publish(engine, &mut model, &mut rng).await,
                45..48 => rebuild(engine, &mut model).await,
                48..50 => redrive(engine, &mut model).await,
                50..52 => seek_back(engine, &mut model).await,
                _ if consumer == Consumer::InProcess => {
                    // The handler works meanwhile.
                    tokio::time::sleep(Duration::from_millis(rng.u64(1..5))).await;
                }
                _ => {
                    consume(engine, &mut model, &mut rng, false).await?;
                }
            }
        }
        Ok(())
    })?;
    Ok(model.report)
}

async fn create(engine: &Engine) -> Result<(), String> {
    // The emitted events' dedupe windows are all but off: an event emitted twice would be
    // stored twice, not caught as a duplicate of the first.
    for (topic, partitions, dedupe_window) in [
        (DEPOSITS, 3, TopicConfig::default().dedupe_window),
        (RECEIPTS, 2, Duration::from_millis(1)),
        (NOTIFICATIONS, 1, Duration::from_millis(1)),
    ] {
        let config = TopicConfig {
            partitions,
            dedupe_window,
            ..TopicConfig::default()
        };
        engine
            .create_topic(topic, config)
            .await
            .map_err(|error| format!("create topic: {error}"))?;
    }
    let spec = serde_json::from_value(json!({
        "topic": DEPOSITS, "start": "earliest", "ordering": "key", "stateful": true,
        "ack_timeout": "10m",
    }))
    .expect("a valid spec");
    engine
        .create_subscription(LEDGER, spec)
        .await
        .map_err(|error| format!("create subscription: {error}"))?;
    let spec = serde_json::from_value(json!({
        "topic": RECEIPTS, "start": "earliest", "ordering": "key", "stateful": true,
        "ack_timeout": "10m",
    }))
    .expect("a valid spec");
    engine
        .create_subscription(NOTIFY, spec)
        .await
        .map_err(|error| format!("create subscription: {error}"))?;
    Ok(())
}

async fn publish(engine: &Engine, model: &mut Model, rng: &mut fastrand::Rng) {
    let count = rng.usize(1..6);
    let mut events = Vec::with_capacity(count);
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let id = format!("d{}", model.next_deposit);
        model.next_deposit += 1;
        let account = rng.u64(..ACCOUNTS);
        let amount = rng.u64(1..100);
        let json = json!({"specversion": "1.0", "id": id, "source": "/bank", "type": "deposit",
            "partitionkey": format!("a{account}"), "data": {"amount": amount}});
        events.push(keel_engine::event::from_value(json).expect("valid"));
        ids.push(id);
    }
    match engine.publish(DEPOSITS, events).await {
        Ok(results) => {
            for (id, result) in ids.into_iter().zip(results) {
                model
                    .published
                    .insert(id, (result.partition, result.offset));
            }
        }
        Err(_) => model.report.failed_operations += 1,
    }
}

/// Drops the state and replays the deposits: the balances are computed again, and the
/// replayed commits emit no second receipt.
async fn rebuild(engine: &Engine, model: &mut Model) {
    match engine.rebuild_state(LEDGER).await {
        Ok(_) => model.report.rebuilds += 1,
        Err(_) => model.report.failed_operations += 1,
    }
}

/// Redrives every dead-lettered deposit.
async fn redrive(engine: &Engine, model: &mut Model) {
    if engine.dlq_redrive(LEDGER, None).await.is_err() {
        model.report.failed_operations += 1;
    }
}

/// Seeks the ledger back to its first deposit: what comes round again is settled as done
/// (applied, or in the dead-letter queue) without reaching the consumer; deliveries in
/// flight turn stale (an in-process call's result then commits nothing).
async fn seek_back(engine: &Engine, model: &mut Model) {
    let earliest = StartPosition::Named(NamedPosition::Earliest);
    if engine.seek_subscription(LEDGER, &earliest).await.is_err() {
        model.report.failed_operations += 1;
    }
}

/// One pull; each message is committed with its account's new balance and a receipt, or
/// (unless `all`) sometimes left in flight for the crash to end. Returns how many came.
async fn consume(
    engine: &Engine,
    model: &mut Model,
    rng: &mut fastrand::Rng,
    all: bool,
) -> Result<usize, String> {
    let pulled = match engine
        .pull(LEDGER, rng.usize(1..20), Duration::from_millis(20))
        .await
    {
        Ok(pulled) => pulled,
        Err(error) if all => return Err(format!("pull without faults: {error}")),
        Err(_) => {
            model.report.failed_operations += 1;
            return Ok(0);
        }
    };
    let count = pulled.len();
    let (mut acks, mut refused) = (Vec::new(), Vec::new());
    for message in pulled {
        if !all && rng.u8(..100) < 15 {
            continue;
        }
        if !all && rng.u8(..100) < REFUSED_PERCENT {
            refused.push(message.ack_id);
            continue;
        }
        let event: Value = serde_json::from_str(&message.event).expect("stored events are JSON");
        let state = message.state.expect("deposits have keys");
        let before: Value = state
            .state
            .as_deref()
            .map_or(json!({"balance": 0, "count": 0}), |state| {
                serde_json::from_str(state).expect("state is JSON")
            });
        let balance = before["balance"].as_u64().expect("balance")
            + event["data"]["amount"].as_u64().expect("amount");
        let count = before["count"].as_u64().expect("count") + 1;
        let receipt = json!({"specversion": "1.0", "source": "/ledger", "type": "receipt",
            "partitionkey": event["partitionkey"], "data": {"deposit": event["id"]}});
        acks.push(StatefulAck {
            ack_id: message.ack_id,
            state: Some(raw(&json!({"balance": balance, "count": count}))),
            emit: vec![Emit {
                topic: RECEIPTS.to_owned(),
                event: raw(&receipt),
            }],
        });
    }
    if !refused.is_empty() {
        match engine.settle(LEDGER, &refused, Settle::Reject).await {
            Ok(answer) => {
                let refused = &model.report.refused;
                refused.fetch_add(answer.settled, std::sync::atomic::Ordering::Relaxed);
            }
            Err(_) => model.report.failed_operations += 1,
        }
    }
    match engine.ack_with_commits(LEDGER, &[], acks).await {
        Ok(answer) => {
            model.report.applied_before_crash += answer.settled;
        }
        Err(error) if all => return Err(format!("ack without faults: {error}")),
        Err(_) => model.report.failed_operations += 1,
    }
    Ok(count)
}

fn raw(value: &Value) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(value).expect("JSON")
}

/// The in-process consumer: the same balances and receipts as the pull consumer's. With
/// `refuse`, it refuses some deliveries into the dead-letter queue, counting them there.
fn ledger_handler(
    refuse: Option<Arc<std::sync::atomic::AtomicUsize>>,
) -> impl keel_engine::handler::Handler {
    stateful_fn(move |event: Delivered, before: Option<Value>| {
        let refuse = refuse.clone();
        async move {
            if let Some(refused) = refuse
                && fastrand::u8(..100) < REFUSED_PERCENT
            {
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(keel_engine::handler::HandlerError::permanent(
                    "refused by the test",
                ));
            }
            let before = before.unwrap_or_else(|| json!({"balance": 0, "count": 0}));
            let event_json: Value = event.event()?;
            let balance = before["balance"].as_u64().unwrap_or(0)
                + event_json["data"]["amount"].as_u64().unwrap_or(0);
            let count = before["count"].as_u64().unwrap_or(0) + 1;
            let receipt = json!({"specversion": "1.0", "source": "/ledger", "type": "receipt",
            "partitionkey": event_json["partitionkey"], "data": {"deposit": event_json["id"]}});
            Ok(Next::state(json!({"balance": balance, "count": count})).emit(RECEIPTS, receipt))
        }
    })
}

/// The chain's second step: one notification per receipt, counted per account.
fn notify_handler() -> impl keel_engine::handler::Handler {
    stateful_fn(|event: Delivered, sent: Option<u64>| async move {
        let receipt: Value = event.event()?;
        let notification = json!({"specversion": "1.0", "source": "/notify",
            "type": "notification", "data": {"deposit": receipt["data"]["deposit"]}});
        Ok(Next::state(sent.unwrap_or(0) + 1).emit(NOTIFICATIONS, notification))
    })
}

/// Drains the subscription, then checks the invariants.
async fn check(engine: &Engine, model: &Model, consumer: Consumer) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
    let mut rng = fastrand::Rng::with_seed(0);
    let mut drained = Model::default();
    let chained: &[&str] = match consumer {
        Consumer::Pull => &[LEDGER],
        Consumer::InProcess => &[LEDGER, NOTIFY],
    };
    loop {
        let mut described = Vec::new();
        for name in chained {
            let info = engine
                .describe_subscription(name)
                .map_err(|error| format!("describe: {error}"))?;
            described.push(info);
        }
        if described
            .iter()
            .all(|info| info.lag == 0 && info.in_flight == 0 && info.pending == 0)
        {
            if described[0].dlq_depth == 0 {
                break;
            }
            // The refused deposits, taken now (the consumer refuses none any more).
            engine
                .dlq_redrive(LEDGER, None)
                .await
                .map_err(|error| format!("redrive without faults: {error}"))?;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("the subscription did not drain: {described:?}"));
        }
        match consumer {
            Consumer::Pull => {
                consume(engine, &mut drained, &mut rng, true).await?;
            }
            Consumer::InProcess => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let deposits = read_all(engine, DEPOSITS, 3).await?;
    for (id, position) in &model.published {
        if !deposits.values().any(|(stored, ..)| stored == id) {
            return Err(format!(
                "deposit {id}, answered at {position:?}, is not stored"
            ));
        }
    }
    let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (_, key, amount) in deposits.values() {
        let sum = expected.entry(key.clone()).or_default();
        sum.0 += amount;
        sum.1 += 1;
    }
    for (key, (balance, count)) in &expected {
        let stored = engine
            .key_state(LEDGER, key)
            .await
            .map_err(|error| format!("state of {key}: {error}"))?;
        let state: Value = serde_json::from_str(stored.state.get()).expect("JSON");
        let found = (state["balance"].as_u64(), state["count"].as_u64());
        if found != (Some(*balance), Some(*count)) {
            return Err(format!(
                "account {key}: balance and count {found:?}, deposits stored sum to {balance} over {count}"
            ));
        }
    }
    let receipts = read_all(engine, RECEIPTS, 2).await?;
    let mut per_deposit: BTreeMap<String, usize> = BTreeMap::new();
    for (deposit, _, _) in receipts.values() {
        *per_deposit.entry(deposit.clone()).or_default() += 1;
    }
    for (id, _, _) in deposits.values() {
        match per_deposit.get(id) {
            Some(1) => {}
            other => return Err(format!("deposit {id} has {other:?} receipts, not one")),
        }
    }
    if per_deposit.len() != deposits.len() {
        return Err(format!(
            "{} receipts name {} deposits, {} are stored",
            receipts.len(),
            per_deposit.len(),
            deposits.len()
        ));
    }
    if consumer == Consumer::InProcess {
        // The chain: each receipt (so each deposit) became exactly one notification.
        let notifications = read_all(engine, NOTIFICATIONS, 1).await?;
        let mut per_deposit: BTreeMap<String, usize> = BTreeMap::new();
        for (deposit, _, _) in notifications.values() {
            *per_deposit.entry(deposit.clone()).or_default() += 1;
        }
        for (id, _, _) in deposits.values() {
            if per_deposit.get(id) != Some(&1) {
                return Err(format!(
                    "deposit {id} has {:?} notifications, not one",
                    per_deposit.get(id)
                ));
            }
        }
        if per_deposit.len() != deposits.len() {
            return Err(format!(
                "notifications name {} deposits, {} are stored",
                per_deposit.len(),
                deposits.len()
            ));
        }
    }
    Ok(())
}

/// Every stored event of a topic by (partition, offset): a deposit's (id, key, amount), a
/// receipt's (deposit id, "", 0).
async fn read_all(
    engine: &Engine,
    topic: &str,
    partitions: u32,
) -> Result<BTreeMap<(u32, u64), (String, String, u64)>, String> {
    let stored = support::read_topic(engine, topic, partitions).await?;
    Ok(stored
        .into_iter()
        .map(|(place, event)| {
            let entry = match event["data"]["deposit"].as_str() {
                Some(deposit) => (deposit.to_owned(), String::new(), 0),
                None => (
                    event["id"].as_str().expect("id").to_owned(),
                    event["partitionkey"].as_str().expect("key").to_owned(),
                    event["data"]["amount"].as_u64().expect("amount"),
                ),
            };
            (place, entry)
        })
        .collect())
}
