//! Event-sourced streams: what `GET /v1/topics/{topic}/keys/{key}/events` answers, and the
//! version a conditional append (`POST /v1/topics/{topic}/events?expected_version=N`) adds to
//! its publish answer.
//!
//! A key's events are numbered by *version*: its k-th event in log order has version k, and
//! the key's version is its event count (0 for a key without events). The answer borrows each
//! event from its bytes, as [`crate::read`] does.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Events one read of a key's stream returns when `max` is not given.
pub const KEY_STREAM_RECORDS_DEFAULT: usize = 100;

/// The answer to a read of a key's stream: its events from the version asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyStream<'a> {
    /// The key (the events' `partitionkey`).
    pub key: String,
    /// The events, in version order. Events that retention removed are left out (their
    /// versions still count).
    #[serde(borrow)]
    pub records: Vec<StreamRecord<'a>>,
    /// The key's version: how many events it has had.
    pub version: u64,
    /// The version to read from next; above `version` once everything was read.
    pub next_version: u64,
}

/// One event of a key's stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamRecord<'a> {
    /// Its version: the key's `version`-th event.
    pub version: u64,
    /// The partition it is stored in.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// When it was appended: an RFC 3339 UTC string with milliseconds, kept as the JSON the
    /// server wrote (see [`crate::read::Record`]).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub timestamp: Option<&'a RawValue>,
    /// The CloudEvent, as stored.
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub event: &'a RawValue,
}
