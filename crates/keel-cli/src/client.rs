//! The HTTP client of keel's API: URLs built from path segments, bodies sent as bytes, and
//! RFC 9457 problem answers turned into one-line errors.

use std::time::Duration;

use keel_api::problem::Problem;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use crate::limits::{CONNECT_TIMEOUT_MS, ERROR_BODY_CHARS_MAX, REQUEST_TIMEOUT_MS};

/// Where `keel` looks for the server when neither `--server` nor `KEEL_SERVER` is given.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:7171";

/// `Content-Type` of plain JSON request bodies.
pub(crate) const CONTENT_TYPE_JSON: &str = "application/json";

/// `Content-Type` of one event in CloudEvents structured mode.
pub(crate) const CONTENT_TYPE_EVENT: &str = "application/cloudevents+json";

/// `Content-Type` of a CloudEvents batch: a JSON array of structured events.
pub(crate) const CONTENT_TYPE_BATCH: &str = "application/cloudevents-batch+json";

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// `--server` is not a usable `http://` base URL.
    #[error("invalid server URL {url:?}: {detail}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Nothing answers at the server address.
    #[error("cannot reach keel at {server} (is \"keel serve\" running?)")]
    Unreachable {
        /// The server URL as given.
        server: String,
    },
    /// The server answered with an error status (an RFC 9457 problem, usually).
    #[error("{}", problem_line(*status, title.as_deref(), detail.as_deref()))]
    Problem {
        /// The HTTP status.
        status: StatusCode,
        /// The problem's `title`, when the body was a problem.
        title: Option<String>,
        /// The problem's `detail`, or the start of a body that was not a problem.
        detail: Option<String>,
    },
    /// The request failed after connecting: reset, timeout, malformed answer.
    #[error("request to {server} failed: {detail}")]
    Transport {
        /// The server URL as given.
        server: String,
        /// The cause and its causes, joined.
        detail: String,
    },
    /// A success answer whose body is not the shape the API promises.
    #[error("unexpected answer from keel: {detail}")]
    Unexpected {
        /// What did not match.
        detail: String,
    },
}

impl ClientError {
    /// True when the server could not be reached at all (it is pointless to keep trying).
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }

    /// The HTTP status of an error answer, if the server answered.
    pub(crate) fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Problem { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A request body and its `Content-Type`.
#[derive(Debug)]
pub(crate) struct Body {
    /// The `Content-Type` header.
    pub(crate) content_type: &'static str,
    /// The bytes, moved into the request without a copy.
    pub(crate) bytes: Vec<u8>,
}

/// A success answer: its status and body.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The status, always 2xx.
    pub(crate) status: StatusCode,
    /// The body as received.
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// Decodes the body as `T`, which may borrow from it; a mismatch is
    /// [`ClientError::Unexpected`].
    pub(crate) fn json<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|error| ClientError::Unexpected {
            detail: error.to_string(),
        })
    }
}

/// A client of one keel server; cheap to clone (clones share the connection pool).
#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: Url,
    server: String,
}

impl Client {
    /// A client of `server` (`http://host:port`, a bare `host:port` is taken as http) keeping up
    /// to `idle_connections_max` idle connections for reuse.
    pub(crate) fn new(server: &str, idle_connections_max: usize) -> Result<Self, ClientError> {
        let base = base_url(server)?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(idle_connections_max)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .build()
            .map_err(|error| ClientError::Transport {
                server: server.to_owned(),
                detail: error_chain(&error),
            })?;
        Ok(Self {
            http,
            base,
            server: server.to_owned(),
        })
    }

    /// The URL of the API path made of `segments` (each percent-encoded) and `query`.
    pub(crate) fn url(&self, segments: &[&str], query: &[(&str, u64)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("base_url accepts only http(s) URLs, which have a path")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in query {
                pairs.append_pair(name, &value.to_string());
            }
        }
        url
    }

    /// `GET` of an API path.
    pub(crate) async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, u64)],
    ) -> Result<Reply, ClientError> {
        self.send(Method::GET, segments, query, None).await
    }

    /// Sends one request and reads the whole answer; a non-2xx status becomes
    /// [`ClientError::Problem`].
    pub(crate) async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, u64)],
        body: Option<Body>,
    ) -> Result<Reply, ClientError> {
        self.send_to(method, self.url(segments, query), body).await
    }

    /// [`Client::send`] to a URL made by [`Client::url`] and then given query parameters that
    /// are not numbers (`?force=true`, `?after=0-17`).
    pub(crate) async fn send_to(
        &self,
        method: Method,
        url: Url,
        body: Option<Body>,
    ) -> Result<Reply, ClientError> {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, body.content_type)
                .body(body.bytes);
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.transport_error(&error))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| self.transport_error(&error))?;
        if !status.is_success() {
            return Err(problem_error(status, &bytes));
        }
        Ok(Reply {
            status,
            body: bytes.into(),
        })
    }

    fn transport_error(&self, error: &reqwest::Error) -> ClientError {
        if error.is_connect() {
            ClientError::Unreachable {
                server: self.server.clone(),
            }
        } else {
            ClientError::Transport {
                server: self.server.clone(),
                detail: error_chain(error),
            }
        }
    }
}

/// Parses `--server` into a base URL; `host:port` without a scheme means `http://host:port`.
fn base_url(server: &str) -> Result<Url, ClientError> {
    let invalid = |detail: String| ClientError::InvalidUrl {
        url: server.to_owned(),
        detail,
    };
    let with_scheme = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let url = Url::parse(&with_scheme).map_err(|error| invalid(error.to_string()))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        scheme => Err(invalid(format!("scheme {scheme:?} is not http"))),
    }
}

/// The error for a non-2xx answer: its problem's `title` and `detail`, or, when the body is not
/// a problem (a proxy's page, say), its first characters as the detail.
pub(crate) fn problem_error(status: StatusCode, body: &[u8]) -> ClientError {
    let problem = serde_json::from_slice::<Problem>(body).unwrap_or_else(|_| Problem {
        detail: Some(
            String::from_utf8_lossy(body)
                .chars()
                .take(ERROR_BODY_CHARS_MAX)
                .collect(),
        ),
        ..Problem::default()
    });
    ClientError::Problem {
        status,
        title: problem.title.and_then(one_line),
        detail: problem.detail.and_then(one_line),
    }
}

/// `text` on one line, or `None` when it is blank.
fn one_line(text: String) -> Option<String> {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (!joined.is_empty()).then_some(joined)
}

/// `404 Not Found: topic "orders" does not exist`: the status, its reason (the problem's title
/// when the status has no standard reason) and the detail (or the title, when it adds to the
/// reason).
fn problem_line(status: StatusCode, title: Option<&str>, detail: Option<&str>) -> String {
    let reason = status.canonical_reason().or(title).unwrap_or("error");
    let explanation = detail.or(title.filter(|title| !title.eq_ignore_ascii_case(reason)));
    match explanation {
        Some(explanation) => format!("{} {reason}: {explanation}", status.as_u16()),
        None => format!("{} {reason}", status.as_u16()),
    }
}

/// An error and its causes on one line, joined by `: `, skipping causes already in the text.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text = format!("{text}: {inner_text}");
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_client::TestClient as _;
    use keel_testkit::server::TestServer;

    #[test]
    fn problem_becomes_one_line_with_status_reason_and_detail() {
        // Goal: the contract's example line. Method: decode problem bodies of several shapes.
        let cases: [(u16, &str, &str); 5] = [
            (
                404,
                r#"{"type":"about:blank","title":"Not Found","status":404,
                    "detail":"topic \"orders\" does not exist"}"#,
                r#"404 Not Found: topic "orders" does not exist"#,
            ),
            (
                409,
                r#"{"title":"Topic exists","status":409}"#,
                "409 Conflict: Topic exists",
            ),
            (
                500,
                r#"{"title":"Internal Server Error"}"#,
                "500 Internal Server Error",
            ),
            (
                502,
                "<html>\n bad   gateway </html>",
                "502 Bad Gateway: <html> bad gateway </html>",
            ),
            (
                400,
                r#"{"detail":"line one\nline two"}"#,
                "400 Bad Request: line one line two",
            ),
        ];
        for (status, body, expected) in cases {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(problem_error(status, body.as_bytes()).to_string(), expected);
        }
    }

    #[test]
    fn non_problem_body_is_cut_short() {
        // Goal: a huge HTML error page does not flood the terminal.
        let body = "x".repeat(10_000);
        let message = problem_error(StatusCode::BAD_GATEWAY, body.as_bytes()).to_string();
        assert!(message.len() < ERROR_BODY_CHARS_MAX + 40, "{message}");
    }

    #[test]
    fn url_encodes_segments_under_the_base_path() {
        // Goal: names never escape their path segment; a base path prefix is kept.
        let client = Client::new("http://example.test:7171/prefix/", 1).unwrap();
        let url = client.url(&["v1", "topics", "a b/c"], &[("from", 3), ("max", 10)]);
        assert_eq!(
            url.as_str(),
            "http://example.test:7171/prefix/v1/topics/a%20b%2Fc?from=3&max=10"
        );
        let bare = Client::new("127.0.0.1:7171", 1).unwrap();
        assert_eq!(
            bare.url(&["healthz"], &[]).as_str(),
            "http://127.0.0.1:7171/healthz"
        );
    }

    #[test]
    fn non_http_server_url_is_refused() {
        let error = Client::new("ftp://example.test", 1).unwrap_err();
        assert!(error.to_string().contains("not http"), "{error}");
    }

    #[tokio::test]
    async fn refused_connection_names_the_server() {
        // Goal: the "is keel serve running?" hint. Method: connect to a port just released.
        let server = format!("http://127.0.0.1:{}", keel_testkit::process::free_port());
        let error = Client::new(&server, 1)
            .unwrap()
            .get(&["v1", "topics"], &[])
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("cannot reach keel at {server} (is \"keel serve\" running?)")
        );
    }

    #[tokio::test]
    async fn problem_answers_become_problem_errors_with_status_and_detail() {
        // Goal: real problem+json answers become the one-line error, keeping their status.
        // Method: requests a real server refuses: an unknown topic (404), a conflicting create.
        let server = TestServer::start_in_temp_dir().await;
        server.create_topic("orders", 1).await;
        let client = server.cli_client();
        let other_config = Body {
            content_type: CONTENT_TYPE_JSON,
            bytes: br#"{"partitions": 2}"#.to_vec(),
        };
        let cases = [
            (
                Method::GET,
                "missing",
                None,
                StatusCode::NOT_FOUND,
                r#"404 Not Found: topic "missing" does not exist"#,
            ),
            (
                Method::PUT,
                "orders",
                Some(other_config),
                StatusCode::CONFLICT,
                r#"409 Conflict: topic "orders" already exists with another configuration"#,
            ),
        ];
        for (method, topic, body, status, message_start) in cases {
            let error = client
                .send(method, &["v1", "topics", topic], &[], body)
                .await
                .unwrap_err();
            assert_eq!(error.status(), Some(status), "{error}");
            assert!(error.to_string().starts_with(message_start), "{error}");
        }
        server.stop().await;
    }
}
