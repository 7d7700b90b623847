//! [`Storage`] in memory, with seeded faults, for in-process crash and fault tests of the
//! engine: appends and fsyncs that fail, and crashes that lose unsynced records or keep a
//! part of them (a tail torn at a record boundary: torn bytes inside a record are keel-log's
//! to cut, and its own tests cover that), every decision drawn from one seed so a failing run
//! replays.
//!
//! The model of durability is the disk's: a record appended without `sync` is visible at
//! once but survives a crash only by luck; with `sync` (or after [`RecordLog::sync`]) it
//! survives every crash. A failed append or sync poisons its log, as keel-log does: what
//! reached the medium is unknown until the next open. Metadata (creating and deleting topics
//! and subscriptions) is durable when the call returns; the disk backend's directory fsyncs
//! are proven by the real-binary power-loss tests instead.
//!
//! [`MemoryStorage::crash`] is the power cut: every handle of the storage and its logs fails
//! from then on (the crashed engine's tasks get errors, never a say in what survives); the
//! storage it returns sees only what survived, as a restarted process would: logs keep what
//! was synced and a seeded prefix of the rest; state tables and topics' key indexes go back
//! to their last snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::config::TopicConfig;
use crate::error::{DataError, EngineError, SubscriptionError, TopicError};
use crate::storage::table_map::TableMap;
use crate::storage::{
    Area, DataDirDamage, Record, RecordLog, StateLogs, StateTable, Storage, StorageError,
    StoredAlertRule, StoredSubscription, StoredTopic, SubscriptionLogs, TableEntry, TableWrite,
    Trimmed,
};
use crate::subscription::spec::SubscriptionSpec;
use crate::tokens::TokenRecord;
use keel_api::alerts::AlertRule;

/// Which faults a [`MemoryStorage`] injects, and the seed that decides when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// Decides every fault and every crash's losses.
    pub seed: u64,
    /// Chance, in parts per million, that an append fails before anything is written.
    pub append_failures_ppm: u32,
    /// Chance, in parts per million, that an fsync fails (a synced append's, or a sync's);
    /// the records it covered were written and may still survive a crash.
    pub sync_failures_ppm: u32,
}

/// Everything in memory; clones share it. See the module documentation.
#[derive(Clone)]
pub struct MemoryStorage {
    shared: Arc<Shared>,
    /// The generation this handle belongs to: it fails once a crash ended that generation.
    generation: u64,
}

struct Shared {
    /// The current generation; every crash starts a new one.
    generation: AtomicU64,
    faults: Mutex<Faults>,
    store: Mutex<Store>,
}

#[derive(Default)]
struct Store {
    crashes: u64,
    topics: BTreeMap<String, StoredTopicLogs>,
    subscriptions: BTreeMap<String, StoredLogs>,
    alert_rules: BTreeMap<String, AlertRule>,
    tokens: BTreeMap<String, TokenRecord>,
}

/// One log's state, shared by the store and the handles opened on it.
type SharedLog = Arc<Mutex<LogState>>;

/// A topic: its configuration, its partitions' logs and its key index.
struct StoredTopicLogs {
    config: TopicConfig,
    partitions: Vec<SharedLog>,
    key_index: SharedTable,
}

struct StoredLogs {
    spec: SubscriptionSpec,
    checkpoints: SharedLog,
    dead_letters: SharedLog,
    /// A stateful subscription's commit log and table.
    state: Option<(SharedLog, SharedTable)>,
}

/// One state table's contents, shared by the store and the handles opened on it.
type SharedTable = Arc<Mutex<TableState>>;

/// A state table: what writes made it, and what the last snapshot made durable.
struct TableState {
    /// Names the table in fault decisions.
    name: String,
    map: TableMap,
    /// The last snapshot (entries and mark): all a crash keeps.
    durable: TableMap,
    operations: u64,
    poisoned: Option<String>,
}

impl TableState {
    fn new(name: String) -> Self {
        TableState {
            name,
            map: TableMap::default(),
            durable: TableMap::default(),
            operations: 0,
            poisoned: None,
        }
    }

    fn crash(&mut self) {
        self.map = self.durable.clone();
        self.poisoned = None;
    }
}

/// One log's records.
///
/// Invariant: `start_offset <= synced_next` and `visible_next <= written_next()`;
/// `synced_next <= written_next()`. Records between the visible and the written end were
/// written by a commit that failed: never read, but a crash may keep them.
struct LogState {
    /// Names the log in fault decisions.
    name: String,
    start_offset: u64,
    records: VecDeque<Record>,
    visible_next: u64,
    synced_next: u64,
    /// Appends and syncs so far: each one's fault decision draws on its number.
    operations: u64,
    poisoned: Option<String>,
}

impl LogState {
    fn new(name: String) -> Self {
        LogState {
            name,
            start_offset: 0,
            records: VecDeque::new(),
            visible_next: 0,
            synced_next: 0,
            operations: 0,
            poisoned: None,
        }
    }

    /// Bytes of the records' payloads.
    fn payload_bytes(&self) -> u64 {
        self.records.iter().map(|r| r.payload.len() as u64).sum()
    }

    fn written_next(&self) -> u64 {
        self.start_offset + self.records.len() as u64
    }

    /// The crash: keeps what was synced, and of the rest a seeded prefix (none, some, all:
    /// the page cache wrote back part of it before the power went), then takes what is left
    /// as durable, as recovery does.
    fn crash(&mut self, seed: u64, crash: u64) {
        let unsynced = self.written_next() - self.synced_next;
        let kept = if unsynced == 0 {
            0
        } else {
            draw(seed, &self.name, crash, Draw::Survivors) % (unsynced + 1)
        };
        let end = self.synced_next + kept;
        while self.written_next() > end {
            self.records.pop_back();
        }
        self.visible_next = end;
        self.synced_next = end;
        self.poisoned = None;
    }
}

/// What a draw decides, so that two decisions about the same operation are independent.
#[derive(Clone, Copy)]
enum Draw {
    AppendFails = 1,
    SyncFails = 2,
    Survivors = 3,
}

/// A number decided by the seed, a log's name and an operation's number alone: the same
/// seed makes the same decisions however tasks interleave between logs.
fn draw(seed: u64, name: &str, number: u64, what: Draw) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for byte in name.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(seed ^ splitmix(hash ^ splitmix(number ^ ((what as u64) << 56))))
}

fn splitmix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Store {
    /// Every log: the topics' partitions, and the subscriptions' checkpoints, dead letters and
    /// state commits.
    fn logs(&self) -> impl Iterator<Item = &SharedLog> {
        let partitions = self
            .topics
            .values()
            .flat_map(|topic| topic.partitions.iter());
        let subscription_logs = self
            .subscriptions
            .values()
            .flat_map(|logs| [&logs.checkpoints, &logs.dead_letters]);
        let state_logs = self
            .subscriptions
            .values()
            .filter_map(|logs| logs.state.as_ref().map(|(commits, _)| commits));
        partitions.chain(subscription_logs).chain(state_logs)
    }
}

impl MemoryStorage {
    /// An empty store that injects `faults`.
    pub fn new(faults: Faults) -> Self {
        MemoryStorage {
            shared: Arc::new(Shared {
                generation: AtomicU64::new(0),
                faults: Mutex::new(faults),
                store: Mutex::new(Store::default()),
            }),
            generation: 0,
        }
    }

    /// Cuts the power: every handle of this generation (this one, the logs opened through
    /// it) fails from now on, and every log keeps only what a crash would leave. Returns the
    /// storage a restarted process sees.
    pub fn crash(&self) -> MemoryStorage {
        let mut store = self.store();
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        store.crashes += 1;
        let (seed, crash) = (self.shared.faults().seed, store.crashes);
        for log in store.logs() {
            log.lock().expect("log lock").crash(seed, crash);
        }
        let state_tables = store
            .subscriptions
            .values()
            .filter_map(|logs| logs.state.as_ref().map(|(_, table)| table));
        let key_indexes = store.topics.values().map(|topic| &topic.key_index);
        for table in state_tables.chain(key_indexes) {
            table.lock().expect("table lock").crash();
        }
        MemoryStorage {
            shared: self.shared.clone(),
            generation,
        }
    }

    /// Changes the faults injected from now on, and the seed of later decisions (a test's
    /// last run without faults, say).
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().expect("faults lock") = faults;
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.shared.store.lock().expect("store lock")
    }

    /// The store, once this handle's generation is checked under its lock: `crash` bumps
    /// the generation holding the same lock, so a call of a crashed generation never changes
    /// what the restarted one sees.
    fn live_store(&self) -> Result<MutexGuard<'_, Store>, EngineError> {
        let store = self.store();
        if self.shared.generation.load(Ordering::SeqCst) == self.generation {
            return Ok(store);
        }
        Err(EngineError::Data(DataError::Storage {
            context: "memory storage".to_owned(),
            source: crashed(),
        }))
    }

    fn table_handle(&self, table: &SharedTable) -> MemoryTable {
        MemoryTable {
            state: table.clone(),
            shared: self.shared.clone(),
            generation: self.generation,
        }
    }

    fn handle(&self, state: &SharedLog) -> MemoryLog {
        let next_offset = state.lock().expect("log lock").visible_next;
        MemoryLog {
            state: state.clone(),
            shared: self.shared.clone(),
            generation: self.generation,
            next_offset: watch::Sender::new(next_offset),
        }
    }
}

impl Shared {
    fn faults(&self) -> Faults {
        *self.faults.lock().expect("faults lock")
    }
}

fn crashed() -> StorageError {
    StorageError::Backend("the storage crashed (simulated power loss)".into())
}

impl Storage for MemoryStorage {
    fn damage(&self) -> Vec<DataDirDamage> {
        Vec::new()
    }

    fn free_bytes(&self) -> Result<Option<u64>, StorageError> {
        // Memory is not metered: only a cap on the stored bytes applies.
        Ok(None)
    }

    fn stored_bytes(&self) -> Result<u64, StorageError> {
        // The logs' payloads: tables and metadata are small beside them.
        let store = self.store();
        let bytes = store
            .logs()
            .map(|log| log.lock().expect("log lock").payload_bytes());
        Ok(bytes.sum())
    }

    fn check_usable(&self, _area: Area) -> Result<(), EngineError> {
        self.live_store().map(drop)
    }

    fn topics(&self) -> Result<Vec<StoredTopic>, EngineError> {
        let store = self.live_store()?;
        let topics = store.topics.iter().map(|(name, topic)| StoredTopic {
            name: name.clone(),
            config: Ok(topic.config),
        });
        Ok(topics.collect())
    }

    fn create_topic(&self, name: &str, config: &TopicConfig) -> Result<(), EngineError> {
        let partitions = (0..config.partitions)
            .map(|number| Arc::new(Mutex::new(LogState::new(format!("{name}/{number}")))))
            .collect();
        let key_index = Arc::new(Mutex::new(TableState::new(format!("{name}/keys"))));
        let topic = StoredTopicLogs {
            config: *config,
            partitions,
            key_index,
        };
        self.live_store()?.topics.insert(name.to_owned(), topic);
        Ok(())
    }

    fn open_key_index(&self, topic: &str) -> Result<Box<dyn StateTable>, EngineError> {
        let store = self.live_store()?;
        let table = store.topics.get(topic).ok_or_else(|| {
            EngineError::Topic(TopicError::NotFound {
                topic: topic.to_owned(),
            })
        })?;
        Ok(Box::new(self.table_handle(&table.key_index)))
    }

    fn delete_topic(&self, name: &str) -> Result<(), EngineError> {
        self.live_store()?.topics.remove(name);
        Ok(())
    }

    fn open_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<dyn RecordLog>, StorageError> {
        let store = self.live_store().map_err(|_| crashed())?;
        let state = store
            .topics
            .get(topic)
            .and_then(|topic| topic.partitions.get(partition as usize))
            .ok_or_else(|| StorageError::Io {
                op: "open",
                path: PathBuf::from(format!("{topic}/{partition}")),
                source: std::io::ErrorKind::NotFound.into(),
            })?;
        Ok(Arc::new(self.handle(state)))
    }

    fn subscriptions(&self) -> Result<Vec<StoredSubscription>, EngineError> {
        let store = self.live_store()?;
        let subscriptions = store
            .subscriptions
            .iter()
            .map(|(name, logs)| StoredSubscription {
                name: name.clone(),
                spec: Ok(logs.spec.clone()),
            });
        Ok(subscriptions.collect())
    }

    fn create_subscription(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
        checkpoint: &[u8],
    ) -> Result<(), EngineError> {
        let mut checkpoints = LogState::new(format!("{name}/checkpoints"));
        checkpoints.records.push_back(Record {
            offset: 0,
            timestamp_ms: crate::clock::now_ms(),
            payload: checkpoint.to_vec(),
        });
        (checkpoints.visible_next, checkpoints.synced_next) = (1, 1);
        let state = spec.stateful.then(|| {
            let table = TableState::new(format!("{name}/state"));
            let commits = LogState::new(format!("{name}/commits"));
            (Arc::new(Mutex::new(commits)), Arc::new(Mutex::new(table)))
        });
        let logs = StoredLogs {
            spec: spec.clone(),
            checkpoints: Arc::new(Mutex::new(checkpoints)),
            dead_letters: Arc::new(Mutex::new(LogState::new(format!("{name}/dlq")))),
            state,
        };
        self.live_store()?
            .subscriptions
            .insert(name.to_owned(), logs);
        Ok(())
    }

    fn open_subscription(&self, name: &str) -> Result<SubscriptionLogs, EngineError> {
        let store = self.live_store()?;
        let logs = store.subscriptions.get(name).ok_or_else(|| {
            EngineError::Subscription(SubscriptionError::NotFound {
                name: name.to_owned(),
            })
        })?;
        Ok(SubscriptionLogs {
            checkpoints: Box::new(self.handle(&logs.checkpoints)),
            dead_letters: Box::new(self.handle(&logs.dead_letters)),
            state: None,
        })
    }

    fn open_state(&self, name: &str) -> Result<StateLogs, EngineError> {
        let store = self.live_store()?;
        let (commits, table) = store
            .subscriptions
            .get(name)
            .and_then(|logs| logs.state.as_ref())
            .ok_or_else(|| {
                EngineError::Subscription(SubscriptionError::NotFound {
                    name: name.to_owned(),
                })
            })?;
        Ok(StateLogs {
            commits: Box::new(self.handle(commits)),
            table: Box::new(self.table_handle(table)),
        })
    }

    fn alert_rules(&self) -> Result<Vec<StoredAlertRule>, EngineError> {
        let store = self.live_store()?;
        let rules = store
            .alert_rules
            .iter()
            .map(|(name, rule)| StoredAlertRule {
                name: name.clone(),
                rule: Ok(rule.clone()),
            });
        Ok(rules.collect())
    }

    fn put_alert_rule(&self, name: &str, rule: &AlertRule) -> Result<(), EngineError> {
        let mut store = self.live_store()?;
        store.alert_rules.insert(name.to_owned(), rule.clone());
        Ok(())
    }

    fn delete_alert_rule(&self, name: &str) -> Result<(), EngineError> {
        self.live_store()?.alert_rules.remove(name);
        Ok(())
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, EngineError> {
        Ok(self.live_store()?.tokens.values().cloned().collect())
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), EngineError> {
        let mut store = self.live_store()?;
        store.tokens.insert(token.id.clone(), token.clone());
        Ok(())
    }

    fn delete_token(&self, id: &str) -> Result<(), EngineError> {
        self.live_store()?.tokens.remove(id);
        Ok(())
    }

    fn replace_subscription_spec(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
    ) -> Result<(), EngineError> {
        let mut store = self.live_store()?;
        let stored = store.subscriptions.get_mut(name).ok_or_else(|| {
            EngineError::Subscription(SubscriptionError::NotFound {
                name: name.to_owned(),
            })
        })?;
        stored.spec = spec.clone();
        Ok(())
    }

    fn delete_subscription(&self, name: &str) -> Result<(), EngineError> {
        self.live_store()?.subscriptions.remove(name);
        Ok(())
    }
}

/// A handle on one log in memory.
struct MemoryLog {
    state: SharedLog,
    shared: Arc<Shared>,
    generation: u64,
    next_offset: watch::Sender<u64>,
}

impl MemoryLog {
    /// The log's state, once this handle's generation is checked: after a crash, nothing.
    fn state(&self) -> Result<MutexGuard<'_, LogState>, StorageError> {
        let state = self.state.lock().expect("log lock");
        if self.shared.generation.load(Ordering::SeqCst) != self.generation {
            return Err(crashed());
        }
        Ok(state)
    }

    /// The state for a write: fails while poisoned, and counts the operation.
    fn writable(&self) -> Result<(MutexGuard<'_, LogState>, u64), StorageError> {
        let mut state = self.state()?;
        if let Some(cause) = &state.poisoned {
            return Err(StorageError::Poisoned {
                cause: cause.clone(),
            });
        }
        state.operations += 1;
        let number = state.operations;
        Ok((state, number))
    }

    /// Whether the seed makes operation `number` of this log fail `what`.
    fn fails(&self, state: &LogState, number: u64, what: Draw) -> bool {
        let faults = self.shared.faults();
        let ppm = match what {
            Draw::AppendFails => faults.append_failures_ppm,
            Draw::SyncFails => faults.sync_failures_ppm,
            Draw::Survivors => 0,
        };
        ppm > 0 && draw(faults.seed, &state.name, number, what) % 1_000_000 < u64::from(ppm)
    }

    fn fail(state: &mut LogState, what: &str) -> StorageError {
        let cause = format!("injected {what} failure in {}", state.name);
        state.poisoned = Some(cause.clone());
        StorageError::Io {
            op: "write",
            path: PathBuf::from(&state.name),
            source: std::io::Error::other(cause),
        }
    }
}

impl RecordLog for MemoryLog {
    fn append(
        &self,
        timestamp_ms: i64,
        payloads: &[&[u8]],
        sync: bool,
    ) -> Result<u64, StorageError> {
        let (mut state, number) = self.writable()?;
        if self.fails(&state, number, Draw::AppendFails) {
            return Err(Self::fail(&mut state, "append"));
        }
        let first_offset = state.written_next();
        for (offset, payload) in (first_offset..).zip(payloads) {
            state.records.push_back(Record {
                offset,
                timestamp_ms,
                payload: payload.to_vec(),
            });
        }
        if sync && self.fails(&state, number, Draw::SyncFails) {
            return Err(Self::fail(&mut state, "fsync"));
        }
        state.visible_next = state.written_next();
        if sync {
            state.synced_next = state.visible_next;
        }
        self.next_offset.send_replace(state.visible_next);
        Ok(first_offset)
    }

    fn sync(&self) -> Result<(), StorageError> {
        let (mut state, number) = self.writable()?;
        if self.fails(&state, number, Draw::SyncFails) {
            return Err(Self::fail(&mut state, "fsync"));
        }
        state.synced_next = state.visible_next;
        Ok(())
    }

    fn read(
        &self,
        from: u64,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Record>, StorageError> {
        let state = self.state()?;
        if from < state.start_offset || from > state.visible_next {
            return Err(StorageError::OffsetOutOfRange {
                offset: from,
                start_offset: state.start_offset,
                next_offset: state.visible_next,
            });
        }
        let skip = usize::try_from(from - state.start_offset).expect("in memory");
        let available = usize::try_from(state.visible_next - from).expect("in memory");
        let mut records = Vec::new();
        let mut bytes = 0;
        for record in state
            .records
            .iter()
            .skip(skip)
            .take(available.min(records_max))
        {
            if !records.is_empty() && bytes + record.payload.len() > bytes_max {
                break;
            }
            bytes += record.payload.len();
            records.push(record.clone());
        }
        Ok(records)
    }

    fn start_offset(&self) -> u64 {
        self.state.lock().expect("log lock").start_offset
    }

    fn next_offset(&self) -> u64 {
        self.state.lock().expect("log lock").visible_next
    }

    fn watch_next_offset(&self) -> watch::Receiver<u64> {
        self.next_offset.subscribe()
    }

    fn size_bytes(&self) -> u64 {
        self.state.lock().expect("log lock").payload_bytes()
    }

    fn truncated_at_open_bytes(&self) -> u64 {
        // A crash here drops whole records: nothing torn is left to cut.
        0
    }

    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<u64, StorageError> {
        let state = self.state()?;
        let mut visible = state
            .records
            .iter()
            .take_while(|record| record.offset < state.visible_next);
        Ok(visible
            .find(|record| record.timestamp_ms >= timestamp_ms)
            .map_or(state.visible_next, |record| record.offset))
    }

    fn apply_retention(
        &self,
        now_ms: i64,
        age_ms_max: Option<u64>,
        bytes_max: Option<u64>,
    ) -> Result<Trimmed, StorageError> {
        let mut state = self.state()?;
        let mut size: u64 = state.records.iter().map(|r| r.payload.len() as u64).sum();
        let mut trimmed = Trimmed::default();
        // Only synced, visible records go, and never the newest.
        while state.start_offset + 1 < state.synced_next.min(state.visible_next) {
            let Some(oldest) = state.records.front() else {
                break;
            };
            let age_ms = u64::try_from(now_ms - oldest.timestamp_ms).unwrap_or(0);
            let too_old = age_ms_max.is_some_and(|max| age_ms > max);
            let too_big = bytes_max.is_some_and(|max| size > max);
            if !too_old && !too_big {
                break;
            }
            let bytes = oldest.payload.len() as u64;
            state.records.pop_front();
            state.start_offset += 1;
            size -= bytes;
            trimmed.segments += 1;
            trimmed.bytes += bytes;
        }
        Ok(trimmed)
    }

    fn remove_before(&self, offset: u64) -> Result<Trimmed, StorageError> {
        let mut state = self.state()?;
        let mut trimmed = Trimmed::default();
        // Only synced, visible records go, and never the newest.
        let end = offset.min(state.synced_next.min(state.visible_next).saturating_sub(1));
        while state.start_offset < end {
            let Some(oldest) = state.records.pop_front() else {
                break;
            };
            state.start_offset += 1;
            trimmed.segments += 1;
            trimmed.bytes += oldest.payload.len() as u64;
        }
        Ok(trimmed)
    }

    fn rewrite(&mut self, timestamp_ms: i64, payloads: &[&[u8]]) -> Result<(), StorageError> {
        let (mut state, _) = self.writable()?;
        state.records = (0..)
            .zip(payloads)
            .map(|(offset, payload)| Record {
                offset,
                timestamp_ms,
                payload: payload.to_vec(),
            })
            .collect();
        state.start_offset = 0;
        state.visible_next = state.written_next();
        state.synced_next = state.visible_next;
        self.next_offset.send_replace(state.visible_next);
        Ok(())
    }
}

/// A handle on one state table in memory.
struct MemoryTable {
    state: SharedTable,
    shared: Arc<Shared>,
    generation: u64,
}

impl MemoryTable {
    /// The table, once this handle's generation is checked: after a crash, nothing.
    fn state(&self) -> Result<MutexGuard<'_, TableState>, StorageError> {
        let state = self.state.lock().expect("table lock");
        if self.shared.generation.load(Ordering::SeqCst) != self.generation {
            return Err(crashed());
        }
        Ok(state)
    }

    /// The table for a change: fails while poisoned, or (poisoning it) when the seed makes
    /// this operation fail `what`.
    fn writable(&self, what: Draw) -> Result<MutexGuard<'_, TableState>, StorageError> {
        let mut state = self.state()?;
        if let Some(cause) = &state.poisoned {
            return Err(StorageError::Poisoned {
                cause: cause.clone(),
            });
        }
        state.operations += 1;
        let faults = self.shared.faults();
        let ppm = match what {
            Draw::AppendFails => faults.append_failures_ppm,
            Draw::SyncFails | Draw::Survivors => faults.sync_failures_ppm,
        };
        if ppm > 0
            && draw(faults.seed, &state.name, state.operations, what) % 1_000_000 < u64::from(ppm)
        {
            let cause = format!("injected failure in {}", state.name);
            state.poisoned = Some(cause.clone());
            return Err(StorageError::Io {
                op: "write",
                path: PathBuf::from(&state.name),
                source: std::io::Error::other(cause),
            });
        }
        Ok(state)
    }
}

impl StateTable for MemoryTable {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.state()?.map.get(key))
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: &[u8],
        max: usize,
    ) -> Result<Vec<TableEntry>, StorageError> {
        Ok(self.state()?.map.scan(prefix, after, max))
    }

    fn last(&self, prefix: &[u8]) -> Result<Option<TableEntry>, StorageError> {
        Ok(self.state()?.map.last(prefix))
    }

    fn write(&self, writes: &[TableWrite], mark: &[u8]) -> Result<(), StorageError> {
        self.writable(Draw::AppendFails)?.map.write(writes, mark);
        Ok(())
    }

    fn clear(&self, mark: &[u8]) -> Result<(), StorageError> {
        self.writable(Draw::AppendFails)?.map.clear(mark);
        Ok(())
    }

    fn snapshot(&self) -> Result<(), StorageError> {
        let mut state = self.writable(Draw::SyncFails)?;
        state.durable = state.map.clone();
        Ok(())
    }

    fn mark(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.state()?.map.mark())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage_with_log(faults: Faults) -> (MemoryStorage, Arc<dyn RecordLog>) {
        let storage = MemoryStorage::new(faults);
        let config = TopicConfig {
            partitions: 1,
            ..TopicConfig::default()
        };
        storage.create_topic("t", &config).expect("create");
        let log = storage.open_partition("t", 0).expect("open");
        (storage, log)
    }

    // Goal: synced records survive every crash, unsynced ones a seeded prefix of them, and
    // the crashed generation's handles fail. Method: many seeds, one crash each.
    #[test]
    fn a_crash_keeps_synced_records_and_a_prefix_of_the_rest() {
        let mut lost_some = false;
        for seed in 0..50 {
            let faults = Faults {
                seed,
                ..Faults::default()
            };
            let (storage, log) = storage_with_log(faults);
            log.append(1, &[b"a", b"b"], true).expect("synced");
            log.append(2, &[b"c", b"d", b"e"], false).expect("unsynced");
            let restarted = storage.crash();
            assert!(
                log.read(0, 10, usize::MAX).is_err(),
                "the old handle is dead"
            );
            let log = restarted.open_partition("t", 0).expect("reopen");
            let records = log.read(0, 10, usize::MAX).expect("read");
            let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
            let expected: [&[u8]; 5] = [b"a", b"b", b"c", b"d", b"e"];
            assert!(payloads.len() >= 2, "seed {seed}: synced records kept");
            assert_eq!(
                payloads,
                expected[..payloads.len()],
                "seed {seed}: a prefix"
            );
            lost_some |= payloads.len() < 5;
        }
        assert!(lost_some, "some seed loses unsynced records");
    }

    // Goal: an injected failure poisons the log until a crash and reopen, and what the
    // failed fsync covered is never visible before that. Method: every fsync fails.
    #[test]
    fn a_failed_fsync_poisons_the_log() {
        let faults = Faults {
            seed: 7,
            sync_failures_ppm: 1_000_000,
            ..Faults::default()
        };
        let (storage, log) = storage_with_log(faults);
        assert!(log.append(1, &[b"a"], true).is_err());
        assert_eq!(log.next_offset(), 0, "not visible");
        assert!(matches!(
            log.append(1, &[b"b"], false),
            Err(StorageError::Poisoned { .. })
        ));
        let log = storage.crash().open_partition("t", 0).expect("reopen");
        assert!(log.next_offset() <= 1);
        log.append(1, &[b"c"], false)
            .expect("writable after a restart");
    }
}
