//! File descriptors, with the real server: idle sealed segments hold none, and a roll that
//! finds none left is retried and refused with a 503, never treated like a failed fsync.
//!
//! Method: `keel serve` with 4 KiB segments, so a few megabytes make hundreds of segment files;
//! under `prlimit` (a low open-files limit that keel cannot raise) for the first test, under
//! libfiu's POSIX preload (`fiu-run -x`, opens made to fail with EMFILE by `fiu-ctrl`) for the
//! second.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use keel_testkit::process::{KeelBinary, KeelProcess, free_port};
use serde_json::{Value, json};
use support::{KEEL, fiu_ctrl, fiu_missing, get, post_batch, put, read_partition};

/// Small segments: each publish of a batch below fills one.
const SETTINGS: &str = "segment_bytes_max = 4096\n";

/// The open-files limit of the first test: far below the 3 files each sealed segment has.
const OPEN_FILES_MAX: &str = "--nofile=256:256";

/// Segments the first test writes: 3 files each, several times the limit.
const SEGMENTS: usize = 400;

/// Events per publish: about 3.6 KiB, so each publish goes into a segment of its own.
const BATCH_EVENTS: usize = 8;

/// Starts keel (through `binary`, which may wrap it) with [`SETTINGS`] on a fresh port.
async fn start(binary: KeelBinary, dir: &Path) -> KeelProcess {
    let config = dir.join("keel.toml");
    std::fs::write(&config, SETTINGS).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["--config", config.to_str().unwrap()];
    let keel = binary.spawn_with(&dir.join("data"), &listen, &dir.join("keel.log"), &args);
    keel.wait_ready().await;
    keel
}

/// Publishes the events `{first}..{first + BATCH_EVENTS}` (400-byte data each) to topic `t`
/// in one batch: the status, the `Retry-After` header and the answer.
async fn publish_batch(
    client: &reqwest::Client,
    url: &str,
    first: usize,
) -> (u16, Option<String>, Value) {
    let events: Vec<Value> = (first..first + BATCH_EVENTS)
        .map(|id| {
            json!({"specversion": "1.0", "id": format!("e-{id}"), "source": "/fd-test",
                "type": "t", "data": {"n": id, "pad": "x".repeat(400)}})
        })
        .collect();
    let response = post_batch(client, url, "t", events).await;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    (status, retry_after, serde_json::from_str(&text).unwrap())
}

/// The descriptors `pid` has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The ids of the events stored in partition 0 of topic `t`, in order.
async fn stored_ids(client: &reqwest::Client, url: &str) -> Vec<String> {
    read_partition(client, url, "t", 0)
        .await
        .iter()
        .map(|record| record["event"]["id"].as_str().unwrap().to_owned())
        .collect()
}

fn expected_ids(events: usize) -> Vec<String> {
    (0..events).map(|id| format!("e-{id}")).collect()
}

// Goal: a partition of many more segment files than the process may open keeps working: every
// publish is acknowledged, reads from the oldest segments succeed, a restart recovers it, and
// keel's open descriptors stay bounded (idle sealed segments hold none: at most the log's
// cache of SEALED_FILES_OPEN_MAX).
// Method: keel under `prlimit --nofile=256:256`; 400 publishes of one segment each (1,200
// segment files); one read from each segment; count /proc/PID/fd against the count before
// publishing; restart under the same limit and read again. Before, each sealed segment held its
// three files open: the 86th segment failed.
#[tokio::test]
async fn many_sealed_segments_stay_readable_under_a_low_open_files_limit() {
    let dir = tempfile::tempdir().unwrap();
    let binary = KEEL.wrapped_in(&["prlimit", OPEN_FILES_MAX]);
    let keel = start(binary, dir.path()).await;
    let (url, client) = (keel.url.clone(), reqwest::Client::new());
    put(&client, &url, "/v1/topics/t", json!({"partitions": 1})).await;
    let before = open_descriptors(keel.pid());
    for segment in 0..SEGMENTS {
        let (status, _, answer) = publish_batch(&client, &url, segment * BATCH_EVENTS).await;
        assert_eq!(status, 200, "publish {segment}: {answer}");
    }
    let (_, topic) = get(&client, &format!("{url}/v1/topics/t")).await;
    let bytes = topic["partitions"][0]["bytes"].as_u64().unwrap();
    assert!(bytes > 4096 * (SEGMENTS as u64 - 1), "{topic}");
    for segment in (0..SEGMENTS).rev() {
        let offset = segment * BATCH_EVENTS + BATCH_EVENTS / 2;
        let read = format!("{url}/v1/topics/t/partitions/0/events?from={offset}&max=1");
        let (status, records) = get(&client, &read).await;
        assert_eq!(status, 200, "read of segment {segment}: {records}");
        assert_eq!(records["records"][0]["event"]["id"], format!("e-{offset}"));
    }
    let grown = open_descriptors(keel.pid()).saturating_sub(before);
    let bound = keel_log::limits::SEALED_FILES_OPEN_MAX + 8;
    assert!(
        grown <= bound,
        "{grown} more descriptors open after writing and reading {SEGMENTS} segments (at most {bound})"
    );
    keel.kill9();

    let keel = start(binary, dir.path()).await;
    let ids = stored_ids(&client, &keel.url).await;
    assert_eq!(
        ids,
        expected_ids(SEGMENTS * BATCH_EVENTS),
        "recovered whole"
    );
    // Recovery and the key index's catch-up read every segment too.
    let grown = open_descriptors(keel.pid()).saturating_sub(before);
    assert!(
        grown <= bound,
        "{grown} more descriptors after a restart and a read of it all"
    );
}

// Goal: when a roll to a new segment finds no file descriptor left (EMFILE), the publish that
// needed it is refused with a 503 and Retry-After (nothing of it stored), the partition is not
// poisoned (a failed fsync would stop it until a restart): publishing resumes by itself once
// descriptors are free, and no acknowledged event is lost, before and after a kill -9.
// Method: `fiu-run -x`, one segment filled, every open() failing with EMFILE (fiu-ctrl) during
// the publish that rolls; then opens work again.
#[tokio::test]
async fn a_roll_out_of_descriptors_is_refused_with_503_and_publishing_resumes() {
    if fiu_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keel = start(KEEL.wrapped_in(&["fiu-run", "-x"]), dir.path()).await;
    let (url, client) = (keel.url.clone(), reqwest::Client::new());
    put(&client, &url, "/v1/topics/t", json!({"partitions": 1})).await;
    let (status, _, answer) = publish_batch(&client, &url, 0).await;
    assert_eq!(status, 200, "{answer}");

    let fault = "posix/io/oc/open";
    fiu_ctrl(keel.pid(), &format!("enable name={fault},failinfo=24"));
    let (status, retry_after, problem) = publish_batch(&client, &url, 1000).await;
    fiu_ctrl(keel.pid(), &format!("disable name={fault}"));
    assert_eq!(status, 503, "{problem}");
    assert_eq!(retry_after.as_deref(), Some("1"), "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("no file descriptor left"), "{detail}");

    let (status, ready) = get(&client, &format!("{url}/readyz")).await;
    assert_eq!(
        (status, &ready["status"]),
        (200, &json!("ready")),
        "{ready}"
    );
    for first in [BATCH_EVENTS, 2 * BATCH_EVENTS] {
        let (status, _, answer) = publish_batch(&client, &url, first).await;
        assert_eq!(
            status, 200,
            "publishing resumes without a restart: {answer}"
        );
    }
    let expected = expected_ids(3 * BATCH_EVENTS);
    assert_eq!(
        stored_ids(&client, &url).await,
        expected,
        "nothing refused kept"
    );
    keel.kill9();
    let keel = start(KEEL, dir.path()).await;
    assert_eq!(
        stored_ids(&client, &keel.url).await,
        expected,
        "after kill -9"
    );
}
