//! One node of a keel cluster: its heartbeat, its leases, and the rebalance that spreads the
//! units of work (subscriptions) over the live nodes.
//!
//! Every node runs the same loop, each third of the lease TTL:
//! 1. **Heartbeat**: write its key in the nodes bucket (whose entries expire after a TTL),
//!    with its HTTP API's URL. The live nodes are the keys there.
//! 2. **Renew** its leases; stop hosting a unit whose lease was lost (or not renewed within
//!    the TTL: this node was paused or cut off, and another may hold it).
//! 3. **Rebalance**: each unit belongs on the live node that rendezvous hashing ranks first
//!    for it, so each of N nodes gets about 1/N of them and a change of nodes moves only the
//!    units it must. A node hands over what belongs elsewhere (stops it, checkpointing what
//!    was acknowledged, and releases the lease) and takes what belongs to it once free. A
//!    unit whose node died is free after the lease TTL, so it moves within about two TTLs.
//! 4. Opens topics other nodes created, closes those they deleted.
//!
//! A subscription whose storage failed on this node (its logs unreachable, or fenced) is
//! stopped and its lease let go, so that it is opened again from JetStream (the cluster's
//! way of restarting it), where the rebalance places it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use keel_api::cluster::{ClusterStatus, NodeStatus, UnitStatus};
use keel_engine::error::{EngineError, SubscriptionError};
use keel_engine::{Engine, Placement};
use serde::{Deserialize, Serialize};

use crate::error::ClusterError;
use crate::lease::{Holder, Leases};
use crate::names::Names;
use crate::nats::Nats;
use crate::storage::{JetStreamStorage, open_bucket};

/// Longest node id.
pub const NODE_ID_BYTES_MAX: usize = 64;
/// The lease TTL by default: a dead node's units move within about twice this.
pub const LEASE_TTL_DEFAULT: Duration = Duration::from_secs(5);
/// Shortest lease TTL: JetStream expires entries on a timer of about a second.
pub const LEASE_TTL_MIN: Duration = Duration::from_secs(2);
/// Most units one node hands over or takes in one round, so that a rebalance is gradual.
const MOVES_PER_ROUND_MAX: usize = 16;

/// How a node joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The NATS servers, comma-separated `nats://host:port`.
    pub servers: String,
    /// The cluster's name: several keel clusters may share a NATS account.
    pub cluster_name: String,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// This node's HTTP API as the other nodes reach it (requests for a subscription hosted
    /// elsewhere are forwarded there).
    pub advertise_url: String,
    /// Replicas of every stream and bucket: 3 survives the loss of one NATS server.
    pub replicas: usize,
    /// How long a lease (and a heartbeat) lasts without renewal.
    pub lease_ttl: Duration,
    /// TLS to the NATS servers.
    pub tls: NatsTls,
}

/// TLS to the NATS servers: on with a CA file (or `tls://` URLs, verified against the
/// system's roots), with a client certificate where the servers ask for one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// PEM: the CA certificates the servers' certificates are verified against (TLS is
    /// then required).
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM: this node's client certificate, for servers that verify clients (mutual TLS).
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM: the client certificate's private key.
    pub key_file: Option<std::path::PathBuf>,
}

/// A node's heartbeat, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Heartbeat {
    url: String,
    started_at: String,
    at_ms: i64,
}

/// The cluster as the last round saw it.
#[derive(Debug, Clone, Default)]
struct View {
    /// Live nodes: id → heartbeat.
    nodes: BTreeMap<String, Heartbeat>,
    /// Leases: unit → holder and epoch.
    leases: BTreeMap<String, (Holder, u64)>,
    /// Units (subscriptions), by lease key.
    units: BTreeSet<String>,
    /// The topic names stored, to notice creates and deletes by other nodes.
    topics: BTreeSet<String>,
}

/// This node of a keel cluster.
pub struct ClusterNode {
    nats: Nats,
    names: Names,
    options: ClusterOptions,
    started_at: String,
    storage: Arc<JetStreamStorage>,
    leases: Arc<Leases>,
    nodes: kv::Store,
    meta: kv::Store,
    view: Mutex<View>,
}

/// The lease key of a subscription's unit.
pub(crate) fn subscription_unit(subscription: &str) -> String {
    format!("subscriptions.{subscription}")
}

fn unit_subscription(unit: &str) -> Option<&str> {
    unit.strip_prefix("subscriptions.")
}

impl ClusterNode {
    /// Connects to NATS and opens (creating when needed) the cluster's buckets. Blocking.
    pub fn connect(options: ClusterOptions) -> Result<Arc<ClusterNode>, ClusterError> {
        let names = Names::new(&options.cluster_name)?;
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-');
        if options.node_id.is_empty()
            || options.node_id.len() > NODE_ID_BYTES_MAX
            || !options.node_id.chars().all(valid)
        {
            return Err(ClusterError::InvalidNodeId {
                id: options.node_id.clone(),
            });
        }
        let nats = Nats::connect(
            &options.servers,
            &format!("keel {} {}", names.cluster(), options.node_id),
            &options.tls,
        )?;
        let leases_bucket = open_bucket(
            &nats,
            &names.leases_bucket(),
            options.replicas,
            Some(options.lease_ttl),
        )?;
        let nodes = open_bucket(
            &nats,
            &names.nodes_bucket(),
            options.replicas,
            Some(options.lease_ttl),
        )?;
        check_node_id_free(&nats, &nodes, &options)?;
        let holder = Holder {
            node: options.node_id.clone(),
            url: options.advertise_url.clone(),
            epoch: None,
        };
        let leases = Arc::new(Leases::new(
            nats.clone(),
            leases_bucket,
            holder,
            options.lease_ttl,
        ));
        let storage = JetStreamStorage::open(
            nats.clone(),
            names.clone(),
            options.replicas,
            leases.clone(),
        )?;
        let meta = storage.meta();
        let started_at = keel_engine::clock::format_rfc3339_ms(keel_engine::clock::now_ms());
        Ok(Arc::new(ClusterNode {
            nats,
            names,
            options,
            started_at,
            storage: Arc::new(storage),
            leases,
            nodes,
            meta,
            view: Mutex::new(View::default()),
        }))
    }

    /// The storage every node shares, for the engine.
    pub fn storage(&self) -> Arc<JetStreamStorage> {
        self.storage.clone()
    }

    /// Where this node's subscriptions are placed, for the engine.
    pub fn placement(self: &Arc<Self>) -> Arc<dyn Placement> {
        self.clone()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.options.node_id
    }

    /// Runs the node's rounds (heartbeat, leases, rebalance) on the current runtime until
    /// `engine` shuts down.
    pub fn start(self: &Arc<Self>, engine: Engine) -> tokio::task::JoinHandle<()> {
        let node = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(node.options.lease_ttl / 3);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                ticker.tick().await;
                if let Err(error) = node.round(&engine).await {
                    tracing::warn!(%error, "cluster round failed; trying again");
                }
            }
        })
    }

    /// One round; see the module documentation.
    async fn round(&self, engine: &Engine) -> Result<(), ClusterError> {
        self.heartbeat().await?;
        // Leases not renewed within the TTL may be another node's now: stop their work
        // before anything else, then renew (which finds out).
        for unit in self.leases.stale(self.options.lease_ttl) {
            if let Some(subscription) = unit_subscription(&unit) {
                tracing::warn!(
                    subscription,
                    "lease not renewed within its TTL; stopping its work until renewed"
                );
                engine.unhost_subscription(subscription).await;
            }
        }
        let (lost, revived) = self.leases.renew_all().await;
        for unit in lost {
            if let Some(subscription) = unit_subscription(&unit) {
                engine.unhost_subscription(subscription).await;
            }
        }
        for unit in revived {
            if let Some(subscription) = unit_subscription(&unit) {
                engine.wake_subscription(subscription);
            }
        }
        // A subscription whose storage failed here (NATS without a quorum, a fence) stops;
        // its lease goes, so that it is opened again from JetStream, here or elsewhere: the
        // cluster's restart of it.
        for unavailable in engine.unavailable_subscriptions() {
            let unit = subscription_unit(&unavailable.name);
            if engine.hosts_subscription(&unavailable.name) {
                tracing::warn!(subscription = %unavailable.name, reason = %unavailable.reason, "subscription failed here; opening it again from the cluster's storage");
                engine.unhost_subscription(&unavailable.name).await;
                self.leases.release(&unit).await;
            }
        }
        let view = self.observe().await?;
        let topics_changed = {
            let mut last = self.view.lock().expect("view lock");
            let changed = last.topics != view.topics;
            *last = view.clone();
            changed
        };
        if topics_changed && let Err(error) = engine.sync_topics().await {
            tracing::warn!(%error, "could not open the topics other nodes created");
        }
        self.rebalance(engine, &view).await;
        Ok(())
    }

    async fn heartbeat(&self) -> Result<(), ClusterError> {
        let heartbeat = Heartbeat {
            url: self.options.advertise_url.clone(),
            started_at: self.started_at.clone(),
            at_ms: keel_engine::clock::now_ms(),
        };
        let value = serde_json::to_vec(&heartbeat).expect("a heartbeat serialises");
        let (nodes, key) = (self.nodes.clone(), self.options.node_id.clone());
        self.nats
            .run(async move { nodes.put(key, value.into()).await })
            .await
            .map(|_| ())
            .map_err(|error| ClusterError::jetstream("heartbeat", error))
    }

    /// Reads the live nodes, the leases, the units and the topics.
    async fn observe(&self) -> Result<View, ClusterError> {
        let nodes = self.nodes.clone();
        let live = self
            .nats
            .run(async move {
                let mut keys = nodes.keys().await?;
                let mut ids = Vec::new();
                while let Some(key) = keys.next().await {
                    ids.push(key?);
                }
                let mut live = BTreeMap::new();
                for id in ids {
                    if let Some(value) = nodes.get(&id).await?
                        && let Ok(heartbeat) = serde_json::from_slice::<Heartbeat>(&value)
                    {
                        live.insert(id, heartbeat);
                    }
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(live)
            })
            .await
            .map_err(|error| ClusterError::jetstream("list nodes", error))?;
        let meta = self.meta.clone();
        let keys = self
            .nats
            .run(async move {
                let mut keys = meta.keys().await?;
                let mut all = Vec::new();
                while let Some(key) = keys.next().await {
                    all.push(key?);
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(all)
            })
            .await
            .map_err(|error| ClusterError::jetstream("list specs", error))?;
        let units = keys
            .iter()
            .filter(|key| key.starts_with("subscriptions."))
            .cloned()
            .collect();
        let topics = keys
            .iter()
            .filter_map(|key| key.strip_prefix("topics."))
            .map(str::to_owned)
            .collect();
        let leases = self
            .leases
            .all()
            .await?
            .into_iter()
            .map(|(unit, holder, revision)| (unit, (holder, revision)))
            .collect();
        Ok(View {
            nodes: live,
            leases,
            units,
            topics,
        })
    }

    /// Hands over the units that belong elsewhere and takes those that belong here.
    async fn rebalance(&self, engine: &Engine, view: &View) {
        let me = self.options.node_id.as_str();
        let mut moves = 0;
        let held: BTreeSet<String> = self.leases.units().into_iter().collect();
        for unit in &held {
            if moves >= MOVES_PER_ROUND_MAX {
                return;
            }
            let Some(subscription) = unit_subscription(unit) else {
                continue;
            };
            if !view.units.contains(unit) {
                // Deleted by another node meanwhile (its deletes go through the holder, so
                // this is a race): stop and let go.
                engine.unhost_subscription(subscription).await;
                self.leases.release(unit).await;
                continue;
            }
            if let Some(owner) = placed_on(unit, view.nodes.keys())
                && owner != me
            {
                tracing::info!(subscription, to = owner, "handing a subscription over");
                engine.unhost_subscription(subscription).await;
                self.leases.release(unit).await;
                moves += 1;
            } else if !engine.hosts_subscription(subscription) {
                // Held but not running (stopped while a renewal was late): run it again.
                self.host(engine, unit, subscription).await;
            }
        }
        for unit in &view.units {
            if moves >= MOVES_PER_ROUND_MAX {
                return;
            }
            let Some(subscription) = unit_subscription(unit) else {
                continue;
            };
            if held.contains(unit) || view.leases.contains_key(unit) {
                continue;
            }
            if placed_on(unit, view.nodes.keys()) != Some(me) {
                continue;
            }
            let leases = self.leases.clone();
            let owned_unit = unit.clone();
            let acquired = tokio::task::spawn_blocking(move || leases.acquire(&owned_unit))
                .await
                .unwrap_or(Ok(false));
            match acquired {
                Ok(true) => {
                    self.host(engine, unit, subscription).await;
                    moves += 1;
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(subscription, %error, "could not take a lease"),
            }
        }
    }

    async fn host(&self, engine: &Engine, unit: &str, subscription: &str) {
        if let Err(error) = engine.host_subscription(subscription).await {
            tracing::error!(subscription, %error, "could not host a subscription; letting its lease go");
            self.leases.release(unit).await;
        }
    }

    /// Stops hosting everything and lets every lease go, so the other nodes take the work at
    /// once; then leaves (the heartbeat key goes). Call at shutdown, after the engine
    /// stopped its subscriptions.
    pub async fn leave(&self) {
        for unit in self.leases.units() {
            self.leases.release(&unit).await;
        }
        let (nodes, key) = (self.nodes.clone(), self.options.node_id.clone());
        let _ = self.nats.run(async move { nodes.delete(key).await }).await;
        tracing::info!(node = %self.options.node_id, "left the cluster");
    }

    /// The URL of the node hosting `subscription`, when another node holds it.
    pub fn host_url(&self, subscription: &str) -> Option<String> {
        let view = self.view.lock().expect("view lock");
        let (holder, _) = view.leases.get(&subscription_unit(subscription))?;
        (holder.node != self.options.node_id).then(|| holder.url.clone())
    }

    /// Whether `subscription` exists, as this node's last round saw the specs.
    pub fn knows_subscription(&self, subscription: &str) -> bool {
        let view = self.view.lock().expect("view lock");
        view.units.contains(&subscription_unit(subscription))
    }

    /// The other live nodes' URLs.
    pub fn peer_urls(&self) -> Vec<String> {
        let view = self.view.lock().expect("view lock");
        view.nodes
            .iter()
            .filter(|(id, _)| **id != self.options.node_id)
            .map(|(_, heartbeat)| heartbeat.url.clone())
            .collect()
    }

    /// The cluster as this node saw it at its last round.
    pub fn status(&self) -> ClusterStatus {
        let view = self.view.lock().expect("view lock").clone();
        let now_ms = keel_engine::clock::now_ms();
        let nodes = view
            .nodes
            .iter()
            .map(|(id, heartbeat)| NodeStatus {
                id: id.clone(),
                url: heartbeat.url.clone(),
                started_at: heartbeat.started_at.clone(),
                heartbeat_age_ms: u64::try_from(now_ms - heartbeat.at_ms).unwrap_or(0),
                units: view
                    .leases
                    .iter()
                    .filter(|(_, (holder, _))| holder.node == *id)
                    .filter_map(|(unit, _)| unit_subscription(unit))
                    .map(|name| format!("subscription/{name}"))
                    .collect(),
            })
            .collect();
        let units = view
            .units
            .iter()
            .filter_map(|unit| {
                let name = unit_subscription(unit)?;
                let lease = view.leases.get(unit);
                Some(UnitStatus {
                    unit: format!("subscription/{name}"),
                    node: lease.map(|(holder, _)| holder.node.clone()),
                    epoch: lease.map(|(holder, revision)| holder.epoch.unwrap_or(*revision)),
                    placed_on: placed_on(unit, view.nodes.keys()).map(str::to_owned),
                })
            })
            .collect();
        ClusterStatus {
            mode: "cluster".into(),
            cluster: Some(self.names.cluster().to_owned()),
            node: self.options.node_id.clone(),
            replicas: Some(self.options.replicas),
            lease_ttl_ms: Some(
                u64::try_from(self.options.lease_ttl.as_millis()).unwrap_or(u64::MAX),
            ),
            nodes,
            units,
        }
    }
}

impl Placement for ClusterNode {
    fn tenure(&self, subscription: &str) -> Option<keel_engine::Tenure> {
        self.leases.tenure(&subscription_unit(subscription))
    }

    fn claim(&self, subscription: &str) -> Result<(), EngineError> {
        let unit = subscription_unit(subscription);
        match self.leases.acquire(&unit) {
            Ok(true) => Ok(()),
            Ok(false) => Err(EngineError::Subscription(SubscriptionError::Unavailable {
                name: subscription.to_owned(),
                reason: "another node holds its lease: it exists there, or is being created there; try again in a moment".into(),
            })),
            Err(error) => Err(EngineError::Subscription(SubscriptionError::Unavailable {
                name: subscription.to_owned(),
                reason: format!("its lease could not be taken: {error}"),
            })),
        }
    }

    fn release(&self, subscription: &str) {
        let unit = subscription_unit(subscription);
        let leases = self.leases.clone();
        self.nats.block(async move { leases.release(&unit).await });
    }
}

/// Refuses a node id another live node uses (its heartbeat is fresh, with another URL): two
/// nodes under one id would take each other's subscriptions for their own.
fn check_node_id_free(
    nats: &Nats,
    nodes: &kv::Store,
    options: &ClusterOptions,
) -> Result<(), ClusterError> {
    let (nodes, id) = (nodes.clone(), options.node_id.clone());
    let found = nats
        .block(async move { nodes.get(id).await })
        .map_err(|error| ClusterError::jetstream("read the nodes", error))?;
    let Some(heartbeat) = found.and_then(|value| serde_json::from_slice::<Heartbeat>(&value).ok())
    else {
        return Ok(());
    };
    if heartbeat.url == options.advertise_url {
        // This node itself, restarted within a TTL.
        return Ok(());
    }
    Err(ClusterError::JetStream {
        op: "join the cluster".into(),
        detail: format!(
            "node id {:?} is in use by the node at {} (its heartbeat is fresh): give each node its own --node-id, or wait a lease TTL after that node stopped",
            options.node_id, heartbeat.url
        ),
    })
}

/// The node a unit belongs on: the live node that ranks first for it by rendezvous
/// (highest random weight) hashing.
fn placed_on<'a>(unit: &str, nodes: impl Iterator<Item = &'a String>) -> Option<&'a str> {
    nodes
        .map(|node| (weight(node, unit), node))
        .max()
        .map(|(_, node)| node.as_str())
}

/// A stable 64-bit hash of a node and a unit (FNV-1a, then a 64-bit finaliser to spread
/// it): every node, of every build, ranks alike.
fn weight(node: &str, unit: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.bytes().chain([0]).chain(unit.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: rendezvous placement spreads units evenly and moves only the units of a node
    // that leaves. Method: 3,000 units over 1..5 nodes.
    #[test]
    fn placement_spreads_units_and_moves_few() {
        let units: Vec<String> = (0..3000).map(|i| format!("subscriptions.s{i}")).collect();
        for count in 1..=5 {
            let nodes: Vec<String> = (0..count).map(|i| format!("node-{i}")).collect();
            let mut per_node = BTreeMap::new();
            for unit in &units {
                *per_node
                    .entry(placed_on(unit, nodes.iter()).unwrap())
                    .or_insert(0) += 1;
            }
            let fair = units.len() / count;
            for (node, placed) in &per_node {
                assert!(
                    placed * 10 >= fair * 8 && placed * 10 <= fair * 12,
                    "{count} nodes: {node} got {placed}, fair is {fair}"
                );
            }
        }
        let five: Vec<String> = (0..5).map(|i| format!("node-{i}")).collect();
        let four = &five[..4];
        let moved = units
            .iter()
            .filter(|unit| placed_on(unit, five.iter()) != placed_on(unit, four.iter()))
            .count();
        let on_the_fifth = units
            .iter()
            .filter(|unit| placed_on(unit, five.iter()) == Some("node-4"))
            .count();
        assert_eq!(moved, on_the_fifth, "only the leaving node's units move");
    }
}
