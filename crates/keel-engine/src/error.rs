//! The engine's errors, one enum per concern, gathered in [`EngineError`]. Each error says
//! which [`ErrorClass`] it is in (what the caller should do about it), by an exhaustive
//! match: a new variant does not compile until it is classed, so none falls into "internal"
//! by default. Only the server maps classes to HTTP statuses.

use std::path::PathBuf;

use crate::config::TopicConfig;
use crate::event::EventError;
use crate::storage::StorageError;

/// Everything an engine call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A topic, a partition or an offset in it.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// What was published.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A subscription, its deliveries or its dead letters.
    #[error(transparent)]
    Subscription(#[from] SubscriptionError),
    /// The stored data or the medium under it.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A key's event stream: reading it, or a conditional append to it.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// An alert rule.
    #[error(transparent)]
    Alert(#[from] AlertError),
    /// An API token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// An engine setting, found wrong when the engine opens (a CA bundle that cannot be
    /// read, …).
    #[error("invalid setting: {detail}")]
    Settings {
        /// Which setting and what is wrong with it.
        detail: String,
    },
    /// The engine is shutting down.
    #[error("keel is shutting down")]
    ShuttingDown,
}

/// What the caller of a failed call should do: the class of an error, as the server answers
/// it (the HTTP status in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// What was named does not exist (404).
    NotFound,
    /// It conflicts with what exists, or with the state it is in (409).
    Conflict,
    /// The input is invalid: fix it (400).
    Invalid,
    /// It is keel's own and not the caller's to change, such as an internal topic (403).
    Forbidden,
    /// The input is over a size limit (413).
    TooLarge,
    /// A request body in a media type keel does not read (415).
    UnsupportedMediaType,
    /// It cannot be served now: storage refuses service, keel stops, or an earlier attempt
    /// failed; retry later or after the operator acts (503).
    Unavailable,
    /// A failure of keel or its medium the caller cannot fix (500).
    Internal,
    /// Publishing is refused while the disk is nearly full or the data directory is at its
    /// cap; it resumes by itself once space returns (507).
    InsufficientStorage,
    /// Publishing is refused for a moment: more is queued than keel writes in time; retry
    /// shortly (429).
    Overloaded,
}

impl EngineError {
    /// The error's class.
    pub fn class(&self) -> ErrorClass {
        match self {
            EngineError::Topic(error) => error.class(),
            EngineError::Publish(error) => error.class(),
            EngineError::Subscription(error) => error.class(),
            EngineError::Data(error) => error.class(),
            EngineError::Stream(error) => error.class(),
            EngineError::Alert(error) => error.class(),
            EngineError::Token(error) => error.class(),
            EngineError::Settings { .. } => ErrorClass::Invalid,
            EngineError::ShuttingDown => ErrorClass::Unavailable,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| DataError::Io { op, path, source }.into()
    }
}

impl From<EventError> for EngineError {
    fn from(error: EventError) -> Self {
        EngineError::Publish(PublishError::Event(error))
    }
}

impl From<StorageError> for EngineError {
    /// A storage failure outside a log operation that names its own context: a file operation
    /// keeps its own message.
    fn from(error: StorageError) -> Self {
        let error = match error {
            StorageError::Io { op, path, source } => DataError::Io { op, path, source },
            source => DataError::Storage {
                context: "storage".to_owned(),
                source,
            },
        };
        EngineError::Data(error)
    }
}

/// A topic, a partition or an offset in it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// No topic of that name.
    #[error("topic {topic:?} does not exist")]
    NotFound {
        /// The name asked for.
        topic: String,
    },
    /// A topic of that name exists with another configuration.
    #[error("topic {topic:?} already exists with another configuration: {}", serde_json::to_string(existing).unwrap_or_default())]
    Conflict {
        /// The name.
        topic: String,
        /// Its configuration.
        existing: Box<TopicConfig>,
    },
    /// The topic name breaks the naming rule.
    #[error("invalid topic name {name:?}: {detail}")]
    InvalidName {
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
    Unavailable {
        /// The topic.
        topic: String,
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
    /// A topic cannot be deleted while subscriptions read it.
    #[error("topic {topic:?} has subscriptions ({}); delete them first or delete with force", names.join(", "))]
    HasSubscriptions {
        /// The topic.
        topic: String,
        /// The subscriptions reading it.
        names: Vec<String>,
    },
    /// The topic is one of keel's internal topics (`_keel.*`): readable and subscribable,
    /// but only keel writes, creates or deletes it.
    #[error(
        "topic {topic:?} is internal to keel: it may be read and subscribed to, but not {action}"
    )]
    Reserved {
        /// The topic.
        topic: String,
        /// What was refused: "published to", "created", "deleted".
        action: &'static str,
    },
}

impl TopicError {
    /// The error's class.
    pub fn class(&self) -> ErrorClass {
        match self {
            TopicError::NotFound { .. }
            | TopicError::PartitionNotFound { .. }
            | TopicError::OffsetBeforeStart { .. } => ErrorClass::NotFound,
            TopicError::Conflict { .. } | TopicError::HasSubscriptions { .. } => {
                ErrorClass::Conflict
            }
            TopicError::InvalidName { .. }
            | TopicError::InvalidConfig { .. }
            | TopicError::OffsetBeyondEnd { .. } => ErrorClass::Invalid,
            TopicError::Unavailable { .. } | TopicError::PartitionUnavailable { .. } => {
                ErrorClass::Unavailable
            }
            TopicError::Reserved { .. } => ErrorClass::Forbidden,
        }
    }
}

/// Why an API token call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token of that id.
    #[error("token {id:?} does not exist")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The request is missing something or has a bad value.
    #[error("invalid token request: {detail}")]
    Invalid {
        /// Which member and why.
        detail: String,
    },
    /// There are as many tokens as keel holds.
    #[error("keel holds at most {max} tokens; revoke one first")]
    TooMany {
        /// The limit.
        max: usize,
    },
}

impl TokenError {
    /// The error's class.
    pub fn class(&self) -> ErrorClass {
        match self {
            TokenError::NotFound { .. } => ErrorClass::NotFound,
            TokenError::Invalid { .. } => ErrorClass::Invalid,
            TokenError::TooMany { .. } => ErrorClass::Conflict,
        }
    }
}

/// An alert rule.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AlertError {
    /// No rule of that name.
    #[error("alert rule {name:?} does not exist")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The name breaks the naming rule.
    #[error("invalid alert rule name {name:?}: {detail}")]
    InvalidName {
        /// The name given.
        name: String,
        /// The rule.
        detail: String,
    },
    /// A member of the rule is missing, misplaced or out of range.
    #[error("invalid alert rule {name:?}: {detail}")]
    InvalidRule {
        /// The rule's name.
        name: String,
        /// Which member and why.
        detail: String,
    },
    /// There are as many rules as keel holds.
    #[error("keel holds at most {max} alert rules; delete one first")]
    TooMany {
        /// The limit.
        max: usize,
    },
}

impl AlertError {
    /// The error's class.
    pub fn class(&self) -> ErrorClass {
        match self {
            AlertError::NotFound { .. } => ErrorClass::NotFound,
            AlertError::InvalidName { .. } | AlertError::InvalidRule { .. } => ErrorClass::Invalid,
            AlertError::TooMany { .. } => ErrorClass::Conflict,
        }
    }
}

/// What was published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
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
    /// Publishing is refused while storage is short (see [`StorageLimit`]); nothing was
    /// stored. Reads, deliveries and acks go on.
    #[error(
        "publishing is refused: {limit}. Nothing was stored; reads, deliveries and acks go on. Free space (delete topics or subscriptions no longer needed, or files outside keel; retention frees a topic's old segments as they expire) or raise the limit: publishing resumes by itself once space returns"
    )]
    StorageFull {
        /// Which limit was reached.
        limit: StorageLimit,
    },
    /// Publishing is refused for a moment: the events waiting to be written are at their
    /// high-water mark; nothing was stored.
    #[error(
        "keel is overloaded: {queued_bytes} bytes of published events are waiting to be written, at the high-water mark (backpressure.publish_queue_bytes_max = {max_bytes}). Nothing was stored: publish again after the Retry-After delay"
    )]
    Overloaded {
        /// Bytes admitted and not yet answered.
        queued_bytes: u64,
        /// The high-water mark.
        max_bytes: u64,
    },
    /// Some events of the batch were stored by an earlier publish of the same ids and others
    /// not (cluster mode): all of them are stored now, once, but not at consecutive offsets.
    #[error(
        "some events of this batch were stored by an earlier publish and others not; every one of them is stored now, once. Publish them one at a time (each answers as a duplicate, with its offset) to learn where each is"
    )]
    PartlyStored,
    /// The storage cannot take writes now (cluster mode without a NATS quorum, or without a
    /// connection; a partition's log out of file descriptors to start a new segment): the
    /// events were not acknowledged, and may or may not be stored.
    #[error(
        "publishing failed: the storage cannot take writes now ({detail}). The events were not acknowledged and may or may not be stored: publish them again with the same ids (dedupe makes that safe) after the Retry-After delay"
    )]
    StorageUnavailable {
        /// What the storage said.
        detail: String,
    },
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
}

impl PublishError {
    /// The error's class.
    pub fn class(&self) -> ErrorClass {
        match self {
            PublishError::EventTooLarge { .. } | PublishError::BatchTooLarge { .. } => {
                ErrorClass::TooLarge
            }
            PublishError::Event(EventError::UnsupportedMediaType { .. }) => {
                ErrorClass::UnsupportedMediaType
            }
            PublishError::Event(EventError::Json { .. } | EventError::Invalid { .. }) => {
                ErrorClass::Invalid
            }
            PublishError::PartlyStored => ErrorClass::Conflict,
            PublishError::OriginalFailed { .. } | PublishError::StorageUnavailable { .. } => {
                ErrorClass::Unavailable
            }
            PublishError::StorageFull { .. } => ErrorClass::InsufficientStorage,
            PublishError::Overloaded { .. } => ErrorClass::Overloaded,
        }
    }
}

/// The storage limit that refuses publishing, with the figures of the last check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StorageLimit {
    /// The file system holding the data directory has less free space than the minimum.
    #[error(
        "the disk holding the data directory has {free_bytes} bytes free, below the minimum kept free (backpressure.disk_free_bytes_min = {min_bytes})"
    )]
    DiskFree {
        /// Free bytes now (the last measurement less what was published since).
        free_bytes: u64,
        /// The minimum kept free.
        min_bytes: u64,
    },
    /// The data directory holds as much as its cap allows.
    #[error(
        "the data directory holds {stored_bytes} bytes, at its cap (backpressure.data_dir_bytes_max = {max_bytes})"
    )]
    DataDirFull {
        /// Bytes stored now (the last measurement plus what was published since).
        stored_bytes: u64,
        /// The cap.
        max_bytes: u64,
    },
    /// A write found the device full (`ENOSPC`) before the limits above did: something else
    /// filled the disk, or `disk_free_bytes_min` is too low for it.
    #[error(
        "the disk holding the data directory is full: a write failed with no space left (raise backpressure.disk_free_bytes_min to be refused before that)"
    )]
    DeviceFull,
}

/// A subscription, its deliveries or its dead letters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// A subscription spec (or name) is invalid.
    #[error("invalid subscription: {detail}")]
    Invalid {
        /// Which field and what is wrong with it.
        detail: String,
    },
    /// No subscription has that name.
    #[error("subscription {name:?} not found")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// A subscription of that name exists with another spec, and an update cannot change
    /// these members in place (its stored progress is only right for the stored ones).
    #[error("{}", immutable_change(name, members))]
    Conflict {
        /// The name.
        name: String,
        /// The members that differ and cannot change in place, as the spec spells them.
        members: Vec<String>,
    },
    /// The operation needs the other delivery mode (pull on a push subscription, …).
    #[error("{detail}")]
    WrongDeliveryMode {
        /// What was asked and why it does not apply.
        detail: String,
    },
    /// The subscription's storage failed; it refuses service until a restart.
    #[error("subscription {name:?} is unavailable: {reason}")]
    Unavailable {
        /// The subscription.
        name: String,
        /// Why.
        reason: String,
    },
    /// The subscription is paused.
    #[error("subscription {name:?} is paused: {reason}; resume it to continue")]
    Paused {
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
    /// An ack's commit cannot be taken as given (state on a subscription that is not
    /// stateful, an emit to a topic that does not exist, …); nothing was committed.
    #[error("{detail}; nothing was committed")]
    InvalidCommit {
        /// Which ack and what is wrong with it.
        detail: String,
    },
    /// An ack's state is larger than a key may hold; nothing was committed.
    #[error(
        "the state of ack {index} is {bytes} bytes, over the limit of {max} bytes per key; nothing was committed"
    )]
    StateTooLarge {
        /// The ack's index in the request.
        index: usize,
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Acks carrying state or events name deliveries that are no longer outstanding; nothing
    /// was committed.
    #[error(
        "{} of the acks carrying state or events are stale (their deliveries are no longer outstanding: the ack deadline passed, the subscription was sought, keel restarted, or they were settled already): {}; nothing was committed: pull the events again, or send the other acks alone",
        ack_ids.len(), ack_ids.join(", ")
    )]
    StaleAcks {
        /// The stale ack ids.
        ack_ids: Vec<String>,
    },
    /// The key has no state in the subscription.
    #[error("key {key:?} has no state in subscription {name:?}")]
    KeyNotFound {
        /// The subscription.
        name: String,
        /// The key asked for.
        key: String,
    },
}

impl SubscriptionError {
    /// The error's class.
    pub fn class(&self) -> ErrorClass {
        match self {
            SubscriptionError::NotFound { .. }
            | SubscriptionError::DeadLetterNotFound { .. }
            | SubscriptionError::KeyNotFound { .. } => ErrorClass::NotFound,
            SubscriptionError::Conflict { .. }
            | SubscriptionError::WrongDeliveryMode { .. }
            | SubscriptionError::Paused { .. }
            | SubscriptionError::StaleAcks { .. } => ErrorClass::Conflict,
            SubscriptionError::Invalid { .. }
            | SubscriptionError::MalformedAckId { .. }
            | SubscriptionError::InvalidCommit { .. } => ErrorClass::Invalid,
            SubscriptionError::StateTooLarge { .. } => ErrorClass::TooLarge,
            SubscriptionError::Unavailable { .. } => ErrorClass::Unavailable,
        }
    }
}

/// A key's event stream: reading it, or a conditional append to it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A conditional append expected another version of its key; nothing was appended.
    #[error(
        "key {key:?} of topic {topic:?} is at version {current}, not the expected version {expected}; nothing was appended: read the key's events from version {} and decide again",
        expected.min(current) + 1
    )]
    VersionMismatch {
        /// The topic.
        topic: String,
        /// The key.
        key: String,
        /// The version the append expected.
        expected: u64,
        /// The key's version now.
        current: u64,
    },
    /// A conditional append kept finding other events appended to its partition (by other
    /// nodes of a cluster) between its version check and its append; nothing was appended.
    #[error(
        "the partition took other events between the version check and the append (next offset {next_offset}, expected {expected_next_offset}), again and again; nothing was appended: retry"
    )]
    Contended {
        /// The next offset the append expected.
        expected_next_offset: u64,
        /// The next offset found.
        next_offset: u64,
    },
    /// A conditional append that cannot be taken as given (events without a key, or with
    /// several keys); nothing was appended.
    #[error("{detail}; nothing was appended")]
    InvalidAppend {
        /// What is wrong with the events.
        detail: String,
    },
    /// A read of a key's stream with a range out of bounds.
    #[error("{detail}")]
    InvalidRead {
        /// Which parameter and its bounds.
        detail: String,
    },
    /// The key index of a partition cannot answer (its storage failed, or it could not catch
    /// up with the log in time).
    #[error("the key index of {topic:?} partition {partition} is unavailable: {reason}")]
    IndexUnavailable {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// What happened and what to do.
        reason: String,
    },
}

impl StreamError {
    /// The error's class.
    pub fn class(&self) -> ErrorClass {
        match self {
            StreamError::VersionMismatch { .. } => ErrorClass::Conflict,
            StreamError::InvalidAppend { .. } | StreamError::InvalidRead { .. } => {
                ErrorClass::Invalid
            }
            StreamError::IndexUnavailable { .. } | StreamError::Contended { .. } => {
                ErrorClass::Unavailable
            }
        }
    }
}

/// The stored data, or the medium under it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// Another keel process holds the data directory.
    #[error(
        "the data directory is in use by another keel process (lock {path} is held); stop it or choose another --data-dir"
    )]
    DataDirLocked {
        /// The lock file.
        path: PathBuf,
    },
    /// records them is unreadable): nothing is created under it until an operator restores it.
    #[error("the data directory is damaged at {path}: {reason}")]
    DataDirDamaged {
        /// The missing directory, or the manifest.
        path: PathBuf,
        /// What happened and what to do.
        reason: String,
    },
    /// Stored subscription data (checkpoint, dead-letter queue) cannot be read.
    #[error("stored data is damaged: {detail}")]
    Corrupt {
        /// What and where.
        detail: String,
    },
    /// The storage failed: a log, or the metadata of a topic or subscription.
    #[error("{context}: {source}")]
    Storage {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: StorageError,
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

impl DataError {
    /// The error's class.
    pub fn class(&self) -> ErrorClass {
        match self {
            DataError::DataDirDamaged { .. } | DataError::Corrupt { .. } => ErrorClass::Unavailable,
            DataError::DataDirLocked { .. } | DataError::Storage { .. } | DataError::Io { .. } => {
                ErrorClass::Internal
            }
        }
    }
}

/// The detail of [`SubscriptionError::Conflict`]: what differs, why it cannot change in
/// place, and the ways out.
fn immutable_change(name: &str, members: &[String]) -> String {
    let start_only = members.iter().all(|member| member == "start");
    let way_out = if start_only {
        format!(
            "`start` only says where a new subscription begins; to move {name:?}, seek it \
             (`keel sub seek {name} --to …`), or leave `start` as it was"
        )
    } else {
        format!(
            "delete {name:?} and create it again (its position and dead letters are lost), \
             or create the new spec under another name"
        )
    };
    format!(
        "subscription {name:?} exists with another spec, and {} cannot change in place (its \
         position, dead letters and state belong to the stored value); {way_out}",
        members.join(", ")
    )
}
