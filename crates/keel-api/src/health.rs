//! Liveness and readiness: what `GET /healthz` and `GET /readyz` answer.
//!
//! keel wrote these bodies from sorted maps, so their members are declared in alphabetical
//! order, which keeps every answer byte for byte what it was.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The answer to `GET /healthz` (200 once the process serves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Liveness {
    /// Always `ok`.
    pub status: String,
}

/// The answer to `GET /readyz`. Which members it has depends on the status: `recovering` has
/// none but the status (503), `damaged` names the damage (503), `ready` and `degraded` (200)
/// list what refuses service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Readiness {
    /// With `damaged`: the directories keel created that are missing or unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub data_dir_damage: Option<Vec<DataDirDamage>>,
    /// Where keel stands.
    pub status: ReadyStatus,
    /// With `ready` or `degraded`: the partitions that refuse service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub unavailable_partitions: Option<Vec<UnavailablePartition>>,
    /// With `ready` or `degraded`: the subscriptions that refuse service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub unavailable_subscriptions: Option<Vec<UnavailableSubscription>>,
    /// Why publishing is refused with 507 (`disk_full`, `data_dir_full`), while it is; the
    /// server stays ready, since reads and deliveries go on (`docs/durability.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publishing_refused: Vec<String>,
}

/// Where keel stands, as `GET /readyz` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnavailablePartition {
    /// The partition; none when the whole topic could not be opened.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub partition: Option<u32>,
    /// Why.
    pub reason: String,
    /// The topic.
    pub topic: String,
}

/// A subscription that refuses service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnavailableSubscription {
    /// The subscription.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// A part of the data directory that is missing or unreadable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DataDirDamage {
    /// The file or directory.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub reason: String,
}

/// A supervised engine task that has failed since start (`GET /v1/tasks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskHealth {
    /// What the task is and serves, e.g. `subscription/billing/dispatcher`.
    pub task: String,
    /// Where it stands.
    pub state: TaskState,
    /// Its failures (panics) since start.
    pub failures: u64,
    /// The last failure's message.
    pub last_failure: String,
    /// When the last failure came (RFC 3339).
    pub last_failure_at: String,
}

/// Where a supervised task that has failed stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// It failed and is restarted after a backoff (or runs again since).
    Restarting,
    /// It failed repeatedly in the last ten minutes and is still restarted.
    Failing,
    /// It kept failing and is not restarted: what it serves is unavailable.
    Failed,
}

/// The answer to `GET /v1/tasks`: the supervised tasks that have failed since start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tasks {
    /// Each task that failed at least once, by name.
    pub tasks: Vec<TaskHealth>,
}
