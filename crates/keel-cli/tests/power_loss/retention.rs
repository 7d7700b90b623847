//! Retention under power loss: segments deleted by age and by size while publishers and a
//! pull consumer load keel, then kill -9, a loss and a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::api::{Api, event, pull_spec};
use crate::clients::{Acked, Pulled, Until, consume, publish_until_dead};
use crate::rig::{self, Rig};
use keel_testkit::random::splitmix64;

/// 4 KiB segments, so that retention has segments to delete, checked every 100 ms.
const CONFIG: &str = "segment_bytes_max = 4096\nretention_check_interval = \"100ms\"\n";
/// The topic whose events expire by age, and its subscription.
const BY_AGE: &str = "r-age";
const SUBSCRIPTION: &str = "r-sub";
/// The topic whose events expire by size.
const BY_SIZE: &str = "r-size";
/// Crash cycles without `KEEL_POWERLOSS_CYCLES`.
const CYCLES_DEFAULT: u64 = 4;
/// Publishes acknowledged this close to the kill are within either topic's limit (two
/// seconds; 20 000 bytes, when among the newest `NEWEST_KEPT` of their partition) when checked.
const RECENT: Duration = Duration::from_millis(500);
const NEWEST_KEPT: usize = 50;

/// Goal: retention deleting segments under load never costs an acknowledged publish it should
/// keep, nor a pull ack, across kill -9 and power loss.
/// Method: topic r-age (2 partitions, events expire after 2 s) with a pull subscription, and
/// r-size (2 partitions, at most 20 000 bytes); two publishers on r-age, one on r-size and a
/// pull consumer run 1–2 s, then keel is crashed (kill -9, a loss alternating unsynced and
/// torn, restart) and both topics are read.
/// Invariants: after each restart keel is ready and no partition refuses service; each
/// partition is dense from its start offset; every acknowledged publish at or above its
/// partition's start is at its position, intact; the newest acknowledged publishes are never
/// expired; no acked pull is delivered again. And retention did delete, in both topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_under_power_loss_keeps_every_unexpired_publish() {
    if !rig::fuse_available() {
        return;
    }
    let (cycles, seed) = (rig::cycles(CYCLES_DEFAULT), rig::seed());
    let mut rig = Rig::mount(CONFIG, seed);
    let api = rig.api();
    rig.start().await;
    set_up(&api).await;
    let (by_age, by_size, pulled): (Acked, Acked, Arc<Mutex<Pulled>>) = Default::default();
    let mut expired = (0, 0);
    for cycle in 0..cycles {
        let load = vec![
            tokio::spawn(publish(
                api.clone(),
                BY_AGE,
                format!("a{cycle}x"),
                by_age.clone(),
            )),
            tokio::spawn(publish(
                api.clone(),
                BY_AGE,
                format!("a{cycle}y"),
                by_age.clone(),
            )),
            tokio::spawn(publish(
                api.clone(),
                BY_SIZE,
                format!("s{cycle}"),
                by_size.clone(),
            )),
            tokio::spawn(consume(
                api.clone(),
                SUBSCRIPTION.into(),
                pulled.clone(),
                Until::Dead,
            )),
        ];
        let run_ms = 1000 + splitmix64(seed ^ cycle) % 1000;
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        let killed_at = Instant::now();
        rig.crash(load).await;
        expired = (
            check_topic(&api, BY_AGE, &by_age, killed_at).await,
            check_topic(&api, BY_SIZE, &by_size, killed_at).await,
        );
        let pulled = pulled.lock().unwrap();
        let deleted = rig.log_lines("retention deleted a segment");
        eprintln!(
            "cycle {cycle} ({run_ms} ms): {deleted} segments deleted by retention so far; \
             acknowledged publishes expired (age, size) {expired:?}; {} pulls acked",
            pulled.acked.len()
        );
        let again = &pulled.redelivered_after_ack;
        assert!(again.is_empty(), "acked pulls delivered again: {again:?}");
    }
    assert!(
        expired.0 > 0 && expired.1 > 0,
        "retention expired publishes of both topics"
    );
    rig.unmount();
}

/// Creates both topics and the subscription of r-age.
async fn set_up(api: &Api) {
    let topics = [
        (
            BY_AGE,
            json!({"partitions": 2, "retention": {"max_age": "2s"}}),
        ),
        (
            BY_SIZE,
            json!({"partitions": 2, "retention": {"max_bytes": 20000}}),
        ),
    ];
    for (topic, config) in topics {
        api.create_topic(topic, config).await;
    }
    let spec = pull_spec(BY_AGE, "earliest");
    api.create_subscription(SUBSCRIPTION, spec).await;
}

/// A publisher of batches of 5 keyed events, their ids tagged `tag`, until keel dies.
async fn publish(api: Api, topic: &'static str, tag: String, acked: Acked) {
    let batch = move |number: u64| -> Vec<Value> {
        let event_of = |i: u64| event(&format!("{tag}-{number}-{i}"), Some(&format!("k{i}")));
        (0..5).map(event_of).collect()
    };
    publish_until_dead(api, topic.to_owned(), acked, batch).await;
}

/// Checks `topic` after a restart against its acknowledged publishes; how many of them
/// retention deleted.
async fn check_topic(api: &Api, topic: &str, acked: &Acked, killed_at: Instant) -> usize {
    let stored = api.stored(topic).await;
    let acked = acked.lock().unwrap().clone();
    let lost = stored.lost(acked.iter().map(|(id, ack)| (id, ack.position)));
    assert!(
        lost.is_empty(),
        "{topic}: acknowledged publishes not expired, yet lost: {lost:?}"
    );
    let mut by_partition: HashMap<u32, Vec<(u64, &String)>> = HashMap::new();
    for (id, ack) in &acked {
        let newest = by_partition.entry(ack.position.partition).or_default();
        newest.push((ack.position.offset, id));
    }
    for newest in by_partition.values_mut() {
        newest.sort_unstable();
        for (_, id) in newest.iter().rev().take(NEWEST_KEPT) {
            let ack = &acked[*id];
            let recent = killed_at.duration_since(ack.at) < RECENT;
            let kept = stored.positions.get(*id) == Some(&ack.position);
            assert!(
                kept || !recent,
                "{topic}: recent acknowledged {id} expired or lost"
            );
        }
    }
    stored.expired(acked.values().map(|ack| &ack.position))
}
