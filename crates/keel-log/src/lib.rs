//! The segmented, crash-safe append-only log of one keel partition.
//!
//! A log is a directory of segments, each a `.log` file of checksummed frames named by its base
//! offset, with a sparse offset index and a time index beside it, and a `durable.mark` file that
//! records how far the log is known to be fsynced. The byte layout is in `docs/log-format.md`.
//!
//! - [`Log::append`] buffers records; [`Log::commit`] writes them with one write (group commit),
//!   fsyncs when asked, and only then makes them visible to [`Log::read`].
//! - [`Log::open`] recovers after a crash: it cuts a torn tail at the first bad frame, but refuses
//!   (`LogError::Corrupt`) to cut records the durable mark says were fsynced.
//! - A failed write or fsync is never acknowledged: the commit fails and the log is poisoned.
//! - [`Log::apply_retention`] deletes whole old segments.
//!
//! ```
//! use keel_log::{Log, LogConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let (log, report) = Log::open(dir.path(), LogConfig::default())?;
//! assert_eq!(report.truncated_bytes, 0);
//! assert_eq!(log.append(1_700_000_000_000, b"hello")?, 0);
//! assert_eq!(log.append(1_700_000_000_001, b"world")?, 1);
//! assert_eq!(log.next_offset(), 0, "nothing is visible before commit");
//! assert_eq!(log.commit(true)?, 2);
//! let records = log.read(0, 10, 1024 * 1024)?;
//! assert_eq!(records[1].payload, b"world");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod durable_mark;
mod error;
mod faulty_storage;
mod index;
pub mod limits;
mod log;
mod open_files;
mod record;
mod recovery;
mod retention;
mod sealed_index;
mod segment;
mod storage;

pub use crate::error::LogError;
pub use crate::faulty_storage::{FaultError, FaultOp, FaultyStorage};
pub use crate::log::{Log, LogConfig};
pub use crate::record::{
    CRC_POSITION, FRAME_BYTES_MAX, Frame, FrameError, FrameHeader, OFFSET_POSITION,
    PAYLOAD_BYTES_POSITION, PAYLOAD_POSITION, RECORD_HEADER_BYTES, Record, TIMESTAMP_POSITION,
    decode_frame, decode_header, encode_frame, frame_bytes,
};
pub use crate::recovery::RecoveryReport;
pub use crate::retention::RetentionReport;
pub use crate::storage::{FileStorage, OpenMode, Storage, StorageFile};
