//! Liveness and readiness: what `GET /healthz` and `GET /readyz` answer.
//!
//! keel wrote these bodies from sorted maps, so their members are declared in alphabetical
//! order, which keeps every answer byte for byte what it was.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The answer to `GET /healthz` (200 once the process serves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    /// Always `ok`.
    pub status: String,
}

/// The answer to `GET /readyz`. Which members it has depends on the status: `recovering` has
/// none but the status (503), `damaged` names the damage (503), `ready` and `degraded` (200)
/// list what refuses service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// With `damaged`: the directories keel created that are missing or unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir_damage: Option<Vec<DataDirDamage>>,
    /// Where keel stands.
    pub status: ReadyStatus,
    /// With `ready` or `degraded`: the partitions that refuse service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_partitions: Option<Vec<UnavailablePartition>>,
    /// With `ready` or `degraded`: the subscriptions that refuse service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_subscriptions: Option<Vec<UnavailableSubscription>>,
}

/// Where keel stands, as `GET /readyz` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    /// Recovery runs; nothing is served yet.
    Recovering,
    /// Everything serves.
    Ready,
    /// Some partitions or subscriptions refuse service; the others serve.
    Degraded,
    /// A directory keel created is missing: keel lacks what it acknowledged and takes no
    /// traffic until an operator acts.
    Damaged,
}

/// A partition that refuses service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnavailablePartition {
    /// The partition; none when the whole topic could not be opened.
    pub partition: Option<u32>,
    /// Why.
    pub reason: String,
    /// The topic.
    pub topic: String,
}

/// A subscription that refuses service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnavailableSubscription {
    /// The subscription.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// A part of the data directory that is missing or unreadable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataDirDamage {
    /// The file or directory.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub reason: String,
}
