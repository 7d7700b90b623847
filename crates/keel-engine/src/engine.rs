//! The engine: the set of topics under a data directory, and every operation on them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::clock::now_ms;
use crate::config::{TopicConfig, validate_topic_config, validate_topic_name};
use crate::error::{EngineError, PublishError, TopicError};
use crate::event::Event;
use crate::event::http::HttpRequest;
use crate::limits::{
    BATCH_EVENTS_MAX, EVENT_BYTES_CEILING, EVENT_BYTES_MAX, READ_RECORDS_MAX, READ_WAIT_MS_MAX,
    SEGMENT_BYTES_DEFAULT,
};
use crate::metrics::Metrics;
use crate::storage::{Area, DataDirDamage, DiskStorage, LogSettings, Record, Storage};
use crate::subscription::Subscription;
use crate::supervisor::Supervisor;
use crate::topic::{EmitTargets, PublishResult, Topic, TopicInfo, TopicMap};

mod streams;
mod subscriptions;
pub use streams::Appended;
pub use subscriptions::{SubscriptionCreated, UnavailableSubscription};

/// Settings of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where everything durable is stored (by [`Engine::open`]; [`Engine::open_with_storage`]
    /// takes a storage instead).
    pub data_dir: PathBuf,
    /// A partition log's segment rolls over at this size (on disk).
    pub segment_bytes_max: u64,
    /// Largest event accepted, in bytes of its JSON.
    pub event_bytes_max: usize,
    /// How often retention runs.
    pub retention_check_interval: Duration,
}

impl EngineConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            event_bytes_max: EVENT_BYTES_MAX,
            retention_check_interval: Duration::from_secs(30),
        }
    }
}

/// Whether a create made a new topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new topic.
    New,
    /// It existed with the same configuration.
    Existing,
}

/// Records read from a partition.
#[derive(Debug, Clone)]
pub struct ReadBatch {
    /// The records, in offset order.
    pub records: Vec<Record>,
    /// The offset to read from next.
    pub next_offset: u64,
}

pub use keel_api::health::UnavailablePartition;

/// keel's engine. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: EngineConfig,
    /// Shared with stateful subscriptions, whose handlers emit events to topics.
    topics: TopicMap,
    /// Serialises topic creation and deletion.
    admin: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    /// Turns true when shutdown begins; long polls end early on it.
    closing: tokio::sync::watch::Sender<bool>,
    /// Topics that could not be opened at start, and why. They refuse service (503) instead
    /// of stopping the whole server; deleting one removes what is stored of it.
    failed_topics: RwLock<BTreeMap<String, String>>,
    subscriptions: RwLock<BTreeMap<String, Arc<Subscription>>>,
    /// Subscriptions that could not be opened at start, and why; they refuse service.
    failed_subscriptions: RwLock<BTreeMap<String, String>>,
    /// Where everything durable is kept.
    storage: Arc<dyn Storage>,
    /// Restarts the engine's long-running tasks when they fail (`supervisor.rs`).
    supervisor: Arc<Supervisor>,
}

impl Engine {
    /// Opens the data directory on disk: recovers every topic's logs and rebuilds dedupe
    /// tables, then every subscription.
    pub async fn open(config: EngineConfig) -> Result<Engine, EngineError> {
        let (root, settings) = (
            config.data_dir.clone(),
            LogSettings {
                segment_bytes_max: config.segment_bytes_max,
            },
        );
        let storage = tokio::task::spawn_blocking(move || DiskStorage::open(&root, settings))
            .await
            .map_err(|_| EngineError::ShuttingDown)??;
        Self::open_with_storage(config, Arc::new(storage)).await
    }

    /// Opens an engine on `storage` (`data_dir` and `segment_bytes_max` of `config` are not
    /// used): recovers every topic and subscription stored there.
    pub async fn open_with_storage(
        config: EngineConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<Engine, EngineError> {
        if config.event_bytes_max == 0 || config.event_bytes_max > EVENT_BYTES_CEILING {
            return Err(EngineError::Topic(TopicError::InvalidConfig {
                detail: format!("event_bytes_max must be between 1 and {EVENT_BYTES_CEILING}"),
            }));
        }
        let metrics = Arc::new(Metrics::new());
        let (recovery_storage, recovery_metrics) = (storage.clone(), metrics.clone());
        let closing = tokio::sync::watch::Sender::new(false);
        let subscription_closing = closing.subscribe();
        let event_bytes_max = config.event_bytes_max;
        let recovered = tokio::task::spawn_blocking(move || {
            let (topics, failed) = recover(&recovery_storage, &recovery_metrics)?;
            let targets = EmitTargets {
                topics: Arc::new(RwLock::new(topics)),
                event_bytes_max,
            };
            let subscriptions = subscriptions::recover(
                &recovery_storage,
                &targets,
                &recovery_metrics,
                &subscription_closing,
            )?;
            Ok::<_, EngineError>((targets.topics, failed, subscriptions))
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)??;
        let (topics, failed_topics, (subscriptions, failed_subscriptions)) = recovered;
        let supervisor = Supervisor::new(metrics.clone());
        for topic in topics.read().expect("topics lock").values() {
            topic.start_tasks(&supervisor);
        }
        for subscription in subscriptions.values() {
            subscription.start(&supervisor);
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                config,
                topics,
                admin: tokio::sync::Mutex::new(()),
                metrics,
                closing,
                failed_topics: RwLock::new(failed_topics),
                subscriptions: RwLock::new(subscriptions),
                failed_subscriptions: RwLock::new(failed_subscriptions),
                storage,
                supervisor,
            }),
        };
        engine.spawn_retention();
        Ok(engine)
    }

    /// The engine's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The supervised tasks that have failed since start (`GET /v1/tasks`).
    pub fn failed_tasks(&self) -> Vec<crate::supervisor::TaskHealth> {
        self.inner.supervisor.failed_tasks()
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>, EngineError> {
        if let Some(topic) = self.inner.topics.read().expect("topics lock").get(name) {
            return Ok(topic.clone());
        }
        let failed = self.inner.failed_topics.read().expect("failed topics lock");
        if let Some(reason) = failed.get(name) {
            return Err(EngineError::Topic(TopicError::Unavailable {
                topic: name.to_owned(),
                reason: reason.clone(),
            }));
        }
        // With the topics' metadata lost, "no such topic" would be a lie: it may well have
        // existed.
        self.inner.storage.check_usable(Area::Topics)?;
        Err(EngineError::Topic(TopicError::NotFound {
            topic: name.to_owned(),
        }))
    }

    /// Parts of the storage that are missing or unreadable (readiness reports them); empty
    /// when it is whole.
    pub fn storage_damage(&self) -> Vec<DataDirDamage> {
        self.inner.storage.damage()
    }

    /// Creates a topic; the same configuration again is not an error, another one is.
    pub async fn create_topic(
        &self,
        name: &str,
        config: TopicConfig,
    ) -> Result<Created, EngineError> {
        validate_topic_name(name)?;
        validate_topic_config(&config)?;
        let _admin = self.inner.admin.lock().await;
        if let Err(error @ EngineError::Topic(TopicError::Unavailable { .. })) = self.topic(name) {
            return Err(error);
        }
        if let Ok(existing) = self.topic(name) {
            if existing.config == config {
                return Ok(Created::Existing);
            }
            return Err(EngineError::Topic(TopicError::Conflict {
                topic: name.to_owned(),
                existing: Box::new(existing.config),
            }));
        }
        self.inner.storage.check_usable(Area::Topics)?;
        let name_owned = name.to_owned();
        let (storage, metrics) = (self.inner.storage.clone(), self.inner.metrics.clone());
        let topic = tokio::task::spawn_blocking(move || {
            storage.create_topic(&name_owned, &config)?;
            Ok::<_, EngineError>(Topic::open(&*storage, &name_owned, config, metrics))
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)??;
        topic.start_tasks(&self.inner.supervisor);
        tracing::info!(
            topic = name,
            partitions = config.partitions,
            "created topic"
        );
        self.inner
            .topics
            .write()
            .expect("topics lock")
            .insert(name.to_owned(), topic);
        Ok(Created::New)
    }

    /// Every topic, by name; an error when `topics/` is damaged (an empty list would hide
    /// the loss).
    pub fn list_topics(&self) -> Result<Vec<TopicInfo>, EngineError> {
        self.inner.storage.check_usable(Area::Topics)?;
        let topics = self.inner.topics.read().expect("topics lock");
        Ok(topics.values().map(|topic| topic.info()).collect())
    }

    /// One topic.
    pub fn describe_topic(&self, name: &str) -> Result<TopicInfo, EngineError> {
        Ok(self.topic(name)?.info())
    }

    /// Deletes a topic and its files. A topic that subscriptions read is deleted only with
    /// `force`, which deletes those subscriptions too.
    pub async fn delete_topic(&self, name: &str, force: bool) -> Result<(), EngineError> {
        let _admin = self.inner.admin.lock().await;
        let readers = self.subscriptions_of(name);
        if !readers.is_empty() {
            if !force {
                return Err(EngineError::Topic(TopicError::HasSubscriptions {
                    topic: name.to_owned(),
                    names: readers.iter().map(|s| s.name().to_owned()).collect(),
                }));
            }
            for subscription in readers {
                self.remove_subscription(&subscription).await?;
            }
        }
        let failed = self
            .inner
            .failed_topics
            .write()
            .expect("failed topics lock")
            .remove(name);
        if failed.is_some() {
            self.blocking_storage(move |storage, name| storage.delete_topic(name), name)
                .await?;
            tracing::info!(topic = name, "deleted unavailable topic");
            return Ok(());
        }
        let topic = self.topic(name)?;
        self.inner.topics.write().expect("topics lock").remove(name);
        topic.shut_down().await;
        self.blocking_storage(move |storage, name| storage.delete_topic(name), name)
            .await?;
        self.inner
            .metrics
            .remove_topic(name, topic.config.partitions);
        self.inner.supervisor.forget(&format!("topic/{name}/"));
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Runs a blocking storage operation on a name on the blocking pool.
    async fn blocking_storage(
        &self,
        operation: impl FnOnce(&dyn Storage, &str) -> Result<(), EngineError> + Send + 'static,
        name: &str,
    ) -> Result<(), EngineError> {
        let (storage, name) = (self.inner.storage.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || operation(&*storage, &name))
            .await
            .map_err(|_| EngineError::ShuttingDown)?
    }

    /// Publishes validated events to a topic (a batch: all validated before any is appended).
    pub async fn publish(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> Result<Vec<PublishResult>, EngineError> {
        let topic = self.topic(topic)?;
        self.publish_to(&topic, events).await
    }

    /// Publishes the events of a CloudEvents HTTP request, in whichever content mode it uses
    /// (see [`crate::event::http`]). The topic is looked up once, and a missing one is reported
    /// before the request is judged: it is the first thing to fix.
    pub async fn publish_http(
        &self,
        topic: &str,
        request: &HttpRequest<'_>,
    ) -> Result<Vec<PublishResult>, EngineError> {
        let topic = self.topic(topic)?;
        let events = crate::event::http::parse_request(request)?;
        self.publish_to(&topic, events).await
    }

    async fn publish_to(
        &self,
        topic: &Arc<Topic>,
        events: Vec<Event>,
    ) -> Result<Vec<PublishResult>, EngineError> {
        self.check_limits(&events)?;
        topic.publish(events).await
    }

    /// Refuses a batch over the event count or an event over the size limit.
    fn check_limits(&self, events: &[Event]) -> Result<(), EngineError> {
        if events.len() > BATCH_EVENTS_MAX {
            return Err(EngineError::Publish(PublishError::BatchTooLarge {
                count: events.len(),
                max: BATCH_EVENTS_MAX,
            }));
        }
        let limit = self.inner.config.event_bytes_max;
        let batch = events.len() > 1;
        if let Some((index, event)) = events
            .iter()
            .enumerate()
            .find(|(_, event)| event.json().len() > limit)
        {
            return Err(EngineError::Publish(PublishError::EventTooLarge {
                index: batch.then_some(index),
                bytes: event.json().len(),
                limit,
            }));
        }
        Ok(())
    }

    /// Reads from a partition from `from` (default: its start), long-polling up to `wait`.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: Option<u64>,
        records_max: usize,
        wait: Duration,
    ) -> Result<ReadBatch, EngineError> {
        let topic = self.topic(topic)?;
        let records_max = records_max.clamp(1, READ_RECORDS_MAX);
        let wait = wait.min(Duration::from_millis(READ_WAIT_MS_MAX));
        let (records, next_offset) = topic
            .partition(partition)?
            .read(
                from,
                records_max,
                crate::limits::READ_BYTES_MAX,
                wait,
                self.inner.closing.subscribe(),
            )
            .await?;
        Ok(ReadBatch {
            records,
            next_offset,
        })
    }

    /// Partitions that refuse service and why.
    pub fn unavailable_partitions(&self) -> Vec<UnavailablePartition> {
        let failed = self.inner.failed_topics.read().expect("failed topics lock");
        let mut unavailable: Vec<UnavailablePartition> = failed
            .iter()
            .map(|(topic, reason)| UnavailablePartition {
                topic: topic.clone(),
                partition: None,
                reason: reason.clone(),
            })
            .collect();
        for topic in self.inner.topics_snapshot() {
            for (number, partition) in (0u32..).zip(topic.partitions()) {
                if let Some(reason) = partition.unavailable() {
                    unavailable.push(UnavailablePartition {
                        topic: topic.name.clone(),
                        partition: Some(number),
                        reason,
                    });
                }
            }
        }
        unavailable
    }

    /// Ends every long poll now (they answer with what they have): the first step of shutdown.
    pub fn begin_shutdown(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Stops every writer after it has committed (and fsynced) what is queued.
    pub async fn shut_down(&self) {
        self.begin_shutdown();
        for subscription in self.inner.subscriptions_snapshot() {
            subscription.stop().await;
        }
        for topic in self.inner.topics_snapshot() {
            topic.shut_down().await;
        }
    }

    fn spawn_retention(&self) {
        let weak = Arc::downgrade(&self.inner);
        let interval = self.inner.config.retention_check_interval;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let topics = inner.topics_snapshot();
                drop(inner);
                let _ = tokio::task::spawn_blocking(move || apply_retention(&topics)).await;
            }
        });
    }
}

impl Inner {
    /// The subscriptions now, without holding the lock afterwards.
    fn subscriptions_snapshot(&self) -> Vec<Arc<Subscription>> {
        self.subscriptions
            .read()
            .expect("subscriptions lock")
            .values()
            .cloned()
            .collect()
    }

    /// The topics now, without holding the lock afterwards.
    fn topics_snapshot(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .cloned()
            .collect()
    }
}

fn apply_retention(topics: &[Arc<Topic>]) {
    let now = now_ms();
    for topic in topics {
        topic.expire_dedupe();
        let retention = topic.config.retention;
        let age_ms_max = retention
            .max_age
            .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        for partition in topic.partitions() {
            partition.apply_retention(now, age_ms_max, retention.max_bytes);
        }
    }
}

/// Opens every stored topic (none when the topics' metadata is damaged). Blocking.
fn recover(storage: &Arc<dyn Storage>, metrics: &Arc<Metrics>) -> Result<Recovered, EngineError> {
    let (mut topics, mut failed) = (BTreeMap::new(), BTreeMap::new());
    for stored in storage.topics()? {
        let name = stored.name;
        if validate_topic_name(&name).is_err() {
            tracing::warn!(topic = %name, "ignoring stored data that is not a topic; move it out of the topics");
            continue;
        }
        let config = stored.config.and_then(|config| {
            validate_topic_config(&config).map_err(|error| error.to_string())?;
            Ok(config)
        });
        match config {
            Ok(config) => {
                let topic = Topic::open(&**storage, &name, config, metrics.clone());
                topics.insert(name.clone(), topic);
                tracing::info!(topic = %name, "recovered topic");
            }
            Err(error) => {
                let reason = format!(
                    "its configuration cannot be read ({error}); fix or restore it, or delete the topic"
                );
                tracing::error!(topic = %name, %error, "topic refuses service");
                failed.insert(name, reason);
            }
        }
    }
    Ok((topics, failed))
}

/// Opened topics, and those that could not be opened with why.
type Recovered = (BTreeMap<String, Arc<Topic>>, BTreeMap<String, String>);
