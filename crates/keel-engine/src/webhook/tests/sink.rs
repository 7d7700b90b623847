//! A scripted HTTP/1.1 sink on a real socket: it answers each request with the next scripted
//! step (then `200 OK`), keeps connections alive, and records requests and connections.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::webhook::Url;

/// What the sink does with one request.
#[derive(Debug, Clone)]
pub(super) enum Step {
    /// Writes these bytes and keeps the connection.
    Answer(Vec<u8>),
    /// Waits, then writes these bytes.
    AnswerAfter(Duration, Vec<u8>),
    /// Writes these bytes, then closes the connection.
    AnswerAndClose(Vec<u8>),
}

/// A complete response: `status` is e.g. `"200 OK"`.
pub(super) fn response(status: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut text = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    text.into_bytes()
}

/// One request as the sink read it.
#[derive(Debug, Clone)]
pub(super) struct Received {
    /// `POST /path?query HTTP/1.1`.
    pub(super) request_line: String,
    /// Names lower-cased, values as sent.
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl Received {
    /// The value of the one header called `name` (lower case).
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        let value = values.next().map(|(_, value)| value.as_str());
        assert!(values.next().is_none(), "header {name} sent twice");
        value
    }

    /// The `ce-` headers as `from_binary` takes them: name without the prefix, value as sent.
    pub(super) fn attributes(&self) -> Vec<(&str, &str)> {
        let attributes = self
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.strip_prefix("ce-")?, value.as_str())));
        attributes.collect()
    }
}

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Step>>,
    received: Mutex<Vec<Received>>,
    connections: AtomicUsize,
}

/// A running sink on 127.0.0.1; it stops with the test's runtime.
pub(super) struct TestSink {
    /// `http://127.0.0.1:<port>/hook?team=1`.
    pub(super) url: Url,
    shared: Arc<Shared>,
}

impl TestSink {
    /// Starts a sink that answers with `script`, one step per request, then `200 OK`.
    pub(super) async fn start(script: Vec<Step>) -> TestSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        *shared.script.lock().unwrap() = script.into();
        let accepting = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepting.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, Arc::clone(&accepting)));
            }
        });
        let url = Url::parse(&format!("http://{address}/hook?team=1")).unwrap();
        TestSink { url, shared }
    }

    /// Every request received so far, in order.
    pub(super) fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub(super) fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

/// Serves one connection: request after request until the client closes it or a step does.
async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let mut stream = BufReader::new(stream);
    while let Some(received) = read_request(&mut stream).await {
        shared.received.lock().unwrap().push(received);
        let step = shared.script.lock().unwrap().pop_front();
        let step = step.unwrap_or_else(|| Step::Answer(response("200 OK", &[], "")));
        let (delay, bytes, close) = match step {
            Step::Answer(bytes) => (Duration::ZERO, bytes, false),
            Step::AnswerAfter(delay, bytes) => (delay, bytes, false),
            Step::AnswerAndClose(bytes) => (Duration::ZERO, bytes, true),
        };
        tokio::time::sleep(delay).await;
        if stream.get_mut().write_all(&bytes).await.is_err() || close {
            return;
        }
    }
}

/// Reads one request with a `content-length` body; `None` at the end of the connection.
async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<Received> {
    let mut request_line = String::new();
    if stream.read_line(&mut request_line).await.ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.ok()?;
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(0, |(_, value)| value.parse().unwrap());
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(Received {
        request_line: request_line.trim_end().to_owned(),
        headers,
        body,
    })
}
