//! The committer of a stateful subscription: one task that applies commits in group commits,
//! publishes their emitted events, snapshots the table, and at start finishes what a crash
//! interrupted. Being the only writer, it reads a key's entry and writes the next one without
//! a race: the staleness check and the write are one step.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::records::{
    Change, CommitRecord, EmitRecord, KEY_PREFIX, PREVIOUS_PREFIX, REDRIVEN_PREFIX, Rebuild,
    StoredEntry, TableMark, key_entry, previous_entry, redriven_entry, unapplied_entry,
};
use super::{CommitRequest, Committed, Request, storage_error};
use crate::clock::now_ms;
use crate::error::{DataError, EngineError};
use crate::event::Event;
use crate::limits::{
    READ_BYTES_MAX, READ_RECORDS_MAX, STATE_COMMIT_BATCH_MAX, STATE_SNAPSHOT_COMMITS,
    STATE_SNAPSHOT_INTERVAL,
};

use crate::pressure::Admission;
use crate::storage::{RecordLog, StateTable};
use crate::subscription::Shared;
use crate::topic::{EmitTargets, Topic};

/// Entries dropped per write when a rebuild drops the state.
const STATE_REBUILD_PAGE: usize = 10_000;

/// Positions per record of events never applied.
const UNAPPLIED_PER_RECORD: usize = 10_000;

/// Who waits for a commit's outcome.
type Reply = tokio::sync::oneshot::Sender<Result<Committed, EngineError>>;

/// The committer's state: the only writer of the table and the commit log.
pub(in crate::subscription) struct Committer {
    name: String,
    table: Arc<dyn StateTable>,
    commits: Box<dyn RecordLog>,
    mark: TableMark,
    /// Commits applied since the last snapshot, and when it was taken.
    since_snapshot: u64,
    snapshot_at: Instant,
    /// Where emitted events go.
    targets: EmitTargets,
}

impl Committer {
    /// Opens the committer: replays the commits the table does not hold. Blocking.
    pub(super) fn open(
        name: &str,
        table: Arc<dyn StateTable>,
        commits: Box<dyn RecordLog>,
        targets: EmitTargets,
    ) -> Result<Self, EngineError> {
        let mark = match table
            .mark()
            .map_err(|source| storage_error("read the state's mark", source))?
        {
            Some(bytes) => TableMark::from_bytes(&bytes)?,
            None => TableMark::new(0, 0),
        };
        let start = commits.start_offset();
        if start > mark.published.min(mark.applied) {
            return Err(EngineError::Data(DataError::Corrupt {
                detail: format!(
                    "the state's commit log starts at {start}, past what its table holds ({}); restore the subscription's state from a backup, or delete the subscription",
                    mark.applied
                ),
            }));
        }
        let mut mark = mark;
        if mark.incarnation == 0 {
            // Written with the next write: until a snapshot holds it, a crash draws another,
            // which is as good (the commit log keeps the ids its events were given).
            mark.incarnation = fastrand::u64(1..);
        }
        let mut committer = Committer {
            name: name.to_owned(),
            table,
            commits,
            mark,
            since_snapshot: 0,
            snapshot_at: Instant::now(),
            targets,
        };
        committer.replay()?;
        Ok(committer)
    }

    /// The rebuild generation the table is at.
    pub(super) fn generation(&self) -> u64 {
        self.mark.generation()
    }

    /// This state's incarnation (see [`TableMark::incarnation`]).
    pub(super) fn incarnation(&self) -> u64 {
        self.mark.incarnation
    }

    /// Applies the commits from the mark's `applied` to the end of the log to the table.
    fn replay(&mut self) -> Result<(), EngineError> {
        let end = self.commits.next_offset();
        let replayed = end - self.mark.applied;
        while self.mark.applied < end {
            let records = self.read_commits(self.mark.applied)?;
            let mut writes = Vec::with_capacity(records.len());
            let mut overlay: HashMap<Vec<u8>, StoredEntry> = HashMap::new();
            for (offset, record) in records {
                if let Some(rebuild) = record.rebuild {
                    // The commits before it go in first: the rebuild moves them aside.
                    self.write(&writes)?;
                    self.mark.applied = offset + 1;
                    self.mark.rebuild = Some(rebuild);
                    self.clear()?;
                    (writes, overlay) = (Vec::new(), HashMap::new());
                    continue;
                }
                if !record.unapplied.is_empty() {
                    self.mark.unapplied = true;
                    writes.extend(unapplied_marks(&record.unapplied));
                    self.mark.applied = offset + 1;
                    continue;
                }
                if self.mark.unapplied {
                    // Applied now: whether it had a mark or not, it has none after.
                    writes.push((unapplied_entry((record.partition, record.offset)), None));
                }
                let table_key = key_entry(&record.key);
                let current = match overlay.get(&table_key) {
                    Some(entry) => Some(entry.clone()),
                    None => self.stored(&table_key)?,
                };
                let entry = next_entry(current.as_ref(), &record);
                writes.push((table_key.clone(), Some(entry.to_bytes())));
                if let Some(entry_id) = &record.redriven {
                    writes.push((redriven_entry(entry_id), Some(Vec::new())));
                }
                overlay.insert(table_key, entry);
                self.mark.applied = offset + 1;
            }
            self.write(&writes)?;
        }
        if replayed > 0 {
            tracing::info!(subscription = %self.name, commits = replayed, "replayed state commits");
        }
        self.since_snapshot += replayed;
        Ok(())
    }

    /// Drops every key's state. Each key's offset is kept in its previous-state entry (the
    /// highest offset the key ever applied, over every rebuild), and the marks of redriven
    /// events go. Blocking.
    fn clear(&self) -> Result<(), EngineError> {
        loop {
            let page = self
                .table
                .scan(&[KEY_PREFIX], &[], STATE_REBUILD_PAGE)
                .map_err(|source| storage_error("read the state", source))?;
            let marks = self
                .table
                .scan(&[REDRIVEN_PREFIX], &[], STATE_REBUILD_PAGE)
                .map_err(|source| storage_error("read the state", source))?;
            if page.is_empty() && marks.is_empty() {
                return Ok(());
            }
            let mut writes = Vec::with_capacity(2 * page.len() + marks.len());
            for (key, value) in page {
                let mut previous_key = key.clone();
                previous_key[0] = PREVIOUS_PREFIX;
                let entry = StoredEntry::from_bytes(&value)?;
                let kept = self
                    .stored(&previous_key)?
                    .filter(|previous| previous.offset > entry.offset);
                if kept.is_none() {
                    let previous = StoredEntry::new(0, entry.partition, entry.offset, None);
                    writes.push((previous_key, Some(previous.to_bytes())));
                }
                writes.push((key, None));
            }
            writes.extend(marks.into_iter().map(|(key, _)| (key, None)));
            self.write(&writes)?;
        }
    }

    /// Begins a rebuild: its record appended with an fsync, then the state dropped. From here
    /// commits of an older generation are stale, and a commit of an event its key had applied
    /// before the rebuild emits nothing (its events went out the first time). Blocking.
    fn rebuild(&mut self, rebuild: Rebuild) -> Result<(), EngineError> {
        let record = CommitRecord::rebuild(rebuild.clone()).to_bytes();
        self.commits
            .append(now_ms(), &[&record], true)
            .map_err(|source| storage_error("append to the state's commit log", source))?;
        self.mark.applied = self.commits.next_offset();
        self.mark.rebuild = Some(rebuild);
        self.since_snapshot += 1;
        self.clear()
    }

    /// Marks which of these dead-lettered events (key, position) were never applied, in any
    /// generation, durably: before they leave the dead-letter queue (a purge, a rebuild), so
    /// that a later commit of one emits its events although its key has applied events past
    /// it. An event is left unmarked when its redrive was applied, or when a generation before
    /// this one applied it (its key's previous entry reaches it, and it has no mark). Blocking.
    fn mark_unapplied(&mut self, events: &[(String, (u32, u64))]) -> Result<(), EngineError> {
        let mut wanted = Vec::with_capacity(3 * events.len());
        for (key, origin) in events {
            wanted.push(redriven_entry(&crate::subscription::dlq::entry_id(*origin)));
            wanted.push(previous_entry(key));
            wanted.push(unapplied_entry(*origin));
        }
        let values = self
            .table
            .get_many(&wanted)
            .map_err(|source| storage_error("read the state", source))?;
        let mut never = Vec::new();
        for ((_, origin), read) in events.iter().zip(values.chunks(3)) {
            let [redriven, previous, marked] = read else {
                unreachable!("three reads per event")
            };
            let applied_earlier = self.mark.rebuild.is_some()
                && marked.is_none()
                && previous
                    .as_deref()
                    .map(StoredEntry::from_bytes)
                    .transpose()?
                    .is_some_and(|previous| previous.offset >= origin.1);
            if redriven.is_none() && !applied_earlier {
                never.push(*origin);
            }
        }
        for chunk in never.chunks(UNAPPLIED_PER_RECORD) {
            let record = CommitRecord::unapplied(chunk.to_vec()).to_bytes();
            self.commits
                .append(now_ms(), &[&record], true)
                .map_err(|source| storage_error("append to the state's commit log", source))?;
            self.mark.applied = self.commits.next_offset();
            self.mark.unapplied = true;
            self.since_snapshot += 1;
            self.write(&unapplied_marks(chunk))?;
        }
        Ok(())
    }

    /// Commit records from `from`, with their offsets (a read's worth). Blocking.
    fn read_commits(&self, from: u64) -> Result<Vec<(u64, CommitRecord)>, EngineError> {
        let records = self
            .commits
            .read(from, READ_RECORDS_MAX, READ_BYTES_MAX)
            .map_err(|source| storage_error("read the state's commit log", source))?;
        records
            .into_iter()
            .map(|record| Ok((record.offset, CommitRecord::from_bytes(&record.payload)?)))
            .collect()
    }

    fn stored(&self, table_key: &[u8]) -> Result<Option<StoredEntry>, EngineError> {
        self.table
            .get(table_key)
            .map_err(|source| storage_error("read the state", source))?
            .map(|bytes| StoredEntry::from_bytes(&bytes))
            .transpose()
    }

    fn write(&self, writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), EngineError> {
        self.table
            .write(writes, &self.mark.to_bytes())
            .map_err(|source| storage_error("write the state", source))
    }

    /// Decides each commit (applied or stale), appends the applied ones to the commit log
    /// with one fsync, and writes them to the table. Returns each outcome, and the applied
    /// commits' events by topic. Blocking.
    fn apply(&mut self, requests: &[(CommitRequest, Reply)]) -> Result<Applied, EngineError> {
        // Every entry the batch reads, in one read: its keys' entries, the marks of its
        // redriven events, and (after a rebuild) its keys' previous entries.
        let mut wanted: Vec<Vec<u8>> = Vec::new();
        for (commit, _) in requests {
            wanted.push(key_entry(&commit.key));
            if let Some(entry_id) = &commit.position.redriven {
                wanted.push(redriven_entry(entry_id));
            }
            if self.mark.rebuild.is_some() {
                wanted.push(previous_entry(&commit.key));
            }
            if self.mark.unapplied {
                wanted.push(unapplied_entry(commit.position.origin));
            }
        }
        let values = self
            .table
            .get_many(&wanted)
            .map_err(|source| storage_error("read the state", source))?;
        let read: HashMap<Vec<u8>, Option<Vec<u8>>> = wanted.into_iter().zip(values).collect();
        let stored = |table_key: &[u8]| -> Result<Option<StoredEntry>, EngineError> {
            read.get(table_key)
                .cloned()
                .flatten()
                .map(|bytes| StoredEntry::from_bytes(&bytes))
                .transpose()
        };
        let mut overlay: HashMap<Vec<u8>, StoredEntry> = HashMap::new();
        let mut redriven: HashSet<&str> = HashSet::new();
        let mut since: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let (mut records, mut outcomes, mut writes) = (Vec::new(), Vec::new(), Vec::new());
        let mut emits: Vec<(Arc<Topic>, Event)> = Vec::new();
        for (commit, _) in requests {
            let table_key = key_entry(&commit.key);
            let current = match overlay.get(&table_key) {
                Some(entry) => Some(entry.clone()),
                None => stored(&table_key)?,
            };
            let position = &commit.position;
            let stale = commit.generation < self.mark.generation()
                || match &position.redriven {
                    Some(entry_id) => {
                        redriven.contains(entry_id.as_str())
                            || read
                                .get(&redriven_entry(entry_id))
                                .is_some_and(Option::is_some)
                    }
                    None => current
                        .as_ref()
                        .is_some_and(|entry| entry.offset >= position.origin.1),
                };
            if stale {
                outcomes.push(Committed::Stale);
                continue;
            }
            let current_version = current.as_ref().map_or(0, |entry| entry.version);
            if commit
                .based_on
                .is_some_and(|based_on| based_on != current_version)
            {
                outcomes.push(Committed::Conflict);
                continue;
            }
            let version = current_version + 1;
            let mut emitted = Vec::with_capacity(commit.emits.len());
            let mut commit_since = BTreeMap::new();
            // Applied in a generation before (its key's previous entry reaches it, and it is
            // not marked never applied): its events went out the first time.
            let marked = read
                .get(&unapplied_entry(position.origin))
                .is_some_and(Option::is_some);
            let replayed = self.mark.rebuild.is_some()
                && !marked
                && stored(&previous_entry(&commit.key))?
                    .is_some_and(|previous| previous.offset >= position.origin.1);
            if marked {
                writes.push((unapplied_entry(position.origin), None));
            }
            for (topic, event) in commit.emits.iter().filter(|_| !replayed) {
                let offsets = since
                    .entry(topic.name.clone())
                    .or_insert_with(|| next_offsets(topic));
                commit_since.insert(topic.name.clone(), offsets.clone());
                emitted.push(EmitRecord {
                    topic: topic.name.clone(),
                    event: event.clone().into_json(),
                });
                emits.push((topic.clone(), event.clone()));
            }
            let record = CommitRecord::new(
                commit.key.clone(),
                position.origin,
                position.redriven.clone(),
                version,
                &commit.change,
                emitted,
                commit_since,
            );
            let entry = next_entry(current.as_ref(), &record);
            writes.push((table_key.clone(), Some(entry.to_bytes())));
            if let Some(entry_id) = &position.redriven {
                writes.push((redriven_entry(entry_id), Some(Vec::new())));
                redriven.insert(entry_id);
            }
            overlay.insert(table_key, entry);
            records.push(record.to_bytes());
            outcomes.push(Committed::Applied(version));
        }
        if !records.is_empty() {
            let payloads: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            // The commit point: once this fsync returns, the commits survive any crash.
            self.commits
                .append(now_ms(), &payloads, true)
                .map_err(|source| storage_error("append to the state's commit log", source))?;
            self.mark.applied = self.commits.next_offset();
            if emits.is_empty() {
                // Nothing to publish: the commits are as good as published.
                self.mark.published = self.mark.applied;
            }
            self.write(&writes)?;
            self.since_snapshot += records.len() as u64;
        }
        Ok(Applied { outcomes, emits })
    }

    /// Whether a snapshot is due.
    fn snapshot_due(&self) -> bool {
        self.since_snapshot >= STATE_SNAPSHOT_COMMITS
            || (self.since_snapshot > 0 && self.snapshot_at.elapsed() >= STATE_SNAPSHOT_INTERVAL)
    }

    /// Makes the table durable with its mark, then removes the commit records it covers.
    /// Blocking.
    fn snapshot(&mut self) -> Result<(), EngineError> {
        self.write(&[])?;
        self.table
            .snapshot()
            .map_err(|source| storage_error("snapshot the state", source))?;
        self.since_snapshot = 0;
        self.snapshot_at = Instant::now();
        let covered = self.mark.applied.min(self.mark.published);
        if let Err(source) = self.commits.remove_before(covered) {
            tracing::warn!(subscription = %self.name, %source, "could not remove old state commits");
        }
        Ok(())
    }

    /// The events of the commits from the mark's `published` on that are missing from their
    /// topics, in commit order: what a crash may have kept from being published. Scans each
    /// topic from the offsets its commits recorded before they were made.
    async fn unpublished(
        &self,
        closing: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Vec<(Arc<Topic>, Event)>, EngineError> {
        let end = self.commits.next_offset();
        let mut pending: Vec<(String, Box<serde_json::value::RawValue>)> = Vec::new();
        let mut scan_from: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut from = self.mark.published;
        while from < end {
            let records = self.read_commits(from)?;
            from += records.len() as u64;
            for (_, record) in records {
                for (topic, offsets) in record.since {
                    let lowest = scan_from.entry(topic).or_insert_with(|| offsets.clone());
                    for (low, offset) in lowest.iter_mut().zip(offsets) {
                        *low = (*low).min(offset);
                    }
                }
                pending.extend(record.emit.into_iter().map(|emit| (emit.topic, emit.event)));
            }
        }
        let mut found: HashSet<(String, String, String)> = HashSet::new();
        for (name, offsets) in &scan_from {
            let Some(topic) = self.targets.topic(name) else {
                continue;
            };
            for (partition, from) in topic.partitions().iter().zip(offsets) {
                let mut offset = *from;
                loop {
                    let (records, _) = partition
                        .read(
                            Some(offset),
                            READ_RECORDS_MAX,
                            READ_BYTES_MAX,
                            std::time::Duration::ZERO,
                            closing.clone(),
                        )
                        .await?;
                    let Some(last) = records.last() else { break };
                    offset = last.offset + 1;
                    for record in records {
                        if let Some((source, id)) = crate::event::identity_of(&record.payload) {
                            found.insert((name.clone(), source, id));
                        }
                    }
                }
            }
        }
        let mut missing = Vec::new();
        for (name, json) in pending {
            let Some(topic) = self.targets.topic(&name) else {
                tracing::warn!(subscription = %self.name, topic = %name, "an emitted event's topic is gone; the event is dropped");
                continue;
            };
            let event = crate::event::parse_structured(json.get().as_bytes()).map_err(|error| {
                EngineError::Data(DataError::Corrupt {
                    detail: format!(
                        "an emitted event in the state's commit log is invalid: {error}"
                    ),
                })
            })?;
            let identity = (name, event.source().to_owned(), event.id().to_owned());
            if !found.contains(&identity) {
                missing.push((topic, event));
            }
        }
        Ok(missing)
    }
}

/// The table writes of marks of events never applied.
fn unapplied_marks(positions: &[(u32, u64)]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    positions
        .iter()
        .map(|origin| (unapplied_entry(*origin), Some(Vec::new())))
        .collect()
}

/// What [`Committer::apply`] did.
struct Applied {
    outcomes: Vec<Committed>,
    emits: Vec<(Arc<Topic>, Event)>,
}

/// The key's entry after `record` is applied to `current`.
fn next_entry(current: Option<&StoredEntry>, record: &CommitRecord) -> StoredEntry {
    let state = match record.change() {
        Change::Keep => current.and_then(|entry| entry.state.clone()),
        Change::Set(state) => Some(state),
        Change::Delete => None,
    };
    // A redriven event may lie below what its key has applied: the offset never goes back.
    let offset = current.map_or(record.offset, |entry| entry.offset.max(record.offset));
    StoredEntry::new(record.version, record.partition, offset, state)
}

/// Each partition's next offset: where events appended from now on go, at the least.
fn next_offsets(topic: &Topic) -> Vec<u64> {
    topic
        .partitions()
        .iter()
        .map(|partition| partition.info().next_offset)
        .collect()
}

/// Publishes emitted events, in order, each topic's in one publish. A failure is not retried:
/// a partition that failed refuses writes until keel restarts, and the commit log keeps the
/// events for the restart to publish. Backpressure does not refuse them (their commit is
/// durable already: refusing them would stop the subscription until a restart); the disk
/// guard's minimum free space is kept for appends like these.
async fn publish(emits: Vec<(Arc<Topic>, Event)>) -> Result<(), EngineError> {
    let mut by_topic: Vec<(Arc<Topic>, Vec<Event>)> = Vec::new();
    for (topic, event) in emits {
        match by_topic.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &topic)) {
            Some((_, events)) => events.push(event),
            None => by_topic.push((topic, vec![event])),
        }
    }
    for (topic, events) in by_topic {
        topic.publish(events, Admission::unmetered()).await?;
    }
    Ok(())
}

/// Runs the committer until the subscription stops or its state cannot be stored: then the
/// subscription refuses service.
pub(in crate::subscription) async fn run(shared: Arc<Shared>) {
    let Some(keyed) = shared.keyed.as_ref() else {
        return;
    };
    let Some((committer, receiver)) = keyed.take_committer() else {
        return;
    };
    if let Err(error) = serve(&shared, committer, receiver).await {
        if matches!(error, EngineError::ShuttingDown) {
            return;
        }
        tracing::error!(subscription = %shared.name, %error, "subscription refuses service");
        shared.durability.fail(format!(
            "it stopped taking commits ({error}); fix the cause and restart keel: what was committed is kept, and its emitted events are published at the restart"
        ));
    }
}

async fn serve(
    shared: &Arc<Shared>,
    mut committer: Committer,
    mut receiver: mpsc::Receiver<Request>,
) -> Result<(), EngineError> {
    let mut stopping = shared.signals.stopping();
    let missing = committer.unpublished(shared.closing.clone()).await?;
    if !missing.is_empty() {
        tracing::info!(subscription = %shared.name, events = missing.len(), "publishing emitted events a crash held back");
    }
    publish(missing).await?;
    committer.mark.published = committer.mark.applied;
    let mut batch = Vec::with_capacity(STATE_COMMIT_BATCH_MAX);
    loop {
        if committer.snapshot_due() {
            committer = blocking(committer, Committer::snapshot).await?;
        }
        let idle = committer.since_snapshot > 0;
        let received = tokio::select! {
            received = receiver.recv_many(&mut batch, STATE_COMMIT_BATCH_MAX) => Some(received),
            // Nothing came for a while: snapshot what the last commits left.
            _ = tokio::time::sleep(STATE_SNAPSHOT_INTERVAL), if idle => None,
            _ = stopping.wait_for(|stopping| *stopping) => return Ok(()),
        };
        match received {
            Some(0) => return Ok(()),
            Some(_) => {}
            None => {
                committer = blocking(committer, Committer::snapshot).await?;
                continue;
            }
        }
        let mut commits = Vec::new();
        for request in std::mem::take(&mut batch) {
            match request {
                Request::Commit { commit, reply } => commits.push((commit, reply)),
                Request::Unapplied { events, reply } => {
                    // In order: the commits asked for before it apply first.
                    committer = apply(committer, std::mem::take(&mut commits)).await?;
                    committer = blocking(committer, move |committer| {
                        committer.mark_unapplied(&events)
                    })
                    .await?;
                    let _ = reply.send(Ok(()));
                }
                Request::Rebuild { generation, reply } => {
                    // In order: the commits asked for before it apply first.
                    committer = apply(committer, std::mem::take(&mut commits)).await?;
                    let rebuild = Rebuild { generation };
                    committer =
                        blocking(committer, move |committer| committer.rebuild(rebuild)).await?;
                    let _ = reply.send(Ok(()));
                }
            }
        }
        committer = apply(committer, commits).await?;
    }
}

/// Applies commits (group commit), publishes their events, and answers each.
async fn apply(
    committer: Committer,
    commits: Vec<(CommitRequest, Reply)>,
) -> Result<Committer, EngineError> {
    if commits.is_empty() {
        return Ok(committer);
    }
    let (mut committer, result) = tokio::task::spawn_blocking(move || {
        let mut committer = committer;
        let result = committer.apply(&commits);
        (committer, result.map(|applied| (applied, commits)))
    })
    .await
    .map_err(|_| EngineError::ShuttingDown)?;
    // A failure drops the requests: their callers learn the state stopped taking commits.
    let (applied, commits) = result?;
    let published = committer.mark.applied;
    publish(applied.emits).await?;
    committer.mark.published = published;
    for ((_, reply), outcome) in commits.into_iter().zip(applied.outcomes) {
        let _ = reply.send(Ok(outcome));
    }
    Ok(committer)
}

/// Runs `operation` on the committer on a blocking thread, and hands the committer back.
async fn blocking(
    mut committer: Committer,
    operation: impl FnOnce(&mut Committer) -> Result<(), EngineError> + Send + 'static,
) -> Result<Committer, EngineError> {
    tokio::task::spawn_blocking(move || operation(&mut committer).map(|()| committer))
        .await
        .map_err(|_| EngineError::ShuttingDown)?
}
