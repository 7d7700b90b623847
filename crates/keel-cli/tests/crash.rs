//! Crash safety of the whole server: `kill -9` under concurrent publish load, many times.
//!
//! Invariant checked after every restart: every acknowledged event is readable at the
//! partition and offset it was given; offsets in each partition are dense (0, 1, 2, … with
//! no gaps) and ordered; every stored record is an intact event of this test (unacknowledged
//! ones may or may not be there, but never damaged), and no event is stored twice.
//! Cycles: 20 by default; `KEEL_SOAK_CYCLES=N` for a longer soak.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_testkit::process::{KeelProcess, free_port};
use serde_json::json;
use support::{KEEL, read_partition};

const PARTITIONS: u32 = 4;
const CLIENTS: usize = 8;

type Acked = Arc<Mutex<HashMap<String, (u32, u64)>>>;

/// One publisher: batches of 1–16 events (half keyed), until the server dies.
async fn publish_until_dead(url: String, cycle: usize, client_id: usize, acked: Acked) {
    let client = reqwest::Client::new();
    let mut sequence = 0u64;
    loop {
        let size = 1 + (sequence as usize * 7 + client_id) % 16;
        let events: Vec<_> = (0..size)
            .map(|i| {
                let id = format!("c{cycle}-{client_id}-{}", sequence + i as u64);
                let mut event = json!({"specversion": "1.0", "id": id, "source": "crash-test", "type": "t", "data": {"check": format!("{id}!")}});
                if i % 2 == 0 {
                    event["partitionkey"] = json!(format!("key-{}", (sequence + i as u64) % 13));
                }
                event
            })
            .collect();
        sequence += size as u64;
        let response = client
            .post(format!("{url}/v1/topics/crash/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::Value::Array(events).to_string())
            .send()
            .await;
        let Ok(response) = response else { return };
        if response.status() != 200 {
            return;
        }
        let Ok(text) = response.text().await else {
            return;
        };
        let body: serde_json::Value =
            serde_json::from_str(&text).expect("a 200 publish answers JSON");
        let mut acked = acked.lock().unwrap();
        for result in body["results"].as_array().unwrap() {
            let position = (
                result["partition"].as_u64().unwrap() as u32,
                result["offset"].as_u64().unwrap(),
            );
            acked.insert(result["id"].as_str().unwrap().to_owned(), position);
        }
    }
}

async fn verify(keel: &KeelProcess, acked: &HashMap<String, (u32, u64)>) -> usize {
    let client = reqwest::Client::new();
    let mut seen = HashSet::new();
    let mut stored = 0;
    for partition in 0..PARTITIONS {
        let records = read_partition(&client, &keel.url, "crash", partition).await;
        for (expected_offset, record) in (0u64..).zip(&records) {
            assert_eq!(
                record["offset"].as_u64(),
                Some(expected_offset),
                "offsets dense in partition {partition}"
            );
            let event = &record["event"];
            let id = event["id"].as_str().expect("an intact event");
            assert_eq!(
                event["data"]["check"],
                format!("{id}!"),
                "event {id} intact"
            );
            assert!(seen.insert(id.to_owned()), "event {id} stored twice");
            if let Some(&(acked_partition, acked_offset)) = acked.get(id) {
                assert_eq!(
                    (acked_partition, acked_offset),
                    (partition, expected_offset),
                    "acked event {id} at its position"
                );
            }
        }
        stored += records.len();
    }
    let lost: Vec<_> = acked
        .keys()
        .filter(|id| !seen.contains(*id))
        .take(5)
        .collect();
    assert!(lost.is_empty(), "acknowledged events lost: {lost:?}");
    stored
}

// Goal and method: see the module doc. Each cycle publishes from 8 concurrent clients,
// kills the server with SIGKILL after a pseudo-random 50–450 ms, restarts it on the same
// data dir and port, and checks the invariant over everything acknowledged so far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    let cycles: usize = std::env::var("KEEL_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut keel = KEEL.start_on(&data_dir, &listen).await;
    let created = reqwest::Client::new()
        .put(format!("{}/v1/topics/crash", keel.url))
        .body(json!({"partitions": PARTITIONS}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let acked: Acked = Arc::default();
    let mut seed = 0x9e37_79b9_u64;
    for cycle in 0..cycles {
        let publishers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(publish_until_dead(
                    keel.url.clone(),
                    cycle,
                    c,
                    acked.clone(),
                ))
            })
            .collect();
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        tokio::time::sleep(Duration::from_millis(50 + (seed >> 33) % 400)).await;
        keel.kill9();
        for publisher in publishers {
            publisher.await.unwrap();
        }
        keel = KEEL.start_on(&data_dir, &listen).await;
        let snapshot = acked.lock().unwrap().clone();
        let stored = verify(&keel, &snapshot).await;
        eprintln!(
            "cycle {cycle}: {} acknowledged, {stored} stored (seed {seed})",
            snapshot.len()
        );
    }
    assert!(
        acked.lock().unwrap().len() > cycles * 10,
        "the load acknowledged events"
    );
}

// Goal: SIGTERM shuts down gracefully with exit 0, and what was acknowledged is there after.
#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_keeps_events() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let keel = KEEL.start(&data_dir).await;
    let client = reqwest::Client::new();
    client
        .put(format!("{}/v1/topics/t", keel.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    let event = json!({"specversion": "1.0", "id": "g1", "source": "s", "type": "t"});
    let published = client
        .post(format!("{}/v1/topics/t/events", keel.url))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    let status = keel.terminate();
    assert!(status.success(), "exit status {status:?}");
    let keel = KEEL.start(&data_dir).await;
    let records = read_partition(&client, &keel.url, "t", 0).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["event"], event);
}

// Goal: a client holding a half-sent request cannot keep keel from stopping: SIGTERM exits
// 0 within the 10 s grace period (plus slack).
#[tokio::test]
async fn sigterm_stops_even_while_a_client_holds_a_half_sent_request() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let keel = KEEL.start(&dir.path().join("data")).await;
    let mut stuck = tokio::net::TcpStream::connect(&keel.listen).await.unwrap();
    stuck
        .write_all(b"POST /v1/topics/t/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || keel.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    drop(stuck);
}
