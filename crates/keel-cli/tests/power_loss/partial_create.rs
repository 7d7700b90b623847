//! Entries left by a killed run. keel fsyncs a directory right after it creates or renames an
//! entry in it; a run killed in between leaves an entry that looks permanent but is not.
//! Before e0e35ef the next start (kill -9 alone loses nothing) served such an entry without
//! fsyncing its parent, acknowledged writes under it, and the next power loss dropped the
//! entry with all of them while keel started "ready" without it.
//!
//! Method of each test: spin on the filesystem's counters and kill keel right after the
//! operation of interest; when the kill landed before the parent's fsync (the window is a few
//! filesystem calls wide, so each test tries many times), restart without a loss, have keel
//! acknowledge writes under the entry, then kill -9, lose everything unsynced, restart and
//! check.

use std::collections::HashSet;

use keel_powerloss::Loss;
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Api, Position, Settle, event, pull_spec};
use crate::rig::{self, Rig};

/// Attempts at most without `KEEL_POWERLOSS_ATTEMPTS`.
const ATTEMPTS_DEFAULT: u64 = 40;
/// Attempts whose kill landed in the window after which a test stops, without
/// `KEEL_POWERLOSS_ATTEMPTS` (with it, every attempt is made).
const HITS_DEFAULT: u64 = 3;
/// Events the subscription test's topic holds, each acked under a subscription left by a
/// killed create.
const SUBSCRIPTION_EVENTS: u64 = 20;

/// Goal: a topic that keel serves, and acknowledges publishes into, survives a power loss.
/// Method: the module's; the crash point is the topic create's `rename(topics/.creating-NAME,
/// topics/NAME)`, before the fsync of `topics/`.
/// Invariant: after kill -9, a power loss and a restart, the topic and every publish
/// acknowledged into it are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_left_by_a_killed_create_survives_power_loss() {
    entry_left_by_a_killed_create_survives_power_loss(Created::Topic).await;
}

/// Goal: a subscription that keel serves, and answers pull acks for, survives a power loss.
/// Method: the module's; the crash point is the subscription create's
/// `rename(subscriptions/.creating-NAME, subscriptions/NAME)`, before the fsync of
/// `subscriptions/`.
/// Invariant: after kill -9, a power loss and a restart, the subscription is there and no
/// event whose ack was answered is delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_left_by_a_killed_create_survives_power_loss() {
    entry_left_by_a_killed_create_survives_power_loss(Created::Subscription).await;
}

/// Goal: a data directory that keel acknowledged writes under survives a power loss.
/// Method: the module's, on a fresh filesystem per attempt; the crash point is keel's first
/// start, between `mkdir DATA_DIR` and the fsync of its parent.
/// Invariant: after kill -9, a power loss and a restart, keel is ready with the topic it
/// created (201) and every publish acknowledged into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_left_by_a_killed_start_survives_power_loss() {
    if !rig::fuse_available() {
        return;
    }
    let mut attempts = Attempts::new("the first start's mkdir, before the fsync of its parent");
    while attempts.next().is_some() {
        // Nothing random: the losses here are explicit.
        let mut rig = Rig::mount("", 0);
        rig.spawn();
        // The first creation on the fresh filesystem is the data directory itself.
        let created = rig.spin_until(|stats| stats.entries_created >= 1);
        rig.kill();
        let hit = created.is_some() && rig.data_dir_exists() && rig.stats().dir_syncs == 0;
        attempts.record(hit);
        if hit {
            rig.start().await;
            let api = rig.api();
            Created::Topic.create(&api, "t").await;
            let work = Created::Topic.acknowledge_work(&api, "t").await;
            Created::Topic
                .check_after_power_loss(&mut rig, "t", &work)
                .await;
        }
        rig.unmount();
    }
    attempts.finish();
}

/// What a create under test makes.
#[derive(Clone, Copy, Debug)]
enum Created {
    Topic,
    /// A pull subscription of topic `t`.
    Subscription,
}

/// What keel acknowledged under a created entry.
enum Work {
    /// Publishes to a topic.
    Published(Vec<(String, Position)>),
    /// Acked pulls of a subscription (event ids).
    Acked(HashSet<String>),
}

impl Created {
    fn path(self, name: &str) -> String {
        match self {
            Created::Topic => format!("/v1/topics/{name}"),
            Created::Subscription => format!("/v1/subscriptions/{name}"),
        }
    }

    fn spec(self) -> Value {
        match self {
            Created::Topic => json!({"partitions": 1}),
            Created::Subscription => pull_spec("t", "earliest"),
        }
    }

    /// The directory fsyncs a create makes before its rename (keel-engine's
    /// `write_topic_dir`: `.creating-NAME`; `subscription::write_new`: its checkpoint log's
    /// directory as the log is created and opened, then `.creating-NAME`). A kill with no
    /// other since the rename landed before the fsync of the parent.
    fn dir_syncs_before_rename(self) -> u64 {
        match self {
            Created::Topic => 1,
            Created::Subscription => 3,
        }
    }

    async fn create(self, api: &Api, name: &str) {
        api.expect(Method::PUT, &self.path(name), self.spec(), 201)
            .await;
    }

    /// Has keel acknowledge writes under `name`: 5 publishes, or acks of every event of `t`.
    async fn acknowledge_work(self, api: &Api, name: &str) -> Work {
        match self {
            Created::Topic => {
                let events = (0..5)
                    .map(|i| event(&format!("{name}-{i}"), None))
                    .collect();
                let published = api.publish(name, events).await;
                Work::Published(published.into_iter().map(|p| (p.id, p.position)).collect())
            }
            Created::Subscription => {
                let mut acked = HashSet::new();
                while (acked.len() as u64) < SUBSCRIPTION_EVENTS {
                    let messages = api.pull(name, 100, "500ms").await;
                    let stale = api.settle(name, Settle::Ack, &messages).await;
                    assert!(
                        stale.is_empty(),
                        "acks of fresh pulls named stale: {stale:?}"
                    );
                    acked.extend(messages.into_iter().map(|m| m.event_id));
                }
                Work::Acked(acked)
            }
        }
    }

    /// Kills keel, loses everything unsynced, restarts it, and checks `name` and `work`.
    async fn check_after_power_loss(self, rig: &mut Rig, name: &str, work: &Work) {
        rig.kill();
        rig.power_loss(Loss::Unsynced);
        rig.start().await;
        let api = rig.api();
        let (status, info) = api.send(Method::GET, &self.path(name), &Value::Null).await;
        let (_, ready) = api.send(Method::GET, "/readyz", &Value::Null).await;
        assert_eq!(
            status,
            200,
            "{self:?} {name} served with acknowledged writes under it; after kill -9 and a \
             power loss keel is {ready} and GET {} answers {info}: its entry was never made \
             durable",
            self.path(name)
        );
        match work {
            Work::Published(published) => {
                let stored = api.stored(name).await;
                let lost = stored.lost(published.iter().map(|(id, position)| (id, *position)));
                assert!(lost.is_empty(), "publishes to {name} lost: {lost:?}");
            }
            Work::Acked(acked) => {
                let again = api.pull(name, 100, "100ms").await;
                let again: Vec<&str> = again.iter().map(|m| m.event_id.as_str()).collect();
                assert!(
                    again.iter().all(|id| !acked.contains(*id)),
                    "acked pulls of {name} delivered again: {again:?}"
                );
            }
        }
    }
}

/// The topic and subscription tests: creates, each killed after its rename, on one keel.
async fn entry_left_by_a_killed_create_survives_power_loss(created: Created) {
    if !rig::fuse_available() {
        return;
    }
    let mut rig = Rig::mount("", 0);
    let api = rig.api();
    rig.start().await;
    Created::Topic.create(&api, "t").await;
    let events = (0..SUBSCRIPTION_EVENTS).map(|i| event(&format!("t-{i}"), None));
    api.publish("t", events.collect()).await;
    let mut attempts = Attempts::new("the create's rename, before the fsync of its parent");
    while let Some(attempt) = attempts.next() {
        let name = format!("x{attempt}");
        let hit = kill_after_rename(&mut rig, created, &name).await;
        attempts.record(hit);
        if hit {
            let work = created.acknowledge_work(&api, &name).await;
            created.check_after_power_loss(&mut rig, &name, &work).await;
        }
    }
    attempts.finish();
    rig.unmount();
}

/// Creates `name`, kills keel right after the create's rename, and restarts it without a
/// loss; whether the kill landed before the fsync of the parent.
async fn kill_after_rename(rig: &mut Rig, created: Created, name: &str) -> bool {
    let api = rig.api();
    let before = rig.stats();
    let create = {
        let (api, path) = (api.clone(), created.path(name));
        tokio::spawn(async move { api.try_send(Method::PUT, &path, &created.spec()).await })
    };
    let renamed = rig.spin_until(|stats| stats.renames > before.renames);
    rig.kill();
    let dir_syncs = rig.stats().dir_syncs - before.dir_syncs;
    let answer = create.await.unwrap();
    rig.start().await;
    let hit = renamed.is_some() && dir_syncs == created.dir_syncs_before_rename();
    if hit {
        // kill -9 alone loses nothing: what the rename published is served.
        let status = api.status(&created.path(name)).await;
        assert_eq!(
            status, 200,
            "{created:?} {name} renamed into place (create answered {answer:?})"
        );
    }
    hit
}

/// A test's tries at landing a kill in its window.
struct Attempts {
    /// The window, for the report.
    window: &'static str,
    made: u64,
    made_max: u64,
    hits: u64,
    hits_enough: u64,
}

impl Attempts {
    fn new(window: &'static str) -> Attempts {
        let (made_max, hits_enough) = match rig::attempts() {
            Some(attempts) => (attempts, u64::MAX),
            None => (ATTEMPTS_DEFAULT, HITS_DEFAULT),
        };
        Attempts {
            window,
            made: 0,
            made_max,
            hits: 0,
            hits_enough,
        }
    }

    /// The number of the next attempt, when one is to be made.
    fn next(&self) -> Option<u64> {
        (self.made < self.made_max && self.hits < self.hits_enough).then_some(self.made)
    }

    fn record(&mut self, hit: bool) {
        self.made += 1;
        self.hits += u64::from(hit);
    }

    /// Reports, and fails when no attempt landed in the window: the test proved nothing.
    fn finish(self) {
        eprintln!(
            "{} attempts, {} killed keel in {}",
            self.made, self.hits, self.window
        );
        assert!(
            self.hits > 0,
            "no attempt of {} killed keel in {} (if keel's fsyncs changed, update \
             `Created::dir_syncs_before_rename`)",
            self.made,
            self.window
        );
    }
}
