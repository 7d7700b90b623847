//! `POST /v1/topics/{topic}/events`: the three CloudEvents HTTP modes, read by the engine's
//! HTTP binding (`keel_engine::event::http`): structured, batched (all or nothing) and binary.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_api::publish::PublishResults;
use keel_engine::event::http::HttpRequest;

use crate::problem::ApiError;
use crate::state::AppState;

/// Publishes; answers `{"results": [{"id", "partition", "offset", "duplicate"}]}` once durable.
pub async fn publish(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let body = body.map_err(|rejection| body_error(&rejection, state.request_bytes_max))?;
    let attributes: Vec<(&str, &[u8])> = headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().strip_prefix("ce-")?, value.as_bytes())))
        .collect();
    let request = HttpRequest {
        content_type: headers
            .get(header::CONTENT_TYPE)
            .map(|value| value.to_str().unwrap_or("")),
        attributes: &attributes,
        body: &body,
    };
    let results = engine.publish_http(&topic, &request).await?;
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
