//! The publisher: events gathered into batches, each given an id before its first attempt,
//! and batches retried with those same ids, so that keel's (`source`, `id`) dedupe makes a
//! retry of a batch that was in fact stored harmless: the retry answers the original
//! positions, marked `duplicate`.
//!
//! One task per publisher sends one batch at a time, in the order events were queued.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use keel_api::publish::PublishResult;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{Body, CONTENT_TYPE_BATCH, Client};
use crate::error::ClientError;
use crate::event_id::EventIds;
use crate::limits::{
    PUBLISH_ATTEMPTS_MAX, PUBLISH_BACKOFF_INITIAL_MS, PUBLISH_BACKOFF_MAX_MS,
    PUBLISH_BATCH_BYTES_MAX, PUBLISH_BATCH_EVENTS_MAX, PUBLISH_LINGER_MS, PUBLISH_QUEUE_CAPACITY,
};

/// An event waiting for its batch: its JSON, and where its answer goes.
#[derive(Debug)]
struct Queued {
    json: Vec<u8>,
    reply: oneshot::Sender<Result<PublishResult, ClientError>>,
}

/// How a publisher batches and retries; see [`Publisher::builder`].
#[derive(Debug)]
pub struct PublisherBuilder {
    client: Client,
    topic: String,
    settings: Settings,
    ids: EventIds,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    batch_events_max: usize,
    batch_bytes_max: usize,
    linger: Duration,
    queue_capacity: usize,
    attempts_max: u32,
    backoff_initial: Duration,
    backoff_max: Duration,
}

impl PublisherBuilder {
    /// Most events per batch request (default and ceiling [`PUBLISH_BATCH_EVENTS_MAX`]).
    ///
    /// Panics when `count` is 0 or above the ceiling.
    pub fn batch_events_max(mut self, count: usize) -> Self {
        assert!(
            (1..=PUBLISH_BATCH_EVENTS_MAX).contains(&count),
            "batch_events_max must be in 1..={PUBLISH_BATCH_EVENTS_MAX}"
        );
        self.settings.batch_events_max = count;
        self
    }

    /// How long to wait for more events after the first of a batch (default
    /// [`PUBLISH_LINGER_MS`]).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.settings.linger = linger;
        self
    }

    /// Attempts per batch, the first included (default [`PUBLISH_ATTEMPTS_MAX`]).
    ///
    /// Panics when `attempts` is 0.
    pub fn attempts_max(mut self, attempts: u32) -> Self {
        assert!(attempts > 0, "a batch is attempted at least once");
        self.settings.attempts_max = attempts;
        self
    }

    /// The backoff ceiling after the first failed attempt, and the largest one (defaults
    /// [`PUBLISH_BACKOFF_INITIAL_MS`], [`PUBLISH_BACKOFF_MAX_MS`]).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.settings.backoff_initial = initial;
        self.settings.backoff_max = max.max(initial);
        self
    }

    /// Where ids come from for events that have none (default: [`EventIds::new`]).
    pub fn ids(mut self, ids: EventIds) -> Self {
        self.ids = ids;
        self
    }

    /// Starts the publisher's task on the current tokio runtime.
    pub fn start(self) -> Publisher {
        let (queue, receiver) = mpsc::channel(self.settings.queue_capacity);
        let sender = Sender {
            client: self.client,
            topic: self.topic,
            settings: self.settings,
        };
        Publisher {
            queue,
            ids: Arc::new(self.ids),
            task: tokio::spawn(sender.run(receiver)),
        }
    }
}

/// Publishes events to one topic in batches, retrying failed sends safely.
///
/// Each event gets an `id` (when it has none) before its first attempt. A batch whose send
/// fails with a retryable error ([`ClientError::is_retryable`]: connection errors, timeouts,
/// 429, 5xx but 507) is sent again, with exponential backoff and jitter (waiting at least
/// the `Retry-After` of a 429), carrying the same ids: if
/// the failed attempt was in fact stored, keel's dedupe answers the original positions
/// (`duplicate: true`) instead of storing the events twice. Dedupe lasts the topic's
/// `dedupe_window` (2 minutes by default), far longer than the retries.
///
/// ```no_run
/// # async fn example(client: keel_client::Client) -> Result<(), keel_client::ClientError> {
/// use keel_client::Publisher;
/// use serde_json::json;
///
/// let publisher = Publisher::new(client, "orders");
/// let mut receipts = Vec::new();
/// for n in 0..100 {
///     let event = json!({"specversion": "1.0", "source": "shop", "type": "order.created",
///         "partitionkey": format!("order-{n}"), "data": {"n": n}});
///     receipts.push(publisher.send(event).await?); // queued; batched with the others
/// }
/// for receipt in receipts {
///     let stored = receipt.await?; // durable
///     println!("{} → {}/{}", stored.id, stored.partition, stored.offset);
/// }
/// publisher.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Publisher {
    queue: mpsc::Sender<Queued>,
    ids: Arc<EventIds>,
    task: JoinHandle<()>,
}

impl Publisher {
    /// A publisher to `topic` with the default batching and retries, started on the current
    /// tokio runtime.
    pub fn new(client: Client, topic: impl Into<String>) -> Self {
        Self::builder(client, topic).start()
    }

    /// Settings for a publisher to `topic`, to change before [`PublisherBuilder::start`].
    pub fn builder(client: Client, topic: impl Into<String>) -> PublisherBuilder {
        PublisherBuilder {
            client,
            topic: topic.into(),
            settings: Settings {
                batch_events_max: PUBLISH_BATCH_EVENTS_MAX,
                batch_bytes_max: PUBLISH_BATCH_BYTES_MAX,
                linger: Duration::from_millis(PUBLISH_LINGER_MS),
                queue_capacity: PUBLISH_QUEUE_CAPACITY,
                attempts_max: PUBLISH_ATTEMPTS_MAX,
                backoff_initial: Duration::from_millis(PUBLISH_BACKOFF_INITIAL_MS),
                backoff_max: Duration::from_millis(PUBLISH_BACKOFF_MAX_MS),
            },
            ids: EventIds::new(),
        }
    }

    /// Queues `event` (a CloudEvent as a JSON object), giving it an id if it has none, and
    /// returns at once unless the queue is full; the [`Receipt`] resolves to its position
    /// once it is durable.
    pub async fn send(&self, event: impl Serialize) -> Result<Receipt, ClientError> {
        let (json, id) = self.with_id(event)?;
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Queued { json, reply })
            .await
            .map_err(|_| ClientError::Closed { what: "publisher" })?;
        Ok(Receipt { id, answer })
    }

    /// Publishes `event` and waits until it is durable: [`Publisher::send`], then its
    /// [`Receipt`].
    pub async fn publish(&self, event: impl Serialize) -> Result<PublishResult, ClientError> {
        self.send(event).await?.await
    }

    /// Sends everything queued, then stops.
    pub async fn close(self) {
        drop(self.queue);
        // The task only ends by its queue closing; a panic in it is a bug to pass on.
        if let Err(error) = self.task.await
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
    }

    /// The event's JSON, with an id added when it has none, and that id.
    fn with_id(&self, event: impl Serialize) -> Result<(Vec<u8>, String), ClientError> {
        let invalid = |detail: String| ClientError::InvalidEvent { detail };
        let mut value = serde_json::to_value(event).map_err(|error| invalid(error.to_string()))?;
        let Value::Object(members) = &mut value else {
            return Err(invalid("an event is a JSON object".to_owned()));
        };
        let id = match members.get("id") {
            Some(Value::String(id)) => id.clone(),
            Some(_) => return Err(invalid("an event's id is a string".to_owned())),
            None => {
                let id = self.ids.next_id();
                members.insert("id".to_owned(), Value::String(id.clone()));
                id
            }
        };
        let json = serde_json::to_vec(&value).map_err(|error| invalid(error.to_string()))?;
        Ok((json, id))
    }
}

/// The answer to one queued event: resolves to its position once its batch is durable, or
/// to the error that ended its batch's attempts.
#[derive(Debug)]
pub struct Receipt {
    id: String,
    answer: oneshot::Receiver<Result<PublishResult, ClientError>>,
}

impl Receipt {
    /// The event's id: its own, or the one the publisher gave it.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Future for Receipt {
    type Output = Result<PublishResult, ClientError>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.answer).poll(context).map(|answer| {
            // A dropped sender means the publisher's task is gone.
            answer.unwrap_or(Err(ClientError::Closed { what: "publisher" }))
        })
    }
}

/// The publisher's task: gathers batches from the queue and sends them.
struct Sender {
    client: Client,
    topic: String,
    settings: Settings,
}

impl Sender {
    async fn run(self, mut queue: mpsc::Receiver<Queued>) {
        let mut carried: Option<Queued> = None;
        loop {
            let first = match carried.take() {
                Some(first) => first,
                None => match queue.recv().await {
                    Some(first) => first,
                    None => return,
                },
            };
            let (batch, next) = self.gather(first, &mut queue).await;
            carried = next;
            self.send(batch).await;
        }
    }

    /// A batch starting with `first`: more events until the batch is full or the linger
    /// passed; an event that would overflow its bytes is returned to start the next one.
    async fn gather(
        &self,
        first: Queued,
        queue: &mut mpsc::Receiver<Queued>,
    ) -> (Vec<Queued>, Option<Queued>) {
        let deadline = Instant::now() + self.settings.linger;
        let mut bytes = first.json.len();
        let mut batch = vec![first];
        while batch.len() < self.settings.batch_events_max {
            let Ok(Some(queued)) = tokio::time::timeout_at(deadline, queue.recv()).await else {
                break;
            };
            bytes += queued.json.len() + 1;
            if bytes > self.settings.batch_bytes_max {
                return (batch, Some(queued));
            }
            batch.push(queued);
        }
        (batch, None)
    }

    /// Sends one batch, retrying with the same bytes (so the same ids), and answers each
    /// event's caller.
    async fn send(&self, batch: Vec<Queued>) {
        assert!(!batch.is_empty() && batch.len() <= self.settings.batch_events_max);
        let mut json =
            Vec::with_capacity(batch.iter().map(|q| q.json.len() + 1).sum::<usize>() + 1);
        json.push(b'[');
        for (index, queued) in batch.iter().enumerate() {
            if index > 0 {
                json.push(b',');
            }
            json.extend_from_slice(&queued.json);
        }
        json.push(b']');
        let outcome = self.send_with_retries(json, batch.len()).await;
        match outcome {
            Ok(results) => {
                for (queued, result) in batch.into_iter().zip(results) {
                    // A caller that dropped its receipt no longer waits for the answer.
                    let _ = queued.reply.send(Ok(result));
                }
            }
            Err(error) => {
                for queued in batch {
                    let _ = queued.reply.send(Err(error.clone()));
                }
            }
        }
    }

    async fn send_with_retries(
        &self,
        json: Vec<u8>,
        events: usize,
    ) -> Result<Vec<PublishResult>, ClientError> {
        let mut attempt = 1;
        loop {
            let body = Body {
                content_type: CONTENT_TYPE_BATCH,
                bytes: json.clone(),
            };
            match self.client.publish_encoded(&self.topic, body).await {
                Ok(answer) => {
                    let results = answer.value().results;
                    if results.len() != events {
                        return Err(ClientError::Unexpected {
                            detail: format!("{} results for {events} events", results.len()),
                        });
                    }
                    return Ok(results);
                }
                Err(error) if error.is_retryable() && attempt < self.settings.attempts_max => {
                    tokio::time::sleep(self.wait_after(&error, attempt)).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The wait after failed attempt `attempt` (1-based): see [`wait_after`].
    fn wait_after(&self, error: &ClientError, attempt: u32) -> Duration {
        let (initial, max) = (self.settings.backoff_initial, self.settings.backoff_max);
        wait_after(error, initial, max, attempt)
    }
}

/// The wait after `error` ended attempt `attempt` (1-based): the [`backoff`], or the server's
/// `Retry-After` when that is longer (an overloaded keel answers 429 with one), never more
/// than `max`.
fn wait_after(error: &ClientError, initial: Duration, max: Duration, attempt: u32) -> Duration {
    let backoff = backoff(initial, max, attempt);
    match error.retry_after() {
        Some(asked) => asked.min(max).max(backoff),
        None => backoff,
    }
}

/// A random wait in [ceiling / 2, ceiling], where the ceiling is `initial` doubled per failure
/// after the first (`attempt` is 1-based), at most `max`.
pub(crate) fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = initial
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(max);
    let half = ceiling / 2;
    half + half.mul_f64(random_fraction())
}

/// A number in [0, 1) from the standard library's randomly keyed hasher: enough to spread
/// retries apart, without a dependency.
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        Instant::now()
            .elapsed()
            .as_nanos()
            .try_into()
            .unwrap_or(u64::MAX),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_of_a_429_is_waited_within_the_largest_backoff() {
        // Goal: a 429's Retry-After is honoured, capped by the largest backoff; without one
        // the backoff applies. Method: errors with and without it, against known bounds.
        let overloaded = |retry_after| ClientError::Problem {
            status: reqwest::StatusCode::TOO_MANY_REQUESTS,
            title: None,
            detail: None,
            retry_after,
        };
        let (initial, max) = (Duration::from_millis(50), Duration::from_millis(5000));
        let asked = overloaded(Some(Duration::from_secs(2)));
        assert_eq!(wait_after(&asked, initial, max, 1), Duration::from_secs(2));
        let too_long = overloaded(Some(Duration::from_secs(60)));
        assert_eq!(wait_after(&too_long, initial, max, 1), max);
        assert!(wait_after(&overloaded(None), initial, max, 1) <= initial);
    }

    #[test]
    fn backoff_doubles_within_its_bounds() {
        // Goal: waits grow per failure, never pass the largest, never drop below half the
        // ceiling. Method: many draws per attempt.
        let (initial, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        for (attempt, ceiling_ms) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for _ in 0..100 {
                let wait = backoff(initial, max, attempt);
                let ceiling = Duration::from_millis(ceiling_ms);
                assert!(
                    wait >= ceiling / 2 && wait <= ceiling,
                    "{attempt}: {wait:?}"
                );
            }
        }
    }
}
