//! [`Storage`] on JetStream: specs in the meta KV bucket, each log a stream (`names.rs`
//! draws the layout), replicated on `replicas` NATS servers.
//!
//! Creates and deletes are ordered so that a crash half-way never leaves a half-made topic or
//! subscription visible: a create makes the streams first and the spec last (a create of
//! the key: of two nodes creating one name at once, one wins and the other removes its
//! streams); a delete removes the spec first and the streams after. Streams left behind by a
//! crash carry an id no spec names, so they are never taken for a new topic's.
//!
//! A subscription's logs are written only by the holder of its lease, at the lease's epoch:
//! opening them fences them (`fence.rs`), so a node that lost the lease can no longer write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt;
use keel_api::alerts::AlertRule;
use keel_engine::config::TopicConfig;
use keel_engine::error::{DataError, EngineError, TopicError};
use keel_engine::storage::{
    Area, DataDirDamage, Listed, RecordLog, StateLogs, StateTable, Storage, StorageError,
    StoredAlertRule, StoredSubscription, StoredTopic, SubscriptionLogs,
};
use keel_engine::subscription::spec::SubscriptionSpec;
use keel_engine::tokens::{TokenRecord, readable_tokens};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::ClusterError;
use crate::log::{JetStreamLog, Writers};
use crate::names::{self, Names, SubscriptionLog};
use crate::nats::Nats;
use crate::table::MemoryTable;

/// The layout of the specs stored in the meta bucket; a keel that finds another refuses it.
const SPEC_FORMAT: u64 = 1;
/// How long JetStream remembers a message id for dedupe on the logs keel writes.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A topic's spec as stored: its configuration and the id its streams are named by.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TopicSpec {
    format: u64,
    id: String,
    config: TopicConfig,
}

/// A subscription's spec as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SubscriptionEntry {
    format: u64,
    id: String,
    spec: SubscriptionSpec,
}

/// An alert rule as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AlertEntry {
    format: u64,
    rule: AlertRule,
}

/// An API token as stored (its secret's hash, never the secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenEntry {
    format: u64,
    token: TokenRecord,
}

/// Who holds which subscription, at which epoch: cluster mode's leases tell the storage, so
/// that opening a subscription's logs fences them for the holder.
pub trait Epochs: Send + Sync + 'static {
    /// The epoch of this node's lease on `subscription`'s unit; none when it holds none.
    fn epoch(&self, subscription: &str) -> Option<u64>;
}

/// Storage of a keel cluster on NATS JetStream.
pub struct JetStreamStorage {
    nats: Nats,
    names: Names,
    replicas: usize,
    meta: kv::Store,
    epochs: Arc<dyn Epochs>,
    /// Topic specs as last read or written, by name (streams are named by their ids).
    topics: Mutex<HashMap<String, TopicSpec>>,
    /// Subscription specs as last read or written, by name.
    subscriptions: Mutex<HashMap<String, SubscriptionEntry>>,
    /// Moves on at each change to the tokens, whichever node made it (`follow_tokens`).
    token_changes: watch::Receiver<u64>,
}

impl JetStreamStorage {
    /// Opens (creating the meta bucket if needed) the storage of cluster `names` on `nats`.
    /// Blocking.
    pub(crate) fn open(
        nats: Nats,
        names: Names,
        replicas: usize,
        epochs: Arc<dyn Epochs>,
    ) -> Result<JetStreamStorage, ClusterError> {
        let meta = open_bucket(&nats, &names.meta_bucket(), replicas, None)?;
        let (changed, token_changes) = watch::channel(0);
        nats.spawn(follow_tokens(meta.clone(), changed));
        Ok(JetStreamStorage {
            nats,
            names,
            replicas,
            meta,
            epochs,
            topics: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(HashMap::new()),
            token_changes,
        })
    }

    /// The meta bucket, for the node's view of the specs.
    pub(crate) fn meta(&self) -> kv::Store {
        self.meta.clone()
    }

    fn topic(&self, name: &str) -> Result<TopicSpec, EngineError> {
        if let Some(spec) = self.topics.lock().expect("topics lock").get(name) {
            return Ok(spec.clone());
        }
        let spec: TopicSpec = self.get_spec(&names::topic_key(name))?.ok_or_else(|| {
            EngineError::Topic(TopicError::NotFound {
                topic: name.to_owned(),
            })
        })?;
        self.topics
            .lock()
            .expect("topics lock")
            .insert(name.to_owned(), spec.clone());
        Ok(spec)
    }

    fn subscription(&self, name: &str) -> Result<SubscriptionEntry, EngineError> {
        if let Some(entry) = self.subscriptions.lock().expect("lock").get(name) {
            return Ok(entry.clone());
        }
        let entry: SubscriptionEntry = self
            .get_spec(&names::subscription_key(name))?
            .ok_or_else(|| metadata_error(format!("subscription {name:?} is not stored")))?;
        self.subscriptions
            .lock()
            .expect("lock")
            .insert(name.to_owned(), entry.clone());
        Ok(entry)
    }

    fn get_spec<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, EngineError> {
        let (meta, owned_key) = (self.meta.clone(), key.to_owned());
        let value = self
            .nats
            .block(async move { meta.get(owned_key).await })
            .map_err(|error| backend(format!("read {key}"), error))?;
        value
            .map(|bytes| decode(key, &bytes).map_err(metadata_error))
            .transpose()
    }

    /// Every spec under `prefix`, by the name after it: decoded, or why not.
    fn list<T: for<'de> Deserialize<'de>>(
        &self,
        prefix: &str,
    ) -> Result<Vec<Listed<T>>, EngineError> {
        let meta = self.meta.clone();
        let owned_prefix = prefix.to_owned();
        let entries = self
            .nats
            .block(async move {
                let mut keys = meta.keys().await?;
                let mut found = Vec::new();
                while let Some(key) = keys.next().await {
                    let key = key?;
                    if key.starts_with(&owned_prefix) {
                        found.push(key);
                    }
                }
                let mut entries = Vec::with_capacity(found.len());
                for key in found {
                    // A key deleted since the listing is simply gone.
                    if let Some(value) = meta.get(&key).await? {
                        entries.push((key, value));
                    }
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(entries)
            })
            .map_err(|error| backend(format!("list {prefix}*"), error))?;
        Ok(entries
            .into_iter()
            .map(|(key, value)| {
                let name = key[prefix.len()..].to_owned();
                (name, decode(&key, &value))
            })
            .collect())
    }

    fn create_key(&self, key: &str, value: Vec<u8>) -> Result<bool, EngineError> {
        let (meta, owned_key) = (self.meta.clone(), key.to_owned());
        let created = self
            .nats
            .block(async move { meta.create(owned_key, value.into()).await });
        match created {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(backend(format!("create {key}"), error)),
        }
    }

    fn put_key(&self, key: &str, value: Vec<u8>) -> Result<(), EngineError> {
        let (meta, owned_key) = (self.meta.clone(), key.to_owned());
        self.nats
            .block(async move { meta.put(owned_key, value.into()).await })
            .map(|_| ())
            .map_err(|error| backend(format!("write {key}"), error))
    }

    fn delete_key(&self, key: &str) -> Result<(), EngineError> {
        let (meta, owned_key) = (self.meta.clone(), key.to_owned());
        self.nats
            .block(async move { meta.delete(owned_key).await })
            .map_err(|error| backend(format!("delete {key}"), error))
    }

    fn create_stream(&self, config: stream::Config) -> Result<(), EngineError> {
        let (jetstream, name) = (self.nats.jetstream.clone(), config.name.clone());
        self.nats
            .block(async move { jetstream.create_stream(config).await.map(|_| ()) })
            .map_err(|error| backend(format!("create stream {name}"), error))
    }

    fn delete_streams(&self, streams: Vec<String>) {
        let jetstream = self.nats.jetstream.clone();
        self.nats.block(async move {
            for stream in streams {
                if let Err(error) = jetstream.delete_stream(&stream).await {
                    tracing::warn!(stream, %error, "could not delete a stream; it is left behind, named by an id no spec holds");
                }
            }
        });
    }

    fn stream_config(&self, name: String, subject: String) -> stream::Config {
        stream::Config {
            name,
            subjects: vec![subject],
            num_replicas: self.replicas,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_messages: -1,
            max_bytes: -1,
            max_message_size: -1,
            duplicate_window: DUPLICATE_WINDOW,
            allow_atomic_publish: true,
            allow_direct: true,
            ..Default::default()
        }
    }

    fn subscription_streams(&self, entry: &SubscriptionEntry) -> Vec<(SubscriptionLog, String)> {
        let mut logs = vec![SubscriptionLog::Checkpoints, SubscriptionLog::DeadLetters];
        if entry.spec.stateful {
            logs.push(SubscriptionLog::StateCommits);
        }
        logs.into_iter()
            .map(|log| (log, self.names.subscription_stream(&entry.id, log)))
            .collect()
    }

    /// Opens one of a subscription's logs for this node's lease, fencing it first.
    fn open_subscription_log(
        &self,
        name: &str,
        entry: &SubscriptionEntry,
        log: SubscriptionLog,
    ) -> Result<JetStreamLog, EngineError> {
        let epoch = self.epochs.epoch(name).ok_or_else(|| {
            EngineError::Data(DataError::Storage {
                context: format!("open subscription {name:?}"),
                source: StorageError::Backend(Box::new(ClusterError::JetStream {
                    op: "open".into(),
                    detail: "this node holds no lease on it".into(),
                })),
            })
        })?;
        let stream = self.names.subscription_stream(&entry.id, log);
        let subject = self.names.subscription_subject(&entry.id, log, epoch);
        crate::fence::fence(&self.nats, &stream, &subject)
            .map_err(|source| storage(format!("fence {stream}"), source))?;
        // A stateful subscription's table is this node's memory, rebuilt from all commits:
        // they stay.
        let trimmed = log != SubscriptionLog::StateCommits;
        JetStreamLog::open(&self.nats, &stream, &subject, Writers::LeaseHolder, trimmed)
            .map_err(|source| storage(format!("open {stream}"), source))
    }
}

impl Storage for JetStreamStorage {
    fn damage(&self) -> Vec<DataDirDamage> {
        Vec::new()
    }

    fn check_usable(&self, _area: Area) -> Result<(), EngineError> {
        Ok(())
    }

    fn topics(&self) -> Result<Vec<StoredTopic>, EngineError> {
        let listed = self.list::<TopicSpec>("topics.")?;
        let mut cache = self.topics.lock().expect("topics lock");
        Ok(listed
            .into_iter()
            .map(|(name, spec)| {
                let config = spec.map(|spec| {
                    let config = spec.config;
                    cache.insert(name.clone(), spec);
                    config
                });
                StoredTopic { name, config }
            })
            .collect())
    }

    fn create_topic(&self, name: &str, config: &TopicConfig) -> Result<(), EngineError> {
        let spec = TopicSpec {
            format: SPEC_FORMAT,
            id: names::new_id(),
            config: *config,
        };
        let mut streams = Vec::new();
        for partition in 0..config.partitions {
            let stream_name = self.names.partition_stream(&spec.id, partition);
            let subject = self.names.partition_subject(&spec.id, partition);
            let mut stream_config = self.stream_config(stream_name.clone(), subject);
            stream_config.max_age = config.retention.max_age.unwrap_or(Duration::ZERO);
            stream_config.max_bytes = config
                .retention
                .max_bytes
                .map_or(-1, |bytes| i64::try_from(bytes).unwrap_or(i64::MAX));
            stream_config.metadata = HashMap::from([
                ("keel.topic".to_owned(), name.to_owned()),
                ("keel.partition".to_owned(), partition.to_string()),
            ]);
            streams.push(stream_name);
            if let Err(error) = self.create_stream(stream_config) {
                self.delete_streams(streams);
                return Err(error);
            }
        }
        let value = serde_json::to_vec(&spec).expect("a topic spec serialises");
        match self.create_key(&names::topic_key(name), value) {
            Ok(true) => {
                self.topics
                    .lock()
                    .expect("topics lock")
                    .insert(name.to_owned(), spec);
                Ok(())
            }
            Ok(false) => {
                // Another node created it at the same time: the stored one stands.
                self.delete_streams(streams);
                let existing = self.topic(name)?.config;
                Err(EngineError::Topic(TopicError::Conflict {
                    topic: name.to_owned(),
                    existing: Box::new(existing),
                }))
            }
            Err(error) => {
                self.delete_streams(streams);
                Err(error)
            }
        }
    }

    fn delete_topic(&self, name: &str) -> Result<(), EngineError> {
        let spec = self.topic(name)?;
        self.delete_key(&names::topic_key(name))?;
        self.topics.lock().expect("topics lock").remove(name);
        let streams = (0..spec.config.partitions)
            .map(|partition| self.names.partition_stream(&spec.id, partition))
            .collect();
        self.delete_streams(streams);
        Ok(())
    }

    fn open_key_index(&self, _topic: &str) -> Result<Box<dyn StateTable>, EngineError> {
        // A cache the partitions rebuild: in this node's memory.
        Ok(Box::new(MemoryTable::default()))
    }

    fn open_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<dyn RecordLog>, StorageError> {
        let spec = self.topic(topic).map_err(|error| {
            StorageError::Backend(Box::new(ClusterError::jetstream("open a partition", error)))
        })?;
        let stream = self.names.partition_stream(&spec.id, partition);
        let subject = self.names.partition_subject(&spec.id, partition);
        let log = JetStreamLog::open(&self.nats, &stream, &subject, Writers::Any, true)?;
        Ok(Arc::new(log))
    }

    fn subscriptions(&self) -> Result<Vec<StoredSubscription>, EngineError> {
        let listed = self.list::<SubscriptionEntry>("subscriptions.")?;
        let mut cache = self.subscriptions.lock().expect("lock");
        Ok(listed
            .into_iter()
            .map(|(name, entry)| {
                let spec = entry.map(|entry| {
                    let spec = entry.spec.clone();
                    cache.insert(name.clone(), entry);
                    spec
                });
                StoredSubscription { name, spec }
            })
            .collect())
    }

    fn create_subscription(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
        checkpoint: &[u8],
    ) -> Result<(), EngineError> {
        let entry = SubscriptionEntry {
            format: SPEC_FORMAT,
            id: names::new_id(),
            spec: spec.clone(),
        };
        let streams = self.subscription_streams(&entry);
        let mut made = Vec::new();
        for (log, stream_name) in &streams {
            // Made at epoch 0, which no lease has: the first holder fences it for its own.
            let subject = self.names.subscription_subject(&entry.id, *log, 0);
            let mut config = self.stream_config(stream_name.clone(), subject);
            config.allow_rollup = true;
            config.metadata = HashMap::from([("keel.subscription".to_owned(), name.to_owned())]);
            made.push(stream_name.clone());
            if let Err(error) = self.create_stream(config) {
                self.delete_streams(made);
                return Err(error);
            }
        }
        // The first checkpoint, before the spec names the streams.
        let checkpoints = self
            .names
            .subscription_stream(&entry.id, SubscriptionLog::Checkpoints);
        let subject = self
            .names
            .subscription_subject(&entry.id, SubscriptionLog::Checkpoints, 0);
        let written = JetStreamLog::open(
            &self.nats,
            &checkpoints,
            &subject,
            Writers::LeaseHolder,
            true,
        )
        .and_then(|log| log.append(keel_engine::clock::now_ms(), &[checkpoint], true));
        if let Err(source) = written {
            self.delete_streams(made);
            return Err(storage(
                format!("write the first checkpoint of {name:?}"),
                source,
            ));
        }
        let value = serde_json::to_vec(&entry).expect("a subscription spec serialises");
        match self.create_key(&names::subscription_key(name), value) {
            Ok(true) => {
                self.subscriptions
                    .lock()
                    .expect("lock")
                    .insert(name.to_owned(), entry);
                Ok(())
            }
            Ok(false) => {
                self.delete_streams(made);
                Err(metadata_error(format!(
                    "subscription {name:?} was created by another node at the same time"
                )))
            }
            Err(error) => {
                self.delete_streams(made);
                Err(error)
            }
        }
    }

    fn replace_subscription_spec(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
    ) -> Result<(), EngineError> {
        let mut entry = self.subscription(name)?;
        entry.spec = spec.clone();
        let value = serde_json::to_vec(&entry).expect("a subscription spec serialises");
        self.put_key(&names::subscription_key(name), value)?;
        self.subscriptions
            .lock()
            .expect("lock")
            .insert(name.to_owned(), entry);
        Ok(())
    }

    fn open_subscription(&self, name: &str) -> Result<SubscriptionLogs, EngineError> {
        let entry = self.subscription(name)?;
        let checkpoints = self.open_subscription_log(name, &entry, SubscriptionLog::Checkpoints)?;
        let dead_letters =
            self.open_subscription_log(name, &entry, SubscriptionLog::DeadLetters)?;
        Ok(SubscriptionLogs {
            checkpoints: Box::new(checkpoints),
            dead_letters: Box::new(dead_letters),
            state: None,
        })
    }

    fn open_state(&self, name: &str) -> Result<StateLogs, EngineError> {
        let entry = self.subscription(name)?;
        let commits = self.open_subscription_log(name, &entry, SubscriptionLog::StateCommits)?;
        Ok(StateLogs {
            commits: Box::new(commits),
            table: Box::new(MemoryTable::default()),
        })
    }

    fn delete_subscription(&self, name: &str) -> Result<(), EngineError> {
        let entry = self.subscription(name)?;
        self.delete_key(&names::subscription_key(name))?;
        self.subscriptions.lock().expect("lock").remove(name);
        let streams = self
            .subscription_streams(&entry)
            .into_iter()
            .map(|(_, stream)| stream)
            .collect();
        self.delete_streams(streams);
        Ok(())
    }

    fn alert_rules(&self) -> Result<Vec<StoredAlertRule>, EngineError> {
        Ok(self
            .list::<AlertEntry>("alerts.")?
            .into_iter()
            .map(|(name, entry)| StoredAlertRule {
                name,
                rule: entry.map(|entry| entry.rule),
            })
            .collect())
    }

    fn put_alert_rule(&self, name: &str, rule: &AlertRule) -> Result<(), EngineError> {
        let entry = AlertEntry {
            format: SPEC_FORMAT,
            rule: rule.clone(),
        };
        let value = serde_json::to_vec(&entry).expect("an alert rule serialises");
        self.put_key(&names::alert_key(name), value)
    }

    fn delete_alert_rule(&self, name: &str) -> Result<(), EngineError> {
        self.delete_key(&names::alert_key(name))
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, EngineError> {
        let listed = self.list::<TokenEntry>(names::TOKEN_KEY_PREFIX)?;
        let tokens = listed
            .into_iter()
            .map(|(id, entry)| (id, entry.map(|entry| entry.token)))
            .collect();
        Ok(readable_tokens(tokens))
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), EngineError> {
        let entry = TokenEntry {
            format: SPEC_FORMAT,
            token: token.clone(),
        };
        let value = serde_json::to_vec(&entry).expect("a token serialises");
        self.put_key(&names::token_key(&token.id), value)
    }

    fn delete_token(&self, id: &str) -> Result<(), EngineError> {
        self.delete_key(&names::token_key(id))
    }

    fn token_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.token_changes.clone())
    }

    fn free_bytes(&self) -> Result<Option<u64>, StorageError> {
        // The NATS servers guard their own disks (max_file_store); keel has no figure of them.
        Ok(None)
    }

    fn stored_bytes(&self) -> Result<u64, StorageError> {
        let jetstream = self.nats.jetstream.clone();
        let account = self
            .nats
            .block(async move { jetstream.query_account().await })
            .map_err(|error| ClusterError::jetstream("query the account", error))?;
        Ok(account.storage)
    }
}

/// Opens a KV bucket, creating it (with `ttl` on its entries, if any) when it is not there.
pub(crate) fn open_bucket(
    nats: &Nats,
    bucket: &str,
    replicas: usize,
    ttl: Option<Duration>,
) -> Result<kv::Store, ClusterError> {
    let (jetstream, name): (jetstream::Context, String) =
        (nats.jetstream.clone(), bucket.to_owned());
    nats.block(async move {
        let store = match jetstream.get_key_value(&name).await {
            Ok(store) => store,
            Err(_) => {
                let config = kv::Config {
                    bucket: name.clone(),
                    history: 1,
                    num_replicas: replicas,
                    storage: stream::StorageType::File,
                    max_age: ttl.unwrap_or(Duration::ZERO),
                    ..Default::default()
                };
                match jetstream.create_key_value(config).await {
                    Ok(store) => store,
                    Err(created) => match jetstream.get_key_value(&name).await {
                        // Another node made it at the same moment.
                        Ok(store) => store,
                        Err(_) => {
                            return Err(ClusterError::JetStream {
                                op: format!("create bucket {name} with {replicas} replicas"),
                                detail: format!(
                                    "{created}. With fewer NATS servers than replicas, give --replicas (1 for a single server)"
                                ),
                            });
                        }
                    },
                }
            }
        };
        // Every node must agree on how long leases and heartbeats last: the first node set it.
        if let Some(ttl) = ttl {
            let status = store
                .status()
                .await
                .map_err(|error| ClusterError::jetstream(format!("describe bucket {name}"), error))?;
            let set = status.max_age();
            if set != ttl {
                return Err(ClusterError::JetStream {
                    op: format!("open bucket {name}"),
                    detail: format!(
                        "this cluster's leases last {}s (set by its first node), not {}s: give --lease-ttl {}s, as every node of the cluster must",
                        set.as_secs(),
                        ttl.as_secs(),
                        set.as_secs()
                    ),
                });
            }
        }
        Ok(store)
    })
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|error| format!("{key}: {error}"))?;
    let format = value.get("format").and_then(serde_json::Value::as_u64);
    if format != Some(SPEC_FORMAT) {
        return Err(format!(
            "{key}: stored in format {format:?}, which this keel does not read (it reads {SPEC_FORMAT}); run a keel that wrote it"
        ));
    }
    serde_json::from_value(value).map_err(|error| format!("{key}: {error}"))
}

fn backend(context: String, error: impl std::fmt::Display) -> EngineError {
    storage(
        context.clone(),
        StorageError::from(ClusterError::jetstream(context, error)),
    )
}

fn storage(context: String, source: StorageError) -> EngineError {
    EngineError::Data(DataError::Storage { context, source })
}

fn metadata_error(detail: String) -> EngineError {
    EngineError::Data(DataError::Corrupt { detail })
}

/// How often the tokens are read again even when no change was heard of: a watch that
/// stalled without an error is covered within this.
const TOKENS_REREAD_INTERVAL: Duration = Duration::from_secs(10);

/// Moves `changed` on at each change to a token in the meta bucket (a create, a
/// revocation, by any node), when the watch starts again after a failure (changes may have
/// been missed), and every [`TOKENS_REREAD_INTERVAL`]. Its holder reads every token again
/// each time. Ends when no one holds the other end.
async fn follow_tokens(meta: kv::Store, changed: watch::Sender<u64>) {
    let bump = || changed.send_modify(|count| *count += 1);
    while !changed.is_closed() {
        match meta.watch(format!("{}>", names::TOKEN_KEY_PREFIX)).await {
            Ok(mut entries) => {
                bump();
                loop {
                    let next = tokio::time::timeout(TOKENS_REREAD_INTERVAL, entries.next()).await;
                    match next {
                        Ok(Some(Ok(_))) | Err(_) => bump(),
                        Ok(Some(Err(error))) => {
                            tracing::warn!(%error, "the watch on the API tokens failed; starting it again");
                            break;
                        }
                        Ok(None) => break,
                    }
                    if changed.is_closed() {
                        return;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch the API tokens; retrying");
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
