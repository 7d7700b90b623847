//! Evaluating an expression against one event.
//!
//! Every operation either yields a value or a [`Fault`] (a missing field, a type mismatch, an
//! index out of range); a fault makes the whole filter not match. Recursion follows the tree,
//! whose height the parser bounds, and JSON values, whose depth `serde_json` bounds when it
//! parses the stored event (128 levels).

use std::borrow::Cow;
use std::cell::OnceCell;
use std::cmp::Ordering;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};

use super::expr::{Comparison, Expr, Literal, StringMethod};

/// Evaluation failed; CEL would report an error, and the filter does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fault;

/// A value during evaluation; it borrows from the event and the tree where it can.
#[derive(Debug, Clone)]
enum Val<'s> {
    Null,
    Bool(bool),
    Number(f64),
    String(Cow<'s, str>),
    /// A JSON array in the event.
    JsonList(&'s [Value]),
    /// A list written in the expression.
    List(Vec<Val<'s>>),
    /// A JSON object in the event.
    Map(&'s Map<String, Value>),
}

impl<'s> Val<'s> {
    fn from_json(value: &'s Value) -> Val<'s> {
        match value {
            Value::Null => Val::Null,
            Value::Bool(value) => Val::Bool(*value),
            // `as_f64` only fails for numbers kept as text (serde_json's arbitrary_precision);
            // NaN then equals nothing and orders against nothing.
            Value::Number(number) => Val::Number(number.as_f64().unwrap_or(f64::NAN)),
            Value::String(text) => Val::String(Cow::Borrowed(text)),
            Value::Array(items) => Val::JsonList(items),
            Value::Object(map) => Val::Map(map),
        }
    }

    fn from_literal(literal: &'s Literal) -> Val<'s> {
        match literal {
            Literal::Null => Val::Null,
            Literal::Bool(value) => Val::Bool(*value),
            Literal::Number(number) => Val::Number(*number),
            Literal::String(text) => Val::String(Cow::Borrowed(text)),
        }
    }
}

/// Whether the expression evaluates to `true` for the event (a fault or non-bool is `false`).
pub(super) fn is_true(root: &Expr, event: &Value) -> bool {
    let scope = Scope {
        event,
        decoded: OnceCell::new(),
    };
    matches!(eval(root, &scope), Ok(Val::Bool(true)))
}

/// The event being evaluated, and its payload once decoded from `data_base64`.
struct Scope<'e> {
    event: &'e Value,
    decoded: OnceCell<Option<Value>>,
}

impl<'e> Scope<'e> {
    /// A set attribute: present and not `null` (the JSON format's way to say unset).
    fn attribute(&self, name: &str) -> Option<&'e Value> {
        self.event.get(name).filter(|value| !value.is_null())
    }

    fn has_data(&self) -> bool {
        self.event.get("data").is_some() || self.attribute("data_base64").is_some()
    }

    /// The payload: `data` as stored, else `data_base64` decoded (once per evaluation).
    fn data(&self) -> Option<&Value> {
        if let Some(data) = self.event.get("data") {
            return Some(data);
        }
        self.decoded.get_or_init(|| decode(self.event)).as_ref()
    }
}

/// `data_base64` as JSON when the content type is JSON, else as text when it is UTF-8.
fn decode(event: &Value) -> Option<Value> {
    let encoded = event.get("data_base64")?.as_str()?;
    let bytes = BASE64.decode(encoded).ok()?;
    let content_type = event.get("datacontenttype").and_then(Value::as_str);
    if content_type.is_some_and(is_json_media_type)
        && let Ok(value) = serde_json::from_slice(&bytes)
    {
        return Some(value);
    }
    String::from_utf8(bytes).ok().map(Value::String)
}

/// `*/json` or `*/*+json`, parameters ignored (CloudEvents JSON format §3.1.1).
fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    essence
        .split_once('/')
        .is_some_and(|(_, subtype)| subtype == "json" || subtype.ends_with("+json"))
}

fn eval<'s>(expr: &'s Expr, scope: &'s Scope<'s>) -> Result<Val<'s>, Fault> {
    match expr {
        Expr::Literal(literal) => Ok(Val::from_literal(literal)),
        Expr::List(items) => {
            let values: Result<Vec<_>, _> = items.iter().map(|item| eval(item, scope)).collect();
            values.map(Val::List)
        }
        Expr::Ident(name) => identifier(name, scope),
        Expr::Member(target, field) => member(eval(target, scope)?, field),
        Expr::Index(target, index) => element(eval(target, scope)?, &eval(index, scope)?),
        Expr::Has(target, field) => match eval(target, scope)? {
            Val::Map(map) => Ok(Val::Bool(map.contains_key(field))),
            _ => Err(Fault),
        },
        Expr::HasAttribute(name) if name == "data" => Ok(Val::Bool(scope.has_data())),
        Expr::HasAttribute(name) => Ok(Val::Bool(scope.attribute(name).is_some())),
        Expr::Size(target) => size(&eval(target, scope)?),
        Expr::Method(receiver, method, argument) => {
            string_method(*method, &eval(receiver, scope)?, &eval(argument, scope)?)
        }
        Expr::Not(operand) => match eval(operand, scope)? {
            Val::Bool(value) => Ok(Val::Bool(!value)),
            _ => Err(Fault),
        },
        Expr::Negate(operand) => match eval(operand, scope)? {
            Val::Number(number) => Ok(Val::Number(-number)),
            _ => Err(Fault),
        },
        Expr::Compare(left, comparison, right) => {
            compare(*comparison, &eval(left, scope)?, &eval(right, scope)?).map(Val::Bool)
        }
        Expr::In(item, collection) => {
            contains(&eval(collection, scope)?, &eval(item, scope)?).map(Val::Bool)
        }
        Expr::And(items) => logical(items, scope, false),
        Expr::Or(items) => logical(items, scope, true),
    }
}

/// `&&` (absorbing `false`) or `||` (absorbing `true`), with CEL's error rules: evaluation
/// stops at the first absorbing value, which wins even over faults in the other operands;
/// otherwise any fault (or non-bool) makes the whole a fault.
fn logical<'s>(items: &'s [Expr], scope: &'s Scope<'s>, absorbing: bool) -> Result<Val<'s>, Fault> {
    let mut faulted = false;
    for item in items {
        match eval(item, scope) {
            Ok(Val::Bool(value)) if value == absorbing => return Ok(Val::Bool(absorbing)),
            Ok(Val::Bool(_)) => {}
            _ => faulted = true,
        }
    }
    if faulted {
        Err(Fault)
    } else {
        Ok(Val::Bool(!absorbing))
    }
}

fn identifier<'s>(name: &str, scope: &'s Scope<'s>) -> Result<Val<'s>, Fault> {
    let value = if name == "data" {
        scope.data()
    } else {
        scope.attribute(name)
    };
    value.map(Val::from_json).ok_or(Fault)
}

fn member<'s>(target: Val<'s>, field: &str) -> Result<Val<'s>, Fault> {
    match target {
        Val::Map(map) => map.get(field).map(Val::from_json).ok_or(Fault),
        _ => Err(Fault),
    }
}

/// `target[index]`: a list by a whole-number position, or a map by a string key.
fn element<'s>(target: Val<'s>, index: &Val<'s>) -> Result<Val<'s>, Fault> {
    match (target, index) {
        (Val::JsonList(items), Val::Number(number)) => {
            let position = list_position(*number, items.len()).ok_or(Fault)?;
            Ok(Val::from_json(&items[position]))
        }
        (Val::List(items), Val::Number(number)) => {
            let position = list_position(*number, items.len()).ok_or(Fault)?;
            items.into_iter().nth(position).ok_or(Fault)
        }
        (Val::Map(map), Val::String(key)) => map.get(key.as_ref()).map(Val::from_json).ok_or(Fault),
        _ => Err(Fault),
    }
}

fn list_position(number: f64, length: usize) -> Option<usize> {
    let whole = number.fract() == 0.0 && number >= 0.0;
    // The cast saturates; `whole` rules out fractions, NaN and negatives first.
    (whole && number < length as f64).then_some(number as usize)
}

fn size(value: &Val<'_>) -> Result<Val<'static>, Fault> {
    let count = match value {
        Val::String(text) => text.chars().count(),
        Val::JsonList(items) => items.len(),
        Val::List(items) => items.len(),
        Val::Map(map) => map.len(),
        _ => return Err(Fault),
    };
    Ok(Val::Number(count as f64))
}

fn string_method(
    method: StringMethod,
    receiver: &Val<'_>,
    argument: &Val<'_>,
) -> Result<Val<'static>, Fault> {
    let (Val::String(receiver), Val::String(argument)) = (receiver, argument) else {
        return Err(Fault);
    };
    let (receiver, argument) = (receiver.as_ref(), argument.as_ref());
    let result = match method {
        StringMethod::StartsWith => receiver.starts_with(argument),
        StringMethod::EndsWith => receiver.ends_with(argument),
        StringMethod::Contains => receiver.contains(argument),
    };
    Ok(Val::Bool(result))
}

fn compare(comparison: Comparison, left: &Val<'_>, right: &Val<'_>) -> Result<bool, Fault> {
    let ordering = match comparison {
        Comparison::Equal => return Ok(equals(left, right)),
        Comparison::NotEqual => return Ok(!equals(left, right)),
        _ => order(left, right)?,
    };
    Ok(match comparison {
        Comparison::Less => ordering == Ordering::Less,
        Comparison::LessEqual => ordering != Ordering::Greater,
        Comparison::Greater => ordering == Ordering::Greater,
        _ => ordering != Ordering::Less,
    })
}

/// Ordering is defined within numbers, strings (by code point) and bools only.
fn order(left: &Val<'_>, right: &Val<'_>) -> Result<Ordering, Fault> {
    match (left, right) {
        (Val::Number(left), Val::Number(right)) => left.partial_cmp(right).ok_or(Fault),
        (Val::String(left), Val::String(right)) => Ok(left.cmp(right)),
        (Val::Bool(left), Val::Bool(right)) => Ok(left.cmp(right)),
        _ => Err(Fault),
    }
}

/// CEL's heterogeneous equality: values of different types are unequal, numbers compare by
/// value (`1 == 1.0`), lists item by item, maps key by key.
fn equals(left: &Val<'_>, right: &Val<'_>) -> bool {
    match (left, right) {
        (Val::Null, Val::Null) => true,
        (Val::Bool(left), Val::Bool(right)) => left == right,
        (Val::Number(left), Val::Number(right)) => left == right,
        (Val::String(left), Val::String(right)) => left == right,
        (Val::Map(left), Val::Map(right)) => {
            left.len() == right.len()
                && left.iter().all(|(key, value)| {
                    let other = right.get(key);
                    other
                        .is_some_and(|other| equals(&Val::from_json(value), &Val::from_json(other)))
                })
        }
        _ => match (Items::of(left), Items::of(right)) {
            (Some(left), Some(right)) => {
                left.len() == right.len()
                    && (0..left.len())
                        .all(|position| equals(&left.get(position), &right.get(position)))
            }
            _ => false,
        },
    }
}

/// `item in collection`: membership in a list, or a key of a map.
fn contains(collection: &Val<'_>, item: &Val<'_>) -> Result<bool, Fault> {
    if let Some(items) = Items::of(collection) {
        return Ok((0..items.len()).any(|position| equals(&items.get(position), item)));
    }
    match (collection, item) {
        (Val::Map(map), Val::String(key)) => Ok(map.contains_key(key.as_ref())),
        // JSON object keys are strings, so no other value is a key.
        (Val::Map(_), _) => Ok(false),
        _ => Err(Fault),
    }
}

/// The items of either kind of list, read one at a time.
enum Items<'v, 's> {
    Json(&'s [Value]),
    Vals(&'v [Val<'s>]),
}

impl<'v, 's> Items<'v, 's> {
    fn of(value: &'v Val<'s>) -> Option<Items<'v, 's>> {
        match value {
            Val::JsonList(items) => Some(Items::Json(items)),
            Val::List(items) => Some(Items::Vals(items)),
            _ => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            Items::Json(items) => items.len(),
            Items::Vals(items) => items.len(),
        }
    }

    /// The item at a position below [`Items::len`].
    fn get(&self, position: usize) -> Cow<'v, Val<'s>> {
        match self {
            Items::Json(items) => Cow::Owned(Val::from_json(&items[position])),
            Items::Vals(items) => Cow::Borrowed(&items[position]),
        }
    }
}
