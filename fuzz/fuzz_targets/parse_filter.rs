//! Fuzzes the subscription filter parser and the `cel` expression parser, and evaluates what
//! they accept: no input may panic, and an accepted filter list parses back from its JSON to
//! the same filters.
//!
//! Input: a JSON array of filter objects (what a subscription's `filters` holds), or a single
//! filter object; any UTF-8 input is also parsed as the text of a `cel` filter.

#![no_main]

use keel_engine::filter::{self, Filter};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// Events the accepted filters are evaluated on: attributes, extensions and JSON data, and a
/// `data_base64` payload read as JSON.
fn events() -> [Value; 2] {
    [
        json!({"specversion": "1.0", "id": "1", "source": "/shop", "type": "order.created",
               "subject": "o-1", "partitionkey": "k", "flag": true, "count": 42,
               "datacontenttype": "application/json",
               "data": {"amount": 250.5, "currency": "EUR", "items": [{"sku": "a"}, "x", null],
                        "weird key": {"": [1, 2]}}}),
        json!({"specversion": "1.0", "id": "2", "source": "/s", "type": "t",
               "datacontenttype": "application/json", "data_base64": "eyJhIjogWzEsIDJdfQ=="}),
    ]
}

fn check(filters: &[Filter]) {
    let round_trip: Value = filters.iter().map(Filter::to_json).collect();
    let parsed = filter::parse_all(&round_trip).expect("a filter's own JSON parses");
    assert_eq!(parsed, filters, "{round_trip}");
    for event in events() {
        let _ = filter::matches_all(filters, &event);
    }
    let _ = filter::reads_data(filters);
}

fuzz_target!(|input: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<Value>(input) {
        if let Ok(filters) = filter::parse_all(&value) {
            check(&filters);
        }
        if let Ok(filter) = Filter::parse(&value) {
            check(&[filter]);
        }
    }
    if let Ok(text) = std::str::from_utf8(input)
        && let Ok(filter) = Filter::parse(&json!({ "cel": text }))
    {
        check(&[filter]);
    }
});
