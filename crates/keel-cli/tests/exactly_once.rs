//! Exactly-once processing by an external consumer across `kill -9` of the real binary: the
//! reference example `examples/balances.py` (plain HTTP, Python standard library) keeps
//! per-account balances in a stateful subscription while keel is killed and restarted on the
//! same data dir, again and again.
//!
//! Invariants, checked once everything published is consumed:
//! 1. The deposits topic holds each published deposit exactly once (publishes retried across
//!    crashes reuse the deposit's id, and dedupe keeps one).
//! 2. Every account's state is `{"balance": sum of its deposits, "deposits": their number}`,
//!    and only accounts with deposits have state: no deposit applied twice or skipped.
//! 3. The receipts topic holds exactly one receipt per deposit, naming it: none duplicated,
//!    none missing, none for a deposit that does not exist.
//!
//! The example must keep nothing itself for these to hold: keel commits state, receipt and
//! ack at once, and never hands out a deposit whose commit happened. Kill cycles: 20 by
//! default, `KEEL_EXACTLY_ONCE_CYCLES=N` for soaks; `KEEL_TEST_SEED=N` replays a run's random
//! choices (deposits, kill times), whose seed the test prints. Needs `python3` on the PATH.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_testkit::api::read_topic;
use keel_testkit::process::free_port;
use keel_testkit::random::splitmix64;
use serde_json::{Value, json};
use support::{KEEL, publish_until_acknowledged, seed};

/// Accounts the deposits go to (the events' `partitionkey`).
const ACCOUNTS: u64 = 12;
/// Kill cycles by default.
const CYCLES_DEFAULT: usize = 20;
/// Deposits published per kill cycle.
const DEPOSITS_PER_CYCLE: usize = 120;
/// Deposits per publish request.
const PUBLISH_BATCH: usize = 10;
/// Pause between publish requests: spreads the deposits over the kill cycles.
const PUBLISH_PAUSE: Duration = Duration::from_millis(60);
/// How long keel runs before a kill: at least this, plus up to `LIFE_SPREAD_MS`.
const LIFE_MS_MIN: u64 = 200;
const LIFE_SPREAD_MS: u64 = 1300;
/// How long the consumer takes to handle a pulled batch: a kill then often finds a batch
/// pulled and not yet acked, whose acks the restart makes stale.
const HANDLING_MS: &str = "40";
/// How long the consumer may take to catch up once the last kill is over.
const DRAIN_WAIT: Duration = Duration::from_secs(60);
/// How long one `--until-idle` run of the example may take.
const EXAMPLE_RUN_WAIT: Duration = Duration::from_secs(30);
/// The example's names (examples/balances.py).
const SUBSCRIPTION: &str = "balances";
const DEPOSITS: &str = "deposits";
const RECEIPTS: &str = "receipts";

/// One deposit the test publishes.
#[derive(Debug, Clone)]
struct Deposit {
    id: String,
    account: String,
    amount: u64,
}

/// `count` deposits drawn from `seed`: amounts 1..=1000 over `ACCOUNTS` accounts.
fn deposits(seed: u64, count: usize) -> Vec<Deposit> {
    (0..count as u64)
        .map(|n| {
            let draw = splitmix64(seed ^ splitmix64(n));
            Deposit {
                id: format!("dep-{n:06}"),
                account: format!("acct-{:02}", draw % ACCOUNTS),
                amount: 1 + (draw >> 32) % 1000,
            }
        })
        .collect()
}

fn deposit_event(deposit: &Deposit) -> Value {
    json!({
        "specversion": "1.0", "id": deposit.id, "source": "/test/bank", "type": "deposit",
        "partitionkey": deposit.account, "datacontenttype": "application/json",
        "data": {"amount": deposit.amount},
    })
}

/// Publishes `deposits` in batches, each retried until acknowledged with the same ids.
async fn publish(url: &str, deposits: &[Deposit], pause: Duration) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for batch in deposits.chunks(PUBLISH_BATCH) {
        let events: Vec<Value> = batch.iter().map(deposit_event).collect();
        let results = publish_until_acknowledged(&client, url, DEPOSITS, &events).await;
        for (deposit, result) in batch.iter().zip(&results) {
            assert_eq!(result["id"], deposit.id.as_str(), "results in input order");
        }
        tokio::time::sleep(pause).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The example as a child process

/// `examples/balances.py`.
fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/balances.py")
}

/// Fails the test clearly when python3 cannot run.
fn require_python3() {
    let version = Command::new("python3").arg("--version").output();
    match version {
        Ok(output) if output.status.success() => {}
        other => panic!(
            "this test runs examples/balances.py and needs python3 on the PATH \
             (apt-get install python3; scripts/install-test-deps.sh installs it): {other:?}"
        ),
    }
}

/// The example's one command, the first line of its docstring: `python3
/// examples/balances.py ...`, with arguments split on spaces.
fn documented_command() -> Vec<String> {
    let source = std::fs::read_to_string(example_path()).unwrap();
    let line = source
        .lines()
        .find_map(|line| line.strip_prefix("\"\"\""))
        .filter(|line| line.starts_with("python3 examples/balances.py "))
        .expect("the docstring starts with the command that runs the example");
    line.split_whitespace().map(str::to_owned).collect()
}

/// The example started with its documented command against `url`, plus `extra` arguments;
/// stdout and stderr go to `log`. Killed when dropped.
struct Consumer {
    child: Child,
    log: PathBuf,
}

impl Consumer {
    fn start(url: &str, log: &Path, extra: &[&str]) -> Consumer {
        let command = documented_command();
        let mut args: Vec<String> = command[1..].to_vec();
        let server = args.iter().position(|a| a == "--server").unwrap() + 1;
        args[server] = url.to_owned();
        args[0] = example_path().to_str().unwrap().to_owned();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let file = std::fs::File::create(log).unwrap();
        let child = Command::new(&command[0])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start python3 examples/balances.py");
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
            panic!(
                "balances.py exited ({status}); its output:\n{}",
                self.output()
            );
        }
    }

    /// Waits for it to exit on its own and asserts it succeeded; returns its output.
    async fn finish(mut self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let output = self.output();
                assert!(status.success(), "balances.py failed ({status}):\n{output}");
                return output;
            }
            assert!(
                Instant::now() < deadline,
                "balances.py still running after {limit:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Consuming forever, it would outlive a failed test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The invariants

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Asserts the three invariants of the file's header for `published`.
async fn check_exactly_once(client: &reqwest::Client, url: &str, published: &[Deposit]) {
    // 1. Each deposit stored once.
    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    for event in read_topic(client, url, DEPOSITS).await {
        *stored
            .entry(event["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = published.iter().map(|d| (d.id.clone(), 1)).collect();
    assert_eq!(stored, expected, "deposits stored (id → times)");
    // 2. Balances and counts, from keel's state.
    let mut sums: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for deposit in published {
        let sum = sums.entry(&deposit.account).or_default();
        sum.0 += deposit.amount;
        sum.1 += 1;
    }
    let listing = format!("{url}/v1/subscriptions/{SUBSCRIPTION}/state?max=1000");
    let (status, page) = get(client, &listing).await;
    assert_eq!(status, 200, "{page}");
    let states: BTreeMap<&str, (Option<u64>, Option<u64>)> = page["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let state = &k["state"];
            let found = (state["balance"].as_u64(), state["deposits"].as_u64());
            (k["key"].as_str().unwrap(), found)
        })
        .collect();
    let wanted: BTreeMap<&str, (Option<u64>, Option<u64>)> = sums
        .iter()
        .map(|(account, (balance, count))| (*account, (Some(*balance), Some(*count))))
        .collect();
    assert_eq!(
        states, wanted,
        "account → (balance, deposits) in keel's state"
    );
    // 3. One receipt per deposit.
    let mut receipts: BTreeMap<String, usize> = BTreeMap::new();
    for event in read_topic(client, url, RECEIPTS).await {
        let deposit = event["data"]["deposit"].as_str().unwrap().to_owned();
        *receipts.entry(deposit).or_default() += 1;
    }
    let duplicated: Vec<_> = receipts.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = expected
        .keys()
        .filter(|d| !receipts.contains_key(*d))
        .collect();
    let unknown: Vec<_> = receipts
        .keys()
        .filter(|d| !expected.contains_key(*d))
        .collect();
    assert!(
        duplicated.is_empty() && missing.is_empty() && unknown.is_empty(),
        "receipts: {} deposits with more than one {duplicated:?}; {} without one {missing:?}; \
         {} for unknown deposits {unknown:?}",
        duplicated.len(),
        missing.len(),
        unknown.len()
    );
}

// ---------------------------------------------------------------------------------------------
// The tests

fn cycles() -> usize {
    std::env::var("KEEL_EXACTLY_ONCE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CYCLES_DEFAULT)
}

/// Polls describe until the subscription has nothing left to do; panics after `DRAIN_WAIT`,
/// or as soon as the consumer exits.
async fn wait_drained(client: &reqwest::Client, url: &str, consumer: &mut Consumer) {
    let deadline = Instant::now() + DRAIN_WAIT;
    loop {
        consumer.assert_running();
        let (status, info) = get(client, &format!("{url}/v1/subscriptions/{SUBSCRIPTION}")).await;
        assert_eq!(status, 200, "{info}");
        if info["lag"] == 0 && info["in_flight"] == 0 && info["pending"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not drained after {DRAIN_WAIT:?}: {info:#}\nconsumer output tail:\n{}",
            tail(&consumer.output(), 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// Goal: the example consumer's balances and receipts are exactly once across repeated
// `kill -9` of keel (the invariants above). Method: the example runs with its documented
// command (`--setup`, consuming forever; 40 ms to handle a batch) as a separate process; a
// publisher publishes 120 deposits per cycle over 12 accounts, retrying across restarts; keel
// is killed 200–1500 ms into each life (mid-pull, mid-handling or mid-commit) and restarted at
// once on the same data dir and port; then the consumer drains the subscription and the
// invariants are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_balances_and_receipts_exactly_once() {
    require_python3();
    let (cycles, seed) = (cycles(), seed("exactly once"));
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut keel = KEEL.start_on(&data_dir, &listen).await;
    let url = keel.url.clone();
    let client = reqwest::Client::new();
    let log = dir.path().join("balances.log");
    let mut consumer = Consumer::start(&url, &log, &["--handling-ms", HANDLING_MS]);
    // The example's --setup creates the topics and the subscription.
    let subscription = format!("{url}/v1/subscriptions/{SUBSCRIPTION}");
    let setup_deadline = Instant::now() + EXAMPLE_RUN_WAIT;
    while get(&client, &subscription).await.0 != 200 {
        consumer.assert_running();
        assert!(
            Instant::now() < setup_deadline,
            "balances.py --setup did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let published = deposits(seed, cycles * DEPOSITS_PER_CYCLE);
    let publisher = {
        let (url, published) = (url.clone(), published.clone());
        tokio::spawn(async move { publish(&url, &published, PUBLISH_PAUSE).await })
    };
    let mut random = seed;
    for cycle in 0..cycles {
        random = splitmix64(random);
        let life_ms = LIFE_MS_MIN + random % LIFE_SPREAD_MS;
        tokio::time::sleep(Duration::from_millis(life_ms)).await;
        consumer.assert_running();
        keel.kill9();
        keel = KEEL.start_on(&data_dir, &listen).await;
        eprintln!("cycle {cycle}: killed after {life_ms} ms");
    }
    publisher.await.unwrap();
    wait_drained(&client, &url, &mut consumer).await;
    let output = consumer.output();
    drop(consumer);
    check_exactly_once(&client, &url, &published).await;
    let count = |needle: &str| output.lines().filter(|l| l.contains(needle)).count();
    let (applied, stale, unavailable) = (
        count("INFO applied "),
        count("stale:"),
        count("unavailable"),
    );
    eprintln!(
        "exactly once: {cycles} kills in {:?}; {} deposits; the consumer got {applied} commits \
         answered applied (the others' answers were lost to kills), {stale} acks answered stale \
         (409) and {unavailable} unavailable answers",
        started.elapsed(),
        published.len()
    );
    assert!(
        stale > 0 && unavailable > 0,
        "the kills interrupted the consumer, and a restart made its acks stale"
    );
}

// Goal: the example runs with the one command its docstring gives and gets balances right.
// Method: run it with `--until-idle` on an empty server (it sets up and stops), publish a few
// deposits (some to the same account), run it again, and check the invariants.
#[tokio::test]
async fn balances_example_runs_with_its_documented_command() {
    require_python3();
    let dir = tempfile::tempdir().unwrap();
    let keel = KEEL.start(&dir.path().join("data")).await;
    let client = reqwest::Client::new();
    let log = dir.path().join("balances.log");
    let first = Consumer::start(&keel.url, &log, &["--until-idle"]);
    let output = first.finish(EXAMPLE_RUN_WAIT).await;
    assert!(
        output.contains("created /v1/subscriptions/balances"),
        "{output}"
    );
    let published = deposits(7, 15);
    publish(&keel.url, &published, Duration::ZERO).await;
    let second = Consumer::start(&keel.url, &log, &["--until-idle"]);
    let output = second.finish(EXAMPLE_RUN_WAIT).await;
    assert!(output.contains("applied 15 deposits"), "{output}");
    check_exactly_once(&client, &keel.url, &published).await;
}
