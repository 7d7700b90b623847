//! The real `keel` binary as a child process, for tests that kill or signal it.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code, unreachable_pub)]

pub mod sink;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `keel serve` child process.
pub struct KeelProcess {
    pub url: String,
    pub listen: String,
    pub data_dir: PathBuf,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    child: Child,
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl KeelProcess {
    /// Starts `keel serve` and waits until /readyz answers 200.
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_on(data_dir, &format!("127.0.0.1:{}", free_port())).await
    }

    /// Starts `keel serve` on `listen`, logging beside the data dir.
    pub async fn start_on(data_dir: &Path, listen: &str) -> Self {
        Self::start_with(data_dir, listen, &data_dir.with_extension("log"), &[]).await
    }

    /// Starts `keel serve` on `listen` with `extra_args`, appending its output to `log_path`,
    /// and waits until /readyz answers 200.
    pub async fn start_with(
        data_dir: &Path,
        listen: &str,
        log_path: &Path,
        extra_args: &[&str],
    ) -> Self {
        let process = Self::spawn_with(data_dir, listen, log_path, extra_args);
        process.wait_ready().await;
        process
    }

    /// Starts `keel serve` as [`KeelProcess::start_with`] does, without waiting for it to be
    /// ready (for a test that kills it while it starts).
    pub fn spawn_with(data_dir: &Path, listen: &str, log_path: &Path, extra_args: &[&str]) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args([
                "serve",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--listen",
                listen,
            ])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start keel");
        Self {
            url: format!("http://{listen}"),
            listen: listen.to_owned(),
            data_dir: data_dir.to_owned(),
            log: log_path.to_owned(),
            child,
        }
    }

    /// Waits until /readyz answers 200; fails at once if keel reports its data damaged.
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(response) = client.get(format!("{}/readyz", self.url)).send().await {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status == 200 {
                    return;
                }
                // A damaged data directory stays 503: no point waiting.
                assert!(
                    !body.contains("\"damaged\""),
                    "keel at {} started damaged: {body}; its log: {}",
                    self.url,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "keel at {} not ready after 30 s; its log: {}",
            self.url,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or fsync anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }
}

impl Drop for KeelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a whole partition from offset 0.
pub async fn read_partition(
    client: &reqwest::Client,
    url: &str,
    topic: &str,
    partition: u32,
) -> Vec<Value> {
    let (start, records) = read_partition_from(client, url, topic, partition, 0).await;
    assert_eq!(
        start, 0,
        "{topic}/{partition} starts at offset {start}, not 0"
    );
    records
}

/// Reads a partition from offset `from` to its end. Retention may move the partition's start
/// above the offset read (the read answers 404 naming the new start): the read then starts
/// again from there (everything read so far is below it). Returns the offset the records
/// start at and the records.
pub async fn read_partition_from(
    client: &reqwest::Client,
    url: &str,
    topic: &str,
    partition: u32,
    from: u64,
) -> (u64, Vec<Value>) {
    let (mut start, mut from) = (from, from);
    let mut records: Vec<Value> = Vec::new();
    loop {
        let response = client
            .get(format!(
                "{url}/v1/topics/{topic}/partitions/{partition}/events?from={from}&max=1000"
            ))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("read answered {text}"));
        if status == 404
            && let Some(moved) = body["start_offset"].as_u64()
        {
            (start, from) = (moved, moved);
            records.clear();
            continue;
        }
        let batch = body["records"]
            .as_array()
            .unwrap_or_else(|| panic!("read answered {text}"))
            .clone();
        if batch.is_empty() {
            return (start, records);
        }
        from = body["next_offset"].as_u64().unwrap();
        records.extend(batch);
    }
}
