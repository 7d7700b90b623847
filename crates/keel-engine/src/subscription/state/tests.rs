use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        multiplier: 2.0,
    }
}

fn record(offset: u64, key: Option<u64>) -> Offered {
    Offered {
        offset,
        published_ms: 0,
        json: Arc::from(format!("{{\"offset\":{offset}}}")),
        key,
        matches: true,
        origin: None,
    }
}

fn fail() -> Outcome {
    Outcome::Fail {
        status: Some(503),
        error: "503".to_owned(),
        retry_after: None,
    }
}

impl DeliveryState {
    fn tick_ready(&mut self, now_ms: i64, policy: &RetryPolicy, random: f64) -> bool {
        self.tick(now_ms, policy, random).0
    }
}

fn offsets(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.slot.offset).collect()
}

// Goal: with ordering by key, one event per key is in flight, a key's events come in log
// order, and a failing event holds back only its own key.
#[test]
fn key_ordering_holds_back_only_the_failing_key() {
    let mut state = DeliveryState::new(Ordering::Key, 10, 100, &[0]);
    let keys = [1, 2, 1, 2, 3];
    let records = (0..5).map(|o| record(o, Some(keys[o as usize]))).collect();
    assert!(state.offer(0, 0, records));
    let first = state.take_ready(10, None);
    assert_eq!(offsets(&first), [0, 1, 4], "the head of each key");
    state.check_invariants();
    let policy = policy(5);
    // Key 1 fails; key 2 succeeds and its next event becomes ready; key 1's next waits.
    state
        .complete(first[0].slot, first[0].lease, fail(), 0, &policy, 0.0)
        .expect("in flight");
    state
        .complete(first[1].slot, first[1].lease, Outcome::Ack, 0, &policy, 0.0)
        .expect("in flight");
    assert_eq!(offsets(&state.take_ready(10, None)), [3]);
    state.check_invariants();
    // The retry comes due: offset 0 again, not 2.
    assert!(state.tick_ready(1_000, &policy, 0.0));
    let retry = state.take_ready(10, None);
    assert_eq!(offsets(&retry), [0]);
    assert_eq!(retry[0].attempt, 2);
    state
        .complete(retry[0].slot, retry[0].lease, Outcome::Ack, 0, &policy, 0.0)
        .expect("in flight");
    assert_eq!(offsets(&state.take_ready(10, None)), [2]);
    state.check_invariants();
}

// Goal: the last failed attempt dead-letters the event; only after the dead letter is written
// does the event count as done (committed moves past it), and a reject skips the retries.
#[test]
fn final_failure_dead_letters_after_the_write() {
    let mut state = DeliveryState::new(Ordering::None, 10, 100, &[0]);
    state.offer(0, 0, vec![record(0, None), record(1, None)]);
    let policy = policy(2);
    let taken = state.take_ready(10, None);
    state
        .complete(taken[0].slot, taken[0].lease, fail(), 0, &policy, 0.0)
        .expect("in flight");
    let reject = Outcome::Reject {
        status: Some(400),
        error: "400 Bad Request".to_owned(),
    };
    let settled = state.complete(taken[1].slot, taken[1].lease, reject, 0, &policy, 0.0);
    assert_eq!(settled.map(|c| c.settled), Ok(Settled::DeadLettering));
    state.tick_ready(10_000, &policy, 0.0);
    let retry = state.take_ready(10, None);
    let settled = state.complete(retry[0].slot, retry[0].lease, fail(), 5, &policy, 0.0);
    assert_eq!(settled.map(|c| c.settled), Ok(Settled::DeadLettering));
    assert_eq!(
        state.checkpoint()[0].committed,
        0,
        "not done before the write"
    );
    let letters = state.dead_letters_to_write();
    assert_eq!(letters.len(), 2);
    assert_eq!(
        letters
            .iter()
            .find(|l| l.slot.offset == 0)
            .map(|l| l.history.len()),
        Some(2)
    );
    state.finish_dead_letters(&letters);
    assert_eq!(state.checkpoint()[0].committed, 2);
    assert_eq!(state.counters.dead_lettered, 2);
    state.check_invariants();
}

// Goal: an ack after the ack deadline passed (the event was redelivered) is stale, and the
// redelivery's ack counts.
#[test]
fn ack_after_deadline_is_stale() {
    let mut state = DeliveryState::new(Ordering::None, 10, 100, &[0]);
    state.offer(0, 0, vec![record(0, None)]);
    let policy = policy(5);
    let first = state.take_ready(1, Some(1_000));
    assert!(
        !state.tick_ready(999, &policy, 0.5),
        "in flight until the deadline"
    );
    assert!(
        !state.tick_ready(1_000, &policy, 0.5),
        "timed out; the retry waits 50 ms"
    );
    assert!(state.tick_ready(1_050, &policy, 0.5));
    let second = state.take_ready(1, Some(5_000));
    assert_eq!(second[0].attempt, 2);
    let stale = state.complete(first[0].slot, first[0].lease, Outcome::Ack, 0, &policy, 0.0);
    assert_eq!(stale.map(|c| c.settled), Err(Stale));
    let acked = state.complete(
        second[0].slot,
        second[0].lease,
        Outcome::Ack,
        0,
        &policy,
        0.0,
    );
    assert_eq!(acked.map(|c| c.settled), Ok(Settled::Done));
    state.check_invariants();
}

// Goal: a checkpoint taken mid-flight restores to a state that redelivers exactly the undone
// events (in-flight and waiting ones) and skips done ones, keeping attempt counts and retry
// times.
#[test]
fn checkpoint_restores_undone_events_only() {
    let mut state = DeliveryState::new(Ordering::None, 10, 100, &[0]);
    state.offer(0, 0, (0..6).map(|o| record(o, None)).collect());
    let policy = policy(5);
    let taken = state.take_ready(10, None);
    for delivery in &taken {
        let outcome = match delivery.slot.offset {
            1 | 4 => Outcome::Ack,
            2 => fail(),
            _ => continue,
        };
        state
            .complete(delivery.slot, delivery.lease, outcome, 10, &policy, 0.5)
            .expect("in flight");
    }
    let checkpoint = state.checkpoint();
    assert_eq!(checkpoint[0].committed, 0);
    assert_eq!(checkpoint[0].cursor, 6);
    assert_eq!(checkpoint[0].undone, [(0, 1), (2, 2), (5, 1)]);
    let due_ms = checkpoint[0].retries[0].due_ms;
    assert!(due_ms > 10);

    let json = serde_json::to_string(&checkpoint).expect("serialise");
    let decoded: Vec<LaneCheckpoint> = serde_json::from_str(&json).expect("deserialise");
    let mut restored = DeliveryState::restore(Ordering::None, 10, 100, &decoded);
    assert_eq!(
        restored.checkpoint(),
        checkpoint,
        "unchanged before any re-read"
    );
    restored.offer(0, 0, (0..8).map(|o| record(o, None)).collect());
    assert_eq!(offsets(&restored.take_ready(10, None)), [0, 3, 5, 6, 7]);
    assert!(
        !restored.tick_ready(due_ms - 1, &policy, 0.0),
        "the retry is not early"
    );
    assert!(restored.tick_ready(due_ms, &policy, 0.0));
    let retry = restored.take_ready(10, None);
    assert_eq!((offsets(&retry), retry[0].attempt), (vec![2], 2));
    restored.check_invariants();
}

// Goal: seek drops pending events (their acks turn stale) and restarts lanes at the new
// offsets; records read before the seek are ignored.
#[test]
fn seek_restarts_lanes() {
    let mut state = DeliveryState::new(Ordering::None, 10, 100, &[0, 0]);
    state.offer(0, 0, vec![record(0, None), record(1, None)]);
    let taken = state.take_ready(10, None);
    state.seek(&[7, 3], false);
    assert_eq!(state.in_flight(), 0);
    let stale = state.complete(
        taken[0].slot,
        taken[0].lease,
        Outcome::Ack,
        0,
        &policy(3),
        0.0,
    );
    assert_eq!(stale.map(|c| c.settled), Err(Stale));
    assert!(
        !state.offer(0, 2, vec![record(2, None)]),
        "a read from before the seek"
    );
    assert!(state.offer(1, 3, vec![record(3, None)]));
    assert_eq!(state.lane_positions(), [(7, 7), (3, 4)]);
    state.check_invariants();
}

#[derive(Debug, Clone)]
enum Step {
    Offer { lane: u32, count: u8, keys: Vec<u8> },
    Take(u8),
    Complete { index: u8, outcome: u8 },
    Tick(u16),
    WriteDeadLetters,
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u32..2, 1u8..6, proptest::collection::vec(0u8..4, 6))
            .prop_map(|(lane, count, keys)| Step::Offer { lane, count, keys }),
        (1u8..5).prop_map(Step::Take),
        (any::<u8>(), 0u8..4).prop_map(|(index, outcome)| Step::Complete { index, outcome }),
        (0u16..3000).prop_map(Step::Tick),
        Just(Step::WriteDeadLetters),
        Just(Step::Restart),
    ]
}

proptest! {
    // Goal: under any interleaving of reads, deliveries, failures, timeouts, dead-lettering
    // and restarts from checkpoints, the invariants hold, every matching event ends acked or
    // dead-lettered (none skipped), and with ordering by key each key's events are first
    // delivered in log order.
    #[test]
    fn model_never_skips_an_event(steps in proptest::collection::vec(step(), 1..80),
                                  key_ordering in any::<bool>()) {
        let ordering = if key_ordering { Ordering::Key } else { Ordering::None };
        let policy = policy(3);
        let mut state = DeliveryState::new(ordering, 4, 8, &[0, 0]);
        let mut log: Vec<Vec<Option<u64>>> = vec![Vec::new(), Vec::new()];
        let mut in_flight: Vec<Delivery> = Vec::new();
        let mut now = 0i64;
        let mut done: HashMap<Slot, &'static str> = HashMap::new();
        let mut first_seen: BTreeMap<(u32, u64), Vec<u64>> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        let finish_ok = |state: &mut DeliveryState, done: &mut HashMap<Slot, &'static str>| {
            let letters = state.dead_letters_to_write();
            for letter in &letters {
                done.insert(letter.slot, "dead");
            }
            state.finish_dead_letters(&letters);
        };
        for step in steps.into_iter().chain([Step::WriteDeadLetters]) {
            match step {
                Step::Offer { lane, count, keys } => {
                    for index in 0..count as usize {
                        log[lane as usize].push(Some(u64::from(keys[index % keys.len()])));
                    }
                    let from = state.cursor(lane);
                    let room = state.room(lane).0;
                    let records: Vec<Offered> = log[lane as usize].iter().enumerate()
                        .skip(from as usize).take(room)
                        .map(|(offset, key)| record(offset as u64, *key)).collect();
                    state.offer(lane, from, records);
                }
                Step::Take(max) => {
                    let taken = state.take_ready(max as usize, Some(now + 1000));
                    for delivery in &taken {
                        let key = log[delivery.slot.lane as usize][delivery.slot.offset as usize];
                        if seen.insert(delivery.slot) {
                            first_seen.entry((delivery.slot.lane, key.unwrap_or(99)))
                                .or_default().push(delivery.slot.offset);
                        }
                    }
                    in_flight.extend(taken);
                }
                Step::Complete { index, outcome } => {
                    if in_flight.is_empty() { continue; }
                    let delivery = in_flight.swap_remove(index as usize % in_flight.len());
                    let outcome = match outcome {
                        0 | 1 => Outcome::Ack,
                        2 => fail(),
                        _ => Outcome::Reject { status: Some(400), error: "no".into() },
                    };
                    let is_ack = outcome == Outcome::Ack;
                    if let Ok(Completed { settled: Settled::Done, .. }) = state.complete(
                        delivery.slot, delivery.lease, outcome, now, &policy, 0.3) {
                        prop_assert!(is_ack);
                        prop_assert!(done.insert(delivery.slot, "acked").is_none(), "acked once");
                    }
                }
                Step::Tick(ms) => {
                    now += i64::from(ms);
                    state.tick_ready(now, &policy, 0.3);
                }
                Step::WriteDeadLetters => finish_ok(&mut state, &mut done),
                Step::Restart => {
                    let checkpoint = state.checkpoint();
                    state = DeliveryState::restore(ordering, 4, 8, &checkpoint);
                    in_flight.clear();
                }
            }
            state.check_invariants();
        }
        // Drain: deliver and ack everything left; nothing may be missing.
        for _ in 0..200 {
            for lane in 0..2u32 {
                let from = state.cursor(lane);
                let records: Vec<Offered> = log[lane as usize].iter().enumerate()
                    .skip(from as usize).take(state.room(lane).0)
                    .map(|(offset, key)| record(offset as u64, *key)).collect();
                state.offer(lane, from, records);
            }
            now += 5_000;
            state.tick_ready(now, &policy, 0.3);
            for delivery in state.take_ready(100, None).into_iter().chain(in_flight.drain(..)) {
                if let Ok(Completed { settled: Settled::Done, .. }) = state.complete(
                    delivery.slot, delivery.lease, Outcome::Ack, now, &policy, 0.3) {
                    prop_assert!(done.insert(delivery.slot, "acked").is_none(), "acked once");
                }
            }
            finish_ok(&mut state, &mut done);
        }
        for (lane, events) in log.iter().enumerate() {
            let checkpoint = &state.checkpoint()[lane];
            prop_assert_eq!(checkpoint.committed, events.len() as u64);
            prop_assert!(checkpoint.undone.is_empty());
        }
        if key_ordering {
            for ((_, key), offsets) in &first_seen {
                if *key == 99 { continue; }
                let mut sorted = offsets.clone();
                sorted.sort_unstable();
                prop_assert_eq!(offsets, &sorted, "first deliveries of a key in log order");
            }
        }
    }
}

// Goal: failures the circuit breaker blames on the sink (failed probes, refused connections)
// are recorded but never spend the event's attempts, also across a restart from a checkpoint;
// counted failures still dead-letter at max_attempts.
#[test]
fn blamed_failures_do_not_spend_attempts() {
    let mut state = DeliveryState::new(Ordering::None, 10, 100, &[0]);
    state.offer(0, 0, vec![record(0, None)]);
    let policy = policy(2);
    let probe = || Outcome::Blamed {
        status: None,
        error: "connection refused".to_owned(),
        at_once: true,
    };
    for round in 0..5 {
        if round == 3 {
            state = DeliveryState::restore(Ordering::None, 10, 100, &state.checkpoint());
            state.offer(0, 0, vec![record(0, None)]);
        }
        state.tick_ready(i64::from(round) * 1000, &policy, 0.0);
        let taken = state.take_ready(1, None);
        assert_eq!(taken[0].attempt, round + 1);
        let completed = state.complete(taken[0].slot, taken[0].lease, probe(), 0, &policy, 0.0);
        assert!(matches!(
            completed.map(|c| c.settled),
            Ok(Settled::RetryAt(_))
        ));
    }
    state.tick_ready(10_000, &policy, 0.0);
    let taken = state.take_ready(1, None);
    let first = state.complete(taken[0].slot, taken[0].lease, fail(), 10_000, &policy, 0.0);
    assert!(matches!(first.map(|c| c.settled), Ok(Settled::RetryAt(_))));
    state.tick_ready(20_000, &policy, 0.0);
    let taken = state.take_ready(1, None);
    let second = state.complete(taken[0].slot, taken[0].lease, fail(), 20_000, &policy, 0.0);
    assert_eq!(second.map(|c| c.settled), Ok(Settled::DeadLettering));
    assert_eq!(state.dead_letters_to_write()[0].history.len(), 7);
    state.check_invariants();
}

// Goal: an ack naming a lane the topic does not have (a forged ack id) is stale, not a panic.
#[test]
fn unknown_lane_is_stale() {
    let mut state = DeliveryState::new(Ordering::None, 10, 100, &[0]);
    let forged = Slot { lane: 7, offset: 0 };
    let completed = state.complete(forged, 1, Outcome::Ack, 0, &policy(3), 0.0);
    assert_eq!(completed.map(|c| c.settled), Err(Stale));
}

// Goal: when retention removes the oldest events while a restored lane re-reads, only the
// events still undone are lost: events acknowledged before the restart stay done and are
// not delivered again, and retries beyond the new start keep their state.
#[test]
fn retention_skip_keeps_what_the_checkpoint_says_is_done() {
    let mut state = DeliveryState::new(Ordering::None, 10, 100, &[0]);
    state.offer(0, 0, (0..10).map(|o| record(o, None)).collect());
    let policy = policy(5);
    for delivery in state.take_ready(10, None) {
        let outcome = match delivery.slot.offset {
            0 | 7 => continue,
            8 => fail(),
            _ => Outcome::Ack,
        };
        state
            .complete(delivery.slot, delivery.lease, outcome, 0, &policy, 0.5)
            .expect("in flight");
    }
    let checkpoint = state.checkpoint();
    let mut restored = DeliveryState::restore(Ordering::None, 10, 100, &checkpoint);
    restored.skip_to(0, 5);
    assert_eq!(
        restored.counters.skipped_by_retention, 1,
        "only offset 0 was undone"
    );
    restored.offer(0, 5, (5..12).map(|o| record(o, None)).collect());
    assert!(restored.tick_ready(10_000, &policy, 0.5));
    let delivered = offsets(&restored.take_ready(10, None));
    assert_eq!(
        delivered,
        [7, 10, 11, 8],
        "done events stay done; the retry keeps its time"
    );
    restored.check_invariants();
}

// Goal: a lane stops taking events once it holds its bound of bytes (so large events cannot
// fill memory up to the event-count bound), and takes more once some are done.
#[test]
fn lane_bytes_bound_the_room() {
    let mut state = DeliveryState::new(Ordering::None, 100, 100, &[0]).with_lane_bytes_max(100);
    let event_bytes = record(0, None).json.len();
    assert_eq!(state.room(0), (100, 100));
    state.offer(0, 0, (0..10).map(|o| record(o, None)).collect());
    assert!(10 * event_bytes >= 100, "the test fills the bound");
    assert_eq!(state.room(0), (0, 0));
    let taken = state.take_ready(3, None);
    for delivery in &taken {
        state
            .complete(
                delivery.slot,
                delivery.lease,
                Outcome::Ack,
                0,
                &policy(3),
                0.0,
            )
            .expect("in flight");
    }
    let (events, bytes) = state.room(0);
    assert_eq!((events, bytes), (93, 100 - 7 * event_bytes));
    state.check_invariants();
}

// Goal: failovers (a group's endpoint unreachable, the event sent to another at once) do not
// lengthen the backoff of a later blamed failure that waits: after ten failovers across a
// restart, the first wait is the policy's first backoff, not the tenth.
#[test]
fn failovers_do_not_lengthen_backoff() {
    let mut state = DeliveryState::new(Ordering::None, 10, 100, &[0]);
    state.offer(0, 0, vec![record(0, None)]);
    let policy = policy(3);
    let blamed = |at_once| Outcome::Blamed {
        status: None,
        error: "connection refused".to_owned(),
        at_once,
    };
    for round in 0..10 {
        if round == 5 {
            state = DeliveryState::restore(Ordering::None, 10, 100, &state.checkpoint());
            state.offer(0, 0, vec![record(0, None)]);
        }
        state.tick_ready(0, &policy, 0.0);
        let taken = state.take_ready(1, None);
        let completed =
            state.complete(taken[0].slot, taken[0].lease, blamed(true), 0, &policy, 0.0);
        assert_eq!(completed.map(|c| c.settled), Ok(Settled::RetryAt(0)));
    }
    state.tick_ready(0, &policy, 0.0);
    let taken = state.take_ready(1, None);
    let waits = state.complete(
        taken[0].slot,
        taken[0].lease,
        blamed(false),
        0,
        &policy,
        0.0,
    );
    let first_backoff = crate::subscription::spec::retry_delay(&policy, 1, 0.0, None);
    let due_ms = i64::try_from(first_backoff.as_millis()).unwrap();
    assert_eq!(waits.map(|c| c.settled), Ok(Settled::RetryAt(due_ms)));
    state.check_invariants();
}
