//! The segmented, crash-safe append-only log of one keel partition.
//!
//! STUB: the public API below is the contract the engine codes against; bodies are being written.

use std::path::{Path, PathBuf};

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("write", "fsync", "open", ...).
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Bytes on disk failed a check where the log knows they were durable.
    #[error("corrupt record in {segment} at byte {position}: {detail}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte position of the bad frame in that file.
        position: u64,
        /// What check failed.
        detail: String,
    },
    /// An earlier write or fsync failed; the log accepts no more writes.
    #[error("the log stopped accepting writes after an earlier failure: {cause}")]
    Poisoned {
        /// The first failure, as text.
        cause: String,
    },
    /// The offset asked for is not in the log.
    #[error("offset {offset} is out of range [{start_offset}, {next_offset}]")]
    OffsetOutOfRange {
        /// Offset asked for.
        offset: u64,
        /// First offset kept.
        start_offset: u64,
        /// Next offset to be assigned.
        next_offset: u64,
    },
}

/// Tunables of one log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A segment rolls over once it holds this many bytes.
    pub segment_bytes_max: u64,
    /// One sparse offset-index and time-index entry every this many log bytes.
    pub index_interval_bytes: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { segment_bytes_max: 128 * 1024 * 1024, index_interval_bytes: 4096 }
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its offset in the partition.
    pub offset: u64,
    /// Append time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The bytes appended.
    pub payload: Vec<u8>,
}

/// What recovery found when the log was opened.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Bytes cut from the tail of the last segment (torn or corrupt, after the durable mark).
    pub truncated_bytes: u64,
    /// Why the tail was cut, when it was.
    pub truncation_reason: Option<String>,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Default)]
pub struct RetentionReport {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes freed.
    pub bytes_deleted: u64,
}

/// The log of one partition.
#[derive(Debug)]
pub struct Log {}

impl Log {
    /// Opens (creating if missing) the log in `dir`, recovering its tail.
    pub fn open(dir: &Path, config: LogConfig) -> Result<(Log, RecoveryReport), LogError> {
        let _ = (dir, config);
        todo!()
    }
    /// Buffers one record and returns its offset; neither visible nor durable until `commit`.
    pub fn append(&self, timestamp_ms: i64, payload: &[u8]) -> Result<u64, LogError> {
        let _ = (timestamp_ms, payload);
        todo!()
    }
    /// Writes the buffered records, fsyncs them when `fsync`, then makes them visible.
    /// Returns the new visible next offset.
    pub fn commit(&self, fsync: bool) -> Result<u64, LogError> {
        let _ = fsync;
        todo!()
    }
    /// Fsyncs everything committed so far (for the `interval` policy).
    pub fn sync(&self) -> Result<(), LogError> {
        todo!()
    }
    /// Reads visible records from `from`, at most `records_max` and about `bytes_max` bytes
    /// (at least one record when one is there).
    pub fn read(&self, from: u64, records_max: usize, bytes_max: usize) -> Result<Vec<Record>, LogError> {
        let _ = (from, records_max, bytes_max);
        todo!()
    }
    /// First offset still kept.
    pub fn start_offset(&self) -> u64 {
        todo!()
    }
    /// The offset the next visible record will get (one past the last visible record).
    pub fn next_offset(&self) -> u64 {
        todo!()
    }
    /// Bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        todo!()
    }
    /// The first offset whose timestamp is at or after `timestamp_ms` (the next offset if none).
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<u64, LogError> {
        let _ = timestamp_ms;
        todo!()
    }
    /// Deletes whole segments older than `age_ms_max` or beyond `bytes_max` in total,
    /// never the active one.
    pub fn apply_retention(
        &self,
        now_ms: i64,
        age_ms_max: Option<u64>,
        bytes_max: Option<u64>,
    ) -> Result<RetentionReport, LogError> {
        let _ = (now_ms, age_ms_max, bytes_max);
        todo!()
    }
}
