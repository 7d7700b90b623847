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
pub async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let request: TokenRequest = json_object(&body, "token request")?;
    let created = engine.create_token(request).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `GET /v1/tokens`: every token, without its secret.
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let tokens = state.engine()?.list_tokens();
    Ok(Json(TokenList { tokens }).into_response())
}

/// `DELETE /v1/tokens/{id}`: 204; the token authenticates nothing from now on.
pub async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.engine()?.revoke_token(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
