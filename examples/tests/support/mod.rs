//! What the examples' tests share: each example's documented command, and reads of keel's
//! HTTP API.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;

use serde_json::Value;

/// The arguments of an example's one command, the first line of its doc comment
/// (``//! Run: `cargo run -p keel-examples --bin NAME -- ARGS` ``): ARGS, split on spaces.
pub fn documented_args(example: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(example);
    let source = std::fs::read_to_string(&path).expect("read the example");
    let first = source.lines().next().unwrap_or_default();
    let name = example.trim_end_matches(".rs");
    let prefix = format!("//! Run: `cargo run -p keel-examples --bin {name} -- ");
    let args = first
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix('`'))
        .unwrap_or_else(|| panic!("{example} starts with {prefix}ARGS`, not {first:?}"));
    args.split_whitespace().map(str::to_owned).collect()
}

/// `args` with the value after `--name` replaced by `value`; panics when `--name` is not
/// among them (the documented command changed).
pub fn with_arg(mut args: Vec<String>, name: &str, value: &str) -> Vec<String> {
    let at = args
        .iter()
        .position(|arg| arg == name)
        .unwrap_or_else(|| panic!("the documented command has no {name}: {args:?}"));
    args[at + 1] = value.to_owned();
    args
}

/// `GET url`: the status and the body as JSON (a string when it is not JSON).
pub async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.expect("GET");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Whether a subscription has nothing left to do: no lag, nothing in flight or pending.
pub async fn drained(client: &reqwest::Client, url: &str, subscription: &str) -> bool {
    let (status, info) = get(client, &format!("{url}/v1/subscriptions/{subscription}")).await;
    assert_eq!(status, 200, "describe {subscription}: {info}");
    info["lag"] == 0 && info["in_flight"] == 0 && info["pending"] == 0
}

/// Every key's state in a stateful subscription (up to 1,000 keys): key → state.
pub async fn states(
    client: &reqwest::Client,
    url: &str,
    subscription: &str,
) -> std::collections::BTreeMap<String, Value> {
    let listing = format!("{url}/v1/subscriptions/{subscription}/state?max=1000");
    let (status, page) = get(client, &listing).await;
    assert_eq!(status, 200, "{page}");
    assert!(page["next_after"].is_null(), "more than a page of keys");
    page["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|key| {
            (
                key["key"].as_str().expect("a key").to_owned(),
                key["state"].clone(),
            )
        })
        .collect()
}
