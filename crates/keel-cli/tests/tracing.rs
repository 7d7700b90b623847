//! Tracing and logs of `keel serve` as an operator sees them: a traced event's trace context
//! reaches its handlers, keel's push attempt is a span in that trace, and `--log-format json`
//! writes one JSON object per line with the span's fields.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use keel_engine::trace_context::TraceContext;
use keel_testkit::process::{KeelProcess, free_port};
use keel_testkit::sink::{Sink, policy};
use serde_json::{Value, json};
use support::KEEL;

const EVENT_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
/// The publishing client's own span (the HTTP hop), another trace than the event's.
const CALLER_TRACEPARENT: &str = "00-5c1b2d4e6f708192a3b4c5d6e7f80912-1122334455667788-01";

// Goal: an event published with a `traceparent` reaches a pull consumer with it unchanged, and
// a push sink with it as `ce-traceparent` plus an HTTP `traceparent` in the same trace whose
// parent is keel's attempt span; that span's ids are in keel's JSON log line for the attempt,
// so an operator can find keel's hop in its logs from the sink's trace. The publish request's
// own `traceparent` header makes keel's publish a span in the caller's trace. Every log line
// is a JSON object.
#[tokio::test]
async fn a_traced_event_is_followed_through_push_pull_and_json_logs() {
    let sink = Sink::start(policy::accept()).await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut command = KEEL.serve_command(&data_dir, &listen);
    command.args(["--log-format", "json"]).env(
        "KEEL_LOG",
        "info,keel_engine::webhook=debug,keel_server::publish=debug",
    );
    let keel = KeelProcess::spawn(command, &data_dir, &listen, &dir.path().join("keel.log"));
    keel.wait_ready().await;
    let client = reqwest::Client::new();
    let put = |path: &str, body: Value| {
        client
            .put(format!("{}{path}", keel.url))
            .body(body.to_string())
            .send()
    };
    assert!(
        put("/v1/topics/orders", json!({"partitions": 1}))
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let push = json!({"topic": "orders", "sink": {"url": sink.url("/hook")}, "start": "earliest"});
    assert!(
        put("/v1/subscriptions/pushed", push)
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let pull = json!({"topic": "orders", "start": "earliest"});
    assert!(
        put("/v1/subscriptions/pulled", pull)
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let event = json!({"specversion": "1.0", "id": "o-1", "source": "/shop", "type": "order.created",
        "traceparent": EVENT_TRACEPARENT, "data": {"amount": 42}});
    let published = client
        .post(format!("{}/v1/topics/orders/events", keel.url))
        .header("content-type", "application/cloudevents+json")
        .header("traceparent", CALLER_TRACEPARENT)
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);

    let exchanges = sink
        .wait_for("the traced event", Duration::from_secs(10), |e| {
            !e.is_empty()
        })
        .await;
    let request = &exchanges[0].request;
    assert_eq!(request.header("ce-traceparent"), Some(EVENT_TRACEPARENT));
    let hop = TraceContext::parse(request.header("traceparent").unwrap()).unwrap();
    let event_span = TraceContext::parse(EVENT_TRACEPARENT).unwrap();
    assert_eq!(hop.trace_id, event_span.trace_id);
    assert_ne!(hop.span_id, event_span.span_id);

    let pulled = client
        .post(format!("{}/v1/subscriptions/pulled/pull", keel.url))
        .body(json!({"max": 1, "wait": "5s"}).to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let pulled: Value = serde_json::from_str(&pulled).unwrap();
    let pulled_event = &pulled["messages"][0]["event"];
    assert_eq!(pulled_event["traceparent"], EVENT_TRACEPARENT, "{pulled}");

    // The attempt's log line is written once the sink answered: wait for it.
    let attempt = logged(&keel, "push attempt").await;
    let span = &attempt["span"];
    assert_eq!(span["trace_id"], hop.trace_id_hex(), "{attempt}");
    assert_eq!(span["span_id"], hop.span_id_hex(), "{attempt}");
    assert_eq!(span["parent_id"], event_span.span_id_hex(), "{attempt}");
    assert_eq!(span["event_id"], "o-1", "{attempt}");

    let publish = logged(&keel, "published").await;
    let caller = TraceContext::parse(CALLER_TRACEPARENT).unwrap();
    assert_eq!(
        publish["span"]["trace_id"],
        caller.trace_id_hex(),
        "{publish}"
    );
    assert_eq!(
        publish["span"]["parent_id"],
        caller.span_id_hex(),
        "{publish}"
    );
    assert_eq!(publish["events"], 1, "{publish}");
}

/// The first line of keel's JSON log with `message`, waiting up to 5 s for it; every line
/// must be a JSON object.
async fn logged(keel: &KeelProcess, message: &str) -> Value {
    for _ in 0..100 {
        let log = keel.log_text();
        let found = log
            .lines()
            .map(|line| {
                serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"))
            })
            .find(|line| line["message"] == message);
        if let Some(line) = found {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {message:?} logged: {}", keel.log_text())
}
