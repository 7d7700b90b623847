//! Subscriptions: create, list, describe, delete, pause, resume, seek; pull, ack, nack,
//! reject.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_api::pull::{PULL_MAX_DEFAULT, PullRequest, SettleRequest};
use keel_api::subscriptions::{
    CreatedSubscription, RotateSecretRequest, RotatedSecret, SeekRequest, SubscriptionList,
};
use keel_api::tokens::{Action, Resource};
use keel_engine::subscription::PulledMessage;
use keel_engine::subscription::pull::Settle;
use keel_engine::subscription::spec::SubscriptionSpec;
use keel_engine::webhook::WebhookSecret;
use keel_engine::{Created, duration};

use crate::auth::Caller;
use crate::body::json_object;
use crate::problem::ApiError;
use crate::state::AppState;

/// `PUT /v1/subscriptions/{name}`: 201 when created; 200 when it exists with this spec, or
/// was updated in place to it; 409 when the spec changes a member that cannot change.
#[utoipa::path(
    put,
    path = "/v1/subscriptions/{name}",
    operation_id = "putSubscription",
    tag = "subscriptions",
    params(("name" = String, Path, description = "The subscription's name")),
    request_body = keel_api::subscriptions::SubscriptionSpec,
    responses(
        (status = 201, description = "Created (a new push subscription's signing secret is shown in this answer only).", body = keel_api::subscriptions::CreatedSubscription),
        (status = 200, description = "It exists with this spec, or was updated in place to it (`changed`).", body = keel_api::subscriptions::CreatedSubscription),
        (status = 409, description = "The spec changes a member that cannot change.", body = keel_api::problem::Problem, content_type = "application/problem+json"),
        (status = 507, description = "The disk is full.", body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let spec: SubscriptionSpec = json_object(&body, "subscription spec")?;
    // A subscription hands on its topic's events: making one is reading them.
    caller.require(&[Action::Read], Resource::Topic(&spec.topic))?;
    let created = engine.create_subscription(&name, spec).await?;
    let status = if created.created == Created::New {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = CreatedSubscription {
        info: created.info,
        secret: created.secret.map(|secret| secret.to_string()),
        changed: created.changed,
    };
    Ok((status, Json(body)).into_response())
}

/// `GET /v1/subscriptions`: the subscriptions the caller's scopes cover.
#[utoipa::path(
    get,
    path = "/v1/subscriptions",
    operation_id = "listSubscriptions",
    tag = "subscriptions",
    responses(
        (status = 200, description = "The subscriptions the caller's scopes cover.", body = keel_api::subscriptions::SubscriptionList),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let mut subscriptions = state.engine()?.list_subscriptions()?;
    subscriptions.retain(|info| caller.sees(Resource::Subscription(&info.name)));
    let forwarded = headers.contains_key(crate::cluster::FORWARDED_HEADER);
    let Some(cluster) = state.cluster.clone().filter(|_| !forwarded) else {
        return Ok(Json(SubscriptionList { subscriptions }).into_response());
    };
    // Cluster mode: every node's, by name (each node lists what the same token covers).
    let mut all: Vec<serde_json::Value> = subscriptions
        .iter()
        .filter_map(|info| serde_json::to_value(info).ok())
        .collect();
    let authorization = headers.get(axum::http::header::AUTHORIZATION);
    all.extend(crate::cluster::peer_subscriptions(&state, &*cluster, authorization).await);
    all.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Json(serde_json::json!({ "subscriptions": all })).into_response())
}

/// `GET /v1/subscriptions/{name}`.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{name}",
    operation_id = "getSubscription",
    tag = "subscriptions",
    params(("name" = String, Path, description = "The subscription's name")),
    responses(
        (status = 200, description = "The subscription, its progress and its sink's health.", body = keel_api::subscriptions::SubscriptionInfo),
    ),
)]
pub async fn describe(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.engine()?.describe_subscription(&name)?).into_response())
}

/// `DELETE /v1/subscriptions/{name}`: 204.
#[utoipa::path(
    delete,
    path = "/v1/subscriptions/{name}",
    operation_id = "deleteSubscription",
    tag = "subscriptions",
    params(("name" = String, Path, description = "The subscription's name")),
    responses(
        (status = 204, description = "Deleted."),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.engine()?.delete_subscription(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/subscriptions/{name}/pause`.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{name}/pause",
    operation_id = "pauseSubscription",
    tag = "subscriptions",
    params(("name" = String, Path, description = "The subscription's name")),
    responses(
        (status = 200, description = "Paused.", body = keel_api::subscriptions::SubscriptionInfo),
        (status = 409, description = crate::openapi::SUBSCRIPTION_CONFLICT, body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.engine()?.pause_subscription(&name).await?).into_response())
}

/// `POST /v1/subscriptions/{name}/resume`.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{name}/resume",
    operation_id = "resumeSubscription",
    tag = "subscriptions",
    params(("name" = String, Path, description = "The subscription's name")),
    responses(
        (status = 200, description = "Resumed.", body = keel_api::subscriptions::SubscriptionInfo),
        (status = 409, description = crate::openapi::SUBSCRIPTION_CONFLICT, body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.engine()?.resume_subscription(&name).await?).into_response())
}

/// `POST /v1/subscriptions/{name}/seek` with `{"to": "earliest" | "latest" | {"time": …}}`.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{name}/seek",
    operation_id = "seekSubscription",
    tag = "subscriptions",
    params(("name" = String, Path, description = "The subscription's name")),
    request_body = keel_api::subscriptions::SeekRequest,
    responses(
        (status = 200, description = "Moved: delivery goes on from the new position.", body = keel_api::subscriptions::SubscriptionInfo),
        (status = 409, description = crate::openapi::SUBSCRIPTION_CONFLICT, body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn seek(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let seek: SeekRequest = json_object(&body, "seek request")?;
    Ok(Json(engine.seek_subscription(&name, &seek.to).await?).into_response())
}

/// `POST /v1/subscriptions/{name}/secret/rotate` with `{"overlap": "24h", "secret": …}`
/// (both optional): the new secret, shown in this answer only.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{name}/secret/rotate",
    operation_id = "rotateSecret",
    tag = "subscriptions",
    params(("name" = String, Path, description = "The subscription's name")),
    request_body = Option<keel_api::subscriptions::RotateSecretRequest>,
    responses(
        (status = 200, description = "The new secret, shown in this answer only.", body = keel_api::subscriptions::RotatedSecret),
        (status = 409, description = crate::openapi::SUBSCRIPTION_CONFLICT, body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let request: RotateSecretRequest = json_object(&body, "secret rotation")?;
    let overlap = match &request.overlap {
        Some(text) => duration::parse(text)
            .map_err(|error| ApiError::bad_request(format!("overlap: {error}")))?,
        None => Duration::ZERO,
    };
    let secret = match &request.secret {
        Some(text) => Some(
            WebhookSecret::parse(text)
                .map_err(|error| ApiError::bad_request(format!("secret: {error}")))?,
        ),
        None => None,
    };
    let rotated = engine.rotate_secret(&name, overlap, secret).await?;
    let answer = RotatedSecret {
        secret: rotated.secret.to_string(),
        previous_secret_until: rotated.previous_secret_until,
    };
    Ok(Json(answer).into_response())
}

/// Writes the answer, keel-api's [`Pulled`](keel_api::pull::Pulled), by hand: each event is
/// JSON already, so it is copied, not parsed and re-serialised.
fn encode_messages(messages: &[PulledMessage]) -> String {
    let bytes: usize = messages
        .iter()
        .map(|message| message.event.len() + 128)
        .sum();
    let mut body = String::with_capacity(bytes + 16);
    body.push_str("{\"messages\":[");
    for (index, message) in messages.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        debug_assert!(
            serde_json::from_str::<&serde_json::value::RawValue>(&message.event).is_ok(),
            "stored events are JSON"
        );
        // Ack ids are URL-safe base64: nothing to escape.
        body.push_str(&format!(
            "{{\"ack_id\":\"{}\",\"attempt\":{},\"partition\":{},\"offset\":{},\"event\":{}",
            message.ack_id, message.attempt, message.partition, message.offset, message.event
        ));
        if let Some(state) = &message.state {
            let json = state.state.as_deref().unwrap_or("null");
            body.push_str(&format!(
                ",\"state\":{json},\"state_version\":{}",
                state.version
            ));
        }
        body.push('}');
    }
    body.push_str("]}");
    body
}

/// `POST /v1/subscriptions/{name}/pull` with `{"max": 100, "wait": "5s"}`.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{name}/pull",
    operation_id = "pull",
    tag = "delivery",
    params(("name" = String, Path, description = "The subscription's name")),
    request_body = Option<keel_api::pull::PullRequest>,
    responses(
        (status = 200, description = "Messages to settle by their ack ids (none within `wait`: an empty list).", body = keel_api::pull::Pulled),
        (status = 409, description = crate::openapi::SUBSCRIPTION_CONFLICT, body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn pull(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let pull: PullRequest = json_object(&body, "pull request")?;
    let max = pull.max.unwrap_or(PULL_MAX_DEFAULT);
    let max_limit = keel_engine::limits::PULL_MESSAGES_MAX;
    if !(1..=max_limit).contains(&max) {
        return Err(ApiError::bad_request(format!(
            "max must be between 1 and {max_limit}"
        )));
    }
    let wait = pull.wait.unwrap_or_default();
    let wait_limit = Duration::from_millis(keel_engine::limits::READ_WAIT_MS_MAX);
    if wait > wait_limit {
        return Err(ApiError::bad_request(format!(
            "wait must be at most {}",
            duration::format(wait_limit)
        )));
    }
    let messages = engine.pull(&name, max, wait).await?;
    let body = encode_messages(&messages);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// `POST /v1/subscriptions/{name}/ack`.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{name}/ack",
    operation_id = "ack",
    tag = "delivery",
    params(("name" = String, Path, description = "The subscription's name")),
    request_body = keel_api::pull::SettleRequest,
    responses(
        (status = 200, description = "Settles: the events are done (with a stateful handler's state and events to emit, in `acks`).", body = keel_api::pull::AckResult),
        (status = 409, description = "Stale: state or events for a delivery that is no longer current (`stale_ack_ids`); or the subscription's kind does not allow this.", body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn ack(
    state: State<AppState>,
    name: Path<String>,
    caller: Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    settle(state, name, caller, body, |_| Settle::Ack).await
}

/// `POST /v1/subscriptions/{name}/nack`.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{name}/nack",
    operation_id = "nack",
    tag = "delivery",
    params(("name" = String, Path, description = "The subscription's name")),
    request_body = keel_api::pull::SettleRequest,
    responses(
        (status = 200, description = "Delivers the events again, after `delay` or the retry policy's backoff.", body = keel_api::pull::AckResult),
        (status = 409, description = "Stale: state or events for a delivery that is no longer current (`stale_ack_ids`); or the subscription's kind does not allow this.", body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn nack(
    state: State<AppState>,
    name: Path<String>,
    caller: Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    settle(state, name, caller, body, |delay| Settle::Nack { delay }).await
}

/// `POST /v1/subscriptions/{name}/reject`: dead-letters the events.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{name}/reject",
    operation_id = "reject",
    tag = "delivery",
    params(("name" = String, Path, description = "The subscription's name")),
    request_body = keel_api::pull::SettleRequest,
    responses(
        (status = 200, description = "Dead-letters the events.", body = keel_api::pull::AckResult),
        (status = 409, description = "Stale: state or events for a delivery that is no longer current (`stale_ack_ids`); or the subscription's kind does not allow this.", body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn reject(
    state: State<AppState>,
    name: Path<String>,
    caller: Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    settle(state, name, caller, body, |_| Settle::Reject).await
}

async fn settle(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
    action: fn(Option<Duration>) -> Settle,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let request: SettleRequest = json_object(&body, "request")?;
    let action = action(request.delay);
    if request.delay.is_some() && !matches!(action, Settle::Nack { .. }) {
        return Err(ApiError::bad_request("only nack takes a delay"));
    }
    let delay_limit = keel_engine::limits::RETRY_DELAY_MAX;
    if request.delay.is_some_and(|delay| delay > delay_limit) {
        return Err(ApiError::bad_request(format!(
            "delay must be at most {}",
            duration::format(delay_limit)
        )));
    }
    if !request.acks.is_empty() {
        // An ack that emits events publishes them.
        for emitted in request.acks.iter().flat_map(|ack| &ack.emit) {
            caller.require(&[Action::Publish], Resource::Topic(&emitted.topic))?;
        }
        if !matches!(action, Settle::Ack) {
            return Err(ApiError::bad_request(
                "only ack takes \"acks\" (with state and events to emit); nack and reject take \"ack_ids\"",
            ));
        }
        let result = engine
            .ack_with_commits(&name, &request.ack_ids, request.acks)
            .await?;
        return Ok(Json(result).into_response());
    }
    let result = engine.settle(&name, &request.ack_ids, action).await?;
    Ok(Json(result).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the hand-written pull answer is valid JSON carrying each event unchanged.
    #[test]
    fn encoded_messages_are_json_with_events_verbatim() {
        let message = |offset, event: &str| PulledMessage {
            ack_id: format!("id-{offset}"),
            attempt: 2,
            partition: 1,
            offset,
            event: std::sync::Arc::from(event),
            state: None,
        };
        let body = encode_messages(&[message(7, r#"{"id":"a","n":1.50}"#), message(8, "{}")]);
        let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(value["messages"][1]["ack_id"], "id-8");
        assert_eq!(value["messages"][0]["attempt"], 2);
        assert!(body.contains(r#""event":{"id":"a","n":1.50}"#));
        assert_eq!(encode_messages(&[]), r#"{"messages":[]}"#);
    }

    // Goal: the hand-written pull answer is keel-api's `Pulled` body byte for byte, so readers
    // of the typed form read it whole. Method: parse it as `Pulled` and serialise that again.
    #[test]
    fn encoded_messages_are_the_api_body() {
        let message = PulledMessage {
            ack_id: "AAAAAQ".to_owned(),
            attempt: 3,
            partition: 2,
            offset: 17,
            event: std::sync::Arc::from(r#"{"id":"a","data":{"n":1.50}}"#),
            state: Some(keel_engine::subscription::KeyState {
                state: Some(std::sync::Arc::from(r#"{"n":2}"#)),
                version: 4,
            }),
        };
        let body = encode_messages(&[message.clone(), message]);
        let typed: keel_api::pull::Pulled = serde_json::from_str(&body).expect("Pulled");
        assert_eq!(typed.messages[1].offset, 17);
        assert_eq!(serde_json::to_string(&typed).expect("serialise"), body);
    }
}
