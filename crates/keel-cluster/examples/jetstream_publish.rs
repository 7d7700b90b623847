//! Plain JetStream publishing with no keel in between, as a baseline for keel's cluster mode
//! (`scripts/bench-cluster.sh`, BENCHMARKS.md).
//!
//! Publishes `--events` messages of `--size` bytes to `--streams` fresh streams (replicas
//! `--replicas`, file storage, `allow_atomic_publish`, `allow_direct`: the settings keel gives a
//! topic partition's stream), keeping `--concurrency` publishes in flight. A `--batch-size` of 1
//! publishes each message alone and waits for its acknowledgement; more publishes them as one
//! atomic batch as keel does for a group commit (ADR-50: `Nats-Batch-Id`, `Nats-Batch-Sequence`,
//! `Nats-Batch-Commit` on the last; only the commit is acknowledged). Each message carries a
//! `Keel-Time` header as keel's records do. Reports events/s and latency per publish (a batch
//! is one publish) like `keel bench publish`, as text or with `--json` as JSON with the same
//! field names. `--followers N` also reads every stream from its end with N ordered consumers
//! each, as N keel nodes do. `--phase create`, `publish` and `delete` run one step of `all`.
//!
//! ```text
//! cargo build --release -p keel-cluster --example jetstream_publish
//! target/release/examples/jetstream_publish --servers nats://127.0.0.1:4222,… \
//!     --events 100000 --batch-size 100 --concurrency 4 --size 1190 --json
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use hdrhistogram::Histogram;

/// What a run does; see the module documentation.
#[derive(Debug, Clone)]
struct Options {
    servers: String,
    stream: String,
    streams: usize,
    replicas: usize,
    events: u64,
    batch_size: u64,
    concurrency: usize,
    size: usize,
    json: bool,
    phase: Phase,
    followers: usize,
}

/// What a run does: everything (the default), or one step, so that a caller measuring the
/// servers' CPU around the publishing leaves stream creation and deletion out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    All,
    Create,
    Publish,
    Delete,
}

impl Options {
    fn parse() -> Options {
        let mut options = Options {
            servers: "nats://127.0.0.1:4222".into(),
            stream: "jsbench".into(),
            streams: 1,
            replicas: 3,
            events: 100_000,
            batch_size: 100,
            concurrency: 4,
            size: 1190,
            json: false,
            phase: Phase::All,
            followers: 0,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
            };
            let number = |text: String| -> u64 {
                text.parse()
                    .unwrap_or_else(|_| usage(&format!("{text:?} is not a whole number")))
            };
            match arg.as_str() {
                "--servers" => options.servers = value(),
                "--stream" => options.stream = value(),
                "--streams" => options.streams = number(value()) as usize,
                "--replicas" => options.replicas = number(value()) as usize,
                "--events" => options.events = number(value()),
                "--batch-size" => options.batch_size = number(value()),
                "--concurrency" => options.concurrency = number(value()) as usize,
                "--size" => options.size = number(value()) as usize,
                "--json" => options.json = true,
                "--followers" => options.followers = number(value()) as usize,
                "--phase" => {
                    options.phase = match value().as_str() {
                        "all" => Phase::All,
                        "create" => Phase::Create,
                        "publish" => Phase::Publish,
                        "delete" => Phase::Delete,
                        other => usage(&format!("unknown phase {other}")),
                    }
                }
                // `cargo bench`/`cargo run` pass-throughs.
                "--bench" => {}
                other => usage(&format!("unknown argument {other}")),
            }
        }
        if options.streams == 0 || options.concurrency == 0 || options.batch_size == 0 {
            usage("--streams, --concurrency and --batch-size must be at least 1");
        }
        if options.batch_size > 1000 {
            usage("an atomic batch holds at most 1000 messages");
        }
        options
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "{problem}\nusage: jetstream_publish [--servers URLS] [--stream NAME] [--streams N] \
         [--replicas N] [--events N] [--batch-size N] [--concurrency N] [--size BYTES] [--json] \
         [--phase all|create|publish|delete] [--followers N]"
    );
    std::process::exit(2);
}

/// What one publisher measured.
struct Tally {
    latency_us: Histogram<u64>,
    events: u64,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            events: 0,
            requests: 0,
            errors: 0,
            first_error: None,
        }
    }
}

fn subject(options: &Options, index: usize) -> String {
    format!("{}.{index}", options.stream)
}

fn stream_name(options: &Options, index: usize) -> String {
    format!("{}-{index}", options.stream)
}

/// Publishes `count` messages to `subject` as one publish (an atomic batch when more than
/// one); returns the acknowledged sequence.
async fn publish(
    client: &async_nats::Client,
    jetstream: &jetstream::Context,
    subject: &str,
    payload: &bytes_like::Payload,
    count: u64,
) -> Result<u64, String> {
    let header = |index: u64, batch_id: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("Keel-Time", payload.time.as_str());
        if count > 1 {
            headers.insert(async_nats::header::NATS_BATCH_ID, batch_id);
            headers.insert(
                async_nats::header::NATS_BATCH_SEQUENCE,
                (index + 1).to_string().as_str(),
            );
            if index + 1 == count {
                headers.insert(async_nats::header::NATS_BATCH_COMMIT, "1");
            }
        }
        headers
    };
    let batch_id = if count > 1 {
        format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
    } else {
        String::new()
    };
    for index in 0..count - 1 {
        client
            .publish_with_headers(
                subject.to_owned(),
                header(index, &batch_id),
                payload.bytes.clone().into(),
            )
            .await
            .map_err(|error| error.to_string())?;
    }
    let ack = jetstream
        .publish_with_headers(
            subject.to_owned(),
            header(count - 1, &batch_id),
            payload.bytes.clone().into(),
        )
        .await
        .map_err(|error| error.to_string())?
        .await
        .map_err(|error| error.to_string())?;
    Ok(ack.sequence)
}

mod bytes_like {
    /// One message's payload and time header, shared by every publish.
    pub(crate) struct Payload {
        pub(crate) bytes: Vec<u8>,
        pub(crate) time: String,
    }
}

#[tokio::main]
async fn main() {
    let options = Options::parse();
    let servers: Vec<async_nats::ServerAddr> = options
        .servers
        .split(',')
        .map(|url| url.trim().parse().expect("a NATS URL"))
        .collect();
    let client = async_nats::ConnectOptions::new()
        .name("keel jetstream_publish bench")
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(servers)
        .await
        .expect("connect to NATS");
    let jetstream = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(client.clone());
    if options.phase == Phase::Delete {
        for index in 0..options.streams {
            let _ = jetstream.delete_stream(stream_name(&options, index)).await;
        }
        return;
    }
    for index in 0..options.streams {
        if options.phase == Phase::Publish {
            break;
        }
        let name = stream_name(&options, index);
        let _ = jetstream.delete_stream(&name).await;
        jetstream
            .create_stream(stream::Config {
                name,
                subjects: vec![subject(&options, index)],
                num_replicas: options.replicas,
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                discard: stream::DiscardPolicy::Old,
                duplicate_window: Duration::from_secs(120),
                allow_atomic_publish: true,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .expect("create the stream");
    }
    if options.phase == Phase::Create {
        return;
    }
    let payload = Arc::new(bytes_like::Payload {
        bytes: vec![b'x'; options.size],
        time: "1764000000000".into(),
    });
    // Followers read every stream from its end as each keel node does (an ordered consumer
    // per stream and node, `log.rs`), to tell their cost from the publishing's.
    let mut followers = tokio::task::JoinSet::new();
    for _ in 0..options.followers {
        for index in 0..options.streams {
            let consumer = jetstream
                .create_consumer_on_stream(
                    jetstream::consumer::pull::OrderedConfig {
                        deliver_policy: jetstream::consumer::DeliverPolicy::New,
                        ..Default::default()
                    },
                    stream_name(&options, index),
                )
                .await
                .expect("create a follower");
            let mut messages = consumer.messages().await.expect("follow a stream");
            followers.spawn(async move {
                let mut received = 0u64;
                while let Some(Ok(message)) = messages.next().await {
                    received += message.payload.len().min(1) as u64;
                }
                received
            });
        }
    }
    let claimed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency {
        let (client, jetstream) = (client.clone(), jetstream.clone());
        let (options, payload, claimed) = (options.clone(), payload.clone(), claimed.clone());
        workers.spawn(async move {
            let mut tally = Tally::new();
            loop {
                let first = claimed.fetch_add(options.batch_size, Ordering::Relaxed);
                if first >= options.events {
                    break;
                }
                let count = options.batch_size.min(options.events - first);
                // Batches go round the streams, as keel's sticky partition moves on.
                let target = (first / options.batch_size) as usize % options.streams;
                let subject = subject(&options, target);
                let sent = Instant::now();
                let outcome = publish(&client, &jetstream, &subject, &payload, count).await;
                tally.requests += 1;
                match outcome {
                    Ok(_) => {
                        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        tally.latency_us.saturating_record(micros);
                        tally.events += count;
                    }
                    Err(error) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(error);
                    }
                }
            }
            tally
        });
    }
    let mut total = Tally::new();
    while let Some(tally) = workers.join_next().await {
        let tally = tally.expect("a publisher finished");
        total.latency_us.add(&tally.latency_us).unwrap();
        total.events += tally.events;
        total.requests += tally.requests;
        total.errors += tally.errors;
        total.first_error = total.first_error.or(tally.first_error);
    }
    let seconds = started.elapsed().as_secs_f64();
    followers.abort_all();
    let ms = |quantile: f64| total.latency_us.value_at_quantile(quantile) as f64 / 1000.0;
    let report = serde_json::json!({
        "streams": options.streams,
        "replicas": options.replicas,
        "concurrency": options.concurrency,
        "batch_size": options.batch_size,
        "message_bytes": options.size,
        "followers_per_stream": options.followers,
        "events": total.events,
        "seconds": seconds,
        "events_per_sec": total.events as f64 / seconds,
        "requests": total.requests,
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p99_9": ms(0.999), "max": ms(1.0)},
        "errors": total.errors,
        "first_error": total.first_error,
    });
    if options.phase == Phase::All {
        for index in 0..options.streams {
            let _ = jetstream.delete_stream(stream_name(&options, index)).await;
        }
    }
    if options.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
    }
    if total.errors > 0 {
        std::process::exit(1);
    }
}
