//! Pull delivery: the bodies of `POST /v1/subscriptions/{name}/pull` and of `…/ack`, `…/nack`
//! and `…/reject`.
//!
//! A pulled message borrows from the answer's bytes. Its event type is a parameter: the
//! default keeps the event as raw JSON; a reader that needs only part of each event (say its
//! `data`) names a type of its own and parses it in the same pass.

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::duration;

/// Messages a pull answers with when the request names no `max`.
pub const PULL_MAX_DEFAULT: usize = 100;

/// The body of a pull. Every member may be left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// Most messages; none = [`PULL_MAX_DEFAULT`]. `null` is refused, as a wrong type.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub max: Option<usize>,
    /// How long to wait for a first message when none is ready (`"5s"`); none = no wait.
    #[serde(
        default,
        with = "duration::serde_text_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub wait: Option<Duration>,
}

/// A member that may be left out but, when given, must hold a value: `null` is refused with
/// the inner type's own error.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// The answer to a pull.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(bound(deserialize = "Event: Deserialize<'de>"))]
#[cfg_attr(feature = "openapi", schema(bound = ""))]
pub struct Pulled<'a, Event = &'a RawValue> {
    /// The messages, oldest delivery first; empty when none was ready in time.
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<PulledMessage>))]
    pub messages: Vec<PulledMessage<'a, Event>>,
}

/// One pulled event and the ack id that settles its delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(bound(deserialize = "Event: Deserialize<'de>"))]
#[cfg_attr(feature = "openapi", schema(bound = ""))]
pub struct PulledMessage<'a, Event = &'a RawValue> {
    /// Settles this delivery; opaque (URL-safe base64), so it borrows from the answer.
    #[serde(borrow)]
    pub ack_id: Cow<'a, str>,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// The partition it was read from (for redriven events: where it was first read).
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// The CloudEvent, as stored.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub event: Event,
    /// Stateful subscriptions only: the state of the event's key (`null` when it has none).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub state: Option<&'a RawValue>,
    /// Stateful subscriptions only: the version of that state (0 when the key has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub state_version: Option<u64>,
}

/// The body of an ack, nack or reject: `ack_ids`, or (ack only) `acks` carrying state and
/// events to emit, or both.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    /// Ack ids of pulled messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ack_ids: Vec<String>,
    /// Ack only: acks that commit a key's new state and events to emit with the ack
    /// (stateful subscriptions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acks: Vec<crate::state::StatefulAck>,
    /// Nack only: wait this long before the redelivery (default: the retry backoff).
    #[serde(
        default,
        with = "duration::serde_text_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub delay: Option<Duration>,
}

/// The answer to an ack, nack or reject, once what it settled is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckResult {
    /// Ack ids settled.
    pub settled: usize,
    /// Ack ids that no longer name an outstanding delivery: the ack deadline passed and the
    /// event was (or will be) delivered again, the subscription was sought, the server
    /// restarted, or the id was settled already.
    pub stale: Vec<String>,
    /// Stateful subscriptions only: per ack, in the order given (`ack_ids` first), whether
    /// its commit was applied or found stale.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<crate::state::CommitResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a reader that needs one member of each event parses it in the same pass, borrowing
    // from the answer. Method: parse an answer with the raw default and with a partial event.
    #[test]
    fn pulled_events_read_raw_or_in_part() {
        let body = r#"{"messages":[{"ack_id":"AbC","attempt":1,"partition":0,"offset":7,
            "event":{"id":"a","data":"x"}}]}"#;
        let raw: Pulled<'_> = serde_json::from_str(body).expect("raw events");
        assert_eq!(raw.messages[0].event.get(), r#"{"id":"a","data":"x"}"#);
        assert!(raw.messages[0].state.is_none(), "not stateful");
        assert!(matches!(raw.messages[0].ack_id, Cow::Borrowed("AbC")));
        #[derive(Deserialize)]
        struct Data<'a> {
            #[serde(borrow)]
            data: &'a str,
        }
        let partial: Pulled<'_, Data<'_>> = serde_json::from_str(body).expect("data only");
        assert_eq!(partial.messages[0].event.data, "x");
    }

    // Goal: a pull request may leave out either member, but not send `null` for `max`.
    #[test]
    fn pull_request_members_are_optional_but_not_null() {
        let empty: PullRequest = serde_json::from_str("{}").expect("empty");
        assert_eq!(empty, PullRequest::default());
        let error = serde_json::from_str::<PullRequest>(r#"{"max": null}"#).expect_err("null");
        assert!(error.to_string().contains("expected usize"), "{error}");
        let wait = PullRequest {
            max: None,
            wait: Some(Duration::from_secs(5)),
        };
        assert_eq!(
            serde_json::to_string(&wait).expect("serialise"),
            r#"{"wait":"5s"}"#
        );
    }
}
