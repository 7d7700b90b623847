//! Storage running out, with the real `keel` binary on real files: publishing is refused
//! with 507 before keel reaches a real "disk full", nothing is corrupted, reads and
//! deliveries go on, and publishing resumes by itself once space returns.
//!
//! Two limits, one scenario: a cap on the data directory (`data_dir_bytes_max`: runs
//! everywhere), and the free space of a real, small file system (`disk_free_bytes_min` on a
//! 64 MiB tmpfs: needs `mount`, which needs root or CAP_SYS_ADMIN; skipped with the reason
//! printed where it is missing).
//!
//! Invariants checked:
//! - publishing is refused with 507 and a problem naming the limit, before keel hits ENOSPC:
//!   no write fails (the partitions keep serving; `/readyz` stays ready);
//! - while refused, reads answer and a pull subscription delivers and takes acks (their
//!   checkpoints are written);
//! - space freed (a topic deleted) makes publishing work again without a restart;
//! - after a kill -9 and a restart, every acknowledged event is there, recovery cut nothing
//!   (`keel_recovery_truncated_bytes_total` 0), and acked deliveries are not delivered again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keel_testkit::process::{KeelProcess, free_port};
use serde_json::{Value, json};
use support::{KEEL, get, post_batch, publish_event, read_partition};

/// Segments this small let a few megabytes make many files, as a long-running keel has.
const SETTINGS: &str =
    "segment_bytes_max = 262144\n[backpressure]\ndisk_check_interval = \"100ms\"\n";

/// Most fill requests before the test gives up waiting for a 507.
const FILL_REQUESTS_MAX: usize = 2_000;

#[tokio::test]
async fn data_dir_cap_refuses_publish_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let limit = "data_dir_bytes_max = 8388608\ndisk_free_bytes_min = 0\n";
    let outcome = FullStorage {
        dir: dir.path(),
        data_dir: &dir.path().join("data"),
        limit,
        reason: "data_dir_full",
        setting: "backpressure.data_dir_bytes_max",
    };
    outcome.run().await;
}

#[tokio::test]
async fn small_disk_refuses_publish_before_it_is_full_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mounted) = Tmpfs::mount_in(dir.path(), "64m") else {
        return;
    };
    let mount_point = mounted.0.clone();
    let limit = "disk_free_bytes_min = 33554432\n";
    let outcome = FullStorage {
        dir: dir.path(),
        data_dir: &mount_point.join("data"),
        limit,
        reason: "disk_full",
        setting: "backpressure.disk_free_bytes_min",
    };
    outcome.run().await;
}

// Goal: when the disk really fills before keel's limits refuse (a write fails with ENOSPC:
// something else filled the disk, or the minimum is 0), the commit is refused with a 507
// naming the full disk and nothing of it is kept; the partition stays in service (nothing is
// poisoned: `/readyz` is ready, reads answer); publishing resumes without a restart once space
// returns; after a kill -9 every acknowledged event is there and recovery cuts nothing.
// Method: a 16 MiB tmpfs and `disk_free_bytes_min = 0`, filled by a second topic, which is
// then deleted.
#[tokio::test]
async fn a_real_enospc_refuses_the_commit_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mounted) = Tmpfs::mount_in(dir.path(), "16m") else {
        return;
    };
    let mount_point = mounted.0.clone();
    let config = dir.path().join("keel.toml");
    std::fs::write(&config, format!("{SETTINGS}disk_free_bytes_min = 0\n")).unwrap();
    let (data_dir, log) = (mount_point.join("data"), dir.path().join("keel.log"));
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["--config", config.to_str().unwrap()];
    let keel = KEEL.spawn_with(&data_dir, &listen, &log, &args);
    keel.wait_ready().await;
    let (url, client) = (keel.url.clone(), reqwest::Client::new());
    let mut acked = create_and_publish(&client, &url).await;

    let (status, _, content_type, body) = fill_until_refused(&client, &url).await;
    assert_eq!(
        (status, content_type.as_str()),
        (507, "application/problem+json"),
        "{body}"
    );
    let detail = body["detail"].as_str().unwrap();
    for needle in ["is full", "no space left", "Nothing was stored"] {
        assert!(detail.contains(needle), "{needle:?} in {detail}");
    }
    let refused = "keel_publish_refused_total{reason=\"disk_full\"}";
    assert!(metric(&client, &url, refused).await >= 1.0);
    let (status, ready) = get(&client, &format!("{url}/readyz")).await;
    assert_eq!(
        (status, &ready["status"]),
        (200, &json!("ready")),
        "nothing poisoned: {ready}"
    );
    assert_eq!(ids(&client, &url).await, acked, "reads answer");

    free_space_and_publish(&client, &url).await;
    acked.push("after".to_owned());
    let text = keel.log_text();
    assert!(
        !text.contains("write or fsync failed"),
        "a partition went out of service: {text}"
    );

    keel.kill9();
    let keel = KEEL.spawn_with(&data_dir, &listen, &log, &args);
    keel.wait_ready().await;
    assert_eq!(
        ids(&client, &url).await,
        acked,
        "every acknowledged event is there"
    );
    let truncated = "keel_recovery_truncated_bytes_total";
    assert_eq!(metric(&client, &url, truncated).await, 0.0, "no torn tail");
    drop(keel);
}

/// One run of the scenario in the module doc.
struct FullStorage<'a> {
    /// Where the config file and keel's log go (never on the small disk).
    dir: &'a Path,
    data_dir: &'a Path,
    /// The `[backpressure]` lines setting the limit.
    limit: &'a str,
    /// The `reason` label of the refusal.
    reason: &'a str,
    /// The setting the problem must name.
    setting: &'a str,
}

impl FullStorage<'_> {
    async fn run(&self) {
        let config = self.dir.join("keel.toml");
        std::fs::write(&config, format!("{SETTINGS}{}", self.limit)).unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let keel = self.start(&config, &listen).await;
        let (url, client) = (keel.url.clone(), reqwest::Client::new());
        let created = client
            .put(format!("{url}/v1/subscriptions/billing"))
            .body(r#"{"topic": "orders", "start": "earliest"}"#);
        let mut acked = create_and_publish(&client, &url).await;
        assert_eq!(created.send().await.unwrap().status(), 201);

        let refused = fill_until_refused(&client, &url).await;
        self.check_refusal(&refused);
        let (status, body) = publish(&client, &url, "orders", "refused").await;
        assert_eq!(status, 507, "every topic is refused: {body}");
        assert_eq!(metric(&client, &url, &self.blocked()).await, 1.0);
        assert!(metric(&client, &url, &self.refused()).await >= 2.0);
        let (status, ready) = get(&client, &format!("{url}/readyz")).await;
        assert_eq!(
            (status, &ready["publishing_refused"]),
            (200, &json!([self.reason])),
            "ready, and saying why publishing is refused: {ready}"
        );

        // Reads and deliveries go on while publishing is refused.
        assert_eq!(ids(&client, &url).await, acked, "reads answer");
        let pulled = pull(&client, &url).await;
        assert_eq!(pulled.len(), 10, "the subscription delivers");
        let ack_ids: Vec<&str> = pulled
            .iter()
            .map(|m| m["ack_id"].as_str().unwrap())
            .collect();
        let ack = client
            .post(format!("{url}/v1/subscriptions/billing/ack"))
            .body(json!({"ack_ids": ack_ids}).to_string())
            .send()
            .await
            .unwrap();
        assert!(
            ack.status().is_success(),
            "acks are written while full: {}",
            ack.status()
        );

        // Space returns: publishing resumes by itself.
        free_space_and_publish(&client, &url).await;
        acked.push("after".to_owned());
        assert_eq!(metric(&client, &url, &self.blocked()).await, 0.0);
        let log = keel.log_text();
        assert!(
            !log.contains("write or fsync failed"),
            "keel never hit a full disk: {log}"
        );

        // A restart finds everything acknowledged, cuts nothing, delivers the acked no more.
        keel.kill9();
        let keel = self.start(&config, &listen).await;
        assert_eq!(
            ids(&client, &url).await,
            acked,
            "every acknowledged event is there"
        );
        let truncated = "keel_recovery_truncated_bytes_total";
        assert_eq!(metric(&client, &url, truncated).await, 0.0, "no torn tail");
        let (status, ready) = get(&client, &format!("{url}/readyz")).await;
        assert_eq!(
            (status, &ready["status"]),
            (200, &json!("ready")),
            "{ready}"
        );
        let redelivered: Vec<Value> = pull(&client, &url).await;
        let ids: Vec<&Value> = redelivered.iter().map(|m| &m["event"]["id"]).collect();
        assert_eq!(ids, [&json!("after")], "acks made while full are durable");
        drop(keel);
    }

    async fn start(&self, config: &Path, listen: &str) -> KeelProcess {
        let log = self.dir.join("keel.log");
        let config = config.to_str().unwrap();
        let keel = KEEL.spawn_with(self.data_dir, listen, &log, &["--config", config]);
        keel.wait_ready().await;
        keel
    }

    fn check_refusal(&self, (status, retry_after, content_type, body): &Refusal) {
        assert_eq!(*status, 507, "{body}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(
            *retry_after, None,
            "space returns at no time keel can promise"
        );
        let detail = body["detail"].as_str().unwrap();
        for needle in [self.setting, "Nothing was stored", "resumes by itself"] {
            assert!(detail.contains(needle), "{needle:?} in {detail}");
        }
    }

    fn blocked(&self) -> String {
        format!("keel_publish_blocked{{reason=\"{}\"}}", self.reason)
    }

    fn refused(&self) -> String {
        format!("keel_publish_refused_total{{reason=\"{}\"}}", self.reason)
    }
}

/// Creates the topics `orders` and `fill` (one partition each) and publishes 10 events to
/// `orders`; returns their ids.
async fn create_and_publish(client: &reqwest::Client, url: &str) -> Vec<String> {
    for topic in ["orders", "fill"] {
        let created = client
            .put(format!("{url}/v1/topics/{topic}"))
            .body(r#"{"partitions": 1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    let mut acked = Vec::new();
    for n in 0..10 {
        let id = format!("before-{n}");
        assert_eq!(publish(client, url, "orders", &id).await.0, 200);
        acked.push(id);
    }
    acked
}

/// Deletes the topic `fill`, then publishes `after` to `orders` until it is taken (507
/// meanwhile, for at most 10 s): publishing resumes without a restart.
async fn free_space_and_publish(client: &reqwest::Client, url: &str) {
    let deleted = client
        .delete(format!("{url}/v1/topics/fill"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let resumed = Instant::now();
    loop {
        let (status, body) = publish(client, url, "orders", "after").await;
        if status == 200 {
            return;
        }
        assert_eq!(status, 507, "{body}");
        assert!(
            resumed.elapsed() < Duration::from_secs(10),
            "still refused: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A refused publish: its status, `Retry-After`, content type and body.
type Refusal = (u16, Option<String>, String, Value);

/// Publishes batches of about 50 KiB to `fill` until one is refused; returns the refusal.
async fn fill_until_refused(client: &reqwest::Client, url: &str) -> Refusal {
    let data = "x".repeat(1000);
    for request in 0..FILL_REQUESTS_MAX {
        let events: Vec<Value> = (0..50)
            .map(|n| {
                json!({"specversion": "1.0", "id": format!("{request}-{n}"),
                "source": "fill", "type": "t", "data": data})
            })
            .collect();
        let response = post_batch(client, url, "fill", events).await;
        let status = response.status().as_u16();
        if status == 200 {
            continue;
        }
        let header = |name: &str| {
            let value = response.headers().get(name)?;
            Some(value.to_str().unwrap().to_owned())
        };
        let (retry_after, content_type) = (header("retry-after"), header("content-type"));
        let body = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        return (status, retry_after, content_type.unwrap_or_default(), body);
    }
    panic!("{FILL_REQUESTS_MAX} requests of 50 KiB were all accepted");
}

async fn publish(client: &reqwest::Client, url: &str, topic: &str, id: &str) -> (u16, Value) {
    let event = json!({"specversion": "1.0", "id": id, "source": "orders", "type": "t"});
    publish_event(client, url, topic, &event).await
}

/// The ids of the events of `orders`, in order.
async fn ids(client: &reqwest::Client, url: &str) -> Vec<String> {
    let records = read_partition(client, url, "orders", 0).await;
    let ids = records
        .iter()
        .map(|r| r["event"]["id"].as_str().unwrap().to_owned());
    ids.collect()
}

/// The messages one pull of `billing` returns.
async fn pull(client: &reqwest::Client, url: &str) -> Vec<Value> {
    let pulled: Value = client
        .post(format!("{url}/v1/subscriptions/billing/pull"))
        .body(json!({"max": 100, "wait": "2s"}).to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|text| serde_json::from_str(&text).unwrap())
        .unwrap();
    pulled["messages"].as_array().unwrap().clone()
}

/// The value of one sample of `/metrics` (`name{labels}` as exposed); 0 when absent.
async fn metric(client: &reqwest::Client, url: &str, sample: &str) -> f64 {
    let (_, text) = get(client, &format!("{url}/metrics")).await;
    let text = text.as_str().unwrap().to_owned();
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '));
    value.map_or(0.0, |value| value.trim().parse().unwrap())
}

/// A tmpfs mounted for the test (at the path it holds), unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir/disk`; none (with the reason printed) where this
    /// machine does not allow it.
    fn mount_in(dir: &Path, size: &str) -> Option<Self> {
        let point = dir.join("disk");
        std::fs::create_dir(&point).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&point)
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Tmpfs(point)),
            Ok(output) => {
                let reason = String::from_utf8_lossy(&output.stderr);
                println!("skipped: cannot mount a tmpfs here ({})", reason.trim());
                None
            }
            Err(error) => {
                println!("skipped: cannot run mount ({error})");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
