//! Opening a log: finding its segments, checking the sealed ones, and recovering the last one's
//! tail after a crash.
//!
//! Sealed segments were fsynced whole before the next segment was created, so they are trusted
//! to be complete: only their index files are checked (and rebuilt from the frames when they fail
//! a sanity check), plus their last frames, read from the last index entry to the end of the file.
//! The last segment is scanned from its start, always rebuilding its index, and cut at its first
//! bad frame — unless the durable mark says that frame was fsynced, which makes it corruption.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::durable_mark::DurableMark;
use crate::error::LogError;
use crate::index::{IndexBounds, IndexBuilder, SparseIndex, TIME_INDEX_ENTRY_BYTES};
use crate::limits::SEGMENT_FILE_BYTES_MAX;
use crate::open_files::SegmentFiles;
use crate::sealed_index::{SealedBounds, SealedIndex};
use crate::segment::{
    CursorError, FrameCursor, INDEX_EXTENSION, LOG_EXTENSION, Scan, Segment, SegmentIndex,
    TIME_INDEX_EXTENSION, parse_segment_file_name, scan_segment, segment_path,
};
use crate::storage::{OpenMode, Storage, StorageFile, read_full_at};

/// What recovery found when the log was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes cut from the tail of the last segment (torn or corrupt, after the durable mark).
    pub truncated_bytes: u64,
    /// Why the tail was cut, when it was.
    pub truncation_reason: Option<String>,
    /// The first offset dropped with the cut tail (the log's next offset after recovery), when
    /// a tail was cut. Records from it on were never fsynced, so never promised durable.
    pub first_truncated_offset: Option<u64>,
    /// The durable mark found on disk: every offset below it was known fsynced.
    pub durable_next_offset: u64,
    /// Sealed segments whose index files were missing or failed a sanity check and were rebuilt.
    pub indexes_rebuilt: usize,
}

/// A recovered log, ready to serve.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Never empty: the last one is the active segment.
    pub(crate) segments: Vec<Arc<Segment>>,
    /// The index builder of the active segment, positioned after its last record.
    pub(crate) builder: IndexBuilder,
    pub(crate) mark: DurableMark,
    pub(crate) report: RecoveryReport,
}

/// Opens the log in `dir`, creating it when missing, and recovers it (see the module doc).
pub(crate) fn recover(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    index_interval_bytes: u32,
) -> Result<Recovered, LogError> {
    let names = list_or_create_dir(&**storage, dir)?;
    let bases = segment_bases(&**storage, dir, &names);
    let (mut mark, mark_created) = DurableMark::open(&**storage, dir)?;
    if mark_created && !bases.is_empty() {
        let dir = dir.display();
        let message = "durable mark missing: this open cannot tell corruption from a torn tail";
        tracing::warn!(%dir, "{message}");
    }
    let mut report = RecoveryReport {
        durable_next_offset: mark.durable_next_offset(),
        ..RecoveryReport::default()
    };
    let mut segments = Vec::with_capacity(bases.len().max(1));
    for pair in bases.windows(2) {
        let segment = open_sealed(
            storage,
            dir,
            pair[0],
            pair[1],
            index_interval_bytes,
            &mut report,
        )?;
        segments.push(Arc::new(segment));
    }
    let (last, builder) = match bases.last() {
        Some(base) => recover_last(
            storage,
            dir,
            *base,
            index_interval_bytes,
            &mark,
            &mut report,
        )?,
        None => create_first(storage, dir, &mark, index_interval_bytes)?,
    };
    make_durable(&**storage, dir, &last, &mut mark)?;
    segments.push(Arc::new(last));
    Ok(Recovered {
        segments,
        builder,
        mark,
        report,
    })
}

/// Fsyncs the recovered last segment, advances the mark over it, and fsyncs the mark and the
/// directory.
fn make_durable(
    storage: &dyn Storage,
    dir: &Path,
    last: &Segment,
    mark: &mut DurableMark,
) -> Result<(), LogError> {
    // Crash: recovery kept every intact record, but after a process crash some may still be only
    // in the page cache; fsyncing them lets the mark cover them, so the next recovery can tell
    // damage to them from a torn tail. The same fsync makes a cut tail durable (see
    // `recover_last`) before anything is appended after the cut.
    let path = last.path().to_path_buf();
    last.pinned_file()
        .sync_data()
        .map_err(|source| LogError::io("fsync", &path, source))?;
    mark.advance(last.next_offset())
        .map_err(|source| LogError::io("write", mark.path(), source))?;
    // Once per open, so the mark on disk is not far behind; see durable_mark.rs for why the mark
    // is otherwise not fsynced.
    mark.sync()
        .map_err(|source| LogError::io("fsync", mark.path(), source))?;
    // Crash: the last segment and the mark are directory entries, and records fsynced into
    // that segment are lost with its entry. Always, not only when this open created them: a
    // run that crashed between creating one (a first segment, a mark, a rolled segment) and
    // the directory's fsync left an entry that looks permanent but is not.
    storage
        .sync_dir(dir)
        .map_err(|source| LogError::io("fsync", dir, source))?;
    Ok(())
}

/// Lists `dir`, creating it (and fsyncing its parent) when missing. An existing `dir` is
/// trusted to be durable in its parent: keel makes each log's directory with the topic or
/// subscription that holds it, durably, before any log is opened in it.
fn list_or_create_dir(storage: &dyn Storage, dir: &Path) -> Result<Vec<String>, LogError> {
    match storage.list_dir(dir) {
        Ok(names) => Ok(names),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            storage
                .create_dir_all(dir)
                .map_err(|source| LogError::io("create", dir, source))?;
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            // Crash: the new directory's entry in its parent must be durable before records
            // fsynced inside it are acknowledged.
            storage
                .sync_dir(parent)
                .map_err(|source| LogError::io("fsync", parent, source))?;
            Ok(Vec::new())
        }
        Err(source) => Err(LogError::io("list", dir, source)),
    }
}

/// Base offsets of the segments (`.log` files), sorted; removes index files without a `.log`.
fn segment_bases(storage: &dyn Storage, dir: &Path, names: &[String]) -> Vec<u64> {
    let parsed: Vec<(u64, &str, &String)> = names
        .iter()
        .filter_map(|name| {
            parse_segment_file_name(name).map(|(base, extension)| (base, extension, name))
        })
        .collect();
    let logs: BTreeSet<u64> = parsed
        .iter()
        .filter(|(_, extension, _)| *extension == LOG_EXTENSION)
        .map(|(base, ..)| *base)
        .collect();
    for (base, _, name) in parsed.iter().filter(|(base, ..)| !logs.contains(base)) {
        // Retention deletes a segment's `.log` first, so a crash can leave its index files
        // behind. They describe nothing; remove them (no fsync: if the removal is lost, it is
        // simply done again on the next open).
        let path = dir.join(name);
        let shown = path.display();
        let message = "removing an index file without its segment";
        tracing::info!(path = %shown, base_offset = base, "{message}");
        if let Err(error) = storage.remove_file(&path) {
            tracing::warn!(path = %shown, %error, "could not remove an orphaned index file");
        }
    }
    logs.into_iter().collect()
}

/// A brand new log: one empty segment at offset 0. The caller fsyncs the directory.
fn create_first(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    mark: &DurableMark,
    index_interval_bytes: u32,
) -> Result<(Segment, IndexBuilder), LogError> {
    if mark.durable_next_offset() > 0 {
        return Err(LogError::Corrupt {
            segment: segment_path(dir, 0, LOG_EXTENSION),
            position: 0,
            detail: format!(
                "no segment file is left, but the durable mark says offsets below {} were fsynced",
                mark.durable_next_offset()
            ),
        });
    }
    Ok((
        Segment::create(storage, dir, 0)?,
        IndexBuilder::new(index_interval_bytes),
    ))
}

fn open_existing(
    storage: &dyn Storage,
    path: &Path,
) -> Result<(Arc<dyn StorageFile>, u64), LogError> {
    let file = storage
        .open(path, OpenMode::Existing)
        .map_err(|source| LogError::io("open", path, source))?;
    let file_bytes = file
        .size_bytes()
        .map_err(|source| LogError::io("stat", path, source))?;
    Ok((file, file_bytes))
}

fn corrupt(segment: &Path, position: u64, detail: String) -> LogError {
    LogError::Corrupt {
        segment: segment.to_path_buf(),
        position,
        detail,
    }
}

/// Opens a sealed segment holding `[base_offset, next_base_offset)`, loading its index files or
/// rebuilding them. Any bad frame in it is corruption: it was fsynced before the next segment
/// existed.
fn open_sealed(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    base_offset: u64,
    next_base_offset: u64,
    index_interval_bytes: u32,
    report: &mut RecoveryReport,
) -> Result<Segment, LogError> {
    let path = segment_path(dir, base_offset, LOG_EXTENSION);
    let (file, file_bytes) = open_existing(&**storage, &path)?;
    let record_count = next_base_offset - base_offset;
    if file_bytes == 0 || file_bytes > SEGMENT_FILE_BYTES_MAX || record_count > u64::from(u32::MAX)
    {
        let detail = format!(
            "a sealed segment of {file_bytes} bytes cannot hold offsets \
             [{base_offset}, {next_base_offset})"
        );
        return Err(corrupt(&path, 0, detail));
    }
    let bounds = IndexBounds {
        record_count,
        file_bytes,
    };
    let checked = match load_index(&**storage, &path, bounds) {
        Ok(index) => check_tail(&*file, &path, base_offset, bounds, index)?,
        Err(why) => Err(why),
    };
    let segment = match checked {
        Ok((index, timestamp_ms_max)) => {
            let sealed_bounds = SealedBounds {
                record_count,
                file_bytes,
                timestamp_ms_max,
            };
            // The whole index was read to check it; only a sample stays in memory.
            let index = SealedIndex::new(index.entries(), sealed_bounds, true);
            Segment::new(
                SegmentFiles::new(Arc::clone(storage), path),
                base_offset,
                file,
                SegmentIndex::Sealed(index),
                file_bytes,
                next_base_offset,
                timestamp_ms_max,
            )
        }
        Err(why) => {
            let segment = path.display();
            tracing::warn!(%segment, reason = %why, "rebuilding the segment's index files");
            report.indexes_rebuilt += 1;
            rebuild_sealed(
                storage,
                path,
                file,
                base_offset,
                bounds,
                index_interval_bytes,
            )?
        }
    };
    // An idle sealed segment holds no descriptor: a log of many segments opens with few.
    segment.release_file();
    Ok(segment)
}

/// Reads both index files of the segment at `log_path` and checks them against `bounds`;
/// returns them decoded.
fn load_index(
    storage: &dyn Storage,
    log_path: &Path,
    bounds: IndexBounds,
) -> Result<SparseIndex, String> {
    let offset_index = read_small_file(
        storage,
        &log_path.with_extension(INDEX_EXTENSION),
        bounds.offset_index_bytes_max(),
    )?;
    let time_index = read_small_file(
        storage,
        &log_path.with_extension(TIME_INDEX_EXTENSION),
        bounds
            .record_count
            .saturating_mul(TIME_INDEX_ENTRY_BYTES as u64),
    )?;
    SparseIndex::decode(&offset_index, &time_index, bounds)
}

/// The whole content of the file at `path`, refusing one over `bytes_max` before reading it.
fn read_small_file(storage: &dyn Storage, path: &Path, bytes_max: u64) -> Result<Vec<u8>, String> {
    let describe = |error: io::Error| format!("{}: {error}", path.display());
    let file = storage.open(path, OpenMode::Existing).map_err(describe)?;
    let file_bytes = file.size_bytes().map_err(describe)?;
    if file_bytes > bytes_max {
        return Err(format!(
            "{} is {file_bytes} bytes, more than the {bytes_max} it can need",
            path.display()
        ));
    }
    let mut bytes = vec![0; file_bytes as usize];
    let read = read_full_at(&*file, &mut bytes, 0).map_err(describe)?;
    bytes.truncate(read);
    Ok(bytes)
}

/// Reads the frames after the last index entry to the end of the file. They must be intact and
/// end exactly at the last offset; this also finds the segment's largest timestamp. The inner
/// `Err` says why the index does not fit the frames (then it is rebuilt).
fn check_tail(
    file: &dyn StorageFile,
    path: &Path,
    base_offset: u64,
    bounds: IndexBounds,
    index: SparseIndex,
) -> Result<Result<(SparseIndex, i64), String>, LogError> {
    let last = index
        .last()
        .expect("decode refuses an empty index for a segment with records");
    let start_offset = base_offset + u64::from(last.relative_offset);
    let mut cursor = FrameCursor::new(
        file,
        u64::from(last.position),
        bounds.file_bytes,
        start_offset,
    );
    let mut timestamp_ms_max = last.timestamp_ms_max;
    loop {
        match cursor.next_frame() {
            Ok(Some(frame)) => timestamp_ms_max = timestamp_ms_max.max(frame.timestamp_ms),
            Ok(None) => break,
            Err(CursorError::Bad(bad)) => {
                return Ok(Err(format!("at byte {}: {}", bad.position, bad.reason)));
            }
            Err(CursorError::Io(source)) => return Err(LogError::io("read", path, source)),
        }
    }
    let next_offset = base_offset + bounds.record_count;
    if cursor.expected_offset() != next_offset {
        return Ok(Err(format!(
            "frames end at offset {}, not {next_offset}",
            cursor.expected_offset()
        )));
    }
    Ok(Ok((index, timestamp_ms_max)))
}

/// Rebuilds a sealed segment's index from its frames and rewrites the index files.
fn rebuild_sealed(
    storage: &Arc<dyn Storage>,
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    base_offset: u64,
    bounds: IndexBounds,
    index_interval_bytes: u32,
) -> Result<Segment, LogError> {
    let scan = scan_segment(&*file, base_offset, bounds.file_bytes, index_interval_bytes)
        .map_err(|source| LogError::io("read", &path, source))?;
    if let Some(bad) = scan.stop {
        let detail = format!(
            "{} (offset {} of a sealed segment)",
            bad.reason, bad.expected_offset
        );
        return Err(corrupt(&path, bad.position, detail));
    }
    let next_offset = base_offset + bounds.record_count;
    if scan.next_offset != next_offset {
        let detail = format!(
            "the sealed segment ends at offset {}, but the next segment starts at {next_offset}",
            scan.next_offset
        );
        return Err(corrupt(&path, scan.size_bytes, detail));
    }
    // The scan ran to the end of the file (no bad frame) and to `next_offset` (checked).
    let segment = segment_from_scan(storage, base_offset, path, file, &scan);
    if let Err(error) = segment.seal() {
        // Index files are caches: lookups scan from the in-memory sample instead, slower but
        // correct; the next open rebuilds again.
        let shown = segment.path().display();
        tracing::warn!(segment = %shown, %error, "could not rewrite index files");
    }
    Ok(segment)
}

/// Scans the last segment from its start and cuts it at its first bad frame — unless that frame
/// is below the durable mark, which makes it corruption and leaves the file untouched.
/// A segment whose in-memory index is rebuilt from a scan of its frames.
fn segment_from_scan(
    storage: &Arc<dyn Storage>,
    base_offset: u64,
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    scan: &Scan,
) -> Segment {
    let mut index = SparseIndex::default();
    index.extend(&scan.entries);
    let timestamp_ms_max = scan.builder.timestamp_ms_max();
    let index = SegmentIndex::Active(index);
    Segment::new(
        SegmentFiles::new(Arc::clone(storage), path),
        base_offset,
        file,
        index,
        scan.size_bytes,
        scan.next_offset,
        timestamp_ms_max,
    )
}

fn recover_last(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    base_offset: u64,
    index_interval_bytes: u32,
    mark: &DurableMark,
    report: &mut RecoveryReport,
) -> Result<(Segment, IndexBuilder), LogError> {
    let path = segment_path(dir, base_offset, LOG_EXTENSION);
    let (file, file_bytes) = open_existing(&**storage, &path)?;
    let scan = scan_segment(&*file, base_offset, file_bytes, index_interval_bytes)
        .map_err(|source| LogError::io("read", &path, source))?;
    let durable_next_offset = mark.durable_next_offset();
    if scan.next_offset < durable_next_offset {
        let (position, what) = match &scan.stop {
            Some(bad) => (bad.position, bad.reason.to_string()),
            None => (scan.size_bytes, "the segment ends".to_owned()),
        };
        let detail = format!(
            "{what} at offset {}, below the durable mark {durable_next_offset}: \
             records that were fsynced are damaged or missing",
            scan.next_offset
        );
        return Err(corrupt(&path, position, detail));
    }
    if let Some(bad) = &scan.stop {
        let truncated_bytes = file_bytes - bad.position;
        tracing::warn!(
            segment = %path.display(),
            position = bad.position,
            first_dropped_offset = bad.expected_offset,
            truncated_bytes,
            reason = %bad.reason,
            "cutting the log's tail at its first bad frame (records past it were never fsynced)"
        );
        // Crash: the cut must be durable before anything is appended after it. Otherwise a
        // crash could bring back old bytes past the new records, and a stale but intact frame
        // that happens to carry the next expected offset would be served as a record. `recover`
        // fsyncs this file before the log is handed out, which makes the cut durable.
        file.set_size_bytes(bad.position)
            .map_err(|source| LogError::io("truncate", &path, source))?;
        report.truncated_bytes = truncated_bytes;
        report.truncation_reason = Some(format!(
            "{} at byte {} of {} (offset {})",
            bad.reason,
            bad.position,
            path.display(),
            bad.expected_offset
        ));
        report.first_truncated_offset = Some(bad.expected_offset);
    }
    let segment = segment_from_scan(storage, base_offset, path, file, &scan);
    Ok((segment, scan.builder))
}
