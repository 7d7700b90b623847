//! Leases: one owner per unit of work at a time, in a KV bucket whose entries expire.
//!
//! The protocol (`docs/cluster.md` draws it):
//! - **Acquire**: create the unit's key (it succeeds only when the key is absent: never
//!   written, deleted, or expired). The revision the create got is the lease's **epoch**: it
//!   is a sequence of the bucket's stream, so every later acquisition of any unit has a
//!   greater one.
//! - **Renew**: every third of the TTL, update the key expecting the revision this node last
//!   wrote. The bucket's `max_age` is the TTL: an entry not renewed for a TTL disappears,
//!   and the unit is free.
//! - **Lost**: a renewal that finds another revision means another node holds the unit now
//!   (or it was deleted): this node stops the unit's work at once. A node that was paused
//!   longer than the TTL learns it at its next renewal; its writes were refused from the
//!   moment the new holder fenced the unit's logs at the new epoch (`fence.rs`).
//! - **Release**: delete the key expecting this node's revision (a handoff, a delete, a
//!   shutdown), so that another node need not wait for the TTL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use keel_engine::Tenure;
use serde::{Deserialize, Serialize};

use crate::error::ClusterError;
use crate::nats::Nats;
use crate::storage::Epochs;

/// What a lease's value says: who holds it, and where its HTTP API is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Holder {
    /// The node's id.
    pub(crate) node: String,
    /// The node's HTTP API, as other nodes reach it.
    pub(crate) url: String,
    /// The lease's epoch (its acquisition's revision), written with each renewal: the
    /// acquisition itself cannot know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) epoch: Option<u64>,
}

/// A lease this node holds.
#[derive(Debug, Clone)]
struct Held {
    /// The revision of the acquisition: the unit's fencing token.
    epoch: u64,
    /// The revision this node wrote last (the acquisition's or a renewal's).
    revision: u64,
    /// When it was last written.
    renewed: Instant,
    /// How long it is sure to last: the subscription hands nothing out past it.
    tenure: Tenure,
}

/// The leases of one node.
pub(crate) struct Leases {
    nats: Nats,
    bucket: kv::Store,
    holder: Holder,
    ttl: Duration,
    held: Mutex<HashMap<String, Held>>,
}

impl Leases {
    pub(crate) fn new(nats: Nats, bucket: kv::Store, holder: Holder, ttl: Duration) -> Leases {
        Leases {
            nats,
            bucket,
            holder,
            ttl,
            held: Mutex::new(HashMap::new()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().expect("leases lock")
    }

    /// Takes `unit` for this node; false when another node holds it. Its epoch is then
    /// [`Epochs::epoch`]'s answer. Blocking.
    pub(crate) fn acquire(&self, unit: &str) -> Result<bool, ClusterError> {
        if self.held().contains_key(unit) {
            return Ok(true);
        }
        let value = serde_json::to_vec(&self.holder).expect("a holder serialises");
        let (bucket, key) = (self.bucket.clone(), unit.to_owned());
        let sent = Instant::now();
        let created = self
            .nats
            .block(async move { bucket.create(key, value.into()).await });
        match created {
            Ok(revision) => {
                self.held().insert(
                    unit.to_owned(),
                    Held {
                        epoch: revision,
                        revision,
                        renewed: sent,
                        tenure: Tenure::new(self.sure_for()),
                    },
                );
                Ok(true)
            }
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(ClusterError::jetstream(
                format!("acquire lease {unit}"),
                error,
            )),
        }
    }

    /// How long after a write the lease is sure to last: the TTL runs from the server's
    /// write, which comes after the request was sent; a tenth is kept for clock rates.
    fn sure_for(&self) -> Duration {
        self.ttl - self.ttl / 10
    }

    /// Renews every lease held; returns the units whose lease was lost, and those whose
    /// tenure had lapsed and now runs again. Async: it runs on the NATS runtime.
    pub(crate) async fn renew_all(&self) -> (Vec<String>, Vec<String>) {
        let held: Vec<(String, Held)> = self
            .held()
            .iter()
            .map(|(unit, held)| (unit.clone(), held.clone()))
            .collect();
        let (mut lost, mut revived) = (Vec::new(), Vec::new());
        for (unit, lease) in held {
            let holder = Holder {
                epoch: Some(lease.epoch),
                ..self.holder.clone()
            };
            let value = serde_json::to_vec(&holder).expect("a holder serialises");
            let (bucket, key) = (self.bucket.clone(), unit.clone());
            let sent = Instant::now();
            let renewed = self
                .nats
                .run(async move { bucket.update(key, value.into(), lease.revision).await })
                .await;
            match renewed {
                Ok(revision) => {
                    if let Some(held) = self.held().get_mut(&unit) {
                        held.revision = revision;
                        held.renewed = sent;
                        if held.tenure.extend_to(sent + self.sure_for()) {
                            revived.push(unit.clone());
                        }
                    }
                }
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!(
                        unit,
                        epoch = lease.epoch,
                        "lease lost: another node holds it now"
                    );
                    self.held().remove(&unit);
                    lost.push(unit);
                }
                Err(error) => {
                    // NATS unreachable: the lease stands until its TTL; the next renewal
                    // finds out whether it was kept.
                    tracing::warn!(unit, %error, "could not renew a lease");
                }
            }
        }
        (lost, revived)
    }

    /// The tenure of this node's lease on `unit`, when it holds one.
    pub(crate) fn tenure(&self, unit: &str) -> Option<Tenure> {
        self.held().get(unit).map(|held| held.tenure.clone())
    }

    /// Leases held but not renewed within `ttl`: another node may hold them now (this node
    /// was paused, or cut off from NATS).
    pub(crate) fn stale(&self, ttl: std::time::Duration) -> Vec<String> {
        self.held()
            .iter()
            .filter(|(_, held)| held.renewed.elapsed() >= ttl)
            .map(|(unit, _)| unit.clone())
            .collect()
    }

    /// Gives up `unit` (nothing when it is not held). Async.
    pub(crate) async fn release(&self, unit: &str) {
        let Some(held) = self.held().remove(unit) else {
            return;
        };
        let (bucket, key) = (self.bucket.clone(), unit.to_owned());
        let released = self
            .nats
            .run(async move {
                bucket
                    .delete_expect_revision(key, Some(held.revision))
                    .await
            })
            .await;
        if let Err(error) = released {
            tracing::warn!(unit, %error, "could not release a lease; it expires after its TTL");
        }
    }

    /// The units held by this node.
    pub(crate) fn units(&self) -> Vec<String> {
        self.held().keys().cloned().collect()
    }

    /// Every lease in the bucket: unit, holder and revision. Async.
    pub(crate) async fn all(&self) -> Result<Vec<(String, Holder, u64)>, ClusterError> {
        let bucket = self.bucket.clone();
        self.nats
            .run(async move {
                let mut keys = bucket.keys().await?;
                let mut units = Vec::new();
                while let Some(key) = keys.next().await {
                    units.push(key?);
                }
                let mut leases = Vec::with_capacity(units.len());
                for unit in units {
                    if let Some(entry) = bucket.entry(&unit).await?
                        && entry.operation == kv::Operation::Put
                        && let Ok(holder) = serde_json::from_slice::<Holder>(&entry.value)
                    {
                        leases.push((unit, holder, entry.revision));
                    }
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(leases)
            })
            .await
            .map_err(|error| ClusterError::jetstream("list leases", error))
    }
}

impl Epochs for Leases {
    fn epoch(&self, subscription: &str) -> Option<u64> {
        self.held()
            .get(&crate::node::subscription_unit(subscription))
            .map(|held| held.epoch)
    }
}
