//! `keel bench e2e`: events timed from their publish to their delivery through a subscription.
//!
//! A run creates a topic and a subscription of its own (`start: latest`, unique names), then
//! publishes `--events` events, paced on a fixed schedule by `--rate` or flat out, while it
//! consumes them: in `pull` mode `--consumers` tasks long-poll and ack each pulled batch with
//! one call; in `push` mode the server delivers to a sink in this process (HTTP/1.1 with
//! keep-alive, answering 204 without a body). Each event's data opens with a [`Stamp`]: its
//! sequence number and the time its publish request was sent, on this process's monotonic
//! clock, so a receiver computes the event's latency from the event alone. Once every event
//! has arrived, the run waits until the subscription's lag and in-flight count are 0 (every
//! event acknowledged), then deletes the subscription and the topic.
//!
//! With `--stateful` (pull mode), the subscription is stateful and the consumers are a handler
//! that counts each key's events in keel's state, acking each batch with the states as one
//! commit; the run then reads every key's state back and checks it ([`stateful`]).

mod stateful;

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use indicatif::ProgressBar;
use keel_api::pull::{AckResult, PullRequest, Pulled, SettleRequest};
use keel_api::subscriptions::{
    self, NamedPosition, SinkSettings, StartPosition, SubscriptionInfo, SubscriptionSettings,
};
use keel_engine::limits::{IN_FLIGHT_MAX, PULL_MESSAGES_MAX};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use self::stateful::{KeyCounter, StateCheck, check_states};
use super::{
    BodyBuilder, EVENTS_DEFAULT, LatencyMs, Stop, Tally, Workload, check_request_bytes,
    parse_duration, per_second, print_report, ranged, stop_on_ctrl_c,
};
use crate::error::{CliError, joined};
use crate::limits::{BATCH_EVENTS_MAX, BENCH_EVENT_BYTES_MAX, CONCURRENCY_MAX};
use crate::output::progress_bar;
use crate::topic::{CreateArgs, Fsync, put_topic};
use keel_client::EventIds;
use keel_client::{Body, CONTENT_TYPE_JSON, Client, ClientError, Method, Reply, StatusCode};

/// Bytes at the start of an event's data that hold its [`Stamp`]: two 16-digit hex fields.
pub(super) const STAMP_BYTES: u64 = 2 * STAMP_FIELD_BYTES as u64;

/// Bytes of one [`Stamp`] field: a `u64` in lower-case hex, zero-padded.
const STAMP_FIELD_BYTES: usize = 16;

/// How long one pull waits on the server for its first message.
const PULL_WAIT: Duration = Duration::from_secs(1);

/// Pause after a failed pull or ack, or a failed accept of the sink, before trying again, so
/// a refusing server (or a process out of file descriptors) is not spun on.
const FAILURE_PAUSE_MS: u64 = 100;

/// A publish request sent more than this after its time on the schedule counts as late; the
/// timer wheel alone wakes sleepers up to a millisecond after their time.
const SCHEDULE_LATE_MS: u64 = 5;

/// Most events one run publishes: the set of events seen takes a bit each (12.5 MB).
const EVENTS_MAX: u64 = 100_000_000;

/// How often the run checks whether every event has arrived.
const ARRIVAL_POLL_MS: u64 = 10;

/// How often the progress bar moves.
const PROGRESS_TICK_MS: u64 = 100;

/// How often the run describes the subscription while waiting for lag 0.
const DESCRIBE_POLL_MS: u64 = 20;

/// Histograms the receivers spread their latencies over (by sequence number), so that
/// concurrent receivers rarely wait for one another's lock.
const LATENCY_SHARDS: u64 = 16;

/// The server's `max_in_flight` when a subscription names none; push runs use it too.
const PUSH_IN_FLIGHT_DEFAULT: u64 = 100;

/// How the run's subscription delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// Consumers in this process pull and ack
    Pull,
    /// The server pushes to a sink in this process
    Push,
}

/// The subscription's delivery order, as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DeliveryOrder {
    /// Any order, up to max-in-flight at once
    None,
    /// One event in flight per partition key, in publish order
    Key,
}

/// Arguments of `keel bench e2e`.
#[derive(Debug, Clone, Args)]
pub(crate) struct E2eBenchArgs {
    /// How events reach this process: pulled by consumers, or pushed to a sink
    #[arg(long, value_enum)]
    pub(crate) mode: Mode,
    /// Events to publish
    #[arg(long, default_value_t = EVENTS_DEFAULT, value_parser = ranged(1, EVENTS_MAX))]
    pub(crate) events: u64,
    /// Events per second, published on a fixed schedule (0: as fast as the server takes them)
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
    /// Bytes of data per event; the first 32 carry its sequence number and send time
    #[arg(long, default_value_t = 1024, value_parser = ranged(STAMP_BYTES, BENCH_EVENT_BYTES_MAX))]
    pub(crate) size: u64,
    /// Partitions of the run's topic
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) partitions: u32,
    /// Distinct partition keys, used in turn (0: events carry no partitionkey) [default: 0,
    /// or 1000 with --stateful]
    #[arg(
        long,
        default_value_t = 0,
        hide_default_value = true,
        default_value_if("stateful", "true", "1000")
    )]
    pub(crate) keys: u64,
    /// Delivery order of the subscription [default: none, or key with --stateful]
    #[arg(
        long,
        value_enum,
        default_value_t = DeliveryOrder::None,
        hide_default_value = true,
        default_value_if("stateful", "true", "key")
    )]
    pub(crate) ordering: DeliveryOrder,
    /// Events delivered and not yet acknowledged, at most [default: consumers × pull-max for
    /// pull, 100 for push]
    #[arg(long, value_parser = ranged(1, u64::from(IN_FLIGHT_MAX)))]
    pub(crate) max_in_flight: Option<u64>,
    /// Concurrent pullers (pull mode)
    #[arg(long, default_value_t = 4, value_parser = ranged(1, CONCURRENCY_MAX))]
    pub(crate) consumers: u64,
    /// Most events one pull takes (pull mode)
    #[arg(long, default_value_t = 100, value_parser = ranged(1, PULL_MESSAGES_MAX as u64))]
    pub(crate) pull_max: u64,
    /// Publish requests in flight at once
    #[arg(long, default_value_t = 4, value_parser = ranged(1, CONCURRENCY_MAX))]
    pub(crate) publishers: u64,
    /// Events per publish request (1 sends each event alone, in structured mode)
    #[arg(long, visible_alias = "batch-size", default_value_t = 100,
          value_parser = ranged(1, BATCH_EVENTS_MAX))]
    pub(crate) batch: u64,
    /// Address the push sink listens on (push mode)
    #[arg(long, default_value = "127.0.0.1:0", value_name = "HOST:PORT")]
    pub(crate) sink_listen: SocketAddr,
    /// URL the server pushes to, for a server on another host [default: http://<the sink's
    /// address>/]
    #[arg(long, value_name = "URL")]
    pub(crate) sink_url: Option<String>,
    /// Give the push sink active health checks (the defaults: a GET of /healthz every
    /// second), to measure what they cost
    #[arg(long)]
    pub(crate) health_check: bool,
    /// Fsync policy of the run's topic [default: the server's]
    #[arg(long, value_enum)]
    pub(crate) fsync: Option<Fsync>,
    /// How long to wait once publishing ends for every event to arrive, and then again for the
    /// subscription to show them all acknowledged, e.g. 30s, 2m
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) drain_timeout: Duration,
    /// Keep the run's topic and subscription instead of deleting them
    #[arg(long)]
    pub(crate) keep: bool,
    /// Publish every event first, then deliver the backlog: events/s is then the consumption
    /// rate alone, counted from the moment delivery starts (latencies include the wait)
    #[arg(long)]
    pub(crate) backlog: bool,
    /// Pull mode: a stateful subscription (needs keys and key ordering, the defaults then).
    /// The consumers count each key's events in the key's state, acking each pulled batch
    /// with one call that commits every event's new state; at the end the run reads every
    /// key's state back and fails unless each count equals the events published with its key
    #[arg(long)]
    pub(crate) stateful: bool,
    /// With --stateful: each ack also emits one event, to a topic the run creates; the run
    /// fails unless that topic ends with one event per event delivered
    #[arg(long, requires = "stateful")]
    pub(crate) emit: bool,
    /// Cluster mode: once the subscription is created, wait until the node the cluster places
    /// it on runs it (a new subscription starts on the node that created it and may then
    /// move), so that it does not move during the run. A single node needs no wait
    #[arg(long)]
    pub(crate) wait_placed: bool,
    /// Cluster mode, pull: which node the consumers pull and ack through: --server (which
    /// forwards to the node hosting the subscription when that is another), the `host`, or a
    /// node `elsewhere` (always forwarded). Host and elsewhere imply --wait-placed
    #[arg(long, value_enum, default_value_t = PullVia::Server)]
    pub(crate) pull_via: PullVia,
}

/// The node pull consumers talk to, in cluster mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PullVia {
    /// The node of --server
    Server,
    /// The node hosting the subscription
    Host,
    /// A live node other than the host
    Elsewhere,
}

impl E2eBenchArgs {
    /// Refuses a `--stateful` run that is not a keyed, key-ordered pull run.
    fn check_stateful(&self) -> Result<(), CliError> {
        let problem = if !self.stateful {
            return Ok(());
        } else if self.mode != Mode::Pull {
            "--stateful measures pull consumers: use --mode pull"
        } else if self.keys == 0 {
            "--stateful keeps a state per key: give --keys 1 or more"
        } else if self.ordering != DeliveryOrder::Key {
            "a stateful subscription delivers in key order: leave out --ordering or give key"
        } else {
            return Ok(());
        };
        Err(CliError::Usage(problem.to_owned()))
    }

    /// The subscription's `max_in_flight`: as given, or enough for every consumer's pull to be
    /// full (pull), or the server's default (push).
    fn max_in_flight(&self) -> u64 {
        self.max_in_flight.unwrap_or(match self.mode {
            Mode::Pull => (self.consumers * self.pull_max).min(u64::from(IN_FLIGHT_MAX)),
            Mode::Push => PUSH_IN_FLIGHT_DEFAULT,
        })
    }
}

/// Runs `keel bench e2e` against `server` and prints its report; fails when an event went
/// missing, the subscription did not settle, or publishing failed.
pub(super) async fn run(
    server: &crate::Target,
    args: E2eBenchArgs,
    json: bool,
) -> Result<(), CliError> {
    check_request_bytes(args.size, args.batch)?;
    args.check_stateful()?;
    let connections = args
        .publishers
        .saturating_add(args.consumers)
        .saturating_add(2);
    let client = server.connect(usize::try_from(connections).unwrap_or(usize::MAX))?;
    let bar = progress_bar(Some(args.events), "events");
    let interrupted = Arc::new(AtomicBool::new(false));
    let interrupt = tokio::spawn(stop_on_ctrl_c(Arc::clone(&interrupted)));
    let report = run_e2e(&client, &args, &bar, interrupted).await;
    interrupt.abort();
    bar.finish_and_clear();
    let report = report?;
    print_report(&report, report.pairs(), json)?;
    report.outcome()
}

/// The run's clock: microseconds since the run began, monotonic. Publishers and receivers
/// share it, so a latency is the difference of two of its readings.
#[derive(Debug, Clone, Copy)]
struct Clock {
    epoch: Instant,
}

impl Clock {
    fn start() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    fn now_us(self) -> u64 {
        micros(self.epoch.elapsed())
    }
}

/// A duration in whole microseconds, saturating.
fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// The head of an event's data in a run: its sequence number, then the time its publish
/// request was sent in microseconds on the run's [`Clock`]; each a 16-digit hex field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    sequence: u64,
    sent_us: u64,
}

impl Stamp {
    /// Writes the stamp of event `sequence` with its send time still 0, and pushes where the
    /// send-time field starts (see [`StampedBody::stamp`]).
    pub(super) fn write_unsent(
        out: &mut String,
        sequence: u64,
        send_time_positions: &mut Vec<usize>,
    ) {
        write!(out, "{sequence:016x}").expect("writing to a String cannot fail");
        send_time_positions.push(out.len());
        out.push_str(&"0".repeat(STAMP_FIELD_BYTES));
    }

    /// The stamp at the start of `data`, if it opens with one.
    fn parse(data: &[u8]) -> Option<Self> {
        let field = |start: usize| {
            let text = std::str::from_utf8(data.get(start..start + STAMP_FIELD_BYTES)?).ok()?;
            u64::from_str_radix(text, 16).ok()
        };
        Some(Self {
            sequence: field(0)?,
            sent_us: field(STAMP_FIELD_BYTES)?,
        })
    }
}

/// A request body whose events' send time is still to be written.
#[derive(Debug)]
pub(super) struct StampedBody {
    /// The body, each send-time field 0.
    pub(super) bytes: Vec<u8>,
    /// Where each event's send-time field starts in `bytes`.
    pub(super) send_time_positions: Vec<usize>,
}

impl StampedBody {
    /// The body with `sent_us` written into every event's send-time field.
    fn stamp(mut self, sent_us: u64) -> Vec<u8> {
        let field = format!("{sent_us:016x}");
        for &position in &self.send_time_positions {
            self.bytes[position..position + STAMP_FIELD_BYTES].copy_from_slice(field.as_bytes());
        }
        self.bytes
    }
}

/// When the request opening with event `first` is due, after the schedule's start, at `rate`
/// events per second: a fixed schedule, so a publisher that falls behind catches up rather
/// than shifting every later request. `None` when the run is not paced (`rate` 0).
fn due_after(first: u64, rate: u64) -> Option<Duration> {
    if rate == 0 {
        return None;
    }
    let nanos = u128::from(first) * 1_000_000_000 / u128::from(rate);
    Some(Duration::from_nanos(
        u64::try_from(nanos).unwrap_or(u64::MAX),
    ))
}

/// What one delivery turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Receipt {
    /// The event's first delivery.
    First,
    /// An event that had arrived already (an at-least-once redelivery).
    Duplicate,
    /// Data without a stamp of one of the run's events.
    Unrecognised,
}

/// What the receivers (the pull consumers or the push sink) saw; shared by all of them.
#[derive(Debug)]
struct Receipts {
    clock: Clock,
    /// Events the run publishes; sequence numbers are below it.
    events: u64,
    /// Bit `n % 64` of word `n / 64` is set once event `n` has arrived.
    seen: Box<[AtomicU64]>,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    unrecognised: AtomicU64,
    /// When the last first delivery arrived, on the run's clock.
    last_received_us: AtomicU64,
    /// End-to-end latency of first deliveries, in microseconds, spread by sequence number.
    latency_us: Box<[Mutex<Histogram<u64>>]>,
}

impl Receipts {
    fn new(events: u64, clock: Clock) -> Self {
        let words = usize::try_from(events.div_ceil(64)).expect("the run's events fit memory");
        Self {
            clock,
            events,
            seen: (0..words).map(|_| AtomicU64::new(0)).collect(),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            unrecognised: AtomicU64::new(0),
            last_received_us: AtomicU64::new(0),
            latency_us: (0..LATENCY_SHARDS)
                .map(|_| Mutex::new(Tally::new().latency_us))
                .collect(),
        }
    }

    /// Records a delivery of `data` (`None`: it had none) that arrived at `received_us`.
    fn record(&self, data: Option<&[u8]>, received_us: u64) -> Receipt {
        let stamp = data
            .and_then(Stamp::parse)
            .filter(|stamp| stamp.sequence < self.events);
        let Some(Stamp { sequence, sent_us }) = stamp else {
            self.unrecognised.fetch_add(1, Ordering::Relaxed);
            return Receipt::Unrecognised;
        };
        let bit = 1 << (sequence % 64);
        let word = &self.seen[usize::try_from(sequence / 64).expect("below events")];
        if word.fetch_or(bit, Ordering::Relaxed) & bit != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return Receipt::Duplicate;
        }
        let shard = usize::try_from(sequence % LATENCY_SHARDS).expect("below the shard count");
        self.latency_us[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(received_us.saturating_sub(sent_us));
        self.last_received_us
            .fetch_max(received_us, Ordering::Relaxed);
        // Release: whoever sees the count sees the receipt time above.
        self.delivered.fetch_add(1, Ordering::Release);
        Receipt::First
    }

    /// Distinct events received so far.
    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    /// The latencies of all shards in one histogram.
    fn latency_us(&self) -> Histogram<u64> {
        let mut merged = Tally::new().latency_us;
        for shard in &self.latency_us {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            merged.add(&*shard).expect("histograms share their bounds");
        }
        merged
    }
}

/// The names of the run's topic and subscription, and the prefix of its event ids: unique
/// across runs and processes.
#[derive(Debug, Clone)]
struct RunNames {
    topic: String,
    subscription: String,
    id_prefix: String,
    /// With `--emit`: the topic the acks emit to.
    emit_topic: Option<String>,
}

impl RunNames {
    fn new(emit: bool) -> Self {
        let ids = EventIds::new();
        let name = format!("bench-e2e-{}", ids.prefix());
        Self {
            topic: name.clone(),
            emit_topic: emit.then(|| format!("{name}-emitted")),
            subscription: name,
            id_prefix: ids.prefix().to_owned(),
        }
    }
}

/// Sets up the run's topic, subscription and (push) sink, measures, and cleans up (unless
/// `--keep`), whatever the measuring's outcome.
async fn run_e2e(
    client: &Client,
    args: &E2eBenchArgs,
    bar: &ProgressBar,
    interrupted: Arc<AtomicBool>,
) -> Result<E2eReport, CliError> {
    let names = RunNames::new(args.emit);
    for name in [Some(&names.topic), names.emit_topic.as_ref()]
        .into_iter()
        .flatten()
    {
        let topic = CreateArgs {
            name: name.clone(),
            partitions: Some(args.partitions),
            fsync: args.fsync,
            ..CreateArgs::default()
        };
        if let Err(error) = put_topic(client, &topic).await {
            return Err(cleaned_up(client, args, &names, error.into()).await);
        }
    }
    let receipts = Arc::new(Receipts::new(args.events, Clock::start()));
    let sink = match args.mode {
        Mode::Push => match PushReceiver::start(args.sink_listen, Arc::clone(&receipts)).await {
            Ok(sink) => Some(sink),
            Err(error) => return Err(cleaned_up(client, args, &names, error).await),
        },
        Mode::Pull => None,
    };
    let sink_url = sink
        .as_ref()
        .map(|sink| args.sink_url.clone().unwrap_or_else(|| sink.url()));
    let measured = match create_subscription(client, args, &names, sink_url.as_deref()).await {
        Ok(()) => match consumer_client(client, args, &names).await {
            Ok(consumers) => {
                measure(
                    client,
                    &consumers,
                    args,
                    &names,
                    &receipts,
                    bar,
                    interrupted,
                )
                .await
            }
            Err(error) => Err(error),
        },
        Err(error) => Err(error.into()),
    };
    // Before the cleanup deletes the state.
    let state_check = match &measured {
        Ok(run) if args.stateful => {
            let published = run.publishing.requests.events;
            let emit_topic = names.emit_topic.as_deref();
            let check = check_states(
                client,
                &names.subscription,
                args.keys,
                published,
                emit_topic,
            );
            Some(check.await)
        }
        Ok(_) | Err(_) => None,
    };
    let cleanup = if args.keep {
        Ok(())
    } else {
        delete_run(client, &names).await
    };
    // After the subscription is gone: nothing is pushed to the sink any more.
    let sink_connections = match sink {
        Some(sink) => Some(sink.stop().await),
        None => None,
    };
    let mut measured = measured?;
    measured.sink_connections = sink_connections;
    measured.state_check = state_check.transpose()?;
    cleanup?;
    Ok(E2eReport::new(args, &names, &receipts, measured))
}

/// How long `--wait-placed` waits for the subscription to settle on its node.
const PLACED_WAIT: Duration = Duration::from_secs(60);

/// The client the pull consumers use: `client`, or with `--pull-via host|elsewhere` one of
/// that node. With `--wait-placed` or such a `--pull-via`, first waits until the cluster runs
/// the subscription where it places it.
async fn consumer_client(
    client: &Client,
    args: &E2eBenchArgs,
    names: &RunNames,
) -> Result<Client, CliError> {
    if !args.wait_placed && args.pull_via == PullVia::Server {
        return Ok(client.clone());
    }
    let unit = format!("subscription/{}", names.subscription);
    let deadline = Instant::now() + PLACED_WAIT;
    loop {
        let answer = client.cluster().await?;
        let status = answer.value();
        if status.mode != "cluster" {
            return Ok(client.clone());
        }
        let placed = status.units.iter().find(|listed| listed.unit == unit);
        let host = placed.and_then(|listed| {
            let node = listed.node.as_ref()?;
            (listed.placed_on.as_ref() == Some(node)).then_some(node)
        });
        if let Some(host) = host {
            let via = status.nodes.iter().find(|listed| match args.pull_via {
                PullVia::Server => false,
                PullVia::Host => listed.id == *host,
                PullVia::Elsewhere => listed.id != *host,
            });
            eprintln!(
                "subscription {} runs on node {host}; pulling through {}",
                names.subscription,
                via.map_or("--server", |node| node.id.as_str())
            );
            return match via {
                // Its pool is sized for every worker already (`run`).
                Some(node) => Ok(client.for_server(&node.url)?),
                None => Ok(client.clone()),
            };
        }
        if Instant::now() >= deadline {
            return Err(CliError::Io {
                action: format!("wait for subscription {} to settle", names.subscription),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("not on its node after {}s", PLACED_WAIT.as_secs()),
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes what the run created (unless `--keep`) and returns `error`, the reason the run
/// stopped early.
async fn cleaned_up(
    client: &Client,
    args: &E2eBenchArgs,
    names: &RunNames,
    error: CliError,
) -> CliError {
    if !args.keep {
        // The run's own error says more than a failed cleanup would.
        let _ = delete_run(client, names).await;
    }
    error
}

impl From<DeliveryOrder> for subscriptions::Ordering {
    fn from(order: DeliveryOrder) -> Self {
        match order {
            DeliveryOrder::None => subscriptions::Ordering::None,
            DeliveryOrder::Key => subscriptions::Ordering::Key,
        }
    }
}

async fn create_subscription(
    client: &Client,
    args: &E2eBenchArgs,
    names: &RunNames,
    sink_url: Option<&str>,
) -> Result<(), ClientError> {
    let spec = SubscriptionSettings {
        topic: names.topic.clone(),
        sink: sink_url.map(|url| SinkSettings {
            url: url.to_owned(),
            health_check: args
                .health_check
                .then(subscriptions::HealthCheckSettings::default),
            ..SinkSettings::default()
        }),
        start: Some(StartPosition::Named(NamedPosition::Latest)),
        ordering: Some(args.ordering.into()),
        stateful: args.stateful,
        max_in_flight: Some(
            u32::try_from(args.max_in_flight()).expect("max_in_flight is at most IN_FLIGHT_MAX"),
        ),
        ..SubscriptionSettings::default()
    };
    client
        .create_subscription(&names.subscription, &spec)
        .await?;
    Ok(())
}

/// Deletes the run's subscription, then its topic (and the topic its acks emit to, if any);
/// any may be missing already.
async fn delete_run(client: &Client, names: &RunNames) -> Result<(), CliError> {
    let mut deleted = vec![
        client.delete_subscription(&names.subscription).await,
        client.delete_topic(&names.topic, false).await,
    ];
    if let Some(emit_topic) = &names.emit_topic {
        deleted.push(client.delete_topic(emit_topic, false).await);
    }
    for outcome in deleted {
        match outcome {
            Err(error) if error.status() != Some(StatusCode::NOT_FOUND) => return Err(error.into()),
            Ok(()) | Err(_) => {}
        }
    }
    Ok(())
}

/// What a run measured, before it becomes the report.
#[derive(Debug)]
struct Measured {
    publishing: PublishTally,
    consuming: ConsumeTally,
    /// The subscription once the run stopped waiting.
    progress: SubscriptionInfo,
    /// Lag and in-flight reached 0 before the deadline.
    settled: bool,
    /// From the last event's arrival to describe confirming it settled, in microseconds.
    settle_us: u64,
    /// Push mode: connections the sink accepted.
    sink_connections: Option<u64>,
    /// With `--backlog`: when delivery started, after publishing.
    delivery_started_us: Option<u64>,
    /// With `--stateful`: what reading back the keys' states found.
    state_check: Option<StateCheck>,
}

/// Consumes (pull) while publishing, waits for every published event to arrive, then for the
/// subscription to settle, then stops the consumers.
async fn measure(
    client: &Client,
    consumer_client: &Client,
    args: &E2eBenchArgs,
    names: &RunNames,
    receipts: &Arc<Receipts>,
    bar: &ProgressBar,
    interrupted: Arc<AtomicBool>,
) -> Result<Measured, CliError> {
    let stop_consumers = Arc::new(AtomicBool::new(false));
    let mut consumers = JoinSet::new();
    let counter = args
        .stateful
        .then(|| Arc::new(KeyCounter::new(args.keys, names.emit_topic.clone())));
    let start_consumers = |consumers: &mut JoinSet<_>| {
        let subscription: Arc<str> = Arc::from(names.subscription.as_str());
        for _ in 0..args.consumers {
            let consumer = consume(
                consumer_client.clone(),
                Arc::clone(&subscription),
                args.pull_max,
                Arc::clone(receipts),
                counter.clone(),
                Arc::clone(&stop_consumers),
            );
            consumers.spawn(consumer);
        }
    };
    let pull = args.mode == Mode::Pull;
    if args.backlog && !pull {
        set_paused(client, names, true).await?;
    }
    if pull && !args.backlog {
        start_consumers(&mut consumers);
    }
    let ticker = tokio::spawn(show_progress(Arc::clone(receipts), bar.clone()));
    let publishing = publish_all(client, args, names, receipts.clock, interrupted).await;
    let delivery_started_us = args.backlog.then(|| receipts.clock.now_us());
    if args.backlog {
        if pull {
            start_consumers(&mut consumers);
        } else {
            set_paused(client, names, false).await?;
        }
    }
    let arrived = wait_for_arrivals(receipts, publishing.requests.events, args.drain_timeout).await;
    let settle_wait = if arrived {
        args.drain_timeout
    } else {
        Duration::ZERO
    };
    let settled = wait_for_settled(client, &names.subscription, settle_wait).await;
    let settle_us = receipts
        .clock
        .now_us()
        .saturating_sub(receipts.last_received_us.load(Ordering::Relaxed));
    stop_consumers.store(true, Ordering::Relaxed);
    let mut consuming = ConsumeTally::new();
    while let Some(outcome) = consumers.join_next().await {
        consuming.merge(joined(outcome));
    }
    ticker.abort();
    bar.set_position(receipts.delivered());
    let (progress, settled) = settled?;
    Ok(Measured {
        publishing,
        consuming,
        progress,
        settled,
        settle_us,
        sink_connections: None,
        delivery_started_us,
        state_check: None,
    })
}

/// Pauses or resumes the run's subscription (push with `--backlog`).
async fn set_paused(client: &Client, names: &RunNames, paused: bool) -> Result<(), CliError> {
    let name = names.subscription.as_str();
    if paused {
        client.pause_subscription(name).await?;
    } else {
        client.resume_subscription(name).await?;
    }
    Ok(())
}

/// Moves the progress bar to the count of events received, until aborted.
async fn show_progress(receipts: Arc<Receipts>, bar: ProgressBar) {
    loop {
        bar.set_position(receipts.delivered());
        tokio::time::sleep(Duration::from_millis(PROGRESS_TICK_MS)).await;
    }
}

/// Waits up to `timeout` until `expected` distinct events have arrived; true when they have.
async fn wait_for_arrivals(receipts: &Receipts, expected: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if receipts.delivered() >= expected {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(ARRIVAL_POLL_MS)).await;
    }
}

/// Describes the subscription until its lag and in-flight count are 0, for up to `timeout`
/// (0: once); returns the last description and whether it got there.
async fn wait_for_settled(
    client: &Client,
    subscription: &str,
    timeout: Duration,
) -> Result<(SubscriptionInfo, bool), ClientError> {
    let deadline = Instant::now() + timeout;
    loop {
        let progress = client.describe_subscription(subscription).await?.value();
        let settled = progress.lag == 0 && progress.in_flight == 0;
        if settled || Instant::now() >= deadline {
            return Ok((progress, settled));
        }
        tokio::time::sleep(Duration::from_millis(DESCRIBE_POLL_MS)).await;
    }
}

/// What the publishers share: the events to hand out, the bodies, the clock and the pace.
#[derive(Debug)]
struct PublishRun {
    workload: Workload,
    bodies: BodyBuilder,
    clock: Clock,
    /// Events per second; 0 publishes flat out.
    rate: u64,
    /// The schedule's time 0.
    schedule_start: tokio::time::Instant,
}

/// What the publishers measured.
#[derive(Debug)]
struct PublishTally {
    /// Publish requests: their latency, events acknowledged, failures.
    requests: Tally,
    /// The first request's send time, on the run's clock.
    first_sent_us: u64,
    /// The last successful answer's arrival, on the run's clock.
    last_answered_us: u64,
    /// Requests sent more than [`SCHEDULE_LATE_MS`] after their time on the schedule.
    late_requests: u64,
    /// The most a request was sent after its time on the schedule, in microseconds.
    behind_us_max: u64,
}

impl PublishTally {
    fn new() -> Self {
        Self {
            requests: Tally::new(),
            first_sent_us: u64::MAX,
            last_answered_us: 0,
            late_requests: 0,
            behind_us_max: 0,
        }
    }

    fn merge(&mut self, other: Self) {
        self.requests.merge(other.requests);
        self.first_sent_us = self.first_sent_us.min(other.first_sent_us);
        self.last_answered_us = self.last_answered_us.max(other.last_answered_us);
        self.late_requests += other.late_requests;
        self.behind_us_max = self.behind_us_max.max(other.behind_us_max);
    }

    /// Notes how long after its time on the schedule a request was sent.
    fn note_behind(&mut self, behind: Duration) {
        let behind_us = micros(behind);
        self.behind_us_max = self.behind_us_max.max(behind_us);
        if behind_us > SCHEDULE_LATE_MS * 1000 {
            self.late_requests += 1;
        }
    }
}

/// Publishes the run's events with `--publishers` workers; returns once all are answered.
async fn publish_all(
    client: &Client,
    args: &E2eBenchArgs,
    names: &RunNames,
    clock: Clock,
    interrupted: Arc<AtomicBool>,
) -> PublishTally {
    let mut workload = Workload::new(
        names.topic.clone(),
        args.batch,
        Stop::AfterEvents(args.events),
    );
    workload.interrupted = interrupted;
    let structured = args.batch == 1;
    let run = Arc::new(PublishRun {
        workload,
        bodies: BodyBuilder::new(&names.id_prefix, args.size, args.keys, structured, true),
        clock,
        rate: args.rate,
        schedule_start: tokio::time::Instant::now(),
    });
    let mut workers = JoinSet::new();
    for _ in 0..args.publishers {
        workers.spawn(publish_paced(client.clone(), Arc::clone(&run)));
    }
    let mut tally = PublishTally::new();
    while let Some(outcome) = workers.join_next().await {
        tally.merge(joined(outcome));
    }
    tally
}

/// Publishes claimed batches, each at its time on the schedule (or at once when flat out),
/// stamped with the instant it is sent. A server that cannot be reached ends the worker;
/// other failures are counted and the worker goes on.
async fn publish_paced(client: Client, run: Arc<PublishRun>) -> PublishTally {
    let mut tally = PublishTally::new();
    while let Some((first, count)) = run.workload.claim() {
        let unsent = run.bodies.build_stamped(first, count);
        if let Some(due_after) = due_after(first, run.rate) {
            let due = run.schedule_start + due_after;
            tokio::time::sleep_until(due).await;
            tally.note_behind(tokio::time::Instant::now().saturating_duration_since(due));
        }
        let sent_us = run.clock.now_us();
        let body = Body {
            content_type: run.bodies.content_type(),
            bytes: unsent.stamp(sent_us),
        };
        let outcome = super::post_raw(&client, &run.workload.topic, body).await;
        let answered_us = run.clock.now_us();
        tally.first_sent_us = tally.first_sent_us.min(sent_us);
        tally.requests.requests += 1;
        match outcome {
            Ok(_) => {
                let latency_us = answered_us.saturating_sub(sent_us);
                tally.requests.latency_us.saturating_record(latency_us);
                tally.requests.events += count;
                tally.last_answered_us = answered_us;
            }
            Err(error) => {
                if !note_failure(&mut tally.requests, &error) {
                    break;
                }
            }
        }
    }
    tally
}

/// Counts a failed request; false when the server cannot be reached (no point going on).
fn note_failure(tally: &mut Tally, error: &ClientError) -> bool {
    tally.failures += 1;
    tally.first_failure.get_or_insert_with(|| error.to_string());
    !error.is_unreachable()
}

/// What the pull consumers measured.
#[derive(Debug)]
struct ConsumeTally {
    /// Ack calls: their latency, events settled, and failed pulls and acks.
    acks: Tally,
    pulls: u64,
    /// Ack ids the server answered as stale (their delivery had timed out or was settled).
    stale_acks: u64,
    /// With `--stateful`: messages whose state was not the one the handler committed for
    /// their key's previous event, and the first one's problem.
    state_errors: u64,
    first_state_error: Option<String>,
}

impl ConsumeTally {
    fn new() -> Self {
        Self {
            acks: Tally::new(),
            pulls: 0,
            stale_acks: 0,
            state_errors: 0,
            first_state_error: None,
        }
    }

    fn merge(&mut self, other: Self) {
        self.acks.merge(other.acks);
        self.pulls += other.pulls;
        self.stale_acks += other.stale_acks;
        self.state_errors += other.state_errors;
        self.first_state_error = self.first_state_error.take().or(other.first_state_error);
    }
}

/// A pulled event: the parts the run uses, read in the pass that reads the pull answer.
#[derive(Debug, Deserialize)]
struct PulledEvent<'a> {
    #[serde(borrow, default)]
    data: Option<Cow<'a, str>>,
}

/// Pulls and acks until `stop` is set: each pulled batch is recorded on arrival, then acked
/// with one call; with a `counter` (`--stateful`), the ack commits each event's key's state.
async fn consume(
    client: Client,
    subscription: Arc<str>,
    pull_max: u64,
    receipts: Arc<Receipts>,
    counter: Option<Arc<KeyCounter>>,
    stop: Arc<AtomicBool>,
) -> ConsumeTally {
    let mut tally = ConsumeTally::new();
    let pull = PullRequest {
        max: Some(pull_max as usize),
        wait: Some(PULL_WAIT),
    };
    let pull_body = serde_json::to_vec(&pull).expect("a pull request of a number and a string");
    let pull_path = ["v1", "subscriptions", &*subscription, "pull"];
    while !stop.load(Ordering::Relaxed) {
        let body = Body {
            content_type: CONTENT_TYPE_JSON,
            bytes: pull_body.clone(),
        };
        let pulled = client.send(Method::POST, &pull_path, &[], Some(body)).await;
        let received_us = receipts.clock.now_us();
        tally.pulls += 1;
        let acks = pulled.and_then(|reply| {
            record_pulled(
                &reply,
                received_us,
                &receipts,
                counter.as_deref(),
                &mut tally,
            )
        });
        let settled = match acks {
            Ok(acks) if acks.ack_ids.is_empty() && acks.acks.is_empty() => continue,
            Ok(acks) => ack(&client, &subscription, acks, &mut tally).await,
            Err(error) => Err(error),
        };
        if let Err(error) = settled {
            if !note_failure(&mut tally.acks, &error) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(FAILURE_PAUSE_MS)).await;
        }
    }
    tally
}

/// Records the arrival of each message of a pull answer; returns the ack of them all: their
/// ack ids, or with a `counter` their stateful acks (a message whose pulled state the counter
/// finds wrong is counted in `tally`).
fn record_pulled(
    reply: &Reply,
    received_us: u64,
    receipts: &Receipts,
    counter: Option<&KeyCounter>,
    tally: &mut ConsumeTally,
) -> Result<SettleRequest, ClientError> {
    let answer: Pulled<'_, PulledEvent<'_>> =
        serde_json::from_slice(&reply.body).map_err(|error| ClientError::Unexpected {
            detail: format!("pull answer: {error}"),
        })?;
    let mut request = SettleRequest::default();
    for message in answer.messages {
        let data = message.event.data.as_deref().map(str::as_bytes);
        receipts.record(data, received_us);
        let Some(counter) = counter else {
            request.ack_ids.push(message.ack_id.into_owned());
            continue;
        };
        let (ack, problem) = counter.ack(&message);
        request.acks.push(ack);
        if let Some(problem) = problem {
            tally.state_errors += 1;
            tally.first_state_error.get_or_insert(problem);
        }
    }
    Ok(request)
}

/// Sends `request`, the ack of a pulled batch, with one call, timing it.
async fn ack(
    client: &Client,
    subscription: &str,
    request: SettleRequest,
    tally: &mut ConsumeTally,
) -> Result<(), ClientError> {
    let body = Body {
        content_type: CONTENT_TYPE_JSON,
        bytes: serde_json::to_vec(&request).expect("strings and JSON values"),
    };
    let path = ["v1", "subscriptions", subscription, "ack"];
    let started = Instant::now();
    let reply = client.send(Method::POST, &path, &[], Some(body)).await;
    let latency_us = micros(started.elapsed());
    tally.acks.requests += 1;
    let answer: AckResult = reply?.json()?;
    tally.acks.latency_us.saturating_record(latency_us);
    tally.acks.events += answer.settled as u64;
    tally.stale_acks += answer.stale.len() as u64;
    Ok(())
}

/// The push sink: an HTTP/1.1 server in this process that records each delivery and answers
/// 204 No Content, keeping connections alive.
///
/// Not the test kit's scriptable sink, on purpose: this one ships in the binary and is on the
/// measured path, so it is hyper's HTTP/1.1 server, answering as fast as it can and timing each
/// arrival; the test kit's is hand-written on raw sockets so that it can misbehave (answer
/// late, cut a response, hang up, go down), and records whole requests for tests to inspect.
#[derive(Debug)]
struct PushReceiver {
    address: SocketAddr,
    /// Connections accepted so far.
    connections: Arc<AtomicU64>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl PushReceiver {
    async fn start(listen: SocketAddr, receipts: Arc<Receipts>) -> Result<Self, CliError> {
        let action = || format!("listen on {listen} for the push sink");
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|error| CliError::io(action(), error))?;
        let address = listener
            .local_addr()
            .map_err(|error| CliError::io(action(), error))?;
        let (stop, stopped) = oneshot::channel();
        let connections = Arc::new(AtomicU64::new(0));
        let accepted = Arc::clone(&connections);
        let task = tokio::spawn(accept_deliveries(listener, receipts, accepted, stopped));
        Ok(Self {
            address,
            connections,
            stop,
            task,
        })
    }

    /// The URL the server reaches the sink at: its address, with an unspecified IP (listening
    /// on all interfaces) replaced by loopback.
    fn url(&self) -> String {
        let mut address = self.address;
        if address.ip().is_unspecified() {
            address.set_ip(match address.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        format!("http://{address}/")
    }

    /// Stops accepting and closes every connection; returns how many it accepted.
    async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        // The accept loop does not panic; a panic would have ended it all the same.
        let _ = self.task.await;
        self.connections.load(Ordering::Relaxed)
    }
}

/// Accepts the server's connections, counting them in `accepted`, until `stopped`; then drops
/// (closes) them all.
async fn accept_deliveries(
    listener: TcpListener,
    receipts: Arc<Receipts>,
    accepted: Arc<AtomicU64>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        let connection = tokio::select! {
            _ = &mut stopped => break,
            connection = listener.accept() => connection,
        };
        while connections.try_join_next().is_some() {}
        match connection {
            Ok((stream, _)) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                connections.spawn(serve_deliveries(stream, Arc::clone(&receipts)));
            }
            // Out of file descriptors, usually: wait for some to close.
            Err(_) => tokio::time::sleep(Duration::from_millis(FAILURE_PAUSE_MS)).await,
        }
    }
}

/// Serves one connection's deliveries until the server closes it.
async fn serve_deliveries(stream: TcpStream, receipts: Arc<Receipts>) {
    // Answers are tiny: sending them at once matters more than coalescing.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let receipts = Arc::clone(&receipts);
        async move { Ok::<_, Infallible>(receive(&receipts, request).await) }
    });
    // A connection the server drops mid-request just ends; its event is retried.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Records one pushed event (its body is its data) and answers 204; a body that cannot be
/// read is answered 503, so the server retries it. A `GET` is a health check: 204, nothing
/// recorded.
async fn receive(receipts: &Receipts, request: Request<Incoming>) -> Response<Empty<Bytes>> {
    let received_us = receipts.clock.now_us();
    let status = if request.method() == hyper::Method::GET {
        StatusCode::NO_CONTENT
    } else {
        match request.into_body().collect().await {
            Ok(body) => {
                receipts.record(Some(&body.to_bytes()), received_us);
                StatusCode::NO_CONTENT
            }
            Err(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    };
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    response
}

/// The figures of a `bench e2e` run; `--json` prints them under these names.
#[derive(Debug, Serialize)]
struct E2eReport {
    mode: Mode,
    topic: String,
    subscription: String,
    partitions: u32,
    /// Distinct partition keys; 0 for keyless events.
    keys: u64,
    ordering: DeliveryOrder,
    max_in_flight: u64,
    /// Pull mode: concurrent pullers.
    consumers: Option<u64>,
    /// Pull mode: most events per pull.
    pull_max: Option<u64>,
    publishers: u64,
    /// Events per publish request.
    batch: u64,
    event_data_bytes: u64,
    /// The paced publish rate in events/s; null when publishing flat out.
    rate_target: Option<u64>,
    /// Whether every event was published before delivery started (`--backlog`).
    backlog: bool,
    /// Events the publish endpoint acknowledged.
    published: u64,
    /// Distinct events received.
    delivered: u64,
    /// Deliveries of events received before (at-least-once redeliveries).
    duplicates: u64,
    /// Published events never received.
    missing: u64,
    /// Deliveries without a stamp of this run's events.
    unrecognised: u64,
    /// From the first publish request sent to the last event received.
    seconds: f64,
    /// Distinct events received per second of `seconds`.
    events_per_sec: f64,
    /// Events published per second, from the first request sent to the last answered.
    publish_events_per_sec: f64,
    /// Per event: its arrival at a consumer or the sink minus its publish request's send time.
    latency_ms: LatencyMs,
    /// Publish requests, sent to answered.
    publish_latency_ms: LatencyMs,
    /// Pull mode: ack calls, sent to answered.
    ack_latency_ms: Option<LatencyMs>,
    publish_requests: u64,
    /// Paced runs: requests sent more than 5 ms after their time on the schedule.
    late_requests: Option<u64>,
    /// Paced runs: the most a request was sent after its time on the schedule.
    behind_schedule_ms_max: Option<f64>,
    publish_errors: u64,
    /// Pull mode: failed pulls and acks.
    consumer_errors: u64,
    /// The first publish or consumer error.
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
    /// Pull mode: ack ids answered as stale.
    stale_acks: u64,
    /// The subscription's lag when the run stopped waiting.
    lag_end: u64,
    in_flight_end: u64,
    /// The server's counts for the subscription: failed attempts retried, dead-lettered.
    retried: u64,
    dead_lettered: u64,
    /// The subscription's last failure, if any.
    last_error: Option<String>,
    /// Lag and in_flight reached 0 before `--drain-timeout`.
    settled: bool,
    /// From the last event's arrival until describe showed lag and in_flight 0.
    settle_ms: f64,
    /// Push mode: connections the sink accepted from the server (fewer is better: each new
    /// one costs a TCP handshake, and means the server's pool did not keep it).
    sink_connections: Option<u64>,
    /// Whether the subscription was stateful, its acks committing each key's count.
    stateful: bool,
    /// `--stateful`: pulled messages whose state was not the handler's last commit for their
    /// key, and the first one's problem.
    state_errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_state_error: Option<String>,
    /// `--stateful`: every key's state read back at the end, and checked.
    state_check: Option<StateCheck>,
}

impl E2eReport {
    fn new(args: &E2eBenchArgs, names: &RunNames, receipts: &Receipts, run: Measured) -> Self {
        let (publishing, consuming) = (&run.publishing, &run.consuming);
        let last_received_us = receipts.last_received_us.load(Ordering::Relaxed);
        let delivery_started_us = run.delivery_started_us.unwrap_or(publishing.first_sent_us);
        let seconds = last_received_us.saturating_sub(delivery_started_us) as f64 / 1e6;
        let publish_seconds = publishing
            .last_answered_us
            .saturating_sub(publishing.first_sent_us) as f64
            / 1e6;
        let delivered = receipts.delivered();
        let pull = args.mode == Mode::Pull;
        let paced = args.rate > 0;
        let first_error = (publishing.requests.first_failure.clone())
            .or_else(|| consuming.acks.first_failure.clone());
        Self {
            mode: args.mode,
            topic: names.topic.clone(),
            subscription: names.subscription.clone(),
            partitions: args.partitions,
            keys: args.keys,
            ordering: args.ordering,
            max_in_flight: args.max_in_flight(),
            consumers: pull.then_some(args.consumers),
            pull_max: pull.then_some(args.pull_max),
            publishers: args.publishers,
            batch: args.batch,
            event_data_bytes: args.size,
            rate_target: paced.then_some(args.rate),
            backlog: args.backlog,
            published: publishing.requests.events,
            delivered,
            duplicates: receipts.duplicates.load(Ordering::Relaxed),
            missing: publishing.requests.events.saturating_sub(delivered),
            unrecognised: receipts.unrecognised.load(Ordering::Relaxed),
            seconds,
            events_per_sec: per_second(delivered as f64, seconds),
            publish_events_per_sec: per_second(publishing.requests.events as f64, publish_seconds),
            latency_ms: LatencyMs::of(&receipts.latency_us()),
            publish_latency_ms: LatencyMs::of(&publishing.requests.latency_us),
            ack_latency_ms: pull.then(|| LatencyMs::of(&consuming.acks.latency_us)),
            publish_requests: publishing.requests.requests,
            late_requests: paced.then_some(publishing.late_requests),
            behind_schedule_ms_max: paced.then_some(publishing.behind_us_max as f64 / 1000.0),
            publish_errors: publishing.requests.failures,
            consumer_errors: consuming.acks.failures,
            first_error,
            stale_acks: consuming.stale_acks,
            lag_end: run.progress.lag,
            in_flight_end: run.progress.in_flight as u64,
            retried: run.progress.retried,
            dead_lettered: run.progress.dead_lettered,
            last_error: run.progress.last_error.map(|last| last.error),
            settled: run.settled,
            settle_ms: run.settle_us as f64 / 1000.0,
            sink_connections: run.sink_connections,
            stateful: args.stateful,
            state_errors: consuming.state_errors,
            first_state_error: consuming.first_state_error.clone(),
            state_check: run.state_check,
        }
    }

    /// An error when the run was not clean: a publish failed, an event never arrived, or the
    /// subscription did not settle. The report is printed first.
    fn outcome(&self) -> Result<(), CliError> {
        if self.publish_errors > 0 {
            return Err(CliError::BenchFailures {
                failed: self.publish_errors,
                requests: self.publish_requests,
                first: self.first_error.clone().unwrap_or_default(),
            });
        }
        let problem = if self.missing > 0 {
            format!(
                "{} of {} published events never arrived",
                self.missing, self.published
            )
        } else if !self.settled {
            format!(
                "the subscription still showed lag {} and {} in flight",
                self.lag_end, self.in_flight_end
            )
        } else {
            return self.state_outcome();
        };
        Err(CliError::Client(ClientError::Unexpected {
            detail: format!("{problem} at the end of the run (see --drain-timeout)"),
        }))
    }

    /// `--stateful`: an error when a pulled state or a state read back was wrong.
    fn state_outcome(&self) -> Result<(), CliError> {
        let problem = match &self.state_check {
            _ if self.state_errors > 0 => format!(
                "{} pulled messages carried a state the handler had not committed for their \
                 key; first: {}",
                self.state_errors,
                self.first_state_error.as_deref().unwrap_or_default()
            ),
            Some(check) if !check.passed(self.delivered) => {
                format!("the state read back is wrong: {}", self.state_line())
            }
            Some(_) | None => return Ok(()),
        };
        Err(CliError::Client(ClientError::Unexpected {
            detail: problem,
        }))
    }

    fn pairs(&self) -> Vec<(String, String)> {
        let mut pairs = vec![
            ("mode", self.mode_line()),
            ("topic", self.topic_line()),
            ("publishing", self.publishing_line()),
            ("events", self.events_line()),
            (
                "seconds",
                if self.backlog {
                    format!("{:.2} (delivery start to last arrival)", self.seconds)
                } else {
                    format!("{:.2} (first publish to last arrival)", self.seconds)
                },
            ),
            (
                "events/s",
                format!(
                    "{:.0} delivered ({:.0} published)",
                    self.events_per_sec, self.publish_events_per_sec
                ),
            ),
        ];
        let latency = &self.latency_ms;
        pairs.extend([
            ("latency p50", format!("{:.3} ms", latency.p50)),
            ("latency p90", format!("{:.3} ms", latency.p90)),
            ("latency p99", format!("{:.3} ms", latency.p99)),
            ("latency p99.9", format!("{:.3} ms", latency.p99_9)),
            ("latency max", format!("{:.3} ms", latency.max)),
            ("publish p50/p99", p50_p99(&self.publish_latency_ms)),
        ]);
        if let Some(ack) = &self.ack_latency_ms {
            pairs.push(("ack p50/p99", p50_p99(ack)));
        }
        if let Some(schedule) = self.schedule_line() {
            pairs.push(("schedule", schedule));
        }
        pairs.push(("lag at end", self.settle_line()));
        if self.stateful {
            pairs.push(("state", self.state_line()));
        }
        pairs.push(("errors", self.errors_line()));
        pairs
            .into_iter()
            .map(|(label, value)| (label.to_owned(), value))
            .collect()
    }

    fn mode_line(&self) -> String {
        match (self.consumers, self.pull_max) {
            (Some(consumers), Some(pull_max)) => format!(
                "pull: {consumers} consumers taking up to {pull_max} per pull, max in flight {}",
                self.max_in_flight
            ),
            _ => format!(
                "push to a sink in this process, max in flight {}, {} connections accepted",
                self.max_in_flight,
                self.sink_connections.unwrap_or_default()
            ),
        }
    }

    fn topic_line(&self) -> String {
        let keys = match self.keys {
            0 => "keyless".to_owned(),
            keys => format!("{keys} keys"),
        };
        let ordering = match self.ordering {
            DeliveryOrder::None => "none",
            DeliveryOrder::Key => "key",
        };
        format!(
            "{} ({} partitions), {} B per event, {keys}, ordering {ordering}",
            self.topic, self.partitions, self.event_data_bytes
        )
    }

    fn publishing_line(&self) -> String {
        let pace = match self.rate_target {
            Some(rate) => format!("paced at {rate} events/s"),
            None => "flat out".to_owned(),
        };
        format!(
            "{} publishers, {} events per request, {pace}",
            self.publishers, self.batch
        )
    }

    fn events_line(&self) -> String {
        let mut line = format!(
            "{} published, {} delivered, {} duplicates, {} missing",
            self.published, self.delivered, self.duplicates, self.missing
        );
        if self.unrecognised > 0 {
            write!(line, ", {} unrecognised", self.unrecognised).expect("writing to a String");
        }
        line
    }

    fn schedule_line(&self) -> Option<String> {
        let late = self.late_requests?;
        let behind_ms = self.behind_schedule_ms_max.unwrap_or_default();
        let verdict = if late == 0 { "kept" } else { "fell behind" };
        Some(format!(
            "{verdict}: {late} of {} requests sent over {SCHEDULE_LATE_MS} ms late, at most \
             {behind_ms:.1} ms",
            self.publish_requests
        ))
    }

    fn settle_line(&self) -> String {
        if self.settled {
            format!(
                "0, 0 in flight (confirmed {:.0} ms after the last arrival)",
                self.settle_ms
            )
        } else {
            format!(
                "{}, {} in flight: NOT settled",
                self.lag_end, self.in_flight_end
            )
        }
    }

    /// What reading every key's state back found.
    fn state_line(&self) -> String {
        let Some(check) = &self.state_check else {
            return "not checked".to_owned();
        };
        let verdict = if check.passed(self.delivered) {
            "verified"
        } else {
            "WRONG:"
        };
        let mut line = format!(
            "{verdict} {} of {} keys (count and version = the key's events published)",
            check.keys_verified, check.keys_expected
        );
        if let Some(emitted) = check.emitted {
            let delivered = self.delivered;
            write!(line, ", {emitted} events emitted for {delivered} delivered")
                .expect("writing to a String");
        }
        if let Some(wrong) = &check.first_wrong {
            write!(line, "; first wrong: {wrong}").expect("writing to a String");
        }
        line
    }

    fn errors_line(&self) -> String {
        let mut line = format!(
            "{} publish, {} consumer, {} stale acks; server: {} retried, {} dead-lettered",
            self.publish_errors,
            self.consumer_errors,
            self.stale_acks,
            self.retried,
            self.dead_lettered
        );
        if let Some(error) = self.first_error.as_ref().or(self.last_error.as_ref()) {
            write!(line, "; first: {error}").expect("writing to a String");
        }
        line
    }
}

/// `1.234 / 5.678 ms`.
fn p50_p99(latency: &LatencyMs) -> String {
    format!("{:.3} / {:.3} ms", latency.p50, latency.p99)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_client::TestClient as _;
    use keel_testkit::server::TestServer;
    use serde_json::Value;

    #[test]
    fn stamped_bodies_carry_each_events_sequence_and_send_time() {
        // Goal: a receiver reads back what the publisher stamped, and the data keeps --size.
        // Method: build a keyed batch, stamp it, parse it as JSON, parse each data's stamp.
        let builder = BodyBuilder::new("run", 64, 3, false, true);
        let sent_us = 0x0123_4567_89ab;
        let body = builder.build_stamped(5, 3).stamp(sent_us);
        let events: Vec<Value> = serde_json::from_slice(&body).unwrap();
        let stamps: Vec<Stamp> = events
            .iter()
            .map(|event| {
                let data = event["data"].as_str().unwrap();
                assert_eq!(data.len(), 64);
                Stamp::parse(data.as_bytes()).unwrap()
            })
            .collect();
        let expected: Vec<Stamp> = (5..8).map(|sequence| Stamp { sequence, sent_us }).collect();
        assert_eq!(stamps, expected);
        assert_eq!(events[0]["id"], "run-5");
        assert_eq!(events[2]["partitionkey"], "key-1");
    }

    #[test]
    fn data_without_a_whole_stamp_is_not_a_stamp() {
        for data in [&b""[..], b"0123", b"000000000000000g0000000000000001"] {
            assert_eq!(Stamp::parse(data), None, "{data:?}");
        }
    }

    #[test]
    fn paced_requests_fall_due_on_a_fixed_schedule() {
        // Goal: request n is due at (its first event) / rate, whatever happened before; flat
        // out has no schedule. Method: a table of (first event, rate, due after).
        let cases = [
            (0, 5000, Some(Duration::ZERO)),
            (100, 5000, Some(Duration::from_millis(20))),
            (5000, 5000, Some(Duration::from_secs(1))),
            (1, 3, Some(Duration::from_nanos(333_333_333))),
            (u64::MAX, 1, Some(Duration::from_nanos(u64::MAX))),
            (100, 0, None),
        ];
        for (first, rate, due) in cases {
            assert_eq!(due_after(first, rate), due, "event {first} at {rate}/s");
        }
    }

    #[test]
    fn receipts_time_first_deliveries_and_count_duplicates_and_strangers() {
        // Goal: latency is arrival minus stamped send time, first deliveries only; repeats
        // and foreign data are counted apart. Method: record a scripted sequence of arrivals.
        let receipts = Receipts::new(100, Clock::start());
        let data = |sequence: u64, sent_us: u64| format!("{sequence:016x}{sent_us:016x}xxxx");
        let arrivals = [
            (Some(data(7, 1_000)), 3_000, Receipt::First),
            (Some(data(7, 1_000)), 9_000, Receipt::Duplicate),
            (Some(data(99, 2_000)), 7_000, Receipt::First),
            (Some(data(100, 2_000)), 7_000, Receipt::Unrecognised),
            (
                Some("not a stamp at all, no".to_owned()),
                7_000,
                Receipt::Unrecognised,
            ),
            (None, 7_000, Receipt::Unrecognised),
        ];
        for (data, received_us, expected) in arrivals {
            let receipt = receipts.record(data.as_deref().map(str::as_bytes), received_us);
            assert_eq!(receipt, expected, "{data:?}");
        }
        assert_eq!(receipts.delivered(), 2);
        assert_eq!(receipts.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(receipts.unrecognised.load(Ordering::Relaxed), 3);
        assert_eq!(receipts.last_received_us.load(Ordering::Relaxed), 7_000);
        let latency = LatencyMs::of(&receipts.latency_us());
        assert!((latency.p50 - 2.0).abs() < 0.01, "{latency:?}");
        assert!((latency.max - 5.0).abs() < 0.01, "{latency:?}");
    }

    #[test]
    fn max_in_flight_defaults_to_room_for_every_pull() {
        // Goal: pull consumers are not starved by the server's default of 100 in flight.
        let cases = [
            (Mode::Pull, 4, 500, None, 2000),
            (Mode::Pull, 64, 1000, None, u64::from(IN_FLIGHT_MAX)),
            (Mode::Pull, 4, 500, Some(10), 10),
            (Mode::Push, 4, 500, None, PUSH_IN_FLIGHT_DEFAULT),
            (Mode::Push, 4, 500, Some(256), 256),
        ];
        for (mode, consumers, pull_max, given, expected) in cases {
            let args = E2eBenchArgs {
                consumers,
                pull_max,
                max_in_flight: given,
                ..small_run(mode)
            };
            assert_eq!(args.max_in_flight(), expected, "{mode:?} {given:?}");
        }
    }

    /// A run of 200 events in batches of 20 that gives up after 10 s.
    fn small_run(mode: Mode) -> E2eBenchArgs {
        E2eBenchArgs {
            mode,
            events: 200,
            rate: 0,
            size: 64,
            partitions: 2,
            keys: 0,
            ordering: DeliveryOrder::None,
            max_in_flight: None,
            consumers: 2,
            pull_max: 50,
            publishers: 2,
            batch: 20,
            sink_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            sink_url: None,
            health_check: false,
            fsync: None,
            drain_timeout: Duration::from_secs(10),
            keep: false,
            backlog: false,
            stateful: false,
            emit: false,
            wait_placed: false,
            pull_via: PullVia::Server,
        }
    }

    #[tokio::test]
    async fn e2e_runs_receive_every_event_and_end_settled_and_cleaned_up() {
        // Goal: in both modes every published event arrives once, the subscription ends with
        // lag 0 and nothing in flight, and the run deletes what it created. Method: real
        // runs against a real server: pull, push, keyed push with ordering and a pace, and
        // both modes delivering a backlog.
        let server = TestServer::start_in_temp_dir().await;
        let client = server.cli_client();
        let keyed_paced_push = E2eBenchArgs {
            keys: 10,
            ordering: DeliveryOrder::Key,
            rate: 2000,
            ..small_run(Mode::Push)
        };
        let backlog = |mode| E2eBenchArgs {
            backlog: true,
            ..small_run(mode)
        };
        for args in [
            small_run(Mode::Pull),
            small_run(Mode::Push),
            keyed_paced_push,
            backlog(Mode::Pull),
            backlog(Mode::Push),
        ] {
            let stopped = Arc::new(AtomicBool::new(false));
            let report = run_e2e(&client, &args, &ProgressBar::hidden(), stopped)
                .await
                .unwrap();
            let counts = (report.published, report.delivered, report.missing);
            assert_eq!(counts, (200, 200, 0), "{report:?}");
            assert_eq!(report.unrecognised, 0, "{report:?}");
            assert!(report.settled, "{report:?}");
            assert_eq!((report.lag_end, report.in_flight_end), (0, 0));
            assert!(report.latency_ms.max > 0.0 && report.events_per_sec > 0.0);
            report.outcome().unwrap();
            for path in [
                ["v1", "subscriptions", &report.subscription],
                ["v1", "topics", &report.topic],
            ] {
                let gone = client
                    .send(Method::GET, &path, &[], None)
                    .await
                    .unwrap_err();
                assert_eq!(gone.status(), Some(StatusCode::NOT_FOUND), "{path:?}");
            }
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn stateful_runs_commit_each_keys_count_and_the_check_catches_a_wrong_one() {
        // Goal: a --stateful --emit run commits a count per key with every ack, and its final
        // check reads every key back: it passes on the run's states and fails when they are
        // not what the published events make them. Method: a kept run against a real server,
        // then the check again as if one more event had been published.
        let server = TestServer::start_in_temp_dir().await;
        let client = server.cli_client();
        let args = E2eBenchArgs {
            keys: 7,
            ordering: DeliveryOrder::Key,
            stateful: true,
            emit: true,
            keep: true,
            ..small_run(Mode::Pull)
        };
        let stopped = Arc::new(AtomicBool::new(false));
        let report = run_e2e(&client, &args, &ProgressBar::hidden(), stopped)
            .await
            .unwrap();
        report.outcome().unwrap();
        assert_eq!((report.delivered, report.state_errors), (200, 0));
        let check = report.state_check.as_ref().expect("checked");
        assert_eq!((check.keys_expected, check.keys_verified), (7, 7));
        assert_eq!(check.emitted, Some(200));
        assert!(report.state_line().starts_with("verified 7 of 7 keys"));
        let emit_topic = format!("{}-emitted", report.topic);
        let sub = report.subscription.as_str();
        let wrong = check_states(&client, sub, 7, 201, Some(&emit_topic));
        let wrong = wrong.await.unwrap();
        assert!(!wrong.passed(200), "{wrong:?}");
        assert_eq!(wrong.keys_verified, 6, "{wrong:?}");
        assert!(wrong.first_wrong.unwrap().starts_with("key key-4: "));
        let names = RunNames {
            topic: report.topic.clone(),
            subscription: report.subscription.clone(),
            id_prefix: String::new(),
            emit_topic: Some(emit_topic),
        };
        delete_run(&client, &names).await.unwrap();
        server.stop().await;
    }

    #[test]
    fn stateful_runs_are_keyed_key_ordered_pull_runs() {
        // Goal: --stateful alone gets keys and key ordering; what cannot be stateful is refused
        // before anything is created. Method: parse command lines as the CLI does.
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            args: E2eBenchArgs,
        }
        let parse = |line: &str| {
            let words = std::iter::once("e2e").chain(line.split_whitespace());
            <Command as clap::Parser>::try_parse_from(words).map(|command| command.args)
        };
        let stateful = parse("--mode pull --stateful").unwrap();
        assert_eq!(
            (stateful.keys, stateful.ordering),
            (1000, DeliveryOrder::Key)
        );
        stateful.check_stateful().unwrap();
        let plain = parse("--mode pull").unwrap();
        assert_eq!((plain.keys, plain.ordering), (0, DeliveryOrder::None));
        for refused in [
            "--mode push --stateful",
            "--mode pull --stateful --keys 0",
            "--mode pull --stateful --ordering none",
        ] {
            let args = parse(refused).unwrap();
            assert!(args.check_stateful().is_err(), "{refused}");
        }
        assert!(
            parse("--mode pull --emit").is_err(),
            "--emit needs --stateful"
        );
    }
}
