//! Stateful subscriptions: the acks that commit a key's state and the events a handler emits,
//! and the bodies of `GET /v1/subscriptions/{name}/state/{key}` and of the key listing.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Keys a state listing answers with when the request names no `max`.
pub const STATE_LIST_MAX_DEFAULT: usize = 100;

/// One ack of a stateful subscription: settles the delivery and commits, with it and at
/// once, the key's new state and the events to emit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StatefulAck {
    /// The pulled message's ack id.
    pub ack_id: String,
    /// The key's new state. Left out: unchanged; `null`: deleted.
    #[serde(
        default,
        deserialize_with = "raw_present",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub state: Option<Box<RawValue>>,
    /// Events to publish with the commit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emit: Vec<Emit>,
}

/// A member that may be left out; when given, even as `null`, its JSON is kept.
fn raw_present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

/// What a stateful push sink may answer in its 2xx body (an empty body commits nothing but the
/// ack): the key's new state and the events to emit, as in a [`StatefulAck`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CommitAnswer {
    /// The key's new state. Left out: unchanged; `null`: deleted.
    #[serde(
        default,
        deserialize_with = "raw_present",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub state: Option<Box<RawValue>>,
    /// Events to publish with the commit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emit: Vec<Emit>,
}

/// An event a handler emits: published to `topic` when its commit is, exactly once (keel
/// sets its `id`, derived from the subscription and the source event's position).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Emit {
    /// The topic it goes to; it must exist.
    pub topic: String,
    /// A CloudEvent in JSON (structured mode); its `id` may be left out.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub event: Box<RawValue>,
}

/// What became of one ack's commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitResult {
    /// The ack id.
    pub ack_id: String,
    /// Applied, or stale (no longer outstanding, or its event's commit happened before).
    pub outcome: CommitOutcome,
    /// When applied: the key's version after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub state_version: Option<u64>,
}

/// Whether a commit was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CommitOutcome {
    /// Its state, emitted events and ack were committed, durably.
    Applied,
    /// Nothing was committed: the delivery is no longer outstanding, or the event's effect was
    /// committed already (by an earlier delivery of it).
    Stale,
}

/// One key's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyState<'a> {
    /// The key (the events' `partitionkey`).
    pub key: String,
    /// The state, as the last commit left it.
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub state: &'a RawValue,
    /// Commits applied to the key so far.
    pub version: u64,
    /// The partition of the key's events.
    pub partition: u32,
    /// The offset of the last event whose commit was applied.
    pub offset: u64,
}

/// A page of keys with state, in key order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StateList<'a> {
    /// The keys' states.
    #[serde(borrow)]
    pub keys: Vec<KeyState<'a>>,
    /// Pass as `after` for the next page; none on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub next_after: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: an ack tells "keep the state" (left out) from "delete it" (`null`).
    #[test]
    fn state_left_out_differs_from_null() {
        let kept: StatefulAck = serde_json::from_str(r#"{"ack_id":"a"}"#).expect("kept");
        assert!(kept.state.is_none());
        let deleted: StatefulAck =
            serde_json::from_str(r#"{"ack_id":"a","state":null}"#).expect("deleted");
        assert_eq!(deleted.state.expect("present").get(), "null");
        let set: StatefulAck = serde_json::from_str(
            r#"{"ack_id":"a","state":{"n":1},"emit":[{"topic":"t","event":{"type":"x"}}]}"#,
        )
        .expect("set");
        assert_eq!(set.state.expect("present").get(), r#"{"n":1}"#);
        assert_eq!(set.emit[0].topic, "t");
    }
}
