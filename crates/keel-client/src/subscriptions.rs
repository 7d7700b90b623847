//! Subscriptions: create, list, describe, delete, pause, resume, seek, rotate a push sink's
//! signing secret; and pull delivery: pull, ack (plain or stateful), nack, reject.

use std::time::Duration;

use keel_api::pull::{AckResult, PullRequest, Pulled, SettleRequest};
use keel_api::state::StatefulAck;
use keel_api::subscriptions::{
    CreatedSubscription, RotateSecretRequest, RotatedSecret, SeekRequest, StartPosition,
    SubscriptionInfo, SubscriptionList, SubscriptionSettings,
};
use reqwest::Method;

use crate::client::{Answer, Body, CONTENT_TYPE_JSON, Client};
use crate::error::ClientError;

/// How a pulled message is settled: the last segment of its settle path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Done: the event leaves the subscription (stateful: commits state and emitted events).
    Ack,
    /// Failed: delivered again after the request's `delay`, or the retry backoff.
    Nack,
    /// Failed for good: the event goes to the dead-letter queue now.
    Reject,
}

impl Settlement {
    /// The path segment: `ack`, `nack` or `reject`.
    pub fn path(self) -> &'static str {
        match self {
            Settlement::Ack => "ack",
            Settlement::Nack => "nack",
            Settlement::Reject => "reject",
        }
    }
}

impl Client {
    /// `PUT /v1/subscriptions/{name}` with `settings` (the server's defaults for what they
    /// leave out). 201 when created, 200 when it existed with this spec, 409 otherwise.
    ///
    /// ```no_run
    /// # async fn example(client: &keel_client::Client) -> Result<(), keel_client::ClientError> {
    /// use keel_api::subscriptions::{Ordering, SubscriptionSettings};
    ///
    /// let settings = SubscriptionSettings {
    ///     topic: "orders".to_owned(),
    ///     ordering: Some(Ordering::Key),
    ///     stateful: true,
    ///     ..SubscriptionSettings::default()
    /// };
    /// client.create_subscription("ledger", &settings).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create_subscription(
        &self,
        name: &str,
        settings: &SubscriptionSettings,
    ) -> Result<Answer<CreatedSubscription>, ClientError> {
        self.create_subscription_from_json(name, Body::json(settings)?.bytes)
            .await
    }

    /// [`Client::create_subscription`] with a spec as JSON bytes (a spec file, say), passed on
    /// as it is: the server checks it and names what is wrong.
    pub async fn create_subscription_from_json(
        &self,
        name: &str,
        spec: Vec<u8>,
    ) -> Result<Answer<CreatedSubscription>, ClientError> {
        let body = Body {
            content_type: CONTENT_TYPE_JSON,
            bytes: spec,
        };
        self.call(Method::PUT, &["v1", "subscriptions", name], &[], Some(body))
            .await
    }

    /// `GET /v1/subscriptions`: every subscription, by name.
    pub async fn list_subscriptions(&self) -> Result<Answer<SubscriptionList>, ClientError> {
        self.call(Method::GET, &["v1", "subscriptions"], &[], None)
            .await
    }

    /// `GET /v1/subscriptions/{name}`: spec, lag, in flight, counters, progress.
    pub async fn describe_subscription(
        &self,
        name: &str,
    ) -> Result<Answer<SubscriptionInfo>, ClientError> {
        self.call(Method::GET, &["v1", "subscriptions", name], &[], None)
            .await
    }

    /// `DELETE /v1/subscriptions/{name}`.
    pub async fn delete_subscription(&self, name: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &["v1", "subscriptions", name], &[], None)
            .await?;
        Ok(())
    }

    /// `POST /v1/subscriptions/{name}/pause`: no deliveries until resumed.
    pub async fn pause_subscription(
        &self,
        name: &str,
    ) -> Result<Answer<SubscriptionInfo>, ClientError> {
        self.call(
            Method::POST,
            &["v1", "subscriptions", name, "pause"],
            &[],
            None,
        )
        .await
    }

    /// `POST /v1/subscriptions/{name}/resume`.
    pub async fn resume_subscription(
        &self,
        name: &str,
    ) -> Result<Answer<SubscriptionInfo>, ClientError> {
        self.call(
            Method::POST,
            &["v1", "subscriptions", name, "resume"],
            &[],
            None,
        )
        .await
    }

    /// `POST /v1/subscriptions/{name}/seek`: read from `to` next.
    pub async fn seek_subscription(
        &self,
        name: &str,
        to: StartPosition,
    ) -> Result<Answer<SubscriptionInfo>, ClientError> {
        let body = Body::json(&SeekRequest { to })?;
        let path = ["v1", "subscriptions", name, "seek"];
        self.call(Method::POST, &path, &[], Some(body)).await
    }

    /// `POST /v1/subscriptions/{name}/secret/rotate`: a new signing secret for a push
    /// subscription (`request.secret`, or generated), shown in this answer only; the current
    /// one keeps signing beside it for `request.overlap`.
    pub async fn rotate_secret(
        &self,
        name: &str,
        request: &RotateSecretRequest,
    ) -> Result<Answer<RotatedSecret>, ClientError> {
        let body = Body::json(request)?;
        let path = ["v1", "subscriptions", name, "secret", "rotate"];
        self.call(Method::POST, &path, &[], Some(body)).await
    }

    /// `POST /v1/subscriptions/{name}/pull`: up to `max` messages, waiting up to `wait` for a
    /// first one. Each must be settled by its `ack_id` before the subscription's ack timeout.
    /// For a loop that does this for you, see [`Consumer`](crate::Consumer).
    pub async fn pull(
        &self,
        name: &str,
        max: Option<usize>,
        wait: Option<Duration>,
    ) -> Result<Answer<Pulled<'static>>, ClientError> {
        let body = Body::json(&PullRequest { max, wait })?;
        let path = ["v1", "subscriptions", name, "pull"];
        self.call(Method::POST, &path, &[], Some(body)).await
    }

    /// `POST /v1/subscriptions/{name}/{ack,nack,reject}` with `request`: the general form of
    /// [`Client::ack`], [`Client::ack_stateful`], [`Client::nack`] and [`Client::reject`].
    pub async fn settle(
        &self,
        name: &str,
        settlement: Settlement,
        request: &SettleRequest,
    ) -> Result<Answer<AckResult>, ClientError> {
        let body = Body::json(request)?;
        let path = ["v1", "subscriptions", name, settlement.path()];
        self.call(Method::POST, &path, &[], Some(body)).await
    }

    /// Acknowledges pulled messages: their events leave the subscription. Ids no longer
    /// outstanding come back in [`AckResult::stale`].
    pub async fn ack(
        &self,
        name: &str,
        ack_ids: Vec<String>,
    ) -> Result<Answer<AckResult>, ClientError> {
        let request = SettleRequest {
            ack_ids,
            ..SettleRequest::default()
        };
        self.settle(name, Settlement::Ack, &request).await
    }

    /// Acknowledges messages of a stateful subscription, committing with each, at once, its
    /// key's new state and the events it emits. [`AckResult::results`] says, per ack, whether
    /// its commit was applied or stale.
    ///
    /// ```no_run
    /// # async fn example(client: &keel_client::Client, ack_id: String)
    /// #     -> Result<(), keel_client::ClientError> {
    /// use keel_api::state::{CommitOutcome, StatefulAck};
    /// use serde_json::value::to_raw_value;
    ///
    /// let state = to_raw_value(&serde_json::json!({"count": 3})).expect("JSON");
    /// let ack = StatefulAck { ack_id, state: Some(state), emit: Vec::new() };
    /// let answer = client.ack_stateful("ledger", vec![ack]).await?;
    /// assert_eq!(answer.value().results[0].outcome, CommitOutcome::Applied);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ack_stateful(
        &self,
        name: &str,
        acks: Vec<StatefulAck>,
    ) -> Result<Answer<AckResult>, ClientError> {
        let request = SettleRequest {
            acks,
            ..SettleRequest::default()
        };
        self.settle(name, Settlement::Ack, &request).await
    }

    /// Gives pulled messages back: each is delivered again after `delay`, or after the
    /// subscription's retry backoff when none is given, and dead-lettered after its last
    /// attempt.
    pub async fn nack(
        &self,
        name: &str,
        ack_ids: Vec<String>,
        delay: Option<Duration>,
    ) -> Result<Answer<AckResult>, ClientError> {
        let request = SettleRequest {
            ack_ids,
            acks: Vec::new(),
            delay,
        };
        self.settle(name, Settlement::Nack, &request).await
    }

    /// Sends pulled messages to the subscription's dead-letter queue now.
    pub async fn reject(
        &self,
        name: &str,
        ack_ids: Vec<String>,
    ) -> Result<Answer<AckResult>, ClientError> {
        let request = SettleRequest {
            ack_ids,
            ..SettleRequest::default()
        };
        self.settle(name, Settlement::Reject, &request).await
    }
}
