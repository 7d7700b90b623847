//! The bodies' JSON Schemas (feature `openapi`), built as the server builds its document: from
//! `#[utoipa::path]` bodies naming keel-api's types as it does (defaults of the generic types,
//! no lifetimes). Checks that every reference resolves, and the points that could silently go
//! wrong: durations, scopes, unknown members, required and nullable members.

use serde_json::{Value, json};
use utoipa::OpenApi;

/// One operation whose answers name every response body, and whose request the bodies the
/// server reads; only the collected components matter.
#[utoipa::path(
    post,
    path = "/bodies",
    request_body = crate::subscriptions::SubscriptionSpec,
    responses(
        (status = 200, body = crate::topics::TopicInfo),
        (status = 201, body = crate::subscriptions::CreatedSubscription),
        (status = 202, body = crate::subscriptions::SubscriptionList),
        (status = 203, body = crate::pull::Pulled),
        (status = 204, body = crate::read::Records),
        (status = 205, body = crate::dead_letters::EntryPage),
        (status = 206, body = crate::state::StateList),
        (status = 207, body = crate::streams::KeyStream),
        (status = 208, body = crate::tokens::CreatedToken),
        (status = 209, body = crate::alerts::AlertList),
        (status = 210, body = crate::health::Readiness),
        (status = 211, body = crate::cluster::ClusterStatus),
        (status = 212, body = crate::pull::AckResult),
        (status = 213, body = crate::publish::PublishResults),
        (status = 214, body = crate::subscriptions::RotatedSecret),
        (status = 215, body = crate::health::Tasks),
        (status = 400, body = crate::problem::Problem),
    ),
)]
#[allow(dead_code)]
fn bodies() {}

#[derive(OpenApi)]
#[openapi(
    paths(bodies),
    components(schemas(
        crate::topics::TopicConfig,
        crate::topics::TopicSettings,
        crate::subscriptions::SubscriptionSettings,
        crate::subscriptions::SeekRequest,
        crate::subscriptions::RotateSecretRequest,
        crate::pull::PullRequest,
        crate::pull::SettleRequest,
        crate::state::CommitAnswer,
        crate::dead_letters::RedriveRequest,
        crate::tokens::TokenRequest,
        crate::alerts::AlertRule,
    ))
)]
struct Document;

/// The document's component schemas, as JSON.
fn schemas() -> Value {
    let document = serde_json::to_value(Document::openapi()).expect("the document serialises");
    document["components"]["schemas"].clone()
}

/// Every `$ref` in `value`.
fn references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(members) => {
            if let Some(Value::String(target)) = members.get("$ref") {
                found.push(target.clone());
            }
            members
                .values()
                .for_each(|member| references(member, found));
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, found)),
        _ => {}
    }
}

/// Whether `schema` lists `member` as required.
fn required(schema: &Value, member: &str) -> bool {
    schema["required"]
        .as_array()
        .is_some_and(|names| names.contains(&json!(member)))
}

// Goal: the document the server builds from these types is whole: every schema a body refers
// to is among the components.
#[test]
fn every_reference_resolves() {
    let schemas = schemas();
    let mut found = Vec::new();
    references(&schemas, &mut found);
    assert!(found.len() > 50, "{found:?}");
    for target in found {
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{target}: not a component"));
        assert!(schemas.get(name).is_some(), "{target} is missing");
    }
}

// Goal: durations are strings of exactly the form `duration::parse` reads; every `Duration`
// member (text or optional text) points at that one schema, not at an object.
#[test]
fn durations_are_text_with_the_parsed_pattern() {
    let schemas = schemas();
    assert_eq!(
        schemas["DurationText"],
        json!({
            "type": "string",
            "pattern": "^[0-9]+(ms|s|m|h|d)$",
            "description": schemas["DurationText"]["description"],
            "examples": ["30s"],
        })
    );
    let duration = json!("#/components/schemas/DurationText");
    assert_eq!(
        schemas["TopicConfig"]["properties"]["fsync_interval"]["$ref"],
        duration
    );
    assert_eq!(
        schemas["Retention"]["properties"]["max_age"]["$ref"],
        duration
    );
    assert_eq!(schemas["AlertRule"]["properties"]["for"]["$ref"], duration);
    assert_eq!(
        schemas["TopicSettings"]["properties"]["dedupe_window"]["$ref"],
        duration
    );
    let mtbf = &schemas["SinkHealth"]["properties"]["mtbf"]["oneOf"];
    assert_eq!(mtbf[0]["$ref"], duration, "{mtbf}");
    assert_eq!(
        mtbf[1],
        json!({"type": "null"}),
        "keel writes null before an outage"
    );
}

// Goal: the hand-written serde impls are described as what they write and read: a scope is a
// string, a start position a name or `{"time": …}` alone, a subscription's sink a sink or null.
#[test]
fn hand_written_bodies_say_what_serde_does() {
    let schemas = schemas();
    assert_eq!(schemas["Scope"]["type"], "string");
    assert_eq!(
        schemas["Scope"]["pattern"],
        "^(admin|(manage|publish|read|consume)(:[A-Za-z0-9._*-]{1,256})?)$"
    );
    let start = &schemas["StartPosition"]["oneOf"];
    assert_eq!(start[0]["enum"], json!(["earliest", "latest"]));
    assert_eq!(start[1]["required"], json!(["time"]));
    assert_eq!(start[1]["additionalProperties"], false);
    let sink = &schemas["Delivery"]["oneOf"];
    assert_eq!(sink[0], json!({"type": "null"}));
    assert_eq!(sink[1]["$ref"], "#/components/schemas/SinkSpec");
    assert_eq!(schemas["Comparison"]["enum"], json!([">", ">=", "<", "<="]));
}

// Goal: a request body that refuses unknown members says so, and an answer that carries a
// spec's members among its own does not refuse them.
#[test]
fn unknown_members_are_refused_where_serde_refuses_them() {
    let schemas = schemas();
    for name in [
        "TopicConfig",
        "SubscriptionSpec",
        "TokenRequest",
        "SettleRequest",
    ] {
        assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
    }
    let info = serde_json::to_string(&schemas["SubscriptionInfo"]).expect("serialise");
    assert!(
        info.contains("\"ack_timeout\""),
        "the spec's members are inline: {info}"
    );
    assert!(!info.contains("additionalProperties"), "{info}");
}

// Goal: required follows what keel writes and reads: a member left out when empty or defaulted
// is optional and (never written as null) not nullable; one keel always writes is required,
// and nullable when it writes null.
#[test]
fn required_and_nullable_follow_serde() {
    let schemas = schemas();
    let token = &schemas["TokenInfo"];
    assert!(!required(token, "expires_at") && !required(token, "limits"));
    assert_eq!(token["properties"]["expires_at"]["type"], "string");
    assert!(required(token, "created_at") && required(token, "expired"));
    let retention = &schemas["Retention"];
    assert!(!required(retention, "max_age") && !required(retention, "max_bytes"));
    // A request body's optional member takes `null` (serde reads it as left out).
    assert_eq!(
        retention["properties"]["max_bytes"]["type"],
        json!(["integer", "null"])
    );
    assert_eq!(retention["properties"]["max_bytes"]["minimum"], 0);
    let topic = &schemas["TopicInfo"];
    assert!(required(topic, "fsync_interval") && required(topic, "retention"));
    assert!(!required(&schemas["TopicConfig"], "partitions"));
    assert!(
        !required(&schemas["CircuitPolicy"], "min_calls"),
        "old specs leave it out"
    );
    let paused = schemas["SubscriptionInfo"]["allOf"][1].clone();
    assert!(required(&paused, "paused"), "{paused}");
    assert_eq!(
        paused["properties"]["paused"]["type"],
        json!(["string", "null"])
    );
    let sink = &schemas["SinkSpec"]["properties"];
    assert_eq!(
        sink["secret"]["type"],
        json!(["string", "null"]),
        "null in describe"
    );
    assert_eq!(sink["url"]["type"], "string");
    let problem = &schemas["Problem"];
    assert!(problem.get("required").is_none(), "{problem}");
    assert_eq!(problem["properties"]["type"]["type"], "string");
}
