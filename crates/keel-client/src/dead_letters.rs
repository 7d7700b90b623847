//! A subscription's dead-letter queue: list, show, redrive, purge.

use keel_api::dead_letters::{Entry, EntryPage, Purged, RedriveRequest, Redriven};
use reqwest::Method;

use crate::client::{Answer, Body, Client};
use crate::error::ClientError;

impl Client {
    /// `GET /v1/subscriptions/{name}/dlq`: up to `limit` entries (the server's default when
    /// none), oldest first, after entry `after`; pass the page's `next_after` for the next.
    pub async fn list_dead_letters(
        &self,
        name: &str,
        limit: Option<u64>,
        after: Option<&str>,
    ) -> Result<Answer<EntryPage<'static>>, ClientError> {
        let limit = limit.map(|limit| limit.to_string());
        let mut query = Vec::new();
        if let Some(limit) = &limit {
            query.push(("limit", limit.as_str()));
        }
        if let Some(after) = after {
            query.push(("after", after));
        }
        let path = ["v1", "subscriptions", name, "dlq"];
        self.call(Method::GET, &path, &query, None).await
    }

    /// `GET /v1/subscriptions/{name}/dlq/{id}`: one entry, with its attempt history.
    pub async fn show_dead_letter(
        &self,
        name: &str,
        id: &str,
    ) -> Result<Answer<Entry<'static>>, ClientError> {
        let path = ["v1", "subscriptions", name, "dlq", id];
        self.call(Method::GET, &path, &[], None).await
    }

    /// `POST /v1/subscriptions/{name}/dlq/redrive`: hands entries back to the subscription;
    /// each leaves the queue once acknowledged.
    pub async fn redrive_dead_letters(
        &self,
        name: &str,
        request: &RedriveRequest,
    ) -> Result<Answer<Redriven>, ClientError> {
        let body = Body::json(request)?;
        let path = ["v1", "subscriptions", name, "dlq", "redrive"];
        self.call(Method::POST, &path, &[], Some(body)).await
    }

    /// `DELETE /v1/subscriptions/{name}/dlq`: deletes every entry for good.
    pub async fn purge_dead_letters(&self, name: &str) -> Result<Answer<Purged>, ClientError> {
        let path = ["v1", "subscriptions", name, "dlq"];
        self.call(Method::DELETE, &path, &[], None).await
    }
}
