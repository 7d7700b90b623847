//! Stateful subscriptions over the HTTP API, against a real server on a real socket with real
//! files: state carried by pulls and committed by acks with the events they emit, reading
//! state back, staleness, restarts, and bad input that must commit nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use keel_testkit::server::TestServer;
use reqwest::Method;
use serde_json::{Value, json};
use support::{STRUCTURED, assert_problem, event};

const PATIENCE: Duration = Duration::from_secs(5);

async fn send(server: &TestServer, method: Method, path: &str, body: Value) -> (u16, Value) {
    let (status, answer, _) = server
        .request(method, path, Some("application/json"), body.to_string())
        .await;
    (status, answer)
}

/// Topic `orders` (2 partitions), topic `invoices`, and a stateful pull subscription `ledger`
/// on `orders` from the earliest event.
async fn setup() -> TestServer {
    setup_on(TestServer::start_in_temp_dir().await).await
}

async fn setup_on(server: TestServer) -> TestServer {
    for (topic, partitions) in [("orders", 2), ("invoices", 1)] {
        let (status, body) = server
            .put_topic(topic, json!({"partitions": partitions}))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let spec = json!({"topic": "orders", "ordering": "key", "stateful": true, "start": "earliest"});
    let (status, body) = send(&server, Method::PUT, "/v1/subscriptions/ledger", spec).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["stateful"], true, "{body}");
    server
}

async fn publish(server: &TestServer, id: &str, key: &str, amount: i64) {
    let event = event(id, json!({"partitionkey": key, "data": {"amount": amount}}));
    let (status, body) = server
        .publish("orders", STRUCTURED, event.to_string())
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn pull(server: &TestServer, max: usize) -> Vec<Value> {
    let (status, body) = send(
        server,
        Method::POST,
        "/v1/subscriptions/ledger/pull",
        json!({"max": max, "wait": "200ms"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["messages"].as_array().unwrap().clone()
}

async fn ack(server: &TestServer, body: Value) -> (u16, Value) {
    send(server, Method::POST, "/v1/subscriptions/ledger/ack", body).await
}

/// The new balance for a pulled deposit: its key's state plus its amount.
fn balance_after(message: &Value) -> i64 {
    let before = message["state"]["balance"].as_i64().unwrap_or(0);
    before + message["event"]["data"]["amount"].as_i64().unwrap()
}

/// Pulls and acks every deposit with the new balance and an invoice to emit, until `count`
/// were applied; returns the pulled messages in order.
async fn consume(server: &TestServer, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    while seen.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} came",
            seen.len()
        );
        for message in pull(server, 10).await {
            let balance = balance_after(&message);
            let invoice = json!({"specversion": "1.0", "source": "ledger", "type": "invoice",
                "partitionkey": message["event"]["partitionkey"], "data": {"balance": balance}});
            let (status, answer) = ack(
                server,
                json!({"acks": [{"ack_id": message["ack_id"], "state": {"balance": balance},
                    "emit": [{"topic": "invoices", "event": invoice}]}]}),
            )
            .await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["results"][0]["outcome"], "applied", "{answer}");
            seen.push(message);
        }
    }
    seen
}

// Goal: a pull carries each key's state and version, an ack with state commits it with its
// emitted event, and the state reads back by key and in the listing. Method: five deposits
// over two keys, consumed one ack at a time.
#[tokio::test]
async fn acks_commit_state_and_emitted_events() {
    let server = setup().await;
    for (n, (key, amount)) in [("a", 10), ("b", 5), ("a", 7), ("a", -2), ("b", 1)]
        .into_iter()
        .enumerate()
    {
        publish(&server, &format!("d{n}"), key, amount).await;
    }
    let seen = consume(&server, 5).await;
    // Each key's versions count up from 0, one per commit, in its events' order.
    for key in ["a", "b"] {
        let versions: Vec<u64> = seen
            .iter()
            .filter(|m| m["event"]["partitionkey"] == key)
            .map(|m| m["state_version"].as_u64().unwrap())
            .collect();
        assert_eq!(versions, (0..versions.len() as u64).collect::<Vec<_>>());
    }
    let (status, a) = server.get("/v1/subscriptions/ledger/state/a").await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["state"], json!({"balance": 15}));
    assert_eq!(a["version"], 3);
    let (_, b) = server.get("/v1/subscriptions/ledger/state/b").await;
    assert_eq!(
        (b["state"]["balance"].as_i64(), b["version"].as_u64()),
        (Some(6), Some(2))
    );
    let (status, page) = server.get("/v1/subscriptions/ledger/state?max=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["keys"][0]["key"], "a");
    assert_eq!(page["next_after"], "a");
    let (_, rest) = server.get("/v1/subscriptions/ledger/state?after=a").await;
    assert_eq!(rest["keys"][0]["key"], "b");
    assert!(rest.get("next_after").is_none(), "{rest}");
    // The invoices went out once each, with ids derived from their source events.
    let (_, read) = server.read("invoices", 0, "from=0&max=100").await;
    let records = read["records"].as_array().unwrap();
    assert_eq!(records.len(), 5, "{read}");
    let ids: std::collections::BTreeSet<&str> = records
        .iter()
        .map(|r| r["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5);
    assert!(ids.iter().all(|id| id.starts_with("ledger:")), "{ids:?}");
    let (status, missing) = server.get("/v1/subscriptions/ledger/state/nobody").await;
    assert_problem(status, &missing, 404, "no state", "unknown key");
}

// Goal: a second commit for the same delivery is refused and changes nothing; `null` deletes
// a key's state while its version stays; a plain ack commits an unchanged state.
#[tokio::test]
async fn a_second_commit_is_stale_and_null_deletes() {
    let server = setup().await;
    publish(&server, "d0", "k", 3).await;
    publish(&server, "d1", "k", 4).await;
    publish(&server, "d2", "k", 5).await;
    let first = pull(&server, 10).await;
    assert_eq!(first.len(), 1, "one event of a key at a time: {first:?}");
    let commit = json!({"acks": [{"ack_id": first[0]["ack_id"], "state": {"balance": 3}}]});
    let (status, answer) = ack(&server, commit.clone()).await;
    assert_eq!(
        (status, answer["settled"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );
    let (status, again) = ack(&server, commit).await;
    assert_problem(status, &again, 409, "stale", "the same commit again");
    assert_eq!(
        again["stale_ack_ids"],
        json!([first[0]["ack_id"]]),
        "{again}"
    );
    let (_, state) = server.get("/v1/subscriptions/ledger/state/k").await;
    assert_eq!(
        (state["version"].as_u64(), state["offset"].as_u64()),
        (Some(1), first[0]["offset"].as_u64())
    );
    // A plain ack: the state stays, the version counts the commit.
    let second = pull(&server, 10).await;
    assert_eq!(second[0]["state"], json!({"balance": 3}));
    let (status, answer) = ack(&server, json!({"ack_ids": [second[0]["ack_id"]]})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["state_version"], 2, "{answer}");
    let third = pull(&server, 10).await;
    assert_eq!(
        (
            third[0]["state"].clone(),
            third[0]["state_version"].as_u64()
        ),
        (json!({"balance": 3}), Some(2))
    );
    let (status, _) = ack(
        &server,
        json!({"acks": [{"ack_id": third[0]["ack_id"], "state": null}]}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, gone) = server.get("/v1/subscriptions/ledger/state/k").await;
    assert_problem(status, &gone, 404, "no state", "deleted state");
}

/// How a test takes a subscription down and up again.
enum Bounce {
    /// keel stops and starts on the same data directory.
    Restart,
    /// The subscription is updated in place (a new `ack_timeout`): stopped and opened again
    /// from its logs and state table, with keel running.
    Update,
}

// Goal: committed state survives a restart, and events whose commits were applied are not
// delivered again. Method: commit two of three deposits, restart, pull.
#[tokio::test]
async fn state_survives_a_restart_and_applied_events_stay_done() {
    applied_state_survives(Bounce::Restart).await;
}

// Goal: an update in place of a stateful subscription keeps its state (its table is closed
// and opened again, never twice at once), and applied events stay done. Method: as across a
// restart, with an update of ack_timeout instead.
#[tokio::test]
async fn state_survives_an_update_in_place_and_applied_events_stay_done() {
    applied_state_survives(Bounce::Update).await;
}

/// Commits two of three deposits, bounces the subscription, then checks both keys' state and
/// that only the third deposit comes back.
async fn applied_state_survives(bounce: Bounce) {
    let kept = tempfile::tempdir().unwrap();
    let server = setup_on(TestServer::start(kept.path()).await).await;
    for n in 0..3 {
        publish(&server, &format!("d{n}"), &format!("k{n}"), 10).await;
    }
    let messages = pull(&server, 10).await;
    assert_eq!(messages.len(), 3);
    let acks: Vec<Value> = messages[..2]
        .iter()
        .map(|m| json!({"ack_id": m["ack_id"], "state": {"balance": balance_after(m)}}))
        .collect();
    let applied_keys: Vec<Value> = messages[..2]
        .iter()
        .map(|m| m["event"]["partitionkey"].clone())
        .collect();
    let (status, answer) = ack(&server, json!({"acks": acks})).await;
    assert_eq!(status, 200, "{answer}");
    let server = match bounce {
        Bounce::Restart => {
            server.stop().await;
            TestServer::start(kept.path()).await
        }
        Bounce::Update => {
            let spec = json!({"topic": "orders", "ordering": "key", "stateful": true,
                "ack_timeout": "1m"});
            let path = "/v1/subscriptions/ledger";
            let (status, body) = send(&server, Method::PUT, path, spec).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["changed"], json!(["ack_timeout"]), "{body}");
            server
        }
    };
    for key in &applied_keys {
        let (status, state) = server
            .get(&format!(
                "/v1/subscriptions/ledger/state/{}",
                key.as_str().unwrap()
            ))
            .await;
        assert_eq!(
            (status, state["state"]["balance"].as_i64()),
            (200, Some(10)),
            "{state}"
        );
    }
    let again = pull(&server, 10).await;
    assert_eq!(
        again.len(),
        1,
        "only the unacked event comes back: {again:?}"
    );
    assert!(!applied_keys.contains(&again[0]["event"]["partitionkey"]));
    server.stop().await;
}

// Goal: bad input gets a precise 4xx problem and commits nothing: the delivery stays
// outstanding and a correct ack then applies. Method: each bad ack against one pulled event.
#[tokio::test]
async fn bad_commits_are_refused_whole() {
    let server = setup().await;
    publish(&server, "d0", "k", 1).await;
    let message = pull(&server, 1).await.remove(0);
    let id = message["ack_id"].clone();
    let big = "x".repeat(70 * 1024);
    let cases = [
        (
            json!({"acks": [{"ack_id": id, "state": {"blob": big}}]}),
            413,
            "over the limit",
        ),
        (
            json!({"acks": [{"ack_id": id, "emit": [{"topic": "nowhere", "event": {"specversion": "1.0", "source": "s", "type": "t"}}]}]}),
            400,
            "does not exist",
        ),
        (
            json!({"acks": [{"ack_id": id, "emit": [{"topic": "invoices", "event": {"type": "t"}}]}]}),
            400,
            "not a valid CloudEvent",
        ),
        (
            json!({"acks": [{"ack_id": id, "emit": [{"topic": "invoices", "event": [1]}]}]}),
            400,
            "JSON object",
        ),
        (
            json!({"acks": [{"ack_id": id, "state": 1, "colour": "red"}]}),
            400,
            "colour",
        ),
        (
            json!({"acks": [{"ack_id": "not-an-ack-id", "state": 1}]}),
            400,
            "malformed ack id",
        ),
    ];
    for (body, status_expected, needle) in cases {
        let (status, problem) = ack(&server, body.clone()).await;
        assert_problem(status, &problem, status_expected, needle, &body.to_string());
    }
    let (status, raw, _) = server
        .request(
            Method::POST,
            "/v1/subscriptions/ledger/ack",
            Some("application/json"),
            r#"{"acks": [{"ack_id": "x", "state": {"a": }]}"#,
        )
        .await;
    assert_problem(status, &raw, 400, "", "state that is not JSON");
    let (status, nothing) = server.get("/v1/subscriptions/ledger/state/k").await;
    assert_eq!(status, 404, "nothing was committed: {nothing}");
    let (status, answer) = ack(
        &server,
        json!({"acks": [{"ack_id": id, "state": {"ok": true}}]}),
    )
    .await;
    assert_eq!(
        (status, answer["results"][0]["outcome"].as_str()),
        (200, Some("applied")),
        "{answer}"
    );
    // A subscription that is not stateful takes no state, and a stateful one needs key order.
    let spec = json!({"topic": "orders", "start": "earliest"});
    send(&server, Method::PUT, "/v1/subscriptions/plain", spec).await;
    let (_, pulled) = send(
        &server,
        Method::POST,
        "/v1/subscriptions/plain/pull",
        json!({"max": 1, "wait": "1s"}),
    )
    .await;
    let plain_id = pulled["messages"][0]["ack_id"].clone();
    let (status, problem) = send(
        &server,
        Method::POST,
        "/v1/subscriptions/plain/ack",
        json!({"acks": [{"ack_id": plain_id, "state": 1}]}),
    )
    .await;
    assert_problem(
        status,
        &problem,
        400,
        "not stateful",
        "state on a plain subscription",
    );
    let (status, problem) = server.get("/v1/subscriptions/plain/state/k").await;
    assert_problem(
        status,
        &problem,
        400,
        "not stateful",
        "reading state of a plain subscription",
    );
    let spec = json!({"topic": "orders", "stateful": true});
    let (status, problem) = send(&server, Method::PUT, "/v1/subscriptions/unordered", spec).await;
    assert_problem(
        status,
        &problem,
        400,
        "ordering",
        "stateful without key order",
    );
}

// Goal: a keyless event of a stateful subscription is pulled with `"state": null` and version
// 0 (the documented shape); the state limit counts the state as stored (compacted), so one
// over 64 KiB only by its whitespace is taken, stored on one line, and one over it compacted
// is refused.
#[tokio::test]
async fn keyless_events_carry_null_state_and_the_limit_counts_stored_bytes() {
    let server = setup().await;
    let keyless = event("n0", json!({"data": {"amount": 1}}));
    let (status, body) = server
        .publish("orders", STRUCTURED, keyless.to_string())
        .await;
    assert_eq!(status, 200, "{body}");
    let message = pull(&server, 1).await.remove(0);
    assert_eq!(
        (message.get("state"), message.get("state_version")),
        (Some(&Value::Null), Some(&json!(0))),
        "{message}"
    );
    let (status, answer) = ack(&server, json!({"ack_ids": [message["ack_id"]]})).await;
    assert_eq!(status, 200, "{answer}");

    publish(&server, "d0", "k", 1).await;
    let message = pull(&server, 1).await.remove(0);
    let id = message["ack_id"].as_str().expect("ack id");
    // 60 KiB of data in 100 members, padded past 64 KiB by spaces between tokens.
    let space = " ".repeat(40);
    let members: Vec<String> = (0..100)
        .map(|index| format!("\"m{index}\"{space}:{space}\"{}\"", "x".repeat(600)))
        .collect();
    let padded = format!("{{{space}{}{space}}}", members.join(&format!(",{space}")));
    assert!(padded.len() > 64 * 1024, "padded to {} bytes", padded.len());
    let body = format!(r#"{{"acks": [{{"ack_id": "{id}", "state": {padded}}}]}}"#);
    let (status, answer, _) = server
        .request(
            Method::POST,
            "/v1/subscriptions/ledger/ack",
            Some("application/json"),
            body,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, stored) = server.get("/v1/subscriptions/ledger/state/k").await;
    assert_eq!(status, 200, "{stored}");
    let compacted = stored["state"].to_string();
    assert!(compacted.len() < 64 * 1024, "{} bytes", compacted.len());
    assert_eq!(stored["state"]["m99"].as_str().map(str::len), Some(600));

    publish(&server, "d1", "k", 1).await;
    let message = pull(&server, 1).await.remove(0);
    let big = "x".repeat(65 * 1024);
    let (status, problem) = ack(
        &server,
        json!({"acks": [{"ack_id": message["ack_id"], "state": {"blob": big}}]}),
    )
    .await;
    assert_problem(
        status,
        &problem,
        413,
        "over the limit",
        "a compacted state too large",
    );
}

// Goal: a rebuild drops the state and replays the topic, so a fixed handler recomputes the
// state from history; the replayed commits emit nothing (their events went out the first
// time); an ack with state from before the rebuild is stale. Method: consume three deposits
// with a "buggy" handler, rebuild, consume them again with the fixed one.
#[tokio::test]
async fn rebuild_recomputes_state_from_history() {
    let server = setup().await;
    for (n, amount) in [10, 20, 30].into_iter().enumerate() {
        publish(&server, &format!("d{n}"), "acct", amount).await;
    }
    consume(&server, 3).await;
    let (_, before) = server.get("/v1/subscriptions/ledger/state/acct").await;
    assert_eq!(
        (
            before["state"]["balance"].as_i64(),
            before["version"].as_u64()
        ),
        (Some(60), Some(3))
    );
    publish(&server, "d3", "acct", 40).await;
    let held = pull(&server, 1).await;
    assert_eq!(held.len(), 1);
    let (status, info) = send(
        &server,
        Method::POST,
        "/v1/subscriptions/ledger/state/rebuild",
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{info}");
    let (status, gone) = server.get("/v1/subscriptions/ledger/state/acct").await;
    assert_eq!(status, 404, "the state was dropped: {gone}");
    let stale = json!({"acks": [{"ack_id": held[0]["ack_id"], "state": {"balance": 0}}]});
    let (status, problem) = ack(&server, stale).await;
    assert_problem(
        status,
        &problem,
        409,
        "stale",
        "an ack from before the rebuild",
    );
    // The fixed handler: amounts count double.
    let deadline = Instant::now() + PATIENCE;
    let mut replayed = 0;
    while replayed < 4 {
        assert!(Instant::now() < deadline, "only {replayed} of 4 replayed");
        for message in pull(&server, 10).await {
            let before = message["state"]["balance"].as_i64().unwrap_or(0);
            let balance = before + 2 * message["event"]["data"]["amount"].as_i64().unwrap();
            let invoice =
                json!({"specversion": "1.0", "source": "ledger", "type": "invoice", "data": {}});
            let body = json!({"acks": [{"ack_id": message["ack_id"], "state": {"balance": balance},
                "emit": [{"topic": "invoices", "event": invoice}]}]});
            let (status, answer) = ack(&server, body).await;
            assert_eq!(status, 200, "{answer}");
            replayed += 1;
        }
    }
    let (_, after) = server.get("/v1/subscriptions/ledger/state/acct").await;
    assert_eq!(
        (
            after["state"]["balance"].as_i64(),
            after["version"].as_u64()
        ),
        (Some(200), Some(4))
    );
    // Three invoices from the first run; the replay emitted only for the new deposit.
    let (_, read) = server.read("invoices", 0, "from=0&max=100").await;
    assert_eq!(read["records"].as_array().unwrap().len(), 4, "{read}");
    let (status, _) = server.get("/v1/subscriptions/ledger/state/rebuild").await;
    assert_eq!(status, 404, "GET state/rebuild reads the key named rebuild");
}

// Goal: a subscription deleted and created again under its name emits events with new ids,
// so the target topic's dedupe does not take them for its predecessor's (found by review).
// Method: the same event committed with an emit by each incarnation; both receipts stored.
#[tokio::test]
async fn a_recreated_subscription_emits_under_new_ids() {
    let server = setup().await;
    publish(&server, "d0", "k", 1).await;
    consume(&server, 1).await;
    let (status, _) = send(
        &server,
        Method::DELETE,
        "/v1/subscriptions/ledger",
        Value::Null,
    )
    .await;
    assert_eq!(status, 204);
    let spec = json!({"topic": "orders", "ordering": "key", "stateful": true, "start": "earliest"});
    let (status, body) = send(&server, Method::PUT, "/v1/subscriptions/ledger", spec).await;
    assert_eq!(status, 201, "{body}");
    consume(&server, 1).await;
    let (_, read) = server.read("invoices", 0, "from=0&max=100").await;
    let ids: Vec<&str> = read["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        2,
        "both incarnations' receipts are stored: {read}"
    );
    assert_ne!(ids[0], ids[1]);
}
