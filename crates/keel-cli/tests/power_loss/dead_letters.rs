//! Dead-letter queues. Rejects and acks of redriven dead letters, each in its own request so
//! that they race the subscription's store rounds, under repeated kill -9 and power loss; and
//! a DLQ compaction killed at points around its swap.

use std::collections::{BTreeSet, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_powerloss::Loss;
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Api, Message, Settle, event, pull_spec};
use crate::rig::{self, Rig};
use keel_testkit::random::splitmix64;

/// Crash cycles of the settle tests without `KEEL_POWERLOSS_CYCLES`.
const SETTLE_CYCLES_DEFAULT: u64 = 30;
/// Crash cycles per queue of a settle test: each few cycles a fresh topic and subscription,
/// as keel's work at a start grows with the dead letters redriven and not yet acked.
const CYCLES_PER_QUEUE: u64 = 5;
/// Events published (and, for acks, dead-lettered and redriven) per crash cycle: more than
/// the consumers settle in one.
const EVENTS_PER_CYCLE: u64 = 200;
/// Consumers settling at once.
const CONSUMERS: usize = 3;
/// A settle test's crash cycles run between this and twice this long.
const SETTLE_RUN_MS_MIN: u64 = 20;
/// Requests checking the DLQ at once after a restart.
const CHECKERS: usize = 4;
/// Events per publish request, and messages per pull, when filling a DLQ.
const BATCH_EVENTS: u64 = 1000;

/// Goal: a reject keel answered stays done (docs/delivery.md: "a pull ack (and nack, reject)
/// answers only once a checkpoint containing it is durable").
/// Method: consumers pull small batches and reject each message in its own request, racing
/// the store rounds that write dead letters and checkpoints; kill -9 and a loss every
/// 20–40 ms of load; after each restart every reject answered since the last is looked up
/// in the DLQ. 30 cycles, on a fresh queue every 5. Before e0e35ef a reject answered by a
/// round that had not written its dead letter was undone (a cycle in ten or so).
/// Invariant: every event whose reject was answered (not stale) is in the DLQ after every
/// restart and is never delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_rejects_survive_power_loss() {
    answered_settles_survive_power_loss(Settle::Reject).await;
}

/// Goal: an ack keel answered for a redriven dead letter stays done.
/// Method: as `answered_rejects_survive_power_loss`, with the events dead-lettered and
/// redriven first, and acks instead of rejects. Before e0e35ef an ack answered by a round
/// that had not written the entry's removal was undone.
/// Invariant: every redriven event whose ack was answered (not stale) is out of the DLQ after
/// every restart and is never delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redriven_pull_acks_survive_power_loss() {
    answered_settles_survive_power_loss(Settle::Ack).await;
}

/// What the consumers of a queue saw, across crashes.
#[derive(Debug, Default)]
struct Settled {
    /// Event ids whose settle was answered and not named stale.
    done: HashSet<String>,
    /// The messages settled since the last restart.
    unchecked: Vec<Message>,
    /// Settled events delivered again: each one a violation.
    delivered_after_done: Vec<String>,
}

/// The settle tests: `Reject` over fresh events, `Ack` over redriven dead letters.
async fn answered_settles_survive_power_loss(settle: Settle) {
    if !rig::fuse_available() {
        return;
    }
    let (cycles, seed) = (rig::cycles(SETTLE_CYCLES_DEFAULT), rig::seed());
    let mut rig = Rig::mount("", seed);
    rig.start().await;
    let mut settled = 0;
    for first in (0..cycles).step_by(CYCLES_PER_QUEUE as usize) {
        let queue_cycles = first..(first + CYCLES_PER_QUEUE).min(cycles);
        settled += settle_on_fresh_queue(&mut rig, settle, queue_cycles, seed).await;
    }
    assert!(
        settled > cycles * 10,
        "the consumers settled events: {settled}"
    );
    rig.unmount();
}

/// Runs crash cycles `cycles` on a fresh queue: consumers settle its events, each answered
/// settle is checked after the restart that follows it, and the whole DLQ at the end. How
/// many settles were answered.
async fn settle_on_fresh_queue(
    rig: &mut Rig,
    settle: Settle,
    cycles: Range<u64>,
    seed: u64,
) -> u64 {
    let queue = Queue::create(&rig.api(), cycles.start).await;
    let events = EVENTS_PER_CYCLE * (cycles.end - cycles.start);
    match settle {
        Settle::Reject => queue.publish(0..events).await,
        Settle::Ack => queue.dead_letter_and_redrive(events).await,
    }
    let (settled, mut undone): (Arc<Mutex<Settled>>, BTreeSet<String>) = Default::default();
    for cycle in cycles {
        let consumers = (0..CONSUMERS)
            .map(|_| tokio::spawn(settle_each(queue.clone(), settle, settled.clone())))
            .collect();
        let run_ms = SETTLE_RUN_MS_MIN + splitmix64(seed ^ cycle) % SETTLE_RUN_MS_MIN;
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        rig.crash(consumers).await;
        let answered = std::mem::take(&mut settled.lock().unwrap().unchecked);
        let cycle_undone = queue.undone_by_restart(settle, &answered).await;
        let count = answered.len();
        eprintln!(
            "cycle {cycle} ({run_ms} ms): {count} {settle:?}s answered, undone {cycle_undone:?}"
        );
        undone.extend(cycle_undone);
    }
    let settled = std::mem::take(&mut *settled.lock().unwrap());
    assert!(
        undone.is_empty(),
        "answered {settle:?}s undone by a restart: {undone:?}"
    );
    let again = &settled.delivered_after_done;
    assert!(
        again.is_empty(),
        "events {settle:?}ed (answered) delivered again: {again:?}"
    );
    queue.check_dlq(settle, &settled.done).await;
    queue.delete().await;
    settled.done.len() as u64
}

/// A topic of one partition and a pull subscription of it, whose DLQ a test fills.
#[derive(Clone, Debug)]
struct Queue {
    api: Api,
    topic: String,
    subscription: String,
}

impl Queue {
    /// Topic `t{number}` and its subscription `s{number}`.
    fn named(api: &Api, number: u64) -> Queue {
        Queue {
            api: api.clone(),
            topic: format!("t{number}"),
            subscription: format!("s{number}"),
        }
    }

    /// Creates topic `t{number}` and its subscription `s{number}`.
    async fn create(api: &Api, number: u64) -> Queue {
        let queue = Queue::named(api, number);
        api.create_topic(&queue.topic, json!({"partitions": 1}))
            .await;
        let spec = pull_spec(&queue.topic, "earliest");
        api.create_subscription(&queue.subscription, spec).await;
        queue
    }

    /// Deletes the subscription and its topic.
    async fn delete(&self) {
        for path in [
            format!("/v1/subscriptions/{}", self.subscription),
            format!("/v1/topics/{}", self.topic),
        ] {
            self.api.delete(&path).await;
        }
    }

    /// [`Api::pull`] from the subscription.
    async fn pull(&self, max: usize, wait: &str) -> Vec<Message> {
        self.api.pull(&self.subscription, max, wait).await
    }

    /// [`Api::settle`] on the subscription.
    async fn settle(&self, settle: Settle, messages: &[Message]) -> HashSet<String> {
        self.api.settle(&self.subscription, settle, messages).await
    }

    /// [`Api::try_settle`] on the subscription.
    async fn try_settle(&self, settle: Settle, messages: &[Message]) -> Option<HashSet<String>> {
        self.api
            .try_settle(&self.subscription, settle, messages)
            .await
    }

    /// [`Api::dead_event_ids`] of the subscription.
    async fn dead_event_ids(&self) -> HashSet<String> {
        self.api.dead_event_ids(&self.subscription).await
    }

    /// Publishes events `e{i}` for every `i` of `numbers`.
    async fn publish(&self, numbers: Range<u64>) {
        for start in numbers.clone().step_by(BATCH_EVENTS as usize) {
            let end = (start + BATCH_EVENTS).min(numbers.end);
            let events = (start..end)
                .map(|i| event(&format!("e{i}"), None))
                .collect();
            self.api.publish(&self.topic, events).await;
        }
    }

    /// Publishes events `e{i}` for every `i` of `numbers` and dead-letters them all (pull and
    /// reject); waits until the DLQ holds `depth_after` entries.
    async fn dead_letter(&self, numbers: Range<u64>, depth_after: u64) {
        let count = numbers.end - numbers.start;
        self.publish(numbers).await;
        let mut rejected = 0;
        while rejected < count {
            let messages = self.pull(BATCH_EVENTS as usize, "1s").await;
            let stale = self.settle(Settle::Reject, &messages).await;
            assert!(
                stale.is_empty(),
                "rejects of fresh pulls named stale: {stale:?}"
            );
            rejected += messages.len() as u64;
        }
        self.api
            .wait_dlq_depth(&self.subscription, depth_after as usize)
            .await;
    }

    /// Dead-letters `count` events and redrives them all; waits until the first is
    /// delivered again (handing redriven entries over takes a while at first).
    async fn dead_letter_and_redrive(&self, count: u64) {
        self.dead_letter(0..count, count).await;
        assert_eq!(
            self.redrive(json!({"all": true})).await,
            count,
            "all redriven"
        );
        while self.pull(1, "1s").await.is_empty() {}
    }

    /// Redrives the dead letters `which` names; how many.
    async fn redrive(&self, which: Value) -> u64 {
        let path = format!("/v1/subscriptions/{}/dlq/redrive", self.subscription);
        let body = self.api.expect(Method::POST, &path, which, 200).await;
        body["redriven"].as_u64().unwrap()
    }

    /// Of `messages`, settled by answered `settle`s, the event ids a restart undid: a
    /// rejected event that is not in the DLQ, or an acked redriven one that still is.
    async fn undone_by_restart(&self, settle: Settle, messages: &[Message]) -> Vec<String> {
        let chunk = messages.len().div_ceil(CHECKERS).max(1);
        let checkers: Vec<_> = messages
            .chunks(chunk)
            .map(|messages| tokio::spawn(self.clone().undone(settle, messages.to_vec())))
            .collect();
        let mut undone = Vec::new();
        for checker in checkers {
            undone.extend(checker.await.unwrap());
        }
        undone
    }

    /// [`Queue::undone_by_restart`] of a few messages, one after the other.
    async fn undone(self, settle: Settle, messages: Vec<Message>) -> Vec<String> {
        let mut undone = Vec::new();
        for message in messages {
            let dead = self
                .api
                .is_dead_letter(&self.subscription, message.position)
                .await;
            if dead != (settle == Settle::Reject) {
                undone.push(message.event_id);
            }
        }
        undone
    }

    /// Checks the whole DLQ against the events whose `settle` was answered: all of them in
    /// it (rejects), or none (acks of redriven entries).
    async fn check_dlq(&self, settle: Settle, done: &HashSet<String>) {
        let dead = self.dead_event_ids().await;
        let undone: BTreeSet<&String> = match settle {
            Settle::Reject => done.difference(&dead).collect(),
            Settle::Ack => done.intersection(&dead).collect(),
        };
        let subscription = &self.subscription;
        assert!(
            undone.is_empty(),
            "answered {settle:?}s undone in {subscription}: {undone:?}"
        );
    }
}

/// Pulls small batches and settles each message in its own concurrent request (so that they
/// race the store's writes), until keel does not answer.
async fn settle_each(queue: Queue, settle: Settle, settled: Arc<Mutex<Settled>>) {
    loop {
        let Some(messages) = queue.api.try_pull(&queue.subscription, 4, "100ms").await else {
            return;
        };
        {
            let mut settled = settled.lock().unwrap();
            let again: Vec<String> = messages
                .iter()
                .filter(|m| settled.done.contains(&m.event_id))
                .map(|m| m.event_id.clone())
                .collect();
            settled.delivered_after_done.extend(again);
        }
        let requests: Vec<_> = messages
            .into_iter()
            .map(|message| tokio::spawn(settle_one(queue.clone(), settle, message)))
            .collect();
        let mut answered_all = true;
        for request in requests {
            match request.await.unwrap() {
                Some(Some(message)) => {
                    let mut settled = settled.lock().unwrap();
                    settled.done.insert(message.event_id.clone());
                    settled.unchecked.push(message);
                }
                Some(None) => {}
                None => answered_all = false,
            }
        }
        if !answered_all {
            return;
        }
    }
}

/// Settles one message: `None` when keel did not answer; else the message when it was done
/// (not named stale).
async fn settle_one(queue: Queue, settle: Settle, message: Message) -> Option<Option<Message>> {
    let one = std::slice::from_ref(&message);
    let stale = queue.try_settle(settle, one).await?;
    Some((!stale.contains(&message.ack_id)).then_some(message))
}

/// Dead letters purged before the compaction test's kills, and kept: together just past the
/// compaction threshold (10_000 records, and at least four times the live entries), with few
/// live entries, as listing them after each restart is what takes time.
const PURGED: u64 = 9500;
const KEPT: u64 = 500;
/// Dead letters redriven before each kill; acking the first half sets off the compaction.
const REDRIVEN: usize = 20;
/// Kills of the compaction test without `KEEL_POWERLOSS_CYCLES`.
const COMPACTION_KILLS_DEFAULT: u64 = 5;

/// Where a kill lands relative to the DLQ compaction an ack sets off.
#[derive(Clone, Copy, Debug)]
enum KillAfter {
    /// Once the ack was answered: the compaction is done.
    Answer,
    /// This many microseconds after the filesystem saw the new log's directory created:
    /// while the new log is written.
    CreateUs(u64),
    /// This many microseconds after the filesystem saw the swap's first rename.
    RenameUs(u64),
}

/// What follows a kill of the compaction test.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Nothing: an interrupted swap reaches the next open as the kill left it.
    KillOnly,
    Unsynced,
    Torn,
}

/// The compaction test's kills, the most telling first; `KEEL_POWERLOSS_CYCLES=N` runs N of
/// them, round the table.
const KILLS: [(KillAfter, Then); 10] = [
    (KillAfter::Answer, Then::Torn),
    (KillAfter::RenameUs(0), Then::KillOnly),
    (KillAfter::CreateUs(500), Then::Unsynced),
    (KillAfter::RenameUs(200), Then::Unsynced),
    (KillAfter::RenameUs(5_000), Then::Torn),
    (KillAfter::CreateUs(0), Then::Torn),
    (KillAfter::RenameUs(0), Then::Torn),
    (KillAfter::RenameUs(50), Then::KillOnly),
    (KillAfter::RenameUs(1_000), Then::Torn),
    (KillAfter::RenameUs(30_000), Then::Unsynced),
];

/// Goal: a DLQ compaction (the log rewritten with only its live entries, swapped in by two
/// renames) loses no live entry and no redrive mark, brings no purged entry back, and keeps
/// the ack that set it off once that ack is answered.
/// Method: a DLQ past the compaction threshold (9500 entries purged, 500 live, 20 of them
/// redriven) is built once and saved. For each kill point a fresh filesystem gets the saved
/// data directory, keel pulls the 20 redriven entries and acks 10 (which sets off the
/// compaction), and is killed at that point: after the answer, while the new log is written,
/// or 0 µs to 30 ms after the swap's first rename; then a loss (or none) and a restart, and
/// once more a loss and a restart without load.
/// Invariants: after each restart every live entry not acked is in the DLQ and no other
/// entry is; an answered ack's entries are not; the redriven entries not acked are delivered
/// again, and no other event is (but the acked ones, when the ack was not answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_compaction_survives_power_loss_at_any_point() {
    if !rig::fuse_available() {
        return;
    }
    let (kills, seed) = (rig::cycles(COMPACTION_KILLS_DEFAULT), rig::seed());
    let saved = tempfile::tempdir().unwrap();
    let snapshot = saved.path().join("keel-data");
    let live = past_compaction_threshold(&snapshot, seed).await;
    for kill in 0..kills {
        let (point, then) = KILLS[kill as usize % KILLS.len()];
        let loss = match then {
            Then::KillOnly => None,
            Then::Unsynced => Some(Loss::Unsynced),
            Then::Torn => Some(Loss::Torn {
                seed: splitmix64(seed.wrapping_add(kill)),
            }),
        };
        kill_around_compaction(&snapshot, &live, point, loss, seed).await;
    }
}

/// Builds the compaction test's DLQ and saves the data directory to `snapshot`; the event
/// ids of the live dead letters.
async fn past_compaction_threshold(snapshot: &Path, seed: u64) -> HashSet<String> {
    let mut rig = Rig::mount("", seed);
    rig.start().await;
    let queue = Queue::create(&rig.api(), 0).await;
    queue.dead_letter(0..PURGED, PURGED).await;
    let path = format!("/v1/subscriptions/{}/dlq", queue.subscription);
    let purged = queue
        .api
        .expect(Method::DELETE, &path, Value::Null, 200)
        .await;
    assert_eq!(purged["purged"].as_u64(), Some(PURGED), "{purged}");
    queue.dead_letter(PURGED..PURGED + KEPT, KEPT).await;
    let live = queue.api.dead_letters(&queue.subscription).await;
    let ids: Vec<&String> = live[..REDRIVEN].iter().map(|(id, _)| id).collect();
    assert_eq!(queue.redrive(json!({ "ids": ids })).await, REDRIVEN as u64);
    rig.kill();
    rig.save_data_dir(snapshot);
    rig.unmount();
    live.into_iter().map(|(_, event)| event).collect()
}

/// One kill of the compaction test, on a fresh filesystem holding `snapshot`.
async fn kill_around_compaction(
    snapshot: &Path,
    live: &HashSet<String>,
    point: KillAfter,
    loss: Option<Loss>,
    seed: u64,
) {
    let mut rig = Rig::mount("", seed);
    rig.restore_data_dir(snapshot);
    rig.start().await;
    let queue = Queue::named(&rig.api(), 0);
    let mut redriven = Vec::new();
    while redriven.len() < REDRIVEN {
        redriven.extend(queue.pull(REDRIVEN, "1s").await);
    }
    let (acked, unacked) = redriven.split_at(REDRIVEN / 2);
    let (answered, killed_after) = ack_then_kill(&mut rig, &queue, acked, point).await;
    let compacted = rig.log_lines("compacted a dead-letter log") > 0;
    let done = compacted || !matches!(point, KillAfter::Answer);
    assert!(done, "the answered ack set off a compaction");
    if let Some(loss) = loss {
        rig.power_loss(loss);
    }
    rig.start().await;
    eprintln!(
        "{point:?}, then {loss:?}: killed {killed_after:?} after the ack; answered: {answered}; \
         compaction done: {compacted}; an interrupted one finished at open: {}",
        rig.log_lines("finished an interrupted dead-letter compaction") > 0
    );
    let ids = |messages: &[Message]| messages.iter().map(|m| m.event_id.clone()).collect();
    let dead = check_after_compaction(&queue, live, &ids(acked), &ids(unacked), answered).await;
    rig.crash(Vec::new()).await;
    let dead_after = queue.dead_event_ids().await;
    assert_eq!(dead_after, dead, "the DLQ after a second loss");
    rig.unmount();
}

/// Acks `acked` (which sets off the compaction) and kills keel at `point`; whether the ack
/// was answered, and how long after it was sent keel was killed.
async fn ack_then_kill(
    rig: &mut Rig,
    queue: &Queue,
    acked: &[Message],
    point: KillAfter,
) -> (bool, Duration) {
    let before = rig.stats();
    let sent = Instant::now();
    let mut ack = {
        let (queue, acked) = (queue.clone(), acked.to_vec());
        tokio::spawn(async move { queue.try_settle(Settle::Ack, &acked).await })
    };
    let answer = match point {
        KillAfter::Answer => Some((&mut ack).await.unwrap()),
        KillAfter::CreateUs(delay_us) => {
            let created = rig.spin_until(|stats| stats.entries_created > before.entries_created);
            assert!(created.is_some(), "the compaction never began");
            std::thread::sleep(Duration::from_micros(delay_us));
            None
        }
        KillAfter::RenameUs(delay_us) => {
            let renamed = rig.spin_until(|stats| stats.renames > before.renames);
            assert!(renamed.is_some(), "the compaction never reached its swap");
            std::thread::sleep(Duration::from_micros(delay_us));
            None
        }
    };
    let killed_after = sent.elapsed();
    rig.kill();
    let answer = match answer {
        Some(answer) => answer,
        None => ack.await.unwrap(),
    };
    (answer.is_some_and(|stale| stale.is_empty()), killed_after)
}

/// Checks the DLQ and what is delivered after a kill around the compaction; the DLQ's
/// event ids.
async fn check_after_compaction(
    queue: &Queue,
    live: &HashSet<String>,
    acked: &HashSet<String>,
    unacked: &HashSet<String>,
    answered: bool,
) -> HashSet<String> {
    let dead = queue.dead_event_ids().await;
    let kept = |id: &&String| !acked.contains(*id) && !dead.contains(*id);
    let lost: Vec<&String> = live.iter().filter(kept).take(10).collect();
    assert!(
        lost.is_empty(),
        "live dead letters lost: {lost:?} (DLQ of {})",
        dead.len()
    );
    let back: Vec<&String> = dead.difference(live).take(10).collect();
    assert!(back.is_empty(), "purged dead letters came back: {back:?}");
    let undone: Vec<&String> = dead.intersection(acked).collect();
    assert!(
        !answered || undone.is_empty(),
        "answered acks undone: {undone:?}"
    );
    let pulled = queue.api.pull_until_quiet(&queue.subscription, false).await;
    let delivered: HashSet<String> = pulled.into_iter().map(|m| m.event_id).collect();
    assert!(
        unacked.is_subset(&delivered),
        "redriven entries not acked are delivered again"
    );
    let allowed: HashSet<String> = match answered {
        true => unacked.clone(),
        false => unacked.union(acked).cloned().collect(),
    };
    assert!(
        delivered.is_subset(&allowed),
        "only redriven, unacked entries delivered: {delivered:?}"
    );
    dead
}
