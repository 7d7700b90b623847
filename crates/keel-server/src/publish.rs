//! `POST /v1/topics/{topic}/events[?expected_version=N]`: the three CloudEvents HTTP modes,
//! read by the engine's HTTP binding (`keel_engine::event::http`): structured, batched (all or
//! nothing) and binary; with `expected_version`, a conditional append to one key's stream.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_api::publish::PublishResults;
use keel_engine::event::http::HttpRequest;
use keel_engine::trace_context::TraceContext;
use tracing::Instrument as _;

use crate::problem::ApiError;
use crate::rate_limit::Published;
use crate::state::AppState;

/// Query of a publish.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PublishQuery {
    /// Append only if the events' key is at this version (0: a key without events).
    expected_version: Option<u64>,
}

/// Publishes; answers `{"results": [{"id", "partition", "offset", "duplicate"}]}` once durable
/// (and, for a conditional append, the key's new `"version"`).
#[utoipa::path(
    post,
    path = "/v1/topics/{topic}/events",
    operation_id = "publish",
    tag = "events",
    params(("topic" = String, Path, description = "The topic's name"), PublishQuery, ("ce-specversion" = Option<String>, Header, description = "Binary mode: `1.0`; with `ce-id`, `ce-source`, `ce-type` and any other attribute as `ce-` headers, and the data as the body")),
    request_body(description = "CloudEvents in one of the three HTTP modes: structured (one event), batched (all or nothing), or binary (any other content type, the attributes in `ce-` headers).", content((crate::openapi::CloudEvent = "application/cloudevents+json"), (Vec<crate::openapi::CloudEvent> = "application/cloudevents-batch+json"), ("application/octet-stream"))),
    responses(
        (status = 200, description = "Stored and durable: one result per event, in order.", body = keel_api::publish::PublishResults),
        (status = 409, description = "A conditional append found the key at another version (`current_version`).", body = keel_api::problem::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The content type is not one keel reads.", body = keel_api::problem::Problem, content_type = "application/problem+json"),
        (status = 507, description = "The disk is full.", body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn publish(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    query: Result<Query<PublishQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let Query(query) = query.map_err(|rejection| {
        ApiError::bad_request(format!(
            "invalid query: {}; expected_version is a whole number, 0 for a key without events",
            rejection.body_text()
        ))
    })?;
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
    let answer = async {
        let answer = match query.expected_version {
            None => PublishResults {
                results: engine.publish_http(&topic, &request).await?,
                version: None,
            },
            Some(expected_version) => {
                let appended = engine
                    .append_http_expecting(&topic, &request, expected_version)
                    .await?;
                PublishResults {
                    results: appended.results,
                    version: appended.version,
                }
            }
        };
        tracing::debug!(%topic, events = answer.results.len(), "published");
        Ok::<_, ApiError>(answer)
    }
    .instrument(publish_span(&headers, &topic))
    .await?;
    let published = Published(answer.results.len() as u64);
    let mut response = (StatusCode::OK, Json(answer)).into_response();
    response.extensions_mut().insert(published);
    Ok(response)
}

/// The publish's span: a child of the caller's span when the request carries a valid W3C
/// `traceparent` header (so what keel logs while publishing joins the caller's trace), none
/// otherwise. (The events' own `traceparent` attributes are stored as sent.)
fn publish_span(headers: &HeaderMap, topic: &str) -> tracing::Span {
    let caller = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(TraceContext::parse);
    let Some(caller) = caller else {
        return tracing::Span::none();
    };
    let span = caller.child();
    tracing::info_span!(
        "publish",
        trace_id = %span.trace_id_hex(),
        span_id = %span.span_id_hex(),
        parent_id = %caller.span_id_hex(),
        topic,
    )
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
