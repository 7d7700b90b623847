//! The log of one partition: appends, group commit, reads, lookups and retention.
//!
//! Concurrency: one writer at a time (the `writer` mutex: append, commit, sync, rolling) and any
//! number of readers that never take that mutex, so an fsync in progress never blocks a read.
//! Readers find segments in an `RwLock`ed list held only for a lookup, read with positioned reads
//! on shared file handles, and see records only below `next_offset`, an atomic the writer stores
//! (Release) after the records' bytes are in the file and their segment's counters are updated.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use crate::durable_mark::{DurableMark, MARK_FILE_NAME};
use crate::error::LogError;
use crate::index::IndexBuilder;
use crate::limits::{
    INDEX_INTERVAL_BYTES_MAX, INDEX_INTERVAL_BYTES_MIN, PAYLOAD_BYTES_MAX, PENDING_BYTES_MAX,
    PENDING_BYTES_RETAINED_MAX, ROLL_ATTEMPTS_MAX, ROLL_RETRY_BACKOFF_MS_FIRST, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN, SEGMENT_FILE_BYTES_MAX,
};
use crate::open_files::OpenFiles;
use crate::record::{Record, encode_frame, frame_bytes};
use crate::recovery::{RecoveryReport, recover};
use crate::retention::{RetentionReport, SegmentStats, delete_segment_files, expired_prefix};
use crate::segment::{ReadLimits, Segment, parse_segment_file_name};
use crate::storage::{FileStorage, Storage, is_descriptor_exhaustion};

/// Tunables of one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment rolls over once it holds this many bytes: a batch that would push a non-empty
    /// segment past it goes into a new segment. Between `SEGMENT_BYTES_MIN` and
    /// `SEGMENT_BYTES_MAX`.
    pub segment_bytes_max: u64,
    /// One sparse offset-index and time-index entry every this many log bytes. Between
    /// `INDEX_INTERVAL_BYTES_MIN` and `INDEX_INTERVAL_BYTES_MAX`.
    pub index_interval_bytes: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes_max: 128 * 1024 * 1024,
            index_interval_bytes: 4096,
        }
    }
}

impl LogConfig {
    /// Checks every value against its bound in [`limits`](crate::limits).
    pub fn validate(&self) -> Result<(), LogError> {
        let segment_bytes = SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX;
        if !segment_bytes.contains(&self.segment_bytes_max) {
            let detail = format!(
                "segment_bytes_max {} is outside {segment_bytes:?}",
                self.segment_bytes_max
            );
            return Err(LogError::Config { detail });
        }
        let interval_bytes = INDEX_INTERVAL_BYTES_MIN..=INDEX_INTERVAL_BYTES_MAX;
        if !interval_bytes.contains(&self.index_interval_bytes) {
            let detail = format!(
                "index_interval_bytes {} is outside {interval_bytes:?}",
                self.index_interval_bytes
            );
            return Err(LogError::Config { detail });
        }
        Ok(())
    }
}

/// State only the writer touches.
#[derive(Debug)]
struct Writer {
    /// The last segment, where records are appended.
    active: Arc<Segment>,
    /// Decides the active segment's index entries.
    builder: IndexBuilder,
    /// Frames appended since the last commit, back to back, at most `PENDING_BYTES_MAX`.
    pending: Vec<u8>,
    /// Timestamp and size of each pending frame, for the index.
    pending_records: Vec<PendingRecord>,
    /// The offset the next append gets: the visible next offset plus the pending records.
    next_offset: u64,
    /// Bytes were written to the active segment since its last fsync.
    unsynced: bool,
    mark: DurableMark,
    /// The first write or fsync failure; set, the log accepts no more writes.
    poison: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct PendingRecord {
    timestamp_ms: i64,
    frame_bytes: u64,
}

impl Writer {
    fn check_healthy(&self) -> Result<(), LogError> {
        match &self.poison {
            Some(cause) => Err(LogError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// The log of one partition.
///
/// `Log` is `Send + Sync`: share it in an `Arc`. Writes (`append`, `commit`, `sync`) are
/// serialized by an internal mutex; reads run concurrently with them and with each other.
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    storage: Arc<dyn Storage>,
    /// Oldest first; never empty, the last is the active segment.
    segments: RwLock<Vec<Arc<Segment>>>,
    /// One past the last visible (committed) record.
    next_offset: AtomicU64,
    writer: Mutex<Writer>,
    /// Serializes retention passes, which remove segments from the front of the list.
    retention: Mutex<()>,
}

impl fmt::Debug for Log {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Log")
            .field("dir", &self.dir)
            .field("start_offset", &self.start_offset())
            .field("next_offset", &self.next_offset())
            .finish()
    }
}

impl Log {
    /// Opens (creating if missing) the log in `dir`, recovering its tail.
    ///
    /// A torn tail past the durable mark is cut and reported; damage to records the mark says
    /// were fsynced is `LogError::Corrupt`, and then nothing is changed on disk.
    pub fn open(dir: &Path, config: LogConfig) -> Result<(Log, RecoveryReport), LogError> {
        Self::open_with_storage(dir, config, Arc::new(FileStorage))
    }

    /// Like [`Log::open`], over a given file layer (for fault injection in tests).
    pub fn open_with_storage(
        dir: &Path,
        config: LogConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<(Log, RecoveryReport), LogError> {
        config.validate()?;
        let recovered = recover(&storage, dir, config.index_interval_bytes)?;
        let active = Arc::clone(
            recovered
                .segments
                .last()
                .expect("recovery returns the active segment"),
        );
        let next_offset = active.next_offset();
        let writer = Writer {
            active,
            builder: recovered.builder,
            pending: Vec::new(),
            pending_records: Vec::new(),
            next_offset,
            unsynced: false,
            mark: recovered.mark,
            poison: None,
        };
        let log = Log {
            dir: dir.to_path_buf(),
            config,
            storage,
            segments: RwLock::new(recovered.segments),
            next_offset: AtomicU64::new(next_offset),
            writer: Mutex::new(writer),
            retention: Mutex::new(()),
        };
        Ok((log, recovered.report))
    }

    /// Buffers one record and returns its offset; neither visible nor durable until `commit`.
    ///
    /// Fails without buffering when the payload is over `PAYLOAD_BYTES_MAX`, when the buffered
    /// records would exceed `PENDING_BYTES_MAX` (commit first), or when the log is poisoned.
    pub fn append(&self, timestamp_ms: i64, payload: &[u8]) -> Result<u64, LogError> {
        let mut guard = self.lock_writer()?;
        let writer = &mut *guard;
        writer.check_healthy()?;
        if payload.len() > PAYLOAD_BYTES_MAX as usize {
            return Err(LogError::RecordTooLarge {
                payload_bytes: payload.len() as u64,
                payload_bytes_max: u64::from(PAYLOAD_BYTES_MAX),
            });
        }
        let frame_bytes = frame_bytes(payload.len()) as u64;
        let pending_bytes = writer.pending.len() as u64;
        if pending_bytes + frame_bytes > PENDING_BYTES_MAX {
            return Err(LogError::BatchFull {
                pending_bytes,
                pending_bytes_max: PENDING_BYTES_MAX,
            });
        }
        let offset = writer.next_offset;
        encode_frame(offset, timestamp_ms, payload, &mut writer.pending);
        writer.pending_records.push(PendingRecord {
            timestamp_ms,
            frame_bytes,
        });
        writer.next_offset += 1;
        Ok(offset)
    }

    /// Writes the buffered records, fsyncs them when `fsync`, then makes them visible.
    /// Returns the new visible next offset.
    ///
    /// All buffered records go out in one write (group commit). When the write or the fsync
    /// fails, the error is returned, the buffered records are dropped, nothing new becomes
    /// visible and the log is poisoned: later writes return `LogError::Poisoned` (the fsync is
    /// not retried: after a failed fsync Linux may have dropped the dirty pages). With nothing
    /// buffered, `commit(true)` only fsyncs earlier unsynced commits, if any.
    ///
    /// Two failures do not poison. The write failing for a full device
    /// (`LogError::StorageFull`), once what it wrote is cut and the cut fsynced: the log then
    /// holds exactly its visible records, durably, and takes writes again. And a roll to a new
    /// segment that found no file descriptor left, after a few tries
    /// (`LogError::DescriptorsExhausted`): nothing was written, and the next commit tries the
    /// roll again.
    pub fn commit(&self, fsync: bool) -> Result<u64, LogError> {
        let mut guard = self.lock_writer()?;
        let writer = &mut *guard;
        writer.check_healthy()?;
        let result = if !writer.pending_records.is_empty() {
            self.write_batch(writer, fsync)
        } else if fsync && writer.unsynced {
            let next_offset = self.next_offset();
            self.sync_active(writer, next_offset).map(|()| next_offset)
        } else {
            return Ok(self.next_offset());
        };
        result.map_err(|error| match error {
            LogError::StorageFull { .. } => self.refuse_full(writer, error),
            LogError::DescriptorsExhausted { .. } => self.refuse_unwritten(writer, error),
            error => self.poison(writer, error),
        })
    }

    /// Fsyncs everything committed so far (for the `interval` policy). On failure the log is
    /// poisoned, as for `commit`.
    pub fn sync(&self) -> Result<(), LogError> {
        let mut guard = self.lock_writer()?;
        let writer = &mut *guard;
        writer.check_healthy()?;
        if !writer.unsynced {
            return Ok(());
        }
        // Everything written is visible: commit publishes right after its write.
        self.sync_active(writer, self.next_offset())
            .map_err(|error| self.poison(writer, error))
    }

    /// Reads visible records from `from`, at most `records_max` and about `bytes_max` bytes of
    /// payload (at least one record when one is there).
    ///
    /// `from` below `start_offset` or above `next_offset` is `OffsetOutOfRange`; `from ==
    /// next_offset` gives no record. Every record's CRC is checked again: a bad one is
    /// `LogError::Corrupt`, never data.
    pub fn read(
        &self,
        from: u64,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Record>, LogError> {
        let next_offset = self.next_offset();
        let mut segment = self.segment_for(from, next_offset)?;
        let mut records = Vec::new();
        let mut limits = ReadLimits::new(records_max, bytes_max);
        let mut offset = from;
        while offset < next_offset && !limits.is_full(records.len()) {
            let read_to = match segment.read_into(offset, next_offset, &mut limits, &mut records) {
                Ok(read_to) => read_to,
                // Retention removed the segment's file after the lookup, before the read
                // opened it: as if the read had come after the removal.
                Err(error) if self.was_removed(&segment, &error) => {
                    if !records.is_empty() {
                        break;
                    }
                    return Err(self.out_of_range(offset, next_offset));
                }
                Err(error) => return Err(error),
            };
            if read_to >= next_offset || limits.is_full(records.len()) {
                break;
            }
            // This segment has nothing more below `next_offset`: go on in the next one.
            debug_assert_eq!(read_to, segment.next_offset());
            offset = read_to;
            segment = match self.segment_for(offset, next_offset) {
                Ok(next) if next.base_offset() == offset => next,
                // Retention removed what came next, or the list changed under us: return what
                // was read.
                Ok(_) | Err(LogError::OffsetOutOfRange { .. }) if !records.is_empty() => break,
                Ok(_) => return Err(self.out_of_range(offset, next_offset)),
                Err(error) => return Err(error),
            };
        }
        Ok(records)
    }

    /// First offset still kept.
    pub fn start_offset(&self) -> u64 {
        self.segments_read()
            .first()
            .expect("the active segment is always listed")
            .base_offset()
    }

    /// The offset the next visible record will get (one past the last visible record).
    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    /// Bytes of all segments' visible records.
    pub fn size_bytes(&self) -> u64 {
        self.segments_read()
            .iter()
            .map(|segment| segment.size_bytes())
            .sum()
    }

    /// Number of segment files, the active one included.
    pub fn segment_count(&self) -> usize {
        self.segments_read().len()
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first offset whose timestamp is at or after `timestamp_ms` (the next offset if none).
    ///
    /// Finds the segment from each segment's newest timestamp, then the starting point in its
    /// time index, then scans forward.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<u64, LogError> {
        let next_offset = self.next_offset();
        let segments: Vec<Arc<Segment>> = self.segments_read().clone();
        for segment in segments {
            if segment.timestamp_ms_max() < timestamp_ms {
                continue;
            }
            match segment.offset_for_timestamp(timestamp_ms, next_offset) {
                Ok(Some(offset)) => return Ok(offset),
                Ok(None) => {}
                // Retention removed it meanwhile: the answer is in a later segment.
                Err(error) if self.was_removed(&segment, &error) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(next_offset)
    }

    /// Deletes whole segments older than `age_ms_max` or beyond `bytes_max` in total,
    /// never the active one.
    ///
    /// A segment is older than `age_ms_max` when its newest record's timestamp is below
    /// `now_ms - age_ms_max`. Segments go oldest first and only as a prefix, so `start_offset`
    /// moves to the first kept segment's base offset.
    pub fn apply_retention(
        &self,
        now_ms: i64,
        age_ms_max: Option<u64>,
        bytes_max: Option<u64>,
    ) -> Result<RetentionReport, LogError> {
        self.delete_prefix(|segments| {
            let stats: Vec<SegmentStats> = segments
                .iter()
                .map(|s| SegmentStats {
                    size_bytes: s.size_bytes(),
                    timestamp_ms_max: s.timestamp_ms_max(),
                })
                .collect();
            expired_prefix(&stats, now_ms, age_ms_max, bytes_max)
        })
    }

    /// Deletes the whole segments whose records all lie below `offset` (records that the
    /// log's owner no longer needs), never the active one. `start_offset` stays at or below
    /// `offset`.
    pub fn remove_before(&self, offset: u64) -> Result<RetentionReport, LogError> {
        self.delete_prefix(|segments| {
            let sealed = &segments[..segments.len().saturating_sub(1)];
            sealed
                .iter()
                .take_while(|segment| segment.next_offset() <= offset)
                .count()
        })
    }

    /// Deletes the oldest `count(segments)` segments, oldest first.
    fn delete_prefix(
        &self,
        count: impl FnOnce(&[Arc<Segment>]) -> usize,
    ) -> Result<RetentionReport, LogError> {
        let _pass = self
            .retention
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let expired: Vec<Arc<Segment>> = {
            let segments = self.segments_read();
            let count = count(&segments).min(segments.len().saturating_sub(1));
            segments[..count].to_vec()
        };
        let mut report = RetentionReport::default();
        for segment in expired {
            delete_segment_files(&*self.storage, &self.dir, &segment, || {
                let mut segments = self.segments_write();
                // Only retention removes segments and it holds `self.retention`, so the oldest
                // is still first; rolling only appends.
                assert!(segments.len() > 1 && Arc::ptr_eq(&segments[0], &segment));
                segments.remove(0);
            })?;
            report.segments_deleted += 1;
            report.bytes_deleted += segment.size_bytes();
            tracing::info!(
                segment = %segment.path().display(), size_bytes = segment.size_bytes(),
                next_offset = segment.next_offset(), "retention deleted a segment"
            );
        }
        Ok(report)
    }

    /// Deletes the whole log: every segment, index and mark file, then its directory.
    ///
    /// The mark goes first and segments go oldest first, so a crash midway leaves a log that
    /// still opens (a suffix of its segments, no mark to contradict it) and can be deleted again.
    pub fn delete(self) -> Result<(), LogError> {
        let dir = self.dir.clone();
        let storage = Arc::clone(&self.storage);
        drop(self);
        let remove = |name: &str| {
            let path = dir.join(name);
            match storage.remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    Err(LogError::io("remove", &path, error))
                }
                _ => Ok(()),
            }
        };
        remove(MARK_FILE_NAME)?;
        let mut names = storage
            .list_dir(&dir)
            .map_err(|source| LogError::io("list", &dir, source))?;
        names.retain(|name| parse_segment_file_name(name).is_some());
        // Names sort by base offset; `.index` and `.timeindex` sort before `.log`, which is
        // fine: a segment without index files is rebuilt.
        names.sort();
        for name in &names {
            remove(name)?;
        }
        storage
            .remove_dir(&dir)
            .map_err(|source| LogError::io("remove", &dir, source))
    }

    /// Rolls if needed, writes the pending frames with one write, fsyncs when asked, then
    /// publishes them. The caller poisons the log on error.
    fn write_batch(&self, writer: &mut Writer, fsync: bool) -> Result<u64, LogError> {
        let batch_bytes = writer.pending.len() as u64;
        let active_bytes = writer.active.size_bytes();
        let full =
            !writer.active.is_empty() && active_bytes + batch_bytes > self.config.segment_bytes_max;
        // A roll that failed for want of descriptors may have sealed the active segment already:
        // it is rolled before anything is appended to it again.
        if full || writer.active.is_sealed() {
            self.roll(writer)?;
        }
        let active = Arc::clone(&writer.active);
        let position = active.size_bytes();
        // Invariant: a segment holds at most max(segment_bytes_max, one batch), so positions and
        // relative offsets fit the indexes' u32 fields.
        assert!(position + batch_bytes <= SEGMENT_FILE_BYTES_MAX);
        writer.unsynced = true;
        active
            .pinned_file()
            .write_all_at(&writer.pending, position)
            .map_err(|source| {
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) {
                    let path = active.path().to_owned();
                    LogError::StorageFull { path, source }
                } else {
                    LogError::io("write", active.path(), source)
                }
            })?;
        if fsync {
            self.sync_active(writer, writer.next_offset)?;
        }
        let first_offset = writer.next_offset - writer.pending_records.len() as u64;
        let mut entries = Vec::new();
        let mut frame_position = position;
        for (number, record) in writer.pending_records.iter().enumerate() {
            let relative_offset = first_offset + number as u64 - active.base_offset();
            let entry = writer.builder.observe(
                u32::try_from(relative_offset).expect("relative offsets fit in u32, see above"),
                u32::try_from(frame_position).expect("positions fit in u32, see above"),
                record.frame_bytes,
                record.timestamp_ms,
            );
            entries.extend(entry);
            frame_position += record.frame_bytes;
        }
        active.publish(
            &entries,
            position + batch_bytes,
            writer.next_offset,
            writer.builder.timestamp_ms_max(),
        );
        self.next_offset
            .store(writer.next_offset, Ordering::Release);
        writer.pending.clear();
        writer.pending_records.clear();
        // One large batch must not pin its buffer for the life of the partition.
        if writer.pending.capacity() > PENDING_BYTES_RETAINED_MAX {
            writer.pending.shrink_to(PENDING_BYTES_RETAINED_MAX);
            writer.pending_records.shrink_to_fit();
        }
        Ok(writer.next_offset)
    }

    /// Seals the active segment and starts a new one at its next offset.
    ///
    /// Out of file descriptors (`EMFILE`, `ENFILE`), the steps that open files are tried again
    /// [`ROLL_ATTEMPTS_MAX`] times in all, closing the idle files of sealed segments and waiting
    /// a little longer each time; then the roll fails with `LogError::DescriptorsExhausted`,
    /// which does not poison the log: nothing was written and no fsync failed, so nothing is
    /// in doubt. The next commit tries the roll again (the active segment may be sealed by
    /// then: a sealed active segment is never appended to, see `write_batch`).
    fn roll(&self, writer: &mut Writer) -> Result<(), LogError> {
        let sealed = Arc::clone(&writer.active);
        if writer.unsynced {
            // Crash: recovery scans only the last segment and trusts sealed ones whole, so a
            // segment's records must be durable before a newer segment exists.
            self.sync_active(writer, sealed.next_offset())?;
        }
        let mut backoff = Duration::from_millis(ROLL_RETRY_BACKOFF_MS_FIRST);
        let mut attempt = 1;
        let segment = loop {
            match self.start_next_segment(&sealed) {
                Ok(segment) => break segment,
                Err(error) if error.is_descriptor_exhaustion() && attempt < ROLL_ATTEMPTS_MAX => {
                    let closed = OpenFiles::shared().close_idle();
                    let dir = self.dir.display();
                    tracing::warn!(%dir, %error, attempt, closed_idle_files = closed, "no file descriptor left to roll the log to a new segment; trying again");
                    std::thread::sleep(backoff);
                    backoff *= 2;
                    attempt += 1;
                }
                Err(LogError::Io { op, path, source }) if is_descriptor_exhaustion(&source) => {
                    return Err(LogError::DescriptorsExhausted { op, path, source });
                }
                Err(error) => return Err(error),
            }
        };
        self.segments_write().push(Arc::clone(&segment));
        // Nothing writes to the sealed segment again: reads open its file on demand.
        sealed.release_file();
        tracing::debug!(
            sealed = %sealed.path().display(), size_bytes = sealed.size_bytes(),
            base_offset = segment.base_offset(), "rolled to a new segment"
        );
        writer.active = segment;
        writer.builder = IndexBuilder::new(self.config.index_interval_bytes);
        Ok(())
    }

    /// The steps of a roll that open files: seals `sealed` (writes its index files) and creates
    /// the next segment, its name made durable. A failure for want of descriptors leaves
    /// nothing to undo: the segment stays unsealed when its index files could not be opened,
    /// and a segment file created whose directory could not be fsynced is removed again, so
    /// the steps can be run again.
    fn start_next_segment(&self, sealed: &Segment) -> Result<Arc<Segment>, LogError> {
        // From here on the sealed segment keeps only a sample of its index in memory.
        if let Err(error) = sealed.seal() {
            if error.is_descriptor_exhaustion() {
                return Err(error);
            }
            // Index files are caches of the segment: a failed write or fsync of one must not
            // stop the partition. The sealed segment serves lookups by scanning from its
            // in-memory sample, and the next open rebuilds the files. Whatever part of them
            // reached the disk goes, so no open ever meets a half-written index (the directory
            // fsync below makes the removal durable; a removal that fails is still caught by
            // the sanity check on open).
            let segment = sealed.path().display();
            tracing::warn!(%segment, %error, "could not write index files; serving from the segment, the next open rebuilds them");
            for path in sealed.index_paths() {
                if let Err(error) = self.storage.remove_file(&path)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %path.display(), %error, "could not remove a partial index file");
                }
            }
        }
        let segment = Segment::create(&self.storage, &self.dir, sealed.next_offset())?;
        // Crash: fdatasync of a file does not make its directory entry durable; without this a
        // crash could lose the new segment with records fsynced into it and acknowledged. It also
        // makes the sealed segment's index file names durable.
        if let Err(source) = self.storage.sync_dir(&self.dir) {
            let error = LogError::io("fsync", &self.dir, source);
            if error.is_descriptor_exhaustion() {
                // The directory could not be opened, so no fsync ran (and none failed). The
                // empty file goes, so that the next try creates it again; a crash before its
                // removal is durable leaves an empty last segment, which recovery accepts.
                let path = segment.path().to_owned();
                drop(segment);
                if let Err(remove_error) = self.storage.remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %remove_error, "could not remove a segment file created by a failed roll");
                }
            }
            return Err(error);
        }
        Ok(Arc::new(segment))
    }

    /// Fsyncs the active segment, then advances the durable mark to `durable_next_offset`.
    fn sync_active(&self, writer: &mut Writer, durable_next_offset: u64) -> Result<(), LogError> {
        let active = &writer.active;
        active
            .pinned_file()
            .sync_data()
            .map_err(|source| LogError::io("fsync", active.path(), source))?;
        writer.unsynced = false;
        if let Err(error) = writer.mark.advance(durable_next_offset) {
            // The records are durable; only the mark is stale, and a stale mark is still a true
            // lower bound (see durable_mark.rs). Failing the commit would report durable
            // records as lost.
            let mark = writer.mark.path().display();
            tracing::warn!(%mark, %error, "could not advance the durable mark");
        }
        Ok(())
    }

    /// After a commit's write failed for a full device: drops the pending records, cuts what
    /// the write left past the visible records and fsyncs the segment, so that no crash can
    /// bring back a record of the failed commit (nor leave it under a later one's offset).
    /// Returns `full` for the caller, the log healthy; poisons it when the cut or the fsync
    /// fails.
    fn refuse_full(&self, writer: &mut Writer, full: LogError) -> LogError {
        writer.pending.clear();
        writer.pending_records.clear();
        writer.next_offset = self.next_offset();
        let active = Arc::clone(&writer.active);
        if let Err(source) = active.pinned_file().set_size_bytes(active.size_bytes()) {
            return self.poison(writer, LogError::io("truncate", active.path(), source));
        }
        if let Err(error) = self.sync_active(writer, self.next_offset()) {
            return self.poison(writer, error);
        }
        let dir = self.dir.display();
        tracing::warn!(%dir, error = %full, "a commit failed for a full device; nothing of it was kept");
        full
    }

    /// After a commit failed before writing anything (a roll that found no descriptor left):
    /// drops the pending records and returns `error`, the log healthy.
    fn refuse_unwritten(&self, writer: &mut Writer, error: LogError) -> LogError {
        writer.pending.clear();
        writer.pending_records.clear();
        writer.next_offset = self.next_offset();
        let dir = self.dir.display();
        tracing::warn!(%dir, %error, "a commit failed: no file descriptor left to roll the log; nothing of it was written");
        error
    }

    /// Whether `error`, from a read of `segment`, came from its file removed by retention
    /// since the segment was looked up.
    fn was_removed(&self, segment: &Arc<Segment>, error: &LogError) -> bool {
        let not_found = matches!(error, LogError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
        not_found && !self.segments_read().iter().any(|s| Arc::ptr_eq(s, segment))
    }

    /// Poisons the log after a failed write or fsync and drops the pending records; returns
    /// `error` for the caller.
    fn poison(&self, writer: &mut Writer, error: LogError) -> LogError {
        let dir = self.dir.display();
        tracing::error!(%dir, %error, "a log write failed; the log accepts no more writes");
        writer.poison = Some(error.to_string());
        writer.pending.clear();
        writer.pending_records.clear();
        writer.next_offset = self.next_offset();
        // Best effort: cut what the failed commit wrote past the visible records, so reopening
        // does not resurface records whose commit returned an error. If this fails too, reopen
        // still recovers: it keeps intact frames and cuts at the first bad one.
        let active = &writer.active;
        if let Err(cut_error) = active.pinned_file().set_size_bytes(active.size_bytes()) {
            let segment = active.path().display();
            tracing::warn!(%segment, error = %cut_error, "could not cut a failed write");
        }
        error
    }

    /// The segment holding `offset`, checking it against `[start_offset, next_offset]`.
    fn segment_for(&self, offset: u64, next_offset: u64) -> Result<Arc<Segment>, LogError> {
        let segments = self.segments_read();
        let start_offset = segments
            .first()
            .expect("the active segment is always listed")
            .base_offset();
        if offset < start_offset || offset > next_offset {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start_offset,
                next_offset,
            });
        }
        let count = segments.partition_point(|segment| segment.base_offset() <= offset);
        Ok(Arc::clone(&segments[count - 1]))
    }

    fn out_of_range(&self, offset: u64, next_offset: u64) -> LogError {
        LogError::OffsetOutOfRange {
            offset,
            start_offset: self.start_offset(),
            next_offset,
        }
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>, LogError> {
        self.writer.lock().map_err(|_| LogError::Poisoned {
            cause: "a thread panicked while writing to the log".to_owned(),
        })
    }

    // The list is changed only by single pushes and removals, so it is consistent even after a
    // panic elsewhere: ignore lock poisoning.
    fn segments_read(&self) -> RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        self.segments.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn segments_write(&self) -> RwLockWriteGuard<'_, Vec<Arc<Segment>>> {
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::SEALED_INDEX_ENTRIES_IN_MEMORY_MAX;

    /// Index entries each segment of `log` holds in memory, oldest first.
    fn entries_in_memory(log: &Log) -> Vec<usize> {
        let segments = log.segments_read();
        segments
            .iter()
            .map(|s| s.index_entries_in_memory())
            .collect()
    }

    /// Checks that every sealed segment of `log` keeps at most the bound in memory, and the
    /// active one its whole index.
    fn assert_bounded(log: &Log, active_entries: usize, when: &str) {
        let entries = entries_in_memory(log);
        let (active, sealed) = entries.split_last().expect("an active segment");
        assert!(sealed.len() >= 3, "{when}: several sealed segments");
        for (number, count) in sealed.iter().enumerate() {
            assert!(
                *count <= SEALED_INDEX_ENTRIES_IN_MEMORY_MAX,
                "{when}: segment {number}"
            );
        }
        assert_eq!(
            *active, active_entries,
            "{when}: the active segment is indexed whole"
        );
    }

    #[test]
    fn sealed_segments_keep_a_bounded_index_in_memory() {
        // Goal: a sealed segment holds at most SEALED_INDEX_ENTRIES_IN_MEMORY_MAX index entries
        // in memory however many it has on disk (memory grows with segments, not bytes), whether
        // it was sealed by a roll, loaded on open or rebuilt; reads still find every record.
        // Method: index every record of 64 KiB segments (~2700 entries each), then check the
        // in-memory counts after writing, after reopening, and after a rebuild.
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            segment_bytes_max: 64 * 1024,
            index_interval_bytes: 1,
        };
        let (log, _) = Log::open(dir.path(), config.clone()).expect("open");
        let records = 12_000u64;
        for offset in 0..records {
            log.append(offset as i64, &offset.to_le_bytes())
                .expect("append");
            if offset % 500 == 499 {
                log.commit(false).expect("commit");
            }
        }
        log.commit(true).expect("commit");
        let active_entries = {
            let segments = log.segments_read();
            let active = segments.last().expect("an active segment");
            (active.next_offset() - active.base_offset()) as usize
        };
        assert_bounded(&log, active_entries, "after rolls");
        drop(log);
        let (log, report) = Log::open(dir.path(), config.clone()).expect("reopen");
        assert_eq!(report.indexes_rebuilt, 0);
        assert_bounded(&log, active_entries, "after reopening");
        drop(log);
        let first_index = crate::segment::segment_path(dir.path(), 0, "index");
        std::fs::remove_file(first_index).expect("remove an index file");
        let (log, report) = Log::open(dir.path(), config).expect("reopen");
        assert_eq!(report.indexes_rebuilt, 1);
        assert_bounded(&log, active_entries, "after a rebuild");
        for from in (0..records).step_by(7) {
            let read = log.read(from, 2, usize::MAX).expect("read");
            assert_eq!(read[0].offset, from);
            assert_eq!(read[0].payload, from.to_le_bytes());
            assert_eq!(log.offset_for_timestamp(from as i64).expect("lookup"), from);
        }
    }
}
