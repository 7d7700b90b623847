//! The HTTP API against a real server on a real socket with real files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use keel_testkit::server::TestServer;
use reqwest::Method;
use serde_json::{Value, json};
use support::{BATCH, STRUCTURED, assert_problem, event};

// Goal: create is idempotent and conflicts are 409; list, describe and delete behave; bad
// names and configs are precise 400s. Method: the full lifecycle over HTTP.
#[tokio::test]
async fn topic_lifecycle_create_is_idempotent_and_conflicts_are_409() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let config = json!({"partitions": 3, "retention": {"max_age": "7d", "max_bytes": null}});
    assert_eq!(server.put_topic("orders", config.clone()).await.0, 201);
    let (status, body) = server.put_topic("orders", config).await;
    assert_eq!(status, 200);
    assert_eq!(body["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(body["retention"]["max_age"], "7d");
    let (status, body) = server.put_topic("orders", json!({"partitions": 4})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("already exists"),
        "{body}"
    );
    let (status, body) = server.get("/v1/topics").await;
    assert_eq!(status, 200);
    assert_eq!(body["topics"][0]["name"], "orders");
    let partition = &server.get("/v1/topics/orders").await.1["partitions"][2];
    assert_eq!(
        (
            partition["partition"].as_u64(),
            partition["start_offset"].as_u64(),
            partition["next_offset"].as_u64()
        ),
        (Some(2), Some(0), Some(0))
    );
    let topic_dir = dir.path().join("topics/orders");
    assert!(topic_dir.exists());
    let (status, _, _) = server
        .request(Method::DELETE, "/v1/topics/orders", None, "")
        .await;
    assert_eq!(status, 204);
    assert!(!topic_dir.exists(), "delete removes the topic's files");
    assert_eq!(server.get("/v1/topics/orders").await.0, 404);
    for (name, config, needle) in [
        ("_internal", json!({}), "invalid topic name"),
        ("a%20b", json!({}), "invalid topic name"),
        ("ok", json!({"partitions": 0}), "partitions must be between"),
        ("ok", json!({"partitons": 2}), "unknown field"),
        (
            "ok",
            json!({"retention": {"max_age": "7 days"}}),
            "invalid duration",
        ),
    ] {
        let (status, body) = server.put_topic(name, config).await;
        assert_problem(status, &body, 400, needle, name);
    }
    server.stop().await;
}

// Goal: an event round-trips in each mode: structured and batched bytes come back as the
// same JSON value, binary-mode data (JSON, text, bytes) comes back as data or data_base64.
#[tokio::test]
async fn published_events_read_back_unchanged_in_all_three_modes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({"partitions": 1})).await;
    let structured = event(
        "s1",
        json!({"time": "2026-11-25T10:00:00.5+01:00", "amount": 150, "flag": true, "data": {"price": 1.50}}),
    );
    let (status, body) = server
        .publish("t", STRUCTURED, structured.to_string())
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"],
        json!([{"id": "s1", "partition": 0, "offset": 0, "duplicate": false}])
    );
    let batch = json!([
        event("b1", json!({})),
        event("b2", json!({"data": [1, "two", null]}))
    ]);
    let (status, body) = server.publish("t", BATCH, batch.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][1]["offset"], 2);
    let binary = [0u8, 159, 146, 150, 255];
    let response = server
        .client
        .post(format!("{}/v1/topics/t/events", server.url))
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin1")
        .header("ce-source", "test")
        .header("ce-type", "test.binary")
        .header("ce-subject", "hello%20world")
        .header("content-type", "application/octet-stream")
        .body(binary.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, body) = server.read("t", 0, "from=0&max=10").await;
    assert_eq!(status, 200, "{body}");
    let records = body["records"].as_array().unwrap();
    assert_eq!(records.len(), 4);
    assert_eq!(body["next_offset"], 4);
    assert_eq!(records[0]["event"], structured);
    assert_eq!(records[1]["event"], batch[0]);
    assert_eq!(records[2]["event"], batch[1]);
    let stored = &records[3]["event"];
    assert_eq!(stored["subject"], "hello world");
    assert_eq!(stored["datacontenttype"], "application/octet-stream");
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD
        .decode(stored["data_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, binary);
    assert!(records[0]["timestamp"].as_str().unwrap().ends_with('Z'));
    server.stop().await;
}

// Goal: bad input gets a precise problem+json and appends nothing. Method: a table of bad
// requests, checking status, content type, detail and that next_offset did not move.
#[tokio::test]
async fn bad_input_is_a_precise_problem_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = keel_server::ServerConfig {
        data_dir: dir.path().to_owned(),
        event_bytes_max: 2048,
        request_bytes_max: 64 * 1024,
        ..Default::default()
    };
    let server = TestServer::start_with(config).await;
    server.put_topic("t", json!({"partitions": 2})).await;
    let big = event("big", json!({"data": "x".repeat(4096)})).to_string();
    let huge: Vec<Value> = (0..40)
        .map(|i| event(&format!("h{i}"), json!({"data": "y".repeat(1800)})))
        .collect();
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("t", STRUCTURED, "{not json".into(), 400, "malformed JSON"),
        (
            "t",
            STRUCTURED,
            json!({"specversion": "1.0", "id": "x", "type": "t"}).to_string(),
            400,
            "source",
        ),
        (
            "t",
            STRUCTURED,
            event("x", json!({"specversion": "0.3"})).to_string(),
            400,
            "specversion",
        ),
        (
            "t",
            STRUCTURED,
            event("x", json!({"Bad-Name": 1})).to_string(),
            400,
            "Bad-Name",
        ),
        (
            "t",
            STRUCTURED,
            event("x", json!({"data_base64": "AAAA"})).to_string(),
            400,
            "data_base64",
        ),
        (
            "t",
            BATCH,
            json!([event("ok", json!({})), {"id": "no-source"}]).to_string(),
            400,
            "index 1",
        ),
        ("t", BATCH, "[]".into(), 400, "empty"),
        ("t", "text/plain", "hello".into(), 415, "Content-Type"),
        ("t", STRUCTURED, big, 413, "over the limit of 2048 bytes"),
        ("t", BATCH, Value::Array(huge).to_string(), 413, "65536"),
        (
            "missing",
            STRUCTURED,
            event("x", json!({})).to_string(),
            404,
            "does not exist",
        ),
    ];
    for (topic, content_type, body, status_expected, needle) in cases {
        let (status, problem, headers) = server
            .request(
                Method::POST,
                &format!("/v1/topics/{topic}/events"),
                Some(content_type),
                body,
            )
            .await;
        assert_problem(status, &problem, status_expected, needle, needle);
        assert_eq!(
            headers["content-type"], "application/problem+json",
            "{needle}"
        );
    }
    assert_eq!(
        server.next_offsets("t").await,
        vec![0, 0],
        "nothing was appended"
    );
    for (path, status_expected, needle) in [
        ("/v1/topics/t/partitions/7/events", 404, "no partition 7"),
        ("/v1/topics/t/partitions/x/events", 400, "whole number"),
        (
            "/v1/topics/t/partitions/0/events?from=5",
            400,
            "beyond the end",
        ),
        (
            "/v1/topics/t/partitions/0/events?from=-1",
            400,
            "invalid query",
        ),
        (
            "/v1/topics/t/partitions/0/events?frm=1",
            400,
            "invalid query",
        ),
        ("/v1/nothing", 404, "no such endpoint"),
    ] {
        let (status, problem) = server.get(path).await;
        assert_problem(status, &problem, status_expected, needle, path);
    }
    server.stop().await;
}

// Goal: publish is idempotent per (source, id) within the window, across a restart; a
// duplicate inside one batch answers with the first's position.
#[tokio::test]
async fn duplicate_publish_returns_original_offset_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({"partitions": 4})).await;
    let first = server
        .publish("t", STRUCTURED, event("e1", json!({})).to_string())
        .await
        .1["results"][0]
        .clone();
    let again = server
        .publish("t", STRUCTURED, event("e1", json!({})).to_string())
        .await
        .1["results"][0]
        .clone();
    assert_eq!(again["duplicate"], true);
    assert_eq!(
        (&again["partition"], &again["offset"]),
        (&first["partition"], &first["offset"])
    );
    let batch = json!([event("e2", json!({})), event("e2", json!({}))]);
    let results = server.publish("t", BATCH, batch.to_string()).await.1["results"].clone();
    assert_eq!(results[1]["duplicate"], true);
    assert_eq!(results[1]["offset"], results[0]["offset"]);
    let other_source = event("e1", json!({"source": "elsewhere"}));
    assert_eq!(
        server
            .publish("t", STRUCTURED, other_source.to_string())
            .await
            .1["results"][0]["duplicate"],
        false
    );
    let total: u64 = server.next_offsets("t").await.iter().sum();
    assert_eq!(total, 3);
    let data_dir = server.stop().await;
    let server = TestServer::start(&data_dir).await;
    let after = server
        .publish("t", STRUCTURED, event("e1", json!({})).to_string())
        .await
        .1["results"][0]
        .clone();
    assert_eq!(after["duplicate"], true, "dedupe survives a restart");
    assert_eq!(
        (&after["partition"], &after["offset"]),
        (&first["partition"], &first["offset"])
    );
    assert_eq!(server.next_offsets("t").await.iter().sum::<u64>(), 3);
    server.stop().await;
}

// Goal: events with one partitionkey land in one partition, in order, and the mapping is the
// same after a restart; keyless events spread over all partitions.
#[tokio::test]
async fn keyed_events_keep_their_partition_and_order_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({"partitions": 4})).await;
    let mut partition_of_key = std::collections::HashMap::new();
    for i in 0..40 {
        let key = format!("k{}", i % 5);
        let body = event(&format!("e{i}"), json!({"partitionkey": key})).to_string();
        let result = server.publish("t", STRUCTURED, body).await.1["results"][0].clone();
        let partition = result["partition"].as_u64().unwrap();
        assert_eq!(*partition_of_key.entry(key).or_insert(partition), partition);
    }
    for i in 0..8 {
        server
            .publish(
                "t",
                STRUCTURED,
                event(&format!("free{i}"), json!({})).to_string(),
            )
            .await;
    }
    let data_dir = server.stop().await;
    let server = TestServer::start(&data_dir).await;
    for (key, partition) in &partition_of_key {
        let body = event(&format!("late-{key}"), json!({"partitionkey": key})).to_string();
        assert_eq!(
            server.publish("t", STRUCTURED, body).await.1["results"][0]["partition"]
                .as_u64()
                .unwrap(),
            *partition
        );
        let records = server.read("t", *partition as u32, "max=1000").await.1["records"]
            .as_array()
            .unwrap()
            .clone();
        let ids: Vec<u64> = records
            .iter()
            .filter(|r| r["event"]["partitionkey"] == key.as_str())
            .filter_map(|r| {
                r["event"]["id"]
                    .as_str()
                    .unwrap()
                    .strip_prefix('e')
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        assert!(
            ids.windows(2).all(|pair| pair[0] < pair[1]),
            "key {key} in order: {ids:?}"
        );
    }
    let offsets = server.next_offsets("t").await;
    let keyless_partitions = offsets.iter().filter(|&&n| n > 0).count();
    assert!(keyless_partitions >= 2, "{offsets:?}");
    server.stop().await;
}

// Goal: a long-poll read returns as soon as an event is committed, and returns empty after
// the wait when none is.
#[tokio::test]
async fn long_poll_read_returns_when_an_event_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({})).await;
    let started = std::time::Instant::now();
    let (status, body) = server.read("t", 0, "from=0&wait=200").await;
    assert_eq!(
        (status, body["records"].as_array().unwrap().len()),
        (200, 0)
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(190));
    let reader = {
        let (url, client) = (server.url.clone(), server.client.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let text = client
                .get(format!(
                    "{url}/v1/topics/t/partitions/0/events?from=0&wait=10000"
                ))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let body: Value = serde_json::from_str(&text).unwrap();
            (body, started.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    server
        .publish("t", STRUCTURED, event("late", json!({})).to_string())
        .await;
    let (body, waited) = reader.await.unwrap();
    assert_eq!(body["records"][0]["event"]["id"], "late");
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    server.stop().await;
}

// Goal: health, readiness and metrics answer, and metrics count what was published.
#[tokio::test]
async fn health_readiness_and_metrics_report_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({})).await;
    server
        .publish("t", STRUCTURED, event("m1", json!({})).to_string())
        .await;
    assert_eq!(server.get("/healthz").await.0, 200);
    assert_eq!(
        server.get("/readyz").await,
        (
            200,
            json!({"status": "ready", "unavailable_partitions": [], "unavailable_subscriptions": []})
        )
    );
    let metrics = server
        .client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("keel_publish_events_total{topic=\"t\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("keel_fsync_seconds_bucket"), "{metrics}");
    assert!(
        metrics.contains("keel_partition_size_bytes{topic=\"t\",partition=\"0\"}"),
        "{metrics}"
    );
    server.stop().await;
}

// Goal: retention deletes whole old segments by size: the start offset moves up, reads
// before it are a 404 naming the new start, reads from it work, and bytes shrink.
#[tokio::test]
async fn retention_deletes_whole_segments_and_moves_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = keel_server::ServerConfig {
        data_dir: dir.path().to_owned(),
        segment_bytes_max: 4096,
        retention_check_interval: std::time::Duration::from_millis(100),
        ..Default::default()
    };
    let server = TestServer::start_with(config).await;
    server
        .put_topic("t", json!({"retention": {"max_bytes": 8192}}))
        .await;
    for i in 0..20 {
        let batch: Vec<Value> = (0..5)
            .map(|j| event(&format!("r{i}-{j}"), json!({"data": "z".repeat(400)})))
            .collect();
        assert_eq!(
            server
                .publish("t", BATCH, Value::Array(batch).to_string())
                .await
                .0,
            200
        );
    }
    let mut partition = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        partition = server.get("/v1/topics/t").await.1["partitions"][0].clone();
        // Retention may also have run while the events were published: wait for a pass after.
        if partition["start_offset"].as_u64().unwrap() > 0
            && partition["bytes"].as_u64().unwrap() <= 8192 + 4096
        {
            break;
        }
    }
    let start = partition["start_offset"].as_u64().unwrap();
    assert!(start > 0, "retention ran: {partition}");
    assert_eq!(partition["next_offset"], 100);
    assert!(
        partition["bytes"].as_u64().unwrap() <= 8192 + 4096,
        "{partition}"
    );
    let (status, problem) = server.read("t", 0, "from=0").await;
    assert_eq!(status, 404, "{problem}");
    assert_eq!(problem["start_offset"], start);
    let (status, body) = server.read("t", 0, &format!("from={start}&max=1")).await;
    assert_eq!(status, 200);
    assert_eq!(body["records"][0]["offset"], start);
    server.stop().await;
}

// Goal: damage before the durable mark is corruption, not a torn tail: keel refuses that
// partition with a precise error, says so in /readyz, and keeps serving the others; the
// damaged file is not truncated. Method: publish to two partitions, stop, flip one byte
// inside partition 0's first record, restart.
#[tokio::test]
async fn corruption_before_the_durable_mark_stops_only_that_partition() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({"partitions": 2})).await;
    let mut keys_by_partition = [None, None];
    for i in 0..20 {
        let key = format!("key{i}");
        let body = event(
            &format!("c{i}"),
            json!({"partitionkey": key, "data": "payload ".repeat(20)}),
        )
        .to_string();
        let partition = server.publish("t", STRUCTURED, body).await.1["results"][0]["partition"]
            .as_u64()
            .unwrap() as usize;
        keys_by_partition[partition].get_or_insert(key);
    }
    let data_dir = server.stop().await;
    let segment = data_dir.join("topics/t/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    let length_before = bytes.len();
    bytes[60] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();

    let server = TestServer::start(&data_dir).await;
    let (status, ready) = server.get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(
        (
            &ready["unavailable_partitions"][0]["topic"],
            &ready["unavailable_partitions"][0]["partition"]
        ),
        (&json!("t"), &json!(0))
    );
    let (status, problem) = server.read("t", 0, "from=0").await;
    assert_eq!(status, 503, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("partition 0 is unavailable"),
        "{problem}"
    );
    let other_key = keys_by_partition[1].clone().unwrap();
    let body = event("after", json!({"partitionkey": other_key})).to_string();
    assert_eq!(
        server.publish("t", STRUCTURED, body).await.0,
        200,
        "partition 1 keeps serving"
    );
    assert_eq!(server.read("t", 1, "from=0").await.0, 200);
    let before = server.next_offsets("t").await;
    let keys = [keys_by_partition[0].clone().unwrap(), other_key];
    let batch = json!([
        event("both-1", json!({"partitionkey": keys[1]})),
        event("both-0", json!({"partitionkey": keys[0]}))
    ]);
    let (status, problem) = server.publish("t", BATCH, batch.to_string()).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(
        server.next_offsets("t").await,
        before,
        "a batch is all or nothing"
    );
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len() as usize,
        length_before,
        "not truncated"
    );
    server.stop().await;
}

// Goal: the weaker fsync policies are opt-ins that still store, serve, and keep events over
// a graceful restart (shutdown fsyncs what they wrote). Method: one topic per policy.
#[tokio::test]
async fn interval_and_never_fsync_policies_store_and_survive_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    for policy in ["interval", "never"] {
        let (status, body) = server
            .put_topic(policy, json!({"fsync": policy, "fsync_interval": "100ms"}))
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["fsync"], policy);
        let batch: Vec<Value> = (0..50)
            .map(|i| event(&format!("{policy}-{i}"), json!({})))
            .collect();
        assert_eq!(
            server
                .publish(policy, BATCH, Value::Array(batch).to_string())
                .await
                .0,
            200
        );
        assert_eq!(server.next_offsets(policy).await, vec![50]);
    }
    let data_dir = server.stop().await;
    let server = TestServer::start(&data_dir).await;
    for policy in ["interval", "never"] {
        let (_, body) = server.read(policy, 0, "max=1000").await;
        assert_eq!(body["records"].as_array().unwrap().len(), 50, "{policy}");
        assert_eq!(body["records"][49]["event"]["id"], format!("{policy}-49"));
    }
    server.stop().await;
}

// Goal: one topic whose configuration cannot be read refuses service (503, named in
// /readyz) while the others serve, it can be deleted, and directories under topics/ that
// are not topics are left alone (never deleted).
#[tokio::test]
async fn an_unreadable_topic_refuses_service_and_the_others_serve() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("good", json!({})).await;
    server.put_topic("bad", json!({})).await;
    let data_dir = server.stop().await;
    std::fs::write(data_dir.join("topics/bad/topic.json"), "{not json").unwrap();
    let stray = data_dir.join("topics/_moved-aside");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("keep.txt"), "operator's file").unwrap();

    let server = TestServer::start(&data_dir).await;
    let (_, ready) = server.get("/readyz").await;
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["unavailable_partitions"][0]["topic"], "bad");
    assert_eq!(ready["unavailable_partitions"][0]["partition"], Value::Null);
    let (status, problem) = server
        .publish("bad", STRUCTURED, event("x", json!({})).to_string())
        .await;
    assert_problem(
        status,
        &problem,
        503,
        "topic.json",
        "publish to the unreadable topic",
    );
    assert_eq!(
        server
            .publish("good", STRUCTURED, event("x", json!({})).to_string())
            .await
            .0,
        200
    );
    assert!(
        stray.join("keep.txt").exists(),
        "a stray directory is never deleted"
    );
    let (status, _, _) = server
        .request(Method::DELETE, "/v1/topics/bad", None, "")
        .await;
    assert_eq!(status, 204);
    assert!(!data_dir.join("topics/bad").exists());
    assert_eq!(server.get("/readyz").await.1["status"], "ready");
    server.stop().await;
}

// Goal: a data directory whose topics/ vanished (a power loss on a filesystem that dropped the
// entry, or an operator) is reported damaged: readyz is 503 "damaged" naming the directory and
// what to do, creating a topic is refused (503) instead of recreating topics/ empty, and once
// the operator recreates the directory the server serves again.
// Method: a topic with events, stop, remove topics/, restart; then mkdir and restart again.
#[tokio::test]
async fn a_vanished_topics_directory_is_damage_not_an_empty_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("orders", json!({})).await;
    let published = server
        .publish("orders", STRUCTURED, event("a", json!({})).to_string())
        .await;
    assert_eq!(published.0, 200);
    let data_dir = server.stop().await;
    std::fs::remove_dir_all(data_dir.join("topics")).unwrap();

    let server = TestServer::start(&data_dir).await;
    let (status, ready) = server.get("/readyz").await;
    assert_eq!((status, ready["status"].as_str()), (503, Some("damaged")));
    let damage = &ready["data_dir_damage"][0];
    assert!(
        damage["path"].as_str().unwrap().ends_with("topics"),
        "{ready}"
    );
    assert!(
        damage["reason"].as_str().unwrap().contains("mkdir"),
        "{ready}"
    );
    let (status, problem, _) = server
        .request(
            Method::PUT,
            "/v1/topics/orders",
            Some("application/json"),
            "{}",
        )
        .await;
    assert_problem(
        status,
        &problem,
        503,
        "damaged",
        "create under a lost topics/",
    );
    for path in [
        "/v1/topics",
        "/v1/topics/orders",
        "/v1/topics/orders/partitions/0/events",
    ] {
        let (status, problem, _) = server.request(Method::GET, path, None, "").await;
        assert_problem(status, &problem, 503, "damaged", path);
    }
    assert!(
        !data_dir.join("topics").exists(),
        "never recreated silently"
    );
    server.stop().await;

    std::fs::create_dir(data_dir.join("topics")).unwrap();
    let server = TestServer::start(&data_dir).await;
    let (status, ready) = server.get("/readyz").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
    server.put_topic("orders", json!({})).await;
    server.stop().await;
}

// Goal: a partition directory lost while keel was down refuses that partition (named in
// readyz, "missing"), never comes back as an empty log, and the topic's other partitions serve.
// Method: a 2-partition topic, stop, remove partition 1's directory, restart.
#[tokio::test]
async fn a_vanished_partition_directory_refuses_that_partition_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("orders", json!({"partitions": 2})).await;
    let data_dir = server.stop().await;
    std::fs::remove_dir_all(data_dir.join("topics/orders/1")).unwrap();

    let server = TestServer::start(&data_dir).await;
    let (status, ready) = server.get("/readyz").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("degraded")));
    let unavailable = &ready["unavailable_partitions"];
    assert_eq!(unavailable.as_array().unwrap().len(), 1, "{ready}");
    assert_eq!(unavailable[0]["partition"], 1, "{ready}");
    assert!(
        unavailable[0]["reason"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{ready}"
    );
    assert!(
        !data_dir.join("topics/orders/1").exists(),
        "never recreated silently"
    );
    let (status, _) = server.read("orders", 0, "").await;
    assert_eq!(status, 200, "partition 0 serves");
    server.stop().await;
}

// Goal: slow clients cannot hold connections (and file descriptors) forever: a request head
// that never finishes is cut off after the header read timeout, a body that never finishes
// is answered 408 problem+json after the request timeout, and nothing is appended.
// Method: raw sockets sending partial requests to a server with short timeouts.
#[tokio::test]
async fn slow_clients_are_cut_off_by_the_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let config = keel_server::ServerConfig {
        data_dir: dir.path().to_owned(),
        header_read_timeout: std::time::Duration::from_millis(300),
        request_timeout: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let server = TestServer::start_with(config).await;
    server.put_topic("t", json!({})).await;
    let address = server.url.trim_start_matches("http://").to_owned();
    let cases = [
        ("GET /healthz HTTP/1.1\r\nHost: x\r\n", ""),
        (
            "POST /v1/topics/t/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/cloudevents+json\r\nContent-Length: 100\r\n\r\n{\"specversion\"",
            "HTTP/1.1 408",
        ),
    ];
    for (partial_request, answer_start) in cases {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream.write_all(partial_request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let closed = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_end(&mut answer),
        )
        .await;
        assert!(closed.is_ok(), "the server kept {partial_request:?} open");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with(answer_start), "{answer}");
        if !answer_start.is_empty() {
            assert!(answer.contains("application/problem+json"), "{answer}");
        }
    }
    assert_eq!(server.next_offsets("t").await, vec![0]);
    assert_eq!(
        server.get("/healthz").await.0,
        200,
        "other clients are served"
    );
    server.stop().await;
}

// Goal: concurrent publishes of one (source, id) store it once and all answer with its
// position, one as the original and the rest as duplicates (the in-flight dedupe path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_store_the_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({"partitions": 4})).await;
    let body = event("same", json!({})).to_string();
    let publishes: Vec<_> = (0..20)
        .map(|_| {
            let (client, url, body) = (server.client.clone(), server.url.clone(), body.clone());
            tokio::spawn(async move {
                let response = client
                    .post(format!("{url}/v1/topics/t/events"))
                    .header("content-type", STRUCTURED)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let answer: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
                answer["results"][0].clone()
            })
        })
        .collect();
    let mut results = Vec::new();
    for publish in publishes {
        results.push(publish.await.unwrap());
    }
    let originals = results.iter().filter(|r| r["duplicate"] == false).count();
    assert_eq!(originals, 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r["offset"] == results[0]["offset"]
                && r["partition"] == results[0]["partition"])
    );
    assert_eq!(server.next_offsets("t").await.iter().sum::<u64>(), 1);
    server.stop().await;
}

// Goal: after a restart the dedupe table remembers the topic's newest pairs however they
// were spread over partitions: 60,000 events with one key (all in one partition of 8) are
// all still known as duplicates, more than a per-partition share of the table's bound.
#[tokio::test]
async fn dedupe_survives_a_restart_when_one_key_takes_all_the_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server
        .put_topic("t", json!({"partitions": 8, "dedupe_window": "1h"}))
        .await;
    let batch = |start: usize, count: usize| {
        let events: Vec<Value> = (start..start + count)
            .map(|i| json!({"specversion": "1.0", "id": format!("k{i}"), "source": "s", "type": "t", "partitionkey": "hot"}))
            .collect();
        Value::Array(events).to_string()
    };
    for start in (0..60_000).step_by(1000) {
        assert_eq!(server.publish("t", BATCH, batch(start, 1000)).await.0, 200);
    }
    let data_dir = server.stop().await;
    let server = TestServer::start(&data_dir).await;
    let (status, body) = server.publish("t", BATCH, batch(0, 1000)).await;
    assert_eq!(status, 200);
    let duplicates = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["duplicate"] == true)
        .count();
    assert_eq!(
        duplicates, 1000,
        "the oldest events of the hot key are still known"
    );
    assert_eq!(server.next_offsets("t").await.iter().sum::<u64>(), 60_000);
    server.stop().await;
}
