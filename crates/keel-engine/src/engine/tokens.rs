//! The engine's API tokens: create, list, revoke (stored through the storage seam), and the
//! check each request makes, against the tokens held in memory. In a cluster, every node
//! holds every token, and reads them again as soon as the storage tells of a change made
//! elsewhere (a revocation reaches every node within moments).

use std::sync::{Arc, Weak};

use keel_api::tokens::{CreatedToken, TokenInfo, TokenRequest};

use super::{Engine, Inner};
use crate::clock::now_ms;
use crate::error::{EngineError, TokenError};
use crate::limits::{TOKEN_NAME_BYTES_MAX, TOKENS_MAX};
use crate::storage::Storage;
use crate::tokens::{TokenRecord, new_token};

impl Engine {
    /// Creates a token: stores its hash and answers the token itself, which cannot be
    /// shown again.
    pub async fn create_token(&self, request: TokenRequest) -> Result<CreatedToken, EngineError> {
        validate_token_request(&request)?;
        let _admin = self.inner.admin.lock().await;
        if self.inner.tokens.len() >= TOKENS_MAX {
            return Err(EngineError::Token(TokenError::TooMany { max: TOKENS_MAX }));
        }
        let new = new_token();
        let created_at_ms = now_ms();
        let expires_at_ms = request.expires_in.map(|lasts| {
            let lasts_ms = i64::try_from(lasts.as_millis()).unwrap_or(i64::MAX);
            created_at_ms.saturating_add(lasts_ms)
        });
        let record = TokenRecord {
            id: new.id,
            name: request.name,
            scopes: request.scopes,
            created_at_ms,
            expires_at_ms,
            secret_sha256: new.secret_sha256,
            limits: request.limits,
        };
        let stored = record.clone();
        self.blocking_storage(move |storage, _| storage.put_token(&stored), &record.id)
            .await?;
        let info = record.info(created_at_ms);
        self.inner.tokens.insert(record);
        tracing::info!(token = %info.id, name = %info.name, "API token created");
        Ok(CreatedToken {
            token: new.text,
            info,
        })
    }

    /// Every token, oldest first (their secrets are not kept).
    pub fn list_tokens(&self) -> Vec<TokenInfo> {
        let now = now_ms();
        let tokens = self.inner.tokens.all();
        tokens.iter().map(|token| token.info(now)).collect()
    }

    /// Revokes a token: deleted from storage, it authenticates nothing from now on (on other
    /// nodes of a cluster, once they hear of it: within moments).
    pub async fn revoke_token(&self, id: &str) -> Result<(), EngineError> {
        let _admin = self.inner.admin.lock().await;
        let not_found = || EngineError::Token(TokenError::NotFound { id: id.to_owned() });
        if !self.inner.tokens.contains(id) {
            return Err(not_found());
        }
        self.blocking_storage(|storage, id| storage.delete_token(id), id)
            .await?;
        self.inner.tokens.remove(id);
        tracing::info!(token = %id, "API token revoked");
        Ok(())
    }

    /// The stored token `bearer` is, if it is one and has not expired or been revoked.
    pub fn authenticate(&self, bearer: &str) -> Option<Arc<TokenRecord>> {
        self.inner.tokens.check(bearer, now_ms())
    }

    /// Reads the stored tokens, and follows the changes other nodes make to them.
    pub(super) async fn start_tokens(&self) -> Result<(), EngineError> {
        let storage: Arc<dyn Storage> = self.inner.storage.clone();
        let tokens = tokio::task::spawn_blocking(move || storage.tokens())
            .await
            .map_err(|_| EngineError::ShuttingDown)??;
        self.inner.tokens.replace(tokens);
        if let Some(changes) = self.inner.storage.token_changes() {
            spawn_following(Arc::downgrade(&self.inner), changes);
        }
        Ok(())
    }
}

/// Reads every token again each time the storage tells of a change (a missed change is
/// covered by the next: each read is whole).
fn spawn_following(inner: Weak<Inner>, mut changes: tokio::sync::watch::Receiver<u64>) {
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let Some(inner) = inner.upgrade() else { return };
            let storage = inner.storage.clone();
            match tokio::task::spawn_blocking(move || storage.tokens()).await {
                Ok(Ok(tokens)) => inner.tokens.replace(tokens),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot read the API tokens again; retrying at the next change")
                }
                Err(_) => return,
            }
        }
    });
}

fn validate_token_request(request: &TokenRequest) -> Result<(), EngineError> {
    let invalid = |detail: String| EngineError::Token(TokenError::Invalid { detail });
    let name = request.name.trim();
    if name.is_empty() || request.name.len() > TOKEN_NAME_BYTES_MAX {
        return Err(invalid(format!(
            "name must be 1 to {TOKEN_NAME_BYTES_MAX} bytes (what the token is for, like \"billing-service\")"
        )));
    }
    if request.name.chars().any(char::is_control) {
        return Err(invalid("name must not hold control characters".into()));
    }
    if request.scopes.is_empty() {
        return Err(invalid(
            "scopes must name at least one scope, like \"publish:orders.*\"".into(),
        ));
    }
    if request.expires_in.is_some_and(|lasts| lasts.is_zero()) {
        return Err(invalid(
            "expires_in must be longer than 0 (leave it out for a token that lasts until revoked)"
                .into(),
        ));
    }
    let limits = request.limits;
    if limits.publish_per_second == Some(0) || limits.pull_per_second == Some(0) {
        return Err(invalid(
            "a rate limit must be at least 1 per second (leave it out for none)".into(),
        ));
    }
    Ok(())
}
