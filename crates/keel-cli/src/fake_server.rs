//! A tiny HTTP server for tests: it answers canned responses in order, one request per
//! connection, and records each request so tests can check what the CLI sent.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// A request as the fake server received it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    /// `GET`, `PUT`, ...
    pub(crate) method: String,
    /// Path and query, as sent.
    pub(crate) target: String,
    /// Header names (lower-case) and values.
    pub(crate) headers: Vec<(String, String)>,
    /// The body.
    pub(crate) body: Vec<u8>,
}

impl Recorded {
    /// The value of header `name` (lower-case), if sent.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body parsed as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// The server; it stops after its last canned response.
pub(crate) struct FakeServer {
    address: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeServer {
    /// Starts answering `responses` (status, JSON body) in order on a free local port.
    pub(crate) async fn start(responses: Vec<(u16, &'static str)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let address = listener.local_addr().expect("bound address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        tokio::spawn(async move {
            for (status, body) in responses {
                let (stream, _) = listener.accept().await.expect("accept");
                let request = read_request(&stream).await;
                recorded.lock().await.push(request);
                write_all(&stream, response(status, body).as_bytes()).await;
            }
        });
        Self { address, requests }
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The requests received so far, in order.
    pub(crate) async fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().await.clone()
    }
}

fn response(status: u16, body: &str) -> String {
    format!(
        "HTTP/1.1 {status} Fake\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn read_request(stream: &TcpStream) -> Recorded {
    let mut bytes = Vec::new();
    loop {
        if let Some(header_end) = find(&bytes, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..header_end]).into_owned();
            let mut request = parse_head(&head);
            let length = request.header("content-length").map_or(0, |value| {
                value.parse::<usize>().expect("numeric content-length")
            });
            if bytes.len() >= header_end + 4 + length {
                request.body = bytes[header_end + 4..header_end + 4 + length].to_vec();
                return request;
            }
        }
        stream.readable().await.expect("readable");
        let mut chunk = [0u8; 16 * 1024];
        match stream.try_read(&mut chunk) {
            Ok(0) => panic!("client closed before a whole request"),
            Ok(count) => bytes.extend_from_slice(&chunk[..count]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("read: {error}"),
        }
    }
}

fn parse_head(head: &str) -> Recorded {
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().expect("request line").split(' ');
    let method = request_line.next().expect("method").to_owned();
    let target = request_line.next().expect("target").to_owned();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Recorded {
        method,
        target,
        headers,
        body: Vec::new(),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        stream.writable().await.expect("writable");
        match stream.try_write(bytes) {
            Ok(count) => bytes = &bytes[count..],
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("write: {error}"),
        }
    }
}
