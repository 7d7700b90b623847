//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

/// `GET /healthz`: 200 once the process serves.
pub async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 503 while recovery runs; then 200, with `"status": "degraded"` and the
/// partitions that refuse service (corrupt log, failed write) when there are any — the other
/// partitions keep serving, so the node stays ready.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let Some(engine) = state.ready_engine() else {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "recovering"}))).into_response();
    };
    let unavailable = engine.unavailable_partitions();
    let status = if unavailable.is_empty() { "ready" } else { "degraded" };
    axum::Json(json!({"status": status, "unavailable_partitions": unavailable})).into_response()
}

/// `GET /metrics`: Prometheus text exposition (OpenMetrics format).
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = String::new();
    if let Some(engine) = state.ready_engine() {
        if let Err(error) = engine.metrics().encode(&mut body) {
            tracing::error!(%error, "metrics encoding failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    } else {
        body.push_str("# EOF\n");
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}
