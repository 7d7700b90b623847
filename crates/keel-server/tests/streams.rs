//! Event-sourced streams over the HTTP API, against a real server on a real socket with real
//! files: reading one key's events with versions, conditional appends in every CloudEvents
//! mode, racing clients, restarts, and bad input that must append nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use keel_testkit::server::TestServer;
use reqwest::Method;
use serde_json::{Value, json};
use support::{BATCH, STRUCTURED, assert_problem, event};

const TOPIC: &str = "accounts";

async fn setup_on(server: TestServer) -> TestServer {
    let (status, body) = server.put_topic(TOPIC, json!({"partitions": 4})).await;
    assert_eq!(status, 201, "{body}");
    server
}

fn keyed(id: &str, key: &str) -> Value {
    event(id, json!({"partitionkey": key}))
}

/// `POST /v1/topics/accounts/events[?expected_version=N]` with a body.
async fn append(
    server: &TestServer,
    expected: Option<u64>,
    content_type: &str,
    body: String,
) -> (u16, Value) {
    let query = expected.map_or(String::new(), |n| format!("?expected_version={n}"));
    let path = format!("/v1/topics/{TOPIC}/events{query}");
    let (status, answer, _) = server
        .request(Method::POST, &path, Some(content_type), body)
        .await;
    (status, answer)
}

async fn stream(server: &TestServer, key: &str, query: &str) -> (u16, Value) {
    server
        .get(&format!("/v1/topics/{TOPIC}/keys/{key}/events?{query}"))
        .await
}

fn ids(stream: &Value) -> Vec<String> {
    stream["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"]["id"].as_str().unwrap().to_owned())
        .collect()
}

fn versions(stream: &Value) -> Vec<u64> {
    stream["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_u64().unwrap())
        .collect()
}

// Goal: a key's stream answers its events, and only its, in log order with versions 1..N and
// the key's version; paging by from_version and max walks it; an unknown key is version 0
// with no records (not 404); bad ranges are precise 400s. Method: two keys published
// interleaved (plain publishes, a batch among them), then reads.
#[tokio::test]
async fn key_stream_reads_one_keys_events_in_order_with_versions() {
    let server = setup_on(TestServer::start_in_temp_dir().await).await;
    for n in 0..5 {
        let body = keyed(&format!("a{n}"), "alice").to_string();
        assert_eq!(append(&server, None, STRUCTURED, body).await.0, 200);
        let batch = json!([
            keyed(&format!("b{n}"), "bob"),
            event(&format!("x{n}"), json!({}))
        ]);
        assert_eq!(append(&server, None, BATCH, batch.to_string()).await.0, 200);
    }
    let (status, alice) = stream(&server, "alice", "").await;
    assert_eq!(status, 200, "{alice}");
    assert_eq!(alice["key"], "alice");
    assert_eq!(ids(&alice), ["a0", "a1", "a2", "a3", "a4"]);
    assert_eq!(versions(&alice), [1, 2, 3, 4, 5]);
    assert_eq!(alice["version"], 5);
    assert_eq!(alice["next_version"], 6);
    let first = &alice["records"][0];
    assert!(
        first["partition"].is_u64() && first["offset"].is_u64(),
        "{first}"
    );
    assert!(
        first["timestamp"].as_str().unwrap().ends_with('Z'),
        "{first}"
    );

    let (_, page) = stream(&server, "alice", "from_version=2&max=2").await;
    assert_eq!(ids(&page), ["a1", "a2"]);
    assert_eq!(page["next_version"], 4);
    assert_eq!(page["version"], 5);
    let (_, past) = stream(&server, "alice", "from_version=9").await;
    assert_eq!(versions(&past), Vec::<u64>::new());
    assert_eq!(past["version"], 5);

    let (_, bob) = stream(&server, "bob", "").await;
    assert_eq!(ids(&bob), ["b0", "b1", "b2", "b3", "b4"]);
    let slashed = keyed("s0", "order/7 é").to_string();
    assert_eq!(append(&server, Some(0), STRUCTURED, slashed).await.0, 200);
    let (status, encoded) = stream(&server, "order%2F7%20%C3%A9", "").await;
    assert_eq!(
        (status, ids(&encoded)),
        (200, vec!["s0".to_owned()]),
        "{encoded}"
    );
    assert_eq!(encoded["key"], "order/7 é");
    let (status, nobody) = stream(&server, "nobody", "").await;
    assert_eq!(status, 200, "{nobody}");
    assert_eq!(nobody["version"], 0);
    assert_eq!(nobody["records"], json!([]));

    for (query, needle) in [
        ("from_version=0", "from_version must be at least 1"),
        ("max=0", "max must be between 1 and 1000"),
        ("max=1001", "max must be between 1 and 1000"),
        ("from_version=x", "invalid query"),
        ("frm=1", "invalid query"),
    ] {
        let (status, problem) = stream(&server, "alice", query).await;
        assert_problem(status, &problem, 400, needle, query);
    }
    let (status, problem) = server.get("/v1/topics/missing/keys/alice/events").await;
    assert_problem(status, &problem, 404, "does not exist", "missing topic");
}

// Goal: a conditional append succeeds only at the key's version, in all three CloudEvents
// modes; a stale one is a 409 problem with `current_version`; mixed keys, a keyless event and
// a bad expected_version are precise 400s that append nothing; a retry of a successful append
// answers its original positions as duplicates whatever the version now.
#[tokio::test]
async fn conditional_appends_check_the_version_and_retries_are_idempotent() {
    let server = setup_on(TestServer::start_in_temp_dir().await).await;
    let first = keyed("open", "acct-1").to_string();
    let (status, opened) = append(&server, Some(0), STRUCTURED, first.clone()).await;
    assert_eq!(status, 200, "{opened}");
    assert_eq!(opened["version"], 1);
    assert_eq!(opened["results"][0]["duplicate"], false);

    let (status, problem) = append(
        &server,
        Some(0),
        STRUCTURED,
        keyed("open-again", "acct-1").to_string(),
    )
    .await;
    assert_problem(
        status,
        &problem,
        409,
        "is at version 1, not the expected version 0",
        "stale",
    );
    assert_eq!(problem["current_version"], 1, "{problem}");
    assert_eq!(problem["type"], "about:blank");

    let batch = json!([keyed("deposit-1", "acct-1"), keyed("deposit-2", "acct-1")]).to_string();
    let (status, body) = append(&server, Some(1), BATCH, batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 3);

    let path = format!("/v1/topics/{TOPIC}/events?expected_version=3");
    let response = server
        .client
        .post(format!("{}{path}", server.url))
        .header("ce-specversion", "1.0")
        .header("ce-id", "withdraw-1")
        .header("ce-source", "test")
        .header("ce-type", "test.event")
        .header("ce-partitionkey", "acct-1")
        .header("content-type", "application/json")
        .body(r#"{"amount": 5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["version"], 4, "{body}");

    let bad = [
        (
            json!([keyed("m1", "acct-1"), keyed("m2", "acct-2")]),
            BATCH,
            "the event at index 1 has partitionkey \"acct-2\" but the first has \"acct-1\"",
        ),
        (
            json!([keyed("m3", "acct-1"), event("m4", json!({}))]),
            BATCH,
            "the event at index 1 has no partitionkey",
        ),
        (
            event("m5", json!({})),
            STRUCTURED,
            "the event has no partitionkey",
        ),
    ];
    for (body, content_type, needle) in bad {
        let (status, problem) = append(&server, Some(4), content_type, body.to_string()).await;
        assert_problem(status, &problem, 400, needle, needle);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("nothing was appended")
        );
    }
    let path = format!("/v1/topics/{TOPIC}/events?expected_version=-1");
    let (status, problem, _) = server
        .request(
            Method::POST,
            &path,
            Some(STRUCTURED),
            keyed("m6", "acct-1").to_string(),
        )
        .await;
    assert_problem(
        status,
        &problem,
        400,
        "expected_version is a whole number",
        "negative",
    );
    let offsets: u64 = server.next_offsets(TOPIC).await.iter().sum();
    assert_eq!(offsets, 4, "nothing was appended by the refused requests");

    // A retry of the first append, after the key moved on: its original position, as a
    // duplicate, and nothing appended.
    let (status, retried) = append(&server, Some(0), STRUCTURED, first).await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["results"][0]["duplicate"], true);
    assert_eq!(
        retried["results"][0]["offset"],
        opened["results"][0]["offset"]
    );
    assert!(retried.get("version").is_none(), "{retried}");
    let (_, account) = stream(&server, "acct-1", "").await;
    assert_eq!(
        ids(&account),
        ["open", "deposit-1", "deposit-2", "withdraw-1"]
    );
    assert_eq!(account["version"], 4);
}

// Goal: many clients racing conditional appends on one key never double or skip a version:
// each version 1..=N is held by exactly one event, and every client's events are there once.
// Method: 16 tasks each append 6 events, one at a time, each starting from version 0 and on
// a 409 retrying with the `current_version` it returned.
#[tokio::test]
async fn racing_conditional_appends_win_each_version_once() {
    const CLIENTS: usize = 16;
    const EVENTS_PER_CLIENT: usize = 6;
    let server = Arc::new(setup_on(TestServer::start_in_temp_dir().await).await);
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let (mut expected, mut conflicts) = (0, 0);
            for n in 0..EVENTS_PER_CLIENT {
                let body = keyed(&format!("c{client}-{n}"), "hot").to_string();
                loop {
                    let (status, answer) =
                        append(&server, Some(expected), STRUCTURED, body.clone()).await;
                    match status {
                        200 => {
                            expected = answer["version"].as_u64().unwrap();
                            break;
                        }
                        409 => {
                            conflicts += 1;
                            expected = answer["current_version"].as_u64().unwrap();
                        }
                        other => panic!("unexpected {other}: {answer}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    let total = (CLIENTS * EVENTS_PER_CLIENT) as u64;
    let (status, hot) = stream(&server, "hot", "max=1000").await;
    assert_eq!(status, 200, "{hot}");
    assert_eq!(hot["version"], total);
    assert_eq!(versions(&hot), (1..=total).collect::<Vec<_>>());
    let unique: BTreeSet<String> = ids(&hot).into_iter().collect();
    assert_eq!(unique.len() as u64, total, "no event twice");
    let offsets: u64 = server.next_offsets(TOPIC).await.iter().sum();
    assert_eq!(offsets, total, "no event appended beside the stream");
    assert!(conflicts > 0, "the clients did race");
}

// Goal: the key index survives a graceful restart (versions and records as before, appends
// continue at the next version), and deleting the topic deletes its index file, so a new
// topic of the same name starts every key at version 0.
#[tokio::test]
async fn key_index_survives_a_restart_and_goes_with_its_topic() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = setup_on(TestServer::start(data_dir.path()).await).await;
    for n in 0..3 {
        let body = keyed(&format!("e{n}"), "acct").to_string();
        assert_eq!(append(&server, Some(n), STRUCTURED, body).await.0, 200);
    }
    let index_file = data_dir.path().join("topics").join(TOPIC).join("keys.redb");
    assert!(
        index_file.is_file(),
        "the index lives in the topic's directory"
    );
    server.stop().await;

    let server = TestServer::start(data_dir.path()).await;
    let (_, account) = stream(&server, "acct", "").await;
    assert_eq!(ids(&account), ["e0", "e1", "e2"]);
    assert_eq!(versions(&account), [1, 2, 3]);
    let (status, problem) = append(
        &server,
        Some(2),
        STRUCTURED,
        keyed("e3", "acct").to_string(),
    )
    .await;
    assert_eq!(problem["current_version"], 3, "{status} {problem}");
    let (status, body) = append(
        &server,
        Some(3),
        STRUCTURED,
        keyed("e3", "acct").to_string(),
    )
    .await;
    assert_eq!((status, body["version"].clone()), (200, json!(4)), "{body}");

    let (status, body, _) = server
        .request(Method::DELETE, &format!("/v1/topics/{TOPIC}"), None, "")
        .await;
    assert!(status == 200 || status == 204, "{status} {body}");
    assert!(!index_file.exists(), "the index went with the topic");
    let server = setup_on(server).await;
    let (_, account) = stream(&server, "acct", "").await;
    assert_eq!(account["version"], 0, "{account}");
    server.stop().await;
}
