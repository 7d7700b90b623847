//! Stateful subscriptions' per-key state: one key, or a page of keys.

use keel_api::state::{KeyState, StateList};
use keel_api::subscriptions::SubscriptionInfo;
use reqwest::Method;

use crate::client::{Answer, Client};
use crate::error::ClientError;

impl Client {
    /// `GET /v1/subscriptions/{name}/state/{key}`: the key's state, version and position; a
    /// 404 problem for a key without state.
    pub async fn key_state(
        &self,
        name: &str,
        key: &str,
    ) -> Result<Answer<KeyState<'static>>, ClientError> {
        let path = ["v1", "subscriptions", name, "state", key];
        self.call(Method::GET, &path, &[], None).await
    }

    /// `GET /v1/subscriptions/{name}/state?after=&max=`: up to `max` keys with state (the
    /// server's default when none), in key order, after key `after`; pass the page's
    /// `next_after` for the next.
    pub async fn list_state(
        &self,
        name: &str,
        after: Option<&str>,
        max: Option<usize>,
    ) -> Result<Answer<StateList<'static>>, ClientError> {
        let max = max.map(|max| max.to_string());
        let mut query = Vec::new();
        if let Some(after) = after {
            query.push(("after", after));
        }
        if let Some(max) = &max {
            query.push(("max", max.as_str()));
        }
        let path = ["v1", "subscriptions", name, "state"];
        self.call(Method::GET, &path, &query, None).await
    }

    /// `POST /v1/subscriptions/{name}/state/rebuild`: drops every key's state and replays
    /// the topic from the start; answers once the state is dropped (the replay goes on).
    pub async fn rebuild_state(&self, name: &str) -> Result<Answer<SubscriptionInfo>, ClientError> {
        let path = ["v1", "subscriptions", name, "state", "rebuild"];
        self.call(Method::POST, &path, &[], None).await
    }
}
