//! The one mapping from errors to HTTP: RFC 9457 `application/problem+json` with a precise
//! `detail`, written as keel-api's [`Problem`]. Internal causes are logged, not sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_api::problem::{self, Problem};
use keel_engine::EngineError;
use keel_engine::error::{ErrorClass, PublishError, StreamError, SubscriptionError, TopicError};

/// An error answered over HTTP.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// The problem's `detail` and extra members; `type`, `title` and `status` follow from
    /// `status` when it is answered. Boxed: handlers return it in every `Result`.
    problem: Box<Problem>,
    /// A 429's or 503's `Retry-After`, in seconds: when a retry may succeed (1 while
    /// starting or stopping); none for a partition that needs an operator.
    retry_after: Option<u64>,
    /// A 401's `WWW-Authenticate` challenge.
    challenge: Option<&'static str>,
}

impl ApiError {
    /// An error with a status and a detail.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            problem: Box::new(Problem {
                detail: Some(detail.into()),
                ..Problem::default()
            }),
            retry_after: Some(1),
            challenge: None,
        }
    }

    /// 401 Unauthorized with a Bearer challenge (RFC 6750): `invalid_token` when a token was
    /// sent and refused, a bare challenge when none was.
    pub fn unauthorized(detail: impl Into<String>, invalid_token: bool) -> Self {
        let mut error = Self::new(StatusCode::UNAUTHORIZED, detail);
        error.challenge = Some(if invalid_token {
            "Bearer realm=\"keel\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"keel\""
        });
        error
    }

    /// 400 Bad Request.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 429 Too Many Requests, to retry after `wait` (rounded up to whole seconds, at least 1).
    pub fn too_many_requests(detail: impl Into<String>, wait: std::time::Duration) -> Self {
        let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, detail);
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        error.retry_after = Some(seconds.max(1));
        error
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        // Exhaustive, without a wildcard: a new class is a compile error here, never a 500.
        let status = match error.class() {
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
            ErrorClass::Conflict => StatusCode::CONFLICT,
            ErrorClass::Invalid => StatusCode::BAD_REQUEST,
            ErrorClass::Forbidden => StatusCode::FORBIDDEN,
            ErrorClass::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorClass::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorClass::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ErrorClass::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %error, source = ?std::error::Error::source(&error), "internal error");
            return Self::new(
                status,
                format!("internal error: {error}. See keel's log for details"),
            );
        }
        let mut api_error = Self::new(status, error.to_string());
        // 507 has no `Retry-After`: space returns when retention runs or an operator acts,
        // not at a time keel could promise.
        let retry_soon = matches!(
            error,
            EngineError::ShuttingDown
                | EngineError::Publish(
                    PublishError::OriginalFailed { .. }
                        | PublishError::Overloaded { .. }
                        | PublishError::StorageUnavailable { .. }
                )
        );
        api_error.retry_after = retry_soon.then_some(1);
        match error {
            EngineError::Topic(TopicError::OffsetBeforeStart { start_offset, .. }) => {
                api_error.problem.start_offset = Some(start_offset);
            }
            EngineError::Topic(TopicError::OffsetBeyondEnd { next_offset, .. }) => {
                api_error.problem.next_offset = Some(next_offset);
            }
            EngineError::Topic(TopicError::HasSubscriptions { names, .. }) => {
                api_error.problem.subscriptions = Some(names);
            }
            EngineError::Subscription(SubscriptionError::StaleAcks { ack_ids }) => {
                api_error.problem.stale_ack_ids = Some(ack_ids);
            }
            EngineError::Stream(StreamError::VersionMismatch { current, .. }) => {
                api_error.problem.current_version = Some(current);
            }
            _ => {}
        }
        api_error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            problem_type: Some("about:blank".to_owned()),
            title: Some(self.status.canonical_reason().unwrap_or("Error").to_owned()),
            status: Some(self.status.as_u16()),
            ..*self.problem
        };
        let body = serde_json::to_string(&body).expect("a problem of strings and numbers");
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(problem::CONTENT_TYPE),
        );
        // One second: the shortest delay `Retry-After` can say. An overloaded queue drains
        // at disk speed (its default mark is about half a second of writing), and a start or
        // stop takes about as long.
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        let retry_status = matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        );
        if retry_status && let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Most bytes of a plain-text error answer [`plain_errors_as_problems`] reads.
const PLAIN_ERROR_BYTES_MAX: usize = 4096;

/// Turns an error answer that is not a problem (axum's own rejections, such as a path that is
/// not UTF-8 or a body over the limit, answer in plain text, and a method a path does not take
/// with an empty 405) into `application/problem+json`
/// with the same status, its text as the detail, and its other headers (`Allow`) kept: every
/// error keel answers is a problem, as the OpenAPI document says.
pub(crate) async fn plain_errors_as_problems(response: Response) -> Response {
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE);
    let plain = content_type.is_none_or(|value| {
        value
            .to_str()
            .is_ok_and(|value| value.starts_with("text/plain"))
    });
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, PLAIN_ERROR_BYTES_MAX).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
        _ => match parts.headers.get(header::ALLOW) {
            Some(allow) if status == StatusCode::METHOD_NOT_ALLOWED => format!(
                "this path does not take this method; it takes {}",
                allow.to_str().unwrap_or("others")
            ),
            _ => status
                .canonical_reason()
                .unwrap_or("the request failed")
                .to_owned(),
        },
    };
    let problem = ApiError::new(status, text).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    let (problem_parts, body) = problem.into_parts();
    for (name, value) in &problem_parts.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, body)
}
