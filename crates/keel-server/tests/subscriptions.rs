//! Pull subscriptions over the HTTP API, against a real server on a real socket with real
//! files: delivery, settling, the dead-letter queue, administration and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use keel_testkit::server::TestServer;
use reqwest::Method;
use serde_json::{Value, json};
use support::{BATCH, STRUCTURED, assert_problem, event};

/// How long a test waits for something that should happen soon before it fails.
const PATIENCE: Duration = Duration::from_secs(5);

/// A request with a JSON body (`Value::Null` sends none): its status and answer.
async fn send(server: &TestServer, method: Method, path: &str, body: Value) -> (u16, Value) {
    let (status, answer, _) = if body.is_null() {
        server.request(method, path, None, "").await
    } else {
        server
            .request(method, path, Some("application/json"), body.to_string())
            .await
    };
    (status, answer)
}

/// `PUT /v1/subscriptions/{name}`, expecting it to be created.
async fn create_subscription(server: &TestServer, name: &str, spec: Value) -> Value {
    let path = format!("/v1/subscriptions/{name}");
    let (status, body) = send(server, Method::PUT, &path, spec).await;
    assert_eq!(status, 201, "create {name}: {body}");
    body
}

/// `GET /v1/subscriptions/{name}`, expecting it to exist.
async fn describe(server: &TestServer, name: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/subscriptions/{name}")).await;
    assert_eq!(status, 200, "describe {name}: {body}");
    body
}

/// Describes a subscription until `done` holds for it; fails after [`PATIENCE`].
async fn describe_until(
    server: &TestServer,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = describe(server, name).await;
        if done(&info) {
            return info;
        }
        assert!(Instant::now() < deadline, "never {what}: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One pull of up to `max` messages, long-polling up to `wait`.
async fn pull(server: &TestServer, name: &str, max: usize, wait: &str) -> Vec<Value> {
    let path = format!("/v1/subscriptions/{name}/pull");
    let (status, body) = send(
        server,
        Method::POST,
        &path,
        json!({"max": max, "wait": wait}),
    )
    .await;
    assert_eq!(status, 200, "pull {name}: {body}");
    body["messages"].as_array().unwrap().clone()
}

/// Pulls until `count` messages came (failing after [`PATIENCE`]), then checks that no more
/// come within a short wait.
async fn pull_exactly(server: &TestServer, name: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    let mut messages = Vec::new();
    while messages.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {messages:?} of {count} came"
        );
        messages.extend(pull(server, name, count - messages.len(), "1s").await);
    }
    let extra = pull(server, name, 100, "300ms").await;
    assert!(extra.is_empty(), "more than {count} came: {extra:?}");
    messages
}

/// Acks, nacks or rejects pulled messages; returns the answer.
async fn settle(server: &TestServer, name: &str, action: &str, ack_ids: &[String]) -> Value {
    let path = format!("/v1/subscriptions/{name}/{action}");
    let (status, body) = send(server, Method::POST, &path, json!({"ack_ids": ack_ids})).await;
    assert_eq!(status, 200, "{action} {name}: {body}");
    body
}

/// Publishes a batch; returns the per-event results.
async fn publish_all(server: &TestServer, topic: &str, events: Vec<Value>) -> Vec<Value> {
    let (status, body) = server
        .publish(topic, BATCH, Value::Array(events).to_string())
        .await;
    assert_eq!(status, 200, "publish: {body}");
    body["results"].as_array().unwrap().clone()
}

/// `GET /v1/subscriptions/{name}/dlq`: the entries.
async fn dlq_entries(server: &TestServer, name: &str) -> Vec<Value> {
    let (status, body) = server.get(&format!("/v1/subscriptions/{name}/dlq")).await;
    assert_eq!(status, 200, "dlq of {name}: {body}");
    body["entries"].as_array().unwrap().clone()
}

fn ack_ids(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|message| message["ack_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The events' ids, in the order given.
fn event_ids(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|message| message["event"]["id"].as_str().unwrap().to_owned())
        .collect()
}

fn id_set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| (*id).to_owned()).collect()
}

/// A sample's value in Prometheus text: the first line of metric `name` with all `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.split_once(['{', ' ']).map(|(metric, _)| metric) == Some(name)
                && labels.iter().all(|label| line.contains(label))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

// Goal: the pull cycle works end to end: a long poll returns as soon as an event is
// published, keyed events on two partitions are all delivered once with attempt 1, acks make
// describe show them delivered with lag 0, a second ack of one id is stale, and a malformed
// id is a 400. Method: a waiting pull in a task, then publish, pull, ack and describe.
#[tokio::test]
async fn pulled_events_are_acked_once_and_describe_shows_them_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("orders", json!({"partitions": 2})).await;
    let created = create_subscription(
        &server,
        "workers",
        json!({"topic": "orders", "start": "earliest"}),
    )
    .await;
    assert_eq!(
        (&created["mode"], &created["lag"], &created["circuit"]),
        (&json!("pull"), &json!(0), &Value::Null),
        "{created}"
    );
    assert!(
        created.get("secret").is_none(),
        "a pull subscription has no secret"
    );
    let listed = server.get("/v1/subscriptions").await.1;
    assert_eq!(listed["subscriptions"][0]["name"], "workers", "{listed}");

    let waiting = {
        let (client, url) = (server.client.clone(), server.url.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let response = client
                .post(format!("{url}/v1/subscriptions/workers/pull"))
                .header("content-type", "application/json")
                .body(json!({"max": 10, "wait": "5s"}).to_string())
                .send()
                .await
                .unwrap();
            let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            (body, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "the pull waits while there is nothing"
    );
    let first = event("o1", json!({"partitionkey": "k1"}));
    assert_eq!(
        server
            .publish("orders", STRUCTURED, first.to_string())
            .await
            .0,
        200
    );
    let (body, waited) = waiting.await.unwrap();
    assert!(
        waited < Duration::from_secs(3),
        "the long poll returned late: {waited:?}"
    );
    let mut messages = body["messages"].as_array().unwrap().clone();
    assert_eq!(event_ids(&messages), ["o1"], "{body}");
    assert_eq!(messages[0]["event"], first);

    let keyed: Vec<Value> = (2..=5)
        .map(|i| event(&format!("o{i}"), json!({"partitionkey": format!("k{i}")})))
        .collect();
    let results = publish_all(&server, "orders", keyed).await;
    let pulled = pull_exactly(&server, "workers", 4).await;
    for result in &results {
        let message = pulled
            .iter()
            .find(|message| message["event"]["id"] == result["id"])
            .unwrap_or_else(|| panic!("{result} was not pulled: {pulled:?}"));
        assert_eq!(
            (
                &message["partition"],
                &message["offset"],
                &message["attempt"]
            ),
            (&result["partition"], &result["offset"], &json!(1))
        );
    }
    messages.extend(pulled);
    let ids = ack_ids(&messages);
    assert_eq!(
        settle(&server, "workers", "ack", &ids).await,
        json!({"settled": 5, "stale": []})
    );
    let info = describe(&server, "workers").await;
    assert_eq!(
        (
            &info["delivered"],
            &info["lag"],
            &info["in_flight"],
            &info["pending"]
        ),
        (&json!(5), &json!(0), &json!(0), &json!(0)),
        "{info}"
    );
    for partition in info["partitions"].as_array().unwrap() {
        assert_eq!(partition["committed"], partition["next_offset"], "{info}");
    }
    let again = settle(&server, "workers", "ack", &ids[..1]).await;
    assert_eq!(again, json!({"settled": 0, "stale": [ids[0]]}));
    let (status, problem) = send(
        &server,
        Method::POST,
        "/v1/subscriptions/workers/ack",
        json!({"ack_ids": [ids[1], "not-an-ack-id"]}),
    )
    .await;
    assert_problem(
        status,
        &problem,
        400,
        "malformed ack id \"not-an-ack-id\"",
        "ack",
    );
    server.stop().await;
}

// Goal: an event not acked within ack_timeout is delivered again with attempt 2, and the
// first delivery's ack id is then stale. Method: pull, do not ack, long-poll for the
// redelivery and time it.
#[tokio::test]
async fn unacked_event_is_redelivered_after_the_ack_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({})).await;
    let spec = json!({"topic": "t", "ack_timeout": "500ms", "retry": {"initial": "50ms"}});
    create_subscription(&server, "slow", spec).await;
    publish_all(&server, "t", vec![event("e1", json!({}))]).await;
    let first = pull(&server, "slow", 10, "2s").await;
    let pulled_at = Instant::now();
    assert_eq!(
        (event_ids(&first), &first[0]["attempt"]),
        (vec!["e1".to_owned()], &json!(1))
    );
    let second = pull(&server, "slow", 10, "3s").await;
    let waited = pulled_at.elapsed();
    assert_eq!(event_ids(&second), ["e1"]);
    assert_eq!(second[0]["attempt"], 2);
    assert!(
        waited >= Duration::from_millis(450),
        "redelivered before the timeout: {waited:?}"
    );
    let stale = settle(&server, "slow", "ack", &ack_ids(&first)).await;
    assert_eq!(stale, json!({"settled": 0, "stale": ack_ids(&first)}));
    let acked = settle(&server, "slow", "ack", &ack_ids(&second)).await;
    assert_eq!(acked["settled"], 1);
    let info = describe(&server, "slow").await;
    assert_eq!(
        (&info["retried"], &info["delivered"]),
        (&json!(1), &json!(1)),
        "{info}"
    );
    assert_eq!(
        info["last_error"]["error"],
        "not acknowledged within ack_timeout"
    );
    server.stop().await;
}

// Goal: a nack without a delay redelivers after the retry backoff (at most `initial` here),
// and a nack with a delay holds the event back for that delay. Method: nack, long-poll for
// the redelivery and time it; then nack with "1s" and check it is absent at ~0.5 s and back
// by ~2 s.
#[tokio::test]
async fn nacked_event_comes_back_after_the_backoff_or_the_given_delay() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({})).await;
    create_subscription(
        &server,
        "n",
        json!({"topic": "t", "retry": {"initial": "50ms"}}),
    )
    .await;
    publish_all(&server, "t", vec![event("e1", json!({}))]).await;
    let first = pull(&server, "n", 10, "2s").await;
    assert_eq!(
        settle(&server, "n", "nack", &ack_ids(&first)).await["settled"],
        1
    );
    let nacked_at = Instant::now();
    let second = pull(&server, "n", 10, "2s").await;
    assert_eq!(
        (event_ids(&second), &second[0]["attempt"]),
        (vec!["e1".to_owned()], &json!(2))
    );
    assert!(
        nacked_at.elapsed() < Duration::from_millis(1000),
        "{:?}",
        nacked_at.elapsed()
    );

    let (status, body) = send(
        &server,
        Method::POST,
        "/v1/subscriptions/n/nack",
        json!({"ack_ids": ack_ids(&second), "delay": "1s"}),
    )
    .await;
    assert_eq!((status, &body["settled"]), (200, &json!(1)), "{body}");
    let nacked_at = Instant::now();
    let early = pull(&server, "n", 10, "500ms").await;
    assert!(early.is_empty(), "redelivered before the delay: {early:?}");
    let third = pull(&server, "n", 10, "2s").await;
    let waited = nacked_at.elapsed();
    assert_eq!(
        (event_ids(&third), &third[0]["attempt"]),
        (vec!["e1".to_owned()], &json!(3))
    );
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&waited),
        "{waited:?}"
    );
    assert_eq!(describe(&server, "n").await["retried"], 2);
    server.stop().await;
}

// Goal: a rejected event goes to the DLQ with its attempts and error; entries can be shown
// by id, one can be redriven (pulled again with attempt 1, and it leaves the DLQ once
// acked), the rest purged; an unknown id or an empty redrive request is refused.
// Method: reject three events, then work the DLQ endpoints and check describe's depth.
#[tokio::test]
async fn rejected_events_are_dead_lettered_redriven_and_purged() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({})).await;
    create_subscription(&server, "d", json!({"topic": "t", "start": "earliest"})).await;
    let events: Vec<Value> = (0..3).map(|i| event(&format!("e{i}"), json!({}))).collect();
    publish_all(&server, "t", events.clone()).await;
    let pulled = pull_exactly(&server, "d", 3).await;
    assert_eq!(
        settle(&server, "d", "reject", &ack_ids(&pulled)).await["settled"],
        3
    );
    let info = describe(&server, "d").await;
    assert_eq!(
        (&info["dlq_depth"], &info["dead_lettered"], &info["lag"]),
        (&json!(3), &json!(3), &json!(0)),
        "{info}"
    );
    let entries = dlq_entries(&server, "d").await;
    let entry_ids: Vec<&str> = entries.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(entry_ids, ["0-0", "0-1", "0-2"]);
    let (status, entry) = server.get("/v1/subscriptions/d/dlq/0-1").await;
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["event"], events[1]);
    assert_eq!(
        (
            &entry["partition"],
            &entry["offset"],
            &entry["attempts"],
            &entry["last_error"]
        ),
        (
            &json!(0),
            &json!(1),
            &json!(1),
            &json!("rejected by the consumer")
        ),
        "{entry}"
    );
    assert_eq!(entry["history"].as_array().unwrap().len(), 1, "{entry}");
    assert_eq!(server.get("/v1/subscriptions/d/dlq/0-9").await.0, 404);

    let redrive = "/v1/subscriptions/d/dlq/redrive";
    for (body, status_expected, needle) in [
        (json!({"ids": ["0-9"]}), 404, "0-9"),
        (json!({}), 400, "ids"),
        (json!({"ids": []}), 400, "ids"),
    ] {
        let (status, problem) = send(&server, Method::POST, redrive, body.clone()).await;
        assert_problem(status, &problem, status_expected, needle, &body.to_string());
    }
    let (status, body) = send(&server, Method::POST, redrive, json!({"ids": ["0-1"]})).await;
    assert_eq!((status, body), (200, json!({"redriven": 1})));
    let again = pull_exactly(&server, "d", 1).await;
    assert_eq!(again[0]["event"], events[1]);
    assert_eq!(
        (
            &again[0]["attempt"],
            &again[0]["partition"],
            &again[0]["offset"]
        ),
        (&json!(1), &json!(0), &json!(1))
    );
    assert_eq!(
        settle(&server, "d", "ack", &ack_ids(&again)).await["settled"],
        1
    );
    assert_eq!(
        server.get("/v1/subscriptions/d/dlq/0-1").await.0,
        404,
        "acked: gone"
    );
    assert_eq!(describe(&server, "d").await["dlq_depth"], 2);

    let (status, body) = send(
        &server,
        Method::DELETE,
        "/v1/subscriptions/d/dlq",
        Value::Null,
    )
    .await;
    assert_eq!((status, body), (200, json!({"purged": 2})));
    assert!(dlq_entries(&server, "d").await.is_empty());
    let info = describe(&server, "d").await;
    assert_eq!(
        (&info["dlq_depth"], &info["lag"]),
        (&json!(0), &json!(0)),
        "{info}"
    );
    server.stop().await;
}

// Goal: after max_attempts failed attempts the event is dead-lettered with the history of
// every attempt, and is not delivered again. Method: max_attempts 2, nack twice.
#[tokio::test]
async fn event_nacked_max_attempts_times_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({})).await;
    let spec = json!({"topic": "t", "retry": {"max_attempts": 2, "initial": "50ms"}});
    create_subscription(&server, "m", spec).await;
    publish_all(&server, "t", vec![event("e1", json!({}))]).await;
    for attempt in 1..=2 {
        let messages = pull(&server, "m", 10, "2s").await;
        assert_eq!(event_ids(&messages), ["e1"]);
        assert_eq!(messages[0]["attempt"], attempt);
        assert_eq!(
            settle(&server, "m", "nack", &ack_ids(&messages)).await["settled"],
            1
        );
    }
    let info = describe(&server, "m").await;
    assert_eq!(
        (&info["dlq_depth"], &info["dead_lettered"], &info["lag"]),
        (&json!(1), &json!(1), &json!(0)),
        "{info}"
    );
    let entries = dlq_entries(&server, "m").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["attempts"], 2, "{}", entries[0]);
    assert_eq!(entries[0]["last_error"], "nacked by the consumer");
    assert_eq!(entries[0]["history"].as_array().unwrap().len(), 2);
    assert!(
        pull(&server, "m", 10, "300ms").await.is_empty(),
        "dead letters are not retried"
    );
    server.stop().await;
}

// Goal: with ordering "key" only the oldest unacked event of each key is out at a time:
// the first pull returns one event per key, and acking A's first releases A's second only.
// Method: one partition, A1 B1 A2 B2 A3 B3 in one batch, max_in_flight 10.
#[tokio::test]
async fn key_ordering_releases_a_keys_next_event_only_after_its_ack() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({"partitions": 1})).await;
    let spec = json!({"topic": "t", "ordering": "key", "max_in_flight": 10});
    create_subscription(&server, "o", spec).await;
    let events: Vec<Value> = (1..=3)
        .flat_map(|i| {
            ["A", "B"].map(|key| event(&format!("{key}{i}"), json!({"partitionkey": key})))
        })
        .collect();
    publish_all(&server, "t", events).await;
    let first = pull_exactly(&server, "o", 2).await;
    let first_ids: BTreeSet<String> = event_ids(&first).into_iter().collect();
    assert_eq!(first_ids, id_set(&["A1", "B1"]));
    let a1 = first.iter().find(|m| m["event"]["id"] == "A1").unwrap();
    assert_eq!(
        settle(&server, "o", "ack", &ack_ids(std::slice::from_ref(a1))).await["settled"],
        1
    );
    let second = pull_exactly(&server, "o", 1).await;
    assert_eq!(event_ids(&second), ["A2"], "B2 waits for B1");
    server.stop().await;
}

// Goal: filters deliver only matching events (an exact attribute match and a CEL rule on
// data, both required), and the non-matching ones are done at once, so lag falls to 0 after
// the matching ones are acked. Method: six events on two partitions, two of them matching.
#[tokio::test]
async fn filtered_subscription_receives_only_matching_events_and_lag_reaches_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({"partitions": 2})).await;
    let spec = json!({
        "topic": "t",
        "start": "earliest",
        "filters": [{"exact": {"type": "order.created"}}, {"cel": "data.amount > 100"}],
    });
    create_subscription(&server, "big-orders", spec).await;
    let order = |id: &str, kind: &str, data: Value| {
        event(id, json!({"type": kind, "data": data, "partitionkey": id}))
    };
    publish_all(
        &server,
        "t",
        vec![
            order("match-1", "order.created", json!({"amount": 150})),
            order("small", "order.created", json!({"amount": 50})),
            order("shipped", "order.shipped", json!({"amount": 500})),
            order("no-amount", "order.created", json!({"note": "free"})),
            order("match-2", "order.created", json!({"amount": 101})),
            order("boundary", "order.created", json!({"amount": 100})),
        ],
    )
    .await;
    let messages = pull_exactly(&server, "big-orders", 2).await;
    let ids: BTreeSet<String> = event_ids(&messages).into_iter().collect();
    assert_eq!(ids, id_set(&["match-1", "match-2"]));
    assert!(
        describe(&server, "big-orders").await["lag"]
            .as_u64()
            .unwrap()
            >= 2
    );
    settle(&server, "big-orders", "ack", &ack_ids(&messages)).await;
    let info = describe_until(&server, "big-orders", "at lag 0", |info| info["lag"] == 0).await;
    assert_eq!(info["delivered"], 2, "{info}");
    server.stop().await;
}

// Goal: seek moves the subscription: to earliest redelivers everything (and the acks of
// events in flight before the seek turn stale), to latest leaves nothing, to a time between
// two publishes starts at the second. Method: one partition, three events with a gap in
// time, the seek time taken between the stored timestamps.
#[tokio::test]
async fn seek_redelivers_from_earliest_skips_to_latest_and_starts_at_a_time() {
    use keel_engine::clock::{format_rfc3339_ms, parse_rfc3339_ms};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({})).await;
    create_subscription(&server, "s", json!({"topic": "t"})).await;
    publish_all(&server, "t", vec![event("e1", json!({}))]).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    publish_all(
        &server,
        "t",
        vec![event("e2", json!({})), event("e3", json!({}))],
    )
    .await;
    let all = pull_exactly(&server, "s", 3).await;
    settle(&server, "s", "ack", &ack_ids(&all)).await;
    describe_until(&server, "s", "at lag 0", |info| info["lag"] == 0).await;

    let seek = |to: Value| {
        let server = &server;
        async move {
            let (status, info) = send(
                server,
                Method::POST,
                "/v1/subscriptions/s/seek",
                json!({"to": to}),
            )
            .await;
            assert_eq!(status, 200, "seek to {to}: {info}");
            info
        }
    };
    let info = seek(json!("earliest")).await;
    assert_eq!(info["lag"], 3, "{info}");
    let again = pull_exactly(&server, "s", 3).await;
    assert_eq!(event_ids(&again), ["e1", "e2", "e3"]);
    assert!(
        again.iter().all(|message| message["attempt"] == 1),
        "{again:?}"
    );

    assert_eq!(seek(json!("latest")).await["lag"], 0);
    let stale = settle(&server, "s", "ack", &ack_ids(&again)).await;
    assert_eq!(
        stale["settled"], 0,
        "acks from before a seek are stale: {stale}"
    );
    assert!(pull(&server, "s", 10, "300ms").await.is_empty());

    let records = server.read("t", 0, "from=0").await.1["records"].clone();
    let stored_ms = |i: usize| parse_rfc3339_ms(records[i]["timestamp"].as_str().unwrap()).unwrap();
    let (e1_ms, e2_ms) = (stored_ms(0), stored_ms(1));
    assert!(e2_ms - e1_ms >= 2, "{records}");
    seek(json!({"time": format_rfc3339_ms(e1_ms + (e2_ms - e1_ms) / 2)})).await;
    let from_time = pull_exactly(&server, "s", 2).await;
    assert_eq!(event_ids(&from_time), ["e2", "e3"]);
    server.stop().await;
}

// Goal: a paused subscription refuses pulls with a 409 naming the reason, resumes on
// request, and stays paused across a graceful restart. Method: pause, pull, resume, pull;
// pause, restart on the same data dir, pull, resume, pull.
#[tokio::test]
async fn paused_subscription_refuses_pulls_until_resumed_even_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({})).await;
    create_subscription(&server, "p", json!({"topic": "t", "start": "earliest"})).await;
    let pause = "/v1/subscriptions/p/pause";
    let resume = "/v1/subscriptions/p/resume";
    publish_all(&server, "t", vec![event("e1", json!({}))]).await;
    let (status, info) = send(&server, Method::POST, pause, Value::Null).await;
    assert_eq!(
        (status, &info["paused"]),
        (200, &json!("paused by an operator")),
        "{info}"
    );
    let pull_path = "/v1/subscriptions/p/pull";
    let (status, problem) = send(&server, Method::POST, pull_path, json!({})).await;
    assert_problem(
        status,
        &problem,
        409,
        "paused by an operator",
        "pull while paused",
    );
    let (status, info) = send(&server, Method::POST, resume, Value::Null).await;
    assert_eq!((status, &info["paused"]), (200, &Value::Null), "{info}");
    let first = pull_exactly(&server, "p", 1).await;
    settle(&server, "p", "ack", &ack_ids(&first)).await;

    publish_all(&server, "t", vec![event("e2", json!({}))]).await;
    assert_eq!(send(&server, Method::POST, pause, Value::Null).await.0, 200);
    let server = TestServer::start(&server.stop().await).await;
    assert_eq!(
        describe(&server, "p").await["paused"],
        "paused by an operator"
    );
    let (status, problem) = send(&server, Method::POST, pull_path, json!({})).await;
    assert_problem(
        status,
        &problem,
        409,
        "paused by an operator",
        "pull after restart",
    );
    assert_eq!(
        send(&server, Method::POST, resume, Value::Null).await.0,
        200
    );
    assert_eq!(event_ids(&pull_exactly(&server, "p", 1).await), ["e2"]);
    server.stop().await;
}

// Goal: a graceful restart keeps delivery state: pulled-but-unacked events are delivered
// again, acked ones are not, ack ids from before the restart are stale, and DLQ entries
// survive. Method: pull five events, ack two, reject one, leave two unacked, restart.
#[tokio::test]
async fn restart_redelivers_unacked_events_only_and_keeps_the_dlq() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({"partitions": 2})).await;
    create_subscription(&server, "r", json!({"topic": "t", "start": "earliest"})).await;
    let events: Vec<Value> = (0..5)
        .map(|i| event(&format!("e{i}"), json!({"partitionkey": format!("k{i}")})))
        .collect();
    publish_all(&server, "t", events).await;
    let pulled = pull_exactly(&server, "r", 5).await;
    let by_id = |id: &str| {
        let message = pulled.iter().find(|m| m["event"]["id"] == id).unwrap();
        message["ack_id"].as_str().unwrap().to_owned()
    };
    let acked = [by_id("e0"), by_id("e1")];
    assert_eq!(settle(&server, "r", "ack", &acked).await["settled"], 2);
    assert_eq!(
        settle(&server, "r", "reject", &[by_id("e2")]).await["settled"],
        1
    );

    let server = TestServer::start(&server.stop().await).await;
    let again = pull_exactly(&server, "r", 2).await;
    let ids: BTreeSet<String> = event_ids(&again).into_iter().collect();
    assert_eq!(ids, id_set(&["e3", "e4"]));
    let old = [by_id("e0"), by_id("e3")];
    let stale = settle(&server, "r", "ack", &old).await;
    assert_eq!(stale, json!({"settled": 0, "stale": old}));
    assert_eq!(
        settle(&server, "r", "ack", &ack_ids(&again)).await["settled"],
        2
    );
    let entries = dlq_entries(&server, "r").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["event"]["id"], "e2");
    assert_eq!(entries[0]["attempts"], 1);
    let info = describe(&server, "r").await;
    assert_eq!(
        (&info["dlq_depth"], &info["lag"]),
        (&json!(1), &json!(0)),
        "{info}"
    );
    server.stop().await;
}

/// A configuration declaring topics `orders` and `audit`, a pull subscription `ledger` on
/// `orders` with `ledger`'s members added, and a push subscription `billing` to `billing_url`
/// with its secret, on `data_dir`.
fn declaring(
    data_dir: &std::path::Path,
    ledger: Value,
    billing_url: &str,
) -> keel_server::ServerConfig {
    let mut ledger_spec = json!({"topic": "orders", "ordering": "key", "max_in_flight": 10});
    ledger_spec
        .as_object_mut()
        .unwrap()
        .extend(ledger.as_object().unwrap().clone());
    let mut config: keel_server::ServerConfig = serde_json::from_value(json!({
        "topics": {"orders": {"partitions": 2, "retention": {"max_age": "7d"}}, "audit": {}},
        "subscriptions": {
            "ledger": ledger_spec,
            "billing": {"topic": "orders", "filters": [{"exact": {"type": "order.created"}}],
                "sink": {"url": billing_url,
                         "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}}
        }
    }))
    .unwrap();
    config.data_dir = data_dir.to_owned();
    config
}

/// The sink URL `billing` is first declared with.
const BILLING_URL: &str = "http://127.0.0.1:9/hooks";

/// The declared things' files (topic.json, subscription.json) with their bytes and times of
/// last change.
fn declared_files(data_dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>, SystemTime)> {
    let files = [
        "topics/orders/topic.json",
        "subscriptions/ledger/subscription.json",
        "subscriptions/billing/subscription.json",
    ];
    files
        .into_iter()
        .map(|file| {
            let path = data_dir.join(file);
            let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
            (path.clone(), std::fs::read(&path).unwrap(), modified)
        })
        .collect()
}

/// Starts a server on `config` that must refuse to start, and returns its error.
async fn refused_start(config: keel_server::ServerConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = keel_server::serve(listener, config, std::future::pending());
    refused.await.unwrap_err().to_string()
}

// Goal: topics and subscriptions declared in the configuration are applied idempotently at
// every start: the same file writes nothing, a changed mutable member (a sink's URL,
// max_in_flight) is applied in place keeping the position, and a changed immutable one (the
// topic) stops the start naming it and the way out, writing nothing. Method: a first start
// creates them and a pull consumer acks two events and leaves one in flight; a restart with
// the same file writes none of their files and redelivers only the one in flight; a start
// with another URL and max_in_flight updates both and still redelivers nothing acked; a
// start moving `ledger` to another topic is refused.
#[tokio::test]
async fn declared_topics_and_subscriptions_apply_idempotently_at_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(declaring(dir.path(), json!({}), BILLING_URL)).await;
    assert_eq!(server.get("/v1/topics/orders").await.0, 200);
    assert_eq!(describe(&server, "billing").await["mode"], "push");
    let events = (0..3)
        .map(|i| {
            event(
                &format!("p{i}"),
                json!({"type": "order.paid", "partitionkey": format!("k{i}")}),
            )
        })
        .collect();
    publish_all(&server, "orders", events).await;
    let pulled = pull_exactly(&server, "ledger", 3).await;
    let (acked, in_flight): (Vec<Value>, Vec<Value>) = pulled
        .into_iter()
        .partition(|message| message["event"]["id"] != "p2");
    assert_eq!(
        settle(&server, "ledger", "ack", &ack_ids(&acked)).await["settled"],
        2
    );
    server.stop().await;
    let files = declared_files(dir.path());

    let server = TestServer::start_with(declaring(dir.path(), json!({}), BILLING_URL)).await;
    let redelivered = pull_exactly(&server, "ledger", 1).await;
    assert_eq!(
        event_ids(&redelivered),
        event_ids(&in_flight),
        "only p2 was in flight"
    );
    server.stop().await;
    assert_eq!(
        declared_files(dir.path()),
        files,
        "a restart rewrote a declared file"
    );

    let moved_url = "http://127.0.0.1:9/moved";
    let changed = declaring(dir.path(), json!({"max_in_flight": 20}), moved_url);
    let server = TestServer::start_with(changed).await;
    let ledger = describe(&server, "ledger").await;
    assert_eq!(ledger["max_in_flight"], 20, "{ledger}");
    assert_eq!(describe(&server, "billing").await["sink"]["url"], moved_url);
    let redelivered = pull_exactly(&server, "ledger", 1).await;
    assert_eq!(
        event_ids(&redelivered),
        event_ids(&in_flight),
        "p0 and p1 stay acked"
    );
    assert_eq!(
        settle(&server, "ledger", "ack", &ack_ids(&redelivered)).await["settled"],
        1
    );
    describe_until(&server, "ledger", "lag 0", |info| info["lag"] == 0).await;
    server.stop().await;
    let files = declared_files(dir.path());

    let moved = declaring(
        dir.path(),
        json!({"topic": "audit", "max_in_flight": 20}),
        moved_url,
    );
    let error = refused_start(moved).await;
    for needle in [
        "[subscriptions.ledger] in the configuration",
        "exists with another spec, and topic cannot change in place",
        "`keel sub delete ledger`",
    ] {
        assert!(error.contains(needle), "{error}");
    }
    assert_eq!(declared_files(dir.path()), files, "a refused start wrote");
}

// Goal: a PUT that changes a pull subscription's ack_timeout and max_in_flight updates it in
// place (200, the changed members named) and keeps its progress: nothing acked comes back,
// the dead letters stay, and only what was in flight at the update is delivered again, under
// the new max_in_flight. A PUT changing an immutable member is a 409 naming it, and changes
// nothing. Method: six events, two acked, one rejected, three left in flight; the update;
// then pulls, the dead-letter queue and a table of refused changes.
#[tokio::test]
async fn pull_subscription_update_keeps_its_position_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("orders", json!({})).await;
    server.put_topic("audit", json!({})).await;
    let spec = json!({"topic": "orders", "start": "earliest", "ack_timeout": "5s"});
    create_subscription(&server, "work", spec).await;
    let events = (0..6).map(|i| event(&format!("e{i}"), json!({}))).collect();
    publish_all(&server, "orders", events).await;
    let pulled = pull_exactly(&server, "work", 6).await;
    let ids = ack_ids(&pulled);
    assert_eq!(
        settle(&server, "work", "ack", &ids[..2]).await["settled"],
        2
    );
    assert_eq!(
        settle(&server, "work", "reject", &ids[2..3]).await["settled"],
        1
    );

    // A long poll waiting when the update comes ends then (empty), instead of holding the
    // subscription's logs and the update up for its 20 s.
    let poll = json!({"max": 10, "wait": "20s"});
    let poll = send(&server, Method::POST, "/v1/subscriptions/work/pull", poll);
    let updated = json!({"topic": "orders", "ack_timeout": "1m", "max_in_flight": 2});
    let update = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let answer = send(&server, Method::PUT, "/v1/subscriptions/work", updated).await;
        (answer, started.elapsed())
    };
    let ((poll_status, polled), ((status, answer), took)) = tokio::join!(poll, update);
    assert_eq!(
        (poll_status, &polled["messages"]),
        (200, &json!([])),
        "{polled}"
    );
    assert!(took < Duration::from_secs(3), "the update took {took:?}");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["changed"],
        json!(["ack_timeout", "max_in_flight"]),
        "{answer}"
    );
    assert_eq!(
        (
            &answer["ack_timeout"],
            &answer["max_in_flight"],
            &answer["start"]
        ),
        (&json!("1m"), &json!(2), &json!("earliest")),
        "a start left out keeps the stored one: {answer}"
    );
    let stale = settle(&server, "work", "ack", &ids[3..4]).await;
    assert_eq!(
        stale["settled"], 0,
        "ack ids from before the update are stale: {stale}"
    );

    // Two, then none more while they are in flight: the new max_in_flight holds.
    let first = pull_exactly(&server, "work", 2).await;
    let mut first_ids = event_ids(&first);
    first_ids.sort();
    assert_eq!(
        first_ids,
        ["e3", "e4"],
        "what was in flight comes back first"
    );
    assert_eq!(
        settle(&server, "work", "ack", &ack_ids(&first)).await["settled"],
        2
    );
    let rest = pull_exactly(&server, "work", 1).await;
    assert_eq!(
        event_ids(&rest),
        ["e5"],
        "nothing acked or dead-lettered comes back"
    );
    assert_eq!(
        settle(&server, "work", "ack", &ack_ids(&rest)).await["settled"],
        1
    );
    let entries = dlq_entries(&server, "work").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["event"]["id"], "e2");
    describe_until(&server, "work", "lag 0", |info| info["lag"] == 0).await;

    let refused = [
        (json!({"topic": "audit"}), "topic cannot change in place"),
        (
            json!({"topic": "orders", "ordering": "key"}),
            "ordering cannot change",
        ),
        (
            json!({"topic": "orders", "filters": [{"exact": {"type": "x"}}]}),
            "filters cannot change",
        ),
        (json!({"topic": "orders", "start": "latest"}), "seek it"),
        (
            json!({"topic": "orders", "sink": {"url": "http://127.0.0.1:9/"}}),
            "sink (the delivery mode) cannot change",
        ),
    ];
    for (spec, needle) in refused {
        let (status, problem) = send(&server, Method::PUT, "/v1/subscriptions/work", spec).await;
        assert_problem(status, &problem, 409, needle, needle);
    }
    let info = describe(&server, "work").await;
    assert_eq!(
        (&info["topic"], &info["mode"], &info["max_in_flight"]),
        (&json!("orders"), &json!("pull"), &json!(2)),
        "a refused update changes nothing: {info}"
    );
    server.stop().await;
}

/// The spec `{"topic": "orders"}` with `extra`'s fields added, as text.
fn orders_spec(extra: Value) -> String {
    let mut spec = json!({"topic": "orders"});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    spec.to_string()
}

/// Creates subscription "bad" with each (label, body, needle) case and checks that each is a
/// 400 problem+json whose detail contains the needle, and that nothing was created.
async fn assert_specs_refused(server: &TestServer, cases: Vec<(&str, String, &str)>) {
    for (label, body, needle) in cases {
        let (status, problem, headers) = server
            .request(
                Method::PUT,
                "/v1/subscriptions/bad",
                Some("application/json"),
                body,
            )
            .await;
        assert_problem(status, &problem, 400, needle, label);
        assert_eq!(
            headers["content-type"], "application/problem+json",
            "{label}"
        );
    }
    assert_eq!(
        server.get("/v1/subscriptions/bad").await.0,
        404,
        "nothing was created"
    );
}

// Goal: bad subscription specs are 400 problem+json whose detail names the bad field; a
// repeated spec is 200 and one that changes an immutable member 409; a topic with
// subscriptions cannot be deleted (409 naming them) unless forced, which deletes them too.
// Method: a table of bad creates, then the conflict and delete paths.
#[tokio::test]
async fn bad_subscription_input_is_a_precise_problem() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("orders", json!({})).await;
    let with = orders_spec;
    let sink = json!({"url": "http://127.0.0.1:9/hook"});
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown topic",
            json!({"topic": "nope"}).to_string(),
            "topic \"nope\"",
        ),
        (
            "unknown dialect",
            with(json!({"filters": [{"regex": {"type": "x"}}]})),
            "filters[0]",
        ),
        (
            "circuit breaker on pull",
            with(json!({"circuit_breaker": {"failures": 3}})),
            "circuit_breaker applies to push",
        ),
        (
            "rate limit on pull",
            with(json!({"rate_limit": 10})),
            "rate_limit applies to push",
        ),
        (
            "cel syntax",
            with(json!({"filters": [{"cel": "data.amount >= )"}]})),
            "filters[0].cel",
        ),
        (
            "ftp sink",
            with(json!({"sink": {"url": "ftp://x"}})),
            "sink.url",
        ),
        (
            "not a url",
            with(json!({"sink": {"url": "not a url"}})),
            "sink.url",
        ),
        (
            "max_in_flight 0",
            with(json!({"max_in_flight": 0})),
            "max_in_flight",
        ),
        ("unknown field", with(json!({"colour": "blue"})), "colour"),
        (
            "circuit failure rate over 100",
            with(json!({"sink": sink, "circuit_breaker": {"failure_rate_percent": 101}})),
            "circuit_breaker.failure_rate_percent",
        ),
        (
            "circuit window too short",
            with(json!({"sink": sink, "circuit_breaker": {"window": "5ms"}})),
            "circuit_breaker.window",
        ),
        (
            "circuit without probes",
            with(json!({"sink": sink, "circuit_breaker": {"probes": 0}})),
            "circuit_breaker.probes",
        ),
        (
            "circuit cool-down over its max",
            with(json!({"sink": sink, "circuit_breaker": {"cool_down": "10m"}})),
            "circuit_breaker.cool_down must be above 0 and at most circuit_breaker.cool_down_max",
        ),
        (
            "circuit min_calls under its old name too",
            with(json!({"sink": sink, "circuit_breaker": {"failures": 3, "min_calls": 3}})),
            "circuit_breaker.failures is the old name of circuit_breaker.min_calls",
        ),
        (
            "circuit connect_failures 0",
            with(json!({"sink": sink, "circuit_breaker": {"connect_failures": 0}})),
            "circuit_breaker.connect_failures",
        ),
        ("not an object", "[1, 2]".to_owned(), "JSON object"),
        (
            "bad start time",
            with(json!({"start": {"time": "noon"}})),
            "start.time",
        ),
    ];
    assert_specs_refused(&server, cases).await;

    let spec = json!({"topic": "orders", "start": "earliest", "ack_timeout": "5s"});
    create_subscription(&server, "a", spec.clone()).await;
    let (status, info) = send(&server, Method::PUT, "/v1/subscriptions/a", spec).await;
    assert_eq!(
        (status, &info["ack_timeout"]),
        (200, &json!("5s")),
        "{info}"
    );
    let (status, problem) = send(
        &server,
        Method::PUT,
        "/v1/subscriptions/a",
        json!({"topic": "orders", "ordering": "key"}),
    )
    .await;
    assert_problem(status, &problem, 409, "another spec", "different spec");
    let described = create_subscription(&server, "b", json!({"topic": "orders"})).await;
    assert_eq!(
        described["start"], "latest",
        "a start left out shows as latest"
    );
    let explicit = json!({"topic": "orders", "start": "latest"});
    let (status, _) = send(&server, Method::PUT, "/v1/subscriptions/b", explicit).await;
    assert_eq!(status, 200, "an explicit latest repeats a start left out");

    let (status, problem) = send(&server, Method::DELETE, "/v1/topics/orders", Value::Null).await;
    assert_problem(status, &problem, 409, "has subscriptions", "delete topic");
    let mut named: Vec<String> = serde_json::from_value(problem["subscriptions"].clone()).unwrap();
    named.sort();
    assert_eq!(named, ["a", "b"], "{problem}");
    let (status, _) = send(
        &server,
        Method::DELETE,
        "/v1/topics/orders?force=true",
        Value::Null,
    )
    .await;
    assert_eq!(status, 204);
    for name in ["a", "b"] {
        let (status, problem) = server.get(&format!("/v1/subscriptions/{name}")).await;
        assert_problem(status, &problem, 404, "not found", name);
    }
    server.stop().await;
}

// Goal: a malformed duration or start position is refused with a detail that names the
// field, like every other bad field, although the value's own parser cannot know the field.
// Method: a table of such creates.
#[tokio::test]
async fn bad_duration_or_start_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("orders", json!({})).await;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "bad duration",
            orders_spec(json!({"ack_timeout": "5 parsecs"})),
            "ack_timeout",
        ),
        (
            "bad retry duration",
            orders_spec(json!({"retry": {"initial": "soon"}})),
            "initial",
        ),
        (
            "bad start",
            orders_spec(json!({"start": "yesterday"})),
            "start",
        ),
    ];
    assert_specs_refused(&server, cases).await;
    server.stop().await;
}

// Goal: /metrics reports the subscription: lag, attempts by outcome with the right counts,
// and the publish-to-ack histogram. Method: ack two events, reject one, scrape.
#[tokio::test]
async fn metrics_count_subscription_attempts_lag_and_delivery_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({})).await;
    create_subscription(&server, "metered", json!({"topic": "t"})).await;
    let events: Vec<Value> = (0..3).map(|i| event(&format!("e{i}"), json!({}))).collect();
    publish_all(&server, "t", events).await;
    let pulled = pull_exactly(&server, "metered", 3).await;
    let ids = ack_ids(&pulled);
    assert_eq!(
        settle(&server, "metered", "ack", &ids[..2]).await["settled"],
        2
    );
    assert_eq!(
        settle(&server, "metered", "reject", &ids[2..]).await["settled"],
        1
    );
    let text = server
        .client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let label = "subscription=\"metered\"";
    let expected = [
        ("keel_subscription_lag", None, 0.0),
        ("keel_subscription_in_flight", None, 0.0),
        ("keel_subscription_dlq_depth", None, 1.0),
        (
            "keel_subscription_attempts_total",
            Some("outcome=\"acked\""),
            2.0,
        ),
        (
            "keel_subscription_attempts_total",
            Some("outcome=\"rejected\""),
            1.0,
        ),
        (
            "keel_subscription_attempts_total",
            Some("outcome=\"dead_lettered\""),
            1.0,
        ),
        ("keel_subscription_delivery_seconds_count", None, 2.0),
    ];
    for (name, outcome, value) in expected {
        let labels: Vec<&str> = std::iter::once(label).chain(outcome).collect();
        assert_eq!(
            metric(&text, name, &labels),
            Some(value),
            "{name} {outcome:?}\n{text}"
        );
    }
    server.stop().await;
}

// Goal: a subscription whose files cannot be read at start (a damaged spec, a lost dead-letter
// directory, which must not come back as an empty queue) refuses service alone: readyz turns
// degraded and names it, describe and pull answer 503 with the reason, the other
// subscriptions deliver, and deleting it removes it so the name can be used again.
// Method: for each damage, damage one subscription while the server is stopped, restart.
#[tokio::test]
async fn unreadable_subscription_refuses_service_alone_until_deleted() {
    let damages: [(&str, Damage); 2] = [
        ("spec", |dir| {
            std::fs::write(dir.join("subscription.json"), "{not json").unwrap()
        }),
        ("dlq", |dir| {
            std::fs::remove_dir_all(dir.join("dlq")).unwrap()
        }),
    ];
    for (what, damage) in damages {
        eprintln!("damage: {what}");
        subscription_damaged_at_start(damage).await;
    }
}

/// Damages a subscription's directory while the server is stopped.
type Damage = fn(&std::path::Path);

async fn subscription_damaged_at_start(damage: Damage) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({})).await;
    let spec = json!({"topic": "t", "start": "earliest"});
    create_subscription(&server, "broken", spec.clone()).await;
    create_subscription(&server, "fine", spec.clone()).await;
    let data_dir = server.stop().await;
    damage(&data_dir.join("subscriptions/broken"));

    let server = TestServer::start(&data_dir).await;
    let (status, ready) = server.get("/readyz").await;
    assert_eq!(
        (status, &ready["status"]),
        (200, &json!("degraded")),
        "{ready}"
    );
    assert_eq!(
        ready["unavailable_subscriptions"][0]["name"], "broken",
        "{ready}"
    );
    for (method, path) in [
        (Method::GET, "/v1/subscriptions/broken"),
        (Method::POST, "/v1/subscriptions/broken/pull"),
    ] {
        let (status, problem) = send(&server, method, path, Value::Null).await;
        assert_problem(status, &problem, 503, "could not be opened at start", path);
    }
    let (status, problem) = send(
        &server,
        Method::PUT,
        "/v1/subscriptions/broken",
        spec.clone(),
    )
    .await;
    assert_problem(
        status,
        &problem,
        503,
        "could not be opened at start",
        "re-create",
    );
    publish_all(&server, "t", vec![event("e1", json!({}))]).await;
    assert_eq!(event_ids(&pull_exactly(&server, "fine", 1).await), ["e1"]);

    let (status, _) = send(
        &server,
        Method::DELETE,
        "/v1/subscriptions/broken",
        Value::Null,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(server.get("/readyz").await.1["status"], "ready");
    create_subscription(&server, "broken", spec).await;
    server.stop().await;
}

// Goal: operations that do not fit the request are refused precisely, never half-applied:
// acking on a push subscription (409), a pull asking for more than 1,000 or waiting longer
// than 30 s (400), a dead-letter id that is not PARTITION-OFFSET (400, not 404). Method: one
// request of each against real subscriptions.
#[tokio::test]
async fn misfit_operations_are_refused_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({})).await;
    create_subscription(&server, "p", json!({"topic": "t"})).await;
    let push = json!({"topic": "t", "sink": {"url": "http://127.0.0.1:9/hook"}});
    create_subscription(&server, "h", push).await;
    let fake_id = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let cases = [
        (
            Method::POST,
            "/v1/subscriptions/h/ack",
            json!({"ack_ids": [fake_id]}),
            409,
            "pushes to a sink",
        ),
        (
            Method::POST,
            "/v1/subscriptions/p/pull",
            json!({"max": 5000}),
            400,
            "max must be between 1 and 1000",
        ),
        (
            Method::POST,
            "/v1/subscriptions/p/pull",
            json!({"wait": "1m"}),
            400,
            "wait must be at most 30s",
        ),
        (
            Method::GET,
            "/v1/subscriptions/p/dlq/bogus",
            Value::Null,
            400,
            "PARTITION-OFFSET",
        ),
        (
            Method::POST,
            "/v1/subscriptions/p/dlq/redrive",
            json!({"ids": ["x"]}),
            400,
            "PARTITION-OFFSET",
        ),
        (
            Method::POST,
            "/v1/subscriptions/p/nack",
            json!({"ack_ids": [fake_id], "delay": "1000d"}),
            400,
            "delay must be at most 1d",
        ),
    ];
    for (method, path, body, expected, needle) in cases {
        let (status, problem) = send(&server, method, path, body).await;
        assert_problem(status, &problem, expected, needle, path);
    }
    server.stop().await;
}

// Goal: an ack id forged from a real one (same server start, a partition the topic does not
// have) is answered as stale, and the subscription goes on serving: it once panicked the
// server while holding the subscription's lock. Method: pull a message, rewrite the
// partition bytes of its ack id, ack the forgery, then ack the real id and describe.
#[tokio::test]
async fn forged_ack_id_is_stale_and_harmless() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    server.put_topic("t", json!({})).await;
    create_subscription(&server, "s", json!({"topic": "t", "start": "earliest"})).await;
    publish_all(&server, "t", vec![event("e1", json!({}))]).await;
    let real = ack_ids(&pull_exactly(&server, "s", 1).await);
    let mut bytes = URL_SAFE_NO_PAD.decode(&real[0]).unwrap();
    bytes[4..8].copy_from_slice(&7u32.to_be_bytes());
    let forged = URL_SAFE_NO_PAD.encode(bytes);
    let answer = settle(&server, "s", "ack", std::slice::from_ref(&forged)).await;
    assert_eq!(answer, json!({"settled": 0, "stale": [forged]}));
    let answer = settle(&server, "s", "ack", &real).await;
    assert_eq!(answer["settled"], 1, "{answer}");
    assert_eq!(describe(&server, "s").await["delivered"], 1);
    server.stop().await;
}
