//! Publishing: what `POST /v1/topics/{topic}/events` answers. The request is CloudEvents in
//! one of three modes (structured, batched, binary); an event is the publisher's JSON, which
//! keel validates, so it has no type here.

use serde::{Deserialize, Serialize};

/// Where one published event is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishResult {
    /// The event's id.
    pub id: String,
    /// The partition it is stored in.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// True when an earlier publish stored it and this one appended nothing.
    pub duplicate: bool,
}

/// The answer to a publish, once the events are durable: one result per event, in input order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishResults {
    /// The results, in the order the events were sent.
    pub results: Vec<PublishResult>,
    /// A conditional append (`expected_version`) that appended: the key's version after it.
    /// Absent from plain publishes, and from a retry whose events were all duplicates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub version: Option<u64>,
}
