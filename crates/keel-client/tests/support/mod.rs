//! What the client's tests share: events, a stateful-ready server, waiting for a condition,
//! and a TCP proxy that loses the answer to the first request.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keel_client::Client;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for something that should happen quickly.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// A CloudEvent from source `test` with `id` (when given), type `t` and `members` added.
pub(crate) fn event(id: Option<&str>, members: Value) -> Value {
    let mut event = json!({"specversion": "1.0", "source": "test", "type": "t"});
    if let Some(id) = id {
        event["id"] = json!(id);
    }
    for (name, value) in members.as_object().expect("members are an object") {
        event[name] = value.clone();
    }
    event
}

/// A client of `url` with short timeouts, so a failing test fails fast.
pub(crate) fn client(url: &str) -> Client {
    Client::builder(url)
        .request_timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Waits until `done` is true, failing the test after [`PATIENCE`].
pub(crate) async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy to `upstream` that, on its first connection, forwards the request, waits for
/// the server's answer, and closes the client's connection without passing the answer on:
/// the request took effect but the client saw a broken connection. Later connections pass
/// through.
pub(crate) struct LosingProxy {
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// Connections accepted so far.
    pub(crate) connections: Arc<AtomicUsize>,
}

impl LosingProxy {
    pub(crate) async fn start(upstream: &str) -> LosingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let number = count.fetch_add(1, Ordering::SeqCst);
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let mut server = TcpStream::connect(&upstream).await.unwrap();
                    if number == 0 {
                        lose_first_answer(&mut client, &mut server).await;
                    } else {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        LosingProxy { url, connections }
    }
}

/// Passes the client's bytes on until the server starts answering, then drops both sides.
async fn lose_first_answer(client: &mut TcpStream, server: &mut TcpStream) {
    let mut request = vec![0u8; 64 * 1024];
    let mut answer = [0u8; 1];
    loop {
        tokio::select! {
            read = client.read(&mut request) => {
                let count = read.unwrap();
                if count == 0 {
                    return;
                }
                server.write_all(&request[..count]).await.unwrap();
            }
            // The first byte of the answer: the request was handled; lose the answer.
            _ = server.read(&mut answer) => return,
        }
    }
}
