//! Filter tests: each dialect against a fixed event, error messages with their paths, the
//! expression grammar's precedence and error rules, the limits, round trips, and proptests
//! that no input panics.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{
    ATTRIBUTE_NAME_BYTES_MAX, EXPRESSION_BYTES_MAX, EXPRESSION_DEPTH_MAX, FILTER_DEPTH_MAX, Filter,
    FilterError, deserialize_all, matches_all, parse_all, reads_data,
};

/// The event most tests filter: every kind of attribute and a nested payload.
fn order_event() -> Value {
    json!({
        "specversion": "1.0", "id": "1", "source": "/shop/eu", "type": "order.created",
        "subject": "orders/1001", "partitionkey": "order-1001", "priority": 5,
        "urgent": true, "region": "eu-west", "unset": null,
        "data": {
            "amount": 250, "currency": "EUR", "ratio": 0.5, "note": null, "weird key": "yes",
            "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1}],
            "tags": ["new", "vip"], "nested": {"a": [1, 2.0]},
        },
    })
}

/// Parses one filter, failing the test with the error if it does not parse.
fn filter(value: Value) -> Filter {
    match Filter::parse(&value) {
        Ok(filter) => filter,
        Err(error) => panic!("{value} did not parse: {error}"),
    }
}

/// Whether the `cel` expression matches the event.
fn cel_matches(expression: &str, event: &Value) -> bool {
    filter(json!({ "cel": expression })).matches(event)
}

/// The message `parse_all` gives for a one-filter list.
fn list_error(value: Value) -> String {
    match parse_all(&json!([value])) {
        Ok(filters) => panic!("{value} parsed as {filters:?}"),
        Err(error) => error.to_string(),
    }
}

/// The message for an expression that must not parse.
fn cel_error(expression: &str) -> String {
    list_error(json!({ "cel": expression }))
}

#[test]
fn attribute_dialects_match_per_cloudevents_rules() {
    // Goal: each named attribute must be set and compare case-sensitively, non-strings as text.
    let event = order_event();
    let cases = [
        (json!({"exact": {"type": "order.created"}}), true),
        (json!({"exact": {"type": "Order.created"}}), false),
        (
            json!({"exact": {"type": "order.created", "source": "/shop/eu"}}),
            true,
        ),
        (
            json!({"exact": {"type": "order.created", "source": "/shop"}}),
            false,
        ),
        (json!({"exact": {"missing": ""}}), false),
        (json!({"exact": {"unset": "null"}}), false),
        (json!({"exact": {"priority": "5"}}), true),
        (json!({"exact": {"urgent": "true"}}), true),
        (json!({"prefix": {"type": "order."}}), true),
        (json!({"prefix": {"type": ""}}), true),
        (json!({"prefix": {"missing": ""}}), false),
        (json!({"prefix": {"type": "created"}}), false),
        (
            json!({"suffix": {"type": ".created", "subject": "1001"}}),
            true,
        ),
        (
            json!({"suffix": {"type": ".created", "subject": "1002"}}),
            false,
        ),
        (json!({"suffix": {"priority": "5"}}), true),
    ];
    for (value, expected) in cases {
        assert_eq!(filter(value.clone()).matches(&event), expected, "{value}");
    }
}

#[test]
fn composite_dialects_combine_their_filters() {
    // Goal: all, any and not combine nested filters, and an empty list matches everything.
    let event = order_event();
    let yes = json!({"exact": {"type": "order.created"}});
    let no = json!({"exact": {"type": "order.deleted"}});
    let cases = [
        (json!({"all": [yes, yes]}), true),
        (json!({"all": [yes, no]}), false),
        (json!({"any": [no, yes]}), true),
        (json!({"any": [no, no]}), false),
        (json!({"not": no}), true),
        (json!({"not": {"not": yes}}), true),
        (json!({"not": {"exact": {"missing": "x"}}}), true),
        (json!({"any": [{"all": [yes, {"not": no}]}, no]}), true),
    ];
    for (value, expected) in cases {
        assert_eq!(filter(value.clone()).matches(&event), expected, "{value}");
    }
    assert!(matches_all(&[], &event));
    let filters = parse_all(&json!([yes, no])).expect("parses");
    assert!(!matches_all(&filters, &event));
}

#[test]
fn malformed_filters_name_their_path() {
    // Goal: every shape error names where it is, from the list down, and what is wrong.
    let cases = [
        (
            json!("exact"),
            "filters[0]: must be a filter object such as",
        ),
        (
            json!({}),
            "filters[0]: must have exactly one key, the dialect (one of exact, prefix, suffix, \
             all, any, not, cel), found none",
        ),
        (
            json!({"exact": {"type": "a"}, "prefix": {"type": "b"}}),
            "filters[0]: must have exactly one key, the dialect (one of exact, prefix, suffix, \
             all, any, not, cel), found 2: \"exact\", \"prefix\"",
        ),
        (
            json!({"sql": "type = 'a'"}),
            "filters[0]: unknown filter dialect \"sql\"; known dialects: exact, prefix, suffix, \
             all, any, not, cel",
        ),
        (
            json!({"exact": "type"}),
            "filters[0].exact: must be an object of attribute names to strings, found a string",
        ),
        (
            json!({"prefix": {}}),
            "filters[0].prefix: must name at least one attribute",
        ),
        (
            json!({"suffix": {"Type": "x"}}),
            "filters[0].suffix: \"Type\" is not an attribute name (1 to 128 a-z or 0-9)",
        ),
        (
            json!({"exact": {"data": "x"}}),
            "filters[0].exact: \"data\" is the payload, not an attribute",
        ),
        (
            json!({"exact": {"priority": 5}}),
            "filters[0].exact.priority: must be a string, found a number",
        ),
        (
            json!({"all": []}),
            "filters[0].all: must hold at least one filter",
        ),
        (
            json!({"any": {"exact": {}}}),
            "filters[0].any: must be an array of filter objects, found an object",
        ),
        (
            json!({"all": [{"exact": {"type": "a"}}, {"any": [{"prefix": []}]}]}),
            "filters[0].all[1].any[0].prefix: must be an object of attribute names to strings, \
             found an array",
        ),
        (
            json!({"not": [{"exact": {"type": "a"}}]}),
            "filters[0].not: must be a filter object such as",
        ),
        (
            json!({"cel": 5}),
            "filters[0].cel: must be a string holding an expression, found a number",
        ),
    ];
    for (value, expected) in cases {
        let message = list_error(value.clone());
        assert!(message.starts_with(expected), "{value}: {message}");
    }
    let too_long = "a".repeat(ATTRIBUTE_NAME_BYTES_MAX + 1);
    let message = list_error(json!({"exact": {too_long.clone(): "x"}}));
    let expected = format!("filters[0].exact: \"{too_long}\" is not an attribute name");
    assert!(message.starts_with(&expected), "{message}");
    let not_a_list = parse_all(&json!({"exact": {}})).expect_err("an object is not a list");
    assert_eq!(not_a_list.path, "filters");
    let single = Filter::parse(&json!({"all": [1]})).expect_err("1 is not a filter");
    assert_eq!(single.path, "filter.all[0]");
}

#[test]
fn expressions_read_attributes_and_data() {
    // Goal: each supported form evaluates as documented against the fixed event.
    let event = order_event();
    let cases = [
        ("type == 'order.created'", true),
        ("type == \"order.created\"", true),
        (
            "source.startsWith('/shop') && subject.endsWith('1001')",
            true,
        ),
        ("partitionkey.contains('der-1')", true),
        ("priority == 5 && priority >= 5.0 && priority < 6", true),
        ("urgent", true),
        ("urgent == true && !false", true),
        ("data.amount > 100", true),
        ("data.amount == 250.0", true),
        ("data.ratio < 1 && data.ratio > -1", true),
        ("data.items[0].sku == 'A-1'", true),
        ("data.items[1]['qty'] == 1", true),
        ("data['weird key'] == 'yes'", true),
        ("data.note == null", true),
        ("data.currency in ['EUR', 'USD']", true),
        ("data.currency in ['USD']", false),
        ("'vip' in data.tags", true),
        ("'currency' in data", true),
        ("1 in data", false),
        ("!(1 in data)", true),
        (
            "size(data.tags) == 2 && size(data) == 8 && size('héllo') == 5",
            true,
        ),
        ("data.tags.size() == 2", true),
        (
            "has(data.amount) && !has(data.missing) && has(data.note)",
            true,
        ),
        (
            "has(subject) && !has(dataschema) && !has(unset) && has(data)",
            true,
        ),
        ("data.nested.a == [1, 2]", true),
        ("data.items[0] == data.items[0]", true),
        ("data.items[0] != data.items[1]", true),
        ("[1, 'a', [true]] == [1.0, 'a', [true],]", true),
        ("'b' > 'a' && 'a' <= 'a' && false < true", true),
        ("'x' == 1", false),
        ("'x' != 1", true),
        ("null == null && null != false", true),
        ("-data.amount == -250", true),
        ("'a\\'b\\n\\x41\\u00e9\\101' == \"a'b\\nAéA\"", true),
        ("1e3 == 1000 && 2.5E-1 == 0.25", true),
    ];
    for (expression, expected) in cases {
        assert_eq!(cel_matches(expression, &event), expected, "{expression}");
    }
}

#[test]
fn operators_bind_by_cel_precedence() {
    // Goal: `||` < `&&` < relations < unary, left-associative; each case flips if misgrouped.
    let event = order_event();
    let cases = [
        ("true || false && false", true),
        ("(true || false) && false", false),
        ("false && true || true", true),
        ("false && (true || true)", false),
        ("!false && true", true),
        ("!(false || true)", false),
        ("1 < 2 == true", true),
        ("true == 1 < 2", false),
        ("2 > 1 && 1 in [1] == true", true),
        ("-1 < 0 && - -1 == 1", true),
        ("!!true", true),
        ("!type.startsWith('order')", false),
    ];
    for (expression, expected) in cases {
        assert_eq!(cel_matches(expression, &event), expected, "{expression}");
    }
}

#[test]
fn evaluation_errors_mean_no_match_unless_absorbed() {
    // Goal: evaluation errors mean no match, unless `&&`/`||` absorb them in either order.
    let event = order_event();
    let cases = [
        ("data.missing == 1", false),
        ("data.missing != 1", false),
        ("missing == 'x'", false),
        ("unset == null", false),
        ("'a' < 1", false),
        ("!(data.amount < 'x')", false),
        ("data.items[2].sku == 'x'", false),
        ("data.items[-1] == 1", false),
        ("data.items[0.5] == 1", false),
        ("data.tags['a'] == 1", false),
        ("data.amount.x == 1", false),
        ("has(data.amount.x)", false),
        ("size(5) == 1", false),
        ("-'a' == 1", false),
        ("!5", false),
        ("5 in 'abc'", false),
        ("type.startsWith(5)", false),
        ("data.amount", false),
        ("type", false),
        ("false && data.missing", false),
        ("!(false && data.missing)", true),
        ("data.missing && false", false),
        ("!(data.missing && false)", true),
        ("true || data.missing", true),
        ("data.missing || true", true),
        ("data.missing || false", false),
        ("!(data.missing || false)", false),
        ("5 || true", true),
        ("5 || false", false),
        ("true && 5", false),
        ("(1 < 'a' || true) && (false || true)", true),
    ];
    for (expression, expected) in cases {
        assert_eq!(cel_matches(expression, &event), expected, "{expression}");
    }
    assert!(!cel_matches("type == 'x'", &json!("not an object")));
    assert!(!cel_matches("has(data)", &json!({"type": "t"})));
}

#[test]
fn base64_payloads_read_as_json_or_text() {
    // Goal: `data` reads a `data_base64` payload, as JSON for JSON content types, else as text.
    let json_event = json!({"datacontenttype": "application/vnd.x+json; charset=utf-8",
                            "data_base64": "eyJhbW91bnQiOiA1fQ=="});
    assert!(cel_matches("data.amount == 5 && has(data)", &json_event));
    let text_event = json!({"datacontenttype": "application/octet-stream",
                            "data_base64": "aGVsbG8="});
    assert!(cel_matches(
        "data == 'hello' && size(data) == 5",
        &text_event
    ));
    let binary_event = json!({"data_base64": "/w=="});
    assert!(!cel_matches("data == ''", &binary_event));
    assert!(cel_matches("has(data)", &binary_event));
    assert!(!cel_matches(
        "data == ''",
        &json!({"data_base64": "not base64!"})
    ));
}

#[test]
fn malformed_expressions_report_the_column() {
    // Goal: parse errors name what was found, its column and what was expected there.
    let cases = [
        (
            "data.amount >= )",
            "unexpected token ')' at column 16, expected a value",
        ),
        (
            "",
            "unexpected end of expression at column 1, expected a value",
        ),
        (
            "type == 'a' type",
            "unexpected name 'type' at column 13, expected an operator or the end of the \
             expression",
        ),
        (
            "(type == 'a'",
            "unexpected end of expression at column 13, expected ')'",
        ),
        (
            "[1, 2",
            "unexpected end of expression at column 6, expected ',' or ']'",
        ),
        (
            "data.",
            "unexpected end of expression at column 6, expected a field name after '.'",
        ),
        (
            "type = 'a'",
            "unexpected character '=' at column 6 (use '==' to compare)",
        ),
        ("a & b", "unexpected character '&' at column 3 (use '&&')"),
        ("type == #", "unexpected character '#' at column 9"),
        ("'abc", "unterminated string starting at column 1"),
        ("'é\\q'", "unknown escape '\\q' at column 3"),
        ("'\\u12'", "escape at column 2 needs 4 hex digits"),
        (
            "'\\uD800'",
            "escape at column 2 is not a Unicode scalar value",
        ),
        ("'a\nb'", "line break in string at column 3"),
        ("1e+", "exponent without digits at column 4"),
        (
            "Type == 'a'",
            "'Type' at column 1 is not an attribute name (1 to 128 lower-case letters or digits) \
             or data",
        ),
        (
            "data_base64 == ''",
            "'data_base64' at column 1 is not an attribute name",
        ),
        (
            "matches(type, 'a')",
            "unknown function 'matches' at column 1; supported: has, size",
        ),
        (
            "type.lower() == 'a'",
            "unknown method 'lower' at column 6; supported: startsWith, endsWith, contains, size",
        ),
        (
            "type.startsWith('a', 'b')",
            "startsWith() at column 6 takes 1 argument, found 2",
        ),
        ("size()", "size() at column 1 takes 1 argument, found 0"),
        (
            "type.size(1)",
            "size() at column 6 takes no arguments, found 1",
        ),
        (
            "has(data['x'])",
            "has() at column 1 takes a field selection such as data.amount, or an attribute name",
        ),
        (
            "data.items[0",
            "unexpected end of expression at column 13, expected ']'",
        ),
        ("{'a': 1}", "unexpected character '{' at column 1"),
        (
            "data.amount + 1 > 2",
            "unexpected character '+' at column 13",
        ),
    ];
    for (expression, expected) in cases {
        let message = cel_error(expression);
        let expected = format!("filters[0].cel: {expected}");
        assert!(message.starts_with(&expected), "{expression:?}: {message}");
    }
}

#[test]
fn limits_refuse_long_and_deep_input() {
    // Goal: byte and depth limits fail parsing just past the bound; flat `||` chains pass.
    let longest = format!("type == '{}'", "x".repeat(EXPRESSION_BYTES_MAX - 10));
    assert_eq!(longest.len(), EXPRESSION_BYTES_MAX);
    assert!(cel_matches(
        &longest,
        &json!({"type": "x".repeat(EXPRESSION_BYTES_MAX - 10)})
    ));
    let message = cel_error(&format!("{longest} "));
    assert!(
        message.contains("4097 bytes, longer than the limit of 4096"),
        "{message}"
    );

    let parens = |depth: usize| format!("{}true{}", "(".repeat(depth), ")".repeat(depth));
    assert!(cel_matches(&parens(EXPRESSION_DEPTH_MAX - 1), &json!({})));
    let deep = [
        parens(EXPRESSION_DEPTH_MAX),
        format!("{}true", "!".repeat(EXPRESSION_DEPTH_MAX)),
        format!("data{}", ".a".repeat(EXPRESSION_DEPTH_MAX)),
        format!("{}1", "1 == ".repeat(EXPRESSION_DEPTH_MAX)),
        format!(
            "{}1{}",
            "[".repeat(EXPRESSION_DEPTH_MAX),
            "]".repeat(EXPRESSION_DEPTH_MAX)
        ),
        "(".repeat(EXPRESSION_BYTES_MAX),
    ];
    for expression in deep {
        let message = cel_error(&expression);
        assert!(
            message.contains("nests deeper than 32 levels at column"),
            "{message}"
        );
    }
    let flat = vec!["type == 'a'"; 200].join(" || ");
    assert!(cel_matches(&flat, &json!({"type": "a"})));

    let mut nested = json!({"exact": {"type": "a"}});
    for _ in 1..FILTER_DEPTH_MAX {
        nested = json!({ "not": nested });
    }
    assert!(Filter::parse(&nested).is_ok());
    let error = Filter::parse(&json!({ "any": [nested] })).expect_err("one level too deep");
    assert_eq!(error.detail, "filters nest deeper than 32 levels");
}

#[test]
fn filters_round_trip_through_json_and_serde() {
    // Goal: parse → to_json → parse is the identity, keeping shape, and serde agrees.
    let value = json!([
        {"exact": {"type": "order.created", "source": "/shop"}},
        {"prefix": {"subject": "orders/"}},
        {"suffix": {"type": ".created"}},
        {"all": [{"any": [{"not": {"exact": {"region": "us"}}}, {"cel": "data.amount > 1"}]}]},
        {"cel": "has(data.items) && size(data.items) > 0"},
    ]);
    let filters = parse_all(&value).expect("parses");
    let json_form: Value = filters.iter().map(Filter::to_json).collect();
    assert_eq!(json_form, value);
    assert_eq!(parse_all(&json_form).expect("parses again"), filters);

    let text = serde_json::to_string(&filters).expect("serialises");
    let back: Vec<Filter> = serde_json::from_str(&text).expect("deserialises");
    assert_eq!(back, filters);
    let bad =
        serde_json::from_str::<Filter>(r#"{"exact": {"type": 1}}"#).expect_err("not a string");
    assert!(
        bad.to_string()
            .starts_with("filter.exact.type: must be a string"),
        "{bad}"
    );
}

#[test]
fn deserialize_all_reports_indexed_paths() {
    // Goal: a spec struct using `deserialize_with` gets `filters[i]` paths in its errors.
    #[derive(Debug, serde::Deserialize)]
    struct Spec {
        #[serde(deserialize_with = "deserialize_all")]
        filters: Vec<Filter>,
    }
    let spec: Spec = serde_json::from_str(r#"{"filters": [{"cel": "true"}]}"#).expect("parses");
    assert_eq!(spec.filters.len(), 1);
    let text = r#"{"filters": [{"cel": "true"}, {"cel": "true &&"}]}"#;
    let error = serde_json::from_str::<Spec>(text).expect_err("incomplete expression");
    let expected = "filters[1].cel: unexpected end of expression at column 8, expected a value";
    assert!(error.to_string().starts_with(expected), "{error}");
}

#[test]
fn reads_data_only_for_expressions_naming_data() {
    // Goal: callers can tell whether any filter needs the payload.
    let parse = |value: Value| parse_all(&value).expect("parses");
    assert!(!reads_data(&parse(
        json!([{"exact": {"type": "a"}}, {"cel": "has(subject)"}])
    )));
    assert!(reads_data(&parse(
        json!([{"not": {"any": [{"cel": "has(data)"}]}}])
    )));
    assert!(reads_data(&parse(
        json!([{"cel": "type == 'a' || 1 in data.list"}])
    )));
    assert!(!reads_data(&[]));
}

#[test]
fn filter_error_displays_path_then_detail() {
    // Goal: the error's Display is `path: detail`, the form other layers show.
    let error = FilterError {
        path: "filters[0].cel".to_owned(),
        detail: "bad".to_owned(),
    };
    assert_eq!(error.to_string(), "filters[0].cel: bad");
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let names = prop::sample::select(vec![
        "exact", "prefix", "suffix", "all", "any", "not", "cel", "type", "data", "Type", "x",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z(). '=<>!&|]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((names.clone(), inner), 0..3).prop_map(|entries| {
                let map: serde_json::Map<String, Value> = entries
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value))
                    .collect();
                Value::Object(map)
            }),
        ]
    })
}

/// Expression-like text: a mix of the grammar's tokens and stray characters.
fn any_expression() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "data",
        ".",
        "a",
        "[",
        "]",
        "(",
        ")",
        "0",
        "-",
        "!",
        "==",
        "<",
        ">=",
        "&&",
        "||",
        "in",
        "'s'",
        "\"",
        "\\",
        "'",
        "has",
        "size",
        "startsWith",
        "type",
        "null",
        "true",
        ",",
        "1.5e",
        " ",
        "é",
        "=",
        "#",
        "items",
    ]);
    prop::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_any_json(value in any_json()) {
        // Goal: arbitrary JSON gives a filter or an error, and parsed filters round-trip.
        if let Ok(filter) = Filter::parse(&value) {
            prop_assert_eq!(Filter::parse(&filter.to_json()), Ok(filter.clone()));
            filter.matches(&order_event());
        }
        let _ = parse_all(&Value::Array(vec![value]));
    }

    #[test]
    fn expressions_never_panic(text in any_expression(), raw in "\\PC{0,40}") {
        // Goal: any text parses or errors with a column, and what parses evaluates safely.
        for text in [text, raw] {
            match Filter::parse(&json!({ "cel": text })) {
                Ok(filter) => {
                    filter.matches(&order_event());
                }
                Err(error) => prop_assert!(error.detail.contains("column"), "{}", error),
            }
        }
    }
}

// Goal: a field of an attribute other than data is refused when the filter is created, with a
// hint to quote: `type == order.created` (a forgotten quote) could otherwise never match.
#[test]
fn fields_of_plain_attributes_are_refused_with_a_quoting_hint() {
    let message = cel_error("type == order.created");
    assert!(
        message.contains("the attribute order has no fields"),
        "{message}"
    );
    assert!(message.contains("quote it: 'order.created'"), "{message}");
    let quoted = filter(json!({"cel": "type == 'order.created'"}));
    assert!(quoted.matches(&json!({"type": "order.created"})));
    assert!(
        filter(json!({"cel": "data.order.created == 1"}))
            .matches(&json!({"data": {"order": {"created": 1}}}))
    );
}
