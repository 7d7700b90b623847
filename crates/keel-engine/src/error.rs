//! The engine's errors. Only the server maps them to HTTP statuses.

use std::path::PathBuf;

use crate::config::TopicConfig;
use crate::event::EventError;

/// Everything an engine call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No topic of that name.
    #[error("topic {topic:?} does not exist")]
    TopicNotFound {
        /// The name asked for.
        topic: String,
    },
    /// A topic of that name exists with another configuration.
    #[error("topic {topic:?} already exists with another configuration: {}", serde_json::to_string(existing).unwrap_or_default())]
    TopicConflict {
        /// The name.
        topic: String,
        /// Its configuration.
        existing: Box<TopicConfig>,
    },
    /// The topic name breaks the naming rule.
    #[error("invalid topic name {name:?}: {detail}")]
    InvalidTopicName {
        /// The name given.
        name: String,
        /// The rule.
        detail: String,
    },
    /// A configuration value is out of range.
    #[error("invalid topic configuration: {detail}")]
    InvalidConfig {
        /// Which value and why.
        detail: String,
    },
    /// The partition number is not in the topic.
    #[error("topic {topic:?} has no partition {partition} (it has {partitions}: 0 to {})", partitions.saturating_sub(1))]
    PartitionNotFound {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many the topic has.
        partitions: u32,
    },
    /// Reading from past the end of the partition.
    #[error(
        "offset {offset} is beyond the end of {topic:?} partition {partition} (next_offset is {next_offset})"
    )]
    OffsetBeyondEnd {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset asked for.
        offset: u64,
        /// One past the last record.
        next_offset: u64,
    },
    /// Reading from before the first record kept.
    #[error(
        "offset {offset} of {topic:?} partition {partition} was removed by retention; the first offset kept is {start_offset}"
    )]
    OffsetBeforeStart {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset asked for.
        offset: u64,
        /// The first offset kept.
        start_offset: u64,
    },
    /// The topic could not be opened at start and refuses service.
    #[error("topic {topic:?} is unavailable: {reason}")]
    TopicUnavailable {
        /// The topic.
        topic: String,
        /// What happened and what to do.
        reason: String,
    },
    /// Another keel process holds the data directory.
    #[error(
        "the data directory is in use by another keel process (lock {path} is held); stop it or choose another --data-dir"
    )]
    DataDirLocked {
        /// The lock file.
        path: PathBuf,
    },
    /// A directory of the data directory that keel created is missing (or the manifest that
    /// records them is unreadable): nothing is created under it until an operator restores it.
    #[error("the data directory is damaged at {path}: {reason}")]
    DataDirDamaged {
        /// The missing directory, or the manifest.
        path: PathBuf,
        /// What happened and what to do.
        reason: String,
    },
    /// The partition refuses service: its log is corrupt or a write failed.
    #[error("{topic:?} partition {partition} is unavailable: {reason}")]
    PartitionUnavailable {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// What happened and what to do.
        reason: String,
    },
    /// An event is larger than the limit.
    #[error("event{} is {bytes} bytes, over the limit of {limit} bytes", index.map(|i| format!(" at index {i}")).unwrap_or_default())]
    EventTooLarge {
        /// Position in the batch.
        index: Option<usize>,
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A batch has more events than allowed.
    #[error("a batch holds at most {max} events, got {count}")]
    BatchTooLarge {
        /// Events sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The event (or batch) is not valid CloudEvents.
    #[error(transparent)]
    Event(#[from] EventError),
    /// An earlier publish of the same (source, id) failed while this one waited for it.
    #[error(
        "an earlier publish of event (source {source_attr:?}, id {id:?}) failed; publish it again"
    )]
    OriginalFailed {
        /// The event's source.
        source_attr: String,
        /// The event's id.
        id: String,
    },
    /// A subscription spec (or name) is invalid.
    #[error("invalid subscription: {detail}")]
    InvalidSubscription {
        /// Which field and what is wrong with it.
        detail: String,
    },
    /// No subscription has that name.
    #[error("subscription {name:?} not found")]
    SubscriptionNotFound {
        /// The name asked for.
        name: String,
    },
    /// A subscription of that name exists with another spec.
    #[error("subscription {name:?} exists with another spec; delete it first to change it")]
    SubscriptionConflict {
        /// The name.
        name: String,
    },
    /// A topic cannot be deleted while subscriptions read it.
    #[error("topic {topic:?} has subscriptions ({}); delete them first or delete with force", names.join(", "))]
    TopicHasSubscriptions {
        /// The topic.
        topic: String,
        /// The subscriptions reading it.
        names: Vec<String>,
    },
    /// The operation needs the other delivery mode (pull on a push subscription, …).
    #[error("{detail}")]
    WrongDeliveryMode {
        /// What was asked and why it does not apply.
        detail: String,
    },
    /// Stored subscription data (checkpoint, dead-letter queue) cannot be read.
    #[error("stored data is damaged: {detail}")]
    Corrupt {
        /// What and where.
        detail: String,
    },
    /// The subscription's storage failed; it refuses service until a restart.
    #[error("subscription {name:?} is unavailable: {reason}")]
    SubscriptionUnavailable {
        /// The subscription.
        name: String,
        /// Why.
        reason: String,
    },
    /// The subscription is paused.
    #[error("subscription {name:?} is paused: {reason}; resume it to continue")]
    SubscriptionPaused {
        /// The subscription.
        name: String,
        /// Why it was paused.
        reason: String,
    },
    /// An ack id is malformed (not one keel issued).
    #[error("malformed ack id {ack_id:?}: ack ids are returned by pull and used as given")]
    MalformedAckId {
        /// The id.
        ack_id: String,
    },
    /// No dead-letter entry has that id.
    #[error("dead-letter entry {id:?} not found in subscription {name:?}")]
    DeadLetterNotFound {
        /// The subscription.
        name: String,
        /// The entry id.
        id: String,
    },
    /// The engine is shutting down.
    #[error("keel is shutting down")]
    ShuttingDown,
    /// The storage failed: a log, or the metadata of a topic or subscription.
    #[error("{context}: {source}")]
    Storage {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: crate::storage::StorageError,
    },
    /// A file operation outside the log failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::storage::StorageError> for EngineError {
    /// A storage failure outside a log operation that names its own context: a file operation
    /// keeps its own message.
    fn from(error: crate::storage::StorageError) -> Self {
        match error {
            crate::storage::StorageError::Io { op, path, source } => {
                EngineError::Io { op, path, source }
            }
            source => EngineError::Storage {
                context: "storage".to_owned(),
                source,
            },
        }
    }
}

impl EngineError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}
