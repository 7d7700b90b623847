//! The error type of the log.

use std::path::PathBuf;

use crate::storage::is_descriptor_exhaustion;

/// Errors of the log.
///
/// `Io` and `Corrupt` come from the disk; `Poisoned` says an earlier write failure stopped the
/// writer; the others reject a caller's input without changing the log.
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
    /// The device is full (or the quota reached): a commit's write failed with `ENOSPC` or
    /// `EDQUOT`. Nothing of the commit was kept (what it wrote was cut and the cut fsynced),
    /// and the log takes writes again: the next commit may succeed once space returns.
    #[error("{path} is on a full device (no space left or quota reached): {source}")]
    StorageFull {
        /// The segment written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No file descriptor was left (`EMFILE` for the process, `ENFILE` for the system) to
    /// start a new segment, after [`ROLL_ATTEMPTS_MAX`](crate::limits::ROLL_ATTEMPTS_MAX)
    /// tries. Nothing of the commit was written (a roll comes before the write), and the log
    /// takes writes again: the next commit may succeed once descriptors are free.
    #[error(
        "no file descriptor left to start a new segment ({op} {path}: {source}); nothing of the commit was written. Raise the open-files limit (ulimit -n) or close connections, then retry"
    )]
    DescriptorsExhausted {
        /// What was being done ("create", "fsync", ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
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
    /// A `LogConfig` value is outside the bounds in [`limits`](crate::limits).
    #[error("invalid log config: {detail}")]
    Config {
        /// Which value and which bound.
        detail: String,
    },
    /// `append` was given a payload larger than
    /// [`PAYLOAD_BYTES_MAX`](crate::limits::PAYLOAD_BYTES_MAX).
    #[error("record payload of {payload_bytes} bytes exceeds the limit of {payload_bytes_max}")]
    RecordTooLarge {
        /// Size of the payload given.
        payload_bytes: u64,
        /// The limit.
        payload_bytes_max: u64,
    },
    /// The records buffered since the last `commit` would exceed
    /// [`PENDING_BYTES_MAX`](crate::limits::PENDING_BYTES_MAX); commit first. Nothing was buffered.
    #[error(
        "{pending_bytes} bytes are buffered and the record does not fit in {pending_bytes_max}"
    )]
    BatchFull {
        /// Bytes of frames buffered now.
        pending_bytes: u64,
        /// The limit.
        pending_bytes_max: u64,
    },
}

impl LogError {
    /// Whether this is an `Io` error for want of a file descriptor (`EMFILE`, `ENFILE`): an
    /// open that failed, so nothing was done and the same step may succeed later.
    pub(crate) fn is_descriptor_exhaustion(&self) -> bool {
        matches!(self, LogError::Io { source, .. } if is_descriptor_exhaustion(source))
    }

    /// An `Io` error for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LogError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
