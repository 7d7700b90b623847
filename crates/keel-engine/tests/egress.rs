//! The egress policy end to end: subscriptions whose sink is denied, by its address or by the
//! address its name resolves to, on a real data directory with a real listener that must see
//! no connection. Names are resolved from a hosts table: nothing leaves loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_engine::egress::{EgressPolicy, HostsTable};
use keel_engine::subscription::SubscriptionInfo;
use keel_engine::webhook::WebhookSettings;
use keel_engine::{Engine, EngineConfig, EngineError, TopicConfig};
use keel_testkit::sink::{Sink, policy};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(20);

/// An engine on `dir` with `policy`, `sink.example` resolving to 127.0.0.1, and topic
/// `orders`.
async fn engine(dir: &tempfile::TempDir, policy: EgressPolicy) -> Engine {
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.webhooks = WebhookSettings {
        egress: policy,
        lookup: Arc::new(HostsTable::new().with("sink.example", &[loopback])),
        ..WebhookSettings::default()
    };
    let engine = Engine::open(config).await.unwrap();
    let created = engine.create_topic("orders", TopicConfig::default()).await;
    created.unwrap();
    engine
}

async fn subscribe(engine: &Engine, name: &str, url: &str) -> Result<(), EngineError> {
    let spec = json!({"topic": "orders", "start": "earliest", "sink": {"url": url},
        "retry": {"initial": "10ms", "max": "50ms"}});
    let spec = serde_json::from_value(spec).unwrap();
    engine.create_subscription(name, spec).await.map(drop)
}

async fn publish(engine: &Engine, id: &str) {
    let event = json!({"specversion": "1.0", "id": id, "source": "/test", "type": "t"});
    let event = keel_engine::event::from_value(event).unwrap();
    engine.publish("orders", vec![event]).await.unwrap();
}

async fn wait_until(engine: &Engine, name: &str, done: impl Fn(&SubscriptionInfo) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = engine.describe_subscription(name).unwrap();
        if done(&info) {
            return;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Goal: under the strict policy a sink on loopback is refused, whether its URL gives the
// address (at create, with a 400-class error naming the member) or a name resolving to it (at
// each connection: describe says why, and the event's attempts are not spent while the
// circuit is open), and the listener there never sees a connection. The same name under the
// standard policy is delivered to that listener, so the test would see a connection.
// Method: a real listener on 127.0.0.1 counting accepted connections; a hosts table points
// `sink.example` at it.
#[tokio::test]
async fn strict_policy_refuses_loopback_sinks_before_any_connection() {
    let sink = Sink::start(policy::accept()).await;
    let port = sink.url("").rsplit(':').next().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let strict = engine(&dir, EgressPolicy::Strict).await;

    let direct = subscribe(&strict, "direct", &sink.url("/hooks")).await;
    let error = direct.unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid subscription: sink.url: sink address 127.0.0.1 is loopback, denied by the \
         strict egress policy; set webhooks.egress (--webhook-egress) to \"standard\" to allow it"
    );
    assert_eq!(error.class(), keel_engine::error::ErrorClass::Invalid);

    let named = format!("http://sink.example:{port}/hooks");
    subscribe(&strict, "named", &named).await.unwrap();
    publish(&strict, "e-1").await;
    let refusal = "sink address 127.0.0.1 (from sink.example) is loopback, denied by the strict \
                   egress policy; set webhooks.egress (--webhook-egress) to \"standard\" to allow it";
    wait_until(&strict, "named", |info| {
        let open = info.circuit == Some(keel_engine::subscription::circuit::CircuitState::Open);
        let said = info.last_error.as_ref().is_some_and(|e| e.error == refusal);
        open && said
    })
    .await;
    let info = strict.describe_subscription("named").unwrap();
    assert_eq!((info.dead_lettered, info.dlq_depth), (0, 0), "{info:?}");
    assert_eq!(
        sink.connections(),
        0,
        "the strict policy let a connection through"
    );
    strict.shut_down().await;

    // Control: the name does lead to the listener.
    let dir = tempfile::tempdir().unwrap();
    let standard = engine(&dir, EgressPolicy::Standard).await;
    subscribe(&standard, "named", &named).await.unwrap();
    publish(&standard, "e-2").await;
    wait_until(&standard, "named", |info| info.delivered == 1).await;
    assert!(sink.connections() >= 1);
    standard.shut_down().await;
}

// Goal: the standard policy refuses cloud metadata and link-local sinks, by address at create
// and by name at connection, and allows private ones. Method: URLs with those addresses; no
// request is sent anywhere (create refuses, or the name is not resolvable to a listener).
#[tokio::test]
async fn standard_policy_refuses_metadata_addresses_at_create() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, EgressPolicy::Standard).await;
    for (url, range) in [
        (
            "http://169.254.169.254/latest/meta-data/",
            "a cloud metadata address",
        ),
        ("http://[fd00:ec2::254]/", "a cloud metadata address"),
        ("http://[::ffff:a9fe:a9fe]/", "a cloud metadata address"),
        ("http://169.254.10.10:8080/", "link-local"),
        ("http://0.0.0.0:8080/", "unspecified (this host)"),
    ] {
        let error = subscribe(&engine, "metadata", url).await.unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains(&format!("is {range}, denied by the standard egress policy")),
            "{url}: {text}"
        );
    }
    let groups = json!({"topic": "orders", "sink": {"endpoints": [
        {"url": "http://10.0.0.5/hooks"}, {"url": "http://169.254.169.254/"}]}});
    let error = engine
        .create_subscription("group", serde_json::from_value(groups).unwrap())
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("sink.endpoints[1].url: sink address 169.254.169.254"),
        "{error}"
    );
    subscribe(&engine, "private", "http://10.0.0.5/hooks")
        .await
        .unwrap();
    engine.shut_down().await;
}
