//! CloudEvents 1.0: validating events as published and turning the HTTP modes into the JSON
//! form keel stores.
//!
//! STUB: the public API below is the contract the engine and server code against.

use serde_json::value::RawValue;

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
}

fn at_index(index: Option<usize>) -> String {
    index.map(|i| format!(" at index {i}")).unwrap_or_default()
}

/// A validated CloudEvent in the JSON form keel stores, with the attributes the engine needs.
#[derive(Debug, Clone)]
pub struct Event {
    json: Box<RawValue>,
    id: String,
    source: String,
    key: Option<String>,
}

impl Event {
    /// The event's JSON exactly as stored (structured mode bytes as sent).
    pub fn json(&self) -> &str {
        self.json.get()
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
pub fn parse_structured(body: &[u8]) -> Result<Event, EventError> {
    let _ = body;
    todo!()
}

/// Parses a batch (`application/cloudevents-batch+json`): all valid, or the first error.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Event>, EventError> {
    let _ = body;
    todo!()
}

/// Builds an event from binary mode: `attributes` are the `ce-` headers (name without the
/// prefix, lower-case; value as sent, percent-encoded), `content_type` the `Content-Type`
/// header, `body` the data.
pub fn from_binary(
    attributes: &[(&str, &str)],
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Event, EventError> {
    let _ = (attributes, content_type, body);
    todo!()
}

/// Validates an event given as a JSON value (the in-process Rust API).
pub fn from_value(value: serde_json::Value) -> Result<Event, EventError> {
    let _ = value;
    todo!()
}

/// Reads `(source, id)` back from stored event JSON; `None` if it is not an event.
pub fn identity_of(json: &[u8]) -> Option<(String, String)> {
    let _ = json;
    todo!()
}
