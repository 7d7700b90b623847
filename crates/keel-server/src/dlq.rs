//! A subscription's dead-letter queue: list, show, redrive, purge.

use std::borrow::Cow;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use keel_api::dead_letters::{Attempt, Entry, EntryPage, Purged, RedriveRequest, Redriven};
use keel_engine::clock::format_rfc3339_ms;
use keel_engine::subscription::DeadLetterEntry;
use serde::Deserialize;

use crate::body::json_object;
use crate::problem::ApiError;
use crate::state::AppState;

/// A stored entry as the API shows it, borrowing its text: its times as RFC 3339 text.
fn entry_view(entry: &DeadLetterEntry) -> Entry<'_> {
    Entry {
        id: Cow::Borrowed(&entry.id),
        partition: entry.partition,
        offset: entry.offset,
        event: &entry.event,
        attempts: entry.attempts,
        last_status: entry.last_status,
        last_error: entry.last_error.as_deref().map(Cow::Borrowed),
        first_attempt_at: format_rfc3339_ms(entry.first_attempt_ms),
        last_attempt_at: format_rfc3339_ms(entry.last_attempt_ms),
        dead_lettered_at: format_rfc3339_ms(entry.dead_lettered_ms),
        history: entry
            .history
            .iter()
            .map(|attempt| Attempt {
                at: format_rfc3339_ms(attempt.at_ms),
                status: attempt.status,
                error: attempt.error.as_deref().map(Cow::Borrowed),
            })
            .collect(),
    }
}

/// Query of a list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Most entries (default 100, at most 1000).
    #[param(minimum = 1)]
    limit: Option<usize>,
    /// Continue after this entry id.
    after: Option<String>,
}

/// `GET /v1/subscriptions/{name}/dlq?limit=&after=`: entries, oldest first.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{name}/dlq",
    operation_id = "listDeadLetters",
    tag = "dead letters",
    params(("name" = String, Path, description = "The subscription's name"), ListQuery),
    responses(
        (status = 200, description = "Entries, oldest first.", body = keel_api::dead_letters::EntryPage),
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
    let limit = query.limit.unwrap_or(100);
    if limit == 0 {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    let (stored, more) = engine.dlq_list(&name, query.after, limit).await?;
    let next_after = more
        .then(|| stored.last().map(|entry| entry.id.clone()))
        .flatten();
    let entries = stored.iter().map(entry_view).collect();
    Ok(Json(EntryPage {
        entries,
        next_after,
    })
    .into_response())
}

/// `GET /v1/subscriptions/{name}/dlq/{id}`.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{name}/dlq/{id}",
    operation_id = "getDeadLetter",
    tag = "dead letters",
    params(("name" = String, Path, description = "The subscription's name"), ("id" = String, Path, description = "The entry's id, `{partition}-{offset}`")),
    responses(
        (status = 200, description = "The entry with its attempts.", body = keel_api::dead_letters::Entry),
        (status = 409, description = crate::openapi::SUBSCRIPTION_CONFLICT, body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn show(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_entry_id(&id)?;
    let entry = state.engine()?.dlq_get(&name, id).await?;
    Ok(Json(entry_view(&entry)).into_response())
}

/// `POST /v1/subscriptions/{name}/dlq/redrive` with `{"ids": [...]}` or `{"all": true}`.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{name}/dlq/redrive",
    operation_id = "redriveDeadLetters",
    tag = "dead letters",
    params(("name" = String, Path, description = "The subscription's name")),
    request_body = keel_api::dead_letters::RedriveRequest,
    responses(
        (status = 200, description = "Delivered again.", body = keel_api::dead_letters::Redriven),
        (status = 409, description = crate::openapi::SUBSCRIPTION_CONFLICT, body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn redrive(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let request: RedriveRequest = json_object(&body, "redrive request")?;
    let ids = match (request.ids, request.all) {
        (Some(ids), false) if !ids.is_empty() => {
            ids.iter().try_for_each(|id| check_entry_id(id))?;
            Some(ids)
        }
        (None, true) => None,
        _ => {
            return Err(ApiError::bad_request(
                r#"name the entries to redrive: {"ids": ["0-17", ...]} or {"all": true}"#,
            ));
        }
    };
    let redriven = engine.dlq_redrive(&name, ids).await?;
    Ok(Json(Redriven { redriven }).into_response())
}

/// Entry ids are `{partition}-{offset}`: anything else is a mistake, not a missing entry.
fn check_entry_id(id: &str) -> Result<(), ApiError> {
    let well_formed = id.split_once('-').is_some_and(|(partition, offset)| {
        partition.parse::<u32>().is_ok() && offset.parse::<u64>().is_ok()
    });
    if well_formed {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{id:?} is not a dead-letter entry id: ids are PARTITION-OFFSET, like 0-17 (see the dlq list)"
        )))
    }
}

/// `DELETE /v1/subscriptions/{name}/dlq`: deletes every entry not being redriven.
#[utoipa::path(
    delete,
    path = "/v1/subscriptions/{name}/dlq",
    operation_id = "purgeDeadLetters",
    tag = "dead letters",
    params(("name" = String, Path, description = "The subscription's name")),
    responses(
        (status = 200, description = "Deleted every entry not being redriven.", body = keel_api::dead_letters::Purged),
        (status = 409, description = crate::openapi::SUBSCRIPTION_CONFLICT, body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn purge(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let purged = state.engine()?.dlq_purge(&name).await?;
    Ok(Json(Purged { purged }).into_response())
}
