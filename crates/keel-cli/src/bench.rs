//! `keel bench`: load generators. `publish` keeps `--concurrency` requests of generated events
//! in flight and reports throughput and latency percentiles; `read` reads a topic back from
//! its start on every partition and reports throughput; `keys` (in [`keys`]) times reads of
//! random keys' streams; `e2e` (in [`e2e`]) times each event from its publish to its delivery
//! through a subscription.
//!
//! Every mode is a client of the server at `--server`, like the rest of `keel`: start
//! `keel serve --data-dir <a fresh dir>` first.
//!
//! All of them use keel-client's [`Client`], like every other command. The measured requests
//! (publishing a pre-built body, reading a partition, and e2e's pulls and acks) go through its
//! untyped [`Client::send`], not its typed calls: those decode the whole answer once to check
//! it and again to read it, client work that would count in the latencies measured. Setup and
//! teardown use the typed calls.

mod e2e;
mod keys;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use keel_api::read::Records;
use keel_api::topics::PartitionInfo;
use serde::Serialize;

use keel_client::{
    Body, CONTENT_TYPE_BATCH, CONTENT_TYPE_EVENT, Client, ClientError, EventIds, Method, Reply,
    StatusCode,
};

use crate::error::{CliError, joined};
use crate::limits::{
    BATCH_EVENTS_MAX, BENCH_EVENT_BYTES_MAX, BENCH_REQUEST_BYTES_MAX, CONCURRENCY_MAX,
    LATENCY_US_MAX, READ_EVENTS_MAX,
};
use crate::output::{progress_bar, render_pairs, write_stdout};
use crate::topic::{CreateArgs, Fsync, fetch_topic, put_topic};

/// Events `bench publish` sends when neither `--events` nor `--duration` is given.
const EVENTS_DEFAULT: u64 = 100_000;

/// Significant figures the latency histograms keep (0.1% precision).
const LATENCY_SIGNIFICANT_FIGURES: u8 = 3;

/// Generated events' partition keys are this and a number: event `n` of a run with `keys`
/// keys has key number `n % keys`.
const KEY_PREFIX: &str = "key-";

/// `keel bench` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Publish generated events as fast as the server takes them; report throughput and latency
    Publish(PublishBenchArgs),
    /// Read a topic back from its start on all partitions; report throughput
    Read(ReadBenchArgs),
    /// Publish to a fresh topic and consume it through a pull or push subscription; report
    /// end-to-end latency per event and delivered events/s
    E2e(e2e::E2eBenchArgs),
    /// Read the streams of random keys of a topic published with `bench publish --keys`;
    /// report latency per read
    Keys(keys::KeysBenchArgs),
}

/// Arguments of `keel bench publish`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PublishBenchArgs {
    /// Topic to publish to; created with --partitions and --fsync when missing
    #[arg(long, default_value = "bench")]
    pub(crate) topic: String,
    /// Partitions of the topic, when the run creates it
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) partitions: u32,
    /// Requests in flight at once
    #[arg(long, default_value_t = 4, value_parser = ranged(1, CONCURRENCY_MAX))]
    pub(crate) concurrency: u64,
    /// Events per request (1 sends each event alone, in structured mode)
    #[arg(long, default_value_t = 100, value_parser = ranged(1, BATCH_EVENTS_MAX))]
    pub(crate) batch_size: u64,
    /// Bytes of data per event
    #[arg(long, default_value_t = 1024, value_parser = ranged(0, BENCH_EVENT_BYTES_MAX))]
    pub(crate) size: u64,
    /// Events to publish [default: 100000 unless --duration is given]
    #[arg(long, conflicts_with = "duration")]
    pub(crate) events: Option<u64>,
    /// Publish for this long instead, e.g. 30s, 2m, 500ms
    #[arg(long, value_parser = parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// Distinct partition keys, used in turn (0: events carry no partitionkey)
    #[arg(long, default_value_t = 0)]
    pub(crate) keys: u64,
    /// Fsync policy of the topic, when the run creates it
    #[arg(long, value_enum)]
    pub(crate) fsync: Option<Fsync>,
    /// Spread the requests over these servers (comma-separated URLs, e.g. the nodes of a
    /// cluster): request worker `i` uses server `i` mod their count. The topic is still
    /// created through --server
    #[arg(long, value_delimiter = ',', value_name = "URL,...")]
    pub(crate) servers: Vec<String>,
}

/// Arguments of `keel bench read`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ReadBenchArgs {
    /// Topic to read
    #[arg(long, default_value = "bench")]
    pub(crate) topic: String,
}

/// A parser of whole numbers in `min..=max`, for clap.
fn ranged(min: u64, max: u64) -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(min..=max)
}

/// Runs a `keel bench` subcommand against `server`; `json` prints the report as JSON.
pub(crate) async fn run(
    server: &crate::Target,
    command: BenchCommand,
    json: bool,
) -> Result<(), CliError> {
    match command {
        BenchCommand::Publish(args) => publish(server, args, json).await,
        BenchCommand::Read(args) => read(server, args, json).await,
        BenchCommand::E2e(args) => e2e::run(server, args, json).await,
        BenchCommand::Keys(args) => keys::run(server, args, json).await,
    }
}

/// The `partitionkey` of `bench publish --keys`' key number `number`.
fn bench_key(number: u64) -> String {
    format!("{KEY_PREFIX}{number}")
}

/// Parses a run length: a whole number and `ms`, `s`, `m` or `h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration like 500ms, 30s, 2m or 1h");
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(invalid()),
    };
    match number.checked_mul(unit_ms) {
        Some(0) => Err("the duration must be longer than 0".to_owned()),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Err(invalid()),
    }
}

/// Builds request bodies of generated events without re-encoding anything per event: a fixed
/// head (attributes, the run's id prefix), the event's sequence number and partition key, then
/// its data. Stamped data (`bench e2e`) opens with an [`e2e::Stamp`]: the sequence number, and
/// a send-time field written in place just before the request is sent.
#[derive(Debug)]
struct BodyBuilder {
    /// `{"specversion":…,"id":"<run prefix>-` up to the sequence number.
    head: String,
    /// The data after the stamp (all of it when unstamped): `x` repeated.
    padding: String,
    keys: u64,
    /// One event per request, sent in structured mode instead of as a batch.
    structured: bool,
    /// The data opens with an [`e2e::Stamp`].
    stamped: bool,
}

impl BodyBuilder {
    /// Events of `data_bytes` bytes of data; stamped data needs at least
    /// [`e2e::STAMP_BYTES`].
    fn new(id_prefix: &str, data_bytes: u64, keys: u64, structured: bool, stamped: bool) -> Self {
        assert!(
            !stamped || data_bytes >= e2e::STAMP_BYTES,
            "stamped data holds the stamp"
        );
        let padding_bytes = if stamped {
            data_bytes - e2e::STAMP_BYTES
        } else {
            data_bytes
        };
        let head = format!(
            concat!(
                r#"{{"specversion":"1.0","type":"keel.bench","source":"keel-bench","#,
                r#""datacontenttype":"text/plain","id":"{id_prefix}-"#
            ),
            id_prefix = id_prefix
        );
        Self {
            head,
            padding: "x".repeat(usize::try_from(padding_bytes).unwrap_or(usize::MAX)),
            keys,
            structured,
            stamped,
        }
    }

    fn content_type(&self) -> &'static str {
        if self.structured {
            CONTENT_TYPE_EVENT
        } else {
            CONTENT_TYPE_BATCH
        }
    }

    /// The body carrying events `first..first + count`; ids are unique per sequence number.
    fn build(&self, first: u64, count: u64) -> Vec<u8> {
        self.write(first, count, &mut Vec::new()).into_bytes()
    }

    /// [`BodyBuilder::build`] for stamped data: the body, and where its send-time fields are.
    fn build_stamped(&self, first: u64, count: u64) -> e2e::StampedBody {
        debug_assert!(self.stamped, "only stamped data has send-time fields");
        let mut send_time_positions = Vec::with_capacity(count as usize);
        let bytes = self
            .write(first, count, &mut send_time_positions)
            .into_bytes();
        e2e::StampedBody {
            bytes,
            send_time_positions,
        }
    }

    /// Writes the body, pushing the position of each send-time field (stamped data only).
    fn write(&self, first: u64, count: u64, send_time_positions: &mut Vec<usize>) -> String {
        debug_assert!(
            !self.structured || count == 1,
            "structured mode carries one event"
        );
        let event_bytes = self.head.len() + self.padding.len() + 96;
        let mut body = String::with_capacity(event_bytes * count as usize + 2);
        if !self.structured {
            body.push('[');
        }
        for sequence in first..first + count {
            if sequence != first {
                body.push(',');
            }
            body.push_str(&self.head);
            write!(body, "{sequence}\"").expect("writing to a String cannot fail");
            if self.keys > 0 {
                let key = sequence % self.keys;
                write!(body, r#","partitionkey":"{KEY_PREFIX}{key}""#)
                    .expect("writing to a String");
            }
            body.push_str(r#","data":""#);
            if self.stamped {
                e2e::Stamp::write_unsent(&mut body, sequence, send_time_positions);
            }
            body.push_str(&self.padding);
            body.push_str("\"}");
        }
        if !self.structured {
            body.push(']');
        }
        body
    }
}

/// When a publish run ends.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// After this many events were handed out.
    AfterEvents(u64),
    /// Once this instant has passed.
    At(Instant),
}

/// What the publish workers share: the topic, and the events handed out so far.
#[derive(Debug)]
struct Workload {
    topic: String,
    batch_size: u64,
    stop: Stop,
    claimed: AtomicU64,
    /// Set by the first Ctrl-C: hand out nothing more.
    interrupted: Arc<AtomicBool>,
}

impl Workload {
    fn new(topic: String, batch_size: u64, stop: Stop) -> Self {
        Self {
            topic,
            batch_size,
            stop,
            claimed: AtomicU64::new(0),
            interrupted: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Workload {
    /// Events the run will publish, when it is bounded by a count.
    fn planned_events(&self) -> Option<u64> {
        match self.stop {
            Stop::AfterEvents(events) => Some(events),
            Stop::At(_) => None,
        }
    }

    /// Hands out the next batch as (first sequence number, event count), or `None` once the
    /// run is over.
    fn claim(&self) -> Option<(u64, u64)> {
        if self.interrupted.load(Ordering::Relaxed) {
            return None;
        }
        match self.stop {
            Stop::At(deadline) if Instant::now() >= deadline => None,
            Stop::At(_) => Some((
                self.claimed.fetch_add(self.batch_size, Ordering::Relaxed),
                self.batch_size,
            )),
            Stop::AfterEvents(events) => {
                let first = self.claimed.fetch_add(self.batch_size, Ordering::Relaxed);
                (first < events).then(|| (first, self.batch_size.min(events - first)))
            }
        }
    }
}

/// What one worker (or, merged, the whole run) measured.
#[derive(Debug)]
struct Tally {
    /// Latency of each successful request, in microseconds.
    latency_us: Histogram<u64>,
    /// Events acknowledged (or records read).
    events: u64,
    requests: u64,
    /// Bytes of request bodies acknowledged (or answers read).
    bytes: u64,
    failures: u64,
    first_failure: Option<String>,
}

impl Tally {
    fn new() -> Self {
        let latency_us = Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_FIGURES)
            .expect("constant bounds: 1 < LATENCY_US_MAX, 3 significant figures");
        Self {
            latency_us,
            events: 0,
            requests: 0,
            bytes: 0,
            failures: 0,
            first_failure: None,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share their bounds");
        self.events += other.events;
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.failures += other.failures;
        self.first_failure = self.first_failure.take().or(other.first_failure);
    }

    /// Counts one request: its latency, events and bytes when it succeeded, else its failure.
    /// `false` when the server cannot be reached: the worker stops.
    fn count(&mut self, latency_us: u64, outcome: Result<(u64, u64), ClientError>) -> bool {
        self.requests += 1;
        match outcome {
            Ok((events, bytes)) => {
                self.latency_us.saturating_record(latency_us);
                self.events += events;
                self.bytes += bytes;
                true
            }
            Err(error) => {
                self.failures += 1;
                self.first_failure.get_or_insert_with(|| error.to_string());
                !error.is_unreachable()
            }
        }
    }

    /// An error when any request failed, for the exit code (the report is printed first).
    fn failures_error(&self) -> Result<(), CliError> {
        match (&self.first_failure, self.failures) {
            (Some(first), failed) if failed > 0 => Err(CliError::BenchFailures {
                failed,
                requests: self.requests,
                first: first.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// Refuses requests of more than [`BENCH_REQUEST_BYTES_MAX`]: `size` bytes of data times
/// `batch_size` events.
fn check_request_bytes(size: u64, batch_size: u64) -> Result<(), CliError> {
    let request_bytes = size.saturating_mul(batch_size);
    if request_bytes > BENCH_REQUEST_BYTES_MAX {
        return Err(CliError::Usage(format!(
            "--size × --batch-size is {request_bytes} bytes per request, over the limit of \
             {BENCH_REQUEST_BYTES_MAX}"
        )));
    }
    Ok(())
}

async fn publish(
    server: &crate::Target,
    args: PublishBenchArgs,
    json: bool,
) -> Result<(), CliError> {
    check_request_bytes(args.size, args.batch_size)?;
    let concurrency = usize::try_from(args.concurrency).unwrap_or(usize::MAX);
    let client = server.connect(concurrency)?;
    let partitions = ensure_topic(&client, &args).await?;
    // The workers' clients: one per server of --servers, or --server's.
    let clients = if args.servers.is_empty() {
        vec![client]
    } else {
        let per_server = concurrency.div_ceil(args.servers.len());
        args.servers
            .iter()
            .map(|url| server.at(url).connect(per_server))
            .collect::<Result<Vec<_>, _>>()?
    };
    let structured = args.batch_size == 1;
    let stop = match (args.events, args.duration) {
        (_, Some(duration)) => Stop::At(Instant::now() + duration),
        (events, None) => Stop::AfterEvents(events.unwrap_or(EVENTS_DEFAULT)),
    };
    let workload = Arc::new(Workload::new(args.topic.clone(), args.batch_size, stop));
    let bodies = Arc::new(BodyBuilder::new(
        EventIds::new().prefix(),
        args.size,
        args.keys,
        structured,
        false,
    ));
    let interrupt = tokio::spawn(stop_on_ctrl_c(Arc::clone(&workload.interrupted)));
    let bar = progress_bar(workload.planned_events(), "events");
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        workers.spawn(publish_worker(
            clients[worker % clients.len()].clone(),
            Arc::clone(&workload),
            Arc::clone(&bodies),
            bar.clone(),
        ));
    }
    let mut tally = Tally::new();
    while let Some(outcome) = workers.join_next().await {
        tally.merge(joined(outcome));
    }
    let seconds = started.elapsed().as_secs_f64();
    interrupt.abort();
    bar.finish_and_clear();
    let report = PublishReport::new(&args, partitions, &tally, seconds);
    print_report(&report, report.pairs(), json)?;
    tally.failures_error()
}

/// First Ctrl-C: set `interrupted` (stop handing out batches), let requests in flight finish,
/// report. Second: exit at once.
async fn stop_on_ctrl_c(interrupted: Arc<AtomicBool>) {
    if tokio::signal::ctrl_c().await.is_ok() {
        interrupted.store(true, Ordering::Relaxed);
        eprintln!("stopping: waiting for requests in flight (Ctrl-C again to quit)");
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    }
}

/// The partition count of the bench topic, creating the topic when it is missing.
async fn ensure_topic(client: &Client, args: &PublishBenchArgs) -> Result<usize, CliError> {
    match fetch_topic(client, &args.topic).await {
        Ok(topic) => Ok(topic.partitions.len()),
        Err(error) if error.status() == Some(StatusCode::NOT_FOUND) => {
            let create = CreateArgs {
                name: args.topic.clone(),
                partitions: Some(args.partitions),
                fsync: args.fsync,
                ..CreateArgs::default()
            };
            put_topic(client, &create).await?;
            eprintln!(
                "created topic {} ({} partitions)",
                args.topic, args.partitions
            );
            Ok(args.partitions as usize)
        }
        Err(error) => Err(error.into()),
    }
}

/// Publishes claimed batches one request at a time until the run is over; a server that
/// cannot be reached ends the worker, other failures are counted and the worker goes on.
async fn publish_worker(
    client: Client,
    workload: Arc<Workload>,
    bodies: Arc<BodyBuilder>,
    bar: ProgressBar,
) -> Tally {
    let mut tally = Tally::new();
    while let Some((first, count)) = workload.claim() {
        // Built before the clock starts: latency is the server's and the network's only.
        let bytes = bodies.build(first, count);
        let body_bytes = bytes.len() as u64;
        let body = Body {
            content_type: bodies.content_type(),
            bytes,
        };
        let started = Instant::now();
        let outcome = post_raw(&client, &workload.topic, body).await;
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if outcome.is_ok() {
            bar.inc(count);
        }
        if !tally.count(latency_us, outcome.map(|_| (count, body_bytes))) {
            break;
        }
    }
    tally
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
struct LatencyMs {
    p50: f64,
    p90: f64,
    p99: f64,
    p99_9: f64,
    max: f64,
}

impl LatencyMs {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |quantile| histogram.value_at_quantile(quantile) as f64 / 1000.0;
        Self {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p99_9: ms(0.999),
            max: ms(1.0),
        }
    }
}

/// The figures of a `bench publish` run; rates are per second of wall time.
#[derive(Debug, Serialize)]
struct PublishReport {
    topic: String,
    partitions: usize,
    concurrency: u64,
    batch_size: u64,
    event_data_bytes: u64,
    /// Events acknowledged by the server.
    events: u64,
    seconds: f64,
    events_per_sec: f64,
    /// Request body bytes acknowledged, in 10^6 bytes per second.
    mb_per_sec: f64,
    /// Requests sent, failed ones included.
    requests: u64,
    requests_per_sec: f64,
    latency_ms: LatencyMs,
    /// Requests that failed.
    errors: u64,
}

impl PublishReport {
    fn new(args: &PublishBenchArgs, partitions: usize, tally: &Tally, seconds: f64) -> Self {
        Self {
            topic: args.topic.clone(),
            partitions,
            concurrency: args.concurrency,
            batch_size: args.batch_size,
            event_data_bytes: args.size,
            events: tally.events,
            seconds,
            events_per_sec: per_second(tally.events as f64, seconds),
            mb_per_sec: per_second(tally.bytes as f64 / 1e6, seconds),
            requests: tally.requests,
            requests_per_sec: per_second(tally.requests as f64, seconds),
            latency_ms: LatencyMs::of(&tally.latency_us),
            errors: tally.failures,
        }
    }

    fn pairs(&self) -> Vec<(String, String)> {
        let latency = &self.latency_ms;
        let setup = format!(
            "{} ({} partitions), concurrency {}, batch size {}, {} B per event",
            self.topic, self.partitions, self.concurrency, self.batch_size, self.event_data_bytes
        );
        [
            ("topic", setup),
            ("events", self.events.to_string()),
            ("seconds", format!("{:.2}", self.seconds)),
            ("events/s", format!("{:.0}", self.events_per_sec)),
            ("MB/s", format!("{:.1}", self.mb_per_sec)),
            ("requests/s", format!("{:.1}", self.requests_per_sec)),
            ("latency p50", format!("{:.3} ms", latency.p50)),
            ("latency p90", format!("{:.3} ms", latency.p90)),
            ("latency p99", format!("{:.3} ms", latency.p99)),
            ("latency p99.9", format!("{:.3} ms", latency.p99_9)),
            ("latency max", format!("{:.3} ms", latency.max)),
            ("errors", self.errors.to_string()),
        ]
        .map(|(label, value)| (label.to_owned(), value))
        .to_vec()
    }
}

/// `count / seconds`, 0 for a run too short to measure.
fn per_second(count: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { count / seconds } else { 0.0 }
}

/// Prints a report: its JSON for scripts, or label/value lines for people.
fn print_report(
    report: &impl Serialize,
    pairs: Vec<(String, String)>,
    json: bool,
) -> Result<(), CliError> {
    if json {
        let text = serde_json::to_string_pretty(report).expect("a report of numbers and strings");
        return write_stdout(&format!("{text}\n"));
    }
    write_stdout(&render_pairs(&pairs))
}

async fn read(server: &crate::Target, args: ReadBenchArgs, json: bool) -> Result<(), CliError> {
    let probe = server.connect(1)?;
    let topic = fetch_topic(&probe, &args.topic).await?;
    let client = server.connect(topic.partitions.len())?;
    let records: u64 = topic
        .partitions
        .iter()
        .map(|p| p.next_offset.saturating_sub(p.start_offset))
        .sum();
    let bar = progress_bar(Some(records), "records");
    let started = Instant::now();
    let mut readers = tokio::task::JoinSet::new();
    for partition in topic.partitions.clone() {
        let reader = read_partition(client.clone(), args.topic.clone(), partition, bar.clone());
        readers.spawn(reader);
    }
    let mut tally = Tally::new();
    while let Some(outcome) = readers.join_next().await {
        tally.merge(joined(outcome)?);
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let report = ReadReport::new(&args.topic, topic.partitions.len(), &tally, seconds);
    print_report(&report, report.pairs(), json)
}

/// Reads a partition from its start to its end as it was when the run began.
async fn read_partition(
    client: Client,
    topic: String,
    partition: PartitionInfo,
    bar: ProgressBar,
) -> Result<Tally, CliError> {
    let mut tally = Tally::new();
    let mut offset = partition.start_offset;
    while offset < partition.next_offset {
        let started = Instant::now();
        let reply = read_raw(&client, &topic, partition.partition, offset).await?;
        let bytes = reply.body.len();
        let reply: Records = reply.json()?;
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        tally.latency_us.saturating_record(latency_us);
        tally.requests += 1;
        tally.bytes += bytes as u64;
        if reply.records.is_empty() {
            break;
        }
        tally.events += reply.records.len() as u64;
        bar.inc(reply.records.len() as u64);
        offset = reply.next_read_offset(offset);
    }
    Ok(tally)
}

/// The measured publish: a pre-built body, its answer not decoded (only its status counts).
async fn post_raw(client: &Client, topic: &str, body: Body) -> Result<Reply, ClientError> {
    let path = ["v1", "topics", topic, "events"];
    client.send(Method::POST, &path, &[], Some(body)).await
}

/// The measured read: up to [`READ_EVENTS_MAX`] records of a partition from `from`, without
/// waiting; the caller decodes the answer once.
async fn read_raw(
    client: &Client,
    topic: &str,
    partition: u32,
    from: u64,
) -> Result<Reply, ClientError> {
    let (partition, from, max) = (
        partition.to_string(),
        from.to_string(),
        READ_EVENTS_MAX.to_string(),
    );
    let path = ["v1", "topics", topic, "partitions", &partition, "events"];
    let query = [
        ("from", from.as_str()),
        ("max", max.as_str()),
        ("wait", "0"),
    ];
    client.send(Method::GET, &path, &query, None).await
}

/// The figures of a `bench read` run.
#[derive(Debug, Serialize)]
struct ReadReport {
    topic: String,
    partitions: usize,
    records: u64,
    seconds: f64,
    records_per_sec: f64,
    /// Answer body bytes, in 10^6 bytes per second.
    mb_per_sec: f64,
    requests: u64,
    requests_per_sec: f64,
    latency_ms: LatencyMs,
}

impl ReadReport {
    fn new(topic: &str, partitions: usize, tally: &Tally, seconds: f64) -> Self {
        Self {
            topic: topic.to_owned(),
            partitions,
            records: tally.events,
            seconds,
            records_per_sec: per_second(tally.events as f64, seconds),
            mb_per_sec: per_second(tally.bytes as f64 / 1e6, seconds),
            requests: tally.requests,
            requests_per_sec: per_second(tally.requests as f64, seconds),
            latency_ms: LatencyMs::of(&tally.latency_us),
        }
    }

    fn pairs(&self) -> Vec<(String, String)> {
        [
            (
                "topic",
                format!("{} ({} partitions)", self.topic, self.partitions),
            ),
            ("records", self.records.to_string()),
            ("seconds", format!("{:.2}", self.seconds)),
            ("records/s", format!("{:.0}", self.records_per_sec)),
            ("MB/s", format!("{:.1}", self.mb_per_sec)),
            ("requests/s", format!("{:.1}", self.requests_per_sec)),
            ("latency p50", format!("{:.3} ms", self.latency_ms.p50)),
            ("latency p99", format!("{:.3} ms", self.latency_ms.p99)),
        ]
        .map(|(label, value)| (label.to_owned(), value))
        .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn durations_take_whole_numbers_and_a_unit() {
        // Goal: the run length forms the help promises, and clear refusals. Method: a table.
        let ok = [
            ("500ms", 500),
            ("30s", 30_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
        ];
        for (text, ms) in ok {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(ms)));
        }
        for bad in [
            "30",
            "s",
            "1.5s",
            "3d",
            "",
            "-1s",
            "0s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn batch_bodies_are_arrays_of_valid_events_with_unique_ids_and_rotating_keys() {
        // Goal: generated bodies are what the server accepts. Method: parse a built batch.
        let builder = BodyBuilder::new("run", 16, 2, false, false);
        assert_eq!(builder.content_type(), CONTENT_TYPE_BATCH);
        let events: Vec<Value> = serde_json::from_slice(&builder.build(10, 3)).unwrap();
        let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        let keys: Vec<&str> = events
            .iter()
            .map(|e| e["partitionkey"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["run-10", "run-11", "run-12"]);
        assert_eq!(keys, ["key-0", "key-1", "key-0"]);
        assert_eq!(events[0]["data"].as_str().unwrap().len(), 16);
        assert_eq!(events[0]["specversion"], "1.0");
    }

    #[test]
    fn batch_of_one_is_a_structured_event_without_key() {
        let builder = BodyBuilder::new("run", 0, 0, true, false);
        assert_eq!(builder.content_type(), CONTENT_TYPE_EVENT);
        let event: Value = serde_json::from_slice(&builder.build(7, 1)).unwrap();
        assert_eq!(event["id"], "run-7");
        assert_eq!(event["data"], "");
        assert!(event.get("partitionkey").is_none());
    }

    fn workload(stop: Stop, batch_size: u64) -> Workload {
        Workload::new("bench".to_owned(), batch_size, stop)
    }

    #[test]
    fn claims_cover_exactly_the_planned_events() {
        // Goal: --events N publishes N events, the last batch short. Method: claim until done.
        let work = workload(Stop::AfterEvents(250), 100);
        let claims: Vec<(u64, u64)> = std::iter::from_fn(|| work.claim()).collect();
        assert_eq!(claims, [(0, 100), (100, 100), (200, 50)]);
    }

    #[test]
    fn claims_stop_at_the_deadline_or_on_interrupt() {
        let past = workload(Stop::At(Instant::now()), 10);
        assert_eq!(past.claim(), None);
        let future = workload(Stop::At(Instant::now() + Duration::from_secs(3600)), 10);
        assert_eq!(future.claim(), Some((0, 10)));
        future.interrupted.store(true, Ordering::Relaxed);
        assert_eq!(future.claim(), None);
    }

    #[test]
    fn merged_tallies_add_up_and_keep_the_first_failure() {
        let mut total = Tally::new();
        for (latency_us, failure) in [(1000, None), (3000, Some("boom")), (2000, Some("later"))] {
            let mut tally = Tally::new();
            tally.latency_us.saturating_record(latency_us);
            tally.events = 10;
            tally.requests = 1;
            tally.failures = u64::from(failure.is_some());
            tally.first_failure = failure.map(str::to_owned);
            total.merge(tally);
        }
        assert_eq!((total.events, total.requests, total.failures), (30, 3, 2));
        let error = total.failures_error().unwrap_err().to_string();
        assert_eq!(error, "2 of 3 requests failed; first: boom");
        let latency = LatencyMs::of(&total.latency_us);
        assert!((latency.p50 - 2.0).abs() < 0.01 && (latency.max - 3.0).abs() < 0.01);
    }

    #[test]
    fn report_json_has_the_documented_figures() {
        // Goal: scripts can rely on the field names. Method: serialize a report.
        let args = PublishBenchArgs {
            topic: "bench".to_owned(),
            partitions: 8,
            concurrency: 4,
            batch_size: 100,
            size: 1024,
            events: Some(1000),
            duration: None,
            keys: 0,
            fsync: None,
            servers: Vec::new(),
        };
        let mut tally = Tally::new();
        tally.events = 1000;
        tally.requests = 10;
        tally.bytes = 2_000_000;
        let report = serde_json::to_value(PublishReport::new(&args, 8, &tally, 2.0)).unwrap();
        assert_eq!(report["events_per_sec"], 500.0);
        assert_eq!(report["mb_per_sec"], 1.0);
        assert_eq!(report["requests_per_sec"], 5.0);
        let latency_keys: Vec<&String> = report["latency_ms"].as_object().unwrap().keys().collect();
        assert_eq!(latency_keys.len(), 5);
        assert_eq!(report["errors"], 0);
    }
}
