//! Crash safety of subscriptions: `kill -9` of the real `keel` binary while it delivers, then a
//! restart on the same data dir.
//!
//! The contract under test (DESIGN.md §3): delivery is at-least-once; a crash may redeliver
//! events that were in flight but never skips one; per key, events reach the handler in log
//! order; dead letters, pending retries and durable acks survive. Push tests use the test kit's
//! scriptable sink on 127.0.0.1; pull tests use the HTTP API. Cycles of the push soak:
//! 5 by default, `KEEL_SOAK_CYCLES=N` for more; `KEEL_TEST_SEED=N` replays a run's random
//! choices (kill times, sink failures), whose seed the randomised tests print.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_testkit::process::{KeelProcess, free_port};
use keel_testkit::random::splitmix64;
use keel_testkit::sink::{Answer, Exchange, Policy, Reply, Request, Response, Sink, policy};
use reqwest::Method;
use serde_json::{Value, json};
use support::{KEEL, publish_until_acknowledged, seed};

/// Keys of the push soak's events.
const SOAK_KEYS: u64 = 20;
/// `max_in_flight` of the push soak's subscription.
const SOAK_IN_FLIGHT_MAX: usize = 64;
/// Events per publish request of the push soak.
const SOAK_PUBLISH_BATCH: u64 = 5;
/// `Retry-After` the sink sends with its 503s in the dead-letter test: a retry's earliest time.
const RETRY_AFTER_S: u64 = 3;
/// How late after its retry time a retried event may reach the sink.
const RETRY_LATENESS_MAX: Duration = Duration::from_secs(3);
/// Clock slack allowed when comparing the sink's time with keel's retry times.
const CLOCK_SLACK: Duration = Duration::from_millis(200);
/// Bytes of a log frame's header (docs/log-format.md); the payload length is at bytes 4..8.
const FRAME_HEADER_BYTES: usize = 24;
/// Events the pull test publishes.
const PULL_EVENTS: usize = 2000;
/// Events per pull request.
const PULL_BATCH: usize = 100;
/// How long a pull consumer takes to handle a batch.
const PULL_BATCH_HANDLING: Duration = Duration::from_millis(15);
/// `max_in_flight` of the pull test's subscription.
const PULL_IN_FLIGHT_MAX: usize = 300;

// ---------------------------------------------------------------------------------------------
// HTTP helpers

/// Sends `body` (JSON) and returns the status and the JSON answer (a string when not JSON).
async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), reqwest::Error> {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, value))
}

/// Sends and asserts the status.
async fn expect(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<&Value>,
    status: u16,
) -> Value {
    let (got, answer) = send(client, method.clone(), url, body).await.unwrap();
    assert_eq!(got, status, "{method} {url} answered {answer}");
    answer
}

async fn create_topic(client: &reqwest::Client, keel: &KeelProcess, topic: &str, partitions: u32) {
    let url = format!("{}/v1/topics/{topic}", keel.url);
    let body = json!({"partitions": partitions});
    expect(client, Method::PUT, &url, Some(&body), 201).await;
}

async fn create_subscription(
    client: &reqwest::Client,
    keel: &KeelProcess,
    name: &str,
    spec: Value,
) {
    let url = format!("{}/v1/subscriptions/{name}", keel.url);
    expect(client, Method::PUT, &url, Some(&spec), 201).await;
}

async fn describe(client: &reqwest::Client, keel: &KeelProcess, name: &str) -> Value {
    let url = format!("{}/v1/subscriptions/{name}", keel.url);
    expect(client, Method::GET, &url, None, 200).await
}

/// Polls describe until `done` holds; panics with the last describe after `limit`.
async fn wait_describe(
    client: &reqwest::Client,
    keel: &KeelProcess,
    name: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let info = describe(client, keel, name).await;
        if done(&info) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} after {limit:?}: {info:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `done` until it holds; panics after `limit`.
async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "no {what} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_drained(info: &Value) -> bool {
    info["lag"] == 0 && info["in_flight"] == 0
}

/// The DLQ entries of a subscription (at most 1000).
async fn dlq_entries(client: &reqwest::Client, keel: &KeelProcess, name: &str) -> Vec<Value> {
    let url = format!("{}/v1/subscriptions/{name}/dlq?limit=1000", keel.url);
    let answer = expect(client, Method::GET, &url, None, 200).await;
    answer["entries"].as_array().unwrap().clone()
}

fn event(id: &str, key: Option<&str>, data: Value) -> Value {
    let mut event = json!({
        "specversion": "1.0", "id": id, "source": "delivery-crash", "type": "t",
        "datacontenttype": "application/json", "data": data,
    });
    if let Some(key) = key {
        event["partitionkey"] = json!(key);
    }
    event
}

// ---------------------------------------------------------------------------------------------
// Randomness and data-dir evidence

fn soak_cycles() -> usize {
    std::env::var("KEEL_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// The newest checkpoint record the data dir holds for `subscription`, read straight from its
/// checkpoint log (frames per docs/log-format.md: a 24-byte header whose bytes 4..8 are the
/// little-endian payload length, then the JSON payload). What is in the file survives a
/// `kill -9` (the page cache outlives the process).
fn newest_checkpoint(data_dir: &Path, subscription: &str) -> Option<Value> {
    let dir = data_dir
        .join("subscriptions")
        .join(subscription)
        .join("checkpoints");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    segments.sort();
    let bytes = std::fs::read(segments.last()?).ok()?;
    let mut position = 0;
    let mut newest = None;
    while position + FRAME_HEADER_BYTES <= bytes.len() {
        let length = u32::from_le_bytes(bytes[position + 4..position + 8].try_into().unwrap());
        let payload = position + FRAME_HEADER_BYTES;
        let end = payload + length as usize;
        if length == 0 || end > bytes.len() {
            break;
        }
        match serde_json::from_slice(&bytes[payload..end]) {
            Ok(checkpoint) => newest = Some(checkpoint),
            Err(_) => break,
        }
        position = end;
    }
    newest
}

/// The failed events a checkpoint keeps with their retry times, over all partitions.
fn checkpointed_retries(checkpoint: &Value) -> usize {
    let lanes = checkpoint["lanes"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    lanes
        .iter()
        .map(|lane| lane["retries"].as_array().map_or(0, Vec::len))
        .sum()
}

// ---------------------------------------------------------------------------------------------
// 1. Push delivery under repeated kill -9

/// An event the soak's publisher got acknowledged.
#[derive(Debug, Clone)]
struct Published {
    /// Its place in the publisher's sequence: publish order.
    sequence: u64,
    key: String,
    partition: u64,
    offset: u64,
}

fn soak_id(sequence: u64) -> String {
    format!("e-{sequence:07}")
}

fn soak_key(sequence: u64) -> String {
    format!("k-{}", sequence % SOAK_KEYS)
}

/// Publishes keyed batches one after the other until `stop`, each retried until acknowledged,
/// and records the acknowledged events in publish order.
async fn publish_continuously(
    url: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Published>>>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut next = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let sequences = next..next + SOAK_PUBLISH_BATCH;
        let events: Vec<Value> = sequences
            .clone()
            .map(|s| event(&soak_id(s), Some(&soak_key(s)), json!({"sequence": s})))
            .collect();
        let results = publish_until_acknowledged(&client, &url, "orders", &events).await;
        let published = sequences.zip(&results).map(|(sequence, result)| {
            assert_eq!(result["id"], soak_id(sequence), "results in input order");
            Published {
                sequence,
                key: soak_key(sequence),
                partition: result["partition"].as_u64().unwrap(),
                offset: result["offset"].as_u64().unwrap(),
            }
        });
        acked.lock().unwrap().extend(published);
        next += SOAK_PUBLISH_BATCH;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Checks the soak's invariants over what was published and what the sink accepted; returns
/// the number of events accepted more than once.
fn check_push_delivery(published: &[Published], accepted: &[Exchange], cycles: usize) -> usize {
    let by_id: HashMap<String, &Published> =
        published.iter().map(|p| (soak_id(p.sequence), p)).collect();
    let mut offsets_by_key: HashMap<&str, (u64, u64)> = HashMap::new();
    for event in published {
        let position = (event.partition, event.offset);
        if let Some(previous) = offsets_by_key.insert(&event.key, position) {
            assert!(
                previous.0 == position.0 && previous.1 < position.1,
                "publish: key {} went from {previous:?} to {position:?}",
                event.key
            );
        }
    }
    let mut times_accepted: HashMap<&str, usize> = HashMap::new();
    let mut last_first_by_key: HashMap<&str, u64> = HashMap::new();
    for answered in accepted {
        let id = answered.request.event_id();
        let event = by_id
            .get(id)
            .unwrap_or_else(|| panic!("the sink accepted {id}, never published"));
        assert_eq!(answered.request.partition_key(), Some(event.key.as_str()));
        let times = times_accepted.entry(id).or_default();
        *times += 1;
        if *times > 1 {
            continue;
        }
        // Per key, the first 2xx of each event comes in publish order.
        if let Some(previous) = last_first_by_key.insert(&event.key, event.sequence) {
            assert!(
                previous < event.sequence,
                "key {}: {id} (sequence {}) first accepted after sequence {previous}",
                event.key,
                event.sequence
            );
        }
    }
    let skipped: Vec<String> = published
        .iter()
        .map(|p| soak_id(p.sequence))
        .filter(|id| !times_accepted.contains_key(id.as_str()))
        .collect();
    assert!(
        skipped.is_empty(),
        "{} acknowledged events were never accepted by the sink: {:?}",
        skipped.len(),
        &skipped[..skipped.len().min(20)]
    );
    let duplicates = times_accepted.values().filter(|times| **times > 1).count();
    let bound = cycles * (SOAK_IN_FLIGHT_MAX + 2 * SOAK_IN_FLIGHT_MAX);
    assert!(
        duplicates <= bound,
        "{duplicates} events accepted more than once, more than {bound} for {cycles} crashes"
    );
    duplicates
}

// Goal: a push subscription survives repeated `kill -9` during delivery without skipping an
// event: every acknowledged published event is accepted (2xx) by the sink at least once;
// events delivered twice stay bounded by what can be in flight or not yet checkpointed per
// crash (≤ cycles × 3 × max_in_flight); per key the first 2xx deliveries come in publish
// order; nothing is dead-lettered. Method: 4 partitions, 20 keys, ordering "key", a sink
// failing ~20 % with 503, a publisher publishing all along (retrying across restarts; dedupe
// makes that safe); keel is killed every 0.5–1.5 s and restarted at once on the same data dir
// and port, then publishing stops and the subscription drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_push_delivery_skips_nothing() {
    let (cycles, seed) = (soak_cycles(), seed("push soak"));
    let sink = Sink::start(policy::fail_share(20, seed)).await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut keel = KEEL.start_on(&data_dir, &listen).await;
    let client = reqwest::Client::new();
    create_topic(&client, &keel, "orders", 4).await;
    let spec = json!({
        "topic": "orders", "sink": {"url": sink.url("/hook")}, "start": "earliest",
        "ordering": "key", "max_in_flight": SOAK_IN_FLIGHT_MAX, "ack_timeout": "2s",
        "retry": {"max_attempts": 100, "initial": "20ms", "max": "200ms"},
        "circuit_breaker": {"failures": 1000, "cool_down": "300ms"},
    });
    create_subscription(&client, &keel, "shipping", spec).await;
    let stop = Arc::new(AtomicBool::new(false));
    let published: Arc<Mutex<Vec<Published>>> = Arc::default();
    let publisher = tokio::spawn(publish_continuously(
        keel.url.clone(),
        stop.clone(),
        published.clone(),
    ));
    let mut random = seed;
    for cycle in 0..cycles {
        random = splitmix64(random);
        let run_ms = 500 + random % 1000;
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        keel.kill9();
        keel = KEEL.start_on(&data_dir, &listen).await;
        eprintln!(
            "cycle {cycle}: killed after {run_ms} ms; {} events acknowledged, {} accepted so far",
            published.lock().unwrap().len(),
            sink.accepted().len()
        );
    }
    stop.store(true, Ordering::SeqCst);
    publisher.await.unwrap();
    let limit = Duration::from_secs(20);
    wait_describe(&client, &keel, "shipping", "drain", limit, is_drained).await;
    let published = published.lock().unwrap().clone();
    let answered = sink.exchanges();
    let failed = answered
        .iter()
        .filter(|a| a.answer == Answer::Status(503))
        .count();
    let duplicates = check_push_delivery(&published, &sink.accepted(), cycles);
    eprintln!(
        "push soak: {cycles} crashes, {} events published, {} requests ({failed} answered 503), \
         {duplicates} events accepted more than once",
        published.len(),
        answered.len()
    );
    assert!(
        published.len() > 100 && failed > 0,
        "the soak ran with load and failures"
    );
    let info = describe(&client, &keel, "shipping").await;
    assert_eq!(info["dlq_depth"], 0, "{info:#}");
    assert!(dlq_entries(&client, &keel, "shipping").await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 2. Dead letters and pending retries across kill -9

fn is_poison(request: &Request) -> bool {
    let data: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    data["poison"] == true
}

/// 400 for poison events (dead-lettered at once); 503 with `Retry-After` for the others.
fn poison_or_unavailable() -> Policy {
    Arc::new(|request| {
        if is_poison(request) {
            Reply::status(400)
        } else {
            let retry_after = RETRY_AFTER_S.to_string();
            Response::new(503)
                .header("retry-after", &retry_after)
                .into()
        }
    })
}

/// Asserts that each normal event failed once before the crash and was delivered once after,
/// with its attempt count kept (attempt 2), not before its retry time and not much later.
fn check_retries_kept(answered: &[Exchange], normal_ids: &[String], killed: Instant) {
    for id in normal_ids {
        let attempts: Vec<&Exchange> = answered
            .iter()
            .filter(|a| a.request.event_id() == id)
            .collect();
        let summary: Vec<(u32, Answer)> = attempts
            .iter()
            .map(|a| (a.request.attempt(), a.answer))
            .collect();
        assert_eq!(
            summary,
            [(1, Answer::Status(503)), (2, Answer::Status(200))],
            "{id}: (attempt, status) seen by the sink"
        );
        let (failed, delivered) = (attempts[0], attempts[1]);
        assert!(
            failed.at < killed && delivered.at > killed,
            "{id}: failed before the kill, delivered after"
        );
        let (waited, retry_after) = (delivered.at - failed.at, Duration::from_secs(RETRY_AFTER_S));
        assert!(
            waited + CLOCK_SLACK >= retry_after,
            "{id}: retried {waited:?} after its failure, before its Retry-After ({retry_after:?})"
        );
        assert!(
            waited <= retry_after + RETRY_LATENESS_MAX + CLOCK_SLACK,
            "{id}: retried {waited:?} after its failure, late for its Retry-After ({retry_after:?})"
        );
    }
}

/// Waits until the sink accepted `count` events, at most [`RETRY_LATENESS_MAX`] past `due`;
/// panics with what the sink saw and what keel describes.
async fn wait_retries_delivered(
    sink: &Sink,
    client: &reqwest::Client,
    keel: &KeelProcess,
    count: usize,
    due: Instant,
) {
    while sink.accepted().len() < count {
        if Instant::now() > due + RETRY_LATENESS_MAX {
            let info = describe(client, keel, "ledger").await;
            let seen: Vec<(String, u32, Answer)> = sink
                .exchanges()
                .iter()
                .map(|a| {
                    (
                        a.request.event_id().to_owned(),
                        a.request.attempt(),
                        a.answer,
                    )
                })
                .collect();
            panic!(
                "the retried events were not delivered within {RETRY_LATENESS_MAX:?} of their \
                 retry time; the sink saw (id, attempt, status) {seen:?}; describe: {info:#}"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// Goal: dead letters and pending retries survive `kill -9`: after the restart the DLQ holds
// exactly the poison events (attempts 1, last_status 400), and each failed normal event is
// retried — neither lost (it is delivered, as attempt 2: its failure was kept) nor early (not
// before the `Retry-After` its failure asked for, measured on the sink's clock). Method: a sink
// answering 400 to poison events and 503 + Retry-After 3 to the others; once the DLQ holds the
// poison events and the checkpoint in the data dir holds the 5 pending retries, kill -9, switch
// the sink to 200 while keel is down, restart before the retries are due, and watch arrivals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_dead_letters_and_pending_retries() {
    let sink = Sink::start(poison_or_unavailable()).await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut keel = KEEL.start_on(&data_dir, &listen).await;
    let client = reqwest::Client::new();
    create_topic(&client, &keel, "payments", 2).await;
    let spec = json!({
        "topic": "payments", "sink": {"url": sink.url("/hook")}, "start": "earliest",
        "ack_timeout": "5s", "retry": {"max_attempts": 3, "initial": "2s", "max": "2s"},
        "circuit_breaker": {"failures": 100, "cool_down": "300ms"},
    });
    create_subscription(&client, &keel, "ledger", spec).await;
    let ids = |kind: &str| (0..5).map(|i| format!("{kind}-{i}")).collect::<Vec<_>>();
    let (poison_ids, normal_ids) = (ids("poison"), ids("normal"));
    let events: Vec<Value> = poison_ids
        .iter()
        .map(|id| event(id, None, json!({"poison": true})))
        .chain(
            normal_ids
                .iter()
                .map(|id| event(id, None, json!({"poison": false}))),
        )
        .collect();
    publish_until_acknowledged(&client, &keel.url, "payments", &events).await;
    let limit = Duration::from_secs(10);
    let failed = |info: &Value| info["dlq_depth"] == 5 && info["retried"].as_u64() >= Some(5);
    wait_describe(&client, &keel, "ledger", "failures", limit, failed).await;
    let durable =
        || newest_checkpoint(&data_dir, "ledger").is_some_and(|c| checkpointed_retries(&c) == 5);
    wait_for("checkpoint holding the 5 retries", limit, durable).await;
    keel.kill9();
    let killed = Instant::now();
    sink.set_policy(policy::always(200));
    keel = KEEL.start_on(&data_dir, &listen).await;
    let restarted = Instant::now();
    let first_failure = sink.exchanges().iter().map(|a| a.at).min().unwrap();
    let due = first_failure + Duration::from_secs(RETRY_AFTER_S);
    assert!(
        restarted < due,
        "keel restarted after the retries were due: this run proves nothing about early retries"
    );
    wait_retries_delivered(&sink, &client, &keel, normal_ids.len(), due).await;
    wait_describe(&client, &keel, "ledger", "drain", limit, is_drained).await;
    check_retries_kept(&sink.exchanges(), &normal_ids, killed);
    let entries = dlq_entries(&client, &keel, "ledger").await;
    let mut dead: Vec<String> = entries
        .iter()
        .map(|entry| {
            assert_eq!(
                (&entry["attempts"], &entry["last_status"]),
                (&json!(1), &json!(400))
            );
            entry["event"]["id"].as_str().unwrap().to_owned()
        })
        .collect();
    dead.sort();
    assert_eq!(dead, poison_ids, "the DLQ after the restart");
    assert_eq!(describe(&client, &keel, "ledger").await["dlq_depth"], 5);
}

// ---------------------------------------------------------------------------------------------
// 3. Pull acks across kill -9

/// What pull consumers saw.
#[derive(Debug, Default, Clone)]
struct Consumed {
    /// Every event id pulled, once per delivery.
    pulled: Vec<String>,
    /// Event ids whose ack call was sent (answered or not).
    ack_sent: HashSet<String>,
    /// Event ids whose ack call answered 200 without naming their ack id stale.
    durably_acked: HashSet<String>,
}

/// How long pull consumers run.
#[derive(Clone)]
enum Until {
    /// Until a request fails (keel was killed); once the flag is set (a kill is coming) they
    /// send no more acks.
    Killed(Arc<AtomicBool>),
    /// Until the subscription is drained.
    Drained,
}

/// Pulls and acks batches until `until`; a failed request is returned as the error.
async fn consume(url: String, log: Arc<Mutex<Consumed>>, until: Until) -> Result<(), String> {
    let client = reqwest::Client::new();
    let subscription = format!("{url}/v1/subscriptions/audit");
    let (pull_url, ack_url) = (
        format!("{subscription}/pull"),
        format!("{subscription}/ack"),
    );
    let pull = json!({"max": PULL_BATCH, "wait": "200ms"});
    loop {
        let answer = send(&client, Method::POST, &pull_url, Some(&pull));
        let (status, body) = answer.await.map_err(|e| e.to_string())?;
        assert_eq!(status, 200, "pull answered {body}");
        let messages = body["messages"].as_array().unwrap();
        if messages.is_empty() {
            let info = send(&client, Method::GET, &subscription, None).await;
            let drained = is_drained(&info.map_err(|e| e.to_string())?.1);
            if matches!(until, Until::Drained) && drained {
                return Ok(());
            }
            continue;
        }
        let mut event_of_ack: HashMap<String, String> = HashMap::new();
        for message in messages {
            let id = message["event"]["id"].as_str().unwrap().to_owned();
            event_of_ack.insert(message["ack_id"].as_str().unwrap().to_owned(), id.clone());
            log.lock().unwrap().pulled.push(id);
        }
        // Handling the batch takes a while, so the kill lands mid-way through the events,
        // sometimes before the ack is sent, sometimes while it is being made durable.
        tokio::time::sleep(PULL_BATCH_HANDLING).await;
        if let Until::Killed(killing) = &until
            && killing.load(Ordering::SeqCst)
        {
            return Err("stopped before acking: keel is being killed".to_owned());
        }
        let sent = event_of_ack.values().cloned();
        log.lock().unwrap().ack_sent.extend(sent);
        let ack = json!({"ack_ids": event_of_ack.keys().collect::<Vec<_>>()});
        let answer = send(&client, Method::POST, &ack_url, Some(&ack));
        let (status, body) = answer.await.map_err(|e| e.to_string())?;
        assert_eq!(status, 200, "ack answered {body}");
        let stale: HashSet<&str> = body["stale"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let confirmed = event_of_ack
            .into_iter()
            .filter(|(ack_id, _)| !stale.contains(ack_id.as_str()));
        log.lock()
            .unwrap()
            .durably_acked
            .extend(confirmed.map(|(_, id)| id));
    }
}

/// Runs two consumers to the end (an error, or the drain); returns their errors.
async fn run_consumers(url: &str, log: &Arc<Mutex<Consumed>>, until: Until) -> Vec<String> {
    let consumers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(consume(url.to_owned(), log.clone(), until.clone())))
        .collect();
    let mut errors = Vec::new();
    for consumer in consumers {
        if let Err(error) = consumer.await.unwrap() {
            errors.push(error);
        }
    }
    errors
}

// Goal: acks of a pull subscription are durable when the ack call answers, across `kill -9`:
// no event is lost (the union of what was pulled before and after the crash is everything
// published); no event whose ack answered 200 before the kill is delivered again; the events
// redelivered are among those in flight at the kill (pulled, ack not confirmed). Method: 2000
// events, two consumers pulling batches of 100 and acking each; keel is killed at a random
// moment past 600–1200 confirmed acks (often while an ack is being made durable), restarted,
// and the consumers go on until the subscription is drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_pull_acks_loses_no_ack() {
    let seed = seed("pull acks");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut keel = KEEL.start_on(&data_dir, &listen).await;
    let client = reqwest::Client::new();
    create_topic(&client, &keel, "audit", 4).await;
    let all: Vec<String> = (0..PULL_EVENTS).map(|i| format!("a-{i:04}")).collect();
    let events: Vec<Value> = (0..)
        .zip(&all)
        .map(|(i, id)| event(id, Some(&format!("k-{}", i % 50)), json!({"n": i})))
        .collect();
    for chunk in events.chunks(200) {
        publish_until_acknowledged(&client, &keel.url, "audit", chunk).await;
    }
    let spec = json!({
        "topic": "audit", "start": "earliest", "max_in_flight": PULL_IN_FLIGHT_MAX,
        "ack_timeout": "30s",
    });
    create_subscription(&client, &keel, "audit", spec).await;
    let (before, killing) = (
        Arc::<Mutex<Consumed>>::default(),
        Arc::new(AtomicBool::new(false)),
    );
    let consumers = {
        let (url, before) = (keel.url.clone(), before.clone());
        let until = Until::Killed(killing.clone());
        tokio::spawn(async move { run_consumers(&url, &before, until).await })
    };
    let threshold = 600 + (splitmix64(seed) % 600) as usize;
    let confirmed = || before.lock().unwrap().durably_acked.len() >= threshold;
    wait_for(
        "confirmed acks before the kill",
        Duration::from_secs(20),
        confirmed,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(splitmix64(seed + 1) % 40)).await;
    killing.store(true, Ordering::SeqCst);
    keel.kill9();
    let errors = consumers.await.unwrap();
    assert_eq!(
        errors.len(),
        2,
        "both consumers stopped at the kill: {errors:?}"
    );
    let before = before.lock().unwrap().clone();
    keel = KEEL.start_on(&data_dir, &listen).await;
    let after: Arc<Mutex<Consumed>> = Arc::default();
    let errors = run_consumers(&keel.url, &after, Until::Drained).await;
    assert!(errors.is_empty(), "consumers after the restart: {errors:?}");
    let after = after.lock().unwrap().clone();
    check_pull_acks(&all, &before, &after);
    let info = describe(&client, &keel, "audit").await;
    assert!(is_drained(&info) && info["dlq_depth"] == 0, "{info:#}");
}

fn check_pull_acks(all: &[String], before: &Consumed, after: &Consumed) {
    let pulled_before: HashSet<&String> = before.pulled.iter().collect();
    let pulled_after: HashSet<&String> = after.pulled.iter().collect();
    let in_flight_at_kill: HashSet<&String> = pulled_before
        .iter()
        .copied()
        .filter(|id| !before.durably_acked.contains(*id))
        .collect();
    assert!(
        before.durably_acked.len() < all.len() && in_flight_at_kill.len() <= PULL_IN_FLIGHT_MAX,
        "the kill came mid-way: {} acked, {} in flight",
        before.durably_acked.len(),
        in_flight_at_kill.len()
    );
    let redelivered = pulled_after.intersection(&pulled_before).count();
    let violations: [(&str, Vec<&String>); 4] = [
        (
            "never delivered",
            all.iter()
                .filter(|id| !pulled_before.contains(id) && !pulled_after.contains(id))
                .collect(),
        ),
        (
            "acked (200) before the kill, delivered again after",
            pulled_after
                .iter()
                .copied()
                .filter(|id| before.durably_acked.contains(*id))
                .collect(),
        ),
        (
            "pulled before the kill without an ack sent, not redelivered after",
            pulled_before
                .iter()
                .copied()
                .filter(|id| !before.ack_sent.contains(*id) && !pulled_after.contains(id))
                .collect(),
        ),
        (
            "done without any ack sent for it",
            all.iter()
                .filter(|id| !before.ack_sent.contains(*id) && !after.durably_acked.contains(*id))
                .collect(),
        ),
    ];
    for (what, ids) in violations {
        assert!(ids.is_empty(), "{} events {what}: {ids:?}", ids.len());
    }
    assert!(
        redelivered <= in_flight_at_kill.len(),
        "{redelivered} redelivered, only {} were in flight at the kill",
        in_flight_at_kill.len()
    );
    let ack_unanswered = in_flight_at_kill
        .iter()
        .filter(|id| before.ack_sent.contains(**id))
        .count();
    eprintln!(
        "pull acks: {} confirmed acks and {} in flight at the kill ({ack_unanswered} with an ack \
         sent but not answered); {redelivered} redelivered",
        before.durably_acked.len(),
        in_flight_at_kill.len()
    );
}
