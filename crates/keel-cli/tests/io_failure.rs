//! A failed write or fsync is never acknowledged, with the real server and a real failing
//! syscall: fdatasync failing with EIO, and pwrite failing with ENOSPC (disk full).
//!
//! Method: run `keel serve` under `fiu-run -x` (libfiu's POSIX preload), then make the
//! syscall fail with `fiu-ctrl` while publishing.
//! Invariants: the publish waiting on the failed write or fsync gets an error (503), not an
//! ack; the partition then refuses writes even after the syscall works again (after a
//! failed fsync Linux may have dropped the dirty pages, so retrying it would be pretending)
//! and `/readyz` names it; other partitions keep serving; after a restart every
//! acknowledged event is there and the partition serves again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};

use keel_testkit::process::free_port;
use serde_json::{Value, json};
use support::{KEEL, publish_event, read_partition};

fn fiu_ctrl(pid: u32, command: &str) {
    let status = Command::new("fiu-ctrl")
        .args(["-c", command, &pid.to_string()])
        .status()
        .expect("fiu-ctrl runs");
    assert!(status.success(), "fiu-ctrl {command}");
}

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
    failed_io_is_never_acknowledged("posix/io/sync/fdatasync", 5).await;
}

#[tokio::test]
async fn disk_full_is_never_acknowledged_and_stops_the_partition() {
    failed_io_is_never_acknowledged("posix/io/rw/pwrite", 28).await;
}

/// Goal and method: see the module doc. `errno` is what the failing syscall sets.
async fn failed_io_is_never_acknowledged(fault: &str, errno: i32) {
    if Command::new("fiu-run")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        assert!(
            std::env::var("KEEL_SKIP_FIU").is_ok(),
            "fiu-run is missing: run scripts/install-test-deps.sh (or set KEEL_SKIP_FIU=1 to skip this test)"
        );
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
        status, 503,
        "the publish whose fsync failed is not acknowledged: {problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("write or fsync failed"),
        "{problem}"
    );
    fiu_ctrl(keel.pid(), &format!("disable name={fault}"));

    let (status, problem) = publish(&client, &url, "a", "after", "k").await;
    assert_eq!(
        status, 503,
        "the partition stays stopped after a failed fsync: {problem}"
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
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["unavailable_partitions"][0]["topic"], "a");

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
        !ids.contains(&json!("after")),
        "nothing was appended after the failure: {ids:?}"
    );
    assert_eq!(
        publish(&client, &keel.url, "a", "recovered", "k").await.0,
        200,
        "a restart recovers the partition"
    );
}
