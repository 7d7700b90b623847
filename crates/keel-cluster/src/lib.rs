//! keel's cluster mode: the engine's storage on NATS JetStream, and the leases that give each
//! unit of work one owner at a time. `docs/cluster.md` is the operator's view.
//!
//! - `storage.rs`: [`JetStreamStorage`], the engine's storage seam on JetStream: specs in a
//!   KV bucket, each topic partition and subscription log a replicated stream.
//! - `log.rs`: a `RecordLog` on one stream (offset `n` is sequence `n + 1`).
//! - `node.rs`: [`ClusterNode`], this node: heartbeat, leases, rebalance of the units.
//! - `lease.rs`: the lease protocol (acquire, renew, lose, release; epochs).
//! - `fence.rs`: how a subscription's logs refuse the writes of a deposed lease holder.
//! - `names.rs`: what everything is called in JetStream.
//! - `nats.rs`: the NATS connection, on a runtime of its own, usable from blocking code.

mod error;
mod fence;
mod lease;
mod log;
mod names;
mod nats;
mod node;
mod storage;
mod table;

pub use error::ClusterError;
pub use names::CLUSTER_NAME_BYTES_MAX;
pub use node::{
    ClusterNode, ClusterOptions, LEASE_TTL_DEFAULT, LEASE_TTL_MIN, NODE_ID_BYTES_MAX, NatsTls,
};
pub use storage::{Epochs, JetStreamStorage};
