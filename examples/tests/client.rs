//! The client examples (`examples/producer.rs`, `examples/consumer.rs`) as separate processes
//! against the real `keel` binary, each run with its documented command.
//!
//! The `keel` binary is the one the workspace's build left beside this test (see
//! `keel_testkit::process::workspace_binary`): `scripts/test.sh` builds it fresh; running this
//! package's tests alone uses the last one built, or builds it when there is none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_testkit::api::read_topic;
use keel_testkit::process::KeelBinary;
use serde_json::{Value, json};
use support::{documented_args, drained, states, with_arg};

/// Sales the producer publishes.
const SALES: usize = 500;
/// How long the consumer may take to get the totals right.
const CONSUME_WAIT: Duration = Duration::from_secs(30);
/// How long the consumer may take to stop after Ctrl-C.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// An example's documented command, with its `--server` pointed at `url` and `replaced`
/// arguments given other values.
fn example(name: &str, url: &str, replaced: &[(&str, &str)]) -> Command {
    let mut args = with_arg(documented_args(&format!("{name}.rs")), "--server", url);
    for (arg, value) in replaced {
        args = with_arg(args, arg, value);
    }
    let binary = match name {
        "producer" => env!("CARGO_BIN_EXE_producer"),
        _ => env!("CARGO_BIN_EXE_consumer"),
    };
    let mut command = Command::new(binary);
    command.args(args);
    command
}

/// The consumer as a child process, its output going to `log`; killed when dropped.
struct Consumer {
    child: Child,
    log: std::path::PathBuf,
}

impl Consumer {
    fn start(url: &str, log: &Path) -> Consumer {
        let file = std::fs::File::create(log).unwrap();
        let child = example("consumer", url, &[])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start the consumer");
        Consumer {
            child,
            log: log.to_owned(),
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with its output if it exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the consumer exited ({status}):\n{}", self.output());
        }
    }

    /// Ctrl-C (SIGINT), then waits for it to exit, and asserts it exited 0; returns its
    /// output.
    async fn interrupt(mut self) -> String {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + STOP_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let output = self.output();
                assert!(
                    status.success(),
                    "the consumer failed ({status}):\n{output}"
                );
                return output;
            }
            assert!(
                Instant::now() < deadline,
                "the consumer still runs {STOP_WAIT:?} after Ctrl-C:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Consuming until told, it would outlive a failed test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each store's `{"sales", "revenue"}` from the sales stored in keel.
fn totals_of(sales: &[Value]) -> BTreeMap<String, Value> {
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for sale in sales {
        let store = sale["partitionkey"].as_str().unwrap().to_owned();
        let sum = sums.entry(store).or_default();
        *sum = (sum.0 + 1, sum.1 + sale["data"]["amount"].as_u64().unwrap());
    }
    sums.into_iter()
        .map(|(store, (sales, revenue))| (store, json!({"sales": sales, "revenue": revenue})))
        .collect()
}

// Goal: the producer's sales are each stored once, and the consumer's per-store totals, kept
// in keel's state through stateful acks, are exact; the consumer stops cleanly on Ctrl-C.
// Method: start `keel serve`; run the producer to its end (500 sales); check the topic holds
// 500 sales with distinct ids; start the consumer; wait until its subscription has caught up
// and compare every store's state, read over HTTP, with the sums of the stored sales; then
// Ctrl-C the consumer and check it exits 0 having applied a commit per sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_consumer_keep_exact_store_totals() {
    let dir = tempfile::tempdir().unwrap();
    let keel = KeelBinary::from_workspace()
        .start(&dir.path().join("data"))
        .await;
    let client = reqwest::Client::new();

    let count = SALES.to_string();
    let produced = example("producer", &keel.url, &[("--count", &count)])
        .output()
        .expect("run the producer");
    let stdout = String::from_utf8_lossy(&produced.stdout);
    assert!(
        produced.status.success(),
        "the producer failed ({}):\n{stdout}\n{}",
        produced.status,
        String::from_utf8_lossy(&produced.stderr)
    );
    assert!(
        stdout.contains(&format!("published {SALES} sales")),
        "{stdout}"
    );
    let sales = read_topic(&client, &keel.url, "sales").await;
    let ids: BTreeSet<&str> = sales.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(
        (sales.len(), ids.len()),
        (SALES, SALES),
        "sales stored, distinct ids"
    );

    let mut consumer = Consumer::start(&keel.url, &dir.path().join("consumer.log"));
    let deadline = Instant::now() + CONSUME_WAIT;
    let subscription = format!("{}/v1/subscriptions/store-totals", keel.url);
    loop {
        consumer.assert_running();
        let exists = support::get(&client, &subscription).await.0 == 200;
        if exists && drained(&client, &keel.url, "store-totals").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer has not caught up after {CONSUME_WAIT:?}:\n{}",
            consumer.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let found = states(&client, &keel.url, "store-totals").await;
    assert_eq!(found, totals_of(&sales), "store → totals in keel's state");

    let output = consumer.interrupt().await;
    let summary = format!("stopped: {SALES} sales handled, {SALES} commits applied, 0 failed");
    assert!(output.contains(&summary), "no {summary:?} in:\n{output}");
}
