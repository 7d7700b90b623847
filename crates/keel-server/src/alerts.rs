//! Alert rules: put, describe, list, delete.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_api::alerts::{AlertList, AlertRule};
use keel_engine::RulePut;

use crate::body::json_object;
use crate::problem::ApiError;
use crate::state::AppState;

/// `PUT /v1/alerts/{name}`: 201 when created; 200 when it replaced a rule or was there
/// already. Answers the rule's status.
#[utoipa::path(
    put,
    path = "/v1/alerts/{name}",
    operation_id = "putAlert",
    tag = "alerts",
    params(("name" = String, Path, description = "The alert rule's name")),
    request_body = keel_api::alerts::AlertRule,
    responses(
        (status = 201, description = "Created.", body = keel_api::alerts::AlertStatus),
        (status = 200, description = "Replaced a rule, or it was there already.", body = keel_api::alerts::AlertStatus),
        (status = 409, description = "keel holds as many rules as it may; delete one first.", body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn put(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let rule: AlertRule = json_object(&body, "alert rule")?;
    let (put, status) = engine.put_alert_rule(&name, rule).await?;
    let code = match put {
        RulePut::Created => StatusCode::CREATED,
        RulePut::Replaced | RulePut::Unchanged => StatusCode::OK,
    };
    Ok((code, Json(status)).into_response())
}

/// `GET /v1/alerts`: every rule with its instances' state, value and since when.
#[utoipa::path(
    get,
    path = "/v1/alerts",
    operation_id = "listAlerts",
    tag = "alerts",
    responses(
        (status = 200, description = "Every rule with its instances' state.", body = keel_api::alerts::AlertList),
    ),
)]
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let alerts = state.engine()?.list_alerts();
    Ok(Json(AlertList { alerts }).into_response())
}

/// `GET /v1/alerts/{name}`.
#[utoipa::path(
    get,
    path = "/v1/alerts/{name}",
    operation_id = "getAlert",
    tag = "alerts",
    params(("name" = String, Path, description = "The alert rule's name")),
    responses(
        (status = 200, description = "The rule and its instances.", body = keel_api::alerts::AlertStatus),
    ),
)]
pub async fn describe(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.engine()?.alert_status(&name)?).into_response())
}

/// `DELETE /v1/alerts/{name}`: 204.
#[utoipa::path(
    delete,
    path = "/v1/alerts/{name}",
    operation_id = "deleteAlert",
    tag = "alerts",
    params(("name" = String, Path, description = "The alert rule's name")),
    responses(
        (status = 204, description = "Deleted."),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.engine()?.delete_alert_rule(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
