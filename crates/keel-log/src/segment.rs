//! One segment: a `.log` file of frames starting at a base offset, and its two index files.
//!
//! Files are named by the base offset zero-padded to 20 digits (`00000000000000000042.log`,
//! `.index`, `.timeindex`), so a directory listing sorts by offset.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::error::LogError;
use crate::index::{IndexBuilder, IndexEntry, SparseIndex};
use crate::limits::{
    READ_CHUNK_BYTES, READ_CHUNK_BYTES_FIRST, READ_FEW_RECORDS, SEGMENT_FILE_BYTES_MAX,
};
use crate::open_files::{FileKind, SegmentFiles};
use crate::record::{FrameError, RECORD_HEADER_BYTES, Record, decode_frame, decode_header};
use crate::sealed_index::{Floor, Lookup, SealedBounds, SealedIndex};
use crate::storage::{OpenMode, Storage, StorageFile, read_full_at};

/// Extension of segment data files.
pub(crate) const LOG_EXTENSION: &str = "log";
/// Extension of offset index files.
pub(crate) const INDEX_EXTENSION: &str = "index";
/// Extension of time index files.
pub(crate) const TIME_INDEX_EXTENSION: &str = "timeindex";
const BASE_OFFSET_DIGITS: usize = 20;

/// The path of a segment's file with `extension`.
pub(crate) fn segment_path(dir: &Path, base_offset: u64, extension: &str) -> PathBuf {
    dir.join(format!(
        "{base_offset:0width$}.{extension}",
        width = BASE_OFFSET_DIGITS
    ))
}

/// The base offset and extension of a segment file name; `None` for any other file.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<(u64, &str)> {
    let (stem, extension) = name.split_once('.')?;
    let known = [LOG_EXTENSION, INDEX_EXTENSION, TIME_INDEX_EXTENSION].contains(&extension);
    let digits = stem.len() == BASE_OFFSET_DIGITS && stem.bytes().all(|b| b.is_ascii_digit());
    if !known || !digits {
        return None;
    }
    Some((stem.parse().ok()?, extension))
}

/// A segment of the log, shared by the writer and readers.
///
/// Invariant: the file holds the frames of offsets `base_offset, base_offset + 1, ...` back to
/// back from byte 0; the visible records `[base_offset, next_offset)` take bytes
/// `[0, size_bytes)`. Only the writer changes the counters, and readers never look past them.
/// Thread-safe: every method takes `&self`.
///
/// Descriptors: the segment keeps its `.log` open ("pinned") while it may be written to; once
/// it is sealed and released ([`Segment::release_file`]) it holds no descriptor while idle: its
/// files are opened by the reads that need them, through the bounded cache of `open_files.rs`.
pub(crate) struct Segment {
    base_offset: u64,
    /// Its files, opened on demand once released.
    files: SegmentFiles,
    /// The open `.log` until the segment is released: always for the active segment.
    pinned: RwLock<Option<Arc<dyn StorageFile>>>,
    index: RwLock<SegmentIndex>,
    size_bytes: AtomicU64,
    next_offset: AtomicU64,
    timestamp_ms_max: AtomicI64,
    /// A damaged index file was already reported (once per segment, not once per lookup).
    index_damage_reported: AtomicBool,
}

/// The index of a segment, by its state.
///
/// Memory: the active segment's whole index, 16 bytes per `index_interval_bytes` of its frames
/// (512 KiB for a full default segment); a sealed segment's at most
/// `SEALED_INDEX_ENTRIES_IN_MEMORY_MAX` entries (2 KiB), see `sealed_index.rs`.
#[derive(Debug)]
pub(crate) enum SegmentIndex {
    /// Every entry, in memory: the active segment, which is appended to.
    Active(SparseIndex),
    /// A sample in memory, the rest in the index files: a sealed segment.
    Sealed(SealedIndex),
}

impl fmt::Debug for Segment {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Segment")
            .field("path", &self.path())
            .field("base_offset", &self.base_offset)
            .field("next_offset", &self.next_offset())
            .field("size_bytes", &self.size_bytes())
            .finish()
    }
}

/// What a scan of a segment's frames found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Index entries due for the frames scanned.
    pub(crate) entries: Vec<IndexEntry>,
    /// The index builder after the last good frame, to go on appending.
    pub(crate) builder: IndexBuilder,
    /// End of the last good frame.
    pub(crate) size_bytes: u64,
    /// One past the offset of the last good frame.
    pub(crate) next_offset: u64,
    /// The first bad frame, when the scan stopped at one rather than at the end.
    pub(crate) stop: Option<BadFrame>,
}

/// A frame that failed a check, where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadFrame {
    /// Byte position of the frame in the segment file.
    pub(crate) position: u64,
    /// The offset the frame should have held.
    pub(crate) expected_offset: u64,
    /// What was wrong.
    pub(crate) reason: BadFrameReason,
}

/// Why a frame is bad.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadFrameReason {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("frame holds offset {found}, expected {expected}")]
    OffsetMismatch { found: u64, expected: u64 },
    #[error("the file ends at byte {file_bytes}, before the frame's end")]
    FileShort { file_bytes: u64 },
    #[error("frame would end past the segment size limit of {SEGMENT_FILE_BYTES_MAX} bytes")]
    SegmentTooLarge,
}

/// Why a cursor stopped early.
#[derive(Debug)]
pub(crate) enum CursorError {
    Io(io::Error),
    Bad(BadFrame),
}

/// One frame read by a [`FrameCursor`], borrowing the cursor's buffer.
#[derive(Debug)]
pub(crate) struct FrameRef<'a> {
    pub(crate) offset: u64,
    pub(crate) timestamp_ms: i64,
    pub(crate) payload: &'a [u8],
    pub(crate) position: u64,
    pub(crate) frame_bytes: u64,
}

/// Reads consecutive frames of one file between two byte positions, checking each frame's CRC
/// and that offsets follow one another, with one positioned read per chunk.
pub(crate) struct FrameCursor<'a> {
    file: &'a dyn StorageFile,
    /// Position of the next frame.
    position: u64,
    /// Frames must end at or before this position.
    end: u64,
    expected_offset: u64,
    buffer: Vec<u8>,
    /// File position of `buffer[0]`.
    buffer_position: u64,
    /// Bytes the next positioned read fetches (at least; more when a frame needs it).
    chunk_bytes: usize,
}

impl<'a> FrameCursor<'a> {
    /// A cursor over `[position, end)` whose first frame must hold `expected_offset`.
    pub(crate) fn new(
        file: &'a dyn StorageFile,
        position: u64,
        end: u64,
        expected_offset: u64,
    ) -> Self {
        FrameCursor {
            file,
            position,
            end,
            expected_offset,
            buffer: Vec::new(),
            buffer_position: 0,
            chunk_bytes: READ_CHUNK_BYTES,
        }
    }

    /// Makes the first positioned read small ([`READ_CHUNK_BYTES_FIRST`]), each next one
    /// twice the last: for a read of a few records (a key stream's reads are of one each),
    /// which would otherwise copy a whole chunk per record.
    fn starting_small(mut self) -> Self {
        self.chunk_bytes = READ_CHUNK_BYTES_FIRST;
        self
    }

    /// The next frame; `Ok(None)` at `end`.
    pub(crate) fn next_frame(&mut self) -> Result<Option<FrameRef<'_>>, CursorError> {
        if self.position >= self.end {
            return Ok(None);
        }
        let remaining = usize::try_from(self.end - self.position).unwrap_or(usize::MAX);
        let header_bytes = remaining.min(RECORD_HEADER_BYTES);
        self.fill(header_bytes)?;
        let header = decode_header(self.window(header_bytes)).map_err(|e| self.bad(e.into()))?;
        let frame_bytes = header.frame_bytes();
        if self.position + frame_bytes as u64 > SEGMENT_FILE_BYTES_MAX {
            return Err(self.bad(BadFrameReason::SegmentTooLarge));
        }
        if frame_bytes > remaining {
            let error = FrameError::ShortFrame {
                needed: frame_bytes,
                available: remaining,
            };
            return Err(self.bad(error.into()));
        }
        self.fill(frame_bytes)?;
        let (offset, timestamp_ms) = {
            let frame = decode_frame(self.window(frame_bytes)).map_err(|e| self.bad(e.into()))?;
            (frame.offset, frame.timestamp_ms)
        };
        if offset != self.expected_offset {
            let reason = BadFrameReason::OffsetMismatch {
                found: offset,
                expected: self.expected_offset,
            };
            return Err(self.bad(reason));
        }
        let position = self.position;
        self.position += frame_bytes as u64;
        self.expected_offset += 1;
        let start = (position - self.buffer_position) as usize;
        Ok(Some(FrameRef {
            offset,
            timestamp_ms,
            payload: &self.buffer[start + RECORD_HEADER_BYTES..start + frame_bytes],
            position,
            frame_bytes: frame_bytes as u64,
        }))
    }

    /// Checks the next frame without moving past it; returns its timestamp, `None` at `end`.
    /// The frame's bytes stay buffered for the `next_frame` that follows.
    pub(crate) fn check_next_frame(&mut self) -> Result<Option<i64>, CursorError> {
        let (position, expected_offset) = (self.position, self.expected_offset);
        let timestamp_ms = self
            .next_frame()
            .map(|frame| frame.map(|frame| frame.timestamp_ms));
        self.position = position;
        self.expected_offset = expected_offset;
        timestamp_ms
    }

    /// Position of the next frame (the end of the last good one).
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// Offset the next frame must hold.
    pub(crate) fn expected_offset(&self) -> u64 {
        self.expected_offset
    }

    fn bad(&self, reason: BadFrameReason) -> CursorError {
        CursorError::Bad(BadFrame {
            position: self.position,
            expected_offset: self.expected_offset,
            reason,
        })
    }

    fn window(&self, bytes: usize) -> &[u8] {
        let start = (self.position - self.buffer_position) as usize;
        &self.buffer[start..start + bytes]
    }

    /// Makes the buffer hold `[position, position + needed)`; `needed` is at most what remains
    /// before `end`.
    fn fill(&mut self, needed: usize) -> Result<(), CursorError> {
        let buffered_end = self.buffer_position + self.buffer.len() as u64;
        if self.position >= self.buffer_position && self.position + needed as u64 <= buffered_end {
            return Ok(());
        }
        let remaining = usize::try_from(self.end - self.position).unwrap_or(usize::MAX);
        let chunk_bytes = needed.max(self.chunk_bytes).min(remaining);
        self.chunk_bytes = (self.chunk_bytes * 2).min(READ_CHUNK_BYTES);
        self.buffer.clear();
        self.buffer.resize(chunk_bytes, 0);
        self.buffer_position = self.position;
        let read =
            read_full_at(self.file, &mut self.buffer, self.position).map_err(CursorError::Io)?;
        self.buffer.truncate(read);
        if read < needed {
            let file_bytes = self.position + read as u64;
            return Err(self.bad(BadFrameReason::FileShort { file_bytes }));
        }
        Ok(())
    }
}

/// Scans the frames of `file` from byte 0 up to `file_bytes`, building the index as it goes, and
/// stops at the end or at the first bad frame. Never fails on bad bytes, only on I/O.
pub(crate) fn scan_segment(
    file: &dyn StorageFile,
    base_offset: u64,
    file_bytes: u64,
    index_interval_bytes: u32,
) -> io::Result<Scan> {
    let mut builder = IndexBuilder::new(index_interval_bytes);
    let mut entries = Vec::new();
    let mut cursor = FrameCursor::new(file, 0, file_bytes, base_offset);
    let stop = loop {
        match cursor.next_frame() {
            Ok(Some(frame)) => {
                // The cursor keeps positions within SEGMENT_FILE_BYTES_MAX, which fits in u32,
                // and a segment holds fewer records than bytes.
                let relative_offset = u32::try_from(frame.offset - base_offset)
                    .expect("records in a segment fit in u32");
                let position = u32::try_from(frame.position).expect("positions fit in u32");
                let entry = builder.observe(
                    relative_offset,
                    position,
                    frame.frame_bytes,
                    frame.timestamp_ms,
                );
                entries.extend(entry);
            }
            Ok(None) => break None,
            Err(CursorError::Bad(bad)) => break Some(bad),
            Err(CursorError::Io(error)) => return Err(error),
        }
    };
    Ok(Scan {
        entries,
        builder,
        size_bytes: cursor.position(),
        next_offset: cursor.expected_offset(),
        stop,
    })
}

/// Limits of one `read` call, shared across the segments it visits.
#[derive(Debug)]
pub(crate) struct ReadLimits {
    records_max: usize,
    bytes_max: usize,
    bytes_taken: usize,
    /// A record did not fit in `bytes_max`: the read is over even below `records_max`.
    bytes_exhausted: bool,
}

impl ReadLimits {
    pub(crate) fn new(records_max: usize, bytes_max: usize) -> Self {
        ReadLimits {
            records_max,
            bytes_max,
            bytes_taken: 0,
            bytes_exhausted: false,
        }
    }

    /// Whether the read wants at most a few more records (reading them starts small).
    fn few_left(&self, count: usize) -> bool {
        self.records_max.saturating_sub(count) <= READ_FEW_RECORDS
    }

    /// Whether the read is done with `count` records.
    pub(crate) fn is_full(&self, count: usize) -> bool {
        count >= self.records_max || self.bytes_exhausted
    }

    /// Takes a payload of `payload_bytes` when it fits; the first record always does.
    fn take(&mut self, count: usize, payload_bytes: usize) -> bool {
        let bytes_taken = self.bytes_taken.saturating_add(payload_bytes);
        if count > 0 && bytes_taken > self.bytes_max {
            self.bytes_exhausted = true;
            return false;
        }
        self.bytes_taken = bytes_taken;
        true
    }
}

impl Segment {
    /// A segment over `file`, open (pinned until released), whose first `size_bytes` hold
    /// `[base_offset, next_offset)`; `files` opens it (and its index files) once released.
    pub(crate) fn new(
        files: SegmentFiles,
        base_offset: u64,
        file: Arc<dyn StorageFile>,
        index: SegmentIndex,
        size_bytes: u64,
        next_offset: u64,
        timestamp_ms_max: i64,
    ) -> Segment {
        assert!(
            next_offset >= base_offset,
            "a segment cannot end before its base"
        );
        assert!(size_bytes <= SEGMENT_FILE_BYTES_MAX);
        Segment {
            base_offset,
            files,
            pinned: RwLock::new(Some(file)),
            index: RwLock::new(index),
            size_bytes: AtomicU64::new(size_bytes),
            next_offset: AtomicU64::new(next_offset),
            timestamp_ms_max: AtomicI64::new(timestamp_ms_max),
            index_damage_reported: AtomicBool::new(false),
        }
    }

    /// Creates an empty segment file at `base_offset` (the caller fsyncs the directory).
    pub(crate) fn create(
        storage: &Arc<dyn Storage>,
        dir: &Path,
        base_offset: u64,
    ) -> Result<Segment, LogError> {
        let path = segment_path(dir, base_offset, LOG_EXTENSION);
        let file = storage
            .open(&path, OpenMode::CreateNew)
            .map_err(|source| LogError::io("create", &path, source))?;
        let index = SegmentIndex::Active(SparseIndex::default());
        Ok(Segment::new(
            SegmentFiles::new(Arc::clone(storage), path),
            base_offset,
            file,
            index,
            0,
            base_offset,
            i64::MIN,
        ))
    }

    pub(crate) fn base_offset(&self) -> u64 {
        self.base_offset
    }

    pub(crate) fn path(&self) -> &Path {
        self.files.log_path()
    }

    /// The `.log` file of a segment not yet released: the active segment's, for the writer.
    pub(crate) fn pinned_file(&self) -> Arc<dyn StorageFile> {
        let pinned = self.pinned.read().unwrap_or_else(PoisonError::into_inner);
        let file = pinned
            .as_ref()
            .expect("only a sealed segment is released, and the writer never writes to one");
        Arc::clone(file)
    }

    /// The `.log` file, open, for a read: the pinned one, or one from the cache of open files.
    fn open_file(&self) -> Result<Arc<dyn StorageFile>, LogError> {
        if let Some(file) = &*self.pinned.read().unwrap_or_else(PoisonError::into_inner) {
            return Ok(Arc::clone(file));
        }
        self.files
            .open(FileKind::Log)
            .map_err(|source| LogError::io("open", self.path(), source))
    }

    /// Stops holding the `.log` open (it is closed once no read uses it): from here on reads
    /// open it on demand, through the cache of open files. Only for a sealed segment, which
    /// nothing writes to again.
    pub(crate) fn release_file(&self) {
        debug_assert!(self.is_sealed(), "only a sealed segment is released");
        self.pinned
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Whether the segment was sealed (its index is no longer appended to).
    pub(crate) fn is_sealed(&self) -> bool {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        matches!(&*index, SegmentIndex::Sealed(_))
    }

    /// Bytes of the visible records.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }

    /// One past the last visible record.
    pub(crate) fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    /// Largest timestamp of the visible records (`i64::MIN` when there is none).
    pub(crate) fn timestamp_ms_max(&self) -> i64 {
        self.timestamp_ms_max.load(Ordering::Acquire)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.next_offset() == self.base_offset
    }

    /// Paths of the `.index` and `.timeindex` files.
    pub(crate) fn index_paths(&self) -> [PathBuf; 2] {
        [
            self.files.path(FileKind::OffsetIndex),
            self.files.path(FileKind::TimeIndex),
        ]
    }

    /// Makes newly written records visible. Writer only, after the bytes are in the file.
    /// The counters are stored last, with Release, so a reader that sees them also sees the
    /// index entries and bytes they cover.
    pub(crate) fn publish(
        &self,
        entries: &[IndexEntry],
        size_bytes: u64,
        next_offset: u64,
        timestamp_ms_max: i64,
    ) {
        assert!(size_bytes >= self.size_bytes() && next_offset >= self.next_offset());
        if !entries.is_empty() {
            match &mut *self.index.write().unwrap_or_else(PoisonError::into_inner) {
                SegmentIndex::Active(index) => index.extend(entries),
                SegmentIndex::Sealed(_) => panic!("records published to a sealed segment"),
            }
        }
        self.timestamp_ms_max
            .fetch_max(timestamp_ms_max, Ordering::AcqRel);
        self.size_bytes.store(size_bytes, Ordering::Release);
        self.next_offset.store(next_offset, Ordering::Release);
    }

    /// Seals the segment once nothing more will be appended to it: writes both index files from
    /// the in-memory index and fsyncs them, then keeps only a sample of the index in memory and
    /// looks the rest up in the files. Writer only.
    ///
    /// When the files cannot be written the error is returned, and the segment is sealed anyway
    /// without them: lookups then scan from the sampled entries, slower but correct. Except
    /// when no descriptor was left to open them: then the segment stays unsealed, for the
    /// caller to seal again once descriptors are free.
    pub(crate) fn seal(&self) -> Result<(), LogError> {
        let (offset_index, time_index) =
            match &*self.index.read().unwrap_or_else(PoisonError::into_inner) {
                SegmentIndex::Active(index) => {
                    (index.encode_offset_index(), index.encode_time_index())
                }
                SegmentIndex::Sealed(_) => return Ok(()),
            };
        // Written outside the lock, so readers of this segment go on during the fsyncs.
        let [offset_path, time_path] = self.index_paths();
        let storage = &**self.files.storage();
        // Closed once written: lookups open them on demand.
        let written = write_whole_file(storage, &offset_path, &offset_index)
            .and_then(|()| write_whole_file(storage, &time_path, &time_index));
        if let Err(error) = &written
            && error.is_descriptor_exhaustion()
        {
            return written;
        }
        let files_written = written.is_ok();
        let bounds = SealedBounds {
            record_count: self.next_offset() - self.base_offset,
            file_bytes: self.size_bytes(),
            timestamp_ms_max: self.timestamp_ms_max(),
        };
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        if let SegmentIndex::Active(active) = &*index {
            // Only the writer seals and publishes, so this is the index the files were made of.
            *index =
                SegmentIndex::Sealed(SealedIndex::new(active.entries(), bounds, files_written));
        }
        written
    }

    /// Index entries held in memory.
    #[cfg(test)]
    pub(crate) fn index_entries_in_memory(&self) -> usize {
        match &*self.index.read().unwrap_or_else(PoisonError::into_inner) {
            SegmentIndex::Active(index) => index.entries().len(),
            SegmentIndex::Sealed(index) => index.entries_in_memory(),
        }
    }

    /// Appends visible records from `from` (which this segment holds) to `out`, below
    /// `limit_offset` and within `limits`; returns the offset after the last record appended.
    pub(crate) fn read_into(
        &self,
        from: u64,
        limit_offset: u64,
        limits: &mut ReadLimits,
        out: &mut Vec<Record>,
    ) -> Result<u64, LogError> {
        let limit_offset = limit_offset.min(self.next_offset());
        let relative_offset = self.relative(from);
        let floor = self.lookup(|index| match index {
            SegmentIndex::Active(index) => in_memory(index.floor_for_offset(relative_offset)),
            SegmentIndex::Sealed(index) => index.floor_for_offset(&self.files, relative_offset),
        });
        let file = self.open_file()?;
        let mut cursor = self.cursor_at(&*file, floor, false, limits.few_left(out.len()))?;
        let mut next = from;
        while next < limit_offset && !limits.is_full(out.len()) {
            let Some(frame) = cursor.next_frame().map_err(|e| self.cursor_error(e))? else {
                return Err(self.ends_early(cursor.position(), next));
            };
            if frame.offset < from {
                continue;
            }
            if !limits.take(out.len(), frame.payload.len()) {
                break;
            }
            out.push(Record {
                offset: frame.offset,
                timestamp_ms: frame.timestamp_ms,
                payload: frame.payload.to_vec(),
            });
            next = frame.offset + 1;
        }
        Ok(next)
    }

    /// The first visible offset below `limit_offset` whose timestamp is at or after
    /// `timestamp_ms`, if this segment holds one.
    pub(crate) fn offset_for_timestamp(
        &self,
        timestamp_ms: i64,
        limit_offset: u64,
    ) -> Result<Option<u64>, LogError> {
        let limit_offset = limit_offset.min(self.next_offset());
        let floor = self.lookup(|index| match index {
            SegmentIndex::Active(index) => in_memory(index.floor_for_timestamp(timestamp_ms)),
            SegmentIndex::Sealed(index) => index.floor_for_timestamp(&self.files, timestamp_ms),
        });
        let file = self.open_file()?;
        let mut cursor = self.cursor_at(&*file, floor, true, false)?;
        while cursor.expected_offset() < limit_offset {
            let Some(frame) = cursor.next_frame().map_err(|e| self.cursor_error(e))? else {
                return Err(self.ends_early(cursor.position(), cursor.expected_offset()));
            };
            if frame.timestamp_ms >= timestamp_ms {
                return Ok(Some(frame.offset));
            }
        }
        Ok(None)
    }

    fn relative(&self, offset: u64) -> u32 {
        u32::try_from(offset.saturating_sub(self.base_offset)).unwrap_or(u32::MAX)
    }

    /// Runs `search` on the index, reporting damage it found in the index files.
    fn lookup(&self, search: impl FnOnce(&SegmentIndex) -> Lookup) -> Option<Floor> {
        let lookup = search(&self.index.read().unwrap_or_else(PoisonError::into_inner));
        if let Some(why) = &lookup.damage {
            self.report_index_damage(why);
        }
        lookup.floor
    }

    fn report_index_damage(&self, why: &str) {
        // Once per segment: every later lookup in a damaged file falls back again and would warn.
        if self.index_damage_reported.swap(true, Ordering::Relaxed) {
            return;
        }
        let message = "an index entry does not fit the segment's frames (a damaged index file, or \
                       a damaged record); lookups there scan from an earlier entry instead, and \
                       reopening the log checks the index files and rebuilds damaged ones";
        tracing::warn!(segment = %self.path().display(), reason = why, "{message}");
    }

    /// A cursor from `floor`, or from the segment's start.
    ///
    /// The frame at the floor's entry must be the record the entry names and, when
    /// `check_timestamp` (a time lookup), not newer than the entry's `timestamp_ms_max`;
    /// otherwise the cursor starts from the floor's fallback instead. So an index entry that is
    /// out of place (a damaged index file) costs a longer scan, never a wrong record. The check
    /// reads nothing more: the frame stays buffered for the scan.
    fn cursor_at<'f>(
        &self,
        file: &'f dyn StorageFile,
        floor: Option<Floor>,
        check_timestamp: bool,
        small: bool,
    ) -> Result<FrameCursor<'f>, LogError> {
        let Some(floor) = floor else {
            return Ok(self.cursor_from(file, None, small));
        };
        let mut cursor = self.cursor_from(file, Some(floor.entry), small);
        let why = match cursor.check_next_frame() {
            Ok(Some(timestamp_ms))
                if !check_timestamp || timestamp_ms <= floor.entry.timestamp_ms_max =>
            {
                return Ok(cursor);
            }
            // Only in the active segment, for an entry published after the size was read: the
            // records there are past the lookup's limit anyway (sealed segments' entries are
            // checked to be within the file).
            Ok(None) => return Ok(cursor),
            Ok(Some(timestamp_ms)) => format!("its record is newer ({timestamp_ms} ms)"),
            // When the record there is damaged rather than the index, the scan from the fallback
            // reports it again, as corruption.
            Err(CursorError::Bad(bad)) => format!("at byte {}: {}", bad.position, bad.reason),
            Err(CursorError::Io(source)) => return Err(LogError::io("read", self.path(), source)),
        };
        self.report_index_damage(&format!("entry {:?}: {why}", floor.entry));
        Ok(self.cursor_from(file, floor.fallback, small))
    }

    /// A cursor over the visible bytes, from an index entry or from the start; its first
    /// positioned read small when `small` (a read of a few records).
    fn cursor_from<'f>(
        &self,
        file: &'f dyn StorageFile,
        entry: Option<IndexEntry>,
        small: bool,
    ) -> FrameCursor<'f> {
        let (position, offset) = entry.map_or((0, self.base_offset), |entry| {
            (
                u64::from(entry.position),
                self.base_offset + u64::from(entry.relative_offset),
            )
        });
        let cursor = FrameCursor::new(file, position, self.size_bytes(), offset);
        if small {
            cursor.starting_small()
        } else {
            cursor
        }
    }

    /// Maps a cursor failure on visible bytes: these were written and acknowledged, so a bad
    /// frame among them is corruption, never a torn tail.
    fn cursor_error(&self, error: CursorError) -> LogError {
        match error {
            CursorError::Io(source) => LogError::io("read", self.path(), source),
            CursorError::Bad(bad) => LogError::Corrupt {
                segment: self.path().to_owned(),
                position: bad.position,
                detail: bad.reason.to_string(),
            },
        }
    }

    fn ends_early(&self, position: u64, offset: u64) -> LogError {
        LogError::Corrupt {
            segment: self.path().to_owned(),
            position,
            detail: format!("the segment's frames end before offset {offset}"),
        }
    }
}

/// A lookup in an in-memory index, which never finds damage.
fn in_memory(entry: Option<IndexEntry>) -> Lookup {
    Lookup {
        floor: entry.map(Floor::in_memory),
        damage: None,
    }
}

/// Replaces the file at `path` with `bytes` and fsyncs it.
fn write_whole_file(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let file = storage
        .open(path, OpenMode::Create)
        .map_err(|source| LogError::io("create", path, source))?;
    file.write_all_at(bytes, 0)
        .map_err(|source| LogError::io("write", path, source))?;
    file.set_size_bytes(bytes.len() as u64)
        .map_err(|source| LogError::io("truncate", path, source))?;
    // Crash: without the fsync a sealed segment's index could come back short or zero-filled
    // after a crash. Either is caught by the sanity check on open and rebuilt, so this only saves
    // a rebuild; the directory entry is made durable by the caller's directory fsync.
    file.sync_data()
        .map_err(|source| LogError::io("fsync", path, source))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_file_names_sort_by_offset_and_parse_back() {
        // Goal: names are the base offset in 20 digits, and only the log's own names parse.
        // Method: format and parse a few names, and reject look-alikes.
        let path = segment_path(Path::new("/d"), 42, LOG_EXTENSION);
        assert_eq!(path, Path::new("/d/00000000000000000042.log"));
        assert_eq!(
            parse_segment_file_name("00000000000000000042.log"),
            Some((42, "log"))
        );
        assert_eq!(
            parse_segment_file_name(&format!("{}.timeindex", u64::MAX)),
            Some((u64::MAX, "timeindex"))
        );
        for name in [
            "42.log",
            "0000000000000000004x.log",
            "00000000000000000042.tmp",
            "durable.mark",
        ] {
            assert_eq!(parse_segment_file_name(name), None, "{name}");
        }
    }
}
