//! The engine's subscriptions: create, recover, describe, delete, and every operation on one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Created, Engine};
use crate::error::{DataError, EngineError, SubscriptionError, TopicError};
use crate::limits::{DLQ_LIST_MAX, STATE_LIST_MAX, SUBSCRIPTIONS_MAX};
use crate::storage::{Area, Storage, StoredSubscription};
use crate::subscription::pull::Settle;
use crate::subscription::spec::{
    Delivery, NamedPosition, StartPosition, SubscriptionSpec, validate_egress,
    validate_subscription_name, validate_subscription_spec,
};
use crate::subscription::{
    AckResult, Attached, DeadLetterEntry, PulledMessage, StoredKeyState, Subscription,
    SubscriptionInfo, Surroundings, first_checkpoint,
};
use crate::topic::Topic;
use crate::webhook::WebhookSecret;
use keel_api::state::StatefulAck;

pub use keel_api::health::UnavailableSubscription;

/// What creating a subscription did.
#[derive(Debug, Clone)]
pub struct SubscriptionCreated {
    /// New, or the same spec existed.
    pub created: Created,
    /// The subscription.
    pub info: SubscriptionInfo,
    /// The sink's signing secret, shown once: when a new push subscription was created.
    pub secret: Option<WebhookSecret>,
    /// The members an update changed, as the spec spells them (`sink.url`, `retry`); empty
    /// unless `created` is [`Created::Updated`].
    pub changed: Vec<String>,
}

impl Engine {
    pub(super) fn subscription(&self, name: &str) -> Result<Arc<Subscription>, EngineError> {
        let running = self.inner.subscriptions.read().expect("subscriptions lock");
        if let Some(subscription) = running.get(name) {
            return Ok(subscription.clone());
        }
        let failed = self.inner.failed_subscriptions.read().expect("lock");
        if let Some(reason) = failed.get(name) {
            return Err(EngineError::Subscription(SubscriptionError::Unavailable {
                name: name.to_owned(),
                reason: reason.clone(),
            }));
        }
        // With the subscriptions' metadata lost, "no such subscription" would be a lie.
        self.inner.storage.check_usable(Area::Subscriptions)?;
        Err(EngineError::Subscription(SubscriptionError::NotFound {
            name: name.to_owned(),
        }))
    }

    /// Subscriptions that refuse service and why: those that could not be opened at start,
    /// and those whose storage failed since.
    pub fn unavailable_subscriptions(&self) -> Vec<UnavailableSubscription> {
        let failed = self.inner.failed_subscriptions.read().expect("lock");
        let mut unavailable: Vec<UnavailableSubscription> = failed
            .iter()
            .map(|(name, reason)| UnavailableSubscription {
                name: name.clone(),
                reason: reason.clone(),
            })
            .collect();
        drop(failed);
        for subscription in self.inner.subscriptions_snapshot() {
            if let Some(reason) = subscription.unavailable() {
                unavailable.push(UnavailableSubscription {
                    name: subscription.name().to_owned(),
                    reason,
                });
            }
        }
        unavailable
    }

    /// The subscriptions reading a topic.
    pub(super) fn subscriptions_of(&self, topic: &str) -> Vec<Arc<Subscription>> {
        self.inner
            .subscriptions_snapshot()
            .into_iter()
            .filter(|subscription| subscription.topic_name() == topic)
            .collect()
    }

    /// Creates a subscription. On an existing name, the same spec again is not an error (a
    /// push subscription created without a secret matches whatever secret was generated) and
    /// another spec updates it in place when only mutable members differ
    /// ([`SubscriptionError::Conflict`] names the others).
    pub async fn create_subscription(
        &self,
        name: &str,
        mut spec: SubscriptionSpec,
    ) -> Result<SubscriptionCreated, EngineError> {
        validate_subscription_name(name)?;
        validate_subscription_spec(&spec)?;
        validate_egress(&spec, self.inner.sinks.policy())?;
        self.find_topic(&spec.topic).await;
        let _admin = self.inner.admin.lock().await;
        let topic = self.topic(&spec.topic).map_err(|error| match error {
            EngineError::Topic(TopicError::NotFound { topic }) => {
                EngineError::Subscription(SubscriptionError::Invalid {
                    detail: format!("topic {topic:?} not found; create it first"),
                })
            }
            other => other,
        })?;
        let existing = self.subscription(name);
        if let Err(error @ EngineError::Subscription(SubscriptionError::Unavailable { .. })) =
            existing
        {
            return Err(error);
        }
        if let Ok(existing) = existing {
            return self.update_subscription(existing, spec, topic).await;
        }
        if self
            .inner
            .subscriptions
            .read()
            .expect("subscriptions lock")
            .len()
            >= SUBSCRIPTIONS_MAX
        {
            return Err(EngineError::Subscription(SubscriptionError::Invalid {
                detail: format!("at most {SUBSCRIPTIONS_MAX} subscriptions per server"),
            }));
        }
        let mut secret = None;
        if let Delivery::Push(sink) = &mut spec.delivery {
            if sink.secret.is_none() {
                let generated = WebhookSecret::generate();
                sink.secret = Some(generated.clone());
                secret = Some(generated);
            }
            // A previous secret as describe shows it (without the secret) is nothing to keep
            // on a new subscription.
            if sink
                .previous_secret
                .as_ref()
                .is_some_and(|p| p.secret.is_none())
            {
                sink.previous_secret = None;
            }
        }
        let starts = resolve_position(&topic, &spec.start)?;
        let create = move |storage: &dyn Storage, name: &str, spec: &SubscriptionSpec| {
            let checkpoint = first_checkpoint(spec, &starts).to_bytes();
            storage.create_subscription(name, spec, &checkpoint)
        };
        self.claim_subscription(name).await?;
        let subscription = match self.store_and_open(name, spec, topic, create).await {
            Ok(subscription) => subscription,
            Err(error) => {
                self.release_subscription(name).await;
                return Err(error);
            }
        };
        self.place(&subscription);
        subscription.start(&self.inner.supervisor);
        let info = subscription.info();
        self.inner
            .subscriptions
            .write()
            .expect("subscriptions lock")
            .insert(name.to_owned(), Arc::new(subscription));
        tracing::info!(subscription = name, topic = %info.spec.topic, mode = %info.mode, "created subscription");
        Ok(SubscriptionCreated {
            created: Created::New,
            info,
            secret,
            changed: Vec::new(),
        })
    }

    /// Stores a subscription by `store` (a create, or an update's new spec) and opens it from
    /// its logs with `spec`. Blocking work, on a blocking thread.
    pub(super) async fn store_and_open(
        &self,
        name: &str,
        spec: SubscriptionSpec,
        topic: Arc<Topic>,
        store: impl FnOnce(&dyn Storage, &str, &SubscriptionSpec) -> Result<(), EngineError>
        + Send
        + 'static,
    ) -> Result<Subscription, EngineError> {
        self.inner.storage.check_usable(Area::Subscriptions)?;
        let (storage, name) = (self.inner.storage.clone(), name.to_owned());
        let surroundings = self.inner.surroundings();
        tokio::task::spawn_blocking(move || {
            store(&*storage, &name, &spec)?;
            let logs = open_logs(&*storage, &name, &spec)?;
            Subscription::open(&name, spec, logs, topic, &surroundings)
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)?
    }

    /// Every subscription, by name.
    /// An error when `subscriptions/` is damaged (an empty list would hide the loss).
    pub fn list_subscriptions(&self) -> Result<Vec<SubscriptionInfo>, EngineError> {
        self.inner.storage.check_usable(Area::Subscriptions)?;
        Ok(self
            .inner
            .subscriptions_snapshot()
            .iter()
            .map(|subscription| subscription.info())
            .collect())
    }

    /// One subscription.
    pub fn describe_subscription(&self, name: &str) -> Result<SubscriptionInfo, EngineError> {
        Ok(self.subscription(name)?.info())
    }

    /// Refreshes every subscription's gauges (lag, in flight, DLQ depth, circuit), for a
    /// metrics scrape.
    pub fn refresh_subscription_gauges(&self) {
        for subscription in self.inner.subscriptions_snapshot() {
            subscription.info();
        }
    }

    /// Deletes a subscription, its progress and its dead-letter queue.
    pub async fn delete_subscription(&self, name: &str) -> Result<(), EngineError> {
        let _admin = self.inner.admin.lock().await;
        let failed = self
            .inner
            .failed_subscriptions
            .write()
            .expect("lock")
            .remove(name);
        if failed.is_some() {
            self.blocking_storage(|storage, name| storage.delete_subscription(name), name)
                .await?;
            tracing::info!(subscription = name, "deleted unavailable subscription");
            return Ok(());
        }
        let subscription = self.subscription(name)?;
        self.remove_subscription(&subscription).await
    }

    pub(super) async fn remove_subscription(
        &self,
        subscription: &Subscription,
    ) -> Result<(), EngineError> {
        let name = subscription.name().to_owned();
        self.inner
            .subscriptions
            .write()
            .expect("subscriptions lock")
            .remove(&name);
        self.stop_subscription(subscription).await;
        self.blocking_storage(|storage, name| storage.delete_subscription(name), &name)
            .await?;
        self.release_subscription(&name).await;
        self.inner.pressure.measure_soon();
        tracing::info!(subscription = %name, "deleted subscription");
        Ok(())
    }

    /// Stops a subscription taken out of the running ones, and forgets its metrics and tasks
    /// (what it stored stays).
    pub(super) async fn stop_subscription(&self, subscription: &Subscription) {
        let name = subscription.name();
        let endpoints: Vec<String> = subscription
            .info()
            .endpoints
            .into_iter()
            .map(|endpoint| endpoint.url)
            .collect();
        subscription.stop().await;
        self.inner.metrics.remove_subscription(name, &endpoints);
        let tasks = crate::subscription::task_prefix(name);
        self.inner.supervisor.forget(&tasks);
    }

    /// Pauses a subscription's delivery.
    pub async fn pause_subscription(&self, name: &str) -> Result<SubscriptionInfo, EngineError> {
        let subscription = self.subscription(name)?;
        subscription.pause("paused by an operator").await?;
        Ok(subscription.info())
    }

    /// Resumes a subscription's delivery.
    pub async fn resume_subscription(&self, name: &str) -> Result<SubscriptionInfo, EngineError> {
        let subscription = self.subscription(name)?;
        subscription.resume().await?;
        Ok(subscription.info())
    }

    /// Moves a subscription to `earliest`, `latest` or a time.
    pub async fn seek_subscription(
        &self,
        name: &str,
        to: &StartPosition,
    ) -> Result<SubscriptionInfo, EngineError> {
        let subscription = self.subscription(name)?;
        let topic = self.topic(subscription.topic_name())?;
        let starts = resolve_position(&topic, to)?;
        subscription.seek(&starts).await?;
        Ok(subscription.info())
    }

    /// Pulls up to `max` events from a pull subscription, long-polling up to `wait`.
    pub async fn pull(
        &self,
        name: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<PulledMessage>, EngineError> {
        self.subscription(name)?.pull(max, wait).await
    }

    /// Settles pulled events by ack id: ack, nack (optionally with a delay) or reject.
    pub async fn settle(
        &self,
        name: &str,
        ack_ids: &[String],
        action: Settle,
    ) -> Result<AckResult, EngineError> {
        self.subscription(name)?.settle(ack_ids, action).await
    }

    /// Acknowledges pulled events with commits: each ack commits its key's new state, the
    /// events it emits and the ack itself at once, durably, or is found stale. `ack_ids` are
    /// acks that leave the state unchanged. The answer lists each ack's outcome, `ack_ids`
    /// first. Nothing is committed when any ack is invalid, or stale while carrying state or
    /// events.
    pub async fn ack_with_commits(
        &self,
        name: &str,
        ack_ids: &[String],
        acks: Vec<StatefulAck>,
    ) -> Result<AckResult, EngineError> {
        self.subscription(name)?.commit(ack_ids, acks).await
    }

    /// Drops a stateful subscription's state and replays its topic from the start, so that a
    /// fixed handler recomputes the state from history; a replayed event's commit emits
    /// nothing when its key had applied it before. Returns once the state is dropped and the cursor moved, durably; the replay
    /// goes on (describe shows its lag).
    pub async fn rebuild_state(&self, name: &str) -> Result<SubscriptionInfo, EngineError> {
        let subscription = self.subscription(name)?;
        let topic = self.topic(subscription.topic_name())?;
        let starts = resolve_position(&topic, &StartPosition::Named(NamedPosition::Earliest))?;
        subscription.rebuild(&starts).await?;
        Ok(subscription.info())
    }

    /// Attaches an in-process handler to a subscription without a sink: it takes the
    /// subscription's events inside this process (see [`crate::handler`]). Several handlers
    /// (and pull consumers) may share one subscription. Call inside the runtime.
    pub fn attach(
        &self,
        name: &str,
        handler: impl crate::handler::Handler,
    ) -> Result<Attached, EngineError> {
        self.subscription(name)?.attach(Arc::new(handler))
    }

    /// A key's state in a stateful subscription.
    pub async fn key_state(&self, name: &str, key: &str) -> Result<StoredKeyState, EngineError> {
        let subscription = self.subscription(name)?;
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || {
            subscription.key_state(&key)?.ok_or_else(|| {
                EngineError::Subscription(SubscriptionError::KeyNotFound {
                    name: subscription.name().to_owned(),
                    key,
                })
            })
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)?
    }

    /// Up to `max` keys with state in a stateful subscription, in key order after `after`,
    /// and whether more follow.
    pub async fn list_state(
        &self,
        name: &str,
        after: Option<String>,
        max: usize,
    ) -> Result<(Vec<StoredKeyState>, bool), EngineError> {
        let subscription = self.subscription(name)?;
        let max = max.clamp(1, STATE_LIST_MAX);
        tokio::task::spawn_blocking(move || subscription.list_state(after.as_deref(), max))
            .await
            .map_err(|_| EngineError::ShuttingDown)?
    }

    /// Up to `max` dead-letter entries (and about 4 MiB of events), oldest first, after the
    /// entry `after`; and whether more follow.
    pub async fn dlq_list(
        &self,
        name: &str,
        after: Option<String>,
        max: usize,
    ) -> Result<(Vec<DeadLetterEntry>, bool), EngineError> {
        let max = max.clamp(1, DLQ_LIST_MAX);
        self.with_dlq(name, move |dlq, _| dlq.list(after.as_deref(), max))
            .await
    }

    /// One dead-letter entry.
    pub async fn dlq_get(&self, name: &str, id: String) -> Result<DeadLetterEntry, EngineError> {
        self.with_dlq(name, move |dlq, subscription| {
            dlq.get(&id)?.ok_or_else(|| {
                EngineError::Subscription(SubscriptionError::DeadLetterNotFound {
                    name: subscription.to_owned(),
                    id,
                })
            })
        })
        .await
    }

    /// Sends entries (all when `ids` is none) back into the subscription with fresh attempt
    /// counts; returns how many.
    pub async fn dlq_redrive(
        &self,
        name: &str,
        ids: Option<Vec<String>>,
    ) -> Result<usize, EngineError> {
        self.with_dlq(name, move |dlq, subscription| {
            dlq.redrive(subscription, ids)
        })
        .await
    }

    /// Deletes every entry not being redriven; returns how many.
    pub async fn dlq_purge(&self, name: &str) -> Result<usize, EngineError> {
        self.subscription(name)?.purge_dead_letters().await
    }

    async fn with_dlq<T: Send + 'static>(
        &self,
        name: &str,
        operation: impl FnOnce(
            &mut crate::subscription::dlq::DeadLetterQueue,
            &str,
        ) -> Result<T, EngineError>
        + Send
        + 'static,
    ) -> Result<T, EngineError> {
        let subscription = self.subscription(name)?;
        tokio::task::spawn_blocking(move || subscription.with_dlq(operation))
            .await
            .map_err(|_| EngineError::ShuttingDown)?
    }
}

/// Each partition's offset for a position.
pub(super) fn resolve_position(
    topic: &Topic,
    position: &StartPosition,
) -> Result<Vec<u64>, EngineError> {
    topic
        .partitions()
        .iter()
        .map(|partition| {
            let info = partition.info();
            match position {
                StartPosition::Named(NamedPosition::Earliest) => Ok(info.start_offset),
                StartPosition::Named(NamedPosition::Latest) | StartPosition::Default => {
                    Ok(info.next_offset)
                }
                StartPosition::Time { time } => {
                    let ms = crate::clock::parse_rfc3339_ms(time).ok_or_else(|| {
                        EngineError::Subscription(SubscriptionError::Invalid {
                            detail: format!(
                                "time {time:?} is not an RFC 3339 timestamp with its offset, like 2026-11-25T10:00:00Z"
                            ),
                        })
                    })?;
                    partition.offset_for_timestamp(ms)
                }
            }
        })
        .collect()
}

/// Subscriptions opened at start, and those that could not be, with why.
pub(super) type RecoveredSubscriptions = (
    BTreeMap<String, Arc<Subscription>>,
    BTreeMap<String, String>,
);

/// Opens every stored subscription (none when the subscriptions' metadata is damaged).
/// Blocking. A subscription whose data or topic cannot be opened is left in storage and
/// refuses service (readyz lists it); it does not stop the server, and deleting it removes it.
pub(super) fn recover(
    storage: &Arc<dyn Storage>,
    surroundings: &Surroundings,
) -> Result<RecoveredSubscriptions, EngineError> {
    let (mut subscriptions, mut failed) = (BTreeMap::new(), BTreeMap::new());
    for stored in storage.subscriptions()? {
        let name = stored.name.clone();
        match open_one(&**storage, stored, surroundings) {
            Ok(subscription) => {
                tracing::info!(subscription = %name, "recovered subscription");
                subscriptions.insert(name, Arc::new(subscription));
            }
            Err(error) => {
                tracing::error!(subscription = %name, %error, "subscription refuses service");
                let reason = format!(
                    "it could not be opened at start ({error}); fix its files and restart, or delete it"
                );
                failed.insert(name, reason);
            }
        }
    }
    Ok((subscriptions, failed))
}

pub(super) fn open_one(
    storage: &dyn Storage,
    stored: StoredSubscription,
    surroundings: &Surroundings,
) -> Result<Subscription, EngineError> {
    let name = stored.name;
    validate_subscription_name(&name)?;
    let spec = stored
        .spec
        .map_err(|detail| EngineError::Data(DataError::Corrupt { detail }))?;
    let topic = surroundings.targets.topic(&spec.topic).ok_or_else(|| {
        EngineError::Topic(TopicError::NotFound {
            topic: spec.topic.clone(),
        })
    })?;
    let logs = open_logs(storage, &name, &spec)?;
    Subscription::open(&name, spec, logs, topic, surroundings)
}

/// A stored subscription's logs, with its state when it is stateful. Blocking.
fn open_logs(
    storage: &dyn Storage,
    name: &str,
    spec: &SubscriptionSpec,
) -> Result<crate::storage::SubscriptionLogs, EngineError> {
    let mut logs = storage.open_subscription(name)?;
    if spec.stateful {
        logs.state = Some(storage.open_state(name)?);
    }
    Ok(logs)
}
