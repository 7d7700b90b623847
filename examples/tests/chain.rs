//! The chain example (`examples/chain.rs`) under `kill -9`: the program that embeds keel, with
//! its two in-process stateful handlers and the HTTP API it serves, is killed again and again
//! while orders are published to it over HTTP, and restarted each time on the same data
//! directory with its documented command.
//!
//! Invariants, checked once every order is published and the chain has caught up:
//! 1. `orders` holds each published order exactly once (a publish retried across a kill
//!    reuses the order's id, and dedupe keeps one).
//! 2. `invoices` holds exactly one invoice per order, and `notifications` exactly one
//!    notification per order: none duplicated, none missing, none for an unknown order.
//! 3. Each customer's invoices are numbered 1, 2, … n without a gap or a repeat (the number
//!    is billing's count when it committed), and each customer's state in `billing` and in
//!    `notifier` is `{"count": n, "amount": the sum of the customer's orders}`.
//!
//! The invoices and notifications topics are created by the test with a dedupe window of 1 ms
//! (the example keeps a topic that exists), so that dedupe would hide no second invoice or
//! notification: an event emitted twice would be stored twice. The chain stops gracefully on
//! SIGTERM at the end. Kill cycles: 20 by default, `KEEL_CHAIN_CYCLES=N` for soaks;
//! `KEEL_TEST_SEED=N` replays a run's random choices (orders, kill times).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keel_engine::{Engine, EngineConfig, TopicConfig};
use keel_testkit::api::{publish_until_acknowledged, read_topic};
use keel_testkit::process::{KeelProcess, free_port};
use keel_testkit::random::{seed, splitmix64};
use serde_json::{Value, json};
use support::{documented_args, drained, states, with_arg};

/// Customers the orders go to (the events' `partitionkey`).
const CUSTOMERS: u64 = 8;
/// Kill cycles by default.
const CYCLES_DEFAULT: usize = 20;
/// Orders published per kill cycle, in requests of `PUBLISH_BATCH`, one after the other.
const ORDERS_PER_CYCLE: usize = 100;
const PUBLISH_BATCH: usize = 25;
/// The kill comes up to this long after the cycle's publishing starts: while the orders are
/// being published, or handled, or (seldom) once the chain is idle again.
const KILL_SPREAD_MS: u64 = 150;
/// How long the chain may take to catch up once the last kill is over.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// One order the test publishes.
#[derive(Debug, Clone)]
struct Order {
    id: String,
    customer: String,
    amount: u64,
}

/// `count` orders drawn from `seed`: amounts 1..=1000 over `CUSTOMERS` customers.
fn orders(seed: u64, count: usize) -> Vec<Order> {
    (0..count as u64)
        .map(|n| {
            let draw = splitmix64(seed ^ splitmix64(n));
            Order {
                id: format!("order-{n:05}"),
                customer: format!("customer-{}", draw % CUSTOMERS),
                amount: 1 + (draw >> 32) % 1000,
            }
        })
        .collect()
}

/// Publishes `orders` in batches, each retried with the same ids until acknowledged.
async fn publish(url: &str, orders: &[Order]) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for batch in orders.chunks(PUBLISH_BATCH) {
        let events: Vec<Value> = batch
            .iter()
            .map(|order| {
                json!({"specversion": "1.0", "id": order.id, "source": "/test/shop",
                       "type": "order.placed", "partitionkey": order.customer,
                       "data": {"amount": order.amount}})
            })
            .collect();
        let results = publish_until_acknowledged(&client, url, "orders", &events).await;
        assert_eq!(results.len(), batch.len());
    }
}

/// Creates the topics before the chain's first start, the invoices and notifications with a
/// 1 ms dedupe window (see the file's header).
async fn create_topics(data_dir: &Path) {
    let engine = Engine::open(EngineConfig::new(data_dir)).await.unwrap();
    let orders = TopicConfig {
        partitions: 4,
        ..TopicConfig::default()
    };
    let emitted = TopicConfig {
        dedupe_window: Duration::from_millis(1),
        ..orders
    };
    engine.create_topic("orders", orders).await.unwrap();
    engine.create_topic("invoices", emitted).await.unwrap();
    engine.create_topic("notifications", emitted).await.unwrap();
    engine.shut_down().await;
}

/// Starts the chain with its documented command on `data_dir` and `listen`, and waits until it
/// serves.
async fn start_chain(data_dir: &Path, listen: &str, log: &Path) -> KeelProcess {
    let args = documented_args("chain.rs");
    let args = with_arg(args, "--data-dir", data_dir.to_str().unwrap());
    let args = with_arg(args, "--listen", listen);
    let mut command = Command::new(env!("CARGO_BIN_EXE_chain"));
    command.args(args);
    let chain = KeelProcess::spawn(command, data_dir, listen, log);
    chain.wait_ready().await;
    chain
}

/// Waits until both handlers have caught up: billing first, since it emits what the notifier
/// reads.
async fn wait_drained(client: &reqwest::Client, url: &str, chain: &KeelProcess) {
    let deadline = Instant::now() + DRAIN_WAIT;
    loop {
        if drained(client, url, "billing").await && drained(client, url, "notifier").await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the chain has not caught up after {DRAIN_WAIT:?}; its log:\n{}",
            chain.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many times each value of `field` (a string in the events' `data`) occurs.
fn count_by(events: &[Value], field: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for event in events {
        let value = event["data"][field].as_str().expect("a string field");
        *counts.entry(value.to_owned()).or_default() += 1;
    }
    counts
}

/// Asserts that `counts` (id → times) names each of `published`'s orders exactly once,
/// listing the orders counted twice, the missing and the unknown ones when it does not.
fn assert_once(counts: &BTreeMap<String, usize>, published: &[Order], what: &str) {
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = published
        .iter()
        .filter(|order| !counts.contains_key(&order.id))
        .map(|order| &order.id)
        .collect();
    let known: std::collections::BTreeSet<&str> =
        published.iter().map(|order| order.id.as_str()).collect();
    let unknown: Vec<_> = counts
        .keys()
        .filter(|id| !known.contains(id.as_str()))
        .collect();
    assert!(
        duplicated.is_empty() && missing.is_empty() && unknown.is_empty(),
        "{what}: {} orders more than once {duplicated:?}; {} missing {missing:?}; {} unknown \
         {unknown:?}",
        duplicated.len(),
        missing.len(),
        unknown.len()
    );
}

/// Asserts the invariants of the file's header for `published`.
async fn check_exactly_once(client: &reqwest::Client, url: &str, published: &[Order]) {
    // 1. Each order stored once.
    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    for event in read_topic(client, url, "orders").await {
        *stored
            .entry(event["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_once(&stored, published, "orders stored");
    // 2. One invoice and one notification per order.
    let invoices = read_topic(client, url, "invoices").await;
    assert_once(&count_by(&invoices, "order"), published, "invoices");
    let notifications = read_topic(client, url, "notifications").await;
    assert_once(
        &count_by(&notifications, "order"),
        published,
        "notifications",
    );
    // 3. Invoice numbers and the handlers' states.
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for order in published {
        let sum = sums.entry(order.customer.clone()).or_default();
        *sum = (sum.0 + 1, sum.1 + order.amount);
    }
    let mut numbers: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for invoice in &invoices {
        let customer = invoice["partitionkey"].as_str().unwrap().to_owned();
        numbers
            .entry(customer)
            .or_default()
            .push(invoice["data"]["number"].as_u64().unwrap());
    }
    for (customer, numbers) in &mut numbers {
        numbers.sort_unstable();
        let count = sums[customer].0;
        assert_eq!(
            *numbers,
            (1..=count).collect::<Vec<_>>(),
            "{customer}'s invoice numbers"
        );
    }
    let wanted: BTreeMap<String, Value> = sums
        .iter()
        .map(|(customer, (count, amount))| {
            (customer.clone(), json!({"count": count, "amount": amount}))
        })
        .collect();
    for subscription in ["billing", "notifier"] {
        let found = states(client, url, subscription).await;
        assert_eq!(found, wanted, "{subscription}'s state: customer → totals");
    }
}

fn cycles() -> usize {
    std::env::var("KEEL_CHAIN_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CYCLES_DEFAULT)
}

// Goal: a program embedding keel keeps its chain of in-process stateful handlers exactly once
// across repeated `kill -9` of the whole program (the invariants above), and stops gracefully
// on SIGTERM. Method: the chain runs as a child process with its documented command; each
// cycle publishes 100 orders over HTTP to the port it serves (4 requests, retried with the
// same ids across the kill), and kills the program 0–150 ms after the first request, while
// the orders are being published, handled and committed; it restarts at once on the same
// data dir and port. Then the chain catches up, the invariants are checked, and a SIGTERM
// stops it with exit status 0. The test also asserts that some kill found the handlers busy
// (events not yet done a moment before it), so that the kills do test something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_chain_keeps_one_invoice_and_notification_per_order() {
    let (cycles, seed) = (cycles(), seed("chain under kill -9"));
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let log = dir.path().join("chain.log");
    create_topics(&data_dir).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let mut chain = start_chain(&data_dir, &listen, &log).await;
    let url = chain.url.clone();
    let published = orders(seed, cycles * ORDERS_PER_CYCLE);
    let client = reqwest::Client::new();
    let (mut random, mut busy_kills) = (seed, 0);
    for (cycle, batch) in published.chunks(ORDERS_PER_CYCLE).enumerate() {
        random = splitmix64(random);
        let kill_ms = random % KILL_SPREAD_MS;
        let publisher = {
            let (url, batch) = (url.clone(), batch.to_vec());
            tokio::spawn(async move { publish(&url, &batch).await })
        };
        tokio::time::sleep(Duration::from_millis(kill_ms)).await;
        // Whether the handlers had work in hand a moment before the kill.
        let busy =
            !(drained(&client, &url, "billing").await && drained(&client, &url, "notifier").await);
        busy_kills += usize::from(busy);
        chain.kill9();
        chain = start_chain(&data_dir, &listen, &log).await;
        // The publishes cut off by the kill are retried until the new process answers.
        publisher.await.unwrap();
        eprintln!("cycle {cycle}: killed {kill_ms} ms into publishing (busy: {busy})");
    }
    wait_drained(&client, &url, &chain).await;
    check_exactly_once(&client, &url, &published).await;
    let status = chain.terminate();
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.success(),
        "the chain exited with {status} on SIGTERM:\n{log_text}"
    );
    assert!(
        log_text.trim_end().ends_with("stopped cleanly"),
        "{log_text}"
    );
    eprintln!(
        "chain: {cycles} kills ({busy_kills} with the handlers busy) in {:?}; {} orders, each \
         with one invoice and one notification",
        started.elapsed(),
        published.len()
    );
    assert!(busy_kills > 0, "no kill found the handlers at work");
}
