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
pub async fn show(
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let stored = state.engine()?.key_state(&name, &key).await?;
    Ok(Json(view(&stored)).into_response())
}

/// Query of a listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Most keys (default 100, at most 1000).
    max: Option<usize>,
    /// Continue after this key.
    after: Option<String>,
}

/// `GET /v1/subscriptions/{name}/state?max=&after=`: keys with state, in key order.
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
