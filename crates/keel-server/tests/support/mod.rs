//! A real keel server on a real socket for the API tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code, unreachable_pub)]

pub mod sink;

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_server::ServerConfig;
use serde_json::{Value, json};

/// A server running in this process on 127.0.0.1 with its own data dir.
pub struct TestServer {
    pub url: String,
    pub client: reqwest::Client,
    data_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), keel_server::ServerError>>>,
}

impl TestServer {
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(ServerConfig {
            data_dir: data_dir.to_owned(),
            ..ServerConfig::default()
        })
        .await
    }

    pub async fn start_with(config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let data_dir = config.data_dir.clone();
        let task = tokio::spawn(keel_server::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        let server = Self {
            url,
            client: reqwest::Client::new(),
            data_dir,
            stop: Some(stop),
            task: Some(task),
        };
        server.wait_ready().await;
        server
    }

    /// Waits until recovery is over: ready, degraded, or damaged (a damaged data directory
    /// stays 503, and its tests look at it).
    async fn wait_ready(&self) {
        for _ in 0..500 {
            if let Ok(response) = self.client.get(format!("{}/readyz", self.url)).send().await {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if status == 200 || body["status"] == "damaged" {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server at {} never became ready", self.url);
    }

    /// Stops gracefully and waits until it has.
    pub async fn stop(mut self) -> PathBuf {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap().unwrap();
        self.data_dir.clone()
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.url))
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value, headers)
    }

    pub async fn put_topic(&self, name: &str, config: Value) -> (u16, Value) {
        let (status, body, _) = self
            .request(
                reqwest::Method::PUT,
                &format!("/v1/topics/{name}"),
                Some("application/json"),
                config.to_string(),
            )
            .await;
        (status, body)
    }

    pub async fn publish(
        &self,
        topic: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let (status, body, _) = self
            .request(
                reqwest::Method::POST,
                &format!("/v1/topics/{topic}/events"),
                Some(content_type),
                body,
            )
            .await;
        (status, body)
    }

    pub async fn read(&self, topic: &str, partition: u32, query: &str) -> (u16, Value) {
        let (status, body, _) = self
            .request(
                reqwest::Method::GET,
                &format!("/v1/topics/{topic}/partitions/{partition}/events?{query}"),
                None,
                "",
            )
            .await;
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (status, body, _) = self.request(reqwest::Method::GET, path, None, "").await;
        (status, body)
    }

    /// next_offset of every partition of a topic.
    pub async fn next_offsets(&self, topic: &str) -> Vec<u64> {
        let (status, body) = self.get(&format!("/v1/topics/{topic}")).await;
        assert_eq!(status, 200, "{body}");
        body["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["next_offset"].as_u64().unwrap())
            .collect()
    }
}

pub fn event(id: &str, extra: Value) -> Value {
    let mut event = json!({"specversion": "1.0", "id": id, "source": "test", "type": "test.event", "data": {"n": id}});
    if let (Some(object), Some(extra)) = (event.as_object_mut(), extra.as_object()) {
        object.extend(extra.clone());
    }
    event
}

pub const STRUCTURED: &str = "application/cloudevents+json";
pub const BATCH: &str = "application/cloudevents-batch+json";

/// Checks a problem+json answer: its status, and that its detail mentions `needle`.
pub fn assert_problem(
    status: u16,
    problem: &Value,
    status_expected: u16,
    needle: &str,
    context: &str,
) {
    assert_eq!(status, status_expected, "{context}: {problem}");
    assert_eq!(problem["status"], status_expected, "{context}: {problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.to_lowercase().contains(&needle.to_lowercase()),
        "{context}: {problem}"
    );
}
