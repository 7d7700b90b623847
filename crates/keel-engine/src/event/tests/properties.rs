//! Property tests: no input panics, and every valid event round-trips in every mode.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use proptest::prelude::*;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;

use super::super::*;

/// A string the CloudEvents String type allows: no controls, no noncharacters.
fn attribute_string(length_max: usize) -> impl Strategy<Value = String> {
    let class = r"[^\p{Cc}\p{Noncharacter_Code_Point}]";
    proptest::string::string_regex(&format!("{class}{{1,{length_max}}}"))
        .unwrap_or_else(|error| panic!("test regex: {error}"))
}

/// A URI-reference: an absolute URI or an absolute path.
const SOURCE_REGEX: &str = "[a-z][a-z0-9+.-]{0,6}:[A-Za-z0-9/._~-]{0,16}|/[A-Za-z0-9/._~-]{0,16}";

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// An RFC 3339 timestamp with a fraction and an offset in whole minutes.
fn timestamp() -> impl Strategy<Value = String> {
    // Years 1 to 9999, a day inside either end so that any offset stays in range.
    let seconds = -62_135_510_400_i64..253_402_214_399;
    (seconds, 0_u32..1_000_000_000, -1_439_i32..1_440).prop_filter_map(
        "representable",
        |(seconds, nanos, offset_minutes)| {
            let offset = time::UtcOffset::from_whole_seconds(offset_minutes * 60).ok()?;
            let utc = time::OffsetDateTime::from_unix_timestamp(seconds).ok()?;
            let local = utc.replace_nanosecond(nanos).ok()?.to_offset(offset);
            local.format(&Rfc3339).ok()
        },
    )
}

/// Names no generated extension takes: the attributes the spec defines, and `data`.
const RESERVED: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "dataschema",
    "datacontenttype",
    "partitionkey",
    "data",
];

/// Extension attributes of every CloudEvents type JSON can carry.
fn extensions() -> impl Strategy<Value = BTreeMap<String, Value>> {
    let value = prop_oneof![
        attribute_string(16).prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
    ];
    prop::collection::btree_map("[a-z0-9]{1,20}", value, 0..4).prop_map(|mut extensions| {
        extensions.retain(|name, _| !RESERVED.contains(&name.as_str()));
        extensions
    })
}

/// No data, JSON `data`, or bytes as `data_base64`.
fn data() -> impl Strategy<Value = Option<(&'static str, Value)>> {
    prop_oneof![
        Just(None),
        json_value().prop_map(|value| Some(("data", value))),
        prop::collection::vec(any::<u8>(), 0..32)
            .prop_map(|bytes| Some(("data_base64", Value::String(BASE64.encode(bytes))))),
    ]
}

/// A valid event as a JSON object, with every optional part sometimes present.
fn valid_event() -> impl Strategy<Value = Map<String, Value>> {
    let required = (attribute_string(24), SOURCE_REGEX, attribute_string(24));
    let optional = [
        ("subject", attribute_string(24).boxed()),
        ("time", timestamp().boxed()),
        ("partitionkey", attribute_string(24).boxed()),
    ]
    .map(|(name, strategy)| proptest::option::of(strategy.prop_map(move |v| (name, v))));
    (required, optional, extensions(), data()).prop_map(
        |((id, source, kind), optional, extensions, data)| {
            let mut event = Map::new();
            event.insert("specversion".into(), "1.0".into());
            event.insert("id".into(), id.into());
            event.insert("source".into(), source.into());
            event.insert("type".into(), kind.into());
            for (name, value) in optional.into_iter().flatten() {
                event.insert(name.into(), value.into());
            }
            event.extend(extensions);
            event.extend(data.map(|(name, value)| (name.to_owned(), value)));
            event
        },
    )
}

/// Percent-encodes a header value as the HTTP binding says (space, `"`, `%`, non-printable),
/// in upper-case hex for some bytes and lower-case for others, as a decoder must take both.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b' ' | b'"' | b'%' => format!("%{byte:02X}"),
            0x21..=0x7E => char::from(byte).to_string(),
            _ => format!("%{byte:02x}"),
        })
        .collect()
}

/// Event-like JSON: objects of attribute names and values from the rules' edge cases, often
/// on top of valid required attributes, sometimes in a batch, with a duplicate or cut short,
/// so that every rule and not only parsing is reached.
fn event_like_text() -> impl Strategy<Value = String> {
    #[rustfmt::skip]
    let name = prop::sample::select(vec![
        "specversion", "id", "source", "type", "data", "data_base64", "time", "dataschema",
        "subject", "datacontenttype", "partitionkey", "ext", "Bad", "a-b", "",
    ]);
    #[rustfmt::skip]
    let value = prop::sample::select(vec![
        r#""1.0""#, r#""x""#, r#""""#, "null", "1", "1.5", "true", "{}", "[1]", r#""QQ==""#,
        r#""2018-04-05T17:31:00Z""#, r#""a b""#, r#""https://x/%41""#, r#""\u0000""#,
        r#""text/plain""#, "4294967296",
    ]);
    let object = (prop::collection::btree_map(name, value, 0..4), any::<u8>()).prop_map(
        |(members, flags)| {
            let mut object = BTreeMap::new();
            if flags & 1 == 0 {
                let required = [("specversion", r#""1.0""#), ("id", r#""1""#)];
                object.extend(
                    required
                        .into_iter()
                        .chain([("source", r#""/s""#), ("type", "\"t\"")]),
                );
            }
            object.extend(members);
            let mut members: Vec<_> = object
                .iter()
                .map(|(name, value)| format!("\"{name}\":{value}"))
                .collect();
            if flags & 6 == 0 && !members.is_empty() {
                members.push(members[0].clone());
            }
            format!("{{{}}}", members.join(","))
        },
    );
    (
        prop::collection::vec(object, 1..3),
        any::<bool>(),
        any::<usize>(),
    )
        .prop_map(|(objects, as_batch, cut)| {
            let text = if as_batch {
                format!("[{}]", objects.join(","))
            } else {
                objects.concat()
            };
            let cut = if cut % 8 == 0 {
                cut % (text.len() + 1)
            } else {
                text.len()
            };
            text.get(..cut).unwrap_or(&text).to_owned()
        })
}

/// A proptest failure from any error.
fn fail(error: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(error.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_input_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        text in event_like_text(),
    ) {
        // Goal: no input makes the parsers panic, and whatever is accepted is an event whose
        // identity reads back. Method: random bytes, and random event-like JSON, through
        // every entry point.
        for body in [bytes.as_slice(), text.as_bytes()] {
            let structured = parse_structured(body).into_iter();
            for event in structured.chain(parse_batch(body).unwrap_or_default()) {
                let identity = (event.source().to_owned(), event.id().to_owned());
                prop_assert_eq!(identity_of(event.json().as_bytes()), Some(identity));
            }
            let lossy = String::from_utf8_lossy(body);
            let headers =
                [("specversion", "1.0"), ("id", &*lossy), ("source", "/s"), ("type", &*lossy)];
            let _ = from_binary(&headers, Some(lossy.as_ref()), body);
            let _ = from_binary(&headers, Some("application/json"), body);
            let _ = identity_of(body);
        }
    }

    #[test]
    fn valid_events_round_trip(event in valid_event(), pretty in any::<bool>()) {
        // Goal: any valid event is accepted in structured, batch and value form, and stored
        // so that it reads back equal, with its identity and key. Method: generated events
        // serialised compactly or pretty-printed; values are compared as serde_json reads the
        // sent text, since its default float parsing may differ from f64 in the last digit.
        let value = Value::Object(event.clone());
        let compact = serde_json::to_string(&value).map_err(fail)?;
        let text = match pretty {
            true => serde_json::to_string_pretty(&value).map_err(fail)?,
            false => compact.clone(),
        };
        let sent: Value = serde_json::from_str(&text).map_err(fail)?;
        let identity = (event["source"].as_str(), event["id"].as_str());
        let identity = (identity.0.map(str::to_owned), identity.1.map(str::to_owned));
        let key = event.get("partitionkey").and_then(Value::as_str);
        let structured = parse_structured(text.as_bytes()).map_err(fail)?;
        let batch = parse_batch(format!("[{text}]").as_bytes()).map_err(fail)?;
        let in_process = from_value(value.clone()).map_err(fail)?;
        prop_assert_eq!(structured.json(), text.as_str());
        prop_assert_eq!(batch[0].json(), text.as_str());
        prop_assert_eq!(in_process.json(), compact.as_str());
        for event in [&structured, &batch[0], &in_process] {
            let read_back: Value = serde_json::from_str(event.json()).map_err(fail)?;
            prop_assert_eq!(&read_back, &sent);
            prop_assert_eq!(identity_of(event.json().as_bytes()).unzip(), identity.clone());
            prop_assert_eq!(event.key(), key);
        }
    }

    #[test]
    fn binary_headers_round_trip(event in valid_event()) {
        // Goal: string attributes sent as percent-encoded headers are stored as the strings
        // they encode, and a body as the data sent. Method: the generated event's string
        // attributes as headers, its data as a JSON or octet-stream body.
        let headers: Vec<(String, String)> = event
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "data" | "data_base64"))
            .filter_map(|(name, value)| Some((name.clone(), percent_encode(value.as_str()?))))
            .collect();
        let headers_sent: Vec<(&str, &str)> =
            headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        let base64 = event.get("data_base64").and_then(Value::as_str);
        let (content_type, body) = match (event.get("data"), base64) {
            (Some(data), _) => (Some("application/json"), data.to_string().into_bytes()),
            (None, Some(base64)) => {
                (Some("application/octet-stream"), BASE64.decode(base64).map_err(fail)?)
            }
            (None, None) => (None, Vec::new()),
        };
        let stored = from_binary(&headers_sent, content_type, &body).map_err(fail)?;
        let stored: Map<String, Value> = serde_json::from_str(stored.json()).map_err(fail)?;
        for (name, _) in &headers {
            prop_assert_eq!(stored.get(name), event.get(name), "attribute {}", name);
        }
        let expected_data = match event.get("data") {
            Some(_) => Some(serde_json::from_slice::<Value>(&body).map_err(fail)?),
            None => None,
        };
        prop_assert_eq!(stored.get("data"), expected_data.as_ref());
        let expected_base64 = base64.filter(|_| !body.is_empty()).map(Value::from);
        prop_assert_eq!(stored.get("data_base64"), expected_base64.as_ref());
    }
}
