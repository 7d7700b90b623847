//! The CloudEvents 1.0.2 rules for one event in the JSON event format.
//!
//! An event is first read into its [`Member`]s (names in document order, duplicates kept so
//! they can be refused), then checked member by member. The `data` member is any JSON and is
//! never materialised: it is only scanned for syntax.
//!
//! Decisions where the spec leaves room or is silent:
//! - A `null` attribute is unset (JSON format §2.2 makes this a MUST). A required attribute
//!   that is `null` is therefore missing. `data: null` is different: it is an explicit `null`
//!   payload (JSON format §3.1.1), so it counts as present data.
//! - Duplicate member names are refused. keel stores the bytes as sent, and readers disagree
//!   on which duplicate wins (serde_json keeps the last, others the first), so a duplicate
//!   `id` or `source` would make an event's identity depend on who reads it.
//! - Extension values are the CloudEvents types as JSON: string, boolean or a 32-bit integer.
//!   The type system has no fractional numbers, so `1.5` is refused.
//! - URIs are checked for what can never be in one (whitespace, controls, `"<>\^`{|}`, a bad
//!   percent-escape) rather than against the full RFC 3986 grammar; non-ASCII is let through so
//!   that IRIs are accepted.

use std::collections::HashSet;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The only `specversion` keel accepts.
const SPECVERSION: &str = "1.0";

/// Longest excerpt of a value quoted in an error message, in characters.
const QUOTED_CHARS_MAX: usize = 64;

/// Characters that RFC 3986 never allows in a URI, besides whitespace and controls.
const URI_FORBIDDEN: &str = "\"<>\\^`{|}";

/// One member of an event's JSON object, as far as validation needs it.
#[derive(Debug)]
pub(super) enum Member {
    /// The `data` member: any interoperable JSON value (see `InteroperableJson`), even `null`.
    Data,
    /// Any other member: a context attribute, or `data_base64`.
    Attribute(Value),
}

/// An event object's members in document order, duplicates kept.
#[derive(Debug)]
pub(super) struct Members(pub(super) Vec<(String, Member)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MembersVisitor)
    }
}

struct MembersVisitor;

/// Any JSON value that every consumer can read back (I-JSON, RFC 7493): serde_json refuses
/// lone surrogates in strings and numbers beyond the f64 range while visiting, which a
/// skip (`IgnoredAny`) would let through and store for every reader to choke on. Values
/// nest at most 128 deep (serde_json's recursion limit).
struct InteroperableJson;

impl<'de> serde::Deserialize<'de> for InteroperableJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(InteroperableJson)
    }
}

impl<'de> Visitor<'de> for InteroperableJson {
    type Value = InteroperableJson;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Self, E> {
        if value.is_finite() {
            Ok(self)
        } else {
            Err(E::custom("a number in \"data\" is out of range"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<InteroperableJson>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map
            .next_entry::<InteroperableJson, InteroperableJson>()?
            .is_some()
        {}
        Ok(self)
    }
}

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Members;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
        let mut members = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            let member = if name == "data" {
                map.next_value::<InteroperableJson>()?;
                Member::Data
            } else {
                Member::Attribute(map.next_value()?)
            };
            members.push((name, member));
        }
        Ok(Members(members))
    }
}

/// What the engine needs from a valid event.
#[derive(Debug)]
pub(super) struct Identity {
    pub(super) id: String,
    pub(super) source: String,
    pub(super) key: Option<String>,
}

/// Checks an event's members against every rule; the error says which attribute and why.
pub(super) fn validate(members: &[(String, Member)]) -> Result<Identity, String> {
    reject_duplicate_names(members)?;
    // specversion first: an event of another version fails every other rule confusingly.
    match attribute(members, "specversion") {
        None => return Err(missing("specversion")),
        Some(Value::String(version)) if version == SPECVERSION => {}
        Some(other) => return Err(must("specversion", "\"1.0\"", other)),
    }
    for (name, member) in members {
        if let Member::Attribute(value) = member {
            check_member(name, value)?;
        }
    }
    let id = required_string(members, "id")?;
    let source = required_string(members, "source")?;
    required_string(members, "type")?;
    let has_data = members
        .iter()
        .any(|(_, member)| matches!(member, Member::Data));
    if has_data && attribute(members, "data_base64").is_some() {
        return Err("\"data\" and \"data_base64\" are mutually exclusive; send one".to_owned());
    }
    let key = attribute(members, "partitionkey")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Identity { id, source, key })
}

/// The value of attribute `name`, unless it is absent or `null` (unset).
fn attribute<'m>(members: &'m [(String, Member)], name: &str) -> Option<&'m Value> {
    members
        .iter()
        .find_map(|(member_name, member)| match member {
            Member::Attribute(value) if member_name == name && !value.is_null() => Some(value),
            _ => None,
        })
}

/// A required attribute's string value; its type was checked by [`check_member`].
fn required_string(members: &[(String, Member)], name: &str) -> Result<String, String> {
    match attribute(members, name) {
        Some(Value::String(value)) => Ok(value.clone()),
        Some(other) => Err(must(name, "a non-empty string", other)),
        None => Err(missing(name)),
    }
}

fn reject_duplicate_names(members: &[(String, Member)]) -> Result<(), String> {
    let mut seen = HashSet::with_capacity(members.len());
    match members.iter().find(|(name, _)| !seen.insert(name.as_str())) {
        Some((name, _)) => Err(format!("member {} appears more than once", quote(name))),
        None => Ok(()),
    }
}

/// Checks one member other than `data`: its name, then its value by the attribute's type.
fn check_member(name: &str, value: &Value) -> Result<(), String> {
    if name == "data_base64" {
        return check_data_base64(value);
    }
    check_name(name)?;
    if value.is_null() {
        return Ok(());
    }
    if let Value::String(text) = value {
        check_string_characters(name, text)?;
    }
    match name {
        "specversion" => Ok(()),
        "id" | "type" | "subject" | "partitionkey" => non_empty_string(name, value).map(drop),
        "source" => check_uri_reference(name, value),
        "dataschema" => check_absolute_uri(name, value),
        "time" => check_timestamp(name, value),
        "datacontenttype" => check_media_type(name, value),
        _ => check_extension_value(name, value),
    }
}

/// Attribute names are lower-case ASCII letters and digits (spec §Naming Conventions).
fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "attribute name {} is invalid: names must be lower-case ASCII letters or digits",
            quote(name)
        ))
    }
}

/// The String type disallows controls (U+0000-001F, U+007F-009F) and noncharacters.
fn check_string_characters(name: &str, text: &str) -> Result<(), String> {
    let is_noncharacter =
        |c: char| matches!(c as u32, 0xFDD0..=0xFDEF) || (c as u32) & 0xFFFE == 0xFFFE;
    match text.chars().find(|&c| c.is_control() || is_noncharacter(c)) {
        Some(c) => Err(format!(
            "attribute {} contains the disallowed character U+{:04X}",
            quote(name),
            c as u32
        )),
        None => Ok(()),
    }
}

fn non_empty_string<'v>(name: &str, value: &'v Value) -> Result<&'v str, String> {
    match value.as_str() {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(must(name, "a non-empty string", value)),
    }
}

fn check_uri_reference(name: &str, value: &Value) -> Result<(), String> {
    let text = non_empty_string(name, value)?;
    match uri_flaw(text) {
        Some(flaw) => Err(format!("{} ({flaw})", must(name, "a URI-reference", value))),
        None => Ok(()),
    }
}

fn check_absolute_uri(name: &str, value: &Value) -> Result<(), String> {
    let text = non_empty_string(name, value)?;
    if let Some(flaw) = uri_flaw(text) {
        return Err(format!("{} ({flaw})", must(name, "an absolute URI", value)));
    }
    if !has_scheme(text) {
        let expected = "an absolute URI starting with a scheme like \"https:\"";
        return Err(must(name, expected, value));
    }
    Ok(())
}

/// Why `text` cannot be a URI, for what is cheap to tell without the full grammar.
fn uri_flaw(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    for (position, c) in text.char_indices() {
        if c.is_whitespace() || c.is_control() || URI_FORBIDDEN.contains(c) {
            return Some(format!("it contains {c:?}"));
        }
        let escape = bytes.get(position + 1..position + 3);
        if c == '%' && !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
            return Some("a '%' is not followed by two hex digits".to_owned());
        }
    }
    None
}

/// RFC 3986: `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`, then `:`.
fn has_scheme(text: &str) -> bool {
    let Some((scheme, _)) = text.split_once(':') else {
        return false;
    };
    let mut bytes = scheme.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || b"+-.".contains(&byte))
}

fn check_timestamp(name: &str, value: &Value) -> Result<(), String> {
    let expected = "an RFC 3339 timestamp";
    let Some(text) = value.as_str() else {
        return Err(must(name, expected, value));
    };
    match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(_) => Ok(()),
        Err(error) => Err(format!("{} ({error})", must(name, expected, value))),
    }
}

/// RFC 2046 `type/subtype` with optional `; parameters`, each part an RFC 9110 token.
fn check_media_type(name: &str, value: &Value) -> Result<(), String> {
    let is_token = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
    };
    let essence = value
        .as_str()
        .map(|text| text.split_once(';').map_or(text, |(essence, _)| essence));
    let valid = essence
        .and_then(|essence| essence.trim().split_once('/'))
        .is_some_and(|(kind, subtype)| is_token(kind) && is_token(subtype));
    if valid {
        Ok(())
    } else {
        Err(must(name, "a media type like \"application/json\"", value))
    }
}

fn check_extension_value(name: &str, value: &Value) -> Result<(), String> {
    let valid = match value {
        Value::String(_) | Value::Bool(_) => true,
        Value::Number(number) => number.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        Value::Null | Value::Array(_) | Value::Object(_) => false,
    };
    if valid {
        Ok(())
    } else {
        Err(must(name, "a string, a boolean or a 32-bit integer", value))
    }
}

fn check_data_base64(value: &Value) -> Result<(), String> {
    match value {
        Value::Null => Ok(()),
        Value::String(text) => match BASE64.decode(text) {
            Ok(_) => Ok(()),
            Err(error) => Err(format!(
                "\"data_base64\" must be base64 (standard alphabet, padded), got {} ({error})",
                describe(value)
            )),
        },
        _ => Err(format!(
            "\"data_base64\" must be a base64 string, got {}",
            describe(value)
        )),
    }
}

fn missing(name: &str) -> String {
    format!("required attribute {} is missing", quote(name))
}

fn must(name: &str, expected: &str, value: &Value) -> String {
    format!(
        "attribute {} must be {expected}, got {}",
        quote(name),
        describe(value)
    )
}

/// A short, readable rendering of a value for an error message.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => quote(text),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// `text` in double quotes with escapes, cut to [`QUOTED_CHARS_MAX`] characters.
pub(super) fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS_MAX) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}
