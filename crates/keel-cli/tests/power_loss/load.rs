//! Power loss under load. Each cycle puts keel under load (publishers, a pull consumer
//! acking, a push subscription, a topic created and another deleted), kills it with SIGKILL,
//! drops everything unsynced (every other cycle keeping a torn part of it instead) and
//! restarts keel on what survived. 12 cycles; `KEEL_POWERLOSS_CYCLES=N` for a soak.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::api::{Api, event, pull_spec};
use crate::clients::{self, Acked, Pulled, Until, consume, publish_until_dead};
use crate::rig::{self, Rig};
use keel_testkit::random::splitmix64;
use keel_testkit::sink::{Sink, policy};

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 4;
const PUBLISHERS: u64 = 3;
const PULL_SUBSCRIPTION: &str = "audit";
const PUSH_SUBSCRIPTION: &str = "billing";
/// Segment size of the test's keel: small, so that rolls (a new segment file, its index
/// files, a directory fsync) happen under load in every cycle.
const SEGMENT_BYTES_MAX: u64 = 64 * 1024;
/// Cycles without `KEEL_POWERLOSS_CYCLES`.
const CYCLES_DEFAULT: u64 = 12;
/// How long the final drain may take, for the pull consumer and for the push sink each.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);

/// Goal: nothing keel acknowledged is lost to a power loss under load, and keel never starts
/// with less than it answered.
/// Method: the cycles of the module doc; after every restart, every acknowledged publish,
/// pull ack, create and delete is checked; at the end both subscriptions drain.
/// Invariants: keel starts ready, with every topic and subscription answered 201 and without
/// every topic answered 204 to its delete; every acknowledged publish is at its partition and
/// offset, intact; offsets are dense from 0 and no event is stored twice; no pulled event
/// whose ack was answered (not stale) is delivered again; finally the pull consumer and the
/// push sink each receive every acknowledged publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_under_load_loses_nothing_acknowledged() {
    if !rig::fuse_available() {
        return;
    }
    let (cycles, seed) = (rig::cycles(CYCLES_DEFAULT), rig::seed());
    let mut rig = Rig::mount(&format!("segment_bytes_max = {SEGMENT_BYTES_MAX}\n"), seed);
    let (api, sink) = (rig.api(), Sink::start(policy::accept()).await);
    rig.start().await;
    set_up(&api, &sink).await;
    let (acked, pulled): (Acked, Arc<Mutex<Pulled>>) = Default::default();
    let mut topology = Topology::new();
    for cycle in 0..cycles {
        let mut load: Vec<_> = (0..PUBLISHERS)
            .map(|publisher| tokio::spawn(publish(api.clone(), cycle, publisher, acked.clone())))
            .collect();
        let consumer = consume(
            api.clone(),
            PULL_SUBSCRIPTION.into(),
            pulled.clone(),
            Until::Dead,
        );
        load.push(tokio::spawn(consumer));
        let run_ms = 150 + splitmix64(seed ^ cycle) % 450;
        tokio::time::sleep(Duration::from_millis(run_ms / 2)).await;
        topology.change(&api, cycle).await;
        tokio::time::sleep(Duration::from_millis(run_ms / 2)).await;
        rig.crash(load).await;
        let stored = verify_publishes(&api, &acked).await;
        topology.verify(&api).await;
        let pulled = pulled.lock().unwrap();
        eprintln!(
            "cycle {cycle}: {} publishes acknowledged, {stored} stored, {} pulls acked",
            acked.lock().unwrap().len(),
            pulled.acked.len()
        );
        let again = &pulled.redelivered_after_ack;
        assert!(again.is_empty(), "acked pulls delivered again: {again:?}");
    }
    let acked: HashSet<String> = acked.lock().unwrap().keys().cloned().collect();
    drain(&api, &sink, &pulled, &acked).await;
    let losses = rig.losses();
    eprintln!(
        "{} acknowledged publishes over {cycles} power losses; in all: {losses}",
        acked.len()
    );
    assert!(
        acked.len() as u64 > cycles * 20,
        "the load acknowledged events"
    );
    // keel fsyncs every directory entry it relies on at once, so the losses drop unsynced
    // bytes (the tails of group commits in flight, marks), not entries; with the directory
    // fsyncs removed the test fails (see docs/durability.md).
    assert!(
        rig::kill_only() || (losses.bytes_dropped > 0 && losses.files_reverted > 0),
        "the power losses dropped unsynced bytes (else the test proves nothing): {losses}"
    );
    rig.unmount();
}

/// Creates the load's topic and its two subscriptions: pull, and push to `sink`.
async fn set_up(api: &Api, sink: &Sink) {
    api.create_topic(TOPIC, json!({"partitions": PARTITIONS}))
        .await;
    let push = json!({"topic": TOPIC, "start": "earliest", "ordering": "key",
                      "sink": {"url": sink.url("/hook")}});
    for (name, spec) in [
        (PULL_SUBSCRIPTION, pull_spec(TOPIC, "earliest")),
        (PUSH_SUBSCRIPTION, push),
    ] {
        api.create_subscription(name, spec).await;
    }
}

/// One publisher of cycle `cycle`: batches of 1–8 events, keyed, until keel dies.
async fn publish(api: Api, cycle: u64, publisher: u64, acked: Acked) {
    let batch = move |number: u64| -> Vec<Value> {
        let size = 1 + (number * 5 + publisher) % 8;
        let event_of = |i: u64| {
            let key = format!("key-{}", (number * 8 + i) % 17);
            event(&format!("c{cycle}-p{publisher}-{number}-{i}"), Some(&key))
        };
        (0..size).map(event_of).collect()
    };
    publish_until_dead(api, TOPIC.to_owned(), acked, batch).await;
}

/// Checks every acknowledged publish against the stored partitions; the events stored.
async fn verify_publishes(api: &Api, acked: &Acked) -> usize {
    let stored = api.stored(TOPIC).await;
    let starts = &stored.start_offsets;
    assert!(
        starts.values().all(|start| *start == 0),
        "{TOPIC} starts at 0: {starts:?}"
    );
    let positions = clients::positions(acked);
    let lost = stored.lost(positions.iter().map(|(id, position)| (id, *position)));
    assert!(
        lost.is_empty(),
        "acknowledged publishes lost or moved: {lost:?}"
    );
    stored.positions.len()
}

/// The topics and subscriptions whose creation or deletion keel answered.
struct Topology {
    /// Topics answered 201 and not deleted, `TOPIC` first.
    topics: Vec<String>,
    /// Topics answered 204 to their delete.
    deleted: Vec<String>,
}

impl Topology {
    fn new() -> Topology {
        let topics = vec![TOPIC.to_owned()];
        Topology {
            topics,
            deleted: Vec::new(),
        }
    }

    /// Mid-load: creates a topic, and deletes the one the previous cycle created.
    async fn change(&mut self, api: &Api, cycle: u64) {
        let name = format!("created-{cycle}");
        api.create_topic(&name, json!({"partitions": 2})).await;
        self.topics.push(name);
        if cycle > 0 {
            let name = self.topics.remove(1);
            api.delete(&format!("/v1/topics/{name}")).await;
            self.deleted.push(name);
        }
    }

    /// Checks that every topic and subscription answered 201 is there, and every topic
    /// answered 204 to its delete is not.
    async fn verify(&self, api: &Api) {
        let topics = self
            .topics
            .iter()
            .map(|topic| (format!("topics/{topic}"), 200));
        let deleted = self
            .deleted
            .iter()
            .map(|topic| (format!("topics/{topic}"), 404));
        let subscriptions = [PULL_SUBSCRIPTION, PUSH_SUBSCRIPTION]
            .map(|name| (format!("subscriptions/{name}"), 200));
        for (path, status) in topics.chain(deleted).chain(subscriptions) {
            assert_eq!(
                api.status(&format!("/v1/{path}")).await,
                status,
                "{path} after the power loss"
            );
        }
    }
}

/// Every acknowledged publish reaches both subscriptions, and no acked pull comes again.
async fn drain(api: &Api, sink: &Sink, pulled: &Arc<Mutex<Pulled>>, acked: &HashSet<String>) {
    let until = Until::AckSent(acked.clone());
    let drain = consume(api.clone(), PULL_SUBSCRIPTION.into(), pulled.clone(), until);
    tokio::time::timeout(DRAIN_TIMEOUT, drain)
        .await
        .expect("the pull consumer receives every acknowledged publish");
    let again = pulled.lock().unwrap().redelivered_after_ack.clone();
    assert!(again.is_empty(), "acked pulls delivered again: {again:?}");
    let started = Instant::now();
    loop {
        let accepted = sink.accepted().into_iter();
        let pushed: HashSet<String> = accepted.map(|a| a.request.event_id().to_owned()).collect();
        let missing: Vec<&String> = acked.difference(&pushed).take(5).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < DRAIN_TIMEOUT,
            "acknowledged publishes never pushed: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
