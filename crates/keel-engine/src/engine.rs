//! The engine: the set of topics under a data directory, and every operation on them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keel_log::Record;

use crate::clock::now_ms;
use crate::config::{TopicConfig, validate_topic_config, validate_topic_name};
use crate::data_dir::{DataDir, DataDirDamage};
use crate::error::EngineError;
use crate::event::Event;
use crate::limits::{
    BATCH_EVENTS_MAX, EVENT_BYTES_CEILING, EVENT_BYTES_MAX, READ_RECORDS_MAX, READ_WAIT_MS_MAX,
};
use crate::metrics::Metrics;
use crate::subscription::Subscription;
use crate::topic::{CONFIG_FILE, PublishResult, Topic, TopicInfo};

mod subscriptions;
pub use subscriptions::{SubscriptionCreated, UnavailableSubscription};

/// Settings of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where everything durable is stored.
    pub data_dir: PathBuf,
    /// Settings of every partition log.
    pub log: keel_log::LogConfig,
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
            log: keel_log::LogConfig::default(),
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
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises topic creation and deletion.
    admin: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    /// Turns true when shutdown begins; long polls end early on it.
    closing: tokio::sync::watch::Sender<bool>,
    /// Topics whose directory could not be opened at start, and why. They refuse service
    /// (503) instead of stopping the whole server; deleting one removes its directory.
    failed_topics: RwLock<BTreeMap<String, (PathBuf, String)>>,
    subscriptions: RwLock<BTreeMap<String, Arc<Subscription>>>,
    /// Subscriptions that could not be opened at start, where and why; they refuse service.
    failed_subscriptions: RwLock<BTreeMap<String, (PathBuf, String)>>,
    /// The locked data directory, and what of it is damaged.
    data_dir: DataDir,
}

impl Engine {
    /// Opens the data directory: recovers every topic's logs and rebuilds dedupe tables.
    pub async fn open(config: EngineConfig) -> Result<Engine, EngineError> {
        if config.event_bytes_max == 0 || config.event_bytes_max > EVENT_BYTES_CEILING {
            return Err(EngineError::InvalidConfig {
                detail: format!("event_bytes_max must be between 1 and {EVENT_BYTES_CEILING}"),
            });
        }
        let metrics = Arc::new(Metrics::new());
        let recovery_config = config.clone();
        let recovery_metrics = metrics.clone();
        let closing = tokio::sync::watch::Sender::new(false);
        let subscription_closing = closing.subscribe();
        let recovered = tokio::task::spawn_blocking(move || {
            let data_dir = DataDir::open(&recovery_config.data_dir)?;
            let (topics, failed) = recover(&data_dir, &recovery_config, &recovery_metrics)?;
            let subscriptions = subscriptions::recover(
                &data_dir,
                &topics,
                &recovery_metrics,
                &subscription_closing,
            )?;
            Ok::<_, EngineError>((data_dir, topics, failed, subscriptions))
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)??;
        let (data_dir, topics, failed_topics, (subscriptions, failed_subscriptions)) = recovered;
        for topic in topics.values() {
            topic.start_tasks();
        }
        for subscription in subscriptions.values() {
            subscription.start();
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                config,
                topics: RwLock::new(topics),
                admin: tokio::sync::Mutex::new(()),
                metrics,
                closing,
                failed_topics: RwLock::new(failed_topics),
                subscriptions: RwLock::new(subscriptions),
                failed_subscriptions: RwLock::new(failed_subscriptions),
                data_dir,
            }),
        };
        engine.spawn_retention();
        Ok(engine)
    }

    /// The engine's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
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
        if let Some((_, reason)) = failed.get(name) {
            return Err(EngineError::TopicUnavailable {
                topic: name.to_owned(),
                reason: reason.clone(),
            });
        }
        // With topics/ lost, "no such topic" would be a lie: it may well have existed.
        self.inner.data_dir.check_usable(&self.topics_dir())?;
        Err(EngineError::TopicNotFound {
            topic: name.to_owned(),
        })
    }

    fn topics_dir(&self) -> PathBuf {
        self.inner.data_dir.topics()
    }

    /// Parts of the data directory that are missing or unreadable (readiness reports them);
    /// empty when it is whole.
    pub fn data_dir_damage(&self) -> Vec<DataDirDamage> {
        self.inner.data_dir.damage().to_vec()
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
        if let Err(error @ EngineError::TopicUnavailable { .. }) = self.topic(name) {
            return Err(error);
        }
        if let Ok(existing) = self.topic(name) {
            if existing.config == config {
                return Ok(Created::Existing);
            }
            return Err(EngineError::TopicConflict {
                topic: name.to_owned(),
                existing: Box::new(existing.config),
            });
        }
        let topics_dir = self.topics_dir();
        self.inner.data_dir.check_usable(&topics_dir)?;
        let name_owned = name.to_owned();
        let (log_config, metrics) = (self.inner.config.log.clone(), self.inner.metrics.clone());
        let topic = tokio::task::spawn_blocking(move || {
            let dir = write_topic_dir(&topics_dir, &name_owned, &config)?;
            Ok::<_, EngineError>(Topic::open(&dir, &name_owned, config, &log_config, metrics))
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)??;
        topic.start_tasks();
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
        self.inner.data_dir.check_usable(&self.topics_dir())?;
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
                return Err(EngineError::TopicHasSubscriptions {
                    topic: name.to_owned(),
                    names: readers.iter().map(|s| s.name().to_owned()).collect(),
                });
            }
            for subscription in readers {
                self.remove_subscription(&subscription).await?;
            }
        }
        let trash = self.inner.data_dir.trash();
        let failed = self
            .inner
            .failed_topics
            .write()
            .expect("failed topics lock")
            .remove(name);
        if let Some((dir, _)) = failed {
            tokio::task::spawn_blocking(move || remove_dir_durably(&dir, &trash))
                .await
                .map_err(|_| EngineError::ShuttingDown)??;
            tracing::info!(topic = name, "deleted unavailable topic");
            return Ok(());
        }
        let topic = self.topic(name)?;
        self.inner.topics.write().expect("topics lock").remove(name);
        topic.shut_down().await;
        let dir = topic.dir.clone();
        tokio::task::spawn_blocking(move || remove_dir_durably(&dir, &trash))
            .await
            .map_err(|_| EngineError::ShuttingDown)??;
        self.inner
            .metrics
            .remove_topic(name, topic.config.partitions);
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Publishes validated events to a topic (a batch: all validated before any is appended).
    pub async fn publish(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> Result<Vec<PublishResult>, EngineError> {
        let topic = self.topic(topic)?;
        if events.len() > BATCH_EVENTS_MAX {
            return Err(EngineError::BatchTooLarge {
                count: events.len(),
                max: BATCH_EVENTS_MAX,
            });
        }
        let limit = self.inner.config.event_bytes_max;
        let batch = events.len() > 1;
        if let Some((index, event)) = events
            .iter()
            .enumerate()
            .find(|(_, event)| event.json().len() > limit)
        {
            return Err(EngineError::EventTooLarge {
                index: batch.then_some(index),
                bytes: event.json().len(),
                limit,
            });
        }
        topic.publish(events).await
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
            .map(|(topic, (_, reason))| UnavailablePartition {
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

/// Opens every topic under the data directory (none when `topics/` is damaged). Blocking.
fn recover(
    data_dir: &DataDir,
    config: &EngineConfig,
    metrics: &Arc<Metrics>,
) -> Result<Recovered, EngineError> {
    empty_trash(&data_dir.trash());
    let topics_dir = data_dir.topics();
    let (mut topics, mut failed) = (BTreeMap::new(), BTreeMap::new());
    if data_dir.check_usable(&topics_dir).is_err() {
        return Ok((topics, failed));
    }
    let entries = std::fs::read_dir(&topics_dir).map_err(EngineError::io("list", &topics_dir))?;
    for entry in entries {
        let dir = entry.map_err(EngineError::io("list", &topics_dir))?.path();
        let name = dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(CREATING_PREFIX) {
            // A creation that crashed before its rename: the topic never existed.
            tracing::info!(path = %dir.display(), "removing an unfinished topic creation");
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        }
        if validate_topic_name(&name).is_err() {
            tracing::warn!(path = %dir.display(), "ignoring a directory that is not a topic; move it out of topics/");
            continue;
        }
        match read_topic_config(&dir) {
            Ok(topic_config) => {
                let topic = Topic::open(&dir, &name, topic_config, &config.log, metrics.clone());
                topics.insert(name.clone(), topic);
                tracing::info!(topic = %name, "recovered topic");
            }
            Err(error) => {
                let reason = format!(
                    "its configuration cannot be read ({error}); fix or restore {CONFIG_FILE}, or delete the topic"
                );
                tracing::error!(topic = %name, %error, "topic refuses service");
                failed.insert(name, (dir, reason));
            }
        }
    }
    Ok((topics, failed))
}

/// Opened topics, and those that could not be opened with where and why.
type Recovered = (
    BTreeMap<String, Arc<Topic>>,
    BTreeMap<String, (PathBuf, String)>,
);

/// Prefix of the temporary directory a topic or subscription is created in before its rename.
pub(crate) const CREATING_PREFIX: &str = ".creating-";

fn read_topic_config(dir: &Path) -> Result<TopicConfig, EngineError> {
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read(&config_path).map_err(EngineError::io("read", &config_path))?;
    let config: TopicConfig =
        serde_json::from_slice(&text).map_err(|error| EngineError::InvalidConfig {
            detail: format!("{}: {error}", config_path.display()),
        })?;
    validate_topic_config(&config)?;
    Ok(config)
}

/// Writes a new topic directory atomically: a temporary directory with `topic.json`, renamed
/// into place. Blocking.
fn write_topic_dir(
    topics_dir: &Path,
    name: &str,
    config: &TopicConfig,
) -> Result<PathBuf, EngineError> {
    let temporary = topics_dir.join(format!("{CREATING_PREFIX}{name}"));
    let _ = std::fs::remove_dir_all(&temporary);
    // Not `create_dir_all`: a missing topics/ is damage to report, never to recreate.
    std::fs::create_dir(&temporary).map_err(EngineError::io("create", &temporary))?;
    let config_path = temporary.join(CONFIG_FILE);
    let text = serde_json::to_vec_pretty(config).expect("a topic config serialises");
    crate::files::write_synced(&config_path, &text)?;
    // The partitions' directories, empty (each log starts in its own at its first open):
    // made with the topic, so that a missing one at a later open is damage, not an empty log.
    for number in 0..config.partitions {
        let partition_dir = temporary.join(number.to_string());
        std::fs::create_dir(&partition_dir).map_err(EngineError::io("create", &partition_dir))?;
    }
    // Survives a crash after the rename: the directory entries of the new files are durable.
    crate::files::sync_dir(&temporary)?;
    let dir = topics_dir.join(name);
    std::fs::rename(&temporary, &dir).map_err(EngineError::io("rename", &dir))?;
    // Survives a crash after create returns: the rename itself is durable (the temporary
    // directory's own creation needs no fsync: the rename replaces that entry).
    crate::files::sync_dir(topics_dir)?;
    Ok(dir)
}

/// Moves a topic or subscription directory to the trash (one durable rename: after a crash
/// it is either whole or gone), then deletes it. Blocking.
pub(crate) fn remove_dir_durably(dir: &Path, trash: &Path) -> Result<(), EngineError> {
    // Crash: a trash directory whose entry is lost would orphan what is renamed into it.
    crate::files::create_dir_durably(trash)?;
    let name = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = trash.join(format!("{name}.{}", now_ms()));
    std::fs::rename(dir, &target).map_err(EngineError::io("rename", dir))?;
    // Crash: both directories of the rename are fsynced: the trash first, so the moved
    // directory is never in neither; then the parent, so the delete answered is durable.
    crate::files::sync_dir(trash)?;
    if let Some(parent) = dir.parent() {
        crate::files::sync_dir(parent)?;
    }
    // Not fsynced: a removal lost in a crash is redone when the trash is emptied at start.
    std::fs::remove_dir_all(&target).map_err(EngineError::io("remove", &target))
}

fn empty_trash(trash: &Path) {
    if trash.exists()
        && let Err(error) = std::fs::remove_dir_all(trash)
    {
        tracing::warn!(path = %trash.display(), %error, "could not empty the trash");
    }
}
