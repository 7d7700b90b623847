//! Liveness, readiness and metrics.

use axum::extract::State;
use std::collections::HashSet;

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_api::health::{Liveness, Readiness, ReadyStatus, Tasks};

use crate::state::AppState;

/// `GET /healthz`: 200 once the process serves.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    responses(
        (status = 200, description = "The process serves.", body = keel_api::health::Liveness),
    ),
)]
pub async fn healthz() -> impl IntoResponse {
    Json(Liveness {
        status: "ok".to_owned(),
    })
}

/// `GET /v1/tasks`: the supervised engine tasks that have failed since start, with their
/// state (restarting, failing, failed), failures and last failure.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    operation_id = "listTasks",
    tag = "health",
    responses(
        (status = 200, description = "The supervised tasks that have failed since start.", body = keel_api::health::Tasks),
    ),
)]
pub async fn tasks(State(state): State<AppState>) -> Result<Json<Tasks>, crate::problem::ApiError> {
    let engine = state.engine()?;
    Ok(Json(Tasks {
        tasks: engine.failed_tasks(),
    }))
}

/// `GET /readyz`: 503 while recovery runs; then 200, with `"status": "degraded"` and the
/// partitions and subscriptions that refuse service (corrupt log, failed write) when there
/// are any — the others keep serving, so the node stays ready. A damaged data directory (a
/// directory keel created is missing) is 503 `"damaged"`: the node lacks what it acknowledged
/// and must not take traffic until an operator acts.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready: `ok`, or `degraded` with the partitions and subscriptions that refuse service.", body = keel_api::health::Readiness),
        (status = 503, description = "Not ready: `starting` while recovery runs, `damaged` when the data directory lacks what keel created.", body = keel_api::health::Readiness),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = |status| Readiness {
        data_dir_damage: None,
        status,
        unavailable_partitions: None,
        unavailable_subscriptions: None,
        publishing_refused: Vec::new(),
    };
    let Some(engine) = state.ready_engine() else {
        let body = readiness(ReadyStatus::Recovering);
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    };
    let damage = engine.storage_damage();
    if !damage.is_empty() {
        let body = Readiness {
            data_dir_damage: Some(damage),
            ..readiness(ReadyStatus::Damaged)
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let partitions = engine.unavailable_partitions();
    let subscriptions = engine.unavailable_subscriptions();
    let status = if partitions.is_empty() && subscriptions.is_empty() {
        ReadyStatus::Ready
    } else {
        ReadyStatus::Degraded
    };
    let body = Readiness {
        unavailable_partitions: Some(partitions),
        unavailable_subscriptions: Some(subscriptions),
        publishing_refused: engine.publishing_refused(),
        ..readiness(status)
    };
    Json(body).into_response()
}

/// `GET /metrics`: the Prometheus text format (0.0.4), or OpenMetrics when the scraper's
/// `Accept` asks for it (Prometheus itself does).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    responses(
        (status = 200, description = "The Prometheus text format (0.0.4), or OpenMetrics when `Accept` asks for it.", content(("text/plain"), ("application/openmetrics-text"))),
    ),
)]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let mut body = String::new();
    if let Some(engine) = state.ready_engine() {
        engine.refresh_subscription_gauges();
        if let Err(error) = engine.metrics().encode(&mut body) {
            tracing::error!(%error, "metrics encoding failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    } else {
        body.push_str("# EOF\n");
    }
    if wants_openmetrics {
        let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        return ([(header::CONTENT_TYPE, content_type)], body).into_response();
    }
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        openmetrics_to_prometheus_text(&body),
    )
        .into_response()
}

/// Rewrites OpenMetrics text into the Prometheus text format: a counter family `x` is
/// named by its samples, `x_total`; `# UNIT` and `# EOF` lines do not exist there.
fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let family_line = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let (name, rest) = line.strip_prefix(prefix)?.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {rest}"))
        });
        text.push_str(family_line.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: counter families take their samples' `_total` name, OpenMetrics-only lines go,
    // everything else is kept.
    #[test]
    fn openmetrics_counters_become_prometheus_total_families() {
        let openmetrics = "# HELP keel_x Things.\n# TYPE keel_x counter\n# UNIT keel_x bytes\n\
            keel_x_total 3\n# HELP keel_g A gauge.\n# TYPE keel_g gauge\nkeel_g 1\n# EOF\n";
        let expected = "# HELP keel_x_total Things.\n# TYPE keel_x_total counter\n\
            keel_x_total 3\n# HELP keel_g A gauge.\n# TYPE keel_g gauge\nkeel_g 1\n";
        assert_eq!(openmetrics_to_prometheus_text(openmetrics), expected);
    }
}
