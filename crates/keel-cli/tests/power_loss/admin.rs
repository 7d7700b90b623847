//! Administrative operations and starts: every create, delete, pause, resume and seek keel
//! answered holds after a loss; losses while keel recovers, and losses in a row, lose
//! nothing acknowledged.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use keel_powerloss::Loss;
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Api, Message, Position, Settle, event, pull_spec};
use crate::clients::{self, Acked, publish_until_dead};
use crate::rig::{self, Rig};
use keel_testkit::random::splitmix64;

/// Goal: every administrative operation keel answered survives kill -9 and a power loss.
/// Method: on topic `a` (50 events), each operation is answered, then keel is crashed at once
/// (kill -9, a loss alternating unsynced and torn, restart), then it is checked: subscription
/// creates (`earliest` and `latest`), pause, resume, seeks to earliest and to latest,
/// subscription deletes and a delete then create of the same name; topic `b` deleted and
/// created again with more partitions, three times; finally two more crashes without load.
/// Invariants: each answer holds after the crash: a created subscription exists from its start
/// position, a paused one refuses pulls, a resumed one is not paused, a seek redelivers
/// exactly what it should, a deleted subscription or topic is gone, a re-created topic has
/// its new partition count and never the deleted one's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_admin_operations_survive_power_loss() {
    if !rig::fuse_available() {
        return;
    }
    let mut rig = Rig::mount("", rig::seed());
    let api = rig.api();
    rig.start().await;
    api.create_topic("a", json!({"partitions": 2})).await;
    publish_numbered(&api, 0..40).await;
    subscription_creates_survive(&mut rig, &api).await;
    pause_and_resume_survive(&mut rig, &api).await;
    seeks_survive(&mut rig, &api).await;
    subscription_deletes_survive(&mut rig, &api).await;
    topic_recreates_survive(&mut rig, &api).await;
    for _ in 0..2 {
        rig.crash(Vec::new()).await;
    }
    assert_eq!(
        api.stored("a").await.positions.len(),
        50,
        "topic a after every crash"
    );
    for (name, status) in [("s1", 200), ("s2", 404), ("s3", 200)] {
        let path = format!("/v1/subscriptions/{name}");
        assert_eq!(api.status(&path).await, status, "{name} after every crash");
    }
    rig.unmount();
}

/// Publishes events `a{i}` to topic `a`, keyed `k{i}`, for every `i` of `numbers`.
async fn publish_numbered(api: &Api, numbers: std::ops::Range<u32>) {
    let events = numbers
        .map(|i| event(&format!("a{i}"), Some(&format!("k{i}"))))
        .collect();
    api.publish("a", events).await;
}

/// The event ids of `messages`.
fn event_ids(messages: Vec<Message>) -> HashSet<String> {
    messages.into_iter().map(|m| m.event_id).collect()
}

/// Crashes keel, then checks that GET `path` answers `status`, as the operation answered
/// before the crash left it.
async fn crash_then_expect(rig: &mut Rig, api: &Api, path: &str, status: u16) {
    rig.crash(Vec::new()).await;
    assert_eq!(api.status(path).await, status, "{path} after the crash");
}

/// Creates pull subscription `name` of topic `a`, starting at `start`.
async fn create_subscription(api: &Api, name: &str, start: &str) {
    api.create_subscription(name, pull_spec("a", start)).await;
}

/// s1 (earliest) and s2 (latest) are created; after a crash each, s1 exists and s2 delivers
/// exactly the events published after its creation.
async fn subscription_creates_survive(rig: &mut Rig, api: &Api) {
    create_subscription(api, "s1", "earliest").await;
    crash_then_expect(rig, api, "/v1/subscriptions/s1", 200).await;
    create_subscription(api, "s2", "latest").await;
    publish_numbered(api, 40..50).await;
    rig.crash(Vec::new()).await;
    let delivered = event_ids(api.pull_until_quiet("s2", false).await);
    let expected: HashSet<String> = (40..50).map(|i| format!("a{i}")).collect();
    assert_eq!(delivered, expected, "s2 (latest) after the crash");
}

/// s1 is paused, then resumed; after a crash each, it is paused (refusing pulls), then not.
async fn pause_and_resume_survive(rig: &mut Rig, api: &Api) {
    for (action, paused) in [("pause", true), ("resume", false)] {
        let path = format!("/v1/subscriptions/s1/{action}");
        api.expect(Method::POST, &path, json!({}), 200).await;
        rig.crash(Vec::new()).await;
        let info = api.subscription("s1").await;
        assert_eq!(
            !info["paused"].is_null(),
            paused,
            "{action} of s1 lost: {info}"
        );
        if paused {
            let pull = json!({"max": 10});
            let (status, body) = api
                .send(Method::POST, "/v1/subscriptions/s1/pull", &pull)
                .await;
            assert_eq!(status, 409, "paused s1 refuses pulls: {body}");
        }
    }
}

/// s1 acks all 50 events, then seeks to earliest, then to latest; after a crash each, it
/// delivers all 50 again, then nothing.
async fn seeks_survive(rig: &mut Rig, api: &Api) {
    let all: HashSet<String> = (0..50).map(|i| format!("a{i}")).collect();
    assert_eq!(
        event_ids(api.pull_until_quiet("s1", true).await),
        all,
        "s1 delivers all"
    );
    for (to, expected) in [("earliest", all), ("latest", HashSet::new())] {
        let seek = json!({ "to": to });
        api.expect(Method::POST, "/v1/subscriptions/s1/seek", seek, 200)
            .await;
        rig.crash(Vec::new()).await;
        let delivered = event_ids(api.pull_until_quiet("s1", true).await);
        assert_eq!(
            delivered, expected,
            "the seek of s1 to {to} after the crash"
        );
    }
}

/// s2 is deleted; s3 is created, deleted and created again with another start; after a crash
/// each, s2 is gone and s3 is the one created last.
async fn subscription_deletes_survive(rig: &mut Rig, api: &Api) {
    api.delete("/v1/subscriptions/s2").await;
    crash_then_expect(rig, api, "/v1/subscriptions/s2", 404).await;
    create_subscription(api, "s3", "earliest").await;
    api.delete("/v1/subscriptions/s3").await;
    create_subscription(api, "s3", "latest").await;
    rig.crash(Vec::new()).await;
    let info = api.subscription("s3").await;
    assert_eq!(
        info["start"], "latest",
        "s3 is the one created last: {info}"
    );
}

/// Topic b, three times: published to, deleted, created again with one partition more and
/// published to; after a crash, b has the new partition count and exactly the new events.
async fn topic_recreates_survive(rig: &mut Rig, api: &Api) {
    api.create_topic("b", json!({"partitions": 1})).await;
    for round in 0..3u32 {
        let old = (0..20).map(|i| event(&format!("old{round}-{i}"), None));
        api.publish("b", old.collect()).await;
        api.delete("/v1/topics/b").await;
        let partitions = 2 + round;
        let config = json!({ "partitions": partitions });
        api.create_topic("b", config).await;
        let new = (0..15).map(|i| event(&format!("new{round}-{i}"), None));
        let published = api.publish("b", new.collect()).await;
        rig.crash(Vec::new()).await;
        let stored = api.stored("b").await;
        assert_eq!(
            stored.start_offsets.len(),
            partitions as usize,
            "b's partitions"
        );
        let expected: HashMap<String, Position> =
            published.into_iter().map(|p| (p.id, p.position)).collect();
        assert_eq!(
            stored.positions, expected,
            "re-created b holds exactly its own events"
        );
    }
}

/// Crash cycles of the start test without `KEEL_POWERLOSS_CYCLES`.
const START_CYCLES_DEFAULT: u64 = 6;
/// How long into its start keel is killed, at most: it is ready within about 20–60 ms here,
/// recovery included.
const START_KILL_US_MAX: u64 = 60_000;

/// What the start test's subscription and publishers were answered.
struct Answered {
    /// Every acknowledged publish to topic `p`.
    acked: Acked,
    /// Events whose pull ack was answered.
    acked_pulls: HashSet<String>,
    /// Events whose reject was answered.
    dead: HashSet<String>,
}

/// Goal: a power loss while keel starts (recovering torn tails) loses nothing acknowledged,
/// and keel starts ready afterwards; so do losses in a row without load.
/// Method: topic p (4 partitions, 4 KiB segments) with 600 events and a pull subscription
/// that settled 350 of them (rejecting about one in ten, acking the rest), then paused. Each cycle loads p for 200 ms, kills
/// keel, tears its unsynced writes, starts keel and kills it 0–60 ms into its start, then
/// loses power again and starts it. Then crashes without load. Finally the subscription is
/// resumed and drained.
/// Invariants: after every start, every acknowledged publish is at its position, intact,
/// offsets are dense, the pause holds and the DLQ holds exactly the rejected events; in the
/// drain no acked or rejected event is delivered again and every other acknowledged publish
/// is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_while_keel_starts_loses_nothing_acknowledged() {
    if !rig::fuse_available() {
        return;
    }
    let (cycles, seed) = (rig::cycles(START_CYCLES_DEFAULT), rig::seed());
    let mut rig = Rig::mount("segment_bytes_max = 4096\n", seed);
    let api = rig.api();
    rig.start().await;
    let answered = build(&api).await;
    for cycle in 0..cycles {
        // Load until the kill, so that the loss leaves torn tails for the start to cut.
        load_then_kill(&mut rig, &api, &answered, cycle).await;
        rig.power_loss(Loss::Torn {
            seed: splitmix64(seed ^ cycle),
        });
        let delay = Duration::from_micros(splitmix64(seed ^ (cycle + 100)) % START_KILL_US_MAX);
        let ready_after = run_for(&mut rig, &api, delay).await;
        rig.crash(Vec::new()).await;
        eprintln!("cycle {cycle}: killed {delay:?} into its start (ready after {ready_after:?})");
        verify(&api, &answered, &format!("cycle {cycle}")).await;
    }
    for round in 0..cycles.div_ceil(2) {
        rig.crash(Vec::new()).await;
        verify(&api, &answered, &format!("loss {round} in a row")).await;
    }
    drain(&api, &answered).await;
    rig.unmount();
}

/// Topic p with 600 acknowledged events; subscription q settles 350 of them, rejecting those
/// whose id ends in 7 and acking the others, then is paused.
async fn build(api: &Api) -> Answered {
    api.create_topic("p", json!({"partitions": 4})).await;
    api.create_subscription("q", pull_spec("p", "earliest"))
        .await;
    let acked = Acked::default();
    for batch in 0..6 {
        let events = (0..100)
            .map(|i| event(&format!("p{batch}-{i}"), Some(&format!("k{}", i % 13))))
            .collect();
        clients::record(&acked, api.publish("p", events).await);
    }
    let (mut acked_pulls, mut dead) = (HashSet::new(), HashSet::new());
    while acked_pulls.len() + dead.len() < 350 {
        let messages = api.pull("q", 50, "500ms").await;
        let (reject, ack): (Vec<Message>, Vec<Message>) = messages
            .into_iter()
            .partition(|m| m.event_id.ends_with('7'));
        for (settle, messages, done) in [
            (Settle::Ack, ack, &mut acked_pulls),
            (Settle::Reject, reject, &mut dead),
        ] {
            let stale = api.settle("q", settle, &messages).await;
            assert!(
                stale.is_empty(),
                "{settle:?} of fresh pulls named stale: {stale:?}"
            );
            done.extend(messages.into_iter().map(|m| m.event_id));
        }
    }
    api.wait_dlq_depth("q", dead.len()).await;
    api.expect(Method::POST, "/v1/subscriptions/q/pause", json!({}), 200)
        .await;
    Answered {
        acked,
        acked_pulls,
        dead,
    }
}

/// Publishes to p from three clients for 200 ms, then kills keel.
async fn load_then_kill(rig: &mut Rig, api: &Api, answered: &Answered, cycle: u64) {
    let publishers = (0..3)
        .map(|publisher| {
            let batch = move |number: u64| -> Vec<Value> {
                let id = |i: u64| format!("L{cycle}-{publisher}-{number}-{i}");
                (0..7).map(|i| event(&id(i), None)).collect()
            };
            let acked = answered.acked.clone();
            tokio::spawn(publish_until_dead(api.clone(), "p".into(), acked, batch))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    rig.kill_under(publishers).await;
}

/// Starts keel and lets it run for `delay`, without waiting for it to be ready; how long it
/// took to turn ready, when it did.
async fn run_for(rig: &mut Rig, api: &Api, delay: Duration) -> Option<Duration> {
    rig.spawn();
    let started = Instant::now();
    let mut ready_after = None;
    while started.elapsed() < delay {
        if ready_after.is_none()
            && let Some((200, _)) = api.try_send(Method::GET, "/readyz", &Value::Null).await
        {
            ready_after = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    ready_after
}

/// Checks every answer of the start test after a start.
async fn verify(api: &Api, answered: &Answered, label: &str) {
    let stored = api.stored("p").await;
    let positions = clients::positions(&answered.acked);
    let lost = stored.lost(positions.iter().map(|(id, position)| (id, *position)));
    assert!(
        lost.is_empty(),
        "{label}: acknowledged publishes lost or moved: {lost:?}"
    );
    let info = api.subscription("q").await;
    assert!(!info["paused"].is_null(), "{label}: the pause lost: {info}");
    let dead = api.dead_event_ids("q").await;
    assert_eq!(
        dead, answered.dead,
        "{label}: the DLQ holds exactly the rejected events"
    );
}

/// Resumes q and drains it: no acked or rejected event is delivered again, and every other
/// acknowledged publish is delivered.
async fn drain(api: &Api, answered: &Answered) {
    api.expect(Method::POST, "/v1/subscriptions/q/resume", json!({}), 200)
        .await;
    let delivered: HashSet<String> = api
        .pull_until_quiet("q", true)
        .await
        .into_iter()
        .map(|m| m.event_id)
        .collect();
    let again: Vec<&String> = delivered
        .intersection(&answered.acked_pulls)
        .take(5)
        .collect();
    assert!(again.is_empty(), "acked pulls delivered again: {again:?}");
    let again: Vec<&String> = delivered.intersection(&answered.dead).take(5).collect();
    assert!(
        again.is_empty(),
        "rejected events delivered again: {again:?}"
    );
    let settled = |id: &&String| answered.acked_pulls.contains(*id) || answered.dead.contains(*id);
    let positions = clients::positions(&answered.acked);
    let expected: Vec<&String> = positions.keys().filter(|id| !settled(id)).collect();
    let missing: Vec<&&String> = expected
        .iter()
        .filter(|id| !delivered.contains(**id))
        .take(5)
        .collect();
    eprintln!(
        "drain: {} delivered, {} expected",
        delivered.len(),
        expected.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged publishes never delivered: {missing:?}"
    );
}
