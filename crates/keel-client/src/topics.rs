//! Topics: create, list, describe, delete.

use keel_api::topics::{TopicInfo, TopicList, TopicSettings};
use reqwest::Method;

use crate::client::{Answer, Body, Client};
use crate::error::ClientError;

impl Client {
    /// `PUT /v1/topics/{name}`: creates the topic with `settings` (the server's defaults for
    /// what they leave out). The answer's status is 201 when it was created, 200 when it
    /// existed with this configuration; another configuration is a 409 problem.
    pub async fn create_topic(
        &self,
        name: &str,
        settings: &TopicSettings,
    ) -> Result<Answer<TopicInfo>, ClientError> {
        let body = Body::json(settings)?;
        self.call(Method::PUT, &["v1", "topics", name], &[], Some(body))
            .await
    }

    /// `GET /v1/topics`: every topic, by name.
    pub async fn list_topics(&self) -> Result<Answer<TopicList>, ClientError> {
        self.call(Method::GET, &["v1", "topics"], &[], None).await
    }

    /// `GET /v1/topics/{name}`: the topic's configuration and per-partition figures.
    pub async fn describe_topic(&self, name: &str) -> Result<Answer<TopicInfo>, ClientError> {
        self.call(Method::GET, &["v1", "topics", name], &[], None)
            .await
    }

    /// `DELETE /v1/topics/{name}`: a 409 problem while subscriptions read it, unless `force`
    /// (which deletes them too).
    pub async fn delete_topic(&self, name: &str, force: bool) -> Result<(), ClientError> {
        let query: &[(&str, &str)] = if force { &[("force", "true")] } else { &[] };
        self.send(Method::DELETE, &["v1", "topics", name], query, None)
            .await?;
        Ok(())
    }
}
