//! The pull consumer: a loop that long-polls a subscription and runs an async handler on each
//! message, with at most `concurrency` handlers at once, and settles each message as its
//! handler says, in batches.
//!
//! Three tasks: the puller (pulls only as many messages as there is room for, spawns a
//! handler per message), the handlers (each holds a semaphore permit until its settlement is
//! queued), and the acker (gathers settlements and sends them in batches, retrying what may
//! pass). At-least-once: a settlement that never reaches the server is redelivered after the
//! subscription's ack timeout, so a handler must tolerate seeing an event twice (a stateful
//! subscription's commits are exactly once: a second commit of an event is stale).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_api::pull::{PulledMessage, SettleRequest};
use keel_api::state::{CommitOutcome, Emit, StatefulAck};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::client::Client;
use crate::error::ClientError;
use crate::limits::{
    ACK_BATCH_MAX, ACK_LINGER_MS, CONSUMER_CONCURRENCY_DEFAULT, CONSUMER_CONCURRENCY_MAX,
    HANDLER_RETRY_DELAY_INITIAL_MS, HANDLER_RETRY_DELAY_MAX_MS, PULL_ERROR_PAUSE_MS,
    PULL_MESSAGES_MAX, PULL_WAIT_MS, SETTLE_ATTEMPTS_MAX, SETTLE_QUEUE_CAPACITY,
};
use crate::publisher::backoff;
use crate::subscriptions::Settlement;

/// What a handler's failure is: any error. The consumer nacks the message, so it is delivered
/// again after a backoff (and dead-lettered after the subscription's last attempt).
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler decided about its message.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Done: the event leaves the subscription.
    Ack,
    /// Done, on a stateful subscription: commits the key's new state and the events to emit
    /// together with the ack, at once.
    AckWith {
        /// The key's new state; none keeps it, JSON `null` deletes it.
        state: Option<Box<RawValue>>,
        /// Events published with the commit, exactly once.
        emit: Vec<Emit>,
    },
    /// Not now: delivered again after `delay`, or the subscription's retry backoff.
    Nack {
        /// How long to wait before the redelivery.
        delay: Option<Duration>,
    },
    /// Never: the event goes to the dead-letter queue now.
    Reject,
}

impl Outcome {
    /// [`Outcome::AckWith`] setting the key's state to `state` and emitting nothing.
    ///
    /// ```
    /// let outcome = keel_client::Outcome::ack_with_state(&serde_json::json!({"count": 1}))?;
    /// assert!(matches!(outcome, keel_client::Outcome::AckWith { state: Some(_), .. }));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn ack_with_state(state: &impl Serialize) -> Result<Self, serde_json::Error> {
        Ok(Self::AckWith {
            state: Some(serde_json::value::to_raw_value(state)?),
            emit: Vec::new(),
        })
    }
}

/// A pulled message, owned by its handler.
#[derive(Debug, Clone)]
pub struct Message {
    ack_id: String,
    attempt: u32,
    partition: u32,
    offset: u64,
    event: Box<RawValue>,
    state: Option<Box<RawValue>>,
    state_version: Option<u64>,
}

impl Message {
    fn from_pulled(message: PulledMessage<'_>) -> Self {
        Self {
            ack_id: message.ack_id.into_owned(),
            attempt: message.attempt,
            partition: message.partition,
            offset: message.offset,
            event: message.event.to_owned(),
            state: message.state.map(RawValue::to_owned),
            state_version: message.state_version,
        }
    }

    /// The id that settles this delivery.
    pub fn ack_id(&self) -> &str {
        &self.ack_id
    }

    /// 1 for the first delivery of the event, 2 for its first redelivery…
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The partition the event is stored in.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The event's offset in its partition.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The CloudEvent, as stored.
    pub fn event_json(&self) -> &RawValue {
        &self.event
    }

    /// The CloudEvent decoded as `T` (a struct of the members you need, say).
    pub fn event<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.event.get())
    }

    /// Stateful subscriptions: the state of the event's key decoded as `T`; none when the
    /// key has no state yet (or the subscription is not stateful).
    ///
    /// ```no_run
    /// # fn example(message: keel_client::Message) -> Result<(), serde_json::Error> {
    /// #[derive(serde::Deserialize, Default)]
    /// struct Balance { balance: i64 }
    ///
    /// let before: Balance = message.state()?.unwrap_or_default();
    /// # Ok(())
    /// # }
    /// ```
    pub fn state<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        match &self.state {
            Some(state) => serde_json::from_str(state.get()),
            None => Ok(None),
        }
    }

    /// Stateful subscriptions: the version of the key's state (0 when it has none).
    pub fn state_version(&self) -> Option<u64> {
        self.state_version
    }
}

/// Counts of what a consumer did since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Messages handed to the handler.
    pub handled: u64,
    /// Messages the server took an ack for (stateful: commits applied).
    pub acked: u64,
    /// Messages the server took a nack for.
    pub nacked: u64,
    /// Messages the server took a reject for.
    pub rejected: u64,
    /// Handler runs that returned an error (each was nacked).
    pub failed: u64,
    /// Handler runs that panicked (each was nacked).
    pub panicked: u64,
    /// Settlements the server found stale: the delivery was no longer outstanding.
    pub stale: u64,
    /// Settlement requests that failed for good; their messages are redelivered.
    pub settle_errors: u64,
    /// Pulls that failed (the loop pauses and pulls again).
    pub pull_errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    handled: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    stale: AtomicU64,
    settle_errors: AtomicU64,
    pull_errors: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, count: usize) {
        counter.fetch_add(count as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ConsumerStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ConsumerStats {
            handled: get(&self.handled),
            acked: get(&self.acked),
            nacked: get(&self.nacked),
            rejected: get(&self.rejected),
            failed: get(&self.failed),
            panicked: get(&self.panicked),
            stale: get(&self.stale),
            settle_errors: get(&self.settle_errors),
            pull_errors: get(&self.pull_errors),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    concurrency: usize,
    pull_max: usize,
    pull_wait: Duration,
    ack_batch_max: usize,
    ack_linger: Duration,
    retry_delay_initial: Duration,
    retry_delay_max: Duration,
}

/// How a consumer pulls, runs and settles; see [`Consumer::builder`].
#[derive(Debug)]
pub struct ConsumerBuilder {
    client: Client,
    subscription: String,
    settings: Settings,
}

impl ConsumerBuilder {
    /// Most handlers running at once (default [`CONSUMER_CONCURRENCY_DEFAULT`]). With
    /// `ordering: key`, keel already keeps one event per key in flight, so keys proceed in
    /// parallel up to this bound and each key in order.
    ///
    /// Panics when `count` is 0 or above [`CONSUMER_CONCURRENCY_MAX`].
    pub fn concurrency(mut self, count: usize) -> Self {
        assert!(
            (1..=CONSUMER_CONCURRENCY_MAX).contains(&count),
            "concurrency must be in 1..={CONSUMER_CONCURRENCY_MAX}"
        );
        self.settings.concurrency = count;
        self
    }

    /// How long one pull waits on the server for a first message (default
    /// [`PULL_WAIT_MS`]); it bounds how long [`Consumer::shutdown`] may wait for a pull.
    pub fn pull_wait(mut self, wait: Duration) -> Self {
        self.settings.pull_wait = wait;
        self
    }

    /// How long acks are gathered before a short batch is sent (default
    /// [`ACK_LINGER_MS`]).
    pub fn ack_linger(mut self, linger: Duration) -> Self {
        self.settings.ack_linger = linger;
        self
    }

    /// The redelivery delay asked for after a handler's first failure, and the largest
    /// (defaults [`HANDLER_RETRY_DELAY_INITIAL_MS`], [`HANDLER_RETRY_DELAY_MAX_MS`]); it
    /// doubles per attempt.
    pub fn retry_delay(mut self, initial: Duration, max: Duration) -> Self {
        self.settings.retry_delay_initial = initial;
        self.settings.retry_delay_max = max.max(initial);
        self
    }

    /// Starts pulling on the current tokio runtime, running `handler` on each message.
    pub fn start<H, F>(self, handler: H) -> Consumer
    where
        H: Fn(Message) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Outcome, HandlerError>> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let puller = Puller {
            client: self.client,
            subscription: self.subscription,
            settings: self.settings,
            counters: Arc::clone(&counters),
        };
        Consumer {
            stop,
            counters,
            task: tokio::spawn(puller.run(Arc::new(handler), stopped)),
        }
    }
}

/// A running pull consumer of one subscription.
///
/// The handler's result settles the message: [`Outcome::Ack`], [`Outcome::AckWith`] (state
/// and emitted events, on a stateful subscription), [`Outcome::Nack`] or [`Outcome::Reject`].
/// A handler error is a nack with a delay that doubles per attempt; a panicking handler counts
/// as a failure the same way, and the loop goes on. Acks are sent in batches.
///
/// Dropping a consumer stops its pulling; [`Consumer::shutdown`] also waits for the running
/// handlers and sends their settlements.
///
/// ```no_run
/// # async fn example(client: keel_client::Client) {
/// use keel_client::{Consumer, Message, Outcome};
///
/// #[derive(serde::Deserialize, serde::Serialize, Default)]
/// struct Count { count: u64 }
///
/// let consumer = Consumer::builder(client, "ledger").concurrency(32).start(
///     |message: Message| async move {
///         let mut count: Count = message.state()?.unwrap_or_default();
///         count.count += 1;
///         Ok(Outcome::ack_with_state(&count)?)
///     },
/// );
/// tokio::time::sleep(std::time::Duration::from_secs(60)).await;
/// let stats = consumer.shutdown().await;
/// println!("{} handled, {} failed", stats.handled, stats.failed);
/// # }
/// ```
#[derive(Debug)]
pub struct Consumer {
    stop: watch::Sender<bool>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Consumer {
    /// Settings for a consumer of `subscription` (a pull subscription), to change before
    /// [`ConsumerBuilder::start`].
    pub fn builder(client: Client, subscription: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder {
            client,
            subscription: subscription.into(),
            settings: Settings {
                concurrency: CONSUMER_CONCURRENCY_DEFAULT,
                pull_max: PULL_MESSAGES_MAX,
                pull_wait: Duration::from_millis(PULL_WAIT_MS),
                ack_batch_max: ACK_BATCH_MAX,
                ack_linger: Duration::from_millis(ACK_LINGER_MS),
                retry_delay_initial: Duration::from_millis(HANDLER_RETRY_DELAY_INITIAL_MS),
                retry_delay_max: Duration::from_millis(HANDLER_RETRY_DELAY_MAX_MS),
            },
        }
    }

    /// What it did so far.
    pub fn stats(&self) -> ConsumerStats {
        self.counters.snapshot()
    }

    /// Stops pulling (a pull waiting on the server is abandoned), waits for the running
    /// handlers, sends their settlements, and returns the final counts.
    pub async fn shutdown(self) -> ConsumerStats {
        // The puller may have stopped on its own (never: it runs until told), so a send to
        // no receiver is fine.
        let _ = self.stop.send(true);
        if let Err(error) = self.task.await
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
        self.counters.snapshot()
    }
}

/// A settlement on its way to the acker.
#[derive(Debug)]
struct Settle {
    ack_id: String,
    outcome: Outcome,
}

/// The pulling task.
struct Puller {
    client: Client,
    subscription: String,
    settings: Settings,
    counters: Arc<Counters>,
}

impl Puller {
    async fn run<H, F>(self, handler: Arc<H>, mut stopped: watch::Receiver<bool>)
    where
        H: Fn(Message) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Outcome, HandlerError>> + Send + 'static,
    {
        let room = Arc::new(Semaphore::new(self.settings.concurrency));
        let (settle, settlements) = mpsc::channel(SETTLE_QUEUE_CAPACITY);
        let acker = Acker {
            client: self.client.clone(),
            subscription: self.subscription.clone(),
            settings: self.settings,
            counters: Arc::clone(&self.counters),
        };
        let acker = tokio::spawn(acker.run(settlements));
        let mut handlers = JoinSet::new();
        loop {
            while handlers.try_join_next().is_some() {}
            // Pull only when a handler can start, and only as many as can start.
            let first = tokio::select! {
                permit = Arc::clone(&room).acquire_owned() => {
                    permit.expect("the semaphore is never closed")
                }
                _ = stopped.wait_for(|stop| *stop) => break,
            };
            let max = (1 + room.available_permits()).min(self.settings.pull_max);
            let pulled = tokio::select! {
                pulled = self.client.pull(&self.subscription, Some(max), Some(self.settings.pull_wait)) => pulled,
                _ = stopped.wait_for(|stop| *stop) => break,
            };
            let messages: Vec<Message> = match pulled {
                Ok(answer) => answer
                    .value()
                    .messages
                    .into_iter()
                    .map(Message::from_pulled)
                    .collect(),
                Err(_) => {
                    Counters::add(&self.counters.pull_errors, 1);
                    drop(first);
                    let pause = Duration::from_millis(PULL_ERROR_PAUSE_MS);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        _ = stopped.wait_for(|stop| *stop) => break,
                    }
                }
            };
            let mut first = Some(first);
            for message in messages {
                let permit = match first.take() {
                    Some(permit) => permit,
                    // More than asked for: wait for room rather than pass the bound.
                    None => Arc::clone(&room)
                        .acquire_owned()
                        .await
                        .expect("the semaphore is never closed"),
                };
                Counters::add(&self.counters.handled, 1);
                let run = HandlerRun {
                    handler: Arc::clone(&handler),
                    settle: settle.clone(),
                    counters: Arc::clone(&self.counters),
                    settings: self.settings,
                };
                handlers.spawn(async move {
                    run.run(message).await;
                    drop(permit);
                });
            }
        }
        // Graceful end: every running handler finishes and queues its settlement, then the
        // acker sends what is queued and stops when the queue closes.
        while handlers.join_next().await.is_some() {}
        drop(settle);
        let _ = acker.await;
    }
}

/// One handler run and where its settlement goes.
struct HandlerRun<H> {
    handler: Arc<H>,
    settle: mpsc::Sender<Settle>,
    counters: Arc<Counters>,
    settings: Settings,
}

impl<H, F> HandlerRun<H>
where
    H: Fn(Message) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Outcome, HandlerError>> + Send + 'static,
{
    async fn run(self, message: Message) {
        let ack_id = message.ack_id.clone();
        let attempt = message.attempt;
        // Its own task, so that a panic is caught as a JoinError and not the consumer's end.
        let outcome = match tokio::spawn((self.handler)(message)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => {
                Counters::add(&self.counters.failed, 1);
                self.retry(attempt)
            }
            Err(_) => {
                Counters::add(&self.counters.panicked, 1);
                self.retry(attempt)
            }
        };
        // The acker lives until every handler is done, so the queue is open.
        let _ = self.settle.send(Settle { ack_id, outcome }).await;
    }

    /// A nack with the delay for a failure of delivery `attempt`.
    fn retry(&self, attempt: u32) -> Outcome {
        Outcome::Nack {
            delay: Some(backoff(
                self.settings.retry_delay_initial,
                self.settings.retry_delay_max,
                attempt,
            )),
        }
    }
}

/// Settlements of one batch, grouped by request.
#[derive(Debug, Default)]
struct Batch {
    ack_ids: Vec<String>,
    acks: Vec<StatefulAck>,
    /// Nacks by the delay asked for (one request per delay).
    nacks: BTreeMap<Option<Duration>, Vec<String>>,
    rejects: Vec<String>,
    count: usize,
}

impl Batch {
    fn push(&mut self, settle: Settle) {
        self.count += 1;
        match settle.outcome {
            Outcome::Ack => self.ack_ids.push(settle.ack_id),
            Outcome::AckWith { state, emit } => self.acks.push(StatefulAck {
                ack_id: settle.ack_id,
                state,
                emit,
            }),
            Outcome::Nack { delay } => self.nacks.entry(delay).or_default().push(settle.ack_id),
            Outcome::Reject => self.rejects.push(settle.ack_id),
        }
    }
}

/// The task that sends settlements in batches.
struct Acker {
    client: Client,
    subscription: String,
    settings: Settings,
    counters: Arc<Counters>,
}

impl Acker {
    async fn run(self, mut settlements: mpsc::Receiver<Settle>) {
        while let Some(first) = settlements.recv().await {
            let deadline = Instant::now() + self.settings.ack_linger;
            let mut batch = Batch::default();
            batch.push(first);
            while batch.count < self.settings.ack_batch_max {
                match tokio::time::timeout_at(deadline, settlements.recv()).await {
                    Ok(Some(settle)) => batch.push(settle),
                    Ok(None) | Err(_) => break,
                }
            }
            self.send(batch).await;
        }
    }

    async fn send(&self, batch: Batch) {
        if !batch.ack_ids.is_empty() || !batch.acks.is_empty() {
            let request = SettleRequest {
                ack_ids: batch.ack_ids,
                acks: batch.acks,
                delay: None,
            };
            self.settle(Settlement::Ack, &request, &self.counters.acked)
                .await;
        }
        for (delay, ack_ids) in batch.nacks {
            let request = SettleRequest {
                ack_ids,
                acks: Vec::new(),
                delay,
            };
            self.settle(Settlement::Nack, &request, &self.counters.nacked)
                .await;
        }
        if !batch.rejects.is_empty() {
            let request = SettleRequest {
                ack_ids: batch.rejects,
                ..SettleRequest::default()
            };
            self.settle(Settlement::Reject, &request, &self.counters.rejected)
                .await;
        }
    }

    /// Sends one settle request, retrying what may pass, and counts the outcome in `done`.
    /// When the server refuses a request of several commits because one names a delivery no
    /// longer outstanding (409: nothing of the request was committed), each commit is sent
    /// again alone, so that only the stale ones are refused.
    async fn settle(&self, settlement: Settlement, request: &SettleRequest, done: &AtomicU64) {
        let sent = self.send_settle(settlement, request, done).await;
        if sent != Sent::StaleCommit || !splittable(request) {
            return;
        }
        if !request.ack_ids.is_empty() {
            let plain = SettleRequest {
                ack_ids: request.ack_ids.clone(),
                ..SettleRequest::default()
            };
            self.send_settle(settlement, &plain, done).await;
        }
        for ack in &request.acks {
            let alone = SettleRequest {
                acks: vec![ack.clone()],
                ..SettleRequest::default()
            };
            self.send_settle(settlement, &alone, done).await;
        }
    }

    /// Sends one settle request, retrying what may pass. Counts the outcome, except a
    /// refusal of several commits for a stale one, which the caller sends again piecemeal.
    async fn send_settle(
        &self,
        settlement: Settlement,
        request: &SettleRequest,
        done: &AtomicU64,
    ) -> Sent {
        let count = request.ack_ids.len() + request.acks.len();
        let mut attempt = 1;
        loop {
            match self
                .client
                .settle(&self.subscription, settlement, request)
                .await
            {
                Ok(answer) => {
                    let result = answer.value();
                    let stale_commits = result
                        .results
                        .iter()
                        .filter(|commit| commit.outcome == CommitOutcome::Stale)
                        .count();
                    // A stale ack id of a stateful ack is both in `stale` and in `results`.
                    let stale = result.stale.len().max(stale_commits);
                    Counters::add(&self.counters.stale, stale);
                    Counters::add(done, count.saturating_sub(stale));
                    return Sent::Answered;
                }
                Err(error) if error.is_retryable() && attempt < SETTLE_ATTEMPTS_MAX => {
                    let initial = Duration::from_millis(HANDLER_RETRY_DELAY_INITIAL_MS);
                    tokio::time::sleep(backoff(initial, initial * 8, attempt)).await;
                    attempt += 1;
                }
                Err(ClientError::Problem { status, .. }) if status.as_u16() == 409 => {
                    if !splittable(request) {
                        // Its delivery was redelivered, and committed by then: nothing to do.
                        Counters::add(&self.counters.stale, count);
                    }
                    return Sent::StaleCommit;
                }
                Err(_) => {
                    Counters::add(&self.counters.settle_errors, 1);
                    return Sent::Failed;
                }
            }
        }
    }
}

/// Whether a settle request holds several commits (each stateful ack is one; the plain ack
/// ids together are one), so that sending them apart can get some through.
fn splittable(request: &SettleRequest) -> bool {
    request.acks.len() + usize::from(!request.ack_ids.is_empty()) > 1
}

/// What became of a settle request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Answered: its outcome is counted.
    Answered,
    /// Refused whole (409): a commit in it named a delivery no longer outstanding.
    StaleCommit,
    /// Failed otherwise: counted as a settle error.
    Failed,
}
