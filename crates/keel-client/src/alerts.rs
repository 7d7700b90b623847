//! Alert rules: put, list, describe, delete.

use keel_api::alerts::{AlertList, AlertRule, AlertStatus};
use reqwest::Method;

use crate::client::{Answer, Body, Client};
use crate::error::ClientError;

impl Client {
    /// `PUT /v1/alerts/{name}`: creates or replaces the rule. The answer's status is 201 when
    /// it was created, 200 when it replaced a rule or was there already; a bad rule is a 400
    /// problem naming the member.
    pub async fn put_alert(
        &self,
        name: &str,
        rule: &AlertRule,
    ) -> Result<Answer<AlertStatus>, ClientError> {
        let body = Body::json(rule)?;
        self.call(Method::PUT, &["v1", "alerts", name], &[], Some(body))
            .await
    }

    /// `GET /v1/alerts`: every rule with its instances, by name.
    pub async fn list_alerts(&self) -> Result<Answer<AlertList>, ClientError> {
        self.call(Method::GET, &["v1", "alerts"], &[], None).await
    }

    /// `GET /v1/alerts/{name}`: the rule and its instances' state, value and since when.
    pub async fn describe_alert(&self, name: &str) -> Result<Answer<AlertStatus>, ClientError> {
        self.call(Method::GET, &["v1", "alerts", name], &[], None)
            .await
    }

    /// `DELETE /v1/alerts/{name}`: its firing instances resolve.
    pub async fn delete_alert(&self, name: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &["v1", "alerts", name], &[], None)
            .await?;
        Ok(())
    }
}
