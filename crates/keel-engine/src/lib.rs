//! keel's engine: topics, partitions, publishing with dedupe, reading.
//!
//! Dependency direction: `keel-log` → this crate → `keel-server` → `keel-cli`.

pub mod clock;
pub mod config;
mod dedupe;
pub mod duration;
mod engine;
pub mod error;
pub mod event;
pub mod filter;
mod format;
pub mod limits;
pub mod metrics;
mod partition;
pub mod routing;
pub mod storage;
pub mod subscription;
mod topic;
pub mod webhook;

pub use config::{FsyncPolicy, Retention, TopicConfig};
pub use engine::{
    Created, Engine, EngineConfig, ReadBatch, SubscriptionCreated, UnavailablePartition,
    UnavailableSubscription,
};
pub use error::EngineError;
pub use event::Event;
pub use partition::PartitionInfo;
pub use storage::{Record, StorageDamage};
pub use topic::{PublishResult, TopicInfo};
