//! Tests of the CloudEvents rules and the HTTP modes: one table per family of rules here, and
//! property tests in [`properties`].

mod properties;

use serde_json::json;

use super::*;

/// What a case must produce: a valid event, or an error of one kind whose detail contains
/// the given text.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Valid,
    Json(&'static str),
    Invalid(&'static str),
}

use Expect::{Invalid, Json, Valid};

/// Asserts `result` is what `expect` says, naming `case` on failure; returns a valid result.
fn check<T: std::fmt::Debug>(
    case: &str,
    result: Result<T, EventError>,
    expect: Expect,
) -> Option<T> {
    let as_expected = match (expect, &result) {
        (Valid, Ok(_)) => true,
        (Json(text), Err(EventError::Json { detail, .. }))
        | (Invalid(text), Err(EventError::Invalid { detail, .. })) => detail.contains(text),
        _ => false,
    };
    assert!(
        as_expected,
        "case {case:?}: expected {expect:?}, got {result:?}"
    );
    result.ok()
}

/// The required attributes of a valid event, to prefix a case's own members with.
const REQUIRED: &str = r#""specversion":"1.0","id":"e-1","source":"/shop","type":"order.created""#;

/// A valid event's JSON with `members` (each with a leading comma) added.
fn event_with(members: &str) -> String {
    format!("{{{REQUIRED}{members}}}")
}

/// A structured-mode case: its name, JSON members, and what it must give.
type Case = (&'static str, &'static str, Expect);

/// Runs cases whose members are added to the required attributes of a valid event.
fn check_added_members(cases: &[Case]) {
    for &(case, members, expect) in cases {
        check(
            case,
            parse_structured(event_with(members).as_bytes()),
            expect,
        );
    }
}

/// Whole events (members inside the braces), each missing or spoiling one required attribute.
#[rustfmt::skip]
const REQUIRED_CASES: &[Case] = &[
    ("complete", REQUIRED, Valid),
    ("no specversion", r#""id":"1","source":"/s","type":"t""#,
        Invalid(r#"required attribute "specversion" is missing"#)),
    ("no id", r#""specversion":"1.0","source":"/s","type":"t""#,
        Invalid(r#"required attribute "id" is missing"#)),
    ("no source", r#""specversion":"1.0","id":"1","type":"t""#,
        Invalid(r#"required attribute "source" is missing"#)),
    ("no type", r#""specversion":"1.0","id":"1","source":"/s""#,
        Invalid(r#"required attribute "type" is missing"#)),
    ("null id is missing", r#""specversion":"1.0","id":null,"source":"/s","type":"t""#,
        Invalid(r#"required attribute "id" is missing"#)),
    ("specversion 0.3", r#""specversion":"0.3","id":"1","source":"/s","type":"t""#,
        Invalid(r#"attribute "specversion" must be "1.0", got "0.3""#)),
    ("specversion number", r#""specversion":1.0,"id":"1","source":"/s","type":"t""#,
        Invalid(r#"attribute "specversion" must be "1.0", got 1.0"#)),
    ("empty id", r#""specversion":"1.0","id":"","source":"/s","type":"t""#,
        Invalid(r#"attribute "id" must be a non-empty string, got """#)),
    ("numeric id", r#""specversion":"1.0","id":7,"source":"/s","type":"t""#,
        Invalid(r#"attribute "id" must be a non-empty string, got 7"#)),
    ("empty source", r#""specversion":"1.0","id":"1","source":"","type":"t""#,
        Invalid(r#"attribute "source" must be a non-empty string, got """#)),
    ("empty type", r#""specversion":"1.0","id":"1","source":"/s","type":"""#,
        Invalid(r#"attribute "type" must be a non-empty string, got """#)),
];

#[test]
fn required_attributes_and_specversion_are_enforced() {
    // Goal: id, source and type are required non-empty strings (null counting as absent) and
    // only specversion "1.0" is accepted. Method: REQUIRED_CASES in structured mode.
    for &(case, members, expect) in REQUIRED_CASES {
        check(
            case,
            parse_structured(format!("{{{members}}}").as_bytes()),
            expect,
        );
    }
}

#[test]
fn attribute_names_must_be_lowercase_letters_or_digits() {
    // Goal: names outside [a-z0-9] are refused and the message names the offender, while
    // data and data_base64 are members, not attributes. Method: one added member per case.
    check_added_members(&[
        ("lower-case and digits", r#","ext1":"x""#, Valid),
        (
            "upper-case",
            r#","Type":"x""#,
            Invalid(r#"attribute name "Type" is invalid"#),
        ),
        (
            "dash",
            r#","data-x":"x""#,
            Invalid(r#"attribute name "data-x" is invalid"#),
        ),
        (
            "underscore",
            r#","my_ext":"x""#,
            Invalid(r#"attribute name "my_ext" is invalid"#),
        ),
        (
            "empty",
            r#","":"x""#,
            Invalid(r#"attribute name "" is invalid"#),
        ),
        (
            "non-ASCII",
            r#","café":"x""#,
            Invalid(r#"attribute name "café" is invalid"#),
        ),
        (
            "bad name even when null",
            r#","BAD":null"#,
            Invalid(r#"attribute name "BAD""#),
        ),
        ("data is not an attribute", r#","data":{"Any":[1]}"#, Valid),
        (
            "data_base64 is not an attribute",
            r#","data_base64":"AA==""#,
            Valid,
        ),
    ]);
}

/// Optional and extension attributes, valid and not, one added member per case.
#[rustfmt::skip]
const VALUE_CASES: &[Case] = &[
    ("time UTC", r#","time":"2018-04-05T17:31:00Z""#, Valid),
    ("time offset and fraction", r#","time":"2018-04-05T17:31:00.123+02:00""#, Valid),
    ("time words", r#","time":"yesterday""#,
        Invalid(r#"attribute "time" must be an RFC 3339 timestamp, got "yesterday""#)),
    ("time without zone", r#","time":"2018-04-05T17:31:00""#, Invalid(r#"attribute "time""#)),
    ("time number", r#","time":1522949460"#,
        Invalid(r#"attribute "time" must be an RFC 3339 timestamp, got 1522949460"#)),
    ("dataschema URL", r#","dataschema":"https://example.com/schema.json""#, Valid),
    ("dataschema URN", r#","dataschema":"urn:example:schema""#, Valid),
    ("dataschema relative", r#","dataschema":"/schema.json""#,
        Invalid(r#"attribute "dataschema" must be an absolute URI starting with a scheme"#)),
    ("dataschema space", r#","dataschema":"https://x/a b""#,
        Invalid(r#"must be an absolute URI, got "https://x/a b" (it contains ' ')"#)),
    ("dataschema empty", r#","dataschema":"""#,
        Invalid(r#"attribute "dataschema" must be a non-empty string"#)),
    ("dataschema bad escape", r#","dataschema":"https://x/%zz""#,
        Invalid("a '%' is not followed by two hex digits")),
    ("subject", r#","subject":"order/1001""#, Valid),
    ("subject empty", r#","subject":"""#, Invalid(r#"attribute "subject" must be a non-empty"#)),
    ("subject object", r#","subject":{}"#,
        Invalid(r#"attribute "subject" must be a non-empty string, got an object"#)),
    ("datacontenttype", r#","datacontenttype":"application/json; charset=utf-8""#, Valid),
    ("datacontenttype without subtype", r#","datacontenttype":"json""#,
        Invalid(r#"must be a media type like "application/json", got "json""#)),
    ("datacontenttype number", r#","datacontenttype":5"#,
        Invalid(r#"attribute "datacontenttype" must be a media type"#)),
    ("extension string", r#","traceparent":"00-ab-cd-01""#, Valid),
    ("extension boolean", r#","sampled":true"#, Valid),
    ("extension integer", r#","priority":-2147483648"#, Valid),
    ("extension fraction", r#","priority":1.5"#,
        Invalid(r#""priority" must be a string, a boolean or a 32-bit integer, got 1.5"#)),
    ("extension beyond 32 bits", r#","priority":2147483648"#,
        Invalid(r#"attribute "priority" must be a string, a boolean or a 32-bit integer"#)),
    ("extension object", r#","ext":{"a":1}"#,
        Invalid(r#""ext" must be a string, a boolean or a 32-bit integer, got an object"#)),
    ("extension array", r#","ext":[1]"#, Invalid(r#"attribute "ext" must be"#)),
    ("control character", r#","subject":"a\nb""#,
        Invalid(r#"attribute "subject" contains the disallowed character U+000A"#)),
    ("noncharacter", r#","ext":"\uFFFF""#, Invalid("disallowed character U+FFFF")),
    ("partitionkey", r#","partitionkey":"order-1001""#, Valid),
    ("partitionkey empty", r#","partitionkey":"""#,
        Invalid(r#"attribute "partitionkey" must be a non-empty string, got """#)),
    ("partitionkey number", r#","partitionkey":5"#,
        Invalid(r#"attribute "partitionkey" must be a non-empty string, got 5"#)),
];

#[test]
fn attribute_values_are_checked_by_type() {
    // Goal: optional and extension attributes hold values of their CloudEvents type, and the
    // message names the attribute and the value. Method: VALUE_CASES in structured mode.
    check_added_members(VALUE_CASES);
}

#[test]
fn source_must_be_a_uri_reference() {
    // Goal: source takes relative and absolute references and refuses what no URI holds.
    // Method: events from `from_value` whose only varying member is source.
    let cases: &[(&str, Expect)] = &[
        ("/cloudevents/spec/pull/123", Valid),
        ("urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", Valid),
        ("1-555-123-4567", Valid),
        ("/caf%C3%A9", Valid),
        (
            "/a b",
            Invalid(r#"attribute "source" must be a URI-reference, got "/a b""#),
        ),
        ("/a<b>", Invalid("it contains '<'")),
        ("/100%", Invalid("a '%' is not followed by two hex digits")),
    ];
    for &(source, expect) in cases {
        let event = json!({"specversion": "1.0", "id": "1", "source": source, "type": "t"});
        check(source, from_value(event), expect);
    }
}

/// Combinations of `data` and `data_base64`, one per case.
#[rustfmt::skip]
const DATA_CASES: &[Case] = &[
    ("JSON data", r#","data":{"amount":42}"#, Valid),
    ("string data", r#","data":"<a b=\"c\"/>","datacontenttype":"application/xml""#, Valid),
    ("null data", r#","data":null"#, Valid),
    ("base64 data", r#","data_base64":"aGVsbG8=""#, Valid),
    ("empty base64", r#","data_base64":"""#, Valid),
    ("data and null base64", r#","data":1,"data_base64":null"#, Valid),
    ("nested data with escapes", r#","data":{"a":[1.5e300,-0,"\u00e9\ud83d\ude00",{"\n":true}]}"#, Valid),
    ("lone surrogate in data", r#","data":{"s":"\ud800"}"#, Json("escape")),
    ("lone surrogate in a data key", r#","data":{"\udc00":1}"#, Json("surrogate")),
    ("number out of range in data", r#","data":[1e400]"#, Json("out of range")),
    ("both", r#","data":1,"data_base64":"AA==""#,
        Invalid(r#""data" and "data_base64" are mutually exclusive"#)),
    ("null data and base64", r#","data":null,"data_base64":"AA==""#,
        Invalid("mutually exclusive")),
    ("base64 unpadded", r#","data_base64":"aGVsbG8""#,
        Invalid(r#""data_base64" must be base64 (standard alphabet, padded), got "aGVsbG8""#)),
    ("base64 URL alphabet", r#","data_base64":"-_-_""#, Invalid(r#""data_base64" must be base64"#)),
    ("base64 with newline", r#","data_base64":"aGVs\nbG8=""#, Invalid(r#""data_base64""#)),
    ("base64 number", r#","data_base64":5"#,
        Invalid(r#""data_base64" must be a base64 string, got 5"#)),
];

#[test]
fn data_and_data_base64_are_exclusive_and_base64_is_checked() {
    // Goal: data is any JSON, data_base64 is padded standard base64, and the two never meet;
    // an explicit data null counts as data, a null data_base64 as absent. Method: DATA_CASES.
    check_added_members(DATA_CASES);
}

#[test]
fn null_attributes_count_as_absent() {
    // Goal: a null optional attribute is unset (JSON format §2.2), so it is valid whatever its
    // type would need, and it is kept in the stored bytes. Method: null for each optional one.
    let names = [
        "subject",
        "time",
        "dataschema",
        "datacontenttype",
        "ext",
        "partitionkey",
    ];
    let body = event_with(&names.map(|name| format!(r#","{name}":null"#)).concat());
    if let Some(event) = check("nulls", parse_structured(body.as_bytes()), Valid) {
        assert_eq!((event.json(), event.key()), (body.as_str(), None));
    }
}

#[test]
fn duplicate_member_names_are_refused() {
    // Goal: a name twice is refused, whether an attribute, data or an escaped spelling of the
    // same name, since readers disagree on which copy wins. Method: duplicated members.
    check_added_members(&[
        (
            "id twice",
            r#","id":"e-2""#,
            Invalid(r#"member "id" appears more than once"#),
        ),
        (
            "extension twice",
            r#","ext":"a","ext":"a""#,
            Invalid(r#"member "ext" appears"#),
        ),
        (
            "data twice",
            r#","data":1,"data":2"#,
            Invalid(r#"member "data" appears"#),
        ),
        (
            "escaped name",
            r#","\u0069d":"e-2""#,
            Invalid(r#"member "id" appears"#),
        ),
    ]);
}

#[test]
fn bodies_that_are_not_event_objects_are_refused() {
    // Goal: malformed JSON is a Json error, and well-formed JSON of the wrong shape an Invalid
    // one saying what it is. Method: structured bodies of every JSON kind and some non-JSON.
    // Data and attributes nested deeper than serde_json's limit (128) are refused alike.
    let deep_data = event_with(&format!(
        r#","data":{}{}"#,
        "[".repeat(500),
        "]".repeat(500)
    ));
    let deep_value = event_with(&format!(r#","ext":{}{}"#, "[".repeat(500), "]".repeat(500)));
    #[rustfmt::skip]
    let cases: &[(&str, &[u8], Expect)] = &[
        ("empty", b"", Json("the body is empty")),
        ("whitespace", b" \n\t", Json("the body is empty")),
        ("truncated", br#"{"specversion":"1.0""#, Json("EOF while parsing")),
        ("trailing garbage", br#"{"a":1} x"#, Json("trailing characters")),
        ("two objects", br#"{} {}"#, Json("trailing characters")),
        ("bare word", b"yes", Json("expected value")),
        ("not UTF-8", b"{\"id\":\"\xff\"}", Json("the body is not UTF-8")),
        ("array", br#"[{"id":"1"}]"#, Invalid("an event must be a JSON object, got an array")),
        ("string", br#""event""#, Invalid("an event must be a JSON object, got a string")),
        ("number", b"-12", Invalid("an event must be a JSON object, got a number")),
        ("boolean", b"true", Invalid("an event must be a JSON object, got a boolean")),
        ("null", b"null", Invalid("an event must be a JSON object, got null")),
        ("deep data", deep_data.as_bytes(), Json("recursion limit exceeded")),
        ("deep attribute", deep_value.as_bytes(), Json("recursion limit exceeded")),
    ];
    for &(case, body, expect) in cases {
        check(case, parse_structured(body), expect);
    }
}

#[test]
fn structured_event_is_stored_exactly_as_sent() {
    // Goal: the stored JSON is the body's bytes (whitespace around it trimmed), and the
    // engine's attributes come from it. Method: a formatted body with escapes and a key.
    let event_text = "{ \"specversion\" : \"1.0\",\n  \"id\":\"\\u0031\", \"source\":\"\\/shop\",\
        \"type\":\"t\", \"partitionkey\":\"k\", \"data\": {\"b\":1, \"a\": [1.50, 2e3]} }";
    let body = format!("\n\t {event_text} \r\n");
    if let Some(event) = check("formatted", parse_structured(body.as_bytes()), Valid) {
        assert_eq!(event.json(), event_text);
        assert_eq!(
            (event.id(), event.source(), event.key()),
            ("1", "/shop", Some("k"))
        );
        let identity = identity_of(event.json().as_bytes());
        assert_eq!(identity, Some(("/shop".to_owned(), "1".to_owned())));
        assert_eq!(event.into_json().get(), event_text);
    }
}

#[test]
fn batch_is_all_or_nothing_and_names_the_index() {
    // Goal: a batch is a non-empty JSON array of valid events, and an error says which
    // element. Method: batches with one flaw each, checking the error's kind, index and text.
    let good = event_with("");
    let bad = event_with(r#","Bad":1"#);
    #[rustfmt::skip]
    let cases: Vec<(&str, String, Option<usize>, Expect)> = vec![
        ("two events", format!("[{good},{good}]"), None, Valid),
        ("empty", "[ ]".to_owned(), None, Invalid("a batch must hold at least one event")),
        ("object", good.clone(), None,
            Invalid("a batch must be a JSON array of events, got an object")),
        ("malformed", format!("[{good},"), None, Json("EOF while parsing")),
        ("empty body", String::new(), None, Json("the body is empty")),
        ("second invalid", format!("[{good},{bad}]"), Some(1),
            Invalid(r#"attribute name "Bad" is invalid"#)),
        ("third not an object", format!("[{good},{good},7]"), Some(2),
            Invalid("an event must be a JSON object, got a number")),
    ];
    for (case, body, index, expect) in cases {
        let result = parse_batch(body.as_bytes());
        if let Err(
            EventError::Json { index: found, .. } | EventError::Invalid { index: found, .. },
        ) = &result
        {
            assert_eq!(*found, index, "case {case:?}: index");
        }
        check(case, result, expect);
    }
}

#[test]
fn batch_events_are_stored_as_their_elements() {
    // Goal: each batch event's stored JSON is its element's text, byte for byte, in order.
    // Method: a formatted batch of two events with different keys.
    let first = r#"{"specversion":"1.0","id":"1","source":"/a","type":"t","partitionkey":"k1"}"#;
    let second = "{ \"specversion\": \"1.0\", \"id\": \"2\", \"source\": \"/b\", \"type\": \"t\" }";
    let body = format!("[\n  {first} ,\n\t{second}\n]");
    let events = check("batch", parse_batch(body.as_bytes()), Valid).unwrap_or_default();
    let stored: Vec<_> = events
        .iter()
        .map(|event| (event.json(), event.id(), event.key()))
        .collect();
    assert_eq!(stored, [(first, "1", Some("k1")), (second, "2", None)]);
}

/// The required attributes as binary-mode headers.
const HEADERS: [(&str, &str); 4] = [
    ("specversion", "1.0"),
    ("id", "e-1"),
    ("source", "/shop"),
    ("type", "order.created"),
];

/// A binary-mode case: its name, the headers beyond [`HEADERS`] (names without `ce-`, values
/// as sent), `Content-Type`, body, and what it must give.
type BinaryCase<T> = (
    &'static str,
    &'static [(&'static str, &'static str)],
    Option<&'static str>,
    &'static [u8],
    T,
);

/// Binary-mode requests and the members their stored JSON must have after the required ones.
#[rustfmt::skip]
const BINARY_CASES: &[BinaryCase<&str>] = &[
    ("JSON body", &[], Some("application/json"), b" {\"a\": 1}\n",
        r#","datacontenttype":"application/json","data":{"a": 1}"#),
    ("JSON string body", &[], Some("application/json"), br#""hi""#,
        r#","datacontenttype":"application/json","data":"hi""#),
    ("+json with charset", &[], Some("application/x+json; charset=utf-8"), b"[1]",
        r#","datacontenttype":"application/x+json; charset=utf-8","data":[1]"#),
    ("text/json", &[], Some("Text/JSON"), b"null", r#","datacontenttype":"Text/JSON","data":null"#),
    ("text body", &[], Some("text/plain; charset=utf-8"), "héllo \"x\"".as_bytes(),
        r#","datacontenttype":"text/plain; charset=utf-8","data":"héllo \"x\"""#),
    ("text in Latin-1", &[], Some("text/plain; charset=iso-8859-1"), b"caf\xe9",
        r#","datacontenttype":"text/plain; charset=iso-8859-1","data_base64":"Y2Fm6Q==""#),
    ("text not UTF-8", &[], Some("text/plain"), b"\xff",
        r#","datacontenttype":"text/plain","data_base64":"/w==""#),
    ("octet-stream", &[], Some("application/octet-stream"), b"\x00\x01",
        r#","datacontenttype":"application/octet-stream","data_base64":"AAE=""#),
    ("no content type", &[], None, b"{}", r#","data_base64":"e30=""#),
    ("empty body", &[], Some("application/json"), b"", r#","datacontenttype":"application/json""#),
    ("extensions stay strings", &[("priority", "5"), ("sampled", "true")], None, b"",
        r#","priority":"5","sampled":"true""#),
    ("percent-encoded", &[("subject", "Euro%20%E2%82%AC%20%f0%9f%98%80")], None, b"",
        r#","subject":"Euro € 😀""#),
    ("needless encoding", &[("subject", "%61bc")], None, b"", r#","subject":"abc""#),
    ("quoted-string", &[("subject", r#""a \"b\" c%21""#)], None, b"", r#","subject":"a \"b\" c!""#),
    ("header name case", &[("Subject", "s")], None, b"", r#","subject":"s""#),
];

#[test]
fn binary_mode_builds_the_stored_json() {
    // Goal: binary mode maps headers and the body to the JSON format as the HTTP binding
    // says, by content type. Method: BINARY_CASES, comparing the exact stored JSON.
    for &(case, extra, content_type, body, members) in BINARY_CASES {
        let headers: Vec<_> = HEADERS.iter().chain(extra).copied().collect();
        if let Some(event) = check(case, from_binary(&headers, content_type, body), Valid) {
            assert_eq!(event.json(), event_with(members), "case {case:?}");
        }
    }
}

/// Binary-mode requests with one flaw each (or none, for the first).
#[rustfmt::skip]
const BINARY_FLAW_CASES: &[BinaryCase<Expect>] = &[
    ("reordered", &[], None, b"", Valid),
    ("invalid JSON body", &[], Some("application/json; charset=utf-8"), b"{not json",
        Invalid(r#"the body must be JSON for content type "application/json; charset=utf-8""#)),
    ("JSON body not UTF-8", &[], Some("application/cloudevents+json"), b"\"\xff\"",
        Invalid("the body must be JSON for content type")),
    ("bad percent escape", &[("subject", "100%")], None, b"",
        Invalid(r#"attribute "subject" has an invalid percent-encoded value: '%' at byte 3"#)),
    ("overlong UTF-8", &[("subject", "%C0%A0")], None, b"",
        Invalid("invalid percent-encoded value: the decoded bytes are not UTF-8")),
    ("unclosed quote", &[("subject", "\"abc")], None, b"",
        Invalid(r#"attribute "subject" has a malformed quoted-string value"#)),
    ("data header", &[("data", "x")], None, b"", Invalid(r#"header "ce-data" is not allowed"#)),
    ("data_base64 header", &[("data_base64", "AA==")], None, b"",
        Invalid(r#"header "ce-data_base64" is not allowed"#)),
    ("decoded control character", &[("subject", "a%0Ab")], None, b"",
        Invalid(r#"attribute "subject" contains the disallowed character U+000A"#)),
    ("bad time", &[("time", "yesterday")], None, b"",
        Invalid(r#"attribute "time" must be an RFC 3339 timestamp, got "yesterday""#)),
    ("bad name", &[("my_ext", "1")], None, b"", Invalid(r#"attribute name "my_ext" is invalid"#)),
    ("content type twice", &[("datacontenttype", "text/plain")], Some("text/plain"), b"",
        Invalid(r#"member "datacontenttype" appears more than once"#)),
    ("bad content type", &[], Some("json"), b"1",
        Invalid(r#"attribute "datacontenttype" must be a media type"#)),
    ("id twice", &[("id", "e-2")], None, b"", Invalid(r#"member "id" appears more than once"#)),
];

#[test]
fn binary_mode_refuses_bad_headers_and_bodies() {
    // Goal: binary mode refuses bodies that do not fit their content type, bad encodings and
    // headers that are no attributes, and applies the structured-mode rules to the result.
    // Method: BINARY_FLAW_CASES with specversion sent last (to show it is moved first), and
    // the required headers without specversion.
    for &(case, extra, content_type, body, expect) in BINARY_FLAW_CASES {
        let mut headers: Vec<_> = HEADERS[1..].iter().chain(extra).copied().collect();
        headers.push(HEADERS[0]);
        check(case, from_binary(&headers, content_type, body), expect);
    }
    let missing = from_binary(&HEADERS[1..], None, b"");
    check(
        "no specversion",
        missing,
        Invalid(r#"required attribute "specversion" is missing"#),
    );
}

#[test]
fn from_value_validates_and_serialises() {
    // Goal: the in-process API applies the same rules and stores the compact serialisation.
    // Method: a valid value, compared to its serialisation, and invalid ones.
    let valid = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t",
                       "partitionkey": "k", "data": {"x": [1, 2]}});
    if let Some(event) = check("valid", from_value(valid.clone()), Valid) {
        assert_eq!(
            (event.json(), event.key()),
            (valid.to_string().as_str(), Some("k"))
        );
    }
    let array = from_value(json!([1]));
    check(
        "array",
        array,
        Invalid("an event must be a JSON object, got an array"),
    );
    let no_type = from_value(json!({"specversion": "1.0", "id": "1", "source": "/s"}));
    check(
        "no type",
        no_type,
        Invalid(r#"required attribute "type" is missing"#),
    );
}

/// What `identity_of` must return for a case.
type SourceAndId = Option<(&'static str, &'static str)>;

#[test]
fn identity_of_reads_source_and_id_or_nothing() {
    // Goal: identity_of returns (source, id) of stored JSON, unescaping them, and None for
    // anything that is not an event. Method: stored texts and non-events.
    #[rustfmt::skip]
    let cases: &[(&str, &[u8], SourceAndId)] = &[
        ("event", br#"{"id":"1","data":{"id":"x"},"source":"/s","type":"t"}"#, Some(("/s", "1"))),
        ("escapes", br#"{"id":"\u0031","source":"\/s"}"#, Some(("/s", "1"))),
        ("no id", br#"{"source":"/s"}"#, None),
        ("numeric id", br#"{"id":1,"source":"/s"}"#, None),
        ("array", b"[]", None),
        ("garbage", b"\xff{", None),
    ];
    for &(case, json, expected) in cases {
        let expected = expected.map(|(source, id)| (source.to_owned(), id.to_owned()));
        assert_eq!(identity_of(json), expected, "case {case:?}");
    }
}

#[test]
fn error_messages_say_where_and_what() {
    // Goal: the Display form carries the batch index, and long names are cut in messages.
    // Method: format the errors of a batch and of an event with a 1000-character name.
    let batch = format!("[{},{}]", event_with(""), event_with(r#","time":"x""#));
    let message = parse_batch(batch.as_bytes())
        .err()
        .map(|error| error.to_string());
    let expected = "invalid CloudEvent at index 1: attribute \"time\" must be an RFC 3339 \
                    timestamp, got \"x\" (the 'year' component could not be parsed)";
    assert_eq!(message.as_deref(), Some(expected));
    let long = event_with(&format!(r#","{}":1"#, "X".repeat(1000)));
    let message = parse_structured(long.as_bytes())
        .err()
        .map(|error| error.to_string());
    assert!(
        message.is_some_and(|m| m.len() < 200 && m.contains("XX\"…")),
        "names are cut"
    );
}
