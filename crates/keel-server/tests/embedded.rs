//! A program that embeds keel: it opens the engine, attaches its own in-process handler, and
//! serves the HTTP API from the same engine, in one process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use keel_engine::handler::{Delivered, HandlerError, Next, stateful_fn};
use keel_engine::{Engine, EngineConfig, TopicConfig};
use keel_server::config::ServerConfig;
use serde_json::{Value, json};

// Goal: events published over HTTP reach the program's own stateful handler, and the state it
// commits reads back over HTTP; the server stops on its signal and the engine stays the
// program's to shut down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_engine_serves_http_and_runs_its_handlers() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig::new(dir.path())).await.unwrap();
    engine
        .create_topic("visits", TopicConfig::default())
        .await
        .unwrap();
    let spec = serde_json::from_value(
        json!({"topic": "visits", "ordering": "key", "stateful": true, "start": "earliest"}),
    )
    .unwrap();
    engine.create_subscription("counts", spec).await.unwrap();
    let attached = engine
        .attach(
            "counts",
            stateful_fn(|_event: Delivered, count: Option<u64>| async move {
                Ok::<_, HandlerError>(Next::state(count.unwrap_or(0) + 1))
            }),
        )
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ServerConfig::default();
    let server_engine = engine.clone();
    let server = tokio::spawn(async move {
        keel_server::serve_engine(listener, server_engine, &config, async move {
            let _ = stopped.await;
        })
        .await
    });
    let client = reqwest::Client::new();
    for n in 0..3 {
        let event = json!({"specversion": "1.0", "id": format!("v{n}"), "source": "web",
            "type": "visit", "partitionkey": "home"});
        let status = client
            .post(format!("{url}/v1/topics/visits/events"))
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = client
            .get(format!("{url}/v1/subscriptions/counts/state/home"))
            .send()
            .await
            .unwrap();
        if answer.status() == 200 {
            let state: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
            if state["state"] == 3 {
                assert_eq!(state["version"], 3);
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the handler's state never reached 3"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    attached.stop().await;
    engine.shut_down().await;
}
