//! Push delivery against real HTTP sinks that misbehave on purpose: a real server on a real
//! socket pushes to the test kit's scriptable sink, and each test checks what the
//! sink received against what keel reports (describe, dead-letter queue, metrics).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit as _, Mac as _};
use keel_testkit::server::TestServer;
use keel_testkit::sink::policy::{self, Chaos};
use keel_testkit::sink::{Answer, Exchange, Response, Sink};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use support::{BATCH, STRUCTURED, event};

/// How long a condition that should hold soon is waited for.
const SOON: Duration = Duration::from_secs(10);
/// How often describe is polled while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Creates push subscription `name` on `topic` to `sink_url`, from the earliest event, with
/// fast retries; `overrides` replaces top-level members of that spec. Returns the secret keel
/// generated (shown once, at create).
async fn create_push(
    server: &TestServer,
    name: &str,
    topic: &str,
    sink_url: &str,
    overrides: Value,
) -> String {
    let mut spec = json!({
        "topic": topic,
        "sink": {"url": sink_url},
        "start": "earliest",
        "retry": {"initial": "20ms", "max": "200ms"},
    });
    let overrides = overrides.as_object().unwrap().clone();
    spec.as_object_mut().unwrap().extend(overrides);
    let path = format!("/v1/subscriptions/{name}");
    let (status, body) = send_json(server, Method::PUT, &path, &spec).await;
    assert_eq!(status, 201, "{body}");
    body["secret"]
        .as_str()
        .expect("keel generates a secret")
        .to_owned()
}

async fn send_json(server: &TestServer, method: Method, path: &str, body: &Value) -> (u16, Value) {
    let (status, body, _) = server
        .request(method, path, Some("application/json"), body.to_string())
        .await;
    (status, body)
}

async fn describe(server: &TestServer, name: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/subscriptions/{name}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls describe until `done` holds and returns it; panics with `what` and the last
/// describe after `timeout`.
async fn wait_describe(
    server: &TestServer,
    name: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let info = describe(server, name).await;
        if done(&info) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: timed out after {timeout:?} waiting for {what}; last describe: {info}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Every entry of a subscription's dead-letter queue, page by page.
async fn dlq_entries(server: &TestServer, name: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!("/v1/subscriptions/{name}/dlq?limit=100{after}");
        let (status, body) = server.get(&path).await;
        assert_eq!(status, 200, "{body}");
        entries.extend(body["entries"].as_array().unwrap().iter().cloned());
        match body["next_after"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return entries,
        }
    }
}

/// The value of `metric{subscription="<name>"}` on /metrics, if it is there.
async fn subscription_metric(server: &TestServer, metric: &str, name: &str) -> Option<f64> {
    let (status, body, _) = server.request(Method::GET, "/metrics", None, "").await;
    assert_eq!(status, 200);
    let text = body.as_str().expect("metrics are text").to_owned();
    let series = format!("{metric}{{subscription=\"{name}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map(|value| value.trim().parse().unwrap())
}

/// The `v1,` signatures a request carries, and whether each verifies with `secret`.
fn verified_by(secret: &str, exchange: &Exchange) -> Vec<bool> {
    let request = &exchange.request;
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let id = request.header("webhook-id").unwrap();
    let timestamp = request.header("webhook-timestamp").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&request.body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    let signatures = request.header("webhook-signature").unwrap();
    signatures
        .split(' ')
        .map(|signature| signature == expected)
        .collect()
}

/// Checks a request's Standard Webhooks signature with `secret` (`whsec_<base64>`): one of
/// the `v1,` signatures is the base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}`
/// keyed with the secret's decoded bytes.
fn assert_signed(secret: &str, exchange: &Exchange) {
    assert!(
        verified_by(secret, exchange).contains(&true),
        "bad signature on {:?}",
        exchange.request
    );
}

/// Publishes `events` as one batch.
async fn publish_batch(server: &TestServer, topic: &str, events: Vec<Value>) {
    let (status, body) = server
        .publish(topic, BATCH, Value::from(events).to_string())
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Publishes an event per (id, key) pair, with that `partitionkey`, in batches of 500.
async fn publish_keyed(server: &TestServer, topic: &str, published: &[(String, String)]) {
    for chunk in published.chunks(500) {
        let batch = chunk
            .iter()
            .map(|(id, key)| event(id, json!({"partitionkey": key})))
            .collect();
        publish_batch(server, topic, batch).await;
    }
}

/// A server with one topic of `partitions` partitions.
async fn server_with_topic(dir: &tempfile::TempDir, topic: &str, partitions: u32) -> TestServer {
    let server = TestServer::start(dir.path()).await;
    let (status, body) = server
        .put_topic(topic, json!({"partitions": partitions}))
        .await;
    assert_eq!(status, 201, "{body}");
    server
}

fn accepted_ids(requests: &[Exchange]) -> Vec<&str> {
    let accepted = requests.iter().filter(|exchange| exchange.accepted());
    accepted
        .map(|exchange| exchange.request.event_id())
        .collect()
}

// Goal: whatever a sink does (500, 503, 429 with Retry-After, answers later than ack_timeout,
// hang-ups without an answer), every published event is taken by the sink (answered 2xx in
// time) exactly once or sits in the DLQ, never both and never neither; nothing is sent again
// after the sink took it; every request is signed; with ordering "key" each key's events are
// taken in log order. Method: one topic of 4 partitions and two subscriptions (ordering none
// and key), each pushing to its own seeded chaos sink that fails ~40% of requests; 300 events
// over 50 keys, a few of which the sinks always fail; once lag is 0 the sinks' records are
// checked against the DLQs and describe. The seed is printed; KEEL_CHAOS_SEED replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_sink_every_event_acked_once_or_dead_lettered() {
    let seed = std::env::var("KEEL_CHAOS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("chaos seed {seed} (KEEL_CHAOS_SEED={seed} replays the sinks' and keys' choices)");
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_topic(&dir, "orders", 4).await;
    let mut random = fastrand::Rng::with_seed(seed);
    let published: Vec<(String, String)> = (0..300)
        .map(|i| {
            (
                format!("ev-{i:03}"),
                format!("key-{:02}", random.usize(..50)),
            )
        })
        .collect();
    // A few events the sinks always fail, so the dead-letter side is always exercised too.
    let poisoned: BTreeSet<String> = (0..8)
        .map(|_| published[random.usize(..published.len())].0.clone())
        .collect();
    let mut runs = Vec::new();
    for (ordering, sink_seed) in [("none", seed), ("key", seed.wrapping_add(1))] {
        let sink = Sink::start(policy::chaos(Chaos {
            failure_share: 0.4,
            late_by: Duration::from_millis(600),
            seed: sink_seed,
            poisoned: poisoned.iter().cloned().collect(),
        }))
        .await;
        let name = format!("chaos-{ordering}");
        let spec = json!({
            "ordering": ordering,
            "max_in_flight": 32,
            "ack_timeout": "300ms",
            "retry": {"max_attempts": 8, "initial": "20ms", "max": "200ms"},
            // Off: every failed attempt counts, so the poisoned events die at attempt 8.
            "circuit_breaker": {"enabled": false},
        });
        let secret = create_push(&server, &name, "orders", &sink.url("/hook"), spec).await;
        runs.push((ordering, name, sink, secret));
    }
    publish_keyed(&server, "orders", &published).await;
    for (ordering, name, sink, secret) in &runs {
        let done = |info: &Value| info["lag"] == 0 && info["in_flight"] == 0;
        let info = wait_describe(&server, name, "lag 0", Duration::from_secs(40), done).await;
        let run = ChaosRun {
            ordering,
            published: &published,
            poisoned: &poisoned,
            requests: sink.exchanges(),
            dead: dlq_entries(&server, name).await,
        };
        run.check(secret, &info);
    }
    server.stop().await;
}

/// What one chaos subscription did.
struct ChaosRun<'a> {
    ordering: &'a str,
    /// Event ids and keys in publish (so, per key, log) order.
    published: &'a [(String, String)],
    /// Events the sink always failed.
    poisoned: &'a BTreeSet<String>,
    /// What the sink received, in arrival order.
    requests: Vec<Exchange>,
    /// The DLQ's entries.
    dead: Vec<Value>,
}

impl ChaosRun<'_> {
    fn check(&self, secret: &str, info: &Value) {
        let context = format!("ordering {}", self.ordering);
        for request in &self.requests {
            assert_signed(secret, request);
        }
        let failures = |answer: fn(&Answer) -> bool| {
            let requests = self.requests.iter();
            requests.filter(|request| answer(&request.answer)).count()
        };
        assert!(
            failures(|a| matches!(a, Answer::Late(_))) > 0
                && failures(|a| matches!(a, Answer::HungUp)) > 0
                && failures(|a| matches!(a, Answer::Status(429))) > 0,
            "{context}: the chaos sink failed too little to test anything"
        );
        let dead: BTreeSet<&str> = self
            .dead
            .iter()
            .map(|entry| entry["event"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            dead.len(),
            self.dead.len(),
            "{context}: dead-lettered twice"
        );
        let missing: Vec<&String> = self
            .poisoned
            .iter()
            .filter(|id| !dead.contains(id.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{context}: always failed, not dead-lettered: {missing:?}"
        );
        for entry in &self.dead {
            assert_eq!(
                entry["attempts"], 8,
                "{context}: dead before its last attempt: {entry}"
            );
        }
        let accepted_total = self.check_each_event(&context, &dead);
        assert_eq!(
            accepted_total + dead.len(),
            self.published.len(),
            "{context}: taken + dead-lettered != published"
        );
        assert_eq!(info["dlq_depth"], dead.len(), "{context}: {info}");
        assert_eq!(info["delivered"], accepted_total, "{context}: {info}");
        if self.ordering == "key" {
            self.check_key_order(&context, &dead);
        }
    }

    /// Each event was taken once or dead-lettered, its attempts count up, and nothing came
    /// after the sink took it. Returns how many the sink took.
    fn check_each_event(&self, context: &str, dead: &BTreeSet<&str>) -> usize {
        let mut by_id: HashMap<&str, Vec<&Exchange>> = HashMap::new();
        for exchange in &self.requests {
            let id = exchange.request.event_id();
            by_id.entry(id).or_default().push(exchange);
        }
        let mut accepted_total = 0;
        for (id, key) in self.published {
            let seen = by_id.remove(id.as_str()).unwrap_or_default();
            let accepted = seen.iter().filter(|request| request.accepted()).count();
            let attempts: Vec<(u32, Answer)> = seen
                .iter()
                .map(|r| (r.request.attempt(), r.answer))
                .collect();
            let in_dlq = dead.contains(id.as_str());
            assert!(
                (accepted == 1 && !in_dlq) || (accepted == 0 && in_dlq),
                "{context}: {id} taken {accepted} times, in the DLQ: {in_dlq}; attempts {attempts:?}"
            );
            assert!(
                attempts.windows(2).all(|pair| pair[0].0 < pair[1].0),
                "{context}: {id}'s attempt numbers do not count up: {attempts:?}"
            );
            assert!(
                accepted == 0 || seen.last().is_some_and(|request| request.accepted()),
                "{context}: {id} was sent again after the sink took it: {attempts:?}"
            );
            for exchange in &seen {
                assert_eq!(
                    exchange.request.partition_key(),
                    Some(key.as_str()),
                    "{context}"
                );
            }
            accepted_total += accepted;
        }
        let strays: Vec<&str> = by_id.into_keys().collect();
        assert!(
            strays.is_empty(),
            "{context}: requests for unknown events {strays:?}"
        );
        accepted_total
    }

    /// Per key, the events the sink took are the key's events that were not dead-lettered,
    /// in log order.
    fn check_key_order(&self, context: &str, dead: &BTreeSet<&str>) {
        assert_taken_in_key_order(context, self.published, dead, &self.requests);
    }
}

/// Checks that per key, the events the sink took (answered 2xx) are the key's published
/// events (id, key) in publish order, less those `dead`, each once.
fn assert_taken_in_key_order(
    context: &str,
    published: &[(String, String)],
    dead: &BTreeSet<&str>,
    requests: &[Exchange],
) {
    let mut expected: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, key) in published {
        if !dead.contains(id.as_str()) {
            expected.entry(key).or_default().push(id);
        }
    }
    let mut taken: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for exchange in requests.iter().filter(|exchange| exchange.accepted()) {
        let key = exchange.request.partition_key().unwrap();
        taken
            .entry(key)
            .or_default()
            .push(exchange.request.event_id());
    }
    assert!(
        taken == expected,
        "{context}: per key, the events taken are not the key's events in log order, once each"
    );
}

// Goal: a 4xx other than 408, 410 and 429 is the sink refusing the event: it is dead-lettered
// after exactly one attempt with the status and the start of the body on record; redriven once
// the sink accepts, it is delivered as a fresh first attempt and leaves the DLQ. Method: a sink
// answering 400 with a body, one event, the DLQ inspected, then the sink fixed and the DLQ
// redriven.
#[tokio::test]
async fn sink_400_dead_letters_after_one_attempt_and_redrive_delivers_after_fix() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_topic(&dir, "t", 1).await;
    let refuse = Response::new(400).body("amount must be positive");
    let sink = Sink::start(policy::reply(refuse.into())).await;
    let retry = json!({"retry": {"max_attempts": 5, "initial": "20ms", "max": "200ms"}});
    let secret = create_push(&server, "refused", "t", &sink.url("/hook"), retry).await;
    publish_batch(&server, "t", vec![event("r-1", json!({}))]).await;
    let info = wait_describe(&server, "refused", "a dead letter", SOON, |info| {
        info["dlq_depth"] == 1 && info["lag"] == 0
    })
    .await;
    assert_eq!(
        (&info["dead_lettered"], &info["retried"]),
        (&json!(1), &json!(0)),
        "{info}"
    );
    let dead = dlq_entries(&server, "refused").await;
    assert_eq!(dead.len(), 1);
    let entry = &dead[0];
    assert_eq!(entry["event"]["id"], "r-1");
    assert_eq!(
        (&entry["attempts"], &entry["last_status"]),
        (&json!(1), &json!(400)),
        "{entry}"
    );
    let last_error = entry["last_error"].as_str().unwrap();
    assert!(
        last_error.contains("400") && last_error.contains("amount must be positive"),
        "{entry}"
    );
    let requests = sink.exchanges();
    assert_eq!(requests.len(), 1, "one attempt only: {requests:?}");
    assert_eq!(requests[0].request.attempt(), 1);
    sink.set_policy(policy::accept());
    let redrive = json!({"all": true});
    let path = "/v1/subscriptions/refused/dlq/redrive";
    let (status, body) = send_json(&server, Method::POST, path, &redrive).await;
    assert_eq!((status, &body["redriven"]), (200, &json!(1)), "{body}");
    let requests = sink
        .wait_for("the redriven event", SOON, |requests| {
            !accepted_ids(requests).is_empty()
        })
        .await;
    assert_eq!(requests.len(), 2, "{requests:?}");
    let redriven = &requests[1].request;
    assert_eq!((redriven.event_id(), redriven.attempt()), ("r-1", 1));
    assert_signed(&secret, &requests[1]);
    wait_describe(&server, "refused", "the DLQ emptied", SOON, |info| {
        info["dlq_depth"] == 0 && info["lag"] == 0
    })
    .await;
    assert!(dlq_entries(&server, "refused").await.is_empty());
    server.stop().await;
}

/// The members of a subscription's spec in its describe answer, to PUT it back as it is
/// (the sink's secret is `null` there).
fn described_spec(info: &Value) -> Value {
    let members = [
        "topic",
        "filters",
        "sink",
        "start",
        "ordering",
        "max_in_flight",
        "ack_timeout",
        "retry",
        "circuit_breaker",
        "rate_limit",
    ];
    let spec = members
        .into_iter()
        .filter_map(|member| Some((member.to_owned(), info.get(member)?.clone())));
    Value::Object(spec.collect())
}

/// Whether /metrics has a series labelled with endpoint `url`.
async fn has_endpoint_series(server: &TestServer, url: &str) -> bool {
    let (status, body, _) = server.request(Method::GET, "/metrics", None, "").await;
    assert_eq!(status, 200);
    let text = body.as_str().expect("metrics are text");
    text.contains(&format!("endpoint=\"{url}\""))
}

// Goal: updating a push subscription's sink URL and retry settings while events wait for
// retries moves delivery to the new URL keeping the subscription's progress: no event is
// lost, nothing the old sink took is sent again, the dead letters stay, the old sink gets
// nothing after the update's answer, the secret is kept (the new sink's requests verify with
// the secret generated at create), and the old endpoint's metrics go. Re-sending the
// described spec (secret `null`) is an unchanged 200 that rotates nothing. Method: an old
// sink that takes five events and refuses one (400, dead-lettered), then answers 503 to five
// more; the update while those retry; a new sink that accepts.
#[tokio::test]
async fn push_subscription_update_moves_pending_events_to_the_new_url() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_topic(&dir, "t", 2).await;
    let old = Sink::start(std::sync::Arc::new(
        |request: &keel_testkit::sink::Request| {
            let status = if request.event_id() == "poison" {
                400
            } else {
                200
            };
            keel_testkit::sink::Reply::status(status)
        },
    ))
    .await;
    let new = Sink::start(policy::accept()).await;
    let slow_retry = json!({"retry": {"max_attempts": 100, "initial": "20ms", "max": "200ms"}});
    let secret = create_push(&server, "moving", "t", &old.url("/hook"), slow_retry).await;
    let taken: Vec<Value> = (0..5).map(|i| event(&format!("a{i}"), json!({}))).collect();
    publish_batch(
        &server,
        "t",
        [taken, vec![event("poison", json!({}))]].concat(),
    )
    .await;
    wait_describe(
        &server,
        "moving",
        "five taken, one dead letter",
        SOON,
        |info| info["lag"] == 0 && info["dlq_depth"] == 1,
    )
    .await;
    assert!(has_endpoint_series(&server, &old.url("/hook")).await);

    old.set_policy(policy::always(503));
    let pending: BTreeSet<String> = (0..5).map(|i| format!("b{i}")).collect();
    let events = pending.iter().map(|id| event(id, json!({}))).collect();
    publish_batch(&server, "t", events).await;
    old.wait_for(
        "a failed attempt of each pending event",
        SOON,
        |exchanges| {
            let failed = exchanges.iter().filter(|exchange| !exchange.accepted());
            let ids: BTreeSet<String> = failed.map(|e| e.request.event_id().to_owned()).collect();
            ids.is_superset(&pending)
        },
    )
    .await;

    let updated = json!({"topic": "t", "sink": {"url": new.url("/new")}, "start": "earliest",
        "retry": {"max_attempts": 3, "initial": "20ms", "max": "100ms"}});
    let (status, answer) =
        send_json(&server, Method::PUT, "/v1/subscriptions/moving", &updated).await;
    let old_seen = old.exchanges().len();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changed"], json!(["retry", "sink.url"]), "{answer}");
    assert!(
        answer.get("secret").is_none(),
        "an update shows no secret: {answer}"
    );

    let exchanges = new
        .wait_for("every pending event", SOON, |exchanges| {
            accepted_ids(exchanges).len() >= pending.len()
        })
        .await;
    let info = wait_describe(&server, "moving", "lag 0", SOON, |info| info["lag"] == 0).await;
    assert_eq!(info["sink"]["url"], new.url("/new"), "{info}");
    let taken_by_new: BTreeSet<String> = accepted_ids(&exchanges)
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        taken_by_new, pending,
        "only the pending events, none acked before"
    );
    assert_eq!(
        new.exchanges().len(),
        pending.len(),
        "each once: {exchanges:?}"
    );
    for exchange in &exchanges {
        assert_signed(&secret, exchange);
    }
    assert_eq!(
        old.exchanges().len(),
        old_seen,
        "the old URL got nothing after the update"
    );
    let dead = dlq_entries(&server, "moving").await;
    let dead_ids: Vec<&Value> = dead.iter().map(|entry| &entry["event"]["id"]).collect();
    assert_eq!(dead_ids, [&json!("poison")], "the dead letters stay");
    assert!(
        !has_endpoint_series(&server, &old.url("/hook")).await,
        "old endpoint's metrics"
    );
    assert!(has_endpoint_series(&server, &new.url("/new")).await);

    let described = described_spec(&describe(&server, "moving").await);
    assert!(described["sink"]["secret"].is_null(), "{described}");
    let (status, answer) =
        send_json(&server, Method::PUT, "/v1/subscriptions/moving", &described).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.get("changed").is_none(),
        "the described spec changes nothing: {answer}"
    );
    publish_batch(&server, "t", vec![event("c0", json!({}))]).await;
    let exchanges = new
        .wait_for("the next event", SOON, |exchanges| {
            accepted_ids(exchanges).contains(&"c0")
        })
        .await;
    assert_signed(&secret, exchanges.last().unwrap());
    server.stop().await;
}

// Goal: a sink that refuses connections opens the circuit, so keel stops sending: events wait
// without spending their attempts and nothing is dead-lettered, and only rounds of probes go
// out; once the sink is back (on the same port) every event arrives, in order, and the circuit
// closes; the state shows in describe and in /metrics. Method: a sink whose port refuses
// connections, ten events of one key with ordering "key" and max_attempts 5, a breaker opening
// after 3 failed connections with a 300 ms cool-down, ~2 s of observation, then the sink
// listening again.
#[tokio::test]
async fn sink_down_opens_circuit_without_burning_retries_and_resumes_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_topic(&dir, "t", 2).await;
    let sink = Sink::start(policy::accept()).await;
    sink.go_down().await;
    let spec = json!({
        "ordering": "key",
        "retry": {"max_attempts": 5, "initial": "50ms", "max": "200ms"},
        "circuit_breaker": {"connect_failures": 3, "cool_down": "300ms"},
    });
    let secret = create_push(&server, "down", "t", &sink.url("/hook"), spec).await;
    let ids: Vec<String> = (0..10).map(|i| format!("d-{i}")).collect();
    let events = ids
        .iter()
        .map(|id| event(id, json!({"partitionkey": "only"})))
        .collect();
    publish_batch(&server, "t", events).await;
    let watched = Instant::now();
    let mut open_gauge = None;
    while watched.elapsed() < Duration::from_secs(2) {
        let info = describe(&server, "down").await;
        assert_eq!(
            info["dlq_depth"], 0,
            "the outage burned an event's attempts: {info}"
        );
        if open_gauge.is_none() && (info["circuit"] == "open" || info["circuit"] == "half_open") {
            // Describe refreshes the gauges; 1 is open, 2 half-open.
            open_gauge =
                subscription_metric(&server, "keel_subscription_circuit_state", "down").await;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    assert!(
        matches!(open_gauge, Some(1.0 | 2.0)),
        "the circuit never showed open (gauge {open_gauge:?})"
    );
    // The 3 failures that opened it, then rounds of at most 5 failed probes (5 of 10 failing
    // reopen it) after cool-downs of 300 ms, 600 ms and 1.2 s: without the breaker, retries
    // every 50-200 ms would have made more (and dead-lettered the events after 5).
    let info = describe(&server, "down").await;
    let failed_attempts =
        info["retried"].as_u64().unwrap() + info["dead_lettered"].as_u64().unwrap();
    assert!(
        failed_attempts <= 20,
        "keel kept sending while the circuit was open: {info}"
    );
    sink.come_back().await;
    let requests = sink
        .wait_for("all ten events", SOON, |requests| {
            accepted_ids(requests).len() >= 10
        })
        .await;
    assert_eq!(accepted_ids(&requests), ids, "not in log order");
    for request in &requests {
        assert_signed(&secret, request);
    }
    wait_describe(&server, "down", "the circuit closed", SOON, |info| {
        info["circuit"] == "closed" && info["lag"] == 0
    })
    .await;
    let gauge = subscription_metric(&server, "keel_subscription_circuit_state", "down").await;
    assert_eq!(gauge, Some(0.0));
    assert!(dlq_entries(&server, "down").await.is_empty());
    server.stop().await;
}

// Goal: a 410 Gone pauses the subscription with a reason that says so, and a paused
// subscription sends nothing; resumed once the sink accepts, the event is delivered. Method: a
// sink answering 410, one event, ~500 ms of watching the sink stay quiet, then the sink fixed
// and the subscription resumed.
#[tokio::test]
async fn sink_410_pauses_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_topic(&dir, "t", 1).await;
    let gone = Response::new(410).body("this endpoint is retired");
    let sink = Sink::start(policy::reply(gone.into())).await;
    create_push(&server, "gone", "t", &sink.url("/hook"), json!({})).await;
    publish_batch(&server, "t", vec![event("g-1", json!({}))]).await;
    let info = wait_describe(&server, "gone", "paused", SOON, |info| {
        !info["paused"].is_null()
    })
    .await;
    let reason = info["paused"].as_str().unwrap();
    assert!(reason.contains("410"), "{info}");
    // Quiet while paused: nothing to poll for, so watch for a while.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let requests = sink.exchanges();
    assert_eq!(requests.len(), 1, "sent while paused: {requests:?}");
    assert!(!describe(&server, "gone").await["paused"].is_null());
    sink.set_policy(policy::accept());
    let path = "/v1/subscriptions/gone/resume";
    let (status, body) = send_json(&server, Method::POST, path, &json!({})).await;
    assert_eq!((status, &body["paused"]), (200, &Value::Null), "{body}");
    let requests = sink
        .wait_for("the event after resume", SOON, |requests| {
            accepted_ids(requests) == ["g-1"]
        })
        .await;
    assert_eq!(requests.len(), 2, "{requests:?}");
    wait_describe(&server, "gone", "lag 0", SOON, |info| info["lag"] == 0).await;
    server.stop().await;
}

// Goal: keel never follows a redirect: a 307 is a failed attempt that is retried (and in the
// end dead-lettered) while the Location is never requested, and the failure names the
// redirect. Method: a sink answering 307 to another of its own paths; max_attempts 3.
#[tokio::test]
async fn redirect_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_topic(&dir, "t", 1).await;
    let sink = Sink::start(policy::accept()).await;
    let location = sink.url("/elsewhere");
    let moved = Response::new(307).header("location", &location);
    sink.set_policy(policy::reply(moved.into()));
    let retry = json!({"retry": {"max_attempts": 3, "initial": "20ms", "max": "100ms"}});
    create_push(&server, "moved", "t", &sink.url("/hook"), retry).await;
    publish_batch(&server, "t", vec![event("m-1", json!({}))]).await;
    let info = wait_describe(&server, "moved", "a dead letter", SOON, |info| {
        info["dlq_depth"] == 1
    })
    .await;
    let last_error = info["last_error"]["error"].as_str().unwrap();
    assert!(
        last_error.contains("307")
            && last_error.contains("redirect")
            && last_error.contains(&location),
        "{info}"
    );
    let requests = sink.exchanges();
    let seen: Vec<(&str, u32)> = requests
        .iter()
        .map(|r| (r.request.path(), r.request.attempt()))
        .collect();
    assert_eq!(
        seen,
        [("/hook", 1), ("/hook", 2), ("/hook", 3)],
        "retried, never followed"
    );
    let dead = dlq_entries(&server, "moved").await;
    assert_eq!(
        (&dead[0]["attempts"], &dead[0]["last_status"]),
        (&json!(3), &json!(307))
    );
    server.stop().await;
}

// Goal: with `[webhooks] egress = "strict"`, creating a push subscription to a loopback sink
// answers 400 with a problem naming the address, the range and the setting, nothing is stored,
// and the sink never sees a connection. Method: a real sink on 127.0.0.1 counting connections.
#[tokio::test]
async fn strict_egress_refuses_a_loopback_sink_with_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = keel_server::ServerConfig {
        data_dir: dir.path().to_owned(),
        webhooks: keel_server::WebhooksSettings {
            egress: keel_engine::egress::EgressPolicy::Strict,
            ..keel_server::WebhooksSettings::default()
        },
        ..keel_server::ServerConfig::default()
    };
    let server = TestServer::start_with(config).await;
    let (status, body) = server.put_topic("t", json!({"partitions": 1})).await;
    assert_eq!(status, 201, "{body}");
    let sink = Sink::start(policy::accept()).await;
    let spec = json!({"topic": "t", "sink": {"url": sink.url("/hook")}});
    let (status, problem) = send_json(&server, Method::PUT, "/v1/subscriptions/s", &spec).await;
    support::assert_problem(
        status,
        &problem,
        400,
        "sink.url: sink address 127.0.0.1 is loopback, denied by the strict egress policy; \
         set webhooks.egress (--webhook-egress) to \"standard\" to allow it",
        "create",
    );
    let (status, _) = send_json(&server, Method::GET, "/v1/subscriptions/s", &json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(sink.connections(), 0);
    server.stop().await;
}

// Goal: rotating a push subscription's secret with an overlap answers the new secret once;
// during the overlap each request carries two signatures, the new secret's then the old's,
// also after a restart (the rotation is stored with the spec); once the overlap ends only the
// new one signs. Describe never shows either secret, only the overlap's end. Method: rotate
// with a 3 s overlap, push, restart, push, wait past the overlap, push; verify every signature
// with an independent HMAC.
#[tokio::test]
async fn rotated_secret_signs_beside_the_old_one_during_the_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_topic(&dir, "t", 1).await;
    let sink = Sink::start(policy::accept()).await;
    let old = create_push(&server, "hooks", "t", &sink.url("/hook"), json!({})).await;
    let path = "/v1/subscriptions/hooks/secret/rotate";
    let (status, rotated) = send_json(&server, Method::POST, path, &json!({"overlap": "3s"})).await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    let until = rotated["previous_secret_until"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new, old);
    let described = describe(&server, "hooks").await;
    assert_eq!(
        described["sink"]["previous_secret"],
        json!({"secret": null, "until": until})
    );
    let text = described.to_string();
    assert!(!text.contains(&old) && !text.contains(&new), "{text}");

    publish_batch(&server, "t", vec![event("r-1", json!({}))]).await;
    let server = TestServer::start(&server.stop().await).await;
    publish_batch(&server, "t", vec![event("r-2", json!({}))]).await;
    let during = sink
        .wait_for("two deliveries", SOON, |exchanges| exchanges.len() >= 2)
        .await;
    for exchange in &during {
        assert_eq!(verified_by(&new, exchange), [true, false], "new first");
        assert_eq!(verified_by(&old, exchange), [false, true], "old second");
    }

    let until_ms = keel_engine::clock::parse_rfc3339_ms(&until).unwrap();
    let wait_ms = (until_ms - keel_engine::clock::now_ms()).max(0) as u64 + 50;
    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    publish_batch(&server, "t", vec![event("r-3", json!({}))]).await;
    // By its id, not its place: an event delivered before the restart may come again after
    // it (at least once), and such a repeat was signed during the overlap.
    let is_third =
        |exchange: &&keel_testkit::sink::Exchange| exchange.request.header("ce-id") == Some("r-3");
    let after = sink
        .wait_for("the third event", SOON, |exchanges| {
            exchanges.iter().any(|exchange| is_third(&exchange))
        })
        .await;
    let third = after.iter().find(is_third).unwrap();
    assert_eq!(verified_by(&new, third), [true]);
    assert_eq!(verified_by(&old, third), [false]);
    assert_eq!(
        describe(&server, "hooks").await["sink"]["previous_secret"],
        Value::Null
    );

    let bad = send_json(&server, Method::POST, path, &json!({"overlap": "31d"})).await;
    support::assert_problem(
        bad.0,
        &bad.1,
        400,
        "overlap must be at most 30d",
        "long overlap",
    );
    server.stop().await;
}

/// A sink answering the validation handshake (`OPTIONS`) with `handshake`, and 200 to the rest.
fn handshaking_sink_policy(handshake: Response) -> keel_testkit::sink::policy::Policy {
    std::sync::Arc::new(move |request: &keel_testkit::sink::Request| {
        if request.method() == "OPTIONS" {
            handshake.clone().into()
        } else {
            keel_testkit::sink::Reply::status(200)
        }
    })
}

// Goal: with `sink.handshake`, no event reaches a sink before it passes the CloudEvents
// validation handshake: a sink that answers `WebHook-Allowed-Origin` with keel's origin gets
// the OPTIONS request (with `WebHook-Request-Origin`) first, then the event with `Origin`;
// one that refuses (405, or 200 without the header) gets OPTIONS requests only, describe says
// why, and nothing is dead-lettered. Method: three real sinks, keel's origin `keel.test`.
#[tokio::test]
async fn validation_handshake_comes_before_any_event() {
    let dir = tempfile::tempdir().unwrap();
    let config = keel_server::ServerConfig {
        data_dir: dir.path().to_owned(),
        webhooks: keel_server::WebhooksSettings {
            origin: Some("keel.test".to_owned()),
            ..keel_server::WebhooksSettings::default()
        },
        ..keel_server::ServerConfig::default()
    };
    let server = TestServer::start_with(config).await;
    let (status, body) = server.put_topic("t", json!({"partitions": 1})).await;
    assert_eq!(status, 201, "{body}");
    let allowing = Response::new(200).header("WebHook-Allowed-Origin", "keel.test");
    let agreeing = Sink::start(handshaking_sink_policy(allowing)).await;
    let refusing = Sink::start(handshaking_sink_policy(Response::new(405))).await;
    let silent = Sink::start(handshaking_sink_policy(Response::new(200))).await;
    for (name, sink) in [
        ("agreeing", &agreeing),
        ("refusing", &refusing),
        ("silent", &silent),
    ] {
        let sink_spec = json!({"sink": {"url": sink.url("/hook"), "handshake": true}});
        create_push(&server, name, "t", &sink.url("/hook"), sink_spec).await;
    }
    publish_batch(&server, "t", vec![event("h-1", json!({}))]).await;

    let seen = agreeing
        .wait_for("the handshake, then the event", SOON, |exchanges| {
            exchanges.len() >= 2
        })
        .await;
    assert_eq!(seen[0].request.method(), "OPTIONS");
    assert_eq!(
        seen[0].request.header("webhook-request-origin"),
        Some("keel.test")
    );
    assert_eq!(seen[1].request.method(), "POST");
    assert_eq!(seen[1].request.header("origin"), Some("keel.test"));
    let info = wait_describe(&server, "agreeing", "delivered", SOON, |info| {
        info["delivered"] == 1
    })
    .await;
    assert!(
        info["handshake"]
            .as_str()
            .unwrap()
            .starts_with("passed at "),
        "{info}"
    );

    for (name, sink, why) in [
        (
            "refusing",
            &refusing,
            "answered 405 Method Not Allowed without WebHook-Allowed-Origin",
        ),
        (
            "silent",
            &silent,
            "answered 200 OK without WebHook-Allowed-Origin",
        ),
    ] {
        let info = wait_describe(&server, name, "the refusal", SOON, |info| {
            info["handshake"]
                .as_str()
                .is_some_and(|status| status.contains(why))
        })
        .await;
        let status = info["handshake"].as_str().unwrap();
        assert!(
            status.starts_with("no event is delivered until the sink agrees: "),
            "{info}"
        );
        assert_eq!(
            (&info["delivered"], &info["dlq_depth"]),
            (&json!(0), &json!(0)),
            "{info}"
        );
        let methods: Vec<String> = sink
            .exchanges()
            .iter()
            .map(|exchange| exchange.request.method().to_owned())
            .collect();
        assert!(
            !methods.is_empty() && methods.iter().all(|m| m == "OPTIONS"),
            "{methods:?}"
        );
    }
    server.stop().await;
}

// Goal: a pushed request is the event in CloudEvents binary mode: attributes and extensions as
// ce-* headers (strings percent-encoded), the data as the body with its content type, and a
// Standard Webhooks signature whose id is the event id. Method: one event with a subject (with
// a space), an extension and JSON data, and the one request the sink receives.
#[tokio::test]
async fn binary_mode_request_carries_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_topic(&dir, "t", 1).await;
    let sink = Sink::start(policy::accept()).await;
    let secret = create_push(&server, "binary", "t", &sink.url("/hook"), json!({})).await;
    let payment = json!({
        "specversion": "1.0", "id": "pay-1", "source": "/billing", "type": "payment.made",
        "subject": "invoice 7", "tenant": "acme", "data": {"amount": 42},
    });
    let (status, body) = server.publish("t", STRUCTURED, payment.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let requests = sink
        .wait_for("the event", SOON, |requests| !requests.is_empty())
        .await;
    let exchange = &requests[0];
    let request = &exchange.request;
    assert_eq!((request.method(), request.path()), ("POST", "/hook"));
    for (name, value) in [
        ("ce-id", "pay-1"),
        ("ce-source", "/billing"),
        ("ce-type", "payment.made"),
        ("ce-specversion", "1.0"),
        ("ce-subject", "invoice%207"),
        ("ce-tenant", "acme"),
        ("content-type", "application/json"),
        ("webhook-id", "pay-1"),
        ("keel-attempt", "1"),
    ] {
        assert_eq!(request.header(name), Some(value), "{name} in {request:?}");
    }
    for absent in ["ce-data", "ce-datacontenttype", "ce-data_base64"] {
        assert_eq!(request.header(absent), None, "{absent} in {request:?}");
    }
    let data: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(data, json!({"amount": 42}));
    assert_signed(&secret, exchange);
    let timestamp_s: u64 = request
        .header("webhook-timestamp")
        .unwrap()
        .parse()
        .unwrap();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now_s.abs_diff(timestamp_s) <= 60,
        "webhook-timestamp {timestamp_s}, now {now_s}"
    );
    server.stop().await;
}

// Goal: rate_limit paces pushes: 30 events at 20/s reach the sink over more than a second, not
// all at once, and not much slower than the rate. Method: 30 events published at once to a
// subscription created just before (so its token bucket holds about one token).
#[tokio::test]
async fn rate_limit_paces_push() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_topic(&dir, "t", 2).await;
    let sink = Sink::start(policy::accept()).await;
    create_push(
        &server,
        "paced",
        "t",
        &sink.url("/hook"),
        json!({"rate_limit": 20}),
    )
    .await;
    let events = (0..30)
        .map(|i| event(&format!("p-{i}"), json!({})))
        .collect();
    publish_batch(&server, "t", events).await;
    let requests = sink
        .wait_for("all 30 events", SOON, |requests| {
            accepted_ids(requests).len() >= 30
        })
        .await;
    assert_eq!(requests.len(), 30, "{requests:?}");
    let span = requests[29].at - requests[0].at;
    assert!(
        span >= Duration::from_millis(1000) && span < Duration::from_millis(3000),
        "30 events at 20/s arrived over {span:?}"
    );
    server.stop().await;
}

/// The key's state a stateful push carries: `keel-state` (base64 JSON) when present, checked
/// against `keel-state-signature` (Standard Webhooks' scheme over the header's text).
fn pushed_state(secret: &str, request: &keel_testkit::sink::Request) -> (Value, u64) {
    let version = request
        .header("keel-state-version")
        .expect("keel-state-version");
    let Some(encoded) = request.header("keel-state") else {
        return (Value::Null, version.parse().unwrap());
    };
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let id = request.header("webhook-id").unwrap();
    let timestamp = request.header("webhook-timestamp").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{encoded}").as_bytes());
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    assert_eq!(
        request.header("keel-state-signature"),
        Some(expected.as_str())
    );
    let state = serde_json::from_slice(&BASE64.decode(encoded).unwrap()).unwrap();
    (state, version.parse().unwrap())
}

// Goal: a stateful push carries the key's state (signed) and commits the state and events
// the sink's 2xx answer carries; an answer that is not a commit counts as a failed attempt
// and is retried, never applied. Method: a sink that keeps a running total per key in keel's
// state and emits a receipt, answering garbage to every event's first attempt.
#[tokio::test]
async fn stateful_push_commits_the_sinks_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_topic(&dir, "orders", 2).await;
    let (status, body) = server.put_topic("receipts", json!({"partitions": 1})).await;
    assert_eq!(status, 201, "{body}");
    let secret = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = secret.clone();
    let sink = Sink::start(std::sync::Arc::new(move |request: &keel_testkit::sink::Request| {
        if request.attempt() == 1 {
            return Response::new(200).body("not a commit").into();
        }
        let (state, _) = pushed_state(&seen.lock().unwrap(), request);
        let data: Value = serde_json::from_slice(&request.body).unwrap();
        let total = state["total"].as_i64().unwrap_or(0) + data["n"].as_i64().unwrap();
        let receipt = json!({"specversion": "1.0", "source": "sink", "type": "receipt",
            "data": {"for": request.event_id()}});
        let answer = json!({"state": {"total": total}, "emit": [{"topic": "receipts", "event": receipt}]});
        Response::new(200)
            .header("content-type", "application/json")
            .body(answer.to_string())
            .into()
    }))
    .await;
    let generated = create_push(
        &server,
        "totals",
        "orders",
        &sink.url("/hook"),
        json!({"stateful": true, "ordering": "key"}),
    )
    .await;
    *secret.lock().unwrap() = generated.clone();
    let events: Vec<Value> = (0..6)
        .map(|n| {
            let key = if n % 2 == 0 { "even" } else { "odd" };
            json!({"specversion": "1.0", "id": format!("e{n}"), "source": "t", "type": "t",
                "partitionkey": key, "data": {"n": n}})
        })
        .collect();
    publish_batch(&server, "orders", events).await;
    wait_describe(&server, "totals", "all six committed", SOON, |info| {
        info["lag"] == 0 && info["in_flight"] == 0
    })
    .await;
    for (key, total, version) in [("even", 6, 3), ("odd", 9, 3)] {
        let (status, state) = server
            .get(&format!("/v1/subscriptions/totals/state/{key}"))
            .await;
        assert_eq!(status, 200, "{state}");
        assert_eq!(
            (state["state"]["total"].as_i64(), state["version"].as_u64()),
            (Some(total), Some(version)),
            "{state}"
        );
    }
    // Each event: a garbage answer (not applied, retried), then one commit; one receipt each.
    let accepted = sink.accepted();
    assert_eq!(accepted.len(), 12, "two attempts per event");
    let (_, read) = server.read("receipts", 0, "from=0&max=100").await;
    assert_eq!(read["records"].as_array().unwrap().len(), 6, "{read}");
    // The state a push carries is the one the previous commit left, version by version.
    let mut versions: Vec<u64> = accepted
        .iter()
        .filter(|exchange| {
            exchange.request.attempt() == 2 && exchange.request.partition_key() == Some("odd")
        })
        .map(|exchange| pushed_state(&generated, &exchange.request).1)
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, [0, 1, 2]);
}

/// Keys the backlogs of [`flaky_sink_keeps_flowing_under_the_default_breaker`] are spread
/// over.
const BACKLOG_KEYS: usize = 100;

/// How one keyed backlog went through a sink.
struct BacklogRun {
    /// From the subscription's creation to lag 0.
    elapsed: Duration,
    /// How long describe showed the circuit open or half-open (polled every 20 ms).
    open: Duration,
    /// What the sink received.
    requests: Vec<Exchange>,
    /// Describe once the backlog was delivered.
    info: Value,
}

/// Publishes a keyed backlog (`events` over [`BACKLOG_KEYS`] keys) to a fresh server, then
/// creates a push subscription from the earliest event to a sink answering by `sink_policy`,
/// with key ordering, 64 in flight, the default circuit breaker and `retry`, and waits until
/// it is all delivered. Returns the published (id, key) pairs and the run.
async fn deliver_keyed_backlog(
    sink_policy: policy::Policy,
    events: usize,
    retry: Value,
    circuit_breaker: Value,
) -> (Vec<(String, String)>, BacklogRun) {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_topic(&dir, "backlog", 4).await;
    let published: Vec<(String, String)> = (0..events)
        .map(|i| (format!("b-{i:05}"), format!("key-{:03}", i % BACKLOG_KEYS)))
        .collect();
    publish_keyed(&server, "backlog", &published).await;
    let sink = Sink::start(sink_policy).await;
    let spec = json!({"ordering": "key", "max_in_flight": 64, "retry": retry,
        "circuit_breaker": circuit_breaker});
    let started = Instant::now();
    create_push(&server, "backlog", "backlog", &sink.url("/hook"), spec).await;
    let mut open = Duration::ZERO;
    let mut polled = Instant::now();
    let info = loop {
        let info = describe(&server, "backlog").await;
        let now = Instant::now();
        if info["circuit"] != "closed" {
            open += now - polled;
        }
        polled = now;
        if info["lag"] == 0 && info["in_flight"] == 0 {
            break info;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the backlog was not delivered within 120 s: {info}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    let run = BacklogRun {
        elapsed: started.elapsed(),
        open,
        requests: sink.exchanges(),
        info,
    };
    server.stop().await;
    let context = format!("{} events, retry {retry}", published.len());
    assert_eq!(run.info["dlq_depth"], 0, "{context}: {}", run.info);
    assert_eq!(run.info["delivered"], published.len(), "{context}");
    assert_taken_in_key_order(&context, &published, &BTreeSet::new(), &run.requests);
    (published, run)
}

// Goal (keel issue 11, the flaky-sink fault test): a sink that fails a third of its requests
// at random keeps flowing under the default circuit breaker: every event of a keyed backlog
// is delivered once, per key in log order, none is dead-lettered, the circuit is open for at
// most a moment, and with fast retries the backlog's throughput is at least 0.6 of the same
// flaky run's without a breaker (the breaker costs next to nothing), and at least 0.15 of a
// healthy sink's (the success share alone gives 0.67, the retries' waits take more; measured
// 0.24-0.71 on a loaded 2-core machine). Method: 5,000 events over 100 keys (ordering "key",
// 64 in flight, retries after 20-200 ms, so that a failed event holds its key back only
// briefly) through a healthy sink, the seeded sink answering 503 to a third of requests
// without a breaker, with the default one, without again, then the healthy sink again (the
// machine's noise hits both sides); then 1,000 events with retries from 1 s (the default start; capped at 2 s so
// that the run stays short), which leaves few deliveries in flight while keys wait: that is
// where the old breaker (open after 5 failures in a row, for 10 s, closed by any success)
// stayed open. Run once against the old breaker, this test failed: the first part passed
// (0.88; an in-flight success closed the circuit at once), the second took 23 s with the
// circuit open 10 s (this breaker: 12 s, never open); with the default retry policy uncapped,
// its circuit was open 150 s of the 211 s a 5,000-event backlog took.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flaky_sink_keeps_flowing_under_the_default_breaker() {
    let seed = keel_testkit::random::seed("flaky_sink_keeps_flowing_under_the_default_breaker");
    let fast = json!({"max_attempts": 30, "initial": "20ms", "max": "200ms"});
    // Healthy, flaky, healthy: a change in the machine's load hits both sides alike.
    let (default, off) = (json!({}), json!({"enabled": false}));
    let run = |policy, breaker: &Value| {
        deliver_keyed_backlog(policy, 5000, fast.clone(), breaker.clone())
    };
    let (_, before) = run(policy::accept(), &default).await;
    let (_, unguarded_before) = run(policy::fail_share(33, seed), &off).await;
    let (_, flaky) = run(policy::fail_share(33, seed), &default).await;
    let (_, unguarded_after) = run(policy::fail_share(33, seed), &off).await;
    let (_, after) = run(policy::accept(), &default).await;
    let healthy = (before.elapsed + after.elapsed) / 2;
    let unguarded = (unguarded_before.elapsed + unguarded_after.elapsed) / 2;
    let slow = json!({"max_attempts": 30, "initial": "1s", "max": "2s"});
    let flaky_seed = seed.wrapping_add(1);
    let (_, slow) =
        deliver_keyed_backlog(policy::fail_share(33, flaky_seed), 1000, slow, default).await;
    let failed = flaky.requests.iter().filter(|e| !e.accepted()).count();
    let ratio = healthy.as_secs_f64() / flaky.elapsed.as_secs_f64();
    let against_unguarded = unguarded.as_secs_f64() / flaky.elapsed.as_secs_f64();
    eprintln!(
        "healthy (mean of 2): {healthy:?}; flaky without a breaker (mean of 2): {unguarded:?}; \
         flaky: {:?} ({failed} of {} requests failed), circuit open {:?}; flaky throughput \
         {ratio:.2} x healthy, {against_unguarded:.2} x without a breaker; with default \
         retries: {:?}, circuit open {:?}",
        flaky.elapsed,
        flaky.requests.len(),
        flaky.open,
        slow.elapsed,
        slow.open
    );
    assert!(
        failed * 4 > flaky.requests.len(),
        "the sink failed too few requests to test anything"
    );
    for (run, retries) in [(&flaky, "fast"), (&slow, "default")] {
        assert!(
            run.open < Duration::from_secs(1),
            "with {retries} retries the circuit stayed open {:?} for a sink that mostly works: {}",
            run.open,
            run.info["sink_health"]
        );
    }
    // What the breaker costs is the flaky run against the same run without a breaker (the
    // retries' waits bound both alike); against a healthy sink the bound is loose, as the
    // retries' waits and the machine's load move it (measured 0.24-0.71).
    assert!(
        against_unguarded >= 0.6,
        "with the breaker a sink failing a third of requests took {:?}, without {unguarded:?}",
        flaky.elapsed
    );
    assert!(
        ratio >= 0.15,
        "a sink failing a third of requests took {:?}, healthy {healthy:?}: {ratio:.2} x",
        flaky.elapsed
    );
}

/// Parses a duration as keel writes it ("12ms", "3s").
fn duration_of(value: &Value) -> Duration {
    keel_api::duration::parse(value.as_str().expect("a duration")).expect("a valid duration")
}

// Goal (keel issue 11, the dead-sink fault test): with the default breaker, a sink that is
// down (its port refuses connections) is detected within 3 s and burns no attempts: with
// max_attempts 1 any counted failure would dead-letter its event at once, and none is; once
// the sink is back every event is delivered, per key in order, and describe and /metrics show
// one outage with its time to detect and to recover. Method: a closed port, 40 events over 8
// keys with ordering "key" published to it, the circuit watched for 3 s, then the sink
// listening again.
#[tokio::test]
async fn dead_sink_is_detected_at_once_and_burns_no_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_topic(&dir, "t", 2).await;
    let sink = Sink::start(policy::accept()).await;
    sink.go_down().await;
    let spec = json!({"ordering": "key", "retry": {"max_attempts": 1}});
    create_push(&server, "dead", "t", &sink.url("/hook"), spec).await;
    let published: Vec<(String, String)> = (0..40)
        .map(|i| (format!("x-{i:02}"), format!("key-{}", i % 8)))
        .collect();
    let sent = Instant::now();
    publish_keyed(&server, "t", &published).await;
    let open = |info: &Value| info["circuit"] == "open";
    wait_describe(
        &server,
        "dead",
        "the circuit open",
        Duration::from_secs(3),
        open,
    )
    .await;
    let detected_in = sent.elapsed();
    while sent.elapsed() < Duration::from_secs(3) {
        let info = describe(&server, "dead").await;
        assert_eq!(info["dlq_depth"], 0, "the outage spent attempts: {info}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    sink.come_back().await;
    // The first probes go after the default cool-down of 5 s.
    let info = wait_describe(&server, "dead", "all delivered", SOON, |info| {
        info["lag"] == 0 && info["circuit"] == "closed"
    })
    .await;
    assert_eq!(
        (&info["dead_lettered"], &info["dlq_depth"]),
        (&json!(0), &json!(0)),
        "{info}"
    );
    let requests = sink.exchanges();
    assert_taken_in_key_order("dead sink", &published, &BTreeSet::new(), &requests);
    let health = &info["sink_health"];
    assert_eq!(health["outages"], 1, "{info}");
    let outage = &health["last_outage"];
    let time_to_detect = duration_of(&outage["time_to_detect"]);
    assert!(
        time_to_detect < Duration::from_secs(3),
        "time to detect {time_to_detect:?} ({detected_in:?} seen from outside): {info}"
    );
    let time_to_recover = duration_of(&outage["time_to_recover"]);
    assert!(
        time_to_recover >= Duration::from_secs(3) && time_to_recover < SOON,
        "time to recover {time_to_recover:?}: {info}"
    );
    assert_eq!(duration_of(&health["mttr"]), time_to_recover, "{info}");
    assert!(health["availability"].as_f64().unwrap() < 1.0, "{info}");
    let outages =
        subscription_metric(&server, "keel_subscription_sink_outages_total", "dead").await;
    assert_eq!(outages, Some(1.0));
    let mttr = subscription_metric(&server, "keel_subscription_sink_mttr_seconds", "dead").await;
    assert_eq!(mttr, Some(time_to_recover.as_secs_f64()));
    // The opening and the closing are notices on `_keel.alerts`, in that order.
    let types = notices_about(&server, "dead", 2).await;
    assert_eq!(types, ["keel.circuit.opened", "keel.circuit.closed"]);
    eprintln!(
        "dead sink: detected in {time_to_detect:?} ({detected_in:?} from publish), recovered in {time_to_recover:?}"
    );
    server.stop().await;
}

/// The types of the notices on `_keel.alerts` about `subject`, in order, once there are at
/// least `count` (or whatever there is after `SOON`).
async fn notices_about(server: &TestServer, subject: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + SOON;
    loop {
        let (_, read) = server.read("_keel.alerts", 0, "from=0&max=1000").await;
        let types: Vec<String> = read["records"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|record| record["event"]["subject"] == subject)
            .map(|record| record["event"]["type"].as_str().unwrap_or("").to_owned())
            .collect();
        if types.len() >= count || Instant::now() > deadline {
            return types;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The notices' types without the endpoints' (which race with the others).
fn without_endpoints(types: &[String]) -> Vec<&str> {
    types
        .iter()
        .map(String::as_str)
        .filter(|kind| !kind.starts_with("keel.endpoint."))
        .collect()
}

// Goal: a sink failing longer than `pause_after` pauses its subscription with a notice and
// spends no attempts meanwhile; once the sink is back, its health check (passing twice after
// the pause) resumes it by itself with a notice, and delivery starts at once, not at the end
// of the circuit's long cool-down; every event arrives, none dead-lettered. The endpoint's own
// recovery figures show the outage. A pause by an operator is not lifted by health checks.
// Method: a closed port, pause_after 2s, health checks every 100 ms, a 1 min cool-down.
#[tokio::test]
async fn failing_sink_is_paused_and_resumed_by_its_health_check() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_topic(&dir, "t", 1).await;
    let sink = Sink::start(policy::accept()).await;
    sink.go_down().await;
    let mut spec = json!({
        "url": sink.url("/hook"),
        "pause_after": "2s",
        "health_check": {"path": "/healthz", "interval": "100ms", "timeout": "100ms"},
    });
    let overrides = json!({
        "sink": spec.take(),
        "retry": {"max_attempts": 1},
        "circuit_breaker": {"cool_down": "1m", "cool_down_max": "1m"},
    });
    create_push(&server, "auto", "t", "", overrides).await;
    let events: Vec<Value> = (0..20)
        .map(|i| event(&format!("a-{i:02}"), json!({})))
        .collect();
    let failing = Instant::now();
    publish_batch(&server, "t", events).await;
    let info = wait_describe(&server, "auto", "paused by keel", SOON, |info| {
        !info["paused"].is_null()
    })
    .await;
    let paused_in = failing.elapsed();
    let reason = info["paused"].as_str().unwrap();
    assert!(
        reason.contains("keel paused it") && reason.contains("pause_after is 2s"),
        "{info}"
    );
    assert!(
        paused_in >= Duration::from_secs(2),
        "paused in {paused_in:?}"
    );
    assert_eq!(info["dlq_depth"], 0, "the outage spent attempts: {info}");
    let endpoint = &info["endpoints"][0];
    assert_eq!(endpoint["available"], false, "{info}");
    assert_eq!(endpoint["health"]["outages"], 1, "{info}");
    let types = notices_about(&server, "auto", 3).await;
    assert_eq!(
        without_endpoints(&types),
        ["keel.circuit.opened", "keel.subscription.paused"]
    );
    assert!(
        types.contains(&"keel.endpoint.unhealthy".to_owned()),
        "{types:?}"
    );

    sink.come_back().await;
    let back = Instant::now();
    let info = wait_describe(&server, "auto", "resumed and delivered", SOON, |info| {
        info["paused"].is_null() && info["lag"] == 0 && info["in_flight"] == 0
    })
    .await;
    let delivered_in = back.elapsed();
    assert!(
        delivered_in < Duration::from_secs(5),
        "delivery waited for the cool-down: {delivered_in:?}"
    );
    let pushes: Vec<Exchange> = sink
        .exchanges()
        .into_iter()
        .filter(|exchange| exchange.request.method() == "POST")
        .collect();
    let mut ids = accepted_ids(&pushes);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "{ids:?}");
    assert_eq!(info["dlq_depth"], 0, "{info}");
    let health = &info["endpoints"][0]["health"];
    assert!(
        health["last_outage"]["time_to_recover"].is_string(),
        "the endpoint's outage ended: {info}"
    );
    assert!(health["availability"].as_f64().unwrap() < 1.0, "{info}");
    let types = notices_about(&server, "auto", 6).await;
    assert_eq!(
        without_endpoints(&types),
        [
            "keel.circuit.opened",
            "keel.subscription.paused",
            "keel.subscription.resumed",
            "keel.circuit.closed"
        ],
    );
    assert!(
        types.contains(&"keel.endpoint.healthy".to_owned()),
        "{types:?}"
    );
    let (status, body, _) = server.request(Method::GET, "/metrics", None, "").await;
    assert_eq!(status, 200);
    let endpoint_outages = format!(
        "keel_subscription_endpoint_outages_total{{subscription=\"auto\",endpoint=\"{}\"}} 1",
        sink.url("/hook")
    );
    assert!(
        body.as_str().unwrap().contains(&endpoint_outages),
        "{endpoint_outages} not in /metrics"
    );

    // An operator's pause stays, however well the health checks go.
    let path = "/v1/subscriptions/auto/pause";
    let (status, body) = send_json(&server, Method::POST, path, &json!({})).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let info = describe(&server, "auto").await;
    assert_eq!(info["paused"], "paused by an operator", "{info}");
    eprintln!(
        "auto-pause: paused {paused_in:?} after the first failure, delivering {delivered_in:?} after the sink came back"
    );
    server.stop().await;
}

// Goal: a sink whose health check passes while its deliveries fail does not make keel's
// auto-pause flap: health checks resume the first pause of an outage, and when the sink
// fails on, the next pause stays until an operator resumes it (its reason says so); nothing
// is lost. Method: a sink answering 200 to GET and 500 to POST, pause_after 1s, checks every
// 100 ms, a breaker opening after 5 calls.
#[tokio::test]
async fn a_sink_failing_past_its_passing_health_check_stays_paused() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_topic(&dir, "t", 1).await;
    let by_method: policy::Policy = std::sync::Arc::new(|request: &keel_testkit::sink::Request| {
        let status = if request.method() == "GET" { 200 } else { 500 };
        keel_testkit::sink::Reply::status(status)
    });
    let sink = Sink::start(by_method).await;
    let overrides = json!({
        "sink": {"url": sink.url("/hook"), "pause_after": "1s",
            "health_check": {"interval": "100ms", "timeout": "100ms"}},
        "retry": {"max_attempts": 100, "initial": "20ms", "max": "100ms"},
        "circuit_breaker": {"min_calls": 5, "cool_down": "200ms", "cool_down_max": "200ms"},
    });
    create_push(&server, "flap", "t", "", overrides).await;
    let events: Vec<Value> = (0..5)
        .map(|i| event(&format!("f-{i}"), json!({})))
        .collect();
    publish_batch(&server, "t", events).await;
    let paused_twice = |types: &[String]| {
        types
            .iter()
            .filter(|kind| *kind == "keel.subscription.paused")
            .count()
            == 2
    };
    let deadline = Instant::now() + SOON;
    while !paused_twice(&notices_about(&server, "flap", 0).await) {
        assert!(Instant::now() < deadline, "never paused twice");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let info = describe(&server, "flap").await;
    let reason = info["paused"].as_str().unwrap_or_default();
    assert!(reason.contains("no longer resume it"), "{info}");
    // Many rounds of passing checks later, it is still paused, and nothing new was announced.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let types = notices_about(&server, "flap", 0).await;
    let pauses_and_resumes: Vec<&str> = types
        .iter()
        .map(String::as_str)
        .filter(|kind| kind.starts_with("keel.subscription."))
        .collect();
    assert_eq!(
        pauses_and_resumes,
        [
            "keel.subscription.paused",
            "keel.subscription.resumed",
            "keel.subscription.paused"
        ],
        "{types:?}"
    );
    assert!(!describe(&server, "flap").await["paused"].is_null());
    sink.set_policy(policy::accept());
    let path = "/v1/subscriptions/flap/resume";
    let (status, body) = send_json(&server, Method::POST, path, &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let info = wait_describe(&server, "flap", "all delivered", SOON, |info| {
        info["lag"] == 0 && info["in_flight"] == 0 && info["pending"] == 0
    })
    .await;
    assert_eq!(info["dlq_depth"], 0, "{info}");
    server.stop().await;
}

// Goal: endpoints that cannot be ejected (the 50 % cap) and cannot be reached never make
// keel retry in a tight loop: with two of three key_hash endpoints dead, every event reaches
// the live one within seconds, each dead endpoint tried at most once per event per round;
// with all three dead, the circuit opens and the retries stay few. Method: three sinks, two
// (then three) closed; 30 keyed events; `retried` bounds the tries (it was ~9,000 a second).
#[tokio::test]
async fn dead_endpoints_beyond_the_ejection_cap_are_not_retried_in_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_topic(&dir, "t", 1).await;
    let sinks = [
        Sink::start(policy::accept()).await,
        Sink::start(policy::accept()).await,
        Sink::start(policy::accept()).await,
    ];
    sinks[1].go_down().await;
    sinks[2].go_down().await;
    let endpoints: Vec<Value> = sinks
        .iter()
        .map(|s| json!({"url": s.url("/hook")}))
        .collect();
    let overrides = json!({"ordering": "key",
        "sink": {"endpoints": endpoints, "strategy": "key_hash"}});
    create_push(&server, "capped", "t", "", overrides).await;
    let published: Vec<(String, String)> = (0..30)
        .map(|i| (format!("c-{i:02}"), format!("key-{}", i % 10)))
        .collect();
    publish_keyed(&server, "t", &published).await;
    let info = wait_describe(&server, "capped", "all delivered", SOON, |info| {
        info["lag"] == 0 && info["pending"] == 0
    })
    .await;
    assert_eq!(accepted_ids(&sinks[0].exchanges()).len(), 30, "{info}");
    let retried = info["retried"].as_u64().unwrap();
    assert!(retried <= 2 * 30, "{retried} retries for 30 events: {info}");

    // All three dead: the circuit opens, and the events wait without a loop.
    sinks[0].go_down().await;
    let more: Vec<(String, String)> = (30..40)
        .map(|i| (format!("c-{i:02}"), format!("key-{}", i % 10)))
        .collect();
    publish_keyed(&server, "t", &more).await;
    let info = wait_describe(&server, "capped", "the circuit open", SOON, |info| {
        info["circuit"] == "open"
    })
    .await;
    let before = info["retried"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let info = describe(&server, "capped").await;
    let during = info["retried"].as_u64().unwrap() - before;
    assert!(
        during <= 30,
        "{during} retries in a second with every endpoint dead: {info}"
    );
    for sink in &sinks {
        sink.come_back().await;
    }
    let info = wait_describe(&server, "capped", "all delivered", SOON, |info| {
        info["lag"] == 0 && info["pending"] == 0
    })
    .await;
    assert_eq!(info["dlq_depth"], 0, "{info}");
    server.stop().await;
}
