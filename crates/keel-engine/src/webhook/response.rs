//! What a sink's answer means for the event (DESIGN.md §3, Standard Webhooks "Delivery success
//! and failure"), and how failures are worded for the dead-letter record.

use std::error::Error as _;
use std::time::Duration;

use reqwest::StatusCode;

use super::{AttemptOutcome, RETRY_AFTER_MAX};

/// A sink's answer, as much of it as classification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reply {
    /// The status code.
    pub(super) status: StatusCode,
    /// The `Location` header (for redirects), lossy UTF-8.
    pub(super) location: Option<String>,
    /// The `Retry-After` header, when it is text.
    pub(super) retry_after: Option<String>,
    /// The `WebHook-Allowed-Origin` header of a validation handshake's answer.
    pub(super) allowed_origin: Option<String>,
    /// The start of the body: at most [`super::ERROR_BODY_BYTES_MAX`] bytes.
    pub(super) body_start: Vec<u8>,
    /// The whole body, when the caller asked to keep it.
    pub(super) body: Vec<u8>,
    /// Why the body could not be read to its end (the answer did not arrive whole).
    pub(super) body_error: Option<String>,
}

/// Classifies a reply: 2xx delivered; 410 gone; 3xx, 408, 429, 5xx and unexpected codes
/// retried (with `Retry-After` honoured); other 4xx rejected. A reply whose body broke off is
/// retried whatever its status, since the sink's answer did not arrive whole. `now_s` (Unix
/// seconds) resolves a `Retry-After` date.
pub(super) fn classify(reply: &Reply, now_s: i64) -> AttemptOutcome {
    let status = reply.status.as_u16();
    let retry = |error: String| AttemptOutcome::Retry {
        status: Some(status),
        error,
        retry_after: reply
            .retry_after
            .as_deref()
            .and_then(|value| parse_retry_after(value, now_s)),
    };
    if let Some(body_error) = &reply.body_error {
        let line = status_line(reply.status);
        return retry(format!(
            "{line}, then the response body broke off: {body_error}"
        ));
    }
    match status {
        200..=299 => AttemptOutcome::Delivered { status },
        410 => AttemptOutcome::Gone { status },
        300..=399 => retry(redirect_error(reply)),
        408 | 429 | 500..=599 => retry(status_error(reply)),
        400..=499 => AttemptOutcome::Reject {
            status,
            error: status_error(reply),
        },
        _ => retry(format!("unexpected status {}", status_error(reply))),
    }
}

/// `301 Moved Permanently: redirect to <location> not followed`.
fn redirect_error(reply: &Reply) -> String {
    let line = status_line(reply.status);
    match &reply.location {
        Some(location) => format!("{line}: redirect to {location} not followed"),
        None => format!("{line}: redirect without a Location header not followed"),
    }
}

/// The status line and, when there is one, the start of the body: `400 Bad Request: <body>`.
fn status_error(reply: &Reply) -> String {
    let line = status_line(reply.status);
    let body = String::from_utf8_lossy(&reply.body_start);
    let body = body.trim();
    if body.is_empty() {
        line
    } else {
        format!("{line}: {body}")
    }
}

/// `404 Not Found`: the code and its standard reason phrase (or the code alone).
fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// Reads `Retry-After` (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date (IMF-fixdate, or
/// the obsolete asctime form) counted from `now_s`. A date in the past means no wait; any
/// delay is capped at [`RETRY_AFTER_MAX`]. `None` when the value is neither.
pub(super) fn parse_retry_after(value: &str, now_s: i64) -> Option<Duration> {
    let value = value.trim();
    let delay = if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        // All digits, so parsing fails only by overflow: a delay beyond any cap.
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let date_s = parse_http_date(value)?;
        Duration::from_secs(u64::try_from(date_s.saturating_sub(now_s)).unwrap_or(0))
    };
    Some(delay.min(RETRY_AFTER_MAX))
}

/// Parses an HTTP-date into Unix seconds: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) or
/// asctime (`Sun Nov  6 08:49:37 1994`). The obsolete RFC 850 form, with its two-digit year,
/// is not read.
fn parse_http_date(value: &str) -> Option<i64> {
    let imf_fixdate = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let asctime = time::macros::format_description!(
        "[weekday repr:short] [month repr:short] [day padding:space] [hour]:[minute]:[second] \
         [year]"
    );
    let parsed = time::PrimitiveDateTime::parse(value, &imf_fixdate)
        .or_else(|_| time::PrimitiveDateTime::parse(value, &asctime))
        .ok()?;
    Some(parsed.assume_utc().unix_timestamp())
}

/// Words a transport failure (no status): the stage, then the causes at the bottom of the
/// error chain, with a short name for the usual socket errors (`cannot connect: tcp connect
/// error: connection refused`). The URL is left out, since it may carry credentials.
pub(super) fn transport_error(error: &reqwest::Error) -> String {
    let stage = if error.is_connect() {
        "cannot connect"
    } else {
        "the request failed"
    };
    format!("{stage}: {}", error_causes(error))
}

/// The causes under a reqwest error, outermost first: `error reading a body from connection:
/// connection closed by the sink`. The error's own text when it has no cause.
pub(super) fn error_causes(error: &reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = match cause.downcast_ref::<std::io::Error>() {
            Some(io_error) => io_error_text(io_error),
            None => cause.to_string(),
        };
        // Layers often repeat the message of the error they wrap, and hyper's client adds
        // one that only names its own stage (`client error (Connect)`).
        if causes.last() != Some(&text) && !text.starts_with("client error (") {
            causes.push(text);
        }
        source = cause.source();
    }
    if causes.is_empty() {
        return error.to_string();
    }
    causes.join(": ")
}

/// A socket error's usual name (`connection refused`), or its own text.
fn io_error_text(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let name = match error.kind() {
        ErrorKind::ConnectionRefused => "connection refused",
        ErrorKind::ConnectionReset => "connection reset by the sink",
        ErrorKind::ConnectionAborted => "connection aborted",
        ErrorKind::NotConnected => "not connected",
        ErrorKind::BrokenPipe => "connection closed by the sink (broken pipe)",
        ErrorKind::TimedOut => "timed out",
        ErrorKind::UnexpectedEof => "connection closed by the sink",
        ErrorKind::AddrNotAvailable => "address not available",
        ErrorKind::HostUnreachable => "host unreachable",
        ErrorKind::NetworkUnreachable => "network unreachable",
        _ => return error.to_string(),
    };
    name.to_owned()
}
