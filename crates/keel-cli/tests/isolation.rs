//! Isolation between subscriptions of a real `keel serve`: a failing sink and a slow sink on
//! the same topic do not starve a healthy subscription of delivery, and keel's memory stays
//! bounded while they misbehave.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use keel_testkit::process::KeelProcess;
use keel_testkit::sink::{Response, Sink, policy};
use serde_json::json;
use support::{KEEL, get, publish_batch, put};

const EVENTS: usize = 3_000;
const BATCH: usize = 500;

// Goal (issue 11, isolation): one failing and one slow subscription cannot starve another
// of the same topic. Invariants:
// - a healthy subscription created beside a sink that always answers 503 and a sink that
//   answers only after 20 s drains the same backlog within 3× (+2 s) of the time it takes
//   alone, and gets every event;
// - the bad neighbours hold no more in flight than their max_in_flight, spend no attempts
//   while their circuit is open (the failing one's events are not dead-lettered in the
//   meantime: it has retries left), and keel's resident memory grows by less than 100 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_neighbours_do_not_starve_a_healthy_subscription() {
    let healthy = Sink::start(policy::accept()).await;
    let failing = Sink::start(policy::always(503)).await;
    let slow = Sink::start(policy::reply(
        Response::new(200).after(Duration::from_secs(20)).into(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let keel = KEEL.start(&dir.path().join("data")).await;
    let client = reqwest::Client::new();
    put(
        &client,
        &keel.url,
        "/v1/topics/orders",
        json!({"partitions": 4}),
    )
    .await;
    for first in (0..EVENTS).step_by(BATCH) {
        publish_batch(&client, &keel.url, "orders", first..first + BATCH, 101).await;
    }

    let alone = drain(&client, &keel, &healthy, "alone").await;
    let rss_before = keel_testkit::process::resident_bytes(keel.pid());
    let neighbour = |url: String| {
        json!({"topic": "orders", "start": "earliest", "sink": {"url": url}, "max_in_flight": 50,
            "retry": {"max_attempts": 100, "initial": "100ms", "max": "1s"}})
    };
    put(
        &client,
        &keel.url,
        "/v1/subscriptions/failing",
        neighbour(failing.url("/")),
    )
    .await;
    put(
        &client,
        &keel.url,
        "/v1/subscriptions/slow",
        neighbour(slow.url("/")),
    )
    .await;
    // Let the neighbours fill their in-flight windows and retry queues first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let beside = drain(&client, &keel, &healthy, "beside").await;
    eprintln!("healthy drain: alone {alone:?}, beside bad neighbours {beside:?}");
    assert!(
        beside <= alone * 3 + Duration::from_secs(2),
        "beside bad neighbours the drain took {beside:?}, alone {alone:?}"
    );

    let url = |name: &str| format!("{}/v1/subscriptions/{name}", keel.url);
    let (_, slow_info) = get(&client, &url("slow")).await;
    assert!(
        slow_info["in_flight"].as_u64().unwrap() <= 50,
        "{slow_info}"
    );
    let (_, failing_info) = get(&client, &url("failing")).await;
    assert_eq!(failing_info["dead_lettered"], 0, "{failing_info}");
    assert!(
        failing_info["in_flight"].as_u64().unwrap() <= 50,
        "{failing_info}"
    );
    let growth = keel_testkit::process::resident_bytes(keel.pid()).saturating_sub(rss_before);
    assert!(growth < 100 << 20, "keel's memory grew by {growth} bytes");
}

/// Creates the subscription `name` to `sink` from the earliest event and waits until the sink
/// accepted every published event; returns how long that took.
async fn drain(client: &reqwest::Client, keel: &KeelProcess, sink: &Sink, name: &str) -> Duration {
    let path = format!("/{name}");
    let spec = json!({"topic": "orders", "start": "earliest", "sink": {"url": sink.url(&path)}});
    let started = Instant::now();
    put(
        client,
        &keel.url,
        &format!("/v1/subscriptions/{name}"),
        spec,
    )
    .await;
    sink.wait_for(
        &format!("every event at {name}"),
        Duration::from_secs(60),
        |exchanges| {
            let ids: std::collections::BTreeSet<&str> = exchanges
                .iter()
                .filter(|e| e.accepted() && e.request.path() == path)
                .map(|e| e.request.event_id())
                .collect();
            ids.len() == EVENTS
        },
    )
    .await;
    started.elapsed()
}
