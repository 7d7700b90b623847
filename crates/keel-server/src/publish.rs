//! `POST /v1/topics/{topic}/events`: the three CloudEvents HTTP modes.
//!
//! - structured: `Content-Type: application/cloudevents+json`, the body is one event;
//! - batched: `Content-Type: application/cloudevents-batch+json`, a JSON array, all-or-nothing
//!   (every event is validated before any is appended);
//! - binary: `ce-*` headers hold the attributes, the body is the data.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_api::publish::PublishResults;
use keel_engine::event::{self, Event};

use crate::problem::ApiError;
use crate::state::AppState;

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

/// Publishes; answers `{"results": [{"id", "partition", "offset", "duplicate"}]}` once durable.
pub async fn publish(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let body = body.map_err(|rejection| body_error(&rejection, state.request_bytes_max))?;
    // A missing topic is reported before the body is judged: it is the first thing to fix.
    engine.describe_topic(&topic)?;
    let events = parse_events(&headers, &body)?;
    let results = engine.publish(&topic, events).await?;
    Ok((StatusCode::OK, Json(PublishResults { results })).into_response())
}

fn body_error(rejection: &BytesRejection, request_bytes_max: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over the limit of {request_bytes_max} bytes; send fewer events per batch"
            ),
        );
    }
    ApiError::new(
        rejection.status(),
        format!("cannot read the request body: {}", rejection.body_text()),
    )
}

/// Picks the mode from the headers and parses the events.
pub fn parse_events(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Event>, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or(""));
    let media_type = content_type.map(|value| {
        value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    match media_type.as_deref() {
        Some(STRUCTURED) => Ok(vec![
            event::parse_structured(body).map_err(keel_engine::EngineError::from)?,
        ]),
        Some(BATCH) => Ok(event::parse_batch(body).map_err(keel_engine::EngineError::from)?),
        _ if headers.contains_key("ce-specversion") => {
            Ok(vec![binary_event(headers, content_type, body)?])
        }
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported Content-Type {}: send {STRUCTURED} (one event), {BATCH} (a JSON array of events), or binary mode (ce-specversion, ce-id, ce-source, ce-type headers with the data as body)",
                content_type.map_or("(none)".to_owned(), |value| format!("{value:?}"))
            ),
        )),
    }
}

fn binary_event(
    headers: &HeaderMap,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Event, ApiError> {
    let mut attributes = Vec::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let value = value.to_str().map_err(|_| {
            ApiError::bad_request(format!(
                "header {name} must be visible ASCII (percent-encode other characters)"
            ))
        })?;
        attributes.push((attribute, value));
    }
    Ok(event::from_binary(&attributes, content_type, body)
        .map_err(keel_engine::EngineError::from)?)
}
