//! The one error type of the client: what went wrong with a call, kept precise enough to
//! decide whether to try again.

use std::time::Duration;

use keel_api::problem::Problem;
use reqwest::StatusCode;

use crate::limits::ERROR_BODY_CHARS_MAX;

/// Why a call to a keel server failed. Each message reads well after `error: `.
///
/// ```
/// use keel_client::{ClientError, StatusCode};
///
/// let error = ClientError::Problem {
///     status: StatusCode::SERVICE_UNAVAILABLE,
///     title: Some("Service Unavailable".to_owned()),
///     detail: Some("recovering".to_owned()),
///     retry_after: None,
/// };
/// assert!(error.is_retryable());
/// assert_eq!(error.to_string(), "503 Service Unavailable: recovering");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server URL is not a usable `http://` or `https://` base URL.
    #[error("invalid server URL {url:?}: {detail}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The API token holds characters a header cannot carry.
    #[error(
        "invalid token: it must be printable ASCII without spaces, as `keel token create` prints it"
    )]
    InvalidToken,
    /// The CA certificates given are not PEM certificates.
    #[error(
        "invalid CA certificates: expected one or more PEM certificates (-----BEGIN CERTIFICATE-----)"
    )]
    InvalidCaCertificates,
    /// Nothing answers at the server address (the connection was refused or timed out).
    #[error("cannot reach keel at {server} (is \"keel serve\" running?)")]
    Unreachable {
        /// The server URL as given.
        server: String,
    },
    /// The request was sent but no answer came within the request timeout.
    #[error("request to {server} failed: {detail}")]
    Timeout {
        /// The server URL as given.
        server: String,
        /// The cause and its causes, joined.
        detail: String,
    },
    /// The server answered with an error status: an RFC 9457 problem, usually.
    #[error("{}", problem_line(*status, title.as_deref(), detail.as_deref()))]
    Problem {
        /// The HTTP status.
        status: StatusCode,
        /// The problem's `title`, on one line, when the body was a problem.
        title: Option<String>,
        /// The problem's `detail` on one line, or the start of a body that was not a problem.
        detail: Option<String>,
        /// The answer's `Retry-After` (in seconds), when it had one: how long the server
        /// asks to wait before trying again (a 429 or a 503).
        retry_after: Option<Duration>,
    },
    /// The request failed after connecting: a reset, a connection closed before the answer, a
    /// malformed answer.
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
    /// An event handed to the client is not one it can send (not a JSON object, say).
    #[error("invalid event: {detail}")]
    InvalidEvent {
        /// What is wrong with it.
        detail: String,
    },
    /// The publisher or consumer was shut down before the call could complete.
    #[error("the {what} was shut down")]
    Closed {
        /// What was shut down: `publisher`, `consumer`.
        what: &'static str,
    },
}

impl ClientError {
    /// True when the same request may succeed if sent again soon: the server was
    /// unreachable, the request timed out or its connection broke, or the server answered
    /// 408, 429 or 5xx other than 507. Other answers (400, 404, 409…) will not change by
    /// themselves, and neither will 507 (keel's disk is full, or its data directory at its
    /// cap: an operator or retention has to free space first).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout { .. } | Self::Transport { .. } => true,
            Self::Problem { status, .. } => {
                *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || (status.is_server_error() && *status != StatusCode::INSUFFICIENT_STORAGE)
            }
            Self::InvalidUrl { .. }
            | Self::InvalidToken
            | Self::InvalidCaCertificates
            | Self::Unexpected { .. }
            | Self::InvalidEvent { .. }
            | Self::Closed { .. } => false,
        }
    }

    /// True when the server could not be reached at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }

    /// How long the server asked to wait before trying again (its `Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Problem { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status of an error answer, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Problem { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A [`ClientError::Unexpected`] naming what did not decode.
    pub(crate) fn unexpected(error: &serde_json::Error) -> Self {
        Self::Unexpected {
            detail: error.to_string(),
        }
    }
}

/// The error for a non-2xx answer: its problem's `title` and `detail`, or, when the body is not
/// a problem (a proxy's page, say), its first characters as the detail.
pub(crate) fn problem_error(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> ClientError {
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
        retry_after: retry_after(headers),
    }
}

/// A `Retry-After` in seconds, as keel sends it (an HTTP date, which keel never sends, is
/// ignored).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
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
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
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
    #![allow(clippy::unwrap_used)]
    use reqwest::header::HeaderMap;

    use super::*;

    #[test]
    fn problem_becomes_one_line_with_status_reason_and_detail() {
        // Goal: the one-line form of problems of several shapes. Method: decode each.
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
            assert_eq!(
                problem_error(status, &HeaderMap::new(), body.as_bytes()).to_string(),
                expected
            );
        }
    }

    #[test]
    fn non_problem_body_is_cut_short() {
        // Goal: a huge HTML error page does not flood a terminal or a log.
        let body = "x".repeat(10_000);
        let message =
            problem_error(StatusCode::BAD_GATEWAY, &HeaderMap::new(), body.as_bytes()).to_string();
        assert!(message.len() < ERROR_BODY_CHARS_MAX + 40, "{message}");
    }

    #[test]
    fn retry_after_in_seconds_is_kept() {
        // Goal: a 429's Retry-After reaches the caller; a date or garbage is no delay.
        let mut headers = HeaderMap::new();
        let with = |value: &str, headers: &mut HeaderMap| {
            headers.insert(reqwest::header::RETRY_AFTER, value.parse().unwrap());
            problem_error(StatusCode::TOO_MANY_REQUESTS, headers, b"{}").retry_after()
        };
        assert_eq!(with("2", &mut headers), Some(Duration::from_secs(2)));
        assert_eq!(with("Wed, 21 Oct 2015 07:28:00 GMT", &mut headers), None);
        let none = problem_error(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), b"{}");
        assert_eq!(none.retry_after(), None);
    }

    #[test]
    fn only_temporary_failures_are_retryable() {
        // Goal: the publisher retries what may pass and never what will not. Method: a table.
        let problem = |status: u16| {
            problem_error(
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                b"{}",
            )
        };
        for status in [408, 429, 500, 502, 503] {
            assert!(problem(status).is_retryable(), "{status}");
        }
        for status in [400, 404, 409, 413, 415, 507] {
            assert!(!problem(status).is_retryable(), "{status}");
        }
        let server = "http://h".to_owned();
        assert!(ClientError::Unreachable { server }.is_retryable());
        assert!(!ClientError::Closed { what: "publisher" }.is_retryable());
    }
}
