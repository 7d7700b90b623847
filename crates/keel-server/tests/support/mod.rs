//! What the API tests share besides the test kit: an event builder, the CloudEvents content
//! types and the problem+json check.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code, unreachable_pub)]

use serde_json::{Value, json};

/// A test event with id `id` and data `{"n": id}`; `extra`'s members are added or replace.
pub fn event(id: &str, extra: Value) -> Value {
    let mut event = json!({"specversion": "1.0", "id": id, "source": "test", "type": "test.event", "data": {"n": id}});
    if let (Some(object), Some(extra)) = (event.as_object_mut(), extra.as_object()) {
        object.extend(extra.clone());
    }
    event
}

/// The CloudEvents structured mode's content type.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// The CloudEvents batched mode's content type.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// Checks a problem+json answer: its status, and that its detail mentions `needle`.
pub fn assert_problem(
    status: u16,
    problem: &Value,
    status_expected: u16,
    needle: &str,
    context: &str,
) {
    assert_eq!(status, status_expected, "{context}: {problem}");
    assert_eq!(problem["status"], status_expected, "{context}: {problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.to_lowercase().contains(&needle.to_lowercase()),
        "{context}: {problem}"
    );
}
