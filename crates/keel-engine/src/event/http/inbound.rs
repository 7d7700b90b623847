//! Inbound binary content mode (HTTP protocol binding 1.0.2 §3.1): `ce-` headers and a body,
//! turned into the JSON event keel stores.
//!
//! The stored object lists `specversion` first, then the other attributes in header order,
//! then `datacontenttype` (from `Content-Type`), then `data` or `data_base64`. Header values
//! are strings, so extension attributes stay strings: a header cannot say `5` is a number.
//!
//! The body becomes, by the content type's media type (parameters ignored):
//! - `*/json` or `*/*+json` (JSON format §3.1.1): embedded as `data` exactly as sent; it must
//!   be JSON.
//! - `text/*` with a UTF-8 (or absent, or US-ASCII) charset and a UTF-8 body: `data` as a JSON
//!   string.
//! - anything else, or no `Content-Type` at all: `data_base64`, so no byte is lost.
//!
//! An empty body means no data.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::IgnoredAny;

use super::percent_decode;
use crate::event::validate::quote;

/// How a body is carried in the stored JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataForm {
    /// JSON content: the body is embedded as the `data` value.
    Json,
    /// UTF-8 text: the body is the `data` string.
    Text,
    /// Anything else: the body is base64 in `data_base64`.
    Binary,
}

/// Builds the stored JSON text from binary mode; the error says which header or why the body
/// does not fit its content type. The result still has to pass validation.
pub(crate) fn to_json(
    attributes: &[(&str, &str)],
    content_type: Option<&str>,
    body: &[u8],
) -> Result<String, String> {
    let decoded = attributes
        .iter()
        .map(|&(name, value)| decode_header(name, value))
        .collect::<Result<Vec<_>, _>>()?;
    let mut object = ObjectWriter::new();
    // specversion first, as in every example of the spec; all copies, so duplicates still show.
    let (versions, others): (Vec<_>, Vec<_>) =
        decoded.iter().partition(|(name, _)| name == "specversion");
    for (name, value) in versions.into_iter().chain(others) {
        object.string(name, value);
    }
    let content_type = content_type
        .map(str::trim)
        .filter(|value| !value.is_empty());
    if let Some(content_type) = content_type {
        object.string("datacontenttype", content_type);
    }
    if !body.is_empty() {
        write_data(&mut object, content_type, body)?;
    }
    Ok(object.finish())
}

/// One `ce-` header as an attribute: the name lower-cased, the value unquoted and
/// percent-decoded (HTTP binding §3.1.3.2).
fn decode_header(name: &str, value: &str) -> Result<(String, String), String> {
    let name = name.to_ascii_lowercase();
    if name == "data" || name == "data_base64" {
        return Err(format!(
            "header \"ce-{name}\" is not allowed: {} is the body, not an attribute",
            quote(&name)
        ));
    }
    let unquoted = unquote(value.trim()).ok_or_else(|| {
        format!(
            "attribute {} has a malformed quoted-string value",
            quote(&name)
        )
    })?;
    let decoded = percent_decode(&unquoted).map_err(|flaw| {
        format!(
            "attribute {} has an invalid percent-encoded value: {flaw}",
            quote(&name)
        )
    })?;
    Ok((name, decoded))
}

/// Undoes an RFC 9110 quoted-string (`"a \"b\""` → `a "b"`); other values are returned as is.
/// `None` when the value starts a quoted-string but does not close it properly.
fn unquote(value: &str) -> Option<String> {
    let Some(rest) = value.strip_prefix('"') else {
        return Some(value.to_owned());
    };
    let mut unquoted = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => unquoted.push(chars.next()?),
            '"' => return chars.as_str().is_empty().then_some(unquoted),
            _ => unquoted.push(c),
        }
    }
    None
}

/// Adds the body as `data` or `data_base64`, by the content type.
fn write_data(
    object: &mut ObjectWriter,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(), String> {
    let form = content_type.map_or(DataForm::Binary, data_form);
    let text = std::str::from_utf8(body);
    match (form, text) {
        (DataForm::Json, Ok(text)) => {
            if let Err(error) = serde_json::from_str::<IgnoredAny>(text) {
                return Err(not_json(content_type, &error.to_string()));
            }
            object.raw(
                "data",
                text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r')),
            );
        }
        (DataForm::Json, Err(error)) => return Err(not_json(content_type, &error.to_string())),
        (DataForm::Text, Ok(text)) => object.string("data", text),
        (DataForm::Text | DataForm::Binary, _) => {
            object.string("data_base64", &BASE64.encode(body));
        }
    }
    Ok(())
}

fn not_json(content_type: Option<&str>, error: &str) -> String {
    let content_type = quote(content_type.unwrap_or_default());
    format!("the body must be JSON for content type {content_type}, but it is not: {error}")
}

/// Which form a body of this content type takes (JSON format §3.1.1 for what is JSON).
fn data_form(content_type: &str) -> DataForm {
    if super::is_json(content_type) {
        return DataForm::Json;
    }
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let Some((kind, _)) = essence.split_once('/') else {
        return DataForm::Binary;
    };
    let charset_is_utf8 = parts
        .filter_map(|parameter| parameter.split_once('='))
        .filter(|(attribute, _)| attribute.trim().eq_ignore_ascii_case("charset"))
        .all(|(_, charset)| {
            let charset = charset.trim().trim_matches('"');
            charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("us-ascii")
        });
    if kind == "text" && charset_is_utf8 {
        DataForm::Text
    } else {
        DataForm::Binary
    }
}

/// Writes one JSON object member by member, in the order given.
struct ObjectWriter {
    json: String,
}

impl ObjectWriter {
    fn new() -> Self {
        Self {
            json: String::from("{"),
        }
    }

    /// Adds a member whose value is JSON text the caller has already checked.
    fn raw(&mut self, name: &str, json_value: &str) {
        if self.json.len() > 1 {
            self.json.push(',');
        }
        self.json
            .push_str(&serde_json::Value::from(name).to_string());
        self.json.push(':');
        self.json.push_str(json_value);
    }

    fn string(&mut self, name: &str, value: &str) {
        self.raw(name, &serde_json::Value::from(value).to_string());
    }

    fn finish(mut self) -> String {
        self.json.push('}');
        self.json
    }
}
