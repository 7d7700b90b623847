//! The per-key state of a stateful subscription, and the commits that change it.
//!
//! Each ack of a stateful subscription is a *commit*: the key's new state (or "unchanged", or
//! "deleted"), the events the handler emits, and the ack itself, tied to the event's position.
//! The commit protocol (`docs/processing.md` tells it whole):
//!
//! 1. The committer task (`committer.rs`) gathers the commits waiting (group commit), and for
//!    each reads its key's entry: when the entry's offset is at or past the event's, an
//!    earlier delivery's commit was applied, and this one is *stale*: refused, not applied.
//! 2. The applied ones are appended to the commit log, one record each, with one fsync: from
//!    here they survive any crash. Then they are written to the state table, visible at once.
//! 3. Their emitted events are published to their topics (fsynced), with ids derived from
//!    (subscription, partition, offset, index), so a republish after a crash is recognised.
//! 4. The acks are answered, and the deliveries settled as done. The checkpoint follows
//!    later: a redelivery after a crash finds the key's entry at its offset, and is settled
//!    as done without reaching the handler.
//!
//! The table is made durable by snapshots (every `STATE_SNAPSHOT_COMMITS` commits or
//! `STATE_SNAPSHOT_INTERVAL`), each with a mark: how far the commit log is applied
//! (`applied`) and how far its events are published (`published`). Recovery replays the
//! commit log from `applied` into the table, and checks the events of the commits from
//! `published`: those missing from their topics are published. Commit records below both are
//! removed.
//!
//! Invariant: per key, the entry's offset only grows, and a commit applies only above it; so
//! an event's effect is applied at most once, and (since the delivery is settled only after
//! its commit, or when found applied) at least once. Two exceptions keep it whole:
//!
//! - An event redriven from the dead-letter queue lies below its key's offset: it is judged by
//!   a mark of its own (its entry id, `r`), and while its entry is in the queue, a copy coming
//!   round again from its partition is settled without reaching the handler
//!   (`delivery.rs`), so that only the redrive applies it.
//! - A redriven event and its key's next one may be in flight at once, both handed the same
//!   state: a commit applies only while its key is at the version its delivery carried;
//!   otherwise it is a conflict, and the event is delivered again.
//!
//! After a rebuild, a commit emits its events only when no generation before applied its
//! event: the key's previous entry (`p`) holds the highest offset any generation applied, and
//! dead-lettered events that leave the queue unapplied (purge, rebuild) are marked (`n`).

mod committer;
mod records;

use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::error::{EngineError, SubscriptionError};
use crate::event::Event;
use crate::limits::{EMITS_PER_ACK_MAX, STATE_BYTES_MAX, STATE_COMMIT_BATCH_MAX};
use crate::storage::{StateLogs, StateTable};
use crate::topic::{EmitTargets, Topic};
use committer::Committer;
pub(super) use committer::run;
pub(super) use records::Change;
use records::{KEY_PREFIX, StoredEntry, key_entry, redriven_entry};

/// A key's state as a delivery carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// The state's JSON; none when the key has none.
    pub state: Option<Arc<str>>,
    /// Commits applied to the key so far (0 for a key never committed).
    pub version: u64,
}

/// A key's state as reading it shows.
#[derive(Debug, Clone)]
pub struct StoredKeyState {
    /// The key.
    pub key: String,
    /// The state's JSON.
    pub state: Box<RawValue>,
    /// Commits applied to the key so far.
    pub version: u64,
    /// The partition of the key's events.
    pub partition: u32,
    /// The offset of the last event whose commit was applied.
    pub offset: u64,
}

/// Where a delivered event is, for a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// Its partition and offset.
    pub(super) origin: (u32, u64),
    /// For an event redriven from the dead-letter queue: its entry id. (Its key has usually
    /// moved past it: it is judged by a mark of its own.)
    pub(super) redriven: Option<String>,
}

/// One commit asked for.
pub(crate) struct CommitRequest {
    pub(super) key: String,
    pub(super) position: Position,
    pub(super) change: Change,
    /// Events to publish, their ids already derived.
    pub(super) emits: Vec<(Arc<Topic>, Event)>,
    /// The rebuild generation read before the delivery was found outstanding.
    pub(super) generation: u64,
    /// The version of the key's state the delivery carried: the commit applies only while
    /// the key is at it (none: not checked).
    pub(super) based_on: Option<u64>,
}

/// What became of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Committed {
    /// Applied: the key's version after it.
    Applied(u64),
    /// The event's commit was applied before (by an earlier delivery): nothing was done.
    Stale,
    /// The key's state changed since the delivery (a redriven event of the same key was
    /// committed meanwhile): nothing was done, and the event is to be delivered again.
    Conflict,
}

/// A job for the committer, and who waits for its outcome.
enum Request {
    /// A commit.
    Commit {
        commit: CommitRequest,
        reply: oneshot::Sender<Result<Committed, EngineError>>,
    },
    /// Mark which of these dead-lettered events (key, position) were never applied.
    Unapplied {
        events: Vec<(String, (u32, u64))>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    /// Drop every key's state: a rebuild begins (`generation`).
    Rebuild {
        generation: u64,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
}

/// What a delivery of a stateful subscription finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Found {
    /// Its commit was applied already (before a crash, or by another delivery): settle it as
    /// done without handing it out.
    Applied,
    /// Hand it out with its key's state (none for an event without a key).
    Deliver(Option<KeyState>),
}

/// A stateful subscription's state. Reads block (call them on a blocking thread); commits go
/// through the committer task.
pub(super) struct KeyedState {
    name: String,
    /// The start of every emitted event's id: the subscription's name and its state's
    /// incarnation.
    emitter: String,
    table: Arc<dyn StateTable>,
    queue: mpsc::Sender<Request>,
    /// The rebuild generation (see [`KeyedState::generation`]).
    generation: std::sync::atomic::AtomicU64,
    /// The committer, until the subscription starts its task.
    committer: Mutex<Option<(Committer, mpsc::Receiver<Request>)>>,
}

impl KeyedState {
    /// Opens a subscription's state: replays the commits the table's last snapshot does not
    /// hold. `targets` are the topics its emitted events go to (the check of those not yet
    /// known published, when the task starts, looks there). Blocking.
    pub(super) fn open(
        name: &str,
        logs: StateLogs,
        targets: EmitTargets,
    ) -> Result<Self, EngineError> {
        let table: Arc<dyn StateTable> = Arc::from(logs.table);
        let committer = Committer::open(name, table.clone(), logs.commits, targets)?;
        let (queue, receiver) = mpsc::channel(STATE_COMMIT_BATCH_MAX);
        Ok(KeyedState {
            emitter: format!("{name}:{:x}", committer.incarnation()),
            name: name.to_owned(),
            table,
            queue,
            generation: std::sync::atomic::AtomicU64::new(committer.generation()),
            committer: Mutex::new(Some((committer, receiver))),
        })
    }

    /// The committer and its queue, once (for the task `start` spawns).
    fn take_committer(&self) -> Option<(Committer, mpsc::Receiver<Request>)> {
        self.committer.lock().expect("committer lock").take()
    }

    /// Commits, in order; each answer says whether it was applied. Fails when the state
    /// cannot be stored (then none of those not yet answered is known applied or not: the
    /// commit log decides at the next start).
    pub(super) async fn commit(
        &self,
        commits: Vec<CommitRequest>,
    ) -> Result<Vec<Committed>, EngineError> {
        let mut replies = Vec::with_capacity(commits.len());
        for commit in commits {
            let (reply, answer) = oneshot::channel();
            self.queue
                .send(Request::Commit { commit, reply })
                .await
                .map_err(|_| self.stopped())?;
            replies.push(answer);
        }
        let mut committed = Vec::with_capacity(replies.len());
        for answer in replies {
            committed.push(answer.await.map_err(|_| self.stopped())??);
        }
        Ok(committed)
    }

    /// The rebuild generation: read it before a delivery is checked outstanding, and give
    /// it to the commit; a commit of an older generation is stale (a rebuild came between).
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Drops every key's state, durably, for a rebuild. Commits asked for before are stale
    /// from now on.
    pub(super) async fn rebuild(&self) -> Result<(), EngineError> {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request::Rebuild { generation, reply })
            .await
            .map_err(|_| self.stopped())?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// Marks, durably, which of these dead-lettered events were never applied, before they
    /// leave the dead-letter queue (a purge, a rebuild): a commit of one after a rebuild then
    /// emits its events, which never went out. Events without a key are left out.
    pub(super) async fn mark_unapplied(
        &self,
        entries: &[super::DeadLetterEntry],
    ) -> Result<(), EngineError> {
        let events: Vec<(String, (u32, u64))> = entries
            .iter()
            .filter_map(|entry| {
                Some((
                    event_key(entry.event.get())?,
                    (entry.partition, entry.offset),
                ))
            })
            .collect();
        if events.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request::Unapplied { events, reply })
            .await
            .map_err(|_| self.stopped())?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// The start of every emitted event's id (see [`emitted_id`]).
    pub(super) fn emitter(&self) -> &str {
        &self.emitter
    }

    /// The error of a commit refused as [`Committed::Conflict`].
    pub(super) fn conflict(&self) -> EngineError {
        invalid_commit(format!(
            "the key's state in subscription {:?} changed since the delivery (a redriven event of the same key was committed meanwhile); the event is delivered again with the new state",
            self.name
        ))
    }

    fn stopped(&self) -> EngineError {
        EngineError::Subscription(SubscriptionError::Unavailable {
            name: self.name.clone(),
            reason: "its state stopped taking commits (keel is stopping, or its storage failed)"
                .to_owned(),
        })
    }

    /// For each delivered event (its JSON, its position), whether it was applied, or its
    /// key's state. Blocking.
    pub(super) fn find(
        &self,
        deliveries: &[(Arc<str>, Position)],
    ) -> Result<Vec<Found>, EngineError> {
        let keys: Vec<Option<String>> =
            deliveries.iter().map(|(json, _)| event_key(json)).collect();
        // One read for every key's entry and every redriven event's mark.
        let mut table_keys = Vec::with_capacity(deliveries.len());
        for (key, (_, position)) in keys.iter().zip(deliveries) {
            if let Some(key) = key {
                table_keys.push(key_entry(key));
            }
            if let Some(entry_id) = &position.redriven {
                table_keys.push(redriven_entry(entry_id));
            }
        }
        let mut values = self
            .table
            .get_many(&table_keys)
            .map_err(|source| storage_error("read the state", source))?
            .into_iter();
        let mut found = Vec::with_capacity(deliveries.len());
        for (key, (_, position)) in keys.into_iter().zip(deliveries) {
            let entry = match &key {
                Some(_) => values
                    .next()
                    .flatten()
                    .map(|bytes| StoredEntry::from_bytes(&bytes))
                    .transpose()?,
                None => None,
            };
            let applied = match &position.redriven {
                Some(_) => values.next().flatten().is_some(),
                None => entry
                    .as_ref()
                    .is_some_and(|entry| entry.offset >= position.origin.1),
            };
            found.push(match (key, applied) {
                (Some(_), true) => Found::Applied,
                (None, _) => Found::Deliver(None),
                (Some(_), false) => Found::Deliver(Some(KeyState {
                    state: entry
                        .as_ref()
                        .and_then(|entry| entry.state.as_ref())
                        .map(|state| Arc::from(state.get())),
                    version: entry.map_or(0, |entry| entry.version),
                })),
            });
        }
        Ok(found)
    }

    /// A key's stored entry (a tombstone included). Blocking.
    fn entry(&self, key: &str) -> Result<Option<StoredEntry>, EngineError> {
        self.table
            .get(&key_entry(key))
            .map_err(|source| storage_error("read the state", source))?
            .map(|bytes| StoredEntry::from_bytes(&bytes))
            .transpose()
    }

    /// A key's state, when it has one. Blocking.
    pub(super) fn get(&self, key: &str) -> Result<Option<StoredKeyState>, EngineError> {
        Ok(self
            .entry(key)?
            .and_then(|entry| shown(key.to_owned(), entry)))
    }

    /// Up to `max` keys with state after `after`, in key order, and whether more follow.
    /// Blocking.
    pub(super) fn list(
        &self,
        after: Option<&str>,
        max: usize,
    ) -> Result<(Vec<StoredKeyState>, bool), EngineError> {
        let mut after = after.map_or_else(|| vec![KEY_PREFIX], key_entry);
        let mut keys = Vec::new();
        // Tombstones are skipped: read pages until `max` keys with state, or the end.
        loop {
            let page = self
                .table
                .scan(&[KEY_PREFIX], &after, max + 1)
                .map_err(|source| storage_error("list the state", source))?;
            let end = page.len() <= max;
            for (table_key, bytes) in page {
                if keys.len() == max {
                    return Ok((keys, true));
                }
                let key = String::from_utf8_lossy(&table_key[1..]).into_owned();
                if let Some(shown) = shown(key, StoredEntry::from_bytes(&bytes)?) {
                    keys.push(shown);
                }
                after = table_key;
            }
            if end {
                return Ok((keys, false));
            }
        }
    }
}

/// An entry as reading shows it: none for a tombstone.
fn shown(key: String, entry: StoredEntry) -> Option<StoredKeyState> {
    Some(StoredKeyState {
        key,
        state: entry.state?,
        version: entry.version,
        partition: entry.partition,
        offset: entry.offset,
    })
}

/// What one ack (or a push sink's answer) commits besides the ack: the key's new state (left
/// out: unchanged; `null`: deleted) and the events to emit, their topics found.
pub(crate) struct Effects {
    pub(crate) state: Option<Box<RawValue>>,
    pub(crate) emits: Vec<(Arc<Topic>, Box<RawValue>)>,
}

impl Effects {
    /// No effects: the state stays, nothing is emitted.
    pub(crate) fn none() -> Self {
        Effects {
            state: None,
            emits: Vec::new(),
        }
    }

    pub(crate) fn any(&self) -> bool {
        self.state.is_some() || !self.emits.is_empty()
    }

    /// Checks ack `index`'s state and emitted events against the limits, and finds the
    /// emitted events' topics. The error says which ack, which event and what to do.
    pub(crate) fn checked(
        index: usize,
        state: Option<Box<RawValue>>,
        emit: Vec<keel_api::state::Emit>,
        targets: &EmitTargets,
    ) -> Result<Self, EngineError> {
        let state = state.map(|state| stored_state(index, &state)).transpose()?;
        if emit.len() > EMITS_PER_ACK_MAX {
            return Err(invalid_commit(format!(
                "ack {index} emits {} events, over the limit of {EMITS_PER_ACK_MAX}",
                emit.len()
            )));
        }
        let mut emits = Vec::with_capacity(emit.len());
        for (number, emit) in emit.into_iter().enumerate() {
            if crate::config::is_internal_topic(&emit.topic) {
                return Err(invalid_commit(format!(
                    "emit {number} of ack {index} goes to topic {:?}, which is internal to keel: only keel writes it",
                    emit.topic
                )));
            }
            let topic = targets.topic(&emit.topic).ok_or_else(|| {
                invalid_commit(format!(
                    "emit {number} of ack {index} goes to topic {:?}, which does not exist; create it first",
                    emit.topic
                ))
            })?;
            let bytes = emit.event.get().len();
            if bytes > targets.event_bytes_max {
                return Err(invalid_commit(format!(
                    "emit {number} of ack {index} is {bytes} bytes, over the event limit of {} bytes",
                    targets.event_bytes_max
                )));
            }
            emits.push((topic, emit.event));
        }
        Ok(Effects { state, emits })
    }
}

/// The commit of ack `index` for the delivered event `json` at `position`: its key, state
/// change and emitted events (ids derived). None for an event without a key and without
/// effects (a plain ack); an error when such an event carries effects, or an emitted event is
/// not a CloudEvent.
pub(crate) fn commit_request(
    emitter: &str,
    json: &str,
    (position, generation, based_on): (Position, u64, Option<u64>),
    index: usize,
    effects: &Effects,
) -> Result<Option<CommitRequest>, EngineError> {
    let Some(key) = event_key(json) else {
        if effects.any() {
            return Err(invalid_commit(format!(
                "ack {index}: its event has no partitionkey, so it has no state; ack it without state and events"
            )));
        }
        return Ok(None);
    };
    let change = match &effects.state {
        None => Change::Keep,
        Some(state) if state.get() == "null" => Change::Delete,
        Some(state) => Change::Set(state.clone()),
    };
    let mut emits = Vec::with_capacity(effects.emits.len());
    for (number, (topic, event)) in effects.emits.iter().enumerate() {
        let id = emitted_id(emitter, position.origin, number);
        emits.push((topic.clone(), emitted_event(event, id, index, number)?));
    }
    Ok(Some(CommitRequest {
        key,
        position,
        change,
        emits,
        generation,
        based_on,
    }))
}

/// Event `number` emitted by ack `ack`, its `id` set to `id`: a valid CloudEvent, or why not.
/// What an ack's and a stateful push sink's emitted events go through, and what the fuzz
/// target `ack_body` calls.
pub fn emitted_event(
    event: &RawValue,
    id: String,
    ack: usize,
    number: usize,
) -> Result<Event, EngineError> {
    let mut value: serde_json::Map<String, serde_json::Value> = serde_json::from_str(event.get())
        .map_err(|_| {
        invalid_commit(format!(
            "emit {number} of ack {ack}: the event must be a JSON object (a CloudEvent)"
        ))
    })?;
    value.insert("id".to_owned(), serde_json::Value::String(id));
    crate::event::from_value(serde_json::Value::Object(value)).map_err(|error| {
        invalid_commit(format!(
            "emit {number} of ack {ack} is not a valid CloudEvent: {error}"
        ))
    })
}

/// Ack `index`'s state as stored: on one line (a pulled message is one line of JSON in the
/// CLI's output), and without whitespace when it is over the size limit with it; refused when
/// it is still over [`STATE_BYTES_MAX`] (the limit counts the state as stored). What an ack's
/// and a stateful push sink's state go through, and what the fuzz target `ack_body` calls.
pub fn stored_state(index: usize, state: &RawValue) -> Result<Box<RawValue>, EngineError> {
    let text = state.get();
    let stored = if !text.contains('\n') && text.len() <= STATE_BYTES_MAX {
        state.to_owned()
    } else {
        RawValue::from_string(without_whitespace(text))
            .expect("JSON without the whitespace between its tokens is JSON")
    };
    if stored.get().len() > STATE_BYTES_MAX {
        return Err(EngineError::Subscription(
            SubscriptionError::StateTooLarge {
                index,
                bytes: stored.get().len(),
                max: STATE_BYTES_MAX,
            },
        ));
    }
    Ok(stored)
}

/// `json` (checked JSON) without the whitespace between its tokens, strings kept byte for
/// byte. Not by parsing it into a `serde_json::Value` and writing that back: a value has
/// limits raw JSON has not (128 levels of nesting, numbers within an f64), and a state beyond
/// them made that parse fail (the fuzz target `ack_body` found it: a panic, then).
fn without_whitespace(json: &str) -> String {
    let mut compact = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for character in json.chars() {
        if in_string {
            compact.push(character);
            if escaped {
                escaped = false;
            } else if character == '\\' {
                escaped = true;
            } else if character == '"' {
                in_string = false;
            }
        } else if !matches!(character, ' ' | '\t' | '\n' | '\r') {
            in_string = character == '"';
            compact.push(character);
        }
    }
    compact
}

pub(crate) fn invalid_commit(detail: String) -> EngineError {
    EngineError::Subscription(SubscriptionError::InvalidCommit { detail })
}

/// The `partitionkey` of stored event JSON.
pub(super) fn event_key(json: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct KeyOnly {
        #[serde(default)]
        partitionkey: Option<String>,
    }
    serde_json::from_str::<KeyOnly>(json).ok()?.partitionkey
}

/// The id of the `index`th event emitted by the commit of the event at `origin`:
/// `{subscription}:{incarnation}:{partition}:{offset}:{index}`, the same for every delivery of
/// that event, so a republish is a duplicate, never a second event; and new for a
/// subscription created again under the same name.
pub(super) fn emitted_id(emitter: &str, origin: (u32, u64), index: usize) -> String {
    format!("{emitter}:{}:{}:{index}", origin.0, origin.1)
}

fn storage_error(context: &str, source: crate::storage::StorageError) -> EngineError {
    EngineError::Data(crate::error::DataError::Storage {
        context: context.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_beyond_what_a_json_value_holds_are_stored_on_one_line() {
        // Goal: a state that serde_json takes as raw JSON but cannot read as a value (over its
        // 128 levels of nesting, or a number beyond an f64) is stored like any other, on one
        // line, never a panic nor a refusal (the fuzz target ack_body found the panic:
        // fuzz/corpus/ack_body/deep-state-with-newline, number-out-of-range-with-newline);
        // strings keep their whitespace and escapes.
        // Method: such states with newlines between tokens, compared with the same states
        // written without whitespace.
        let cases = [
            (
                "[".repeat(200) + "\n" + &"]".repeat(200),
                "[".repeat(200) + &"]".repeat(200),
            ),
            (
                "[1e999999,\n -0.5E-3 ]".to_owned(),
                "[1e999999,-0.5E-3]".to_owned(),
            ),
            (
                "{ \"a b\" :\n [\"x \\\" \\\\\", true , null ] }".to_owned(),
                "{\"a b\":[\"x \\\" \\\\\",true,null]}".to_owned(),
            ),
        ];
        for (sent, stored) in cases {
            let state = RawValue::from_string(sent).expect("raw JSON");
            assert_eq!(stored_state(3, &state).expect("stored").get(), stored);
        }
        let over = RawValue::from_string(format!("\"{}\"\n", "x".repeat(STATE_BYTES_MAX)))
            .expect("raw JSON");
        let error = stored_state(3, &over).expect_err("too large");
        assert!(error.to_string().contains("ack 3"), "{error}");
    }
}
