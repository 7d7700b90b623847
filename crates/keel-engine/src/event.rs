//! CloudEvents 1.0: validating events as published and turning the HTTP modes into the JSON
//! form keel stores.
//!
//! keel stores every event in the CloudEvents JSON event format. Structured and batched
//! events are stored exactly as sent (without surrounding whitespace); binary-mode events are
//! built into that format (see [`from_binary`]). Every event passes the same rules, from
//! CloudEvents 1.0.2 (core spec, JSON format, HTTP protocol binding):
//!
//! - the event is a JSON object without duplicate member names;
//! - `specversion` is `"1.0"`; `id`, `source` and `type` are non-empty strings;
//! - attribute names are lower-case ASCII letters or digits;
//! - `source` is a URI-reference, `dataschema` an absolute URI, `time` an RFC 3339 timestamp,
//!   `datacontenttype` a media type, `subject` a non-empty string;
//! - extension values are strings, booleans or 32-bit integers; string values hold no control
//!   characters or noncharacters;
//! - `partitionkey` (the event's key, CloudEvents Partitioning extension) is a non-empty string;
//! - `data` and `data_base64` are mutually exclusive, and `data_base64` is padded base64 in
//!   the standard alphabet;
//! - an attribute set to `null` is unset, as the JSON format requires; `data: null` is an
//!   explicit `null` payload.
//!
//! ```
//! use keel_engine::event;
//!
//! let body = br#"{"specversion":"1.0","id":"1","source":"/shop","type":"order.created",
//!                 "partitionkey":"order-1001","data":{"amount":42}}"#;
//! let event = event::parse_structured(body)?;
//! assert_eq!((event.source(), event.id(), event.key()), ("/shop", "1", Some("order-1001")));
//!
//! let headers = [("specversion", "1.0"), ("id", "2"), ("source", "/shop"), ("type", "t"),
//!                ("subject", "caf%C3%A9")];
//! let event = event::from_binary(&headers, Some("text/plain"), b"hello")?;
//! let stored = r#"{"specversion":"1.0","id":"2","source":"/shop","type":"t","subject":"café","#;
//! let data = r#""datacontenttype":"text/plain","data":"hello"}"#;
//! assert_eq!(event.json(), format!("{stored}{data}"));
//! # Ok::<(), event::EventError>(())
//! ```

pub mod http;
mod validate;

#[cfg(test)]
mod tests;

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use validate::{Identity, Members};

/// Why an event (or a batch) was refused. Each message is precise enough to fix the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The body is not the JSON it must be.
    #[error("malformed JSON{}: {detail}", at_index(*.index))]
    Json {
        /// Position in a batch, when in one.
        index: Option<usize>,
        /// What the JSON parser said.
        detail: String,
    },
    /// The JSON (or headers) do not form a valid CloudEvent.
    #[error("invalid CloudEvent{}: {detail}", at_index(*.index))]
    Invalid {
        /// Position in a batch, when in one.
        index: Option<usize>,
        /// Which attribute and what is wrong with it.
        detail: String,
    },
    /// A publish request in none of the CloudEvents HTTP content modes.
    #[error(
        "unsupported Content-Type {}: send {} (one event), {} (a JSON array of events), or binary mode (ce-specversion, ce-id, ce-source, ce-type headers with the data as body)",
        content_type.as_deref().map_or("(none)".to_owned(), |value| format!("{value:?}")),
        http::STRUCTURED,
        http::BATCH
    )]
    UnsupportedMediaType {
        /// The `Content-Type` sent, when one was.
        content_type: Option<String>,
    },
}

fn at_index(index: Option<usize>) -> String {
    index.map(|i| format!(" at index {i}")).unwrap_or_default()
}

/// A validated CloudEvent in the JSON form keel stores, with the attributes the engine needs.
///
/// Invariant: `json` passed every rule of this module, and `id`, `source` and `key` are the
/// values of its `id`, `source` and `partitionkey` attributes.
#[derive(Debug, Clone)]
pub struct Event {
    json: Box<RawValue>,
    id: String,
    source: String,
    key: Option<String>,
}

impl Event {
    fn new(json: Box<RawValue>, identity: Identity) -> Self {
        debug_assert!(!identity.id.is_empty() && !identity.source.is_empty());
        Self {
            json,
            id: identity.id,
            source: identity.source,
            key: identity.key,
        }
    }

    /// The event's JSON exactly as stored (structured mode bytes as sent).
    pub fn json(&self) -> &str {
        self.json.get()
    }

    /// The event's stored JSON, without copying it.
    pub fn into_json(self) -> Box<RawValue> {
        self.json
    }

    /// The `id` attribute.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `source` attribute.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The `partitionkey` extension, when present.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

/// Parses one event in structured mode (`application/cloudevents+json`).
///
/// The stored JSON is `body` without surrounding whitespace, byte for byte.
pub fn parse_structured(body: &[u8]) -> Result<Event, EventError> {
    let text = body_text(body)?;
    checked_event(text.to_owned(), None)
}

/// Parses a batch (`application/cloudevents-batch+json`): all valid, or the first error.
///
/// Each event is stored as its array element's JSON text, byte for byte. The JSON batch format
/// allows an empty array, but publishing nothing is refused as a likely client bug.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Event>, EventError> {
    let text = body_text(body)?;
    require_top_level(text, b'[', "a batch must be a JSON array of events", None)?;
    let elements: Vec<Box<RawValue>> =
        serde_json::from_str(text).map_err(|error| json_error(None, &error))?;
    if elements.is_empty() {
        let detail = "a batch must hold at least one event, got an empty array".to_owned();
        return Err(EventError::Invalid {
            index: None,
            detail,
        });
    }
    elements
        .into_iter()
        .enumerate()
        .map(|(index, json)| {
            let identity = check_event(json.get(), Some(index))?;
            Ok(Event::new(json, identity))
        })
        .collect()
}

/// Builds an event from binary mode: `attributes` are the `ce-` headers (name without the
/// prefix, lower-case; value as sent, percent-encoded), `content_type` the `Content-Type`
/// header, `body` the data.
///
/// Header values may also be RFC 9110 quoted-strings. `Content-Type` becomes
/// `datacontenttype`. A JSON body (`*/json`, `*/*+json`) must be JSON and is embedded as
/// `data`; a UTF-8 `text/*` body becomes a `data` string; any other body, or one without a
/// content type, becomes `data_base64`; an empty body means no data. The attributes become
/// JSON strings (`specversion` first, then in header order) and the event passes the same
/// rules as in structured mode.
pub fn from_binary(
    attributes: &[(&str, &str)],
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Event, EventError> {
    let json = http::binary_to_json(attributes, content_type, body).map_err(|detail| {
        EventError::Invalid {
            index: None,
            detail,
        }
    })?;
    checked_event(json, None)
}

/// Validates an event given as a JSON value (the in-process Rust API).
///
/// The stored JSON is the value serialised compactly.
pub fn from_value(value: serde_json::Value) -> Result<Event, EventError> {
    let json = serde_json::to_string(&value).map_err(|error| json_error(None, &error))?;
    checked_event(json, None)
}

/// Reads `(source, id)` back from stored event JSON; `None` if it is not an event.
///
/// Cheap enough for replaying a log on restart: it borrows both strings when they have no
/// escapes, and skips every other member without building it.
pub fn identity_of(json: &[u8]) -> Option<(String, String)> {
    #[derive(Deserialize)]
    struct StoredIdentity<'a> {
        #[serde(borrow)]
        source: Cow<'a, str>,
        #[serde(borrow)]
        id: Cow<'a, str>,
    }
    let identity: StoredIdentity<'_> = serde_json::from_slice(json).ok()?;
    Some((identity.source.into_owned(), identity.id.into_owned()))
}

/// Reads the `partitionkey` back from stored event JSON; `None` for a keyless event (or one
/// that is not an event).
///
/// Cheap for keyless events, which the key index reads at the publish rate: a text search
/// (SIMD in `str::contains`) rules the member out before any parsing; only text that may
/// hold it (by name, or behind a `\u` escape) is parsed.
pub fn key_of(json: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct StoredKey<'a> {
        #[serde(borrow, default)]
        partitionkey: Option<Cow<'a, str>>,
    }
    let text = std::str::from_utf8(json).ok()?;
    if !text.contains("partitionkey") && !text.contains("\\u") {
        return None;
    }
    let stored: StoredKey<'_> = serde_json::from_str(text).ok()?;
    stored.partitionkey.map(Cow::into_owned)
}

/// Validates `json` and keeps it as the stored text.
fn checked_event(json: String, index: Option<usize>) -> Result<Event, EventError> {
    let identity = check_event(&json, index)?;
    let json = RawValue::from_string(json).map_err(|error| json_error(index, &error))?;
    Ok(Event::new(json, identity))
}

/// Checks one event's JSON text against every rule.
fn check_event(json: &str, index: Option<usize>) -> Result<Identity, EventError> {
    require_top_level(json, b'{', "an event must be a JSON object", index)?;
    let members: Members = serde_json::from_str(json).map_err(|error| json_error(index, &error))?;
    validate::validate(&members.0).map_err(|detail| EventError::Invalid { index, detail })
}

/// The body as UTF-8 text without the JSON whitespace around it.
fn body_text(body: &[u8]) -> Result<&str, EventError> {
    let is_json_whitespace = |byte: &u8| matches!(byte, b' ' | b'\t' | b'\n' | b'\r');
    let start = body
        .iter()
        .position(|byte| !is_json_whitespace(byte))
        .unwrap_or(body.len());
    let end = body
        .iter()
        .rposition(|byte| !is_json_whitespace(byte))
        .map_or(start, |i| i + 1);
    let trimmed = body.get(start..end).unwrap_or_default();
    std::str::from_utf8(trimmed).map_err(|error| EventError::Json {
        index: None,
        detail: format!("the body is not UTF-8: {error}"),
    })
}

/// Refuses JSON text whose top-level value does not start with `open`: as [`EventError::Json`]
/// if it is not JSON at all, else as [`EventError::Invalid`] naming what it is.
fn require_top_level(
    json: &str,
    open: u8,
    requirement: &str,
    index: Option<usize>,
) -> Result<(), EventError> {
    let Some(&first) = json.as_bytes().first() else {
        return Err(EventError::Json {
            index,
            detail: "the body is empty".to_owned(),
        });
    };
    if first == open {
        return Ok(());
    }
    serde_json::from_str::<IgnoredAny>(json).map_err(|error| json_error(index, &error))?;
    let found = match first {
        b'{' => "an object",
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "a number",
    };
    Err(EventError::Invalid {
        index,
        detail: format!("{requirement}, got {found}"),
    })
}

fn json_error(index: Option<usize>, error: &serde_json::Error) -> EventError {
    EventError::Json {
        index,
        detail: error.to_string(),
    }
}
