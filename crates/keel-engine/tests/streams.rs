//! Event-sourced streams on the engine, in-process on the in-memory storage: the key index is
//! rebuilt after a crash and picked up after a graceful stop, a key's stream is read without
//! scanning the log, and retention leaves versions counted but records out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keel_api::alerts::AlertRule;
use keel_engine::error::StreamError;
use keel_engine::storage::{
    Area, DataDirDamage, Faults, MemoryStorage, Record, RecordLog, StateLogs, StateTable, Storage,
    StorageError, StoredAlertRule, StoredSubscription, StoredTopic, SubscriptionLogs, Trimmed,
};
use keel_engine::subscription::spec::SubscriptionSpec;
use keel_engine::{Engine, EngineConfig, EngineError, Event, Retention, TopicConfig};
use serde_json::json;
use tokio::sync::watch;

const TOPIC: &str = "accounts";

fn event(id: &str, key: Option<&str>) -> Event {
    let mut value =
        json!({"specversion": "1.0", "id": id, "source": "test", "type": "t", "data": {"id": id}});
    if let Some(key) = key {
        value["partitionkey"] = json!(key);
    }
    keel_engine::event::from_value(value).unwrap()
}

async fn open(storage: Arc<dyn Storage>, config: EngineConfig) -> Engine {
    Engine::open_with_storage(config, storage).await.unwrap()
}

fn config() -> EngineConfig {
    EngineConfig::new("/unused")
}

async fn create(engine: &Engine, topic: TopicConfig) {
    engine.create_topic(TOPIC, topic).await.unwrap();
}

/// The ids of a key's stream, read whole, checking that versions run 1..=version.
async fn stream_ids(engine: &Engine, key: &str) -> Vec<String> {
    let stream = engine.key_stream(TOPIC, key, 1, 1000).await.unwrap();
    let versions: Vec<u64> = stream.records.iter().map(|r| r.version).collect();
    assert_eq!(versions, (1..=stream.version).collect::<Vec<_>>(), "{key}");
    stream
        .records
        .iter()
        .map(|r| {
            let event: serde_json::Value = serde_json::from_slice(&r.record.payload).unwrap();
            event["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Appends `count` events to each key with conditional appends (every third a batch of two),
/// among keyless events; returns the ids appended per key.
async fn append_round(engine: &Engine, keys: &[&str], round: usize, count: usize) {
    for key in keys {
        let mut version = engine.key_stream(TOPIC, key, 1, 1).await.unwrap().version;
        for n in 0..count {
            let id = format!("{key}-{round}-{n}");
            let events = if n % 3 == 0 {
                vec![event(&id, Some(key)), event(&format!("{id}b"), Some(key))]
            } else {
                vec![event(&id, Some(key))]
            };
            let added = events.len() as u64;
            let appended = engine
                .append_expecting(TOPIC, events, version)
                .await
                .unwrap();
            version += added;
            assert_eq!(appended.version, Some(version));
            let noise = event(&format!("noise-{key}-{round}-{n}"), None);
            engine.publish(TOPIC, vec![noise]).await.unwrap();
        }
    }
}

// Goal: the key index survives a graceful stop (its final snapshot) and is rebuilt from the
// log after a crash that loses every table write since: each key's stream is complete, in
// order, with versions 1..N, and appends continue at N + 1. Invariant: the index holds
// exactly the log's keyed records, each once, whether the follower read a record's key from
// the log (records written before the restart) or was handed it by the writer (records of
// this run), also when one catch-up does both. Method: appends, a graceful restart, more
// appends, a simulated power loss (`MemoryStorage::crash`), reopen, publish to every key
// before anything waits for the index (so the follower reads the lost part from the log and
// then takes the handed keys), compare.
#[tokio::test]
async fn key_index_survives_a_restart_and_is_rebuilt_after_a_crash() {
    let storage = MemoryStorage::new(Faults {
        seed: 7,
        ..Faults::default()
    });
    let keys = ["alice", "bob", "carol"];
    let engine = open(Arc::new(storage.clone()), config()).await;
    let topic = TopicConfig {
        partitions: 2,
        ..TopicConfig::default()
    };
    create(&engine, topic).await;
    append_round(&engine, &keys, 0, 6).await;
    let before: Vec<Vec<String>> = all_ids(&engine, &keys).await;
    engine.shut_down().await;
    drop(engine);

    let engine = open(Arc::new(storage.clone()), config()).await;
    assert_eq!(
        all_ids(&engine, &keys).await,
        before,
        "after a graceful restart"
    );
    append_round(&engine, &keys, 1, 5).await;
    let before_crash = all_ids(&engine, &keys).await;
    assert_eq!(
        before_crash[0].len(),
        8 + 7,
        "6 then 5 appends, every third a pair"
    );

    let restarted = storage.crash();
    drop(engine);
    let engine = open(Arc::new(restarted), config()).await;
    let mut after_crash = before_crash;
    for (key, ids) in keys.iter().zip(&mut after_crash) {
        let id = format!("{key}-after-crash");
        engine
            .publish(TOPIC, vec![event(&id, Some(key))])
            .await
            .unwrap();
        ids.push(id);
    }
    assert_eq!(all_ids(&engine, &keys).await, after_crash, "after a crash");
    let stale = engine
        .append_expecting(TOPIC, vec![event("late", Some("alice"))], 15)
        .await;
    assert!(
        matches!(
            stale,
            Err(EngineError::Stream(StreamError::VersionMismatch {
                current: 16,
                ..
            }))
        ),
        "{stale:?}"
    );
    let next = engine
        .append_expecting(TOPIC, vec![event("late", Some("alice"))], 16)
        .await
        .unwrap();
    assert_eq!(next.version, Some(17));
}

async fn all_ids(engine: &Engine, keys: &[&str]) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for key in keys {
        all.push(stream_ids(engine, key).await);
    }
    all
}

// Goal: reading a key's stream reads the log only at that key's records, however many other
// events the partition holds: the index answers, not a scan. Method: a storage that counts
// the records every partition read returns; 100 events of one key among 50,000 others on one
// partition; after the index has caught up, one read of the key's stream returns 100 records
// and the log returned exactly those 100.
#[tokio::test]
async fn a_key_stream_read_reads_only_the_keys_records() {
    let counting = Arc::new(CountingStorage {
        inner: MemoryStorage::new(Faults::default()),
        records_read: Arc::new(AtomicU64::new(0)),
    });
    let engine = open(counting.clone(), config()).await;
    let topic = TopicConfig {
        partitions: 1,
        ..TopicConfig::default()
    };
    create(&engine, topic).await;
    for batch in 0..100 {
        let mut events: Vec<Event> = (0..500)
            .map(|n| {
                let id = format!("other-{batch}-{n}");
                event(&id, Some(&format!("other-{}", n % 50)))
            })
            .collect();
        events.insert(250, event(&format!("mine-{batch}"), Some("mine")));
        engine.publish(TOPIC, events).await.unwrap();
    }
    // The first read waits for the index to catch up (the indexer reads the whole log).
    let caught_up = engine.key_stream(TOPIC, "mine", 1, 1).await.unwrap();
    assert_eq!(caught_up.version, 100);
    counting.records_read.store(0, Ordering::SeqCst);
    let started = Instant::now();
    let stream = engine.key_stream(TOPIC, "mine", 1, 1000).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(stream.records.len(), 100);
    assert_eq!(stream.next_version, 101);
    assert_eq!(
        counting.records_read.load(Ordering::SeqCst),
        100,
        "only the key's records were read from the log"
    );
    let offsets: Vec<u64> = stream.records.iter().map(|r| r.record.offset).collect();
    let expected: Vec<u64> = (0..100).map(|batch| batch * 501 + 250).collect();
    assert_eq!(offsets, expected);
    eprintln!("read 100 events of a key among 50,100 in {elapsed:?}");
}

// Goal: retention removing a key's oldest events leaves its version counted and its stream
// without them: the records kept are the newest, with their own versions, and paging from
// version 1 moves past the removed ones. Method: a 1-partition topic with a byte bound that
// keeps a few events, retention every 20 ms on the in-memory storage (which trims record by
// record).
#[tokio::test]
async fn retention_leaves_versions_counted_and_removed_records_out() {
    let mut engine_config = config();
    engine_config.retention_check_interval = Duration::from_millis(20);
    let engine = open(
        Arc::new(MemoryStorage::new(Faults::default())),
        engine_config,
    )
    .await;
    let one = event("probe", Some("k"));
    let event_bytes = one.json().len() as u64;
    let topic = TopicConfig {
        partitions: 1,
        retention: Retention {
            max_age: None,
            max_bytes: Some(event_bytes * 3),
        },
        ..TopicConfig::default()
    };
    create(&engine, topic).await;
    for n in 0..10 {
        let appended = engine
            .append_expecting(TOPIC, vec![event(&format!("e{n}"), Some("k"))], n)
            .await
            .unwrap();
        assert_eq!(appended.version, Some(n + 1));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.describe_topic(TOPIC).unwrap().partitions[0].start_offset < 5 {
        assert!(Instant::now() < deadline, "retention did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start_offset = engine.describe_topic(TOPIC).unwrap().partitions[0].start_offset;
    let stream = engine.key_stream(TOPIC, "k", 1, 100).await.unwrap();
    assert_eq!(stream.version, 10, "versions stay counted");
    let versions: Vec<u64> = stream.records.iter().map(|r| r.version).collect();
    assert_eq!(versions, (start_offset + 1..=10).collect::<Vec<_>>());
    assert_eq!(stream.next_version, 11);
    let page = engine.key_stream(TOPIC, "k", 1, 2).await.unwrap();
    assert_eq!(
        page.records.first().map(|r| r.version),
        Some(start_offset + 1),
        "a page from version 1 starts at the first version kept"
    );
    // Retention keeps counting: a conditional append still expects the full count.
    let appended = engine
        .append_expecting(TOPIC, vec![event("e10", Some("k"))], 10)
        .await
        .unwrap();
    assert_eq!(appended.version, Some(11));
}

/// A storage that counts the records partition reads return.
struct CountingStorage {
    inner: MemoryStorage,
    records_read: Arc<AtomicU64>,
}

struct CountingLog {
    inner: Arc<dyn RecordLog>,
    records_read: Arc<AtomicU64>,
}

impl Storage for CountingStorage {
    fn damage(&self) -> Vec<DataDirDamage> {
        self.inner.damage()
    }
    fn check_usable(&self, area: Area) -> Result<(), EngineError> {
        self.inner.check_usable(area)
    }
    fn topics(&self) -> Result<Vec<StoredTopic>, EngineError> {
        self.inner.topics()
    }
    fn create_topic(&self, name: &str, config: &TopicConfig) -> Result<(), EngineError> {
        self.inner.create_topic(name, config)
    }
    fn delete_topic(&self, name: &str) -> Result<(), EngineError> {
        self.inner.delete_topic(name)
    }
    fn open_key_index(&self, topic: &str) -> Result<Box<dyn StateTable>, EngineError> {
        self.inner.open_key_index(topic)
    }
    fn open_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<dyn RecordLog>, StorageError> {
        Ok(Arc::new(CountingLog {
            inner: self.inner.open_partition(topic, partition)?,
            records_read: self.records_read.clone(),
        }))
    }
    fn subscriptions(&self) -> Result<Vec<StoredSubscription>, EngineError> {
        self.inner.subscriptions()
    }
    fn create_subscription(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
        checkpoint: &[u8],
    ) -> Result<(), EngineError> {
        self.inner.create_subscription(name, spec, checkpoint)
    }
    fn replace_subscription_spec(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
    ) -> Result<(), EngineError> {
        self.inner.replace_subscription_spec(name, spec)
    }
    fn open_subscription(&self, name: &str) -> Result<SubscriptionLogs, EngineError> {
        self.inner.open_subscription(name)
    }
    fn open_state(&self, name: &str) -> Result<StateLogs, EngineError> {
        self.inner.open_state(name)
    }
    fn delete_subscription(&self, name: &str) -> Result<(), EngineError> {
        self.inner.delete_subscription(name)
    }
    fn alert_rules(&self) -> Result<Vec<StoredAlertRule>, EngineError> {
        self.inner.alert_rules()
    }
    fn put_alert_rule(&self, name: &str, rule: &AlertRule) -> Result<(), EngineError> {
        self.inner.put_alert_rule(name, rule)
    }
    fn delete_alert_rule(&self, name: &str) -> Result<(), EngineError> {
        self.inner.delete_alert_rule(name)
    }
    fn tokens(&self) -> Result<Vec<keel_engine::tokens::TokenRecord>, EngineError> {
        self.inner.tokens()
    }
    fn put_token(&self, token: &keel_engine::tokens::TokenRecord) -> Result<(), EngineError> {
        self.inner.put_token(token)
    }
    fn delete_token(&self, id: &str) -> Result<(), EngineError> {
        self.inner.delete_token(id)
    }
    fn free_bytes(&self) -> Result<Option<u64>, StorageError> {
        self.inner.free_bytes()
    }
    fn stored_bytes(&self) -> Result<u64, StorageError> {
        self.inner.stored_bytes()
    }
}

impl RecordLog for CountingLog {
    fn append(
        &self,
        timestamp_ms: i64,
        payloads: &[&[u8]],
        sync: bool,
    ) -> Result<u64, StorageError> {
        self.inner.append(timestamp_ms, payloads, sync)
    }
    fn sync(&self) -> Result<(), StorageError> {
        self.inner.sync()
    }
    fn read(
        &self,
        from: u64,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Record>, StorageError> {
        let records = self.inner.read(from, records_max, bytes_max)?;
        self.records_read
            .fetch_add(records.len() as u64, Ordering::SeqCst);
        Ok(records)
    }
    fn start_offset(&self) -> u64 {
        self.inner.start_offset()
    }
    fn next_offset(&self) -> u64 {
        self.inner.next_offset()
    }
    fn watch_next_offset(&self) -> watch::Receiver<u64> {
        self.inner.watch_next_offset()
    }
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn truncated_at_open_bytes(&self) -> u64 {
        self.inner.truncated_at_open_bytes()
    }
    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<u64, StorageError> {
        self.inner.offset_for_timestamp(timestamp_ms)
    }
    fn apply_retention(
        &self,
        now_ms: i64,
        age_ms_max: Option<u64>,
        bytes_max: Option<u64>,
    ) -> Result<Trimmed, StorageError> {
        self.inner.apply_retention(now_ms, age_ms_max, bytes_max)
    }
    fn remove_before(&self, offset: u64) -> Result<Trimmed, StorageError> {
        self.inner.remove_before(offset)
    }
    fn rewrite(&mut self, _timestamp_ms: i64, _payloads: &[&[u8]]) -> Result<(), StorageError> {
        unreachable!("partitions are never rewritten")
    }
}
