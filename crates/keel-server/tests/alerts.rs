//! Alert rules against a real server on a real socket: rules put over the API fire and
//! resolve from keel's own metrics, and every transition arrives as a CloudEvent at a webhook
//! subscribed to the internal topic `_keel.alerts`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use keel_engine::clock::{now_ms, parse_rfc3339_ms};
use keel_server::ServerConfig;
use keel_testkit::server::TestServer;
use keel_testkit::sink::policy;
use keel_testkit::sink::{Exchange, Sink};
use reqwest::Method;
use serde_json::{Value, json};
use support::{BATCH, STRUCTURED, assert_problem, event};

/// How often the tests' servers evaluate alert rules.
const EVALUATION_INTERVAL: Duration = Duration::from_millis(100);
/// How long a condition that should hold soon is waited for.
const SOON: Duration = Duration::from_secs(15);

async fn start(data_dir: &std::path::Path, config: ServerConfig) -> TestServer {
    TestServer::start_with(ServerConfig {
        data_dir: data_dir.to_owned(),
        alert_evaluation_interval: EVALUATION_INTERVAL,
        ..config
    })
    .await
}

async fn send(server: &TestServer, method: Method, path: &str, body: &Value) -> (u16, Value) {
    let (status, body, _) = server
        .request(method, path, Some("application/json"), body.to_string())
        .await;
    (status, body)
}

async fn put_rule(server: &TestServer, name: &str, rule: &Value) -> (u16, Value) {
    send(server, Method::PUT, &format!("/v1/alerts/{name}"), rule).await
}

/// Subscribes the sink to `_keel.alerts`, from its start.
async fn subscribe_pager(server: &TestServer, sink: &Sink) {
    let spec = json!({"topic": "_keel.alerts", "sink": {"url": sink.url("/alerts")},
        "start": "earliest", "retry": {"initial": "20ms", "max": "200ms"}});
    let (status, body) = send(server, Method::PUT, "/v1/subscriptions/pager", &spec).await;
    assert_eq!(status, 201, "{body}");
}

/// The alert notices the sink accepted, as (type, data).
fn notices(exchanges: &[Exchange]) -> Vec<(String, Value)> {
    let accepted = exchanges.iter().filter(|exchange| exchange.accepted());
    accepted
        .map(|exchange| {
            let kind = exchange
                .request
                .header("ce-type")
                .unwrap_or_default()
                .to_owned();
            (
                kind,
                serde_json::from_slice(&exchange.request.body).unwrap(),
            )
        })
        .collect()
}

// Goal (fault test a): a subscription's lag driven over a threshold fires the alert within
// `for` plus one evaluation interval (and not before `for`), and draining it resolves the
// alert; both transitions arrive, in order, as CloudEvents at a webhook subscribed to
// `_keel.alerts`, naming the subscription. Invariant: an alert fires only after its
// condition held for `for`, and every transition is delivered like any event.
#[tokio::test]
async fn lag_alert_fires_and_resolves_at_a_webhook_on_keel_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), ServerConfig::default()).await;
    let sink = Sink::start(policy::accept()).await;
    subscribe_pager(&server, &sink).await;
    assert_eq!(server.put_topic("orders", json!({})).await.0, 201);
    let spec = json!({"topic": "orders", "start": "earliest"});
    let (status, body) = send(&server, Method::PUT, "/v1/subscriptions/billing", &spec).await;
    assert_eq!(status, 201, "{body}");
    let for_ms = 500;
    let rule = json!({"kind": "threshold", "metric": "keel_subscription_lag", "op": ">",
        "value": 5, "for": "500ms"});
    assert_eq!(put_rule(&server, "billing-lag", &rule).await.0, 201);

    let batch: Vec<Value> = (0..10)
        .map(|n| event(&format!("e{n}"), json!({})))
        .collect();
    let published_ms = now_ms();
    let (status, body) = server
        .publish("orders", BATCH, json!(batch).to_string())
        .await;
    assert_eq!(status, 200, "{body}");
    let exchanges = sink
        .wait_for("the firing notice", SOON, |exchanges| {
            !notices(exchanges).is_empty()
        })
        .await;
    let (kind, firing) = notices(&exchanges).remove(0);
    assert_eq!(kind, "keel.alert.firing", "{firing}");
    assert_eq!(firing["rule"], "billing-lag");
    assert_eq!(firing["labels"]["subscription"], "billing");
    assert_eq!(firing["value"], 10.0);
    assert_eq!(firing["threshold"], 5.0);
    let fired_ms = parse_rfc3339_ms(firing["since"].as_str().unwrap()).unwrap();
    let interval_ms = EVALUATION_INTERVAL.as_millis() as i64;
    // Scheduling slack on a loaded machine: a tick may run a little late.
    let slack_ms = 200;
    let after_ms = fired_ms - published_ms;
    assert!(
        after_ms >= for_ms && after_ms <= for_ms + interval_ms + slack_ms,
        "fired {after_ms} ms after the lag rose"
    );
    let (status, described) = server.get("/v1/alerts/billing-lag").await;
    assert_eq!(status, 200);
    assert_eq!(described["state"], "firing", "{described}");
    assert_eq!(described["instances"][0]["since"], firing["since"]);

    drain(&server, "billing", 10).await;
    let exchanges = sink
        .wait_for("the resolved notice", SOON, |exchanges| {
            notices(exchanges).len() >= 2
        })
        .await;
    let kinds: Vec<String> = notices(&exchanges)
        .into_iter()
        .map(|(kind, _)| kind)
        .collect();
    assert_eq!(kinds, ["keel.alert.firing", "keel.alert.resolved"]);
    let (_, resolved) = notices(&exchanges).remove(1);
    assert_eq!(resolved["labels"]["subscription"], "billing");
    assert_eq!(
        exchanges[1].request.header("ce-subject"),
        Some("billing-lag")
    );
    let (_, described) = server.get("/v1/alerts/billing-lag").await;
    assert_eq!(described["state"], "inactive", "{described}");
    server.stop().await;
}

/// Pulls and acknowledges `count` events of a pull subscription.
async fn drain(server: &TestServer, name: &str, count: usize) {
    let mut acked = 0;
    let deadline = Instant::now() + SOON;
    while acked < count && Instant::now() < deadline {
        let pull = json!({"max": 100, "wait": "1s"});
        let path = format!("/v1/subscriptions/{name}/pull");
        let (status, pulled) = send(server, Method::POST, &path, &pull).await;
        assert_eq!(status, 200, "{pulled}");
        let ack_ids: Vec<Value> = pulled["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|message| message["ack_id"].clone())
            .collect();
        acked += ack_ids.len();
        let path = format!("/v1/subscriptions/{name}/ack");
        let (status, body) = send(server, Method::POST, &path, &json!({"ack_ids": ack_ids})).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(acked, count);
}

// Goal (fault test b): an anomaly rule on the publish rate learns a steady rate, stays
// silent while it holds, and fires once publishing collapses. Method: 200 events/s for 8 s
// (4 s of warm-up), in batches of 100 on a fixed schedule that catches up after a stall (so a
// busy machine does not make the rate ragged), then none; the notices are read back from
// `_keel.alerts` itself. The long steady run is the simulation in keel-engine's
// `alerts/tests.rs`. Invariant: the rule fires on a collapse and not during the steady rate
// it learned.
#[tokio::test]
async fn publish_rate_anomaly_fires_when_publishing_collapses() {
    let dir = tempfile::tempdir().unwrap();
    let tick = Duration::from_millis(500);
    let config = ServerConfig {
        alert_evaluation_interval: Duration::from_millis(250),
        data_dir: dir.path().to_owned(),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(config).await;
    assert_eq!(server.put_topic("orders", json!({})).await.0, 201);
    let rule = json!({"kind": "anomaly", "metric": "keel_publish_events_total",
        "labels": {"topic": "orders"}, "function": "rate", "window": "4s", "z": 5,
        "direction": "down", "warm_up": "4s", "half_life": "30s"});
    assert_eq!(put_rule(&server, "publish-rate", &rule).await.0, 201);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for round in 0..16 {
        ticker.tick().await;
        let batch: Vec<Value> = (0..100)
            .map(|n| event(&format!("e{round}-{n}"), json!({})))
            .collect();
        let (status, body) = server
            .publish("orders", BATCH, json!(batch).to_string())
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, during) = server.get("/v1/alerts/publish-rate").await;
    let baseline = &during["instances"][0]["baseline"];
    assert_eq!(baseline["warmed_up"], true, "{during}");
    let stopped_ms = now_ms();
    let deadline = Instant::now() + SOON;
    let records = loop {
        let (status, read) = server.read("_keel.alerts", 0, "from=0&max=100").await;
        assert_eq!(status, 200, "{read}");
        let records = read["records"].as_array().unwrap().clone();
        if !records.is_empty() || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (_, after) = server.get("/v1/alerts/publish-rate").await;
    let first = &records
        .first()
        .unwrap_or_else(|| panic!("the anomaly fires: {after}"))["event"];
    assert_eq!(first["type"], "keel.alert.firing", "{first}");
    assert_eq!(first["subject"], "publish-rate");
    let fired_ms = parse_rfc3339_ms(first["data"]["since"].as_str().unwrap()).unwrap();
    assert!(
        fired_ms >= stopped_ms,
        "fired during the steady rate: {first}"
    );
    assert!(first["data"]["z"].as_f64().unwrap() <= -5.0, "{first}");
    assert!(
        first["data"]["baseline"]["mean"].as_f64().unwrap() > 20.0,
        "{first}"
    );
    server.stop().await;
}

// Goal: the API refuses bad rules and names with precise problems, answers 201/200/404 as
// documented, lists rules, and guards the internal topic (readable, not listed, not
// writable or deletable by users).
#[tokio::test]
async fn alert_api_checks_rules_and_guards_the_internal_topic() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), ServerConfig::default()).await;
    // Values as floats: that is how they come back.
    let good = json!({"kind": "threshold", "metric": "keel_subscription_dlq_depth",
        "function": "value", "op": ">", "value": 0.0});
    for (name, rule, status, needle) in [
        (
            "r",
            json!({"kind": "threshold", "metric": "keel_x", "op": ">", "value": 1, "wndow": "1m"}),
            400,
            "unknown field `wndow`",
        ),
        (
            "r",
            json!({"kind": "threshold", "metric": "keel_x", "op": ">"}),
            400,
            "needs value",
        ),
        (
            "r",
            json!({"kind": "threshold", "metric": "keel_x", "op": "~", "value": 1}),
            400,
            "unknown variant `~`",
        ),
        (
            "r",
            json!({"kind": "anomaly", "metric": "keel_x", "function": "rate"}),
            400,
            "needs a window",
        ),
        (
            "r",
            json!({"kind": "threshold", "metric": "keel_x", "op": ">", "value": 1, "for": "soon"}),
            400,
            "for",
        ),
        ("_r", good.clone(), 400, "invalid alert rule name"),
    ] {
        let (got, problem) = put_rule(&server, name, &rule).await;
        assert_problem(got, &problem, status, needle, &rule.to_string());
    }
    assert_eq!(put_rule(&server, "dlq", &good).await.0, 201);
    assert_eq!(put_rule(&server, "dlq", &good).await.0, 200);
    let (status, listed) = server.get("/v1/alerts").await;
    assert_eq!(status, 200);
    assert_eq!(listed["alerts"][0]["name"], "dlq", "{listed}");
    assert_eq!(listed["alerts"][0]["rule"], good);
    let (status, problem) = server.get("/v1/alerts/missing").await;
    assert_problem(status, &problem, 404, "does not exist", "describe");
    let path = "/v1/alerts/dlq";
    assert_eq!(
        send(&server, Method::DELETE, path, &json!(null)).await.0,
        204
    );
    let (status, problem) = send(&server, Method::DELETE, path, &json!(null)).await;
    assert_problem(status, &problem, 404, "does not exist", "delete again");

    let (status, topic) = server.get("/v1/topics/_keel.alerts").await;
    assert_eq!(status, 200, "{topic}");
    let (_, topics) = server.get("/v1/topics").await;
    assert_eq!(
        topics["topics"],
        json!([]),
        "internal topics are not listed"
    );
    let one = event("x", json!({})).to_string();
    let (status, problem) = server.publish("_keel.alerts", STRUCTURED, one).await;
    assert_problem(status, &problem, 403, "internal to keel", "publish");
    let (status, problem) = send(
        &server,
        Method::DELETE,
        "/v1/topics/_keel.alerts",
        &json!(null),
    )
    .await;
    assert_problem(status, &problem, 403, "not deleted", "delete");
    let (status, problem) = server.put_topic("_keel.mine", json!({})).await;
    assert_problem(status, &problem, 403, "not created", "create");
    server.stop().await;
}

// Goal: rules put over the API survive a restart; rules declared in the configuration are
// applied at every start without duplicates or errors (idempotent), and a declared rule
// replaces a stored one of the same name. Invariant: an acknowledged PUT is durable.
#[tokio::test]
async fn rules_survive_a_restart_and_declared_rules_apply_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let stored = json!({"kind": "threshold", "metric": "keel_subscription_lag",
        "function": "value", "op": ">", "value": 100.0, "for": "1m", "keep_firing_for": "30s"});
    let declared = json!({"kind": "anomaly", "metric": "keel_publish_events_total",
        "function": "rate", "window": "1m"});
    let config = || ServerConfig {
        alerts: [(
            "declared".to_owned(),
            serde_json::from_value(declared.clone()).unwrap(),
        )]
        .into(),
        ..ServerConfig::default()
    };
    let server = start(dir.path(), config()).await;
    assert_eq!(put_rule(&server, "stored", &stored).await.0, 201);
    server.stop().await;
    for _restart in 0..2 {
        let server = start(dir.path(), config()).await;
        let (_, listed) = server.get("/v1/alerts").await;
        let names: Vec<&str> = listed["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|alert| alert["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["declared", "stored"]);
        let (_, described) = server.get("/v1/alerts/stored").await;
        assert_eq!(described["rule"], stored);
        let (_, described) = server.get("/v1/alerts/declared").await;
        assert_eq!(described["rule"], declared);
        server.stop().await;
    }
}
