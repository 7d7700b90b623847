//! Subscription filters: the filter dialects of the CloudEvents Subscriptions API 0.1
//! (§3.2.4), plus `cel`, a small subset of CEL (Common Expression Language) for rules on
//! attributes and JSON data.
//!
//! A subscription holds a list of filters, and an event is delivered when all of them match
//! (an empty list matches everything). Filters run on the CloudEvents JSON object keel stores:
//! attributes at the top level, the payload in `data` or `data_base64`. Each filter is a JSON
//! object with exactly one key, its dialect:
//!
//! | dialect  | value                         | matches when                                   |
//! |----------|-------------------------------|------------------------------------------------|
//! | `exact`  | `{"attribute": "text", ...}`  | every named attribute is set and equals `text` |
//! | `prefix` | `{"attribute": "text", ...}`  | every named attribute is set and starts with it |
//! | `suffix` | `{"attribute": "text", ...}`  | every named attribute is set and ends with it  |
//! | `all`    | `[filter, ...]` (non-empty)   | every filter in it matches                     |
//! | `any`    | `[filter, ...]` (non-empty)   | at least one filter in it matches              |
//! | `not`    | `filter`                      | the filter does not match                      |
//! | `cel`    | `"expression"`                | the expression evaluates to `true`             |
//!
//! Attribute names are CloudEvents attribute names (1 to 128 of `a-z`, `0-9`); `data` is the
//! payload, not an attribute, so only `cel` can test it. String comparisons are
//! case-sensitive. Extension values that are JSON booleans or integers compare by their
//! canonical text (`true`, `42`). Filter objects nest at most [`FILTER_DEPTH_MAX`] deep.
//!
//! # The `cel` dialect
//!
//! A subset of [CEL](https://github.com/google/cel-spec), parsed and evaluated by keel itself.
//! Expressions are at most [`EXPRESSION_BYTES_MAX`] bytes and nest at most
//! [`EXPRESSION_DEPTH_MAX`] levels (brackets, calls, operators; `&&` and `||` chains count as
//! one level). The grammar, loosest binding first:
//!
//! ```text
//! expr     = and { "||" and }
//! and      = relation { "&&" relation }
//! relation = unary { ("==" | "!=" | "<" | "<=" | ">" | ">=" | "in") unary }
//! unary    = ("!" | "-") unary | member
//! member   = primary { "." field | "." method "(" [ expr ] ")" | "[" expr "]" }
//! primary  = number | string | "true" | "false" | "null" | "[" [ expr { "," expr } [","] "]"
//!          | "(" expr ")" | attribute | "data" | "has" "(" member ")" | "size" "(" expr ")"
//! method   = "startsWith" | "endsWith" | "contains" | "size"
//! ```
//!
//! - **Values.** Numbers are doubles: integers and floats compare by value (`1 == 1.0`), and
//!   integers are exact up to 2^53. Strings use `'…'` or `"…"` with CEL's escapes (`\n`, `\t`,
//!   `\\`, `\'`, `\"`, `\xHH`, `\uHHHH`, `\UHHHHHHHH`, octal `\ooo`, …). Also `true`, `false`,
//!   `null` and lists `[a, b]`.
//! - **Names.** A bare name is a top-level attribute (`type`, `source`, `subject`,
//!   `partitionkey`, any extension) and must be a valid attribute name; `data` is the payload.
//!   `data.amount`, `data.items[0].sku` and `data["weird key"]` reach into JSON. A
//!   `data_base64` payload reads as JSON when `datacontenttype` is JSON, else as a UTF-8
//!   string.
//! - **Operators.** `==` and `!=` work across types (different types are unequal); `<`, `<=`,
//!   `>`, `>=` compare numbers, strings (by code point) or bools; `x in list` tests
//!   membership, `key in map` a key; `!`, unary `-`, `&&`, `||` and parentheses.
//! - **Functions.** `has(data.x)` is whether the object `data` has the field `x` (CEL's macro);
//!   keel also accepts `has(attribute)`, whether the event sets it. `size(x)` or `x.size()`
//!   counts a string's characters, a list's items or an object's fields. `s.startsWith(t)`,
//!   `s.endsWith(t)` and `s.contains(t)` test strings.
//! - **Errors.** A missing attribute or field, a type mismatch (`"a" < 1`), an index out of
//!   range or a result that is not a bool makes the filter not match, as a CEL error would.
//!   `false && error` is `false` and `true || error` is `true`, in either order.
//! - **Not supported:** arithmetic, `?:`, maps and other macros (`all`, `exists`, `map`,
//!   `filter`), `matches`, timestamps, bytes, unsigned and hex literals, raw and triple-quoted
//!   strings, comments.
//!
//! Parse errors name the path in the filter JSON and the column (in characters, from 1).
//!
//! ```
//! use keel_engine::filter;
//! use serde_json::json;
//!
//! let filters = filter::parse_all(&json!([
//!     {"prefix": {"type": "order."}},
//!     {"cel": "data.amount >= 100 && data.currency in ['EUR', 'USD']"},
//! ]))?;
//! let event = json!({"specversion": "1.0", "id": "1", "source": "/shop",
//!                    "type": "order.created", "data": {"amount": 250, "currency": "EUR"}});
//! assert!(filter::matches_all(&filters, &event));
//! assert_eq!(filter::parse_all(&filters_json(&filters))?, filters);
//!
//! let error = filter::parse_all(&json!([{"cel": "data.amount >= )"}])).unwrap_err();
//! let message = "filters[0].cel: unexpected token ')' at column 16, expected a value";
//! assert_eq!(error.to_string(), message);
//!
//! fn filters_json(filters: &[filter::Filter]) -> serde_json::Value {
//!     filters.iter().map(filter::Filter::to_json).collect()
//! }
//! # Ok::<(), filter::FilterError>(())
//! ```

mod dialect;
mod eval;
mod expr;
mod lexer;
mod parser;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

pub use expr::Expression;

/// Longest `cel` expression, in bytes of its text.
pub const EXPRESSION_BYTES_MAX: usize = 4096;
/// Deepest nesting in a `cel` expression: the height of its syntax tree, and how deeply
/// brackets, calls and unary operators sit inside each other.
pub const EXPRESSION_DEPTH_MAX: usize = 32;
/// Deepest nesting of filter objects (through `all`, `any` and `not`); the outermost is 1.
pub const FILTER_DEPTH_MAX: usize = 32;
/// Longest attribute name a filter names. CloudEvents 1.0 §3.1.1 says names SHOULD NOT be
/// longer than 20 characters, but keel accepts longer extension names on publish, so filters
/// can name them too.
pub const ATTRIBUTE_NAME_BYTES_MAX: usize = 128;

// A tree of that height needs at least that many characters, so both limits can bind.
const _: () = assert!(EXPRESSION_DEPTH_MAX < EXPRESSION_BYTES_MAX);

/// The dialect names, in the order error messages list them.
const DIALECTS: [&str; 7] = ["exact", "prefix", "suffix", "all", "any", "not", "cel"];

/// Why filter JSON was refused: where in it (`filters[1].all[0].exact`) and what is wrong.
///
/// [`parse_all`] paths start at `filters`, [`Filter::parse`] paths at `filter`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct FilterError {
    /// Where the problem is, as a path into the filter JSON.
    pub path: String,
    /// What is wrong there (for expressions, with the column).
    pub detail: String,
}

/// A compiled filter. Serialises back to the JSON it was parsed from (same shape).
///
/// Attribute rules are kept sorted by name, which does not change what they match.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Filter {
    /// `exact`: each named attribute is set and equals the string.
    Exact(BTreeMap<String, String>),
    /// `prefix`: each named attribute is set and starts with the string.
    Prefix(BTreeMap<String, String>),
    /// `suffix`: each named attribute is set and ends with the string.
    Suffix(BTreeMap<String, String>),
    /// `all`: every filter matches.
    All(Vec<Filter>),
    /// `any`: at least one filter matches.
    Any(Vec<Filter>),
    /// `not`: the filter does not match.
    Not(Box<Filter>),
    /// `cel`: the expression evaluates to `true`.
    Cel(Expression),
}

impl Filter {
    /// Parses one filter object, e.g. `{"exact": {"type": "order.created"}}`. Error paths
    /// start at `filter`.
    pub fn parse(value: &Value) -> Result<Filter, FilterError> {
        dialect::parse(value, "filter", 1)
    }

    /// Whether the event (the CloudEvents JSON object keel stores, attributes at top level,
    /// payload in `data` or `data_base64`) matches.
    pub fn matches(&self, event: &Value) -> bool {
        match self {
            Filter::Exact(rules) => attributes_match(rules, event, |value, text| value == text),
            Filter::Prefix(rules) => {
                attributes_match(rules, event, |value, text| value.starts_with(text))
            }
            Filter::Suffix(rules) => {
                attributes_match(rules, event, |value, text| value.ends_with(text))
            }
            Filter::All(filters) => filters.iter().all(|filter| filter.matches(event)),
            Filter::Any(filters) => filters.iter().any(|filter| filter.matches(event)),
            Filter::Not(filter) => !filter.matches(event),
            Filter::Cel(expression) => expression.matches(event),
        }
    }

    /// The JSON form (what `parse` accepts), for describe output and persistence.
    pub fn to_json(&self) -> Value {
        let (dialect, body) = match self {
            Filter::Exact(rules) => ("exact", rules_json(rules)),
            Filter::Prefix(rules) => ("prefix", rules_json(rules)),
            Filter::Suffix(rules) => ("suffix", rules_json(rules)),
            Filter::All(filters) => ("all", filters.iter().map(Filter::to_json).collect()),
            Filter::Any(filters) => ("any", filters.iter().map(Filter::to_json).collect()),
            Filter::Not(filter) => ("not", filter.to_json()),
            Filter::Cel(expression) => ("cel", Value::from(expression.source())),
        };
        let mut object = Map::new();
        object.insert(dialect.to_owned(), body);
        Value::Object(object)
    }

    /// Whether the filter reads the payload (`data`); only `cel` filters can.
    pub fn reads_data(&self) -> bool {
        match self {
            Filter::Exact(_) | Filter::Prefix(_) | Filter::Suffix(_) => false,
            Filter::All(filters) | Filter::Any(filters) => reads_data(filters),
            Filter::Not(filter) => filter.reads_data(),
            Filter::Cel(expression) => expression.reads_data(),
        }
    }
}

/// A subscription's filters, compiled: all must match, and none matches everything. Derefs to
/// the list. Serde reads and writes the JSON array of filter objects through
/// [`deserialize_all`], so an error names the index (`filters[1].exact`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters(pub Vec<Filter>);

impl std::ops::Deref for Filters {
    type Target = [Filter];

    fn deref(&self) -> &[Filter] {
        &self.0
    }
}

impl Serialize for Filters {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Filters {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Filters, D::Error> {
        deserialize_all(deserializer).map(Filters)
    }
}

/// Parses a JSON array of filters (all must match: an empty list matches everything). Error
/// paths start at `filters`.
pub fn parse_all(value: &Value) -> Result<Vec<Filter>, FilterError> {
    dialect::parse_list(value, "filters")
}

/// Whether all filters match (true for none).
pub fn matches_all(filters: &[Filter], event: &Value) -> bool {
    filters.iter().all(|filter| filter.matches(event))
}

/// Whether any filter reads `data`, so callers with no such filter may skip parsing it.
pub fn reads_data(filters: &[Filter]) -> bool {
    filters.iter().any(Filter::reads_data)
}

/// Deserialises a list of filters through [`parse_all`], so error paths name the index
/// (`filters[1].exact`); what [`Filters`] deserialises with, and for
/// `#[serde(deserialize_with = "keel_engine::filter::deserialize_all")]`.
pub fn deserialize_all<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Filter>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    parse_all(&value).map_err(D::Error::custom)
}

impl Serialize for Filter {
    /// Serialises [`Filter::to_json`].
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Filter {
    /// Deserialises through [`Filter::parse`]; error paths start at `filter`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Filter, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Filter::parse(&value).map_err(D::Error::custom)
    }
}

/// Whether `name` is a CloudEvents attribute name: 1 to 128 lower-case ASCII letters or digits.
fn is_attribute_name(name: &str) -> bool {
    (1..=ATTRIBUTE_NAME_BYTES_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
}

/// Whether every named attribute is set and `test(value, text)` holds for it.
fn attributes_match(
    rules: &BTreeMap<String, String>,
    event: &Value,
    test: impl Fn(&str, &str) -> bool,
) -> bool {
    rules.iter().all(|(name, text)| match event.get(name) {
        Some(Value::String(value)) => test(value, text),
        Some(Value::Bool(value)) => test(if *value { "true" } else { "false" }, text),
        Some(Value::Number(value)) => test(&value.to_string(), text),
        // `null` is unset (JSON format §3.1); objects and arrays are not attribute values.
        _ => false,
    })
}

fn rules_json(rules: &BTreeMap<String, String>) -> Value {
    let object = rules
        .iter()
        .map(|(name, text)| (name.clone(), Value::from(text.as_str())));
    Value::Object(object.collect())
}
