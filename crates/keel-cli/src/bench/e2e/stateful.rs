//! `keel bench e2e --stateful`: the consumers are a stateful handler, and the run checks what
//! it committed.
//!
//! The handler counts each key's events in the key's state, `{"count": n, "last": s,
//! "offset": o}` (`s` the sequence number of the last event counted, `o` its offset), and acks
//! each pulled batch with one call whose `acks` commit every event's new state (and, with
//! `--emit`, one emitted event each). It computes the new state from the state the event was
//! pulled with, and checks that state on the way: it must be the state this handler committed
//! for the key's previous event (the same key, an event earlier in the partition, the version
//! equal to the count). Once the run has settled, every key's state is read back and compared
//! with what events `0..published` make it: event `s` has key `key-{s % keys}`, so key `k`
//! holds the count of those sequence numbers, and the offset keel recorded for the key's last
//! commit. (Not the largest sequence number: concurrent publishers may store a later batch
//! first.) A lost or doubled commit shows as a wrong count or version, a reordered one as a
//! refused pulled state.

use std::fmt::Write as _;

use keel_api::pull::PulledMessage;
use keel_api::state::{Emit, KeyState, StatefulAck};
use keel_client::{Client, ClientError};
use keel_engine::limits::STATE_LIST_MAX;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{PulledEvent, Stamp};
use crate::bench::KEY_PREFIX;
use crate::topic::fetch_topic;

/// The state the handler keeps per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyCount {
    /// The key's events committed so far.
    count: u64,
    /// The sequence number of the last of them.
    last: u64,
    /// The offset of the last of them in its partition.
    offset: u64,
}

/// Events of key `key` among events `0..published`, with `keys` keys used in turn.
fn expected_count(key: u64, keys: u64, published: u64) -> u64 {
    debug_assert!(key < keys, "keys are numbered below their count");
    published / keys + u64::from(key < published % keys)
}

/// The handler: turns each pulled message into its stateful ack.
#[derive(Debug)]
pub(super) struct KeyCounter {
    /// Distinct keys of the run's events (at least 1).
    keys: u64,
    /// With `--emit`: the topic each ack emits one event to.
    emit_topic: Option<String>,
}

impl KeyCounter {
    pub(super) fn new(keys: u64, emit_topic: Option<String>) -> Self {
        assert!(keys > 0, "a stateful run's events have keys");
        Self { keys, emit_topic }
    }

    /// The ack committing `message`'s key's next state (and its emitted event), and the
    /// problem when the message is not one of the run's events (acked keeping its state) or
    /// its state is not what this handler committed for the key's previous event (counted on
    /// from all the same, so that one problem does not make every later state wrong too).
    pub(super) fn ack(
        &self,
        message: &PulledMessage<'_, PulledEvent<'_>>,
    ) -> (StatefulAck, Option<String>) {
        let data = message.event.data.as_deref().map(str::as_bytes);
        let Some(stamp) = data.and_then(Stamp::parse) else {
            let problem = format!(
                "the event at partition {} offset {} has no stamp",
                message.partition, message.offset
            );
            let ack = StatefulAck {
                ack_id: message.ack_id.clone().into_owned(),
                state: None,
                emit: Vec::new(),
            };
            return (ack, Some(problem));
        };
        let pulled = (message.state, message.state_version);
        let (next, problem) = self.next_state(stamp.sequence, message.offset, pulled);
        let state = to_raw(&next);
        let emit = match &self.emit_topic {
            Some(topic) => vec![Emit {
                topic: topic.clone(),
                event: emitted_event(&state),
            }],
            None => Vec::new(),
        };
        let ack = StatefulAck {
            ack_id: message.ack_id.clone().into_owned(),
            state: Some(state),
            emit,
        };
        (ack, problem)
    }

    /// Event `sequence`'s key's state after it (the event at `offset`), from the state and
    /// version it was pulled with; and what is wrong with those, if anything.
    fn next_state(
        &self,
        sequence: u64,
        offset: u64,
        (state, version): (Option<&RawValue>, Option<u64>),
    ) -> (KeyCount, Option<String>) {
        let key = sequence % self.keys;
        let parsed = state.map(|raw| serde_json::from_str::<Option<KeyCount>>(raw.get()));
        let (previous, mut problem) = match parsed {
            None => (None, None),
            Some(Ok(previous)) => (previous, None),
            Some(Err(error)) => {
                let text = state.map(RawValue::get).unwrap_or_default();
                (
                    None,
                    Some(format!("event {sequence}: state {text}: {error}")),
                )
            }
        };
        let count = previous.map_or(0, |previous| previous.count);
        if problem.is_none() && version != Some(count) {
            problem = Some(format!(
                "event {sequence}: state {previous:?} came with version {version:?}, not {count}"
            ));
        }
        if let Some(previous) = previous
            && problem.is_none()
            && (previous.last % self.keys != key || previous.offset >= offset)
        {
            problem = Some(format!(
                "event {sequence} (key {KEY_PREFIX}{key}, offset {offset}) came with the state \
                 left by event {} (offset {})",
                previous.last, previous.offset
            ));
        }
        let next = KeyCount {
            count: count + 1,
            last: sequence,
            offset,
        };
        (next, problem)
    }
}

/// `state` as raw JSON.
fn to_raw(state: &KeyCount) -> Box<RawValue> {
    let text = serde_json::to_string(state).expect("a struct of two numbers");
    RawValue::from_string(text).expect("serde_json writes JSON")
}

/// The event an ack emits with `--emit`: the key's new state as its data. keel sets its id.
fn emitted_event(state: &RawValue) -> Box<RawValue> {
    let text = format!(
        r#"{{"specversion":"1.0","source":"keel-bench","type":"keel.bench.counted","data":{}}}"#,
        state.get()
    );
    RawValue::from_string(text).expect("a JSON object around a JSON value")
}

/// What reading back every key's state (and the emitted events) found.
#[derive(Debug, Serialize)]
pub(super) struct StateCheck {
    /// Keys the published events have.
    pub(super) keys_expected: u64,
    /// Keys whose state is the one their published events make it.
    pub(super) keys_verified: u64,
    /// The first discrepancy: a key with a wrong state, a key too many, or keys missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) first_wrong: Option<String>,
    /// With `--emit`: events in the emit topic (one per event delivered is right).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) emitted: Option<u64>,
}

impl StateCheck {
    /// Every key's state is right, and (with `--emit`) `delivered` events were emitted.
    pub(super) fn passed(&self, delivered: u64) -> bool {
        self.first_wrong.is_none()
            && self.keys_verified == self.keys_expected
            && self.emitted.is_none_or(|emitted| emitted == delivered)
    }
}

/// Reads every key's state of `subscription`, a page at a time, and compares each with what
/// events `0..published` over `keys` keys make it; counts the events in `emit_topic`, if any.
pub(super) async fn check_states(
    client: &Client,
    subscription: &str,
    keys: u64,
    published: u64,
    emit_topic: Option<&str>,
) -> Result<StateCheck, ClientError> {
    let mut check = StateCheck {
        keys_expected: keys.min(published),
        keys_verified: 0,
        first_wrong: None,
        emitted: None,
    };
    let mut listed = 0_u64;
    let mut after: Option<String> = None;
    loop {
        let page = client
            .list_state(subscription, after.as_deref(), Some(STATE_LIST_MAX))
            .await?;
        let page = page.value();
        for key_state in &page.keys {
            listed += 1;
            match key_problem(key_state, keys, published) {
                None => check.keys_verified += 1,
                Some(problem) => {
                    check.first_wrong.get_or_insert(problem);
                }
            }
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    if listed < check.keys_expected && check.first_wrong.is_none() {
        check.first_wrong = Some(format!(
            "{} of {} keys have no state",
            check.keys_expected - listed,
            check.keys_expected
        ));
    }
    if let Some(topic) = emit_topic {
        let info = fetch_topic(client, topic).await?;
        let events = info.partitions.iter();
        check.emitted = Some(events.map(|p| p.next_offset - p.start_offset).sum());
    }
    Ok(check)
}

/// What is wrong with one key's state read back, if anything.
fn key_problem(key_state: &KeyState<'_>, keys: u64, published: u64) -> Option<String> {
    let name = &key_state.key;
    let key = name
        .strip_prefix(KEY_PREFIX)
        .and_then(|number| number.parse::<u64>().ok())
        .filter(|&key| key < keys);
    let Some(key) = key else {
        return Some(format!("key {name:?} is not one of the run's keys"));
    };
    let count = expected_count(key, keys, published);
    let state = key_state.state.get();
    let found: Option<KeyCount> = serde_json::from_str(state).ok();
    let mut problem = String::new();
    match found {
        Some(found)
            if found.count == count
                && found.last % keys == key
                && found.offset == key_state.offset => {}
        Some(_) | None => write!(
            problem,
            "key {name}: state {state}, expected a count of {count} and the offset {}; ",
            key_state.offset
        )
        .expect("writing to a String"),
    }
    if key_state.version != count {
        write!(
            problem,
            "key {name}: version {}, expected {count}",
            key_state.version
        )
        .expect("writing to a String");
    }
    (!problem.is_empty()).then(|| problem.trim_end_matches("; ").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_counts_add_up_to_the_published_events() {
        // Goal: the expected count follows `key = sequence % keys`. Method: count by brute
        // force for a few sizes, and compare.
        for (keys, published) in [(1, 5), (3, 0), (3, 2), (3, 7), (10, 100), (7, 1000)] {
            for key in 0..keys {
                let brute = (0..published).filter(|s| s % keys == key).count() as u64;
                assert_eq!(expected_count(key, keys, published), brute, "{key}/{keys}");
            }
        }
    }

    #[test]
    fn next_state_counts_on_from_the_pulled_state_and_names_foreign_ones() {
        // Goal: the handler counts on from the committed state, and names a state that is not
        // its key's previous commit (counting on all the same). Method: a table of (sequence,
        // offset, state, version).
        let counter = KeyCounter::new(10, None);
        let raw = |text: &str| RawValue::from_string(text.to_owned()).unwrap();
        let state = |count, last, offset| KeyCount {
            count,
            last,
            offset,
        };
        let first = counter.next_state(3, 0, (None, Some(0)));
        assert_eq!(first, (state(1, 3, 0), None));
        let before = raw(r#"{"count":2,"last":13,"offset":5}"#);
        let next = counter.next_state(23, 9, (Some(&before), Some(2)));
        assert_eq!(next, (state(3, 23, 9), None));
        let foreign = raw(r#"{"n":1}"#);
        let refused = [
            (23, 9, Some(&before), Some(3)),  // version is not the count
            (24, 9, Some(&before), Some(2)),  // another key's state
            (23, 5, Some(&before), Some(2)),  // not a later event in the partition
            (23, 9, Some(&foreign), Some(1)), // not the handler's state
            (3, 0, None, Some(1)),            // a version without state
            (3, 0, None, None),               // no version
        ];
        for (sequence, offset, state, version) in refused {
            let (next, problem) =
                counter.next_state(sequence, offset, (state.map(|s| &**s), version));
            assert!(problem.is_some(), "{sequence} {state:?} {version:?}");
            assert_eq!((next.last, next.offset), (sequence, offset));
        }
    }

    #[test]
    fn key_check_names_every_wrong_state() {
        // Goal: the final check finds a wrong count, version, key or offset. Method: a table.
        let raw = |text: &str| RawValue::from_string(text.to_owned()).unwrap();
        let state = |key: &str, text: &str, version, offset| KeyState {
            key: key.to_owned(),
            state: Box::leak(raw(text)),
            version,
            partition: 0,
            offset,
        };
        // 25 events over 10 keys: key-4 has events 4, 14 and 24; key-7 has 7 and 17.
        let right = [
            state("key-4", r#"{"count":3,"last":24,"offset":8}"#, 3, 8),
            state("key-4", r#"{"count":3,"last":14,"offset":8}"#, 3, 8),
            state("key-7", r#"{"count":2,"last":17,"offset":3}"#, 2, 3),
        ];
        for key_state in right {
            assert_eq!(key_problem(&key_state, 10, 25), None, "{key_state:?}");
        }
        let wrong = [
            state("key-4", r#"{"count":2,"last":24,"offset":8}"#, 3, 8),
            state("key-4", r#"{"count":3,"last":24,"offset":8}"#, 4, 8),
            state("key-4", r#"{"count":3,"last":24,"offset":7}"#, 3, 8),
            state("key-4", r#"{"count":3,"last":23,"offset":8}"#, 3, 8),
            state("key-4", r#"{"total":3}"#, 3, 8),
            state("key-10", r#"{"count":1,"last":10,"offset":0}"#, 1, 0),
            state("other", r#"{"count":1,"last":1,"offset":0}"#, 1, 0),
        ];
        for key_state in wrong {
            let problem = key_problem(&key_state, 10, 25);
            assert!(problem.is_some(), "{key_state:?}");
        }
    }
}
