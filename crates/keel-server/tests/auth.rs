//! Authentication and authorization over real sockets: every route refuses a request
//! without a token (401), a token's scopes decide what it may do (403 otherwise, the same
//! whether or not the resource exists), revoked and expired tokens stop working at once, and
//! without auth keel refuses to listen beyond loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keel_server::{AuthSettings, SecretText, ServerConfig, ServerError};
use keel_testkit::server::TestServer;
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN: &str = "test-admin-token-0123456789abcdef0123456789";

async fn start() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_on(dir.path()).await;
    (server, dir)
}

async fn start_on(dir: &std::path::Path) -> TestServer {
    TestServer::start_with(ServerConfig {
        data_dir: dir.to_owned(),
        auth: AuthSettings {
            admin_token: Some(SecretText(ADMIN.to_owned())),
            allow_insecure: false,
        },
        ..ServerConfig::default()
    })
    .await
}

/// Sends a request with `token` (none: no `Authorization`); the status, the body as JSON (a
/// string when not JSON) and the headers.
async fn call(
    server: &TestServer,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = server
        .client
        .request(method, format!("{}{path}", server.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value, headers)
}

/// Creates a token with `scopes` as the admin; its text.
async fn token(server: &TestServer, scopes: &[&str], expires_in: Option<&str>) -> String {
    let mut body = json!({"name": "test", "scopes": scopes});
    if let Some(expires_in) = expires_in {
        body["expires_in"] = json!(expires_in);
    }
    let (status, created, _) =
        call(server, Some(ADMIN), Method::POST, "/v1/tokens", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created["token"].as_str().unwrap().to_owned()
}

fn event(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "test", "type": "t", "partitionkey": "k1", "data": {}})
}

/// `GET path` with `token`: the status, the body and the headers.
async fn get(
    server: &TestServer,
    token: &str,
    path: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    call(server, Some(token), Method::GET, path, None).await
}

/// Creates topic `name` as the admin.
async fn create_topic(server: &TestServer, name: &str) {
    let path = format!("/v1/topics/{name}");
    let (status, body, _) = call(server, Some(ADMIN), Method::PUT, &path, Some(json!({}))).await;
    assert_eq!(status, 201, "{body}");
}

/// Publishes one event with `token`; the status (200 when stored).
async fn publish(server: &TestServer, token: &str, topic: &str) -> u16 {
    let response = server
        .client
        .post(format!("{}/v1/topics/{topic}/events", server.url))
        .bearer_auth(token)
        .header("content-type", "application/cloudevents+json")
        .body(event("e1").to_string())
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

// Goal: every route of the API but the health probes answers 401 with a Bearer challenge
// and a problem when no token, or an unknown one, is sent; the probes answer without one.
#[tokio::test]
async fn every_route_needs_a_token() {
    let (server, _dir) = start().await;
    for (method, route) in keel_server::routes() {
        let path = route
            .replace("{topic}", "orders")
            .replace("{name}", "billing")
            .replace("{partition}", "0")
            .replace("{key}", "k")
            .replace("{id}", "1");
        let public = ["/healthz", "/readyz", "/openapi.json"].contains(&route.as_str());
        for token in [
            None,
            Some("keel_0123456789abcdef_notarealsecret"),
            Some("guess"),
        ] {
            let (status, body, headers) = call(&server, token, method.clone(), &path, None).await;
            if public {
                assert_ne!(status, 401, "{method} {path}");
                continue;
            }
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
            assert_eq!(body["status"], 401, "{body}");
            let challenge = headers["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
            assert_eq!(
                challenge.contains("invalid_token"),
                token.is_some(),
                "{challenge}"
            );
        }
    }
}

// Goal: a token does what its scopes allow and nothing else: publish on the topics its
// pattern covers, 403 elsewhere; the 403 is the same for a topic that exists and one that
// does not (no existence leak); lists show only what it covers.
#[tokio::test]
async fn scopes_decide_and_never_reveal_existence() {
    let (server, _dir) = start().await;
    for topic in ["orders.eu", "orders.us", "billing"] {
        create_topic(&server, topic).await;
    }
    let publisher = token(&server, &["publish:orders.*"], None).await;
    assert_eq!(publish(&server, &publisher, "orders.eu").await, 200);
    assert_eq!(publish(&server, &publisher, "billing").await, 403);
    // Reading needs `read`, creating needs `manage`, tokens need `admin`.
    let read = get(
        &server,
        &publisher,
        "/v1/topics/orders.eu/partitions/0/events",
    )
    .await;
    assert_eq!(read.0, 403, "{}", read.1);
    let create = call(
        &server,
        Some(&publisher),
        Method::PUT,
        "/v1/topics/orders.new",
        Some(json!({})),
    )
    .await;
    assert_eq!(create.0, 403, "{}", create.1);
    let tokens = get(&server, &publisher, "/v1/tokens").await;
    assert_eq!(tokens.0, 403, "{}", tokens.1);
    let metrics = get(&server, &publisher, "/metrics").await;
    assert_eq!(metrics.0, 403, "{}", metrics.1);
    // An existing and a missing topic outside the scope get the same answer but for the name.
    let reader = token(&server, &["read:orders.*"], None).await;
    let existing = get(&server, &reader, "/v1/topics/billing").await;
    let missing = get(&server, &reader, "/v1/topics/ghost").await;
    assert_eq!((existing.0, missing.0), (403, 403));
    let detail = |body: &Value| body["detail"].as_str().unwrap().replace("ghost", "billing");
    assert_eq!(detail(&existing.1), detail(&missing.1));
    // Inside the scope, a missing topic is a plain 404.
    let inside = get(&server, &reader, "/v1/topics/orders.gone").await;
    assert_eq!(inside.0, 404, "{}", inside.1);
    // Lists show only the covered topics.
    let (status, listed, _) = get(&server, &reader, "/v1/topics").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = listed["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|topic| topic["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders.eu", "orders.us"]);
    // The admin sees everything.
    let (_, all, _) = get(&server, ADMIN, "/v1/topics").await;
    assert!(all["topics"].as_array().unwrap().len() >= 3, "{all}");
}

// Goal: the resources a body names are checked too: a subscription can only be made on a
// topic the token may read, and a stateful ack can only emit to topics it may publish to.
#[tokio::test]
async fn bodies_cannot_reach_beyond_the_scopes() {
    let (server, _dir) = start().await;
    for topic in ["orders", "secrets", "audit"] {
        create_topic(&server, topic).await;
    }
    let team = token(
        &server,
        &["manage:team.*", "read:orders", "consume:team.*"],
        None,
    )
    .await;
    let spying = call(
        &server,
        Some(&team),
        Method::PUT,
        "/v1/subscriptions/team.spy",
        Some(json!({"topic": "secrets"})),
    )
    .await;
    assert_eq!(spying.0, 403, "{}", spying.1);
    assert!(
        spying.1["detail"]
            .as_str()
            .unwrap()
            .contains("topic \"secrets\""),
        "{}",
        spying.1
    );
    let allowed = call(
        &server,
        Some(&team),
        Method::PUT,
        "/v1/subscriptions/team.orders",
        Some(json!({"topic": "orders", "stateful": true, "ordering": "key", "start": "earliest"})),
    )
    .await;
    assert_eq!(allowed.0, 201, "{}", allowed.1);
    assert_eq!(publish(&server, ADMIN, "orders").await, 200);
    let (status, pulled, _) = call(
        &server,
        Some(&team),
        Method::POST,
        "/v1/subscriptions/team.orders/pull",
        Some(json!({"max": 1, "wait": "5s"})),
    )
    .await;
    assert_eq!(status, 200, "{pulled}");
    let ack_id = pulled["messages"][0]["ack_id"].as_str().unwrap().to_owned();
    let emit = json!({"acks": [{"ack_id": ack_id, "state": {"n": 1},
        "emit": [{"topic": "audit", "event": event("emitted")}]}]});
    let acked = call(
        &server,
        Some(&team),
        Method::POST,
        "/v1/subscriptions/team.orders/ack",
        Some(emit),
    )
    .await;
    assert_eq!(acked.0, 403, "{}", acked.1);
    // Nothing was emitted.
    let (_, audit, _) = get(&server, ADMIN, "/v1/topics/audit/partitions/0/events").await;
    assert_eq!(
        audit["records"].as_array().map(Vec::len),
        Some(0),
        "{audit}"
    );
}

// Goal: a revoked token is refused at once, an expired one once its time is up, and both
// with 401; tokens outlive a restart, stored as hashes only.
#[tokio::test]
async fn revoked_and_expired_tokens_stop_working() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_on(dir.path()).await;
    create_topic(&server, "orders").await;
    let revoked = token(&server, &["publish"], None).await;
    let short = token(&server, &["publish"], Some("2s")).await;
    let kept = token(&server, &["publish"], None).await;
    assert_eq!(publish(&server, &revoked, "orders").await, 200);
    let (_, listed, _) = get(&server, ADMIN, "/v1/tokens").await;
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 3, "{listed}");
    assert!(
        !listed.to_string().contains(&kept[22..]),
        "a list shows no secret"
    );
    let id = &revoked[5..21];
    let path = format!("/v1/tokens/{id}");
    let revoke = || call(&server, Some(ADMIN), Method::DELETE, &path, None);
    let (status, body, _) = revoke().await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(publish(&server, &revoked, "orders").await, 401);
    let again = revoke().await;
    assert_eq!(again.0, 404, "{}", again.1);
    assert_eq!(publish(&server, &short, "orders").await, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(publish(&server, &short, "orders").await, 401);
    // A restart keeps the tokens; the data directory holds no token's secret.
    server.stop().await;
    let server = start_on(dir.path()).await;
    assert_eq!(publish(&server, &kept, "orders").await, 200);
    assert_eq!(publish(&server, &revoked, "orders").await, 401);
    for entry in std::fs::read_dir(dir.path().join("tokens")).unwrap() {
        let stored = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for secret in [&kept, &short, &revoked] {
            assert!(!stored.contains(&secret[22..]), "{stored}");
        }
    }
}

// Goal: a bad token request is refused with the member named, and only the admin scope
// may make tokens (no token can make itself a bigger one).
#[tokio::test]
async fn token_requests_are_checked() {
    let (server, _dir) = start().await;
    for (body, needle) in [
        (
            json!({"name": "x", "scopes": []}),
            "scopes must name at least one",
        ),
        (
            json!({"name": "x", "scopes": ["write:orders"]}),
            "the action must be one of",
        ),
        (json!({"name": "", "scopes": ["read"]}), "name must be 1 to"),
        (
            json!({"name": "x", "scopes": ["read"], "expires_in": "soon"}),
            "invalid duration",
        ),
        (
            json!({"name": "x", "scopes": ["read"], "limits": {"publish_per_second": 0}}),
            "at least 1 per second",
        ),
    ] {
        let (status, problem, _) = call(
            &server,
            Some(ADMIN),
            Method::POST,
            "/v1/tokens",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{body}: {problem}"
        );
    }
    let manager = token(&server, &["manage"], None).await;
    let escalate = call(
        &server,
        Some(&manager),
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "x", "scopes": ["admin"]})),
    )
    .await;
    assert_eq!(escalate.0, 403, "{}", escalate.1);
}

// Goal: without auth, keel refuses to listen beyond loopback, saying how to turn auth on;
// `allow_insecure` lets it, and auth on lets it.
#[tokio::test]
async fn without_auth_only_loopback_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = |auth: AuthSettings| ServerConfig {
        data_dir: dir.path().to_owned(),
        auth,
        ..ServerConfig::default()
    };
    let wide = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let refused = keel_server::serve(wide, config(AuthSettings::default()), async {}).await;
    match refused {
        Err(ServerError::Config(message)) => {
            assert!(message.contains("KEEL_ADMIN_TOKEN"), "{message}");
            assert!(message.contains("--allow-insecure"), "{message}");
        }
        other => panic!("served beyond loopback without auth: {other:?}"),
    }
    for auth in [
        AuthSettings {
            admin_token: None,
            allow_insecure: true,
        },
        AuthSettings {
            admin_token: Some(SecretText(ADMIN.to_owned())),
            allow_insecure: false,
        },
    ] {
        let wide = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let served = keel_server::serve(wide, config(auth), async {}).await;
        assert!(served.is_ok(), "{served:?}");
    }
}

// Goal: a token's rate limits hold: past its events per second a publish gets 429 with a
// `Retry-After`, past its pulls per second a pull does; after the wait it may go on, and
// another token is not slowed by it.
#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let (server, _dir) = start().await;
    create_topic(&server, "orders").await;
    let subscription = json!({"topic": "orders"});
    let (status, body, _) = call(
        &server,
        Some(ADMIN),
        Method::PUT,
        "/v1/subscriptions/billing",
        Some(subscription),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let request = json!({"name": "limited", "scopes": ["publish", "consume"],
        "limits": {"publish_per_second": 4, "pull_per_second": 2}});
    let (status, created, _) = call(
        &server,
        Some(ADMIN),
        Method::POST,
        "/v1/tokens",
        Some(request),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let limited = created["token"].as_str().unwrap().to_owned();
    let batch: Vec<Value> = (0..4).map(|i| event(&format!("b{i}"))).collect();
    let send_batch = || {
        server
            .client
            .post(format!("{}/v1/topics/orders/events", server.url))
            .bearer_auth(&limited)
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::Array(batch.clone()).to_string())
            .send()
    };
    assert_eq!(send_batch().await.unwrap().status(), 200);
    let refused = send_batch().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(
        publish(&server, ADMIN, "orders").await,
        200,
        "another caller goes on"
    );
    let pull = || {
        call(
            &server,
            Some(&limited),
            Method::POST,
            "/v1/subscriptions/billing/pull",
            Some(json!({"max": 1})),
        )
    };
    assert_eq!(pull().await.0, 200);
    assert_eq!(pull().await.0, 200);
    let (status, problem, headers) = pull().await;
    assert_eq!(status, 429, "{problem}");
    assert!(headers.contains_key("retry-after"));
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(send_batch().await.unwrap().status(), 200);
    assert_eq!(pull().await.0, 200);
}
