//! API tokens as keel keeps them: each stored hashed (SHA-256 of its secret) through the
//! storage seam, and held in memory by id for the check every request makes.
//!
//! A token reads `keel_<id>_<secret>`: 16 hex digits of id (public: lists and revocation
//! name it) and 43 characters of secret (32 random bytes, base64url). The secret is shown
//! once, at creation; keel stores only its hash. The secrets are random and long, so one
//! SHA-256 (not a slow password hash) is what keeps them: no guess can hit one.
//!
//! Invariant: a check finds the token by id and compares hashes in constant time, so its
//! time says nothing of how much of a guessed secret was right.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use keel_api::tokens::{RateLimits, Scope, TokenInfo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::format_rfc3339_ms;
use crate::storage::Listed;

/// What every token starts with: secret scanners (and people) can tell a keel token.
pub const TOKEN_PREFIX: &str = "keel_";
/// Hex digits of a token's id.
const ID_CHARS: usize = 16;
/// Random bytes of a token's secret.
const SECRET_BYTES: usize = 32;

/// A token as stored: everything but its secret, of which only the hash is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// The public part of the token.
    pub id: String,
    /// What it is for.
    pub name: String,
    /// What it allows.
    pub scopes: Vec<Scope>,
    /// When it was created, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// When it stops working; none: until revoked.
    pub expires_at_ms: Option<i64>,
    /// SHA-256 of the secret, as lower-case hex.
    pub secret_sha256: String,
    /// Its rate limits.
    #[serde(default)]
    pub limits: RateLimits,
}

impl TokenRecord {
    /// Whether it has expired at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|expires| now_ms >= expires)
    }

    /// The token as listed.
    pub fn info(&self, now_ms: i64) -> TokenInfo {
        TokenInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            scopes: self.scopes.clone(),
            created_at: format_rfc3339_ms(self.created_at_ms),
            expires_at: self.expires_at_ms.map(format_rfc3339_ms),
            expired: self.expired(now_ms),
            limits: self.limits,
        }
    }
}

/// The tokens a backend listed that it could read; each unreadable one is logged and left
/// out (it authenticates nothing until an admin replaces it).
pub fn readable_tokens(listed: Vec<Listed<TokenRecord>>) -> Vec<TokenRecord> {
    listed
        .into_iter()
        .filter_map(|(id, token)| match token {
            Ok(token) => Some(token),
            Err(error) => {
                tracing::error!(token = %id, %error, "a stored API token cannot be read; it is ignored (revoke it and create another)");
                None
            }
        })
        .collect()
}

/// A new token: its text (shown once) and its id and secret hash (stored).
pub(crate) struct NewToken {
    /// The whole bearer token.
    pub(crate) text: String,
    /// Its id.
    pub(crate) id: String,
    /// SHA-256 of its secret, hex.
    pub(crate) secret_sha256: String,
}

/// Draws a new token from the operating system's random number generator.
pub(crate) fn new_token() -> NewToken {
    let mut id = [0u8; ID_CHARS / 2];
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut id).expect("the operating system's random number generator works");
    getrandom::fill(&mut secret).expect("the operating system's random number generator works");
    let id = hex(&id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    NewToken {
        text: format!("{TOKEN_PREFIX}{id}_{secret}"),
        secret_sha256: String::from_utf8_lossy(&sha256_hex(&secret)).into_owned(),
        id,
    }
}

/// The id and secret of a token's text; none when it is not shaped like a keel token.
fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let id = rest.get(..ID_CHARS)?;
    let secret = rest.get(ID_CHARS..)?.strip_prefix('_')?;
    Some((id, secret))
}

/// SHA-256 of `text`.
pub fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
pub fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A SHA-256 in lower-case hex, on the stack: checking a token runs on every request, so it
/// allocates nothing.
fn sha256_hex(text: &str) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (index, byte) in sha256(text).iter().enumerate() {
        out[2 * index] = DIGITS[usize::from(byte >> 4)];
        out[2 * index + 1] = DIGITS[usize::from(byte & 0x0f)];
    }
    out
}

/// The tokens as last stored, by id: what each request is checked against.
#[derive(Default)]
pub(crate) struct TokenCache {
    by_id: RwLock<HashMap<String, Arc<TokenRecord>>>,
}

impl TokenCache {
    /// Replaces every token with `tokens` (as read from storage).
    pub(crate) fn replace(&self, tokens: Vec<TokenRecord>) {
        let by_id = tokens
            .into_iter()
            .map(|token| (token.id.clone(), Arc::new(token)))
            .collect();
        *self.by_id.write().expect("tokens lock") = by_id;
    }

    /// Adds or replaces one token.
    pub(crate) fn insert(&self, token: TokenRecord) {
        let mut by_id = self.by_id.write().expect("tokens lock");
        by_id.insert(token.id.clone(), Arc::new(token));
    }

    /// Removes one token; whether it was there.
    pub(crate) fn remove(&self, id: &str) -> bool {
        self.by_id
            .write()
            .expect("tokens lock")
            .remove(id)
            .is_some()
    }

    /// Whether a token of that id is held.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.by_id.read().expect("tokens lock").contains_key(id)
    }

    /// How many tokens there are.
    pub(crate) fn len(&self) -> usize {
        self.by_id.read().expect("tokens lock").len()
    }

    /// Every token, oldest first.
    pub(crate) fn all(&self) -> Vec<Arc<TokenRecord>> {
        let mut tokens: Vec<_> = self
            .by_id
            .read()
            .expect("tokens lock")
            .values()
            .cloned()
            .collect();
        tokens.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        tokens
    }

    /// The stored token `text` is, if it is one, unexpired at `now_ms`.
    pub(crate) fn check(&self, text: &str, now_ms: i64) -> Option<Arc<TokenRecord>> {
        let (id, secret) = split(text)?;
        let token = self.by_id.read().expect("tokens lock").get(id).cloned()?;
        let presented = sha256_hex(secret);
        let valid = equal_in_constant_time(&presented, token.secret_sha256.as_bytes());
        (valid && !token.expired(now_ms)).then_some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(token: &NewToken, expires_at_ms: Option<i64>) -> TokenRecord {
        TokenRecord {
            id: token.id.clone(),
            name: "test".into(),
            scopes: vec!["admin".parse().unwrap()],
            created_at_ms: 0,
            expires_at_ms,
            secret_sha256: token.secret_sha256.clone(),
            limits: RateLimits::default(),
        }
    }

    // Goal: a token checks as itself; one changed character, another token's secret under its
    // id, a revoked or an expired token do not.
    #[test]
    fn only_the_stored_unexpired_token_checks() {
        let (first, second) = (new_token(), new_token());
        assert!(first.text.starts_with("keel_") && first.text.len() == 5 + 16 + 1 + 43);
        let cache = TokenCache::default();
        cache.insert(record(&first, Some(1_000)));
        assert!(cache.check(&first.text, 999).is_some());
        assert!(cache.check(&first.text, 1_000).is_none(), "expired");
        let mut changed = first.text.clone().into_bytes();
        let last = changed.len() - 1;
        changed[last] = if changed[last] == b'A' { b'B' } else { b'A' };
        assert!(
            cache
                .check(&String::from_utf8(changed).unwrap(), 0)
                .is_none()
        );
        let (_, second_secret) = split(&second.text).unwrap();
        let forged = format!("keel_{}_{second_secret}", first.id);
        assert!(cache.check(&forged, 0).is_none());
        for garbage in ["", "keel_", "keel_short", "Bearer x", &first.text[..30]] {
            assert!(cache.check(garbage, 0).is_none(), "{garbage}");
        }
        assert!(cache.remove(&first.id));
        assert!(cache.check(&first.text, 0).is_none(), "revoked");
    }
}
