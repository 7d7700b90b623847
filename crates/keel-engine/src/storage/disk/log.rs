//! [`RecordLog`] on local disk: a `keel-log` log in a directory, and the atomic rewrite that
//! compacts a log of operations.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use keel_log::{Log, LogConfig, LogError};
use tokio::sync::watch;

use super::files::{io, sync_dir};
use crate::storage::{Record, RecordLog, StorageError, Trimmed};

/// A `keel-log` log, and the next offset for readers that wait at its end.
///
/// Invariant (the `RecordLog` contract): after any failed append, sync or rewrite, the log
/// takes no more writes until it is opened again, except after a commit refused for a full
/// device (keel-log cut and fsynced it away: nothing of it is kept, and nothing is left
/// buffered) or for want of a file descriptor to roll to a new segment (nothing was written,
/// nothing is left buffered). keel-log poisons itself after a failed write or fsync, but not after every
/// refused append (a batch over its pending buffer, a record too large): frames buffered
/// before the refusal would otherwise be committed by the next append.
pub(crate) struct DiskLog {
    log: Log,
    config: LogConfig,
    next_offset: watch::Sender<u64>,
    truncated_at_open_bytes: u64,
    /// The first failure, once there was one.
    poisoned: OnceLock<String>,
}

impl DiskLog {
    /// Opens the log in `dir`, recovering its tail, after resolving a rewrite that a crash
    /// interrupted. The directory must exist: it is made with what holds the log (a topic, a
    /// subscription), so a missing one was lost, and an empty log in its place would silently
    /// serve without its records. `what` names the log in that error.
    pub(crate) fn open(dir: &Path, config: LogConfig, what: &str) -> Result<Self, StorageError> {
        finish_rewrite(dir)?;
        if !dir.is_dir() {
            let detail = format!(
                "the {what}'s directory is missing (lost in a crash, or removed); restore it \
                 from a backup, or create it empty to go on without its records"
            );
            return Err(StorageError::Io {
                op: "open",
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, detail),
            });
        }
        Self::open_or_create(dir, config)
    }

    /// Opens the log in `dir`, creating the directory if missing (a new log).
    pub(crate) fn open_or_create(dir: &Path, config: LogConfig) -> Result<Self, StorageError> {
        let (log, report) = Log::open(dir, config.clone()).map_err(storage_error)?;
        if report.truncated_bytes > 0 {
            tracing::warn!(
                path = %dir.display(),
                bytes = report.truncated_bytes,
                reason = report.truncation_reason.as_deref().unwrap_or(""),
                "recovery cut a torn tail"
            );
        }
        let next_offset = watch::Sender::new(log.next_offset());
        Ok(DiskLog {
            log,
            config,
            next_offset,
            truncated_at_open_bytes: report.truncated_bytes,
            poisoned: OnceLock::new(),
        })
    }

    /// Fails once the log is poisoned.
    fn check_writable(&self) -> Result<(), StorageError> {
        match self.poisoned.get() {
            Some(cause) => Err(StorageError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Poisons the log with `error` (see the invariant) and returns it.
    fn poison(&self, error: StorageError) -> StorageError {
        let _ = self.poisoned.set(error.to_string());
        error
    }
}

impl RecordLog for DiskLog {
    fn append(
        &self,
        timestamp_ms: i64,
        payloads: &[&[u8]],
        sync: bool,
    ) -> Result<u64, StorageError> {
        self.check_writable()?;
        let failed = |error| match error {
            full @ LogError::StorageFull { .. } => storage_error(full),
            exhausted @ LogError::DescriptorsExhausted { .. } => storage_error(exhausted),
            error => self.poison(storage_error(error)),
        };
        let mut first_offset = None;
        for payload in payloads {
            let offset = self.log.append(timestamp_ms, payload).map_err(failed)?;
            first_offset.get_or_insert(offset);
        }
        let next_offset = self.log.commit(sync).map_err(failed)?;
        self.next_offset.send_replace(next_offset);
        Ok(first_offset.unwrap_or(next_offset))
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.check_writable()?;
        self.log
            .sync()
            .map_err(|error| self.poison(storage_error(error)))
    }

    fn read(
        &self,
        from: u64,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Record>, StorageError> {
        let records = self
            .log
            .read(from, records_max, bytes_max)
            .map_err(storage_error)?;
        Ok(records
            .into_iter()
            .map(|record| Record {
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                payload: record.payload,
            })
            .collect())
    }

    fn start_offset(&self) -> u64 {
        self.log.start_offset()
    }

    fn next_offset(&self) -> u64 {
        self.log.next_offset()
    }

    fn watch_next_offset(&self) -> watch::Receiver<u64> {
        self.next_offset.subscribe()
    }

    fn size_bytes(&self) -> u64 {
        self.log.size_bytes()
    }

    fn truncated_at_open_bytes(&self) -> u64 {
        self.truncated_at_open_bytes
    }

    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<u64, StorageError> {
        self.log
            .offset_for_timestamp(timestamp_ms)
            .map_err(storage_error)
    }

    fn apply_retention(
        &self,
        now_ms: i64,
        age_ms_max: Option<u64>,
        bytes_max: Option<u64>,
    ) -> Result<Trimmed, StorageError> {
        let report = self
            .log
            .apply_retention(now_ms, age_ms_max, bytes_max)
            .map_err(storage_error)?;
        Ok(Trimmed {
            segments: report.segments_deleted,
            bytes: report.bytes_deleted,
        })
    }

    fn remove_before(&self, offset: u64) -> Result<Trimmed, StorageError> {
        let report = self.log.remove_before(offset).map_err(storage_error)?;
        Ok(Trimmed {
            segments: report.segments_deleted,
            bytes: report.bytes_deleted,
        })
    }

    fn rewrite(&mut self, timestamp_ms: i64, payloads: &[&[u8]]) -> Result<(), StorageError> {
        let dir = self.log.dir().to_path_buf();
        let (fresh, old) = rewrite_dirs(&dir);
        let _ = std::fs::remove_dir_all(&fresh);
        write_fresh(&fresh, self.config.clone(), timestamp_ms, payloads)?;
        // The swap: two renames in one directory, made durable together by the fsync of the
        // parent below, before the old log is removed. The new log is durable whole before
        // them (`write_fresh`). A crash may keep neither rename, the first alone, or both;
        // `finish_rewrite` resolves each at the next open.
        std::fs::rename(&dir, &old).map_err(io("rename", &dir))?;
        if let Err(source) = std::fs::rename(&fresh, &dir) {
            let error = StorageError::Io {
                op: "rename",
                path: fresh,
                source,
            };
            // Put the old log back: it is the one still in use. If that fails too, its files
            // are no longer where the next open looks: writing on would lose what is written.
            return match std::fs::rename(&old, &dir) {
                Ok(()) => Err(error),
                Err(_) => Err(self.poison(error)),
            };
        }
        // From here the open log's files are the old ones, about to go: whatever fails, no
        // more writes may reach them (the next open finds the new log, or the old one whole).
        if let Some(parent) = dir.parent() {
            sync_dir(parent).map_err(|error| self.poison(error))?;
        }
        let _ = std::fs::remove_dir_all(&old);
        let reopened =
            Self::open_or_create(&dir, self.config.clone()).map_err(|error| self.poison(error))?;
        *self = reopened;
        Ok(())
    }
}

/// Writes `payloads` into a new log in `fresh`, fsynced with its directory entries.
fn write_fresh(
    fresh: &Path,
    config: LogConfig,
    timestamp_ms: i64,
    payloads: &[&[u8]],
) -> Result<(), StorageError> {
    let (log, _) = Log::open(fresh, config).map_err(storage_error)?;
    for payload in payloads {
        log.append(timestamp_ms, payload).map_err(storage_error)?;
    }
    log.commit(true).map_err(storage_error)?;
    sync_dir(fresh)
}

/// Where a rewrite writes the new log, and where the old one waits to be deleted.
fn rewrite_dirs(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.with_extension("compacting"), dir.with_extension("old"))
}

/// Resolves a rewrite that a crash interrupted. Blocking.
/// - `dir` exists: the swap had not begun (the new log may be partial) or had ended (the old
///   one remains): both leftovers go.
/// - `dir` is missing: the crash fell between the two renames, after the new log was fsynced
///   whole: it takes the name.
fn finish_rewrite(dir: &Path) -> Result<(), StorageError> {
    let (fresh, old) = rewrite_dirs(dir);
    if !dir.exists() && !fresh.exists() && old.exists() {
        // Not a state a rewrite leaves, but never delete the only copy.
        std::fs::rename(&old, dir).map_err(io("rename", &old))?;
        if let Some(parent) = dir.parent() {
            // Crash: the log keeps its name before anything else is written to it.
            sync_dir(parent)?;
        }
    }
    if !dir.exists() && fresh.exists() {
        std::fs::rename(&fresh, dir).map_err(io("rename", &fresh))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        tracing::info!(path = %dir.display(), "finished an interrupted log rewrite");
    }
    for leftover in [fresh, old] {
        if leftover.exists() {
            std::fs::remove_dir_all(&leftover).map_err(io("remove", &leftover))?;
        }
    }
    Ok(())
}

/// keel-log's errors, as the storage seam reports them.
pub(super) fn storage_error(error: LogError) -> StorageError {
    match error {
        LogError::OffsetOutOfRange {
            offset,
            start_offset,
            next_offset,
        } => StorageError::OffsetOutOfRange {
            offset,
            start_offset,
            next_offset,
        },
        LogError::Io { op, path, source } => StorageError::Io { op, path, source },
        LogError::Poisoned { cause } => StorageError::Poisoned { cause },
        full @ LogError::StorageFull { .. } => StorageError::Full {
            source: Box::new(full),
        },
        exhausted @ LogError::DescriptorsExhausted { .. } => StorageError::Unavailable {
            source: Box::new(exhausted),
        },
        corrupt @ LogError::Corrupt { .. } => StorageError::Corrupt {
            source: Box::new(corrupt),
        },
        other => StorageError::Backend(Box::new(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a crash at any point of a rewrite's swap leaves a log that opens whole: before it
    // (a partial new log is dropped), between the renames (the new log takes the name), after
    // it (the old log is dropped). Method: build each state by hand and open.
    #[test]
    fn interrupted_rewrite_opens_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dlq");
        let (fresh, old) = rewrite_dirs(&path);
        let log = DiskLog::open_or_create(&path, LogConfig::default()).expect("open");
        log.append(1, &[b"a", b"b"], true).expect("append");
        drop(log);
        let payloads = |path: &Path| -> Vec<Vec<u8>> {
            let log = DiskLog::open(path, LogConfig::default(), "test log").expect("open");
            let records = log.read(0, 10, usize::MAX).expect("read");
            records.into_iter().map(|record| record.payload).collect()
        };
        // Before the swap: a partial new log beside the real one.
        std::fs::create_dir_all(&fresh).expect("fresh");
        std::fs::write(fresh.join("00000000000000000000.log"), b"partial").expect("write");
        assert_eq!(payloads(&path), [b"a", b"b"]);
        assert!(!fresh.exists());
        // Between the renames: the real log moved to `old`, the complete new one at `fresh`.
        copy_dir(&path, &fresh);
        std::fs::rename(&path, &old).expect("rename");
        assert_eq!(payloads(&path), [b"a", b"b"]);
        assert!(!fresh.exists() && !old.exists());
        // After the swap: the old log is still there.
        copy_dir(&path, &old);
        assert_eq!(payloads(&path), [b"a", b"b"]);
        assert!(!old.exists());
    }

    // Goal: a rewrite replaces the records, from offset 0, and the result survives reopening.
    #[test]
    fn rewrite_replaces_the_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let mut log = DiskLog::open_or_create(&path, LogConfig::default()).expect("open");
        log.append(1, &[b"a", b"b", b"c"], true).expect("append");
        log.rewrite(2, &[b"c"]).expect("rewrite");
        assert_eq!((log.start_offset(), log.next_offset()), (0, 1));
        drop(log);
        let log = DiskLog::open(&path, LogConfig::default(), "test log").expect("reopen");
        let records = log.read(0, 10, usize::MAX).expect("read");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].payload, b"c");
        let (fresh, old) = rewrite_dirs(&path);
        assert!(!fresh.exists() && !old.exists());
    }

    // Goal: an append refused part-way (here a record over keel-log's size limit) poisons the
    // log, so the records buffered before the refusal are never committed by a later append,
    // and a reopen finds none of them. Method: a batch of a small and an oversized record.
    #[test]
    fn a_refused_append_poisons_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let log = DiskLog::open_or_create(&path, LogConfig::default()).expect("open");
        let oversized = vec![0u8; keel_log::limits::PAYLOAD_BYTES_MAX as usize + 1];
        assert!(log.append(1, &[b"buffered", &oversized], true).is_err());
        assert!(matches!(
            log.append(1, &[b"later"], true),
            Err(StorageError::Poisoned { .. })
        ));
        assert!(matches!(log.sync(), Err(StorageError::Poisoned { .. })));
        assert_eq!(log.next_offset(), 0);
        drop(log);
        let log = DiskLog::open(&path, LogConfig::default(), "test log").expect("reopen");
        assert_eq!(
            log.next_offset(),
            0,
            "nothing of the refused batch was committed"
        );
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("create");
        for file in std::fs::read_dir(from).expect("list") {
            let file = file.expect("entry").path();
            let name = file.file_name().expect("name");
            std::fs::copy(&file, to.join(name)).expect("copy");
        }
    }
}
