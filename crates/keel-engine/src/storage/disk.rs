//! [`Storage`] on local disk: a locked data directory, a directory per topic and per
//! subscription, and a `keel-log` log for each partition, checkpoint log and dead-letter log.
//!
//! ```text
//! DATA_DIR/
//!   LOCK, MANIFEST.json          see data_dir.rs
//!   topics/NAME/topic.json       the configuration, with its format version
//!   topics/NAME/0/ …             one log per partition
//!   topics/NAME/keys.redb        the per-key index of events (a cache the logs rebuild)
//!   subscriptions/NAME/subscription.json
//!   subscriptions/NAME/checkpoints/, dlq/
//!   subscriptions/NAME/state/commits/, state/table.redb   stateful subscriptions only
//!   alerts/NAME.json             an alert rule, with its format version
//!   tokens/ID.json               an API token (its secret's hash, never the secret)
//!   trash/                       directories being deleted (emptied at start)
//! ```
//!
//! Every create is a temporary directory renamed into place and every delete a rename into
//! `trash/`, each fsynced, so that after a crash a topic or subscription is either whole or
//! gone. Every fsync is listed in `docs/durability.md`.

mod data_dir;
mod files;
mod log;
mod metadata;
mod state;
mod usage;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_log::LogConfig;

use crate::clock::now_ms;
use crate::config::TopicConfig;
use crate::error::{DataError, EngineError, TopicError};
use crate::limits::{
    DLQ_WRITE_BYTES_MAX, EVENT_BYTES_CEILING, GROUP_COMMIT_BYTES_MAX, REQUEST_BYTES_CEILING,
};
use crate::storage::{
    Area, DataDirDamage, Listed, RecordLog, StateLogs, StateTable, Storage, StorageError,
    StoredAlertRule, StoredSubscription, StoredTopic, SubscriptionLogs,
};
use crate::subscription::spec::SubscriptionSpec;
use crate::tokens::{TokenRecord, readable_tokens};
use data_dir::DataDir;
use keel_api::alerts::AlertRule;
use log::DiskLog;
use state::DiskTable;

/// Settings of the logs on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    /// A partition's segment rolls over at this size.
    pub segment_bytes_max: u64,
}

/// The file in a topic's directory that holds its configuration.
const TOPIC_FILE: &str = "topic.json";
/// The file in a subscription's directory that holds its spec.
const SUBSCRIPTION_FILE: &str = "subscription.json";
/// The new spec of an update, written whole and fsynced before it is renamed over
/// [`SUBSCRIPTION_FILE`].
const SUBSCRIPTION_UPDATE_FILE: &str = ".subscription.json.tmp";
/// The checkpoint log's directory, in a subscription's directory.
const CHECKPOINTS_DIR: &str = "checkpoints";
/// The dead-letter log's directory, in a subscription's directory.
const DEAD_LETTERS_DIR: &str = "dlq";
/// A stateful subscription's state directory, in its directory.
const STATE_DIR: &str = "state";
/// The state's commit log, in the state directory.
const STATE_COMMITS_DIR: &str = "commits";
/// The state's table, in the state directory.
const STATE_TABLE_FILE: &str = "table.redb";
/// A topic's per-key index, in its directory.
const KEY_INDEX_FILE: &str = "keys.redb";
/// Segments of a state commit log roll at this size, so that commits covered by a snapshot go
/// in whole segments.
const STATE_COMMIT_SEGMENT_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Prefix of the temporary directory a topic or subscription is created in before its rename.
const CREATING_PREFIX: &str = ".creating-";
/// Segments of a checkpoint log roll at this size, so that trimming (see
/// `CHECKPOINT_LOG_BYTES_MAX`) can delete whole old ones.
const CHECKPOINT_SEGMENT_BYTES_MAX: u64 = crate::limits::CHECKPOINT_LOG_BYTES_MAX / 2;
/// Segments of a dead-letter log roll at this size.
const DEAD_LETTER_SEGMENT_BYTES_MAX: u64 = 16 * 1024 * 1024;

// A group commit (up to GROUP_COMMIT_BYTES_MAX, then one more request whose binary-mode data
// grew by a third in base64) always fits the log's pending buffer: it never fills mid-group.
const _: () = assert!(
    keel_log::limits::PENDING_BYTES_MAX
        > (GROUP_COMMIT_BYTES_MAX + REQUEST_BYTES_CEILING / 3 * 4) as u64
);

// A dead-letter append (up to DLQ_WRITE_BYTES_MAX, then one more entry: an event at the
// ceiling and its history) fits the log's pending buffer too.
const _: () = assert!(
    keel_log::limits::PENDING_BYTES_MAX > (DLQ_WRITE_BYTES_MAX + 2 * EVENT_BYTES_CEILING) as u64
);

// A dead-letter entry is one record: an event at the ceiling, its attempts and the entry's
// fields fit the log's record bound with room to spare.
const _: () = assert!(2 * EVENT_BYTES_CEILING <= keel_log::limits::PAYLOAD_BYTES_MAX as usize);

/// A data directory on local disk.
#[derive(Debug)]
pub struct DiskStorage {
    data_dir: DataDir,
    partition_config: LogConfig,
}

impl DiskStorage {
    /// Creates (durably) and locks the data directory, checks it against its manifest, and
    /// empties its trash. Blocking.
    pub fn open(root: &Path, settings: LogSettings) -> Result<Self, EngineError> {
        let partition_config = LogConfig {
            segment_bytes_max: settings.segment_bytes_max,
            ..LogConfig::default()
        };
        partition_config.validate().map_err(|error| {
            EngineError::Topic(TopicError::InvalidConfig {
                detail: error.to_string(),
            })
        })?;
        let data_dir = DataDir::open(root)?;
        empty_trash(&data_dir.trash());
        Ok(DiskStorage {
            data_dir,
            partition_config,
        })
    }

    fn area_dir(&self, area: Area) -> PathBuf {
        match area {
            Area::Topics => self.data_dir.topics(),
            Area::Subscriptions => self.data_dir.subscriptions(),
        }
    }

    /// The stored directories of an area: (name, path), leaving out (and removing) creations
    /// that a crash interrupted.
    fn entries(&self, area: Area) -> Result<Vec<(String, PathBuf)>, EngineError> {
        let parent = self.area_dir(area);
        if self.data_dir.check_usable(&parent).is_err() {
            return Ok(Vec::new());
        }
        let listing = std::fs::read_dir(&parent).map_err(EngineError::io("list", &parent))?;
        let mut entries = Vec::new();
        for entry in listing {
            let path = entry.map_err(EngineError::io("list", &parent))?.path();
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with(CREATING_PREFIX) {
                // A creation that crashed before its rename: it never existed.
                tracing::info!(path = %path.display(), "removing an unfinished creation");
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            entries.push((name, path));
        }
        entries.sort();
        Ok(entries)
    }

    /// Writes a new directory atomically: `fill` fills a temporary directory, which is then
    /// renamed into place. Blocking.
    fn create_dir(
        &self,
        area: Area,
        name: &str,
        fill: impl FnOnce(&Path) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let parent = self.area_dir(area);
        self.data_dir.check_usable(&parent)?;
        let temporary = parent.join(format!("{CREATING_PREFIX}{name}"));
        let _ = std::fs::remove_dir_all(&temporary);
        // Not `create_dir_all`: a missing kept directory is damage to report, never to
        // recreate.
        std::fs::create_dir(&temporary).map_err(EngineError::io("create", &temporary))?;
        fill(&temporary)?;
        // Survives a crash after the rename: the directory entries of the new files are
        // durable.
        files::sync_dir(&temporary)?;
        let dir = parent.join(name);
        std::fs::rename(&temporary, &dir).map_err(EngineError::io("rename", &dir))?;
        // Survives a crash after create returns: the rename itself is durable (the temporary
        // directory's own creation needs no fsync: the rename replaces that entry).
        Ok(files::sync_dir(&parent)?)
    }

    /// Moves a directory to the trash (one durable rename: after a crash it is either whole
    /// or gone), then deletes it. Blocking.
    fn remove_dir(&self, dir: &Path) -> Result<(), EngineError> {
        let trash = self.data_dir.trash();
        // Crash: a trash directory whose entry is lost would orphan what is renamed into it.
        files::create_dir_durably(&trash)?;
        let name = dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = trash.join(format!("{name}.{}", now_ms()));
        std::fs::rename(dir, &target).map_err(EngineError::io("rename", dir))?;
        // Crash: both directories of the rename are fsynced: the trash first, so the moved
        // directory is never in neither; then the parent, so the delete answered is durable.
        files::sync_dir(&trash)?;
        if let Some(parent) = dir.parent() {
            files::sync_dir(parent)?;
        }
        // Not fsynced: a removal lost in a crash is redone when the trash is emptied at start.
        std::fs::remove_dir_all(&target).map_err(EngineError::io("remove", &target))
    }

    fn subscription_dir(&self, name: &str) -> PathBuf {
        self.data_dir.subscriptions().join(name)
    }
}

impl Storage for DiskStorage {
    fn damage(&self) -> Vec<DataDirDamage> {
        self.data_dir.damage().to_vec()
    }

    fn free_bytes(&self) -> Result<Option<u64>, StorageError> {
        usage::free_bytes(self.data_dir.root()).map(Some)
    }

    fn stored_bytes(&self) -> Result<u64, StorageError> {
        usage::stored_bytes(self.data_dir.root())
    }

    fn check_usable(&self, area: Area) -> Result<(), EngineError> {
        self.data_dir.check_usable(&self.area_dir(area))
    }

    fn topics(&self) -> Result<Vec<StoredTopic>, EngineError> {
        let topics = self.entries(Area::Topics)?.into_iter().map(|(name, dir)| {
            let config = metadata::read(&dir.join(TOPIC_FILE));
            StoredTopic { name, config }
        });
        Ok(topics.collect())
    }

    fn create_topic(&self, name: &str, config: &TopicConfig) -> Result<(), EngineError> {
        self.create_dir(Area::Topics, name, |dir| {
            metadata::write(&dir.join(TOPIC_FILE), config)?;
            // The partitions' directories, empty (each log starts in its own at its first
            // open): made with the topic, so that a missing one at a later open is damage,
            // not an empty log.
            for number in 0..config.partitions {
                let partition_dir = dir.join(number.to_string());
                std::fs::create_dir(&partition_dir)
                    .map_err(EngineError::io("create", &partition_dir))?;
            }
            // Made (and fsynced by redb's first commit) inside the temporary directory, so
            // that the directory fsync and rename below make its entry durable with the topic.
            DiskTable::create(&dir.join(KEY_INDEX_FILE))
                .map_err(|source| storage_failed("create the key index", dir, source))?;
            Ok(())
        })
    }

    fn delete_topic(&self, name: &str) -> Result<(), EngineError> {
        self.remove_dir(&self.data_dir.topics().join(name))
    }

    fn open_key_index(&self, topic: &str) -> Result<Box<dyn StateTable>, EngineError> {
        let dir = self.data_dir.topics().join(topic);
        let path = dir.join(KEY_INDEX_FILE);
        let opened = if path.is_file() {
            DiskTable::open(&path)
        } else {
            // A topic made by a keel without key indexes, or a file lost: rebuilt from the log.
            tracing::info!(
                topic,
                "the topic has no key index; building one from its log"
            );
            create_key_index(&dir, &path)
        };
        let table = match opened {
            Ok(table) => table,
            Err(error) => {
                // A cache: an unreadable one is replaced, and the log rebuilds it.
                tracing::warn!(topic, %error, "the key index cannot be opened; rebuilding it from the log");
                std::fs::remove_file(&path).map_err(EngineError::io("remove", &path))?;
                create_key_index(&dir, &path)
                    .map_err(|source| storage_failed("create the key index", &dir, source))?
            }
        };
        Ok(Box::new(table))
    }

    fn open_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<dyn RecordLog>, StorageError> {
        let dir = self
            .data_dir
            .topics()
            .join(topic)
            .join(partition.to_string());
        let log = DiskLog::open(&dir, self.partition_config.clone(), "partition")?;
        Ok(Arc::new(log))
    }

    fn subscriptions(&self) -> Result<Vec<StoredSubscription>, EngineError> {
        let subscriptions = self
            .entries(Area::Subscriptions)?
            .into_iter()
            .map(|(name, dir)| {
                let spec = metadata::read(&dir.join(SUBSCRIPTION_FILE));
                StoredSubscription { name, spec }
            });
        Ok(subscriptions.collect())
    }

    fn create_subscription(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
        checkpoint: &[u8],
    ) -> Result<(), EngineError> {
        self.create_dir(Area::Subscriptions, name, |dir| {
            metadata::write(&dir.join(SUBSCRIPTION_FILE), spec)?;
            let checkpoints =
                DiskLog::open_or_create(&dir.join(CHECKPOINTS_DIR), checkpoint_config())
                    .map_err(|source| storage_failed("create the checkpoint log", dir, source))?;
            checkpoints
                .append(now_ms(), &[checkpoint], true)
                .map_err(|source| storage_failed("write the first checkpoint", dir, source))?;
            // Empty: the queue's log is made in it at the first open. Created now so that a
            // missing one at a later open is damage, not an empty queue.
            let dead_letters = dir.join(DEAD_LETTERS_DIR);
            std::fs::create_dir(&dead_letters).map_err(EngineError::io("create", &dead_letters))?;
            if spec.stateful {
                create_state(&dir.join(STATE_DIR))?;
            }
            Ok(())
        })
    }

    fn replace_subscription_spec(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
    ) -> Result<(), EngineError> {
        let dir = self.subscription_dir(name);
        let temporary = dir.join(SUBSCRIPTION_UPDATE_FILE);
        metadata::write(&temporary, spec)?;
        let path = dir.join(SUBSCRIPTION_FILE);
        std::fs::rename(&temporary, &path).map_err(EngineError::io("rename", &path))?;
        // Crash: the rename is durable once the directory is fsynced; before, the old spec
        // is there, whole (and a `.subscription.json.tmp` that the next update overwrites).
        Ok(files::sync_dir(&dir)?)
    }

    fn open_subscription(&self, name: &str) -> Result<SubscriptionLogs, EngineError> {
        let dir = self.subscription_dir(name);
        let checkpoints = DiskLog::open(
            &dir.join(CHECKPOINTS_DIR),
            checkpoint_config(),
            "checkpoint log",
        )
        .map_err(|source| storage_failed("open the checkpoint log", &dir, source))?;
        let dead_letters = DiskLog::open(
            &dir.join(DEAD_LETTERS_DIR),
            dead_letter_config(),
            "dead-letter queue",
        )
        .map_err(|source| storage_failed("open the dead-letter queue", &dir, source))?;
        Ok(SubscriptionLogs {
            checkpoints: Box::new(checkpoints),
            dead_letters: Box::new(dead_letters),
            state: None,
        })
    }

    fn open_state(&self, name: &str) -> Result<StateLogs, EngineError> {
        let dir = self.subscription_dir(name).join(STATE_DIR);
        let commits = DiskLog::open(
            &dir.join(STATE_COMMITS_DIR),
            state_commit_config(),
            "state commit log",
        )
        .map_err(|source| storage_failed("open the state's commit log", &dir, source))?;
        let table = DiskTable::open(&dir.join(STATE_TABLE_FILE))
            .map_err(|source| storage_failed("open the state table", &dir, source))?;
        Ok(StateLogs {
            commits: Box::new(commits),
            table: Box::new(table),
        })
    }

    fn delete_subscription(&self, name: &str) -> Result<(), EngineError> {
        self.remove_dir(&self.subscription_dir(name))
    }

    fn alert_rules(&self) -> Result<Vec<StoredAlertRule>, EngineError> {
        let rules = read_named(&self.data_dir.alerts())?;
        Ok(rules
            .into_iter()
            .map(|(name, rule)| StoredAlertRule { name, rule })
            .collect())
    }

    fn put_alert_rule(&self, name: &str, rule: &AlertRule) -> Result<(), EngineError> {
        write_named(&self.data_dir.alerts(), name, rule)
    }

    fn delete_alert_rule(&self, name: &str) -> Result<(), EngineError> {
        remove_named(&self.data_dir.alerts(), name)
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, EngineError> {
        let tokens = read_named::<TokenRecord>(&self.data_dir.tokens())?;
        Ok(readable_tokens(tokens))
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), EngineError> {
        write_named(&self.data_dir.tokens(), &token.id, token)
    }

    fn delete_token(&self, id: &str) -> Result<(), EngineError> {
        remove_named(&self.data_dir.tokens(), id)
    }
}

/// Every `NAME.json` in `dir` by name, each read or why it cannot be (none when `dir` is
/// missing). Blocking.
fn read_named<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Vec<Listed<T>>, EngineError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let listing = std::fs::read_dir(dir).map_err(EngineError::io("list", dir))?;
    let mut values = Vec::new();
    for entry in listing {
        let path = entry.map_err(EngineError::io("list", dir))?.path();
        let file_name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned());
        // Only `NAME.json`: a `.NAME.json.tmp` is a write a crash interrupted.
        let Some(name) = file_name
            .as_deref()
            .and_then(|name| name.strip_suffix(".json"))
        else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        values.push((name.to_owned(), metadata::read(&path)));
    }
    values.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(values)
}

/// Writes `value` as `dir/NAME.json`, replacing one there, durably and atomically: after a
/// crash the old value (or none) or the new one is there, whole. Blocking.
fn write_named<T: serde::Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), EngineError> {
    // Crash: the directory's own entry is durable before any file is renamed into it.
    files::create_dir_durably(dir)?;
    let temporary = dir.join(format!(".{name}.json.tmp"));
    metadata::write(&temporary, value)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::rename(&temporary, &path).map_err(EngineError::io("rename", &path))?;
    // Crash: the rename is durable once the directory is fsynced.
    Ok(files::sync_dir(dir)?)
}

/// Removes `dir/NAME.json`, durably; none there is not an error. Blocking.
fn remove_named(dir: &Path, name: &str) -> Result<(), EngineError> {
    let path = dir.join(format!("{name}.json"));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(EngineError::io("remove", &path)(error)),
    }
    // Crash: without it a removed file could come back after a power loss (a deleted alert
    // rule, a revoked token).
    Ok(files::sync_dir(dir)?)
}

fn checkpoint_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: CHECKPOINT_SEGMENT_BYTES_MAX,
        ..LogConfig::default()
    }
}

fn dead_letter_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: DEAD_LETTER_SEGMENT_BYTES_MAX,
        ..LogConfig::default()
    }
}

fn state_commit_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: STATE_COMMIT_SEGMENT_BYTES_MAX,
        ..LogConfig::default()
    }
}

/// Makes a stateful subscription's empty state in `dir`: the commit log's directory and the
/// table, each entry fsynced (the caller fsyncs `dir`'s own entry).
fn create_state(dir: &Path) -> Result<(), EngineError> {
    std::fs::create_dir(dir).map_err(EngineError::io("create", dir))?;
    let commits = dir.join(STATE_COMMITS_DIR);
    std::fs::create_dir(&commits).map_err(EngineError::io("create", &commits))?;
    DiskTable::create(&dir.join(STATE_TABLE_FILE))
        .map_err(|source| storage_failed("create the state table", dir, source))?;
    Ok(files::sync_dir(dir)?)
}

/// Creates a key index at `path` in the topic directory `dir` (replacing one that is missing
/// or unreadable).
fn create_key_index(dir: &Path, path: &Path) -> Result<DiskTable, StorageError> {
    let table = DiskTable::create(path)?;
    // Not needed for correctness (a lost entry is rebuilt again from the log), but it spares
    // the next start that rebuild.
    files::sync_dir(dir)?;
    Ok(table)
}

fn storage_failed(what: &str, dir: &Path, source: StorageError) -> EngineError {
    EngineError::Data(DataError::Storage {
        context: format!("{what} of {}", dir.display()),
        source,
    })
}

fn empty_trash(trash: &Path) {
    if trash.exists()
        && let Err(error) = std::fs::remove_dir_all(trash)
    {
        tracing::warn!(path = %trash.display(), %error, "could not empty the trash");
    }
}

/// A log on disk in `dir` with segments of `segment_bytes_max`, for tests of what is built on
/// logs.
#[cfg(test)]
pub(crate) fn log_for_tests(dir: &Path, segment_bytes_max: u64) -> Box<dyn RecordLog> {
    let config = LogConfig {
        segment_bytes_max,
        ..LogConfig::default()
    };
    Box::new(DiskLog::open_or_create(dir, config).expect("open a test log"))
}
