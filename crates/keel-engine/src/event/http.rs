//! The CloudEvents HTTP protocol binding (1.0.2), both ways, in one place: a publish request
//! in any of the three content modes becomes the events keel stores, and a stored event
//! becomes the binary-mode request a push delivery sends.
//!
//! Inbound ([`parse_request`]), by `Content-Type`:
//! - `application/cloudevents+json`: structured mode, the body is one event
//!   ([`super::parse_structured`]);
//! - `application/cloudevents-batch+json`: batched mode, a JSON array, all or nothing
//!   ([`super::parse_batch`]);
//! - anything else with a `ce-specversion` header: binary mode, `ce-*` headers hold the
//!   attributes and the body is the data ([`super::from_binary`]; the mapping is in
//!   `http/inbound.rs`);
//! - anything else is refused as an unsupported media type.
//!
//! Outbound (`binary_request`), the inverse of binary mode:
//! - every attribute but `data`, `data_base64` and `datacontenttype` becomes a `ce-<name>`
//!   header: strings percent-encoded (§3.1.3.2: space, `"`, `%` and all but printable ASCII
//!   become `%XY` of their UTF-8 bytes), booleans and integers as their JSON text;
//! - `Content-Type` is `datacontenttype`, or `application/json` when there is `data` without
//!   one (JSON format §3.1);
//! - the body is `data`'s JSON text for JSON content types (`*/json`, `*/*+json`), a `data`
//!   string's text for other content types, the decoded `data_base64`, or empty without data.
//!
//! Publishing those parts in binary mode stores the same event, except what a header cannot
//! say: extension booleans and integers come back as strings, and an implied
//! `datacontenttype: application/json` becomes explicit.

mod inbound;
mod outbound;

use super::{Event, EventError};

pub(crate) use inbound::to_json as binary_to_json;
pub(crate) use outbound::{BinaryRequest, binary_request};

/// The media type of structured mode.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// The media type of batched mode.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// A publish request, as the HTTP binding reads it.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// The `Content-Type` header, when there is one (as text; `""` when it is not ASCII).
    pub content_type: Option<&'a str>,
    /// The `ce-` headers: name without the prefix, lower-case; value as sent.
    pub attributes: &'a [(&'a str, &'a [u8])],
    /// The body.
    pub body: &'a [u8],
}

/// Reads the events of a publish request in whichever content mode it uses.
pub fn parse_request(request: &HttpRequest<'_>) -> Result<Vec<Event>, EventError> {
    let media_type = request.content_type.map(|value| {
        value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    match media_type.as_deref() {
        Some(STRUCTURED) => Ok(vec![super::parse_structured(request.body)?]),
        Some(BATCH) => super::parse_batch(request.body),
        _ if request
            .attributes
            .iter()
            .any(|(name, _)| *name == "specversion") =>
        {
            let attributes = request
                .attributes
                .iter()
                .map(|&(name, value)| Ok((name, visible_ascii(name, value)?)))
                .collect::<Result<Vec<_>, EventError>>()?;
            Ok(vec![super::from_binary(
                &attributes,
                request.content_type,
                request.body,
            )?])
        }
        _ => Err(EventError::UnsupportedMediaType {
            content_type: request.content_type.map(str::to_owned),
        }),
    }
}

/// A header's value as text: header values are visible ASCII (and tabs); anything else must
/// be percent-encoded by the sender.
fn visible_ascii<'a>(name: &str, value: &'a [u8]) -> Result<&'a str, EventError> {
    let visible = value
        .iter()
        .all(|&byte| byte == b'\t' || (0x20..0x7f).contains(&byte));
    match std::str::from_utf8(value) {
        Ok(text) if visible => Ok(text),
        _ => Err(EventError::Invalid {
            index: None,
            detail: format!(
                "header ce-{name} must be visible ASCII (percent-encode other characters)"
            ),
        }),
    }
}

/// Whether a media type is JSON: `*/json` or `*/*+json`, parameters ignored (JSON event format
/// §3.1.1), for reading and for writing a body.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let Some((_, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.to_ascii_lowercase();
    subtype == "json" || subtype.ends_with("+json")
}

/// Percent-encodes a header value (HTTP binding §3.1.3.2): space, `"`, `%` and every character
/// outside printable ASCII become `%XY` of their UTF-8 bytes, upper-case.
pub(crate) fn percent_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut encoded = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if matches!(byte, 0x21..=0x7E) && byte != b'"' && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push('%');
            encoded.push(char::from(HEX[usize::from(byte >> 4)]));
            encoded.push(char::from(HEX[usize::from(byte & 0x0F)]));
        }
    }
    encoded
}

/// One round of percent-decoding; the decoded bytes must be UTF-8 (overlong forms included).
fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut position = 0;
    while let Some(&byte) = bytes.get(position) {
        if byte != b'%' {
            decoded.push(byte);
            position += 1;
            continue;
        }
        let digit = |offset: usize| {
            let digit = bytes
                .get(position + offset)
                .and_then(|&b| char::from(b).to_digit(16));
            digit.and_then(|digit| u8::try_from(digit).ok())
        };
        match (digit(1), digit(2)) {
            (Some(high), Some(low)) => decoded.push(high << 4 | low),
            _ => {
                return Err(format!(
                    "'%' at byte {position} is not followed by two hex digits"
                ));
            }
        }
        position += 3;
    }
    String::from_utf8(decoded).map_err(|error| format!("the decoded bytes are not UTF-8 ({error})"))
}
