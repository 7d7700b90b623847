//! A subscription's dead-letter queue: the entries `GET /v1/subscriptions/{name}/dlq` and
//! `…/dlq/{id}` answer, and the bodies of redrive and purge.
//!
//! An entry borrows its text from where it is read (an answer's bytes, or the entry keel
//! stores), so neither a reader nor the server copies an event to pass it on.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A dead-lettered event and why it failed. Times are RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Entry<'a> {
    /// `{partition}-{offset}` of the event in its topic.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// The partition the event was read from.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// The CloudEvent, as stored.
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub event: &'a RawValue,
    /// Attempts made.
    pub attempts: u32,
    /// The sink's status on the last attempt, when it answered.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub last_status: Option<u16>,
    /// The last attempt's error.
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(required))]
    pub last_error: Option<Cow<'a, str>>,
    /// When the first attempt ended.
    pub first_attempt_at: String,
    /// When the last attempt ended.
    pub last_attempt_at: String,
    /// When it was dead-lettered.
    pub dead_lettered_at: String,
    /// Every attempt, oldest first.
    #[serde(borrow)]
    pub history: Vec<Attempt<'a>>,
}

/// One delivery attempt of a dead-lettered event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attempt<'a> {
    /// When it ended.
    pub at: String,
    /// The sink's status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub status: Option<u16>,
    /// What went wrong, when it failed.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub error: Option<Cow<'a, str>>,
}

/// The answer to a list: entries, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EntryPage<'a> {
    /// The entries of this page.
    #[serde(borrow)]
    pub entries: Vec<Entry<'a>>,
    /// Pass as `after` for the next page; none on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub next_after: Option<String>,
}

/// The body of `POST /v1/subscriptions/{name}/dlq/redrive`: `{"ids": [...]}` or
/// `{"all": true}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// The entries to redrive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// Redrive every entry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

/// The answer to a redrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Redriven {
    /// Entries handed back to the subscription; each leaves the queue once acknowledged.
    pub redriven: usize,
}

/// The answer to a purge (`DELETE /v1/subscriptions/{name}/dlq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Purged {
    /// Entries deleted.
    pub purged: usize,
}
