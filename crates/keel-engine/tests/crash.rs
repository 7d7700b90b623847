//! The engine's crash and fault tests, in-process on the seeded in-memory storage: many seeds,
//! each a few lives of random publishes, pulls, acks, nacks and rejects under injected append
//! and fsync failures, each life ended by a simulated power loss that drops unsynced records
//! (all, or all but a torn prefix).
//!
//! Invariants, checked after every crash and at the end:
//! 1. Every publish answered `Ok` is readable at the partition and offset it was answered
//!    with (fsync = always).
//! 2. An event whose ack was answered (settled, not stale) is never delivered again: no acked
//!    delivery is redelivered past its checkpoint.
//! 3. Every event whose reject was answered is in the dead-letter queue: it stays intact.
//! 4. At the end, on a storage without faults, draining the subscription leaves every
//!    acknowledged publish acknowledged or dead-lettered: nothing is lost on the way. (An ack
//!    answered with an error may or may not have taken effect: its event counts as either.)
//!
//! A failure prints its seed; `KEEL_TEST_SEED=N` replays that seed alone (the operations and
//! every fault and loss are drawn from it), `KEEL_ENGINE_CRASH_SEEDS=N` runs N seeds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use keel_engine::subscription::pull::Settle;
use keel_engine::{Engine, TopicConfig};

mod support;

const TOPIC: &str = "orders";
const SUBSCRIPTION: &str = "billing";
const PARTITIONS: u32 = 3;
/// Lives per seed: each but the last ends in a crash.
const LIVES: usize = 4;
/// Operations per life.
const STEPS: usize = 40;
/// Seeds run by default.
const SEEDS: u64 = 40;
/// Longest the final drain may take before the run counts as stuck.
const DRAIN_WAIT: Duration = Duration::from_secs(60);
/// The chance of each injected failure, in parts per million of appends or fsyncs.
const FAILURES_PPM: u32 = 15_000;

#[test]
fn acknowledged_work_survives_crashes_and_faults() {
    let seeds = support::seeds("KEEL_ENGINE_CRASH_SEEDS", SEEDS);
    let mut faults_seen = 0;
    for seed in seeds {
        match run_seed(seed) {
            Ok(report) => faults_seen += report.failed_operations,
            Err(violation) => {
                panic!(
                    "seed {seed}: {violation}\nreplay: KEEL_TEST_SEED={seed} cargo test -p keel-engine --test crash"
                )
            }
        }
    }
    assert!(faults_seen > 0, "the runs met injected failures");
}

/// What one seed's run met.
struct Report {
    /// Engine calls that failed (the faults reached the engine's answers).
    failed_operations: usize,
}

/// What the test knows was answered: the truth every later life must keep.
#[derive(Default)]
struct Model {
    next_event: u64,
    /// Event id → (partition, offset), for every publish answered `Ok`.
    published: BTreeMap<String, (u32, u64)>,
    /// Events whose ack was answered as settled.
    acked: BTreeSet<String>,
    /// Events whose ack failed: an error answers "unknown", so they may be done or not.
    maybe_acked: BTreeSet<String>,
    /// Events whose reject was answered as settled, with their dead-letter entry id.
    rejected: BTreeMap<String, String>,
    failed_operations: usize,
}

fn run_seed(seed: u64) -> Result<Report, String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model = Model::default();
    support::run_lives(seed, LIVES, FAILURES_PPM, async |engine, life| {
        if life.number == 0 {
            create(engine).await?;
        }
        check_durable_state(engine, &model).await?;
        if life.last {
            return drain(engine, &mut model).await;
        }
        for _ in 0..STEPS {
            step(engine, &mut model, &mut rng).await?;
        }
        Ok(())
    })?;
    Ok(Report {
        failed_operations: model.failed_operations,
    })
}

async fn create(engine: &Engine) -> Result<(), String> {
    let config = TopicConfig {
        partitions: PARTITIONS,
        ..TopicConfig::default()
    };
    engine
        .create_topic(TOPIC, config)
        .await
        .map_err(|error| format!("create topic: {error}"))?;
    // Acks far within the ack timeout: a redelivery can only come from lost progress.
    let spec = serde_json::from_value(serde_json::json!({
        "topic": TOPIC,
        "start": "earliest",
        "ordering": "key",
        "ack_timeout": "10m",
        "retry": {"max_attempts": 3},
    }))
    .expect("a valid spec");
    engine
        .create_subscription(SUBSCRIPTION, spec)
        .await
        .map_err(|error| format!("create subscription: {error}"))?;
    Ok(())
}

/// One random operation: a publish, or a pull whose messages are acked, nacked, rejected or
/// left in flight.
async fn step(engine: &Engine, model: &mut Model, rng: &mut fastrand::Rng) -> Result<(), String> {
    if rng.u8(..100) < 45 {
        publish(engine, model, rng).await;
        return Ok(());
    }
    let pulled = match engine
        .pull(SUBSCRIPTION, rng.usize(1..8), Duration::from_millis(20))
        .await
    {
        Ok(pulled) => pulled,
        Err(_) => {
            model.failed_operations += 1;
            return Ok(());
        }
    };
    let mut by_action: BTreeMap<u8, Vec<(String, String, String)>> = BTreeMap::new();
    for message in pulled {
        let id = event_id(&message.event);
        if model.acked.contains(&id) {
            return Err(format!(
                "event {id} was delivered again after its ack was answered"
            ));
        }
        let entry = format!("{}-{}", message.partition, message.offset);
        let action = match rng.u8(..100) {
            0..65 => 0,
            65..80 => 1,
            80..92 => 2,
            _ => 3,
        };
        by_action
            .entry(action)
            .or_default()
            .push((message.ack_id, id, entry));
    }
    for (action, messages) in by_action {
        let settle = match action {
            0 => Settle::Ack,
            1 => Settle::Nack {
                delay: Some(Duration::ZERO),
            },
            2 => Settle::Reject,
            // Left in flight: the crash ends its delivery, and it comes back.
            _ => continue,
        };
        settle_all(engine, model, settle, messages).await;
    }
    Ok(())
}

async fn publish(engine: &Engine, model: &mut Model, rng: &mut fastrand::Rng) {
    let count = rng.usize(1..6);
    let mut events = Vec::with_capacity(count);
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let id = format!("e{}", model.next_event);
        model.next_event += 1;
        let key = match rng.u8(..5) {
            0 => String::new(),
            key => format!(r#","partitionkey":"k{key}""#),
        };
        let json =
            format!(r#"{{"specversion":"1.0","id":"{id}","source":"/crash","type":"t"{key}}}"#);
        events.push(keel_engine::event::parse_structured(json.as_bytes()).expect("valid"));
        ids.push(id);
    }
    match engine.publish(TOPIC, events).await {
        Ok(results) => {
            for (id, result) in ids.into_iter().zip(results) {
                model
                    .published
                    .insert(id, (result.partition, result.offset));
            }
        }
        Err(_) => model.failed_operations += 1,
    }
}

async fn settle_all(
    engine: &Engine,
    model: &mut Model,
    settle: Settle,
    messages: Vec<(String, String, String)>,
) {
    let ack_ids: Vec<String> = messages.iter().map(|(ack_id, ..)| ack_id.clone()).collect();
    let Ok(answer) = engine.settle(SUBSCRIPTION, &ack_ids, settle).await else {
        model.failed_operations += 1;
        if settle == Settle::Ack {
            model
                .maybe_acked
                .extend(messages.into_iter().map(|(_, id, _)| id));
        }
        return;
    };
    for (ack_id, id, entry) in messages {
        if answer.stale.contains(&ack_id) {
            continue;
        }
        match settle {
            Settle::Ack => {
                model.acked.insert(id);
            }
            Settle::Reject => {
                model.rejected.insert(id, entry);
            }
            Settle::Nack { .. } => {}
        }
    }
}

/// Invariants 1 and 3: acknowledged publishes are where they were answered, answered rejects
/// are in the dead-letter queue.
async fn check_durable_state(engine: &Engine, model: &Model) -> Result<(), String> {
    let stored = read_all(engine).await?;
    for (id, position) in &model.published {
        match stored.get(position) {
            Some(found) if found == id => {}
            Some(found) => {
                return Err(format!(
                    "publish of {id} was answered at {position:?}, which now holds {found}"
                ));
            }
            None => {
                return Err(format!(
                    "publish of {id} was answered at {position:?}, which is gone"
                ));
            }
        }
    }
    let dead_letters = dead_letter_ids(engine).await?;
    for (id, entry) in &model.rejected {
        if !dead_letters.contains(entry) {
            return Err(format!(
                "rejected event {id} is not in the dead-letter queue (entry {entry})"
            ));
        }
    }
    Ok(())
}

/// Every stored event's id by (partition, offset).
async fn read_all(engine: &Engine) -> Result<BTreeMap<(u32, u64), String>, String> {
    let stored = support::read_topic(engine, TOPIC, PARTITIONS).await?;
    Ok(stored
        .into_iter()
        .map(|(place, event)| {
            (
                place,
                event["id"].as_str().expect("events have ids").to_owned(),
            )
        })
        .collect())
}

async fn dead_letter_ids(engine: &Engine) -> Result<BTreeSet<String>, String> {
    let mut ids = BTreeSet::new();
    let mut after = None;
    loop {
        let (entries, more) = engine
            .dlq_list(SUBSCRIPTION, after.clone(), 1000)
            .await
            .map_err(|error| format!("list dead letters: {error}"))?;
        after = entries.last().map(|entry| entry.id.clone());
        ids.extend(entries.into_iter().map(|entry| entry.id));
        if !more {
            return Ok(ids);
        }
    }
}

/// Invariant 4: acks everything the subscription delivers until it delivers nothing more,
/// then every acknowledged publish must be acked or dead-lettered.
async fn drain(engine: &Engine, model: &mut Model) -> Result<(), String> {
    // Done when the subscription itself says so: nothing published is left undone (lag 0),
    // nothing is in flight or held pending. The deadline only bounds a stuck run.
    let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
    loop {
        let described = engine
            .describe_subscription(SUBSCRIPTION)
            .map_err(|error| format!("describe without faults: {error}"))?;
        if described.lag == 0 && described.in_flight == 0 && described.pending == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("the subscription did not drain: {described:?}"));
        }
        let pulled = engine
            .pull(SUBSCRIPTION, 100, Duration::from_millis(50))
            .await
            .map_err(|error| format!("pull without faults: {error}"))?;
        let mut messages = Vec::new();
        for message in pulled {
            let id = event_id(&message.event);
            if model.acked.contains(&id) {
                return Err(format!(
                    "event {id} was delivered again after its ack was answered"
                ));
            }
            messages.push((message.ack_id, id, String::new()));
        }
        settle_all(engine, model, Settle::Ack, messages).await;
    }
    let stored = read_all(engine).await?;
    let dead_letters = dead_letter_ids(engine).await?;
    for (id, (partition, offset)) in &model.published {
        let entry = format!("{partition}-{offset}");
        let done = model.acked.contains(id) || model.maybe_acked.contains(id);
        if !done && !dead_letters.contains(&entry) {
            let found = stored.get(&(*partition, *offset));
            let described = engine.describe_subscription(SUBSCRIPTION);
            return Err(format!(
                "event {id} (published at {partition}-{offset}, stored: {found:?}) was never acked nor dead-lettered; the subscription: {described:?}"
            ));
        }
    }
    Ok(())
}

fn event_id(json: &str) -> String {
    let event: serde_json::Value = serde_json::from_str(json).expect("stored events are JSON");
    event["id"].as_str().expect("events have ids").to_owned()
}
