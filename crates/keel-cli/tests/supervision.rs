//! Supervision of a real `keel serve`: tasks made to panic (`KEEL_FAULTS`) are restarted with
//! backoff, or given up on, and nothing else is disturbed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keel_testkit::process::{KeelProcess, free_port};
use keel_testkit::sink::{Exchange, Sink, policy};
use serde_json::json;
use support::{KEEL, alert_notices, get, publish_batch, put};

const EVENTS: usize = 40;

// Goal (the issue's fault test): a task that panics repeatedly is restarted with backoff and
// reported, and everything else keeps working. Invariants:
// - `flaky`'s dispatcher panics on its first 3 starts: it is restarted, and its sink still
//   gets every event; `GET /v1/tasks` and the metric count 3 failures;
// - `broken`'s dispatcher panics on every start: after 6 failures it is not restarted; only
//   `broken` refuses service (readiness is "degraded" naming it, with the reason), its sink
//   gets nothing;
// - `healthy` (same topic) gets every event, before and after; the process stays up and
//   publishing goes on.
#[tokio::test]
async fn a_panicking_task_is_restarted_and_contained() {
    let sink = Sink::start(policy::accept()).await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut command = KEEL.serve_command(&data_dir, &listen);
    command.env(
        "KEEL_FAULTS",
        "subscription/flaky/dispatcher=3,subscription/broken/dispatcher=always",
    );
    let keel = KeelProcess::spawn(command, &data_dir, &listen, &dir.path().join("keel.log"));
    keel.wait_ready().await;
    let client = reqwest::Client::new();
    put(
        &client,
        &keel.url,
        "/v1/topics/orders",
        json!({"partitions": 2}),
    )
    .await;
    for name in ["flaky", "broken", "healthy"] {
        let spec = json!({"topic": "orders", "start": "earliest",
            "sink": {"url": sink.url(&format!("/{name}"))}});
        put(
            &client,
            &keel.url,
            &format!("/v1/subscriptions/{name}"),
            spec,
        )
        .await;
    }
    publish_batch(&client, &keel.url, "orders", 0..EVENTS, 7).await;

    let delivered_to = |exchanges: &[Exchange], path: &str| -> BTreeSet<String> {
        exchanges
            .iter()
            .filter(|e| e.accepted() && e.request.path() == path)
            .map(|e| e.request.event_id().to_owned())
            .collect()
    };
    sink.wait_for(
        "every event at flaky and healthy",
        Duration::from_secs(20),
        |e| {
            delivered_to(e, "/flaky").len() == EVENTS && delivered_to(e, "/healthy").len() == EVENTS
        },
    )
    .await;

    // Six failures come within about 3 s of backoff: wait for `broken` to be given up.
    let deadline = Instant::now() + Duration::from_secs(20);
    let readiness = loop {
        let (status, readiness) = get(&client, &format!("{}/readyz", keel.url)).await;
        if readiness["status"] == "degraded" || Instant::now() > deadline {
            assert_eq!(status, 200, "{readiness}");
            break readiness;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let unavailable = readiness["unavailable_subscriptions"].as_array().unwrap();
    assert_eq!(unavailable.len(), 1, "{readiness}");
    assert_eq!(unavailable[0]["name"], "broken", "{readiness}");
    let reason = unavailable[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("subscription/broken/dispatcher failed 6 times"),
        "{reason}"
    );

    let (_, tasks) = get(&client, &format!("{}/v1/tasks", keel.url)).await;
    let task = |name: &str| {
        tasks["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|task| task["task"] == name)
            .unwrap_or_else(|| panic!("{name} in {tasks}"))
            .clone()
    };
    let flaky = task("subscription/flaky/dispatcher");
    assert_eq!(flaky["failures"], 3, "{flaky}");
    assert!(
        flaky["last_failure"]
            .as_str()
            .unwrap()
            .contains("injected fault")
    );
    let broken = task("subscription/broken/dispatcher");
    assert_eq!(
        (&broken["state"], &broken["failures"]),
        (&json!("failed"), &json!(6))
    );
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 2, "{tasks}");
    let (_, metrics) = get(&client, &format!("{}/metrics", keel.url)).await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains(r#"keel_task_failures_total{task="subscription/flaky/dispatcher"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"keel_task_failed{task="subscription/broken/dispatcher"} 1"#));

    // Both were reported on `_keel.alerts`: `flaky` as failing (its third failure), `broken`
    // as failing, then as failed.
    let notices = alert_notices(&client, &keel.url).await;
    let of = |task: &str| -> Vec<&str> {
        notices
            .iter()
            .filter(|(_, subject)| subject == task)
            .map(|(kind, _)| kind.as_str())
            .collect()
    };
    assert_eq!(
        of("subscription/flaky/dispatcher"),
        ["keel.task.failing"],
        "{notices:?}"
    );
    assert_eq!(
        of("subscription/broken/dispatcher"),
        ["keel.task.failing", "keel.task.failed"],
        "{notices:?}"
    );

    // The rest goes on: more events reach the healthy subscriptions, none reaches `broken`.
    publish_batch(&client, &keel.url, "orders", EVENTS..EVENTS + 10, 7).await;
    sink.wait_for(
        "the later events at healthy",
        Duration::from_secs(10),
        |e| {
            delivered_to(e, "/healthy").len() == EVENTS + 10
                && delivered_to(e, "/flaky").len() == EVENTS + 10
        },
    )
    .await;
    assert!(delivered_to(&sink.exchanges(), "/broken").is_empty());
}
