//! API tokens: create, list, revoke (admin only: see `auth.rs`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_api::tokens::{TokenList, TokenRequest};

use crate::body::json_object;
use crate::problem::ApiError;
use crate::state::AppState;

/// `POST /v1/tokens`: 201 with the token, which is shown this once.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    operation_id = "createToken",
    tag = "tokens",
    request_body = keel_api::tokens::TokenRequest,
    responses(
        (status = 201, description = "Created; the token is shown in this answer only.", body = keel_api::tokens::CreatedToken),
        (status = 409, description = "keel holds as many tokens as it may; revoke one first.", body = keel_api::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let request: TokenRequest = json_object(&body, "token request")?;
    let created = engine.create_token(request).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `GET /v1/tokens`: every token, without its secret.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    operation_id = "listTokens",
    tag = "tokens",
    responses(
        (status = 200, description = "Every token, without its secret.", body = keel_api::tokens::TokenList),
    ),
)]
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let tokens = state.engine()?.list_tokens();
    Ok(Json(TokenList { tokens }).into_response())
}

/// `DELETE /v1/tokens/{id}`: 204; the token authenticates nothing from now on.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    operation_id = "revokeToken",
    tag = "tokens",
    params(("id" = String, Path, description = "The token's id (16 hex digits)")),
    responses(
        (status = 204, description = "Revoked: the token authenticates nothing from now on."),
    ),
)]
pub async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.engine()?.revoke_token(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
