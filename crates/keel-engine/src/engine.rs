//! The engine: the set of topics under a data directory, and every operation on them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::alerts::Alerts;
use crate::clock::now_ms;
use crate::config::{
    TopicConfig, is_internal_topic, refuse_internal, validate_topic_config, validate_topic_name,
};
use crate::error::{EngineError, PublishError, TopicError};
use crate::event::Event;
use crate::event::http::HttpRequest;
use crate::limits::{
    BATCH_EVENTS_MAX, EVENT_BYTES_CEILING, EVENT_BYTES_MAX, READ_RECORDS_MAX, READ_WAIT_MS_MAX,
    SEGMENT_BYTES_DEFAULT,
};
use crate::metrics::Metrics;
use crate::notices::Notices;
use crate::pressure::{Pressure, PressureConfig};
use crate::storage::{Area, DataDirDamage, DiskStorage, LogSettings, Record, Storage};
use crate::subscription::{Subscription, Surroundings};
use crate::supervisor::Supervisor;
use crate::topic::{EmitTargets, PublishResult, Topic, TopicInfo, TopicMap};

mod alerts;
mod cluster;
mod streams;
mod subscription_update;
mod subscriptions;
mod tokens;
pub use cluster::{Placement, Tenure};
pub use streams::Appended;
pub use subscription_update::SecretRotated;
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
    /// How often every alert rule is evaluated.
    pub alert_evaluation_interval: Duration,
    /// Backpressure on publishing: the disk guard and the publish queue's high-water mark.
    pub pressure: PressureConfig,
    /// This engine's node id in a cluster: every metric carries it as the label `node`.
    pub node: Option<String>,
    /// Push sinks' HTTP clients: the egress policy, trusted roots, the resolver.
    pub webhooks: crate::webhook::WebhookSettings,
}

impl EngineConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            event_bytes_max: EVENT_BYTES_MAX,
            retention_check_interval: Duration::from_secs(30),
            alert_evaluation_interval: crate::limits::ALERT_EVALUATION_INTERVAL_DEFAULT,
            pressure: PressureConfig::default(),
            node: None,
            webhooks: crate::webhook::WebhookSettings::default(),
        }
    }
}

/// What a create (a `PUT`) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// It made something new.
    New,
    /// It existed with the same configuration: nothing changed.
    Existing,
    /// It existed with another spec, changed in place (subscriptions only).
    Updated,
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
    /// The alert rules and their state; held for one evaluation or one change of rules.
    alerts: Mutex<Alerts>,
    /// Appends notices to `_keel.alerts`.
    notices: Notices,
    /// What refuses publishes while storage or the publish queue is full.
    pressure: Arc<Pressure>,
    /// In a cluster, which subscriptions this node hosts (`engine/cluster.rs`); none: all.
    placement: Option<Arc<dyn Placement>>,
    /// The API tokens, as stored (`engine/tokens.rs`).
    tokens: crate::tokens::TokenCache,
    /// Builds push sinks' HTTP clients (egress policy, trusted roots).
    sinks: crate::webhook::SinkClients,
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
        Self::open_inner(config, storage, None).await
    }

    /// Opens an engine on `storage` with every topic stored there and every subscription
    /// placed by `placement`: none hosted until it hosts them (`engine/cluster.rs`).
    async fn open_inner(
        config: EngineConfig,
        storage: Arc<dyn Storage>,
        placement: Option<Arc<dyn Placement>>,
    ) -> Result<Engine, EngineError> {
        if config.event_bytes_max == 0 || config.event_bytes_max > EVENT_BYTES_CEILING {
            return Err(EngineError::Topic(TopicError::InvalidConfig {
                detail: format!("event_bytes_max must be between 1 and {EVENT_BYTES_CEILING}"),
            }));
        }
        crate::pressure::validate(&config.pressure)?;
        let webhooks = config.webhooks.clone();
        let sinks =
            tokio::task::spawn_blocking(move || crate::webhook::SinkClients::new(&webhooks))
                .await
                .map_err(|_| EngineError::ShuttingDown)?
                .map_err(|detail| EngineError::Settings {
                    detail: format!("webhooks.ca_bundle: {detail}"),
                })?;
        let metrics = Arc::new(Metrics::for_node(config.node.as_deref()));
        let pressure = Arc::new(Pressure::new(config.pressure, metrics.clone()));
        let (recovery_storage, recovery_metrics) = (storage.clone(), metrics.clone());
        let closing = tokio::sync::watch::Sender::new(false);
        let subscription_closing = closing.subscribe();
        let event_bytes_max = config.event_bytes_max;
        let hosts_all = placement.is_none();
        let recovery_sinks = sinks.clone();
        let recovered = tokio::task::spawn_blocking(move || {
            let (topics, failed) = recover(&recovery_storage, &recovery_metrics)?;
            let surroundings = Surroundings {
                targets: EmitTargets {
                    topics: Arc::new(RwLock::new(topics)),
                    event_bytes_max,
                },
                metrics: recovery_metrics,
                closing: subscription_closing,
                sinks: recovery_sinks,
            };
            let subscriptions = if hosts_all {
                subscriptions::recover(&recovery_storage, &surroundings)?
            } else {
                Default::default()
            };
            Ok::<_, EngineError>((surroundings.targets.topics, failed, subscriptions))
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)??;
        let (topics, failed_topics, (subscriptions, failed_subscriptions)) = recovered;
        let notices = Notices::new(EmitTargets {
            topics: topics.clone(),
            event_bytes_max,
        });
        pressure.set_notices(notices.clone());
        let supervisor = Supervisor::new(metrics.clone(), Some(notices.clone()));
        // Measured before the first publish, so that a full disk refuses it too.
        let (measured_pressure, measured_storage) = (pressure.clone(), storage.clone());
        tokio::task::spawn_blocking(move || measured_pressure.measure(&*measured_storage))
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        pressure.spawn_measuring(Arc::downgrade(&storage));
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
                alerts: Mutex::new(Alerts::default()),
                notices,
                pressure,
                placement,
                tokens: Default::default(),
                sinks,
            }),
        };
        engine.create_notices_topic().await;
        engine.start_alerts().await?;
        engine.start_tokens().await?;
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

    /// A topic a caller may publish to: any but keel's internal ones.
    fn writable_topic(&self, name: &str) -> Result<Arc<Topic>, EngineError> {
        refuse_internal(name, "published to")?;
        self.topic(name)
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
        self.create_topic_named(name, config).await
    }

    /// Creates a topic whose name was checked (or that keel names itself, `_keel.*`).
    async fn create_topic_named(
        &self,
        name: &str,
        config: TopicConfig,
    ) -> Result<Created, EngineError> {
        validate_topic_config(&config)?;
        self.find_topic(name).await;
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
            match storage.create_topic(&name_owned, &config) {
                Ok(()) => {}
                // In a cluster, another node stored the same topic a moment ago.
                Err(EngineError::Topic(TopicError::Conflict { existing, .. }))
                    if *existing == config => {}
                Err(error) => return Err(error),
            }
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

    /// Every topic but keel's internal ones (`_keel.*`, described by name), by name; an
    /// error when `topics/` is damaged (an empty list would hide the loss).
    pub fn list_topics(&self) -> Result<Vec<TopicInfo>, EngineError> {
        self.inner.storage.check_usable(Area::Topics)?;
        let topics = self.inner.topics.read().expect("topics lock");
        let listed = topics
            .values()
            .filter(|topic| !is_internal_topic(&topic.name));
        Ok(listed.map(|topic| topic.info()).collect())
    }

    /// One topic.
    pub fn describe_topic(&self, name: &str) -> Result<TopicInfo, EngineError> {
        Ok(self.topic(name)?.info())
    }

    /// Deletes a topic and its files. A topic that subscriptions read is deleted only with
    /// `force`, which deletes those subscriptions too.
    pub async fn delete_topic(&self, name: &str, force: bool) -> Result<(), EngineError> {
        refuse_internal(name, "deleted")?;
        self.find_topic(name).await;
        let _admin = self.inner.admin.lock().await;
        let readers = self.subscriptions_of(name);
        // In a cluster, other nodes host some of the topic's readers.
        let elsewhere = self.readers_elsewhere(name).await?;
        if !readers.is_empty() || !elsewhere.is_empty() {
            if !force {
                let mut names: Vec<String> = readers.iter().map(|s| s.name().to_owned()).collect();
                names.extend(elsewhere);
                names.sort();
                return Err(EngineError::Topic(TopicError::HasSubscriptions {
                    topic: name.to_owned(),
                    names,
                }));
            }
            for subscription in readers {
                self.remove_subscription(&subscription).await?;
            }
            // Their hosts stop them at their next round, finding them gone.
            for subscription in elsewhere {
                self.blocking_storage(
                    |storage, name| storage.delete_subscription(name),
                    &subscription,
                )
                .await?;
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
        self.inner.pressure.measure_soon();
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
        self.find_topic(topic).await;
        let topic = self.writable_topic(topic)?;
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
        self.find_topic(topic).await;
        let topic = self.writable_topic(topic)?;
        let events = crate::event::http::parse_request(request)?;
        self.publish_to(&topic, events).await
    }

    async fn publish_to(
        &self,
        topic: &Arc<Topic>,
        events: Vec<Event>,
    ) -> Result<Vec<PublishResult>, EngineError> {
        self.check_limits(&events)?;
        let admission = self.inner.pressure.admit(&events)?;
        topic.publish(events, admission).await
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
        self.find_topic(topic).await;
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

    /// Why publishing is refused for lack of storage (`disk_full`, `data_dir_full`), while it
    /// is: each until space returns.
    pub fn publishing_refused(&self) -> Vec<String> {
        self.inner.pressure.refusing()
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
                let (topics, pressure) = (inner.topics_snapshot(), inner.pressure.clone());
                drop(inner);
                let trimmed = tokio::task::spawn_blocking(move || apply_retention(&topics)).await;
                if trimmed.is_ok_and(|bytes| bytes > 0) {
                    pressure.measure_soon();
                }
            }
        });
    }
}

impl Inner {
    /// What a subscription opened now is given: the topics, metrics, shutdown signal and sink
    /// clients.
    fn surroundings(&self) -> Surroundings {
        Surroundings {
            targets: EmitTargets {
                topics: self.topics.clone(),
                event_bytes_max: self.config.event_bytes_max,
            },
            metrics: self.metrics.clone(),
            closing: self.closing.subscribe(),
            sinks: self.sinks.clone(),
        }
    }

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

/// Applies every topic's retention; returns the bytes it freed.
fn apply_retention(topics: &[Arc<Topic>]) -> u64 {
    let now = now_ms();
    let mut freed_bytes = 0;
    for topic in topics {
        topic.expire_dedupe();
        let retention = topic.config.retention;
        let age_ms_max = retention
            .max_age
            .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        for partition in topic.partitions() {
            freed_bytes += partition.apply_retention(now, age_ms_max, retention.max_bytes);
        }
    }
    freed_bytes
}

/// Opens every stored topic (none when the topics' metadata is damaged). Blocking.
fn recover(storage: &Arc<dyn Storage>, metrics: &Arc<Metrics>) -> Result<Recovered, EngineError> {
    let (mut topics, mut failed) = (BTreeMap::new(), BTreeMap::new());
    for stored in storage.topics()? {
        let name = stored.name;
        if !is_internal_topic(&name) && validate_topic_name(&name).is_err() {
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
