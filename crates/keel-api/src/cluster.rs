//! `GET /v1/cluster`: the nodes of a keel cluster, their health, and which units of work
//! each holds. A single node (no `--cluster`) answers with `mode: "single"` and itself.

use serde::{Deserialize, Serialize};

/// The cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterStatus {
    /// `"single"` (embedded storage, one node) or `"cluster"` (NATS JetStream).
    pub mode: String,
    /// The cluster's name (cluster mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub cluster: Option<String>,
    /// The id of the node that answered.
    pub node: String,
    /// The replicas of every stream and bucket (cluster mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub replicas: Option<usize>,
    /// How long a lease lasts without renewal, in milliseconds (cluster mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub lease_ttl_ms: Option<u64>,
    /// Every node with a live heartbeat, by id.
    pub nodes: Vec<NodeStatus>,
    /// Every unit of work (a subscription), by name, and who holds it.
    pub units: Vec<UnitStatus>,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeStatus {
    /// Its id.
    pub id: String,
    /// Its HTTP API, as the other nodes reach it.
    pub url: String,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// Milliseconds since its last heartbeat, by the answering node's clock.
    pub heartbeat_age_ms: u64,
    /// The units it holds, by name.
    pub units: Vec<String>,
}

/// One unit of work and its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnitStatus {
    /// The unit: `subscription/NAME`.
    pub unit: String,
    /// The node holding its lease; none while it moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub node: Option<String>,
    /// The lease's epoch (its fencing token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub epoch: Option<u64>,
    /// The node the rebalance wants it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub placed_on: Option<String>,
}
