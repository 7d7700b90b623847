//! A stateful subscription's per-key state: read one key, list keys, rebuild.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use keel_api::state::{KeyState, STATE_LIST_MAX_DEFAULT, StateList};
use keel_engine::subscription::StoredKeyState;
use serde::Deserialize;

use crate::problem::ApiError;
use crate::state::AppState;

fn view(stored: &StoredKeyState) -> KeyState<'_> {
    KeyState {
        key: stored.key.clone(),
        state: &stored.state,
        version: stored.version,
        partition: stored.partition,
        offset: stored.offset,
    }
}

/// `GET /v1/subscriptions/{name}/state/{key}`.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{name}/state/{key}",
    operation_id = "getKeyState",
    tag = "state",
    params(("name" = String, Path, description = "The subscription's name"), ("key" = String, Path, description = "The key")),
    responses(
        (status = 200, description = "The key's state, its version and the event that made it.", body = keel_api::state::KeyState),
        (status = 409, description = crate::openapi::SUBSCRIPTION_CONFLICT, body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn show(
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let stored = state.engine()?.key_state(&name, &key).await?;
    Ok(Json(view(&stored)).into_response())
}

/// Query of a listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Most keys (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    max: Option<usize>,
    /// Continue after this key.
    after: Option<String>,
}

/// `GET /v1/subscriptions/{name}/state?max=&after=`: keys with state, in key order.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{name}/state",
    operation_id = "listKeyStates",
    tag = "state",
    params(("name" = String, Path, description = "The subscription's name"), ListQuery),
    responses(
        (status = 200, description = "Keys with state, in key order.", body = keel_api::state::StateList),
        (status = 409, description = crate::openapi::SUBSCRIPTION_CONFLICT, body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let Query(query) = query.map_err(|rejection| {
        ApiError::bad_request(format!("invalid query: {}", rejection.body_text()))
    })?;
    let max = query.max.unwrap_or(STATE_LIST_MAX_DEFAULT);
    let limit = keel_engine::limits::STATE_LIST_MAX;
    if !(1..=limit).contains(&max) {
        return Err(ApiError::bad_request(format!(
            "max must be between 1 and {limit}"
        )));
    }
    let (stored, more) = engine.list_state(&name, query.after, max).await?;
    let next_after = more
        .then(|| stored.last().map(|entry| entry.key.clone()))
        .flatten();
    Ok(Json(StateList {
        keys: stored.iter().map(view).collect(),
        next_after,
    })
    .into_response())
}

/// `POST /v1/subscriptions/{name}/state/rebuild`: drops every key's state and replays the
/// topic from the start. (The route is `state/{key}` so that `GET state/rebuild` still reads
/// a key named `rebuild`.)
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{name}/state/{key}",
    operation_id = "rebuildState",
    tag = "state",
    params(("name" = String, Path, description = "The subscription's name"), ("key" = String, Path, description = "Only `rebuild`: POST applies to `state/rebuild`", example = "rebuild")),
    responses(
        (status = 200, description = "Every key's state dropped; the topic replays from the start.", body = keel_api::subscriptions::SubscriptionInfo),
        (status = 405, description = "POST names another key than `rebuild`.", body = keel_api::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = crate::openapi::SUBSCRIPTION_CONFLICT, body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn rebuild(
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if key != "rebuild" {
        return Err(ApiError::new(
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            "a key's state is read with GET; POST applies to state/rebuild only",
        ));
    }
    let info = state.engine()?.rebuild_state(&name).await?;
    Ok(Json(info).into_response())
}
