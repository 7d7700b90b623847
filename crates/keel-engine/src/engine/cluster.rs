//! The engine as one node of a cluster: several engines share one storage (cluster mode on
//! NATS JetStream, the `keel-cluster` crate), every node serves every topic, and each
//! subscription is hosted by one node at a time, the one holding its lease.
//!
//! The [`Placement`] (the cluster's leases) decides which node hosts what; the engine only
//! does as told: [`Engine::host_subscription`] opens a subscription from the shared storage
//! and starts it, [`Engine::unhost_subscription`] stops it and keeps everything stored, and
//! [`Engine::sync_topics`] opens the topics other nodes created and closes those they
//! deleted. A subscription created through this node is claimed for it first, so that its
//! creator can answer with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Engine, EngineConfig};
use crate::config::{is_internal_topic, validate_topic_config, validate_topic_name};
use crate::error::{EngineError, SubscriptionError};
use crate::storage::Storage;
use crate::topic::Topic;

/// How long this node's lease on a subscription is sure to last, as the cluster renews it;
/// shared by the lease keeper and the subscription, which hands nothing out past it. Clones
/// share one deadline.
#[derive(Debug, Clone)]
pub struct Tenure {
    /// The deadline, in nanoseconds after [`Tenure::base`].
    until_nanos: Arc<AtomicU64>,
}

impl Tenure {
    /// A tenure valid for `length` from now.
    pub fn new(length: Duration) -> Tenure {
        let tenure = Tenure {
            until_nanos: Arc::new(AtomicU64::new(0)),
        };
        tenure.extend_to(Instant::now() + length);
        tenure
    }

    fn base() -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    /// Valid until `deadline` (never shortened); returns whether it had lapsed before.
    pub fn extend_to(&self, deadline: Instant) -> bool {
        let nanos = u64::try_from(deadline.saturating_duration_since(Self::base()).as_nanos())
            .unwrap_or(u64::MAX);
        let lapsed = !self.is_valid();
        self.until_nanos.fetch_max(nanos, Ordering::SeqCst);
        lapsed
    }

    /// Whether the deadline is still ahead.
    pub fn is_valid(&self) -> bool {
        let now = u64::try_from(Self::base().elapsed().as_nanos()).unwrap_or(u64::MAX);
        now < self.until_nanos.load(Ordering::SeqCst)
    }
}

/// Which subscriptions this node hosts. Methods block (they may ask the cluster).
pub trait Placement: Send + Sync + 'static {
    /// The tenure of this node's lease on `subscription`, which it hosts: it hands nothing
    /// out once the tenure lapsed.
    fn tenure(&self, subscription: &str) -> Option<Tenure>;

    /// Takes the lease of a subscription about to be created through this node, so that
    /// this node may open it.
    fn claim(&self, subscription: &str) -> Result<(), EngineError>;

    /// Gives up the lease of a subscription this node deleted, or failed to create.
    fn release(&self, subscription: &str);
}

impl Engine {
    /// Opens an engine as a node of a cluster on `storage`: every topic stored there, and no
    /// subscription until `placement` has this node host it.
    pub async fn open_member(
        config: EngineConfig,
        storage: Arc<dyn Storage>,
        placement: Arc<dyn Placement>,
    ) -> Result<Engine, EngineError> {
        Self::open_inner(config, storage, Some(placement)).await
    }

    /// Whether this node runs subscription `name` now.
    pub fn hosts_subscription(&self, name: &str) -> bool {
        self.inner
            .subscriptions
            .read()
            .expect("subscriptions lock")
            .contains_key(name)
    }

    /// Opens a stored subscription on this node and starts it (its lease was taken).
    pub async fn host_subscription(&self, name: &str) -> Result<(), EngineError> {
        let _admin = self.inner.admin.lock().await;
        if self.hosts_subscription(name) {
            return Ok(());
        }
        let (storage, owned_name) = (self.inner.storage.clone(), name.to_owned());
        let surroundings = self.inner.surroundings();
        let subscription = tokio::task::spawn_blocking(move || {
            let stored = storage
                .subscriptions()?
                .into_iter()
                .find(|stored| stored.name == owned_name)
                .ok_or_else(|| {
                    EngineError::Subscription(SubscriptionError::NotFound {
                        name: owned_name.clone(),
                    })
                })?;
            super::subscriptions::open_one(&*storage, stored, &surroundings)
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)??;
        self.place(&subscription);
        subscription.start(&self.inner.supervisor);
        self.inner
            .subscriptions
            .write()
            .expect("subscriptions lock")
            .insert(name.to_owned(), Arc::new(subscription));
        tracing::info!(subscription = name, "hosting subscription");
        Ok(())
    }

    /// Stops subscription `name` on this node, keeping all it stored (its lease went, or is
    /// handed to another node): what it had acknowledged is checkpointed first, as at a
    /// shutdown.
    pub async fn unhost_subscription(&self, name: &str) {
        let _admin = self.inner.admin.lock().await;
        let removed = self
            .inner
            .subscriptions
            .write()
            .expect("subscriptions lock")
            .remove(name);
        let Some(subscription) = removed else {
            return;
        };
        self.stop_subscription(&subscription).await;
        tracing::info!(subscription = name, "stopped hosting subscription");
    }

    /// Whether subscription `name` is stored (hosted here, on another node, or nowhere now).
    pub async fn stores_subscription(&self, name: &str) -> Result<bool, EngineError> {
        let (storage, name) = (self.inner.storage.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || {
            Ok(storage
                .subscriptions()?
                .iter()
                .any(|stored| stored.name == name))
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)?
    }

    /// In a cluster, the stored subscriptions that read `topic` and that this node does not
    /// host (none on a single node).
    pub(super) async fn readers_elsewhere(&self, topic: &str) -> Result<Vec<String>, EngineError> {
        if self.inner.placement.is_none() {
            return Ok(Vec::new());
        }
        let storage = self.inner.storage.clone();
        let stored = tokio::task::spawn_blocking(move || storage.subscriptions())
            .await
            .map_err(|_| EngineError::ShuttingDown)??;
        Ok(stored
            .into_iter()
            .filter(|stored| {
                stored.spec.as_ref().is_ok_and(|spec| spec.topic == topic)
                    && !self.hosts_subscription(&stored.name)
            })
            .map(|stored| stored.name)
            .collect())
    }

    /// The names of the subscriptions this node hosts.
    pub fn hosted_subscriptions(&self) -> Vec<String> {
        self.inner
            .subscriptions
            .read()
            .expect("subscriptions lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Opens the topics stored by other nodes that this node has not opened, and closes
    /// those deleted by other nodes (their storage is gone already).
    pub async fn sync_topics(&self) -> Result<(), EngineError> {
        let _admin = self.inner.admin.lock().await;
        let storage = self.inner.storage.clone();
        let stored = tokio::task::spawn_blocking(move || storage.topics())
            .await
            .map_err(|_| EngineError::ShuttingDown)??;
        let open: Vec<String> = self
            .inner
            .topics
            .read()
            .expect("topics lock")
            .keys()
            .cloned()
            .collect();
        for name in open
            .iter()
            .filter(|name| !stored.iter().any(|topic| &topic.name == *name))
        {
            let removed = self.inner.topics.write().expect("topics lock").remove(name);
            if let Some(topic) = removed {
                topic.shut_down().await;
                self.inner
                    .metrics
                    .remove_topic(name, topic.config.partitions);
                self.inner.supervisor.forget(&format!("topic/{name}/"));
                tracing::info!(topic = %name, "closed a topic deleted by another node");
            }
        }
        for stored in stored {
            if open.contains(&stored.name)
                || (!is_internal_topic(&stored.name) && validate_topic_name(&stored.name).is_err())
            {
                continue;
            }
            let Ok(config) = stored.config else {
                continue;
            };
            if validate_topic_config(&config).is_err() {
                continue;
            }
            let (storage, metrics, name) = (
                self.inner.storage.clone(),
                self.inner.metrics.clone(),
                stored.name.clone(),
            );
            let topic =
                tokio::task::spawn_blocking(move || Topic::open(&*storage, &name, config, metrics))
                    .await
                    .map_err(|_| EngineError::ShuttingDown)?;
            topic.start_tasks(&self.inner.supervisor);
            self.inner
                .topics
                .write()
                .expect("topics lock")
                .insert(stored.name.clone(), topic);
            tracing::info!(topic = %stored.name, "opened a topic created by another node");
        }
        Ok(())
    }

    /// In a cluster, opens topic `name` here when another node created it since this node's
    /// last round: a client may use a topic through any node the moment it exists. (No-op
    /// on a single node, or when the topic is open.)
    pub async fn find_topic(&self, name: &str) {
        if self.inner.placement.is_none() {
            return;
        }
        let open = self
            .inner
            .topics
            .read()
            .expect("topics lock")
            .contains_key(name);
        if !open {
            self.refresh_topics().await;
        }
    }

    /// In a cluster, opens the topics other nodes created and closes those they deleted
    /// since this node's last round (before a listing). No-op on a single node.
    pub async fn refresh_topics(&self) {
        if self.inner.placement.is_some()
            && let Err(error) = self.sync_topics().await
        {
            tracing::warn!(%error, "could not read the topics other nodes created");
        }
    }

    /// Gives a subscription about to start here its tenure (no-op on a single node).
    pub(super) fn place(&self, subscription: &crate::subscription::Subscription) {
        if let Some(tenure) = self
            .inner
            .placement
            .as_ref()
            .and_then(|placement| placement.tenure(subscription.name()))
        {
            subscription.set_tenure(tenure);
        }
    }

    /// Wakes subscription `name`'s deliveries: its lease, lapsed, was renewed.
    pub fn wake_subscription(&self, name: &str) {
        let hosted = self
            .inner
            .subscriptions
            .read()
            .expect("subscriptions lock")
            .get(name)
            .cloned();
        if let Some(subscription) = hosted {
            subscription.wake();
        }
    }

    /// Claims a subscription for this node before it is created (no-op on a single node).
    pub(super) async fn claim_subscription(&self, name: &str) -> Result<(), EngineError> {
        let Some(placement) = self.inner.placement.clone() else {
            return Ok(());
        };
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || placement.claim(&name))
            .await
            .map_err(|_| EngineError::ShuttingDown)?
    }

    /// Gives up a deleted (or not created) subscription's lease (no-op on a single node).
    pub(super) async fn release_subscription(&self, name: &str) {
        let Some(placement) = self.inner.placement.clone() else {
            return;
        };
        let name = name.to_owned();
        let _ = tokio::task::spawn_blocking(move || placement.release(&name)).await;
    }
}
