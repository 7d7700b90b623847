//! Reading filter objects from JSON, each error naming its path in that JSON.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{DIALECTS, Expression, FILTER_DEPTH_MAX, Filter, FilterError, is_attribute_name};

/// Parses the filter object at `path`, nested `depth` filter objects deep (the outermost is 1).
pub(super) fn parse(value: &Value, path: &str, depth: usize) -> Result<Filter, FilterError> {
    if depth > FILTER_DEPTH_MAX {
        return Err(error(
            path,
            format!("filters nest deeper than {FILTER_DEPTH_MAX} levels"),
        ));
    }
    let Value::Object(object) = value else {
        let found = kind(value);
        let example = r#"{"exact": {"type": "order.created"}}"#;
        return Err(error(
            path,
            format!("must be a filter object such as {example}, found {found}"),
        ));
    };
    let mut entries = object.iter();
    let (Some((dialect, body)), None) = (entries.next(), entries.next()) else {
        return Err(error(path, key_count(object)));
    };
    let body_path = format!("{path}.{dialect}");
    match dialect.as_str() {
        "exact" => attributes(body, &body_path).map(Filter::Exact),
        "prefix" => attributes(body, &body_path).map(Filter::Prefix),
        "suffix" => attributes(body, &body_path).map(Filter::Suffix),
        "all" => list(body, &body_path, depth).map(Filter::All),
        "any" => list(body, &body_path, depth).map(Filter::Any),
        "not" => parse(body, &body_path, depth + 1).map(|filter| Filter::Not(Box::new(filter))),
        "cel" => expression(body, &body_path).map(Filter::Cel),
        _ => {
            let known = DIALECTS.join(", ");
            Err(error(
                path,
                format!("unknown filter dialect {dialect:?}; known dialects: {known}"),
            ))
        }
    }
}

/// Parses a JSON array of filter objects, the list at `path` (`filters`).
pub(super) fn parse_list(value: &Value, path: &str) -> Result<Vec<Filter>, FilterError> {
    let Value::Array(items) = value else {
        let found = kind(value);
        return Err(error(
            path,
            format!("must be an array of filter objects, found {found}"),
        ));
    };
    let parsed = items.iter().enumerate();
    parsed
        .map(|(index, item)| parse(item, &format!("{path}[{index}]"), 1))
        .collect()
}

/// The body of `exact`, `prefix` or `suffix`: attribute names to strings.
fn attributes(body: &Value, path: &str) -> Result<BTreeMap<String, String>, FilterError> {
    let Value::Object(object) = body else {
        let found = kind(body);
        let detail = format!("must be an object of attribute names to strings, found {found}");
        return Err(error(path, detail));
    };
    if object.is_empty() {
        return Err(error(path, "must name at least one attribute".to_owned()));
    }
    let mut rules = BTreeMap::new();
    for (name, value) in object {
        if name == "data" {
            let detail = "\"data\" is the payload, not an attribute; test it with a cel filter";
            return Err(error(path, detail.to_owned()));
        }
        if !is_attribute_name(name) {
            let detail = format!("{name:?} is not an attribute name (1 to 128 a-z or 0-9)");
            return Err(error(path, detail));
        }
        let Value::String(text) = value else {
            let found = kind(value);
            return Err(error(
                &format!("{path}.{name}"),
                format!("must be a string, found {found}"),
            ));
        };
        rules.insert(name.clone(), text.clone());
    }
    Ok(rules)
}

/// The body of `all` or `any`: a non-empty array of filter objects one level deeper.
fn list(body: &Value, path: &str, depth: usize) -> Result<Vec<Filter>, FilterError> {
    let Value::Array(items) = body else {
        let found = kind(body);
        return Err(error(
            path,
            format!("must be an array of filter objects, found {found}"),
        ));
    };
    if items.is_empty() {
        return Err(error(path, "must hold at least one filter".to_owned()));
    }
    let parsed = items.iter().enumerate();
    parsed
        .map(|(index, item)| parse(item, &format!("{path}[{index}]"), depth + 1))
        .collect()
}

/// The body of `cel`: the expression text.
fn expression(body: &Value, path: &str) -> Result<Expression, FilterError> {
    let Value::String(text) = body else {
        let found = kind(body);
        return Err(error(
            path,
            format!("must be a string holding an expression, found {found}"),
        ));
    };
    Expression::compile(text).map_err(|detail| error(path, detail))
}

/// Says how many keys a filter object has instead of exactly one, naming a few.
fn key_count(object: &Map<String, Value>) -> String {
    const NAMED_MAX: usize = 4;
    let known = DIALECTS.join(", ");
    let expected = format!("must have exactly one key, the dialect (one of {known})");
    if object.is_empty() {
        return format!("{expected}, found none");
    }
    let mut names: Vec<String> = object
        .keys()
        .take(NAMED_MAX)
        .map(|name| format!("{name:?}"))
        .collect();
    if object.len() > NAMED_MAX {
        names.push("...".to_owned());
    }
    format!("{expected}, found {}: {}", object.len(), names.join(", "))
}

/// How an error message names the JSON type found.
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn error(path: &str, detail: String) -> FilterError {
    FilterError {
        path: path.to_owned(),
        detail,
    }
}
