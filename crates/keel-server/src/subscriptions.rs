//! Subscriptions: create, list, describe, delete, pause, resume, seek; pull, ack, nack,
//! reject.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_engine::subscription::pull::Settle;
use keel_engine::subscription::spec::{StartPosition, SubscriptionSpec};
use keel_engine::subscription::{PulledMessage, SubscriptionInfo};
use keel_engine::{Created, duration};
use serde::{Deserialize, Serialize};

use crate::body::json_object;
use crate::problem::ApiError;
use crate::state::AppState;

/// The answer to a create: the subscription, and the generated secret once.
#[derive(Serialize)]
struct CreatedBody {
    #[serde(flatten)]
    info: SubscriptionInfo,
    /// The sink's signing secret: shown only when keel generated it, in this answer only.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

/// `PUT /v1/subscriptions/{name}`: 201 when created, 200 when it exists with this spec.
pub async fn create(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let spec: SubscriptionSpec = json_object(&body, "subscription spec")?;
    let created = engine.create_subscription(&name, spec).await?;
    let status = if created.created == Created::New {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = CreatedBody {
        info: created.info,
        secret: created.secret.map(|secret| secret.to_string()),
    };
    Ok((status, Json(body)).into_response())
}

#[derive(Serialize)]
struct SubscriptionList {
    subscriptions: Vec<SubscriptionInfo>,
}

/// `GET /v1/subscriptions`.
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let subscriptions = state.engine()?.list_subscriptions()?;
    Ok(Json(SubscriptionList { subscriptions }).into_response())
}

/// `GET /v1/subscriptions/{name}`.
pub async fn describe(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.engine()?.describe_subscription(&name)?).into_response())
}

/// `DELETE /v1/subscriptions/{name}`: 204.
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.engine()?.delete_subscription(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/subscriptions/{name}/pause`.
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.engine()?.pause_subscription(&name).await?).into_response())
}

/// `POST /v1/subscriptions/{name}/resume`.
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.engine()?.resume_subscription(&name).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeekBody {
    to: StartPosition,
}

/// `POST /v1/subscriptions/{name}/seek` with `{"to": "earliest" | "latest" | {"time": …}}`.
pub async fn seek(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let seek: SeekBody = json_object(&body, "seek request")?;
    Ok(Json(engine.seek_subscription(&name, &seek.to).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PullBody {
    /// Most messages (default 100, at most 1000).
    #[serde(default = "default_pull_max")]
    max: usize,
    /// Long-poll for the first message (default 0, at most 30s).
    #[serde(default, with = "optional_duration")]
    wait: Option<Duration>,
}

fn default_pull_max() -> usize {
    100
}

/// Writes `{"messages": [...]}` by hand: each event is JSON already, so it is copied, not
/// parsed and re-serialised.
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
            "{{\"ack_id\":\"{}\",\"attempt\":{},\"partition\":{},\"offset\":{},\"event\":{}}}",
            message.ack_id, message.attempt, message.partition, message.offset, message.event
        ));
    }
    body.push_str("]}");
    body
}

/// `POST /v1/subscriptions/{name}/pull` with `{"max": 100, "wait": "5s"}`.
pub async fn pull(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let pull: PullBody = json_object(&body, "pull request")?;
    let max_limit = keel_engine::limits::PULL_MESSAGES_MAX;
    if !(1..=max_limit).contains(&pull.max) {
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
    let messages = engine.pull(&name, pull.max, wait).await?;
    let body = encode_messages(&messages);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleBody {
    ack_ids: Vec<String>,
    /// Nack only: wait this long before the redelivery (default: the retry backoff).
    #[serde(default, with = "optional_duration")]
    delay: Option<Duration>,
}

/// `POST /v1/subscriptions/{name}/ack`.
pub async fn ack(
    state: State<AppState>,
    name: Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    settle(state, name, body, |_| Settle::Ack).await
}

/// `POST /v1/subscriptions/{name}/nack`.
pub async fn nack(
    state: State<AppState>,
    name: Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    settle(state, name, body, |delay| Settle::Nack { delay }).await
}

/// `POST /v1/subscriptions/{name}/reject`: dead-letters the events.
pub async fn reject(
    state: State<AppState>,
    name: Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    settle(state, name, body, |_| Settle::Reject).await
}

async fn settle(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
    action: fn(Option<Duration>) -> Settle,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let request: SettleBody = json_object(&body, "request")?;
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
    let result = engine.settle(&name, &request.ack_ids, action).await?;
    Ok(Json(result).into_response())
}

/// Optional durations as text (`"5s"`).
mod optional_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| super::duration::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
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
        };
        let body = encode_messages(&[message(7, r#"{"id":"a","n":1.50}"#), message(8, "{}")]);
        let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(value["messages"][1]["ack_id"], "id-8");
        assert_eq!(value["messages"][0]["attempt"], 2);
        assert!(body.contains(r#""event":{"id":"a","n":1.50}"#));
        assert_eq!(encode_messages(&[]), r#"{"messages":[]}"#);
    }
}
