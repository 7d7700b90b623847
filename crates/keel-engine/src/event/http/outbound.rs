//! Outbound binary content mode: the stored event as a CloudEvents HTTP binary-mode request
//! (HTTP protocol binding 1.0.2 §3.1), the inverse of [`crate::event::from_binary`]; the
//! mapping is in the parent module's doc. An empty string `data` is sent as an empty body,
//! which reads back as no data.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{is_json, percent_encode};

/// The parts of one binary-mode request that come from the event (not the signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BinaryRequest {
    /// The `ce-` headers: full name and percent-encoded value, in the stored member order.
    pub(crate) headers: Vec<(String, String)>,
    /// The `Content-Type` header, when there is one.
    pub(crate) content_type: Option<String>,
    /// The body: the event's data.
    pub(crate) body: Vec<u8>,
    /// The event id as its `ce-id` header carries it (percent-encoded): the `webhook-id`.
    pub(crate) id: String,
    /// The event's `traceparent` attribute (distributed tracing extension), as text.
    pub(crate) traceparent: Option<String>,
    /// The event's `tracestate` attribute, as text.
    pub(crate) tracestate: Option<String>,
}

/// What a JSON-typed body defaults to (JSON event format §3.1).
const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// Builds the binary-mode parts of `event_json`, a stored (so valid) CloudEvent. The error says
/// why the text is not one, which would mean a bug or a corrupted store.
pub(crate) fn binary_request(event_json: &str) -> Result<BinaryRequest, String> {
    let members = members_in_order(event_json)?;
    let mut headers = Vec::with_capacity(members.len());
    let mut content_type = None;
    let mut data = None;
    let mut data_base64 = None;
    let (mut traceparent, mut tracestate) = (None, None);
    for (name, value) in members {
        match name.as_str() {
            // `data: null` is an explicit null payload; any other null attribute is unset.
            "data" => data = Some(value),
            _ if value.get() == "null" => {}
            "data_base64" => data_base64 = Some(string_value(&name, value)?),
            "datacontenttype" => content_type = Some(string_value(&name, value)?),
            _ => {
                let text = attribute_text(&name, value)?;
                headers.push((format!("ce-{name}"), percent_encode(&text)));
                match name.as_str() {
                    "traceparent" => traceparent = Some(text),
                    "tracestate" => tracestate = Some(text),
                    _ => {}
                }
            }
        }
    }
    let id = headers
        .iter()
        .find(|(name, _)| name == "ce-id")
        .map(|(_, value)| value.clone())
        .ok_or("the stored event has no \"id\"")?;
    let body = match (data, data_base64) {
        (Some(data), _) => {
            let content_type = content_type.get_or_insert_with(|| DEFAULT_CONTENT_TYPE.into());
            data_body(content_type, data)?
        }
        (None, Some(encoded)) => BASE64
            .decode(encoded)
            .map_err(|error| format!("the stored \"data_base64\" is not base64: {error}"))?,
        (None, None) => Vec::new(),
    };
    Ok(BinaryRequest {
        headers,
        content_type,
        body,
        id,
        traceparent,
        tracestate,
    })
}

/// The body for a `data` member: JSON text for JSON content, a string's text otherwise.
fn data_body(content_type: &str, data: &RawValue) -> Result<Vec<u8>, String> {
    if is_json(content_type) {
        return Ok(data.get().as_bytes().to_vec());
    }
    if data.get().starts_with('"') {
        return Ok(string_value("data", data)?.into_bytes());
    }
    // A non-string value with a non-JSON content type: its JSON text is the only form it has.
    Ok(data.get().as_bytes().to_vec())
}

/// An attribute's canonical string: a string's text, any other value's JSON text.
fn attribute_text(name: &str, value: &RawValue) -> Result<String, String> {
    if value.get().starts_with('"') {
        string_value(name, value)
    } else {
        Ok(value.get().to_owned())
    }
}

/// The text of a member that must be a JSON string.
fn string_value(name: &str, value: &RawValue) -> Result<String, String> {
    serde_json::from_str(value.get())
        .map_err(|_| format!("the stored {name:?} is not a string: {}", value.get()))
}

/// The members of a JSON object in their stored order, values unparsed.
fn members_in_order(json: &str) -> Result<Vec<(String, &RawValue)>, String> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let members = deserializer
        .deserialize_map(MembersVisitor)
        .and_then(|members| deserializer.end().map(|()| members))
        .map_err(|error| format!("the stored event is not a JSON object: {error}"))?;
    Ok(members)
}

/// Collects an object's members as (name, raw value) pairs.
struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Vec<(String, &'de RawValue)>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            let value = map.next_value::<&'de RawValue>()?;
            members.push((name, value));
        }
        Ok(members)
    }
}
