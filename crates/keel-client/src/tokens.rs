//! API tokens: create, list, revoke (the admin scope).

use keel_api::tokens::{CreatedToken, TokenList, TokenRequest};
use reqwest::Method;

use crate::client::{Answer, Body, Client};
use crate::error::ClientError;

impl Client {
    /// `POST /v1/tokens`: a new token, whose text the answer shows this once.
    pub async fn create_token(
        &self,
        request: &TokenRequest,
    ) -> Result<Answer<CreatedToken>, ClientError> {
        let body = Body::json(request)?;
        self.call(Method::POST, &["v1", "tokens"], &[], Some(body))
            .await
    }

    /// `GET /v1/tokens`: every token, without its secret.
    pub async fn list_tokens(&self) -> Result<Answer<TokenList>, ClientError> {
        self.call(Method::GET, &["v1", "tokens"], &[], None).await
    }

    /// `DELETE /v1/tokens/{id}`: the token authenticates nothing from now on.
    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &["v1", "tokens", id], &[], None)
            .await?;
        Ok(())
    }
}
