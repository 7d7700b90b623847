//! keel's engine: topics, partitions, publishing with dedupe, reading.
//!
//! Dependency direction: `keel-log` → this crate → `keel-server` → `keel-cli`. The data the
//! API carries (topic configurations, subscription specs, describe figures) are the types of
//! `keel-api`, a leaf crate, re-exported where the engine keeps them; this crate adds the
//! checks and the behaviour.

mod alerts;
pub mod clock;
pub mod config;
mod dedupe;
pub mod egress;
mod engine;
pub mod error;
pub mod event;
pub mod faults;
pub mod filter;
mod format;
pub mod handler;
mod key_index;
pub mod limits;
pub mod metrics;
pub mod notices;
mod partition;
pub mod pressure;
pub mod routing;
pub mod storage;
pub mod subscription;
pub mod supervisor;
pub mod tokens;
mod topic;
pub mod trace_context;
pub mod webhook;

pub use alerts::{AlertNotice, RulePut, validate_alert_name, validate_alert_rule};
pub use config::{FsyncPolicy, Retention, TopicConfig};
pub use engine::{
    Appended, Created, Engine, EngineConfig, Placement, ReadBatch, SecretRotated,
    SubscriptionCreated, Tenure, UnavailablePartition, UnavailableSubscription,
};
pub use error::EngineError;
pub use event::Event;
pub use keel_api::duration;
pub use key_index::{KeyStream, StreamRecord};
pub use partition::PartitionInfo;
pub use storage::{DataDirDamage, Record};
pub use topic::{PublishResult, TopicInfo};
