//! The one mapping from errors to HTTP: RFC 9457 `application/problem+json` with a precise
//! `detail`. Internal causes are logged, not sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_engine::EngineError;
use serde_json::json;

/// An error answered over HTTP.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: String,
    /// Extra members of the problem object.
    extensions: serde_json::Map<String, serde_json::Value>,
    /// Whether a retry may succeed soon (`Retry-After`): true while starting or stopping,
    /// false for a partition that needs an operator.
    retry_soon: bool,
}

impl ApiError {
    /// An error with a status and a detail.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            extensions: serde_json::Map::new(),
            retry_soon: true,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// Adds a member to the problem object.
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(key.to_owned(), value);
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        let status = match &error {
            EngineError::TopicNotFound { .. }
            | EngineError::SubscriptionNotFound { .. }
            | EngineError::DeadLetterNotFound { .. }
            | EngineError::PartitionNotFound { .. }
            | EngineError::OffsetBeforeStart { .. } => StatusCode::NOT_FOUND,
            EngineError::TopicConflict { .. }
            | EngineError::SubscriptionConflict { .. }
            | EngineError::TopicHasSubscriptions { .. }
            | EngineError::WrongDeliveryMode { .. }
            | EngineError::SubscriptionPaused { .. } => StatusCode::CONFLICT,
            EngineError::Event(keel_engine::event::EventError::UnsupportedMediaType { .. }) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            EngineError::InvalidTopicName { .. }
            | EngineError::InvalidSubscription { .. }
            | EngineError::MalformedAckId { .. }
            | EngineError::InvalidConfig { .. }
            | EngineError::OffsetBeyondEnd { .. }
            | EngineError::Event(_) => StatusCode::BAD_REQUEST,
            EngineError::EventTooLarge { .. } | EngineError::BatchTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            EngineError::PartitionUnavailable { .. }
            | EngineError::TopicUnavailable { .. }
            | EngineError::SubscriptionUnavailable { .. }
            | EngineError::DataDirDamaged { .. }
            | EngineError::Corrupt { .. }
            | EngineError::ShuttingDown
            | EngineError::OriginalFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %error, source = ?std::error::Error::source(&error), "internal error");
            return Self::new(
                status,
                format!("internal error: {error}. See keel's log for details"),
            );
        }
        let mut api_error = Self::new(status, error.to_string());
        api_error.retry_soon = matches!(
            error,
            EngineError::ShuttingDown | EngineError::OriginalFailed { .. }
        );
        match &error {
            EngineError::OffsetBeforeStart { start_offset, .. } => {
                api_error = api_error.with("start_offset", json!(start_offset))
            }
            EngineError::OffsetBeyondEnd { next_offset, .. } => {
                api_error = api_error.with("next_offset", json!(next_offset))
            }
            EngineError::TopicHasSubscriptions { names, .. } => {
                api_error = api_error.with("subscriptions", json!(names))
            }
            _ => {}
        }
        api_error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(object) = body.as_object_mut() {
            object.extend(self.extensions);
        }
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE && self.retry_soon {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
