//! What a stateful subscription stores, each JSON with a `format` (see `format.rs`): a key's
//! entry in the state table, the table's mark, and a commit in the commit log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{DataError, EngineError};

/// Table keys of key states start with this byte, marks of applied redriven events with
/// [`REDRIVEN_PREFIX`], key states from before the last rebuild with [`PREVIOUS_PREFIX`], and
/// marks of events never applied (dead-lettered, then purged or rebuilt over) with
/// [`UNAPPLIED_PREFIX`].
pub(super) const KEY_PREFIX: u8 = b'k';
pub(super) const REDRIVEN_PREFIX: u8 = b'r';
pub(super) const PREVIOUS_PREFIX: u8 = b'p';
pub(super) const UNAPPLIED_PREFIX: u8 = b'n';

/// The table key of a key's state from before the last rebuild: its offset says which events
/// were applied (and emitted their events) before.
pub(super) fn previous_entry(key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(key.len() + 1);
    bytes.push(PREVIOUS_PREFIX);
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

/// The table key of a key's state.
pub(super) fn key_entry(key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(key.len() + 1);
    bytes.push(KEY_PREFIX);
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

/// The table key of the mark that a redriven dead-letter entry's commit was applied.
pub(super) fn redriven_entry(entry_id: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(entry_id.len() + 1);
    bytes.push(REDRIVEN_PREFIX);
    bytes.extend_from_slice(entry_id.as_bytes());
    bytes
}

/// The table key of the mark that the event at `origin` was never applied, in any
/// generation: although its key has applied events past it, a commit of it emits its events.
pub(super) fn unapplied_entry((partition, offset): (u32, u64)) -> Vec<u8> {
    let mut bytes = vec![UNAPPLIED_PREFIX];
    bytes.extend_from_slice(&partition.to_be_bytes());
    bytes.extend_from_slice(&offset.to_be_bytes());
    bytes
}

/// A key's entry in the state table. With no `state` it is a tombstone: the key's state was
/// deleted, and its version and position stay, so that a redelivery is still found applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(in crate::subscription) struct StoredEntry {
    #[serde(default = "crate::format::unrecorded")]
    format: u64,
    /// Commits applied to the key.
    pub(in crate::subscription) version: u64,
    /// Where the key's events are.
    pub(in crate::subscription) partition: u32,
    /// The highest offset whose commit was applied: a delivery at or below it is applied.
    pub(in crate::subscription) offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::subscription) state: Option<Box<RawValue>>,
}

impl StoredEntry {
    pub(super) fn new(
        version: u64,
        partition: u32,
        offset: u64,
        state: Option<Box<RawValue>>,
    ) -> Self {
        StoredEntry {
            format: crate::format::FORMAT,
            version,
            partition,
            offset,
            state,
        }
    }

    pub(super) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an entry serialises")
    }

    pub(super) fn from_bytes(bytes: &[u8]) -> Result<Self, EngineError> {
        let entry: StoredEntry =
            serde_json::from_slice(bytes).map_err(|error| corrupt("state entry", &error))?;
        crate::format::check(entry.format).map_err(|error| corrupt("state entry", &error))?;
        Ok(entry)
    }
}

/// What the table holds, stored with every write: commits below `applied` are in it, and
/// the events of commits below `published` were published. After a rebuild, its generation
/// and where its replay ends.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct TableMark {
    #[serde(default = "crate::format::unrecorded")]
    format: u64,
    pub(super) applied: u64,
    pub(super) published: u64,
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub(super) rebuild: Option<Rebuild>,
    /// Drawn at random when the state is first opened: part of every emitted event's id, so
    /// that a subscription deleted and created again under its name never derives the ids
    /// its predecessor's events have (0 in a mark from before it existed: drawn then).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(super) incarnation: u64,
    /// Whether the table may hold marks of events never applied: then each commit clears
    /// its event's mark.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) unapplied: bool,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// A rebuild of the state: its number (commits asked for before it are stale).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Rebuild {
    pub(super) generation: u64,
}

impl TableMark {
    pub(super) fn new(applied: u64, published: u64) -> Self {
        TableMark {
            format: crate::format::FORMAT,
            applied,
            published,
            rebuild: None,
            incarnation: 0,
            unapplied: false,
        }
    }

    /// The rebuild generation the table is at (0 before any).
    pub(super) fn generation(&self) -> u64 {
        self.rebuild
            .as_ref()
            .map_or(0, |rebuild| rebuild.generation)
    }

    pub(super) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a mark serialises")
    }

    pub(super) fn from_bytes(bytes: &[u8]) -> Result<Self, EngineError> {
        let mark: TableMark =
            serde_json::from_slice(bytes).map_err(|error| corrupt("state mark", &error))?;
        crate::format::check(mark.format).map_err(|error| corrupt("state mark", &error))?;
        Ok(mark)
    }
}

/// How a commit changes its key's state.
#[derive(Debug, Clone)]
pub(in crate::subscription) enum Change {
    /// Left as it is.
    Keep,
    /// Replaced by this JSON.
    Set(Box<RawValue>),
    /// Deleted.
    Delete,
}

/// One commit, as the commit log holds it: what replaying it applies, and the events it
/// emits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CommitRecord {
    #[serde(default = "crate::format::unrecorded")]
    format: u64,
    pub(super) key: String,
    pub(super) partition: u32,
    pub(super) offset: u64,
    /// For a redriven event: its dead-letter entry id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) redriven: Option<String>,
    /// The key's version after the commit.
    pub(super) version: u64,
    /// The new state, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<Box<RawValue>>,
    /// Whether the state was deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    /// The events emitted, their ids set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) emit: Vec<EmitRecord>,
    /// Per topic emitted to, each partition's next offset before the commit: its events can
    /// only be at or after these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) since: BTreeMap<String, Vec<u64>>,
    /// Set on a rebuild's record instead of a commit: the state is dropped here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) rebuild: Option<Rebuild>,
    /// Set on a record of events never applied instead of a commit: their positions, marked
    /// so (see [`unapplied_entry`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) unapplied: Vec<(u32, u64)>,
}

/// An emitted event in a commit record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct EmitRecord {
    pub(super) topic: String,
    pub(super) event: Box<RawValue>,
}

impl CommitRecord {
    pub(super) fn new(
        key: String,
        (partition, offset): (u32, u64),
        redriven: Option<String>,
        version: u64,
        change: &Change,
        emit: Vec<EmitRecord>,
        since: BTreeMap<String, Vec<u64>>,
    ) -> Self {
        let (state, deleted) = match change {
            Change::Keep => (None, false),
            Change::Set(state) => (Some(state.clone()), false),
            Change::Delete => (None, true),
        };
        CommitRecord {
            format: crate::format::FORMAT,
            key,
            partition,
            offset,
            redriven,
            version,
            state,
            deleted,
            emit,
            since,
            rebuild: None,
            unapplied: Vec::new(),
        }
    }

    /// A record that is not a commit (see [`CommitRecord::rebuild`]).
    fn marker() -> Self {
        Self::new(
            String::new(),
            (0, 0),
            None,
            0,
            &Change::Keep,
            Vec::new(),
            BTreeMap::new(),
        )
    }

    /// The record of a rebuild: the state is dropped, and the replay begins.
    pub(super) fn rebuild(rebuild: Rebuild) -> Self {
        CommitRecord {
            rebuild: Some(rebuild),
            ..Self::marker()
        }
    }

    /// The record of events never applied (dead-lettered, and now purged or rebuilt over).
    pub(super) fn unapplied(positions: Vec<(u32, u64)>) -> Self {
        CommitRecord {
            unapplied: positions,
            ..Self::marker()
        }
    }

    pub(super) fn change(&self) -> Change {
        match (&self.state, self.deleted) {
            (Some(state), _) => Change::Set(state.clone()),
            (None, true) => Change::Delete,
            (None, false) => Change::Keep,
        }
    }

    pub(super) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a commit serialises")
    }

    pub(super) fn from_bytes(bytes: &[u8]) -> Result<Self, EngineError> {
        let record: CommitRecord =
            serde_json::from_slice(bytes).map_err(|error| corrupt("state commit", &error))?;
        crate::format::check(record.format).map_err(|error| corrupt("state commit", &error))?;
        Ok(record)
    }
}

fn corrupt(what: &str, error: &dyn std::fmt::Display) -> EngineError {
    EngineError::Data(DataError::Corrupt {
        detail: format!(
            "a stored {what} cannot be read ({error}); restore the subscription's state from a backup, or delete the subscription"
        ),
    })
}
