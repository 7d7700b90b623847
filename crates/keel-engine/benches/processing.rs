//! Stateful processing throughput and latency, on the engine in-process (no HTTP), release
//! build, real files in a temporary directory, fsync before every ack:
//!
//! - `in-process`: a stateful handler (a running total per key) consumes a backlog of 1 KiB
//!   events; events/s until the subscription's lag is 0.
//! - `pull`: the same with the engine's pull and stateful ack calls (what an HTTP consumer's
//!   calls do, without HTTP), acks of 1,000 at once.
//! - `latency`: events published one at a time at 5,000/s while the handler runs; the
//!   time from publish to the handler, p50 and p99.
//! - `keys`: memory (resident set) after a backlog of 1,000,000 events over 10,000 keys, then
//!   over 1,000,000 keys (`KEEL_BENCH_KEYS=10000` alone, say, to run each in a fresh process).
//!
//! `cargo bench -p keel-engine --bench processing [-- SCENARIO...]`; `KEEL_BENCH_EVENTS`
//! sets the backlog (default 200,000).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keel_api::state::StatefulAck;
use keel_engine::handler::{Delivered, HandlerError, Next, stateful_fn};
use keel_engine::{Engine, EngineConfig, TopicConfig};
use serde_json::json;

const PARTITIONS: u32 = 8;
const PUBLISH_BATCH: usize = 1000;

fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let events: usize = std::env::var("KEEL_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    runtime.block_on(async {
        if run("in-process") {
            in_process(events).await;
        }
        if run("pull") {
            pull(events).await;
        }
        if run("latency") {
            latency().await;
        }
        if run("keys") {
            keys().await;
        }
    });
}

async fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig::new(dir.path())).await.unwrap();
    let config = TopicConfig {
        partitions: PARTITIONS,
        ..TopicConfig::default()
    };
    engine.create_topic("in", config).await.unwrap();
    (dir, engine)
}

/// A 1 KiB event for key `key` carrying `amount` and the publish time.
fn event(n: usize, key: usize) -> keel_engine::Event {
    let sent_us = now_us();
    let padding = "x".repeat(880);
    keel_engine::event::from_value(json!({"specversion": "1.0", "id": format!("e{n}"),
        "source": "/bench", "type": "t", "partitionkey": format!("k{key}"),
        "data": {"amount": 1, "sent_us": sent_us, "padding": padding}}))
    .unwrap()
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

async fn backlog(engine: &Engine, events: usize, keys: usize) {
    for start in (0..events).step_by(PUBLISH_BATCH) {
        let batch = (start..(start + PUBLISH_BATCH).min(events))
            .map(|n| event(n, n % keys))
            .collect();
        engine.publish("in", batch).await.unwrap();
    }
}

async fn stateful(engine: &Engine, name: &str) {
    let spec = serde_json::from_value(json!({"topic": "in", "ordering": "key", "stateful": true,
        "start": "earliest", "max_in_flight": 2000, "ack_timeout": "60s"}))
    .unwrap();
    engine.create_subscription(name, spec).await.unwrap();
}

fn total_handler() -> impl keel_engine::handler::Handler {
    stateful_fn(|event: Delivered, total: Option<u64>| async move {
        let amount = event.data::<serde_json::Value>()?["amount"]
            .as_u64()
            .ok_or_else(|| HandlerError::permanent("no amount"))?;
        Ok(Next::state(total.unwrap_or(0) + amount))
    })
}

async fn wait_drained(engine: &Engine, name: &str) {
    loop {
        let info = engine.describe_subscription(name).unwrap();
        if info.lag == 0 && info.in_flight == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn in_process(events: usize) {
    let (_dir, engine) = engine().await;
    backlog(&engine, events, 10_000).await;
    stateful(&engine, "bench").await;
    let started = Instant::now();
    let attached = engine.attach("bench", total_handler()).unwrap();
    wait_drained(&engine, "bench").await;
    let elapsed = started.elapsed();
    println!(
        "in-process stateful handler: {events} events over 10,000 keys in {:.2} s: {:.0} events/s",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
    attached.stop().await;
    engine.shut_down().await;
}

async fn pull(events: usize) {
    let (_dir, engine) = engine().await;
    backlog(&engine, events, 10_000).await;
    stateful(&engine, "bench").await;
    let started = Instant::now();
    let mut done = 0;
    while done < events {
        let messages = engine
            .pull("bench", 1000, Duration::from_millis(100))
            .await
            .unwrap();
        let acks = messages
            .iter()
            .map(|message| {
                let total = message
                    .state
                    .as_ref()
                    .and_then(|state| state.state.as_deref())
                    .map_or(0, |state| state.parse::<u64>().unwrap());
                StatefulAck {
                    ack_id: message.ack_id.clone(),
                    state: Some(serde_json::value::to_raw_value(&(total + 1)).unwrap()),
                    emit: Vec::new(),
                }
            })
            .collect();
        let answer = engine.ack_with_commits("bench", &[], acks).await.unwrap();
        done += answer.settled;
    }
    let elapsed = started.elapsed();
    println!(
        "stateful pull and ack (engine calls, no HTTP): {events} events in {:.2} s: {:.0} events/s",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
    engine.shut_down().await;
}

async fn latency() {
    let (_dir, engine) = engine().await;
    stateful(&engine, "bench").await;
    let histogram = Arc::new(std::sync::Mutex::new(
        hdrhistogram::Histogram::<u64>::new(3).unwrap(),
    ));
    let recorded = histogram.clone();
    let handled = Arc::new(AtomicU64::new(0));
    let counter = handled.clone();
    let attached = engine
        .attach(
            "bench",
            stateful_fn(move |event: Delivered, total: Option<u64>| {
                let (recorded, counter) = (recorded.clone(), counter.clone());
                async move {
                    let sent = event.data::<serde_json::Value>()?["sent_us"]
                        .as_u64()
                        .unwrap();
                    let _ = recorded
                        .lock()
                        .unwrap()
                        .record(now_us().saturating_sub(sent));
                    counter.fetch_add(1, Ordering::Relaxed);
                    Ok(Next::state(total.unwrap_or(0) + 1))
                }
            }),
        )
        .unwrap();
    let (rate, seconds) = (5_000, 10);
    let total = rate * seconds;
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0;
    while sent < total {
        interval.tick().await;
        // Catch up to the pace (5 events a millisecond), each its own publish.
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as usize).min(total);
        let mut publishes = Vec::new();
        while sent < due {
            let engine = engine.clone();
            let event = event(sent, sent % 1000);
            publishes.push(tokio::spawn(async move {
                engine.publish("in", vec![event]).await.unwrap();
            }));
            sent += 1;
        }
        for publish in publishes {
            publish.await.unwrap();
        }
    }
    while handled.load(Ordering::Relaxed) < total as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (p50, p99, max) = {
        let histogram = histogram.lock().unwrap();
        (
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99),
            histogram.max(),
        )
    };
    println!(
        "publish → in-process stateful handler at {rate}/s for {seconds} s (1,000 keys): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0,
        max as f64 / 1000.0
    );
    attached.stop().await;
    engine.shut_down().await;
}

async fn keys() {
    // The same 1,000,000 events each time, over 10,000 keys then over 1,000,000: what grows
    // with keys, not with events.
    let counts: Vec<usize> = std::env::var("KEEL_BENCH_KEYS")
        .ok()
        .map(|list| list.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 1_000_000]);
    for keys in counts {
        let (_dir, engine) = engine().await;
        backlog(&engine, 1_000_000, keys).await;
        stateful(&engine, "bench").await;
        let attached = engine.attach("bench", total_handler()).unwrap();
        wait_drained(&engine, "bench").await;
        println!(
            "keys: {keys} keys with state, resident set {} MiB",
            resident_mib()
        );
        attached.stop().await;
        engine.shut_down().await;
    }
}

fn resident_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb / 1024)
}
