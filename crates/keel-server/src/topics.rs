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
#[utoipa::path(
    put,
    path = "/v1/topics/{topic}",
    operation_id = "putTopic",
    tag = "topics",
    params(("topic" = String, Path, description = "The topic's name")),
    request_body = Option<keel_api::topics::TopicConfig>,
    responses(
        (status = 201, description = "Created.", body = keel_api::topics::TopicInfo),
        (status = 200, description = "It exists with this configuration.", body = keel_api::topics::TopicInfo),
        (status = 409, description = "It exists with another configuration.", body = keel_api::problem::Problem, content_type = "application/problem+json"),
        (status = 507, description = "The disk is full.", body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/v1/topics",
    operation_id = "listTopics",
    tag = "topics",
    responses(
        (status = 200, description = "The topics the caller's scopes cover.", body = keel_api::topics::TopicList),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/v1/topics/{topic}",
    operation_id = "getTopic",
    tag = "topics",
    params(("topic" = String, Path, description = "The topic's name")),
    responses(
        (status = 200, description = "The topic.", body = keel_api::topics::TopicInfo),
    ),
)]
pub async fn describe(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    engine.find_topic(&topic).await;
    Ok(Json(engine.describe_topic(&topic)?).into_response())
}

/// Query of a delete.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Delete the topic's subscriptions too.
    #[serde(default)]
    force: bool,
}

/// `DELETE /v1/topics/{topic}[?force=true]`: 204; 409 while subscriptions read the topic,
/// unless forced.
#[utoipa::path(
    delete,
    path = "/v1/topics/{topic}",
    operation_id = "deleteTopic",
    tag = "topics",
    params(("topic" = String, Path, description = "The topic's name"), DeleteQuery),
    responses(
        (status = 204, description = "Deleted."),
        (status = 409, description = "Subscriptions read the topic (named in `subscriptions`); delete them first, or force.", body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
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
