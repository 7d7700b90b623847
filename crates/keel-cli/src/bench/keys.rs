//! `keel bench keys`: reads of one key's stream (`GET /v1/topics/{t}/keys/{key}/events`), each
//! of a key drawn at random from those `bench publish --keys N` wrote, timed one by one.
//!
//! A topic published with `--keys N` and `--events E` holds `E / N` events per key (keys are
//! used in turn), so `--keys` and `--max` together say how long the streams read are.

use std::time::Instant;

use clap::Args;
use keel_api::streams::KeyStream;
use keel_client::{Client, ClientError, Method, Reply};
use serde::Serialize;

use super::{LatencyMs, Tally, bench_key, per_second, print_report, ranged};
use crate::error::{CliError, joined};
use crate::limits::CONCURRENCY_MAX;

/// Arguments of `keel bench keys`.
#[derive(Debug, Clone, Args)]
pub(crate) struct KeysBenchArgs {
    /// Topic to read, published by `bench publish --keys`
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Keys the topic was published with (`bench publish --keys`); reads draw among them
    #[arg(long, value_parser = ranged(1, u64::MAX))]
    keys: u64,
    /// Stream reads to make
    #[arg(long, default_value_t = 1000, value_parser = ranged(1, u64::MAX))]
    reads: u64,
    /// Reads in flight at once
    #[arg(long, default_value_t = 1, value_parser = ranged(1, CONCURRENCY_MAX))]
    concurrency: u64,
    /// Events per read (`max`), from the key's first
    #[arg(long, default_value_t = 100, value_parser = ranged(1, keel_engine::limits::KEY_STREAM_RECORDS_MAX as u64))]
    max: u64,
    /// Seed of the keys drawn (the same seed reads the same keys)
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Runs `keel bench keys` against `server`.
pub(super) async fn run(
    server: &crate::Target,
    args: KeysBenchArgs,
    json: bool,
) -> Result<(), CliError> {
    let concurrency = usize::try_from(args.concurrency).unwrap_or(usize::MAX);
    let client = server.connect(concurrency)?;
    let started = Instant::now();
    let mut readers = tokio::task::JoinSet::new();
    for reader in 0..args.concurrency {
        // Reader `r` makes reads r, r + concurrency, …, each of its own drawn key.
        let reads = (reader..args.reads).step_by(concurrency);
        let (client, args) = (client.clone(), args.clone());
        readers.spawn(async move { read_keys(client, args, reads).await });
    }
    let mut tally = Tally::new();
    while let Some(outcome) = readers.join_next().await {
        tally.merge(joined(outcome));
    }
    let report = KeysReport::new(&args, &tally, started.elapsed().as_secs_f64());
    print_report(&report, report.pairs(), json)?;
    tally.failures_error()
}

/// Makes the reads numbered `reads`, one at a time; a server that cannot be reached ends them.
async fn read_keys(client: Client, args: KeysBenchArgs, reads: impl Iterator<Item = u64>) -> Tally {
    let mut tally = Tally::new();
    for read in reads {
        let key = bench_key(fastrand::Rng::with_seed(args.seed ^ read).u64(0..args.keys));
        let started = Instant::now();
        let outcome = read_stream(&client, &args.topic, &key, args.max).await;
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // Decoded after the clock stopped: the client's parsing is not the server's latency.
        let decoded = outcome.and_then(|reply| {
            let records = reply.json::<KeyStream<'_>>()?.records.len() as u64;
            Ok((records, reply.body.len() as u64))
        });
        if !tally.count(latency_us, decoded) {
            break;
        }
    }
    tally
}

/// The measured read: the key's first `max` events.
async fn read_stream(
    client: &Client,
    topic: &str,
    key: &str,
    max: u64,
) -> Result<Reply, ClientError> {
    let path = ["v1", "topics", topic, "keys", key, "events"];
    let max = max.to_string();
    client
        .send(Method::GET, &path, &[("max", max.as_str())], None)
        .await
}

/// The figures of a `bench keys` run.
#[derive(Debug, Serialize)]
struct KeysReport {
    topic: String,
    concurrency: u64,
    /// Successful reads.
    reads: u64,
    /// Events all reads returned.
    records: u64,
    seconds: f64,
    reads_per_sec: f64,
    latency_ms: LatencyMs,
    /// Reads that failed.
    errors: u64,
}

impl KeysReport {
    fn new(args: &KeysBenchArgs, tally: &Tally, seconds: f64) -> Self {
        let reads = tally.requests - tally.failures;
        Self {
            topic: args.topic.clone(),
            concurrency: args.concurrency,
            reads,
            records: tally.events,
            seconds,
            reads_per_sec: per_second(reads as f64, seconds),
            latency_ms: LatencyMs::of(&tally.latency_us),
            errors: tally.failures,
        }
    }

    fn pairs(&self) -> Vec<(String, String)> {
        let latency = &self.latency_ms;
        [
            (
                "topic",
                format!("{}, concurrency {}", self.topic, self.concurrency),
            ),
            ("reads", self.reads.to_string()),
            ("records", self.records.to_string()),
            ("seconds", format!("{:.2}", self.seconds)),
            ("reads/s", format!("{:.0}", self.reads_per_sec)),
            ("latency p50", format!("{:.3} ms", latency.p50)),
            ("latency p99", format!("{:.3} ms", latency.p99)),
            ("latency max", format!("{:.3} ms", latency.max)),
            ("errors", self.errors.to_string()),
        ]
        .map(|(label, value)| (label.to_owned(), value))
        .to_vec()
    }
}
