//! Errors: every error answer is an RFC 9457 `application/problem+json` object with a precise
//! `detail`, and some carry a member that says more.
//!
//! RFC 9457 makes every member optional, so a reader takes a problem that lacks any of them
//! (a proxy's, say); keel's own always have `type`, `title`, `status` and `detail`. keel wrote
//! problems from a sorted map, so the members are declared in alphabetical order, which keeps
//! every answer byte for byte what it was.

use serde::{Deserialize, Serialize};

/// An RFC 9457 problem object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A conditional append refused (409): the key's version now (an RFC 9457 extension
    /// member).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub current_version: Option<u64>,
    /// What went wrong, precisely.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub detail: Option<String>,
    /// A read past the end (400): the partition's next offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub next_offset: Option<u64>,
    /// Acks carrying state or events that were stale (409): the ack ids; resend the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub stale_ack_ids: Option<Vec<String>>,
    /// A read before the start (404): the partition's first kept offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub start_offset: Option<u64>,
    /// The HTTP status.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub status: Option<u16>,
    /// A topic delete refused (409): the subscriptions that read the topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub subscriptions: Option<Vec<String>>,
    /// The status's reason phrase.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub title: Option<String>,
    /// The problem type; keel's are all `about:blank`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub problem_type: Option<String>,
}

/// `Content-Type` of a problem.
pub const CONTENT_TYPE: &str = "application/problem+json";
