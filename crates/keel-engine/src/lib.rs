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
pub mod limits;
pub mod metrics;
mod partition;
pub mod routing;
mod topic;

pub use config::{FsyncPolicy, Retention, TopicConfig};
pub use engine::{Created, Engine, EngineConfig, ReadBatch, UnavailablePartition};
pub use error::EngineError;
pub use event::Event;
pub use keel_log::{LogConfig, Record};
pub use partition::PartitionInfo;
pub use topic::{PublishResult, TopicInfo};
