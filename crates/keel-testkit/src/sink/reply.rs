//! What the sink does with a request ([`Reply`]), and what it records it did ([`Answer`]).

use std::time::Duration;

/// A well-formed HTTP/1.1 response with a `content-length` body, built step by step:
/// `Response::new(503).header("retry-after", "7")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code; the reason phrase is the standard one (or `Unknown`).
    pub status: u16,
    /// Headers besides `content-length`, in the order written.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// How long the sink waits before writing it (zero: at once).
    pub delay: Duration,
}

impl Response {
    /// `status` with no headers and an empty body, at once.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// Writes it only after `delay`: a slow answer.
    pub fn after(mut self, delay: Duration) -> Response {
        self.delay = delay;
        self
    }

    /// The bytes on the wire.
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let reason = reqwest::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|status| status.canonical_reason())
            .unwrap_or("Unknown");
        let mut head = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", self.body.len()));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// What the sink does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Writes a well-formed response and keeps the connection.
    Respond(Response),
    /// Writes these bytes as they are (a cut or malformed response), then keeps the
    /// connection, or closes it when `close`.
    Raw {
        /// The bytes.
        bytes: Vec<u8>,
        /// Whether the connection is closed after them.
        close: bool,
    },
    /// Reads the request, then closes the connection without answering.
    HangUp,
}

impl Reply {
    /// `status` with no headers and an empty body, at once.
    pub fn status(status: u16) -> Reply {
        Reply::Respond(Response::new(status))
    }

    /// What the sink records it did.
    pub(super) fn answer(&self) -> Answer {
        match self {
            Reply::Respond(response) if response.delay.is_zero() => Answer::Status(response.status),
            Reply::Respond(response) => Answer::Late(response.status),
            Reply::Raw { .. } => Answer::Raw,
            Reply::HangUp => Answer::HungUp,
        }
    }
}

impl From<Response> for Reply {
    fn from(response: Response) -> Reply {
        Reply::Respond(response)
    }
}

/// What the sink did with a request, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Answered this status at once.
    Status(u16),
    /// Answered this status after the response's delay (meant to exceed the caller's timeout).
    Late(u16),
    /// Wrote raw bytes; what the caller made of them is the caller's business.
    Raw,
    /// Closed the connection without answering.
    HungUp,
}

impl Answer {
    /// Whether the sink answered 2xx at once: its own decision to take the event.
    pub fn accepted(self) -> bool {
        matches!(self, Answer::Status(200..=299))
    }
}
