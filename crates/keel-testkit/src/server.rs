//! keel's server in the test's own process, on a real socket: `keel_server::serve` on a free
//! 127.0.0.1 port, so tests drive it over HTTP as any client would.

use std::path::{Path, PathBuf};

use keel_server::{ServerConfig, ServerError};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::readiness::{READY_WAIT, wait_ready};

/// A server running in this process on 127.0.0.1. Dropping it stops it (without waiting);
/// [`TestServer::stop`] also waits until it has.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// A client for the tests' own requests.
    pub client: reqwest::Client,
    data_dir: PathBuf,
    /// Dropping it (or sending on it) stops the server gracefully.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    /// The data directory when the server made it; declared last, so that it outlives the
    /// fields that stop the server.
    temp_dir: Option<TempDir>,
}

impl TestServer {
    /// Starts a server with default settings on `data_dir` and waits until recovery is over.
    pub async fn start(data_dir: &Path) -> TestServer {
        TestServer::start_with(ServerConfig {
            data_dir: data_dir.to_owned(),
            ..ServerConfig::default()
        })
        .await
    }

    /// Starts a server with default settings on a fresh temporary data directory, which it
    /// removes when dropped or stopped, and waits until it is ready.
    pub async fn start_in_temp_dir() -> TestServer {
        let temp_dir = tempfile::tempdir().expect("create a temporary data dir");
        let mut server = TestServer::start(temp_dir.path()).await;
        server.temp_dir = Some(temp_dir);
        server
    }

    /// Starts a server with `config` (its `listen` is ignored: the server takes a free port)
    /// and waits until recovery is over: ready, degraded, or damaged (a damaged data
    /// directory stays 503, and its tests look at it).
    pub async fn start_with(config: ServerConfig) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let data_dir = config.data_dir.clone();
        let task = tokio::spawn(keel_server::serve(listener, config, async move {
            // A dropped sender stops the server as well.
            let _ = stopped.await;
        }));
        let server = TestServer {
            url,
            client: reqwest::Client::new(),
            data_dir,
            stop: Some(stop),
            task: Some(task),
            temp_dir: None,
        };
        if wait_ready(&server.client, &server.url).await.is_none() {
            panic!("server at {} not ready after {READY_WAIT:?}", server.url);
        }
        server
    }

    /// Stops gracefully, checks that the server stopped without error, and returns its data
    /// directory, for a restart on it (gone already if [`TestServer::start_in_temp_dir`] made
    /// it).
    pub async fn stop(mut self) -> PathBuf {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap().unwrap();
        self.data_dir.clone()
    }

    /// Sends `body` with `content_type`; returns the status, the answer as JSON (a JSON
    /// string when it is not JSON, null when empty) and the headers.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value, HeaderMap) {
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

    /// `PUT /v1/topics/{name}` with `config`.
    pub async fn put_topic(&self, name: &str, config: Value) -> (u16, Value) {
        let path = format!("/v1/topics/{name}");
        let json = Some("application/json");
        let (status, body, _) = self
            .request(Method::PUT, &path, json, config.to_string())
            .await;
        (status, body)
    }

    /// `POST /v1/topics/{topic}/events` with `body` as `content_type`.
    pub async fn publish(
        &self,
        topic: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let path = format!("/v1/topics/{topic}/events");
        let (status, body, _) = self
            .request(Method::POST, &path, Some(content_type), body)
            .await;
        (status, body)
    }

    /// `GET /v1/topics/{topic}/partitions/{partition}/events?{query}`.
    pub async fn read(&self, topic: &str, partition: u32, query: &str) -> (u16, Value) {
        self.get(&format!(
            "/v1/topics/{topic}/partitions/{partition}/events?{query}"
        ))
        .await
    }

    /// `GET {path}`.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (status, body, _) = self.request(Method::GET, path, None, "").await;
        (status, body)
    }

    /// The `next_offset` of every partition of `topic`.
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
