//! Topic administration: create, list, describe, delete.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_api::tokens::Resource;
use keel_api::topics::{TopicConfig, TopicList};
use keel_engine::Created;

use crate::auth::Caller;
use crate::problem::ApiError;
use crate::state::AppState;

/// `PUT /v1/topics/{topic}`: 201 when created, 200 when it exists with this configuration.
pub async fn create(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let config: TopicConfig = if body.iter().all(u8::is_ascii_whitespace) {
        TopicConfig::default()
    } else {
        if body.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad_request(
                "a topic configuration must be a JSON object, like {\"partitions\": 8}",
            ));
        }
        serde_json::from_slice(&body).map_err(|error| {
            ApiError::bad_request(format!("invalid topic configuration: {error}"))
        })?
    };
    let created = engine.create_topic(&topic, config).await?;
    let status = if created == Created::New {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(engine.describe_topic(&topic)?)).into_response())
}

/// `GET /v1/topics`: the topics the caller's scopes cover.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    engine.refresh_topics().await;
    let mut topics = engine.list_topics()?;
    topics.retain(|topic| caller.sees(Resource::Topic(&topic.name)));
    Ok(Json(TopicList { topics }).into_response())
}

/// `GET /v1/topics/{topic}`.
pub async fn describe(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    engine.find_topic(&topic).await;
    Ok(Json(engine.describe_topic(&topic)?).into_response())
}

/// Query of a delete.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Delete the topic's subscriptions too.
    #[serde(default)]
    force: bool,
}

/// `DELETE /v1/topics/{topic}[?force=true]`: 204; 409 while subscriptions read the topic,
/// unless forced.
pub async fn delete(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::bad_request(format!("invalid query: {}", rejection.body_text()))
    })?;
    state.engine()?.delete_topic(&topic, query.force).await?;
    Ok(StatusCode::NO_CONTENT)
}
