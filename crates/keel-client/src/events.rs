//! Events: publish (structured, batched, or bytes encoded by the caller) and read a partition.

use std::time::Duration;

use keel_api::publish::PublishResults;
use keel_api::read::Records;
use reqwest::Method;
use serde::Serialize;

use crate::client::{Answer, Body, CONTENT_TYPE_BATCH, CONTENT_TYPE_EVENT, Client};
use crate::error::ClientError;

impl Client {
    /// `POST /v1/topics/{topic}/events` of one CloudEvent in structured mode (a JSON object
    /// with `id`, `source`, `type`, `specversion`…). Answers once the event is durable; a
    /// repeated (`source`, `id`) answers the original position with `duplicate: true`.
    ///
    /// ```no_run
    /// # async fn example(client: &keel_client::Client) -> Result<(), keel_client::ClientError> {
    /// let event = serde_json::json!({"specversion": "1.0", "id": "o-1", "source": "shop",
    ///     "type": "order.created", "data": {"amount": 42}});
    /// let answer = client.publish("orders", &event).await?;
    /// let stored = &answer.value().results[0];
    /// println!("partition {} offset {}", stored.partition, stored.offset);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish(
        &self,
        topic: &str,
        event: &impl Serialize,
    ) -> Result<Answer<PublishResults>, ClientError> {
        let bytes = encode(event)?;
        self.publish_encoded(
            topic,
            Body {
                content_type: CONTENT_TYPE_EVENT,
                bytes,
            },
        )
        .await
    }

    /// `POST /v1/topics/{topic}/events` of a batch, all or nothing; the results are in the
    /// order of `events`. For batching and retries done for you, see
    /// [`Publisher`](crate::Publisher).
    pub async fn publish_batch<E: Serialize>(
        &self,
        topic: &str,
        events: &[E],
    ) -> Result<Answer<PublishResults>, ClientError> {
        let bytes = encode(events)?;
        self.publish_encoded(
            topic,
            Body {
                content_type: CONTENT_TYPE_BATCH,
                bytes,
            },
        )
        .await
    }

    /// `POST /v1/topics/{topic}/events` of events the caller encoded: one structured event
    /// ([`CONTENT_TYPE_EVENT`]) or a batch ([`CONTENT_TYPE_BATCH`]). For callers that build
    /// bodies once and send them many times (a load generator) or pass on JSON they read.
    pub async fn publish_encoded(
        &self,
        topic: &str,
        body: Body,
    ) -> Result<Answer<PublishResults>, ClientError> {
        self.call(
            Method::POST,
            &["v1", "topics", topic, "events"],
            &[],
            Some(body),
        )
        .await
    }

    /// `GET /v1/topics/{topic}/partitions/{partition}/events`: up to `max` records from offset
    /// `from`, waiting up to `wait` for a first one when there is none yet. Continue from
    /// [`Records::next_read_offset`].
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: u64,
        wait: Option<Duration>,
    ) -> Result<Answer<Records<'static>>, ClientError> {
        let partition = partition.to_string();
        let (from, max) = (from.to_string(), max.to_string());
        let wait_ms = wait.map(|wait| wait.as_millis().to_string());
        let mut query = vec![("from", from.as_str()), ("max", max.as_str())];
        if let Some(wait_ms) = &wait_ms {
            query.push(("wait", wait_ms));
        }
        let path = ["v1", "topics", topic, "partitions", &partition, "events"];
        self.call(Method::GET, &path, &query, None).await
    }
}

/// An event or a batch as JSON bytes; a value serde cannot write is an invalid event.
fn encode(value: &(impl Serialize + ?Sized)) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(value).map_err(|error| ClientError::InvalidEvent {
        detail: error.to_string(),
    })
}
