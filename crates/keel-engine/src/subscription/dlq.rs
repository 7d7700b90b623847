//! A subscription's dead-letter queue: a log of operations — an entry dead-lettered, entries
//! redriven, entries removed — replayed at open into an index of the live entries.
//!
//! An entry's id is `{partition}-{offset}` of the event it holds, so dead-lettering the same
//! event twice (after a crash between the dead-letter write and the checkpoint, or after a
//! redrive fails again) replaces the entry instead of adding a second one.
//!
//! Every operation is fsynced before the caller acts on it: an event counts as done only once
//! its entry is durable.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::state::AttemptRecord;
use crate::clock::now_ms;
use crate::error::{DataError, EngineError, SubscriptionError};
use crate::limits::{DLQ_LIST_BYTES_MAX, DLQ_WRITE_BYTES_MAX};
use crate::storage::{RecordLog, StorageError};
/// A dead-letter log is rewritten with only its live entries once it holds at least this many
/// records, and at least four times as many as there are live entries: purges and removals
/// only append, so without it the log would grow with everything ever dead-lettered.
const COMPACT_RECORDS_MIN: u64 = 10_000;

/// A dead-lettered event and why it failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetterEntry {
    /// `{partition}-{offset}` of the event in its topic.
    pub id: String,
    /// The partition the event was read from.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// The event, as stored.
    pub event: Box<RawValue>,
    /// Attempts made.
    pub attempts: u32,
    /// The sink's status on the last attempt, when it answered.
    pub last_status: Option<u16>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// When the first attempt ended (milliseconds since the epoch).
    pub first_attempt_ms: i64,
    /// When the last attempt ended.
    pub last_attempt_ms: i64,
    /// When it was dead-lettered.
    pub dead_lettered_ms: i64,
    /// Every attempt, oldest first.
    pub history: Vec<AttemptRecord>,
    /// For a stateful subscription: the state's rebuild generation when the event was
    /// dead-lettered. A rebuild replays the events of older entries, so it removes them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl DeadLetterEntry {
    /// Builds the entry of an event and its attempts, dead-lettered in rebuild `generation`.
    pub(crate) fn new(
        origin: (u32, u64),
        event_json: &str,
        history: Vec<AttemptRecord>,
        generation: u64,
    ) -> Self {
        let event = RawValue::from_string(event_json.to_owned()).expect("stored events are JSON");
        let last = history.last();
        DeadLetterEntry {
            id: entry_id(origin),
            partition: origin.0,
            offset: origin.1,
            event,
            attempts: u32::try_from(history.len()).unwrap_or(u32::MAX),
            last_status: last.and_then(|attempt| attempt.status),
            last_error: last.and_then(|attempt| attempt.error.clone()),
            first_attempt_ms: history.first().map_or(0, |attempt| attempt.at_ms),
            last_attempt_ms: last.map_or(0, |attempt| attempt.at_ms),
            dead_lettered_ms: now_ms(),
            history,
            generation,
        }
    }
}

/// The id of the entry for an event at (partition, offset).
pub(crate) fn entry_id((partition, offset): (u32, u64)) -> String {
    format!("{partition}-{offset}")
}

/// One operation of the queue's log.
#[derive(Debug)]
enum Operation {
    Dead { entry: Box<DeadLetterEntry> },
    Redrive { ids: Vec<String> },
    Remove { ids: Vec<String> },
}

/// An operation as stored: `{"format": 1, "dead": {"entry": …}}`, `{"format": 1, "redrive":
/// {"ids": […]}}` or `{"format": 1, "remove": {"ids": […]}}`, exactly one of the three
/// (records from before formats were recorded lack `format`).
#[derive(Debug, Deserialize)]
struct StoredOperation {
    #[serde(default = "crate::format::unrecorded")]
    format: u64,
    #[serde(default)]
    dead: Option<DeadBody>,
    #[serde(default)]
    redrive: Option<Ids>,
    #[serde(default)]
    remove: Option<Ids>,
}

#[derive(Debug, Deserialize)]
struct DeadBody {
    entry: Box<DeadLetterEntry>,
}

#[derive(Debug, Deserialize)]
struct Ids {
    ids: Vec<String>,
}

/// Writes an operation in the stored layout of [`StoredOperation`].
impl Serialize for Operation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        #[derive(Serialize)]
        struct Entry<'a> {
            entry: &'a DeadLetterEntry,
        }
        #[derive(Serialize)]
        struct IdList<'a> {
            ids: &'a [String],
        }
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("format", &crate::format::FORMAT)?;
        match self {
            Operation::Dead { entry } => map.serialize_entry("dead", &Entry { entry })?,
            Operation::Redrive { ids } => map.serialize_entry("redrive", &IdList { ids })?,
            Operation::Remove { ids } => map.serialize_entry("remove", &IdList { ids })?,
        }
        map.end()
    }
}

impl Operation {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an operation serialises")
    }

    fn decode(payload: &[u8]) -> Result<Operation, String> {
        let stored: StoredOperation =
            serde_json::from_slice(payload).map_err(|error| error.to_string())?;
        crate::format::check(stored.format)?;
        match (stored.dead, stored.redrive, stored.remove) {
            (Some(DeadBody { entry }), None, None) => Ok(Operation::Dead { entry }),
            (None, Some(Ids { ids }), None) => Ok(Operation::Redrive { ids }),
            (None, None, Some(Ids { ids })) => Ok(Operation::Remove { ids }),
            _ => Err("not exactly one of dead, redrive and remove".to_owned()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Live {
    /// Where the entry's `dead` record is in the log.
    position: u64,
    redriving: bool,
    /// The entry's rebuild generation.
    generation: u64,
}

/// A dead-letter queue. Blocking; the caller serialises access.
pub(crate) struct DeadLetterQueue {
    log: Box<dyn RecordLog>,
    compact_records_min: u64,
    live: HashMap<String, Live>,
    /// Live entries by position, for listing in dead-letter order.
    by_position: BTreeMap<u64, String>,
    /// Redriven entries not yet handed to the subscription.
    redrive_queue: VecDeque<String>,
}

impl DeadLetterQueue {
    /// Takes a subscription's dead-letter log and rebuilds the queue's index from it.
    pub(crate) fn open(log: Box<dyn RecordLog>) -> Result<Self, EngineError> {
        Self::open_with(log, COMPACT_RECORDS_MIN)
    }

    fn open_with(log: Box<dyn RecordLog>, compact_records_min: u64) -> Result<Self, EngineError> {
        let mut queue = DeadLetterQueue {
            log,
            compact_records_min,
            live: HashMap::new(),
            by_position: BTreeMap::new(),
            redrive_queue: VecDeque::new(),
        };
        queue.replay()?;
        let redriving: Vec<String> = queue
            .by_position
            .values()
            .filter(|id| queue.live.get(*id).is_some_and(|live| live.redriving))
            .cloned()
            .collect();
        queue.redrive_queue = redriving.into();
        Ok(queue)
    }

    /// Rewrites the log with only the live entries (in dead-letter order) and their redrive
    /// marks when it has grown well past them. The rewrite is atomic: after a crash the log
    /// holds either every old record or exactly the live ones.
    fn compact_if_due(&mut self) -> Result<(), EngineError> {
        let records = self.log.next_offset() - self.log.start_offset();
        if records < self.compact_records_min || records < 4 * self.live.len() as u64 {
            return Ok(());
        }
        let mut payloads = Vec::with_capacity(self.live.len() + 1);
        let mut redriving = Vec::new();
        for (position, id) in &self.by_position {
            let entry = self.read_entry(*position)?;
            if self.live.get(id).is_some_and(|live| live.redriving) {
                redriving.push(id.clone());
            }
            payloads.push(
                Operation::Dead {
                    entry: Box::new(entry),
                }
                .encode(),
            );
        }
        if !redriving.is_empty() {
            payloads.push(Operation::Redrive { ids: redriving }.encode());
        }
        let slices: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        self.log
            .rewrite(now_ms(), &slices)
            .map_err(storage_error("compact"))?;
        // Entries handed to the subscription already must not be handed over again.
        let handed_over = std::mem::take(&mut self.redrive_queue);
        self.live.clear();
        self.by_position.clear();
        self.replay()?;
        self.redrive_queue = handed_over;
        tracing::info!(
            records,
            live = self.live.len(),
            "compacted a dead-letter log"
        );
        Ok(())
    }

    fn replay(&mut self) -> Result<(), EngineError> {
        let mut from = self.log.start_offset();
        while from < self.log.next_offset() {
            let records = self
                .log
                .read(from, 1000, 8 * 1024 * 1024)
                .map_err(storage_error("read"))?;
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            for record in records {
                let operation = Operation::decode(&record.payload).map_err(|error| {
                    EngineError::Data(DataError::Corrupt {
                        detail: format!(
                            "dead-letter record {} cannot be read: {error}",
                            record.offset
                        ),
                    })
                })?;
                self.apply(record.offset, operation);
            }
        }
        Ok(())
    }

    fn apply(&mut self, position: u64, operation: Operation) {
        match operation {
            Operation::Dead { entry } => {
                let live = Live {
                    position,
                    redriving: false,
                    generation: entry.generation,
                };
                if let Some(old) = self.live.insert(entry.id.clone(), live) {
                    self.by_position.remove(&old.position);
                }
                self.by_position.insert(position, entry.id);
            }
            Operation::Redrive { ids } => {
                for id in ids {
                    if let Some(live) = self.live.get_mut(&id) {
                        live.redriving = true;
                    }
                }
            }
            Operation::Remove { ids } => {
                for id in ids {
                    if let Some(live) = self.live.remove(&id) {
                        self.by_position.remove(&live.position);
                    }
                }
            }
        }
    }

    /// Writes operations, each durable before anyone acts on it: an event leaves the
    /// subscription only once its dead-letter entry survives a crash. Large batches go in
    /// appends of about [`DLQ_WRITE_BYTES_MAX`] each. If one fails after others were written,
    /// the call fails and its events stay undone: after a restart they are delivered again and
    /// dead-lettered again, replacing the entries already written (an entry's id is its
    /// event's place).
    fn write(&mut self, operations: Vec<Operation>) -> Result<(), EngineError> {
        let payloads: Vec<Vec<u8>> = operations.iter().map(Operation::encode).collect();
        let mut positions = Vec::with_capacity(payloads.len());
        for chunk in chunks(&payloads, DLQ_WRITE_BYTES_MAX) {
            let first = self
                .log
                .append(now_ms(), &chunk, true)
                .map_err(storage_error("append"))?;
            positions.extend((first..).take(chunk.len()));
        }
        for (position, operation) in positions.into_iter().zip(operations) {
            self.apply(position, operation);
        }
        Ok(())
    }

    /// Adds entries (durably).
    pub(crate) fn add(&mut self, entries: Vec<DeadLetterEntry>) -> Result<(), EngineError> {
        let operations = entries
            .into_iter()
            .map(|entry| Operation::Dead {
                entry: Box::new(entry),
            })
            .collect();
        self.write(operations)
    }

    /// Removes redriven entries whose redelivery was acknowledged. An entry dead-lettered
    /// again since (after a seek back, say) is not being redriven: it stays.
    pub(crate) fn remove_redriven(&mut self, ids: Vec<String>) -> Result<(), EngineError> {
        let ids = ids
            .into_iter()
            .filter(|id| self.live.get(id).is_some_and(|live| live.redriving))
            .collect();
        self.remove(ids)
    }

    /// Removes entries, then compacts the log if it is due.
    pub(crate) fn remove(&mut self, ids: Vec<String>) -> Result<(), EngineError> {
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| self.live.contains_key(id))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        self.write(vec![Operation::Remove { ids }])?;
        if let Err(error) = self.compact_if_due() {
            // The old log stays in use and complete; compaction is tried again next time.
            tracing::warn!(%error, "could not compact a dead-letter log");
        }
        Ok(())
    }

    /// Marks entries for redrive (all when `ids` is none) and queues them for the
    /// subscription; returns how many. Unknown ids are an error naming the first.
    pub(crate) fn redrive(
        &mut self,
        subscription: &str,
        ids: Option<Vec<String>>,
    ) -> Result<usize, EngineError> {
        let ids = match ids {
            Some(ids) => {
                if let Some(unknown) = ids.iter().find(|id| !self.live.contains_key(*id)) {
                    return Err(EngineError::Subscription(
                        SubscriptionError::DeadLetterNotFound {
                            name: subscription.to_owned(),
                            id: unknown.clone(),
                        },
                    ));
                }
                ids
            }
            None => self.by_position.values().cloned().collect(),
        };
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| self.live.get(id).is_some_and(|live| !live.redriving))
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let count = ids.len();
        self.write(vec![Operation::Redrive { ids: ids.clone() }])?;
        self.redrive_queue.extend(ids);
        Ok(count)
    }

    /// The entries a purge removes: every entry not being redriven, in dead-letter order.
    pub(crate) fn purgeable(&self) -> Result<Vec<DeadLetterEntry>, EngineError> {
        self.by_position
            .iter()
            .filter(|(_, id)| self.live.get(*id).is_some_and(|live| !live.redriving))
            .map(|(position, _)| self.read_entry(*position))
            .collect()
    }

    /// Removes those of `ids` not being redriven; returns how many.
    pub(crate) fn purge(&mut self, ids: Vec<String>) -> Result<usize, EngineError> {
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| self.live.get(id).is_some_and(|live| !live.redriving))
            .collect();
        let count = ids.len();
        self.remove(ids)?;
        Ok(count)
    }

    /// Every entry dead-lettered before rebuild `generation`, in dead-letter order.
    pub(crate) fn older_than(&self, generation: u64) -> Result<Vec<DeadLetterEntry>, EngineError> {
        self.by_position
            .iter()
            .filter(|(_, id)| {
                self.live
                    .get(*id)
                    .is_some_and(|live| live.generation < generation)
            })
            .map(|(position, _)| self.read_entry(*position))
            .collect()
    }

    /// Takes up to `max` redriven entries to hand to the subscription, skipping those
    /// dead-lettered before rebuild `generation` (a rebuild replays their events).
    pub(crate) fn take_redriven(
        &mut self,
        max: usize,
        generation: u64,
    ) -> Result<Vec<DeadLetterEntry>, EngineError> {
        let mut entries = Vec::new();
        while entries.len() < max {
            let Some(id) = self.redrive_queue.pop_front() else {
                break;
            };
            if let Some(entry) = self.get(&id)?
                && entry.generation >= generation
            {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// Whether redriven entries wait to be handed over.
    pub(crate) fn has_redriven(&self) -> bool {
        !self.redrive_queue.is_empty()
    }

    /// Whether an entry dead-lettered in rebuild `generation` or later is live.
    pub(crate) fn contains(&self, id: &str, generation: u64) -> bool {
        self.live
            .get(id)
            .is_some_and(|live| live.generation >= generation)
    }

    /// Live entries.
    pub(crate) fn depth(&self) -> usize {
        self.live.len()
    }

    /// One entry.
    pub(crate) fn get(&self, id: &str) -> Result<Option<DeadLetterEntry>, EngineError> {
        let Some(live) = self.live.get(id) else {
            return Ok(None);
        };
        self.read_entry(live.position).map(Some)
    }

    /// Up to `max` entries in dead-letter order, after the entry `after` (an id) when given,
    /// and whether more follow. A page stops early once its events reach
    /// [`DLQ_LIST_BYTES_MAX`] (it always holds at least one entry).
    pub(crate) fn list(
        &self,
        after: Option<&str>,
        max: usize,
    ) -> Result<(Vec<DeadLetterEntry>, bool), EngineError> {
        let from = match after {
            Some(id) => match self.live.get(id) {
                Some(live) => live.position + 1,
                None => return Ok((Vec::new(), false)),
            },
            None => 0,
        };
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut positions = self.by_position.range(from..).peekable();
        while let Some((position, _)) = positions.peek() {
            if entries.len() >= max || (bytes >= DLQ_LIST_BYTES_MAX && !entries.is_empty()) {
                break;
            }
            let entry = self.read_entry(**position)?;
            bytes += entry.event.get().len();
            entries.push(entry);
            positions.next();
        }
        Ok((entries, positions.peek().is_some()))
    }

    fn read_entry(&self, position: u64) -> Result<DeadLetterEntry, EngineError> {
        let records = self
            .log
            .read(position, 1, usize::MAX)
            .map_err(storage_error("read"))?;
        let bad = |detail: String| {
            EngineError::Data(DataError::Corrupt {
                detail: format!("dead-letter record {position}: {detail}"),
            })
        };
        let record = records
            .into_iter()
            .next()
            .ok_or_else(|| bad("missing".to_owned()))?;
        match Operation::decode(&record.payload).map_err(bad)? {
            Operation::Dead { entry } => Ok(*entry),
            _ => Err(bad("not an entry".to_owned())),
        }
    }
}

/// Splits payloads into runs of about `bytes_max` bytes (at least one payload each).
fn chunks(payloads: &[Vec<u8>], bytes_max: usize) -> Vec<Vec<&[u8]>> {
    let mut chunks: Vec<Vec<&[u8]>> = Vec::new();
    let mut bytes = 0;
    for payload in payloads {
        match chunks.last_mut() {
            Some(chunk) if bytes + payload.len() <= bytes_max => chunk.push(payload),
            _ => {
                chunks.push(vec![payload]);
                bytes = 0;
            }
        }
        bytes += payload.len();
    }
    chunks
}

fn storage_error(op: &str) -> impl FnOnce(StorageError) -> EngineError {
    let context = format!("{op} dead letters");
    move |source| EngineError::Data(DataError::Storage { context, source })
}

/// A dead-letter log on disk in `dir`, for tests.
#[cfg(test)]
fn test_log(dir: &std::path::Path) -> Box<dyn RecordLog> {
    crate::storage::disk_log_for_tests(dir, 16 * 1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, status: u16) -> DeadLetterEntry {
        let history = vec![AttemptRecord {
            at_ms: 5,
            status: Some(status),
            error: Some(format!("{status}")),
            failover: false,
        }];
        DeadLetterEntry::new((1, offset), r#"{"id":"x"}"#, history, 0)
    }

    /// Purges every entry a purge may remove; returns how many.
    pub(super) fn purge_all(queue: &mut DeadLetterQueue) -> usize {
        let ids = queue
            .purgeable()
            .expect("purgeable")
            .into_iter()
            .map(|entry| entry.id)
            .collect();
        queue.purge(ids).expect("purge")
    }

    // Goal: an event of the largest size any configuration allows can be dead-lettered with
    // its attempts: the entry is one record of the log, within its record bound.
    #[test]
    fn an_event_at_the_size_ceiling_can_be_dead_lettered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut queue = DeadLetterQueue::open(test_log(dir.path())).expect("open");
        let data = "x".repeat(crate::limits::EVENT_BYTES_CEILING - 64);
        let json = format!(r#"{{"id":"big","data":"{data}"}}"#);
        let history = (0..10)
            .map(|at_ms| AttemptRecord {
                at_ms,
                status: Some(500),
                error: Some("e".repeat(200)),
                failover: false,
            })
            .collect();
        queue
            .add(vec![DeadLetterEntry::new((0, 1), &json, history, 0)])
            .expect("dead-letter the largest event");
        let entry = queue.get("0-1").expect("read").expect("stored");
        assert_eq!(entry.event.get().len(), json.len());
    }

    // Goal: large batches are written in runs of about the limit, every payload once and in
    // order, even one larger than the limit alone.
    #[test]
    fn chunks_keep_every_payload_in_order() {
        let payloads: Vec<Vec<u8>> = [3, 3, 5, 9, 1, 1].iter().map(|&n| vec![0u8; n]).collect();
        let sizes: Vec<Vec<usize>> = chunks(&payloads, 6)
            .iter()
            .map(|chunk| chunk.iter().map(|payload| payload.len()).collect())
            .collect();
        assert_eq!(sizes, [vec![3, 3], vec![5], vec![9], vec![1, 1]]);
        assert!(chunks(&[], 6).is_empty());
    }

    // Goal: operations are stored with their format; records from before formats (none
    // recorded) still read; a format this keel does not know, or a record that is not one
    // operation, is refused with the reason. Method: encode, and hand-made records.
    #[test]
    fn operation_records_carry_their_format() {
        let encoded = Operation::Dead {
            entry: Box::new(entry(1, 500)),
        }
        .encode();
        let text = String::from_utf8(encoded.clone()).expect("text");
        assert!(
            text.starts_with(r#"{"format":1,"dead":{"entry":{"id":"1-1""#),
            "{text}"
        );
        assert!(matches!(
            Operation::decode(&encoded),
            Ok(Operation::Dead { entry }) if entry.id == "1-1"
        ));
        let old = br#"{"remove":{"ids":["1-1"]}}"#;
        assert!(matches!(Operation::decode(old), Ok(Operation::Remove { ids }) if ids == ["1-1"]));
        let newer = br#"{"format":2,"remove":{"ids":[]}}"#;
        let error = Operation::decode(newer).expect_err("unknown format");
        assert!(error.contains("format 2"), "{error}");
        let two = br#"{"remove":{"ids":[]},"redrive":{"ids":[]}}"#;
        assert!(Operation::decode(two).is_err());
    }

    // Goal: entries, redrives and removals survive reopening; dead-lettering an event again
    // replaces its entry (and an older redriven copy's ack does not remove the new one);
    // redriven entries are handed over again after a restart.
    #[test]
    fn operations_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut queue = DeadLetterQueue::open(test_log(dir.path())).expect("open");
        queue
            .add(vec![entry(1, 400), entry(2, 500), entry(3, 503)])
            .expect("add");
        queue.add(vec![entry(2, 502)]).expect("again");
        assert_eq!(queue.depth(), 3);
        let (page, more) = queue.list(None, 2).expect("list");
        assert!(more, "a third entry follows a page of two");
        let (rest, more) = queue.list(Some(&page[1].id), 10).expect("list");
        assert!(!more);
        let ids: Vec<String> = page.into_iter().chain(rest).map(|e| e.id).collect();
        assert_eq!(
            ids,
            ["1-1", "1-3", "1-2"],
            "in dead-letter order; the replaced one last"
        );
        assert_eq!(
            queue
                .redrive("s", Some(vec!["1-3".into()]))
                .expect("redrive"),
            1
        );
        let missing = queue.redrive("s", Some(vec!["9-9".into()]));
        assert!(matches!(
            missing,
            Err(EngineError::Subscription(
                SubscriptionError::DeadLetterNotFound { .. }
            ))
        ));
        // 1-1 is redriven, then dead-lettered again: acknowledging the redriven copy must
        // not remove the newer entry.
        assert_eq!(
            queue
                .redrive("s", Some(vec!["1-1".into()]))
                .expect("redrive"),
            1
        );
        queue.add(vec![entry(1, 404)]).expect("dead again");
        queue.remove_redriven(vec!["1-1".into()]).expect("remove");
        assert_eq!(
            queue.get("1-1").expect("get").map(|e| e.last_status),
            Some(Some(404))
        );
        drop(queue);

        let mut queue = DeadLetterQueue::open(test_log(dir.path())).expect("reopen");
        assert_eq!(queue.depth(), 3);
        assert_eq!(
            queue.get("1-2").expect("get").map(|e| e.last_status),
            Some(Some(502))
        );
        let redriven = queue.take_redriven(10, 0).expect("take");
        assert_eq!(
            redriven.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["1-3"]
        );
        assert_eq!(purge_all(&mut queue), 2, "the redriving entry stays");
        assert_eq!(queue.depth(), 1);
        let (page, more) = queue.list(Some("1-3"), 10).expect("after");
        assert!(page.is_empty() && !more);
        queue.remove_redriven(vec!["1-3".into()]).expect("remove");
        assert_eq!(queue.depth(), 0);
    }
}

#[cfg(test)]
mod compaction_tests {
    use super::tests::purge_all;
    use super::*;

    fn entry(offset: u64) -> DeadLetterEntry {
        let history = vec![AttemptRecord {
            at_ms: 5,
            status: Some(500),
            error: Some("500".to_owned()),
            failover: false,
        }];
        DeadLetterEntry::new((0, offset), r#"{"id":"x"}"#, history, 0)
    }

    fn ids(queue: &DeadLetterQueue) -> Vec<String> {
        let (entries, _) = queue.list(None, 1000).expect("list");
        entries.into_iter().map(|entry| entry.id).collect()
    }

    // Goal: once removals pile up, the log is rewritten with only the live entries, in the
    // same order, keeping which are being redriven; the record count drops, and the result
    // survives reopening. Method: a low threshold, many add/purge rounds.
    #[test]
    fn purges_compact_the_log_keeping_live_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dlq");
        std::fs::create_dir(&path).expect("create");
        let mut queue = DeadLetterQueue::open_with(test_log(&path), 40).expect("open");
        queue.add(vec![entry(1), entry(2)]).expect("add");
        assert_eq!(
            queue
                .redrive("s", Some(vec!["0-2".into()]))
                .expect("redrive"),
            1
        );
        for round in 0..20 {
            queue.add(vec![entry(100 + round)]).expect("add");
            purge_all(&mut queue);
        }
        assert_eq!(ids(&queue), ["0-2"], "the redriving entry outlives purges");
        let records = queue.log.next_offset() - queue.log.start_offset();
        assert!(records < 40, "compacted: {records} records");
        assert_eq!(queue.take_redriven(10, 0).expect("take").len(), 1);
        drop(queue);
        let mut queue = DeadLetterQueue::open_with(test_log(&path), 40).expect("reopen");
        assert_eq!(ids(&queue), ["0-2"]);
        assert_eq!(
            queue.take_redriven(10, 0).expect("take").len(),
            1,
            "still being redriven"
        );
        assert!(
            !path.with_extension("old").exists() && !path.with_extension("compacting").exists()
        );
    }
}
