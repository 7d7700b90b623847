//! A request as the sink reads it off the socket, and how it reads one.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;

/// Most lines in a request head; a longer head closes the connection.
const HEAD_LINES_MAX: usize = 200;
/// Most bytes in a request head; a larger head closes the connection.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Most bytes of a request body read; a longer body closes the connection. keel's largest
/// configurable event is 8 MiB, and a pushed body is at most the event's data.
const BODY_BYTES_MAX: usize = 8 * 1024 * 1024;

/// One request as the sink read it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request line without its CRLF, e.g. `POST /hook?team=1 HTTP/1.1`.
    pub request_line: String,
    /// Header names lower-cased, values trimmed (lossy UTF-8), in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The method, e.g. `POST`.
    pub fn method(&self) -> &str {
        self.request_line.split(' ').next().unwrap_or_default()
    }

    /// The request target, e.g. `/hook?team=1`.
    pub fn path(&self) -> &str {
        self.request_line.split(' ').nth(1).unwrap_or_default()
    }

    /// The value of the one header called `name` (lower case); panics if it is sent twice.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        let value = values.next().map(|(_, value)| value.as_str());
        assert!(
            value.is_none() || values.next().is_none(),
            "header {name} sent twice"
        );
        value
    }

    /// The `ce-id` header; panics without one (every push request carries it).
    pub fn event_id(&self) -> &str {
        self.header("ce-id")
            .expect("every push request carries ce-id")
    }

    /// The `ce-partitionkey` header, when the event has a key.
    pub fn partition_key(&self) -> Option<&str> {
        self.header("ce-partitionkey")
    }

    /// The `keel-attempt` header as a number (1 for the first attempt); panics without one.
    pub fn attempt(&self) -> u32 {
        let attempt = self.header("keel-attempt").expect("keel-attempt header");
        attempt.parse().expect("keel-attempt is a number")
    }

    /// The `ce-` headers as CloudEvents' binary mode reads them: name without the prefix,
    /// value as sent.
    pub fn attributes(&self) -> Vec<(&str, &str)> {
        let attributes = self
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.strip_prefix("ce-")?, value.as_str())));
        attributes.collect()
    }
}

/// Reads one HTTP/1.1 request with a `content-length` body (or none). `None` when the peer
/// closed the connection or sent something this sink does not read (a malformed request line,
/// an oversized head or body).
pub(super) async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<Request> {
    let request_line = read_line(stream).await?;
    if request_line.split(' ').count() < 2 {
        return None;
    }
    let mut headers = Vec::new();
    let mut head_bytes = request_line.len();
    for _ in 0..HEAD_LINES_MAX {
        let line = read_line(stream).await?;
        head_bytes += line.len();
        if head_bytes > HEAD_BYTES_MAX {
            return None;
        }
        if line.is_empty() {
            let body = read_body(stream, &headers).await?;
            return Some(Request {
                request_line,
                headers,
                body,
            });
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    None
}

/// Reads the body `headers` announce with `content-length` (none without it).
async fn read_body(
    stream: &mut BufReader<TcpStream>,
    headers: &[(String, String)],
) -> Option<Vec<u8>> {
    let chunked = headers.iter().any(|(name, _)| name == "transfer-encoding");
    assert!(
        !chunked,
        "sink: chunked request bodies are not expected from keel"
    );
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(Some(0), |(_, value)| value.parse().ok())?;
    if length > BODY_BYTES_MAX {
        return None;
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(body)
}

/// One line without its CRLF, of at most a head's bytes (one more, so that the caller sees the
/// head is too large); `None` at the end of the stream.
async fn read_line(stream: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = Vec::new();
    let mut bounded = (&mut *stream).take(HEAD_BYTES_MAX as u64 + 1);
    let read = bounded.read_until(b'\n', &mut line).await.ok()?;
    if read == 0 {
        return None;
    }
    let text = String::from_utf8_lossy(&line);
    Some(text.trim_end_matches(['\r', '\n']).to_owned())
}
