//! A failed write or fsync is never acknowledged, with the real server and a real failing
//! syscall: fdatasync failing with EIO, and pwrite failing with ENOSPC (disk full).
//!
//! Method: run `keel serve` under `fiu-run -x` (libfiu's POSIX preload), then make the
//! syscall fail with `fiu-ctrl` while publishing.
//! Invariants: the publish waiting on the failed write or fsync gets an error, not an ack;
//! other partitions keep serving; after a restart every acknowledged event is there, nothing
//! refused is, and the partition serves. A failed fsync (503) stops the partition even after
//! the syscall works again (Linux may have dropped the dirty pages, so retrying it would be
//! pretending) and `/readyz` names it. A write failing for a full disk (507) keeps nothing of
//! the commit and stops nothing: publishing works again as soon as the write does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use keel_testkit::process::free_port;
use serde_json::{Value, json};
use support::{KEEL, fiu_ctrl, fiu_missing, publish_event, read_partition};

async fn publish(
    client: &reqwest::Client,
    url: &str,
    topic: &str,
    id: &str,
    key: &str,
) -> (u16, Value) {
    let event = json!({"specversion": "1.0", "id": id, "source": "fsync-test", "type": "t", "partitionkey": key});
    publish_event(client, url, topic, &event).await
}

#[tokio::test]
async fn failed_fsync_is_never_acknowledged_and_stops_the_partition() {
    let fault = "posix/io/sync/fdatasync";
    failed_io_is_never_acknowledged(fault, 5, (503, "write or fsync failed")).await;
}

#[tokio::test]
async fn disk_full_is_never_acknowledged_and_stops_nothing() {
    let fault = "posix/io/rw/pwrite";
    failed_io_is_never_acknowledged(fault, 28, (507, "no space left")).await;
}

/// Goal and method: see the module doc. `errno` is what the failing syscall sets; `refusal`
/// the status and a piece of the problem's detail the failed publish gets (507: the
/// partition goes on, 503: it stops).
async fn failed_io_is_never_acknowledged(fault: &str, errno: i32, refusal: (u16, &str)) {
    let stops = refusal.0 == 503;
    if fiu_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    // fiu-run execs keel with its preload: the child's pid is keel's, for fiu-ctrl.
    let keel = KEEL
        .wrapped_in(&["fiu-run", "-x"])
        .start_on(&data_dir, &listen)
        .await;
    let url = keel.url.clone();
    let client = reqwest::Client::new();
    for topic in ["a", "b"] {
        client
            .put(format!("{url}/v1/topics/{topic}"))
            .body("{}")
            .send()
            .await
            .unwrap();
    }
    assert_eq!(publish(&client, &url, "a", "before", "k").await.0, 200);

    fiu_ctrl(keel.pid(), &format!("enable name={fault},failinfo={errno}"));
    let (status, problem) = publish(&client, &url, "a", "during", "k").await;
    assert_eq!(
        status, refusal.0,
        "the publish whose write or fsync failed is not acknowledged: {problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains(refusal.1),
        "{problem}"
    );
    fiu_ctrl(keel.pid(), &format!("disable name={fault}"));

    let (status, problem) = publish(&client, &url, "a", "after", "k").await;
    let expected = if stops { 503 } else { 200 };
    assert_eq!(
        status, expected,
        "after the failure the partition stays stopped (503) or goes on (200): {problem}"
    );
    let (status, problem) = publish(&client, &url, "b", "other", "k").await;
    assert_eq!(status, 200, "other partitions keep serving: {problem}");
    let ready: Value = serde_json::from_str(
        &client
            .get(format!("{url}/readyz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    if stops {
        assert_eq!(ready["status"], "degraded");
        assert_eq!(ready["unavailable_partitions"][0]["topic"], "a");
    } else {
        assert_eq!(ready["status"], "ready", "{ready}");
    }

    keel.kill9();
    let keel = KEEL.start_on(&data_dir, &listen).await;
    let ids: Vec<Value> = read_partition(&client, &keel.url, "a", 0)
        .await
        .iter()
        .map(|r| r["event"]["id"].clone())
        .collect();
    assert_eq!(
        ids.first(),
        Some(&json!("before")),
        "the acknowledged event survives"
    );
    assert!(
        !ids.contains(&json!("during")),
        "nothing of the failed commit is there: {ids:?}"
    );
    assert_eq!(
        ids.contains(&json!("after")),
        !stops,
        "appended after the failure only where the partition went on: {ids:?}"
    );
    assert_eq!(
        publish(&client, &keel.url, "a", "recovered", "k").await.0,
        200,
        "a restart recovers the partition"
    );
}
