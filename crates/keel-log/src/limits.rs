//! Every bound of the log as a named constant, with the asserts that tie them together.
//!
//! Tunable limits live in [`LogConfig`](crate::LogConfig), default below these constants and are
//! checked against them when a log is opened.

use crate::record::{FRAME_BYTES_MAX, RECORD_HEADER_BYTES};

/// The largest payload of one record, in bytes. The engine's own event limit must stay well
/// below it: a dead-letter record holds an event and its attempts.
pub const PAYLOAD_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// The most bytes of frames that `append` buffers before a `commit` must write them.
///
/// Bounds the writer's memory and the size of one group-commit write.
pub const PENDING_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The pending buffer's capacity kept between commits; a larger one is shrunk back, so an
/// idle partition holds at most this much.
pub const PENDING_BYTES_RETAINED_MAX: usize = 1024 * 1024;

/// The largest `LogConfig::segment_bytes_max`.
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// The smallest `LogConfig::segment_bytes_max` (tiny segments are for tests).
pub const SEGMENT_BYTES_MIN: u64 = 64;

/// The largest `LogConfig::index_interval_bytes`.
pub const INDEX_INTERVAL_BYTES_MAX: u32 = 64 * 1024 * 1024;

/// The smallest `LogConfig::index_interval_bytes` (1 indexes every record).
pub const INDEX_INTERVAL_BYTES_MIN: u32 = 1;

/// The largest file a segment can grow to.
///
/// A batch goes into the active segment unless that would push a non-empty segment past
/// `segment_bytes_max`, so a segment holds at most `max(segment_bytes_max, one batch)` bytes.
pub const SEGMENT_FILE_BYTES_MAX: u64 = if SEGMENT_BYTES_MAX > PENDING_BYTES_MAX {
    SEGMENT_BYTES_MAX
} else {
    PENDING_BYTES_MAX
};

/// Bytes fetched by one positioned read when scanning or reading frames, at most. A read of
/// at most [`READ_FEW_RECORDS`] records fetches [`READ_CHUNK_BYTES_FIRST`] first, and each
/// next time twice as much: a read of one record (a key stream's are) then copies a few KiB
/// from the page cache, not a whole chunk.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Bytes of the first positioned read of a read of a few records (see [`READ_CHUNK_BYTES`]).
pub const READ_CHUNK_BYTES_FIRST: usize = 8 * 1024;

/// Reads of at most this many records start with a small positioned read.
pub const READ_FEW_RECORDS: usize = 8;

/// The most index entries a sealed segment keeps in memory, whatever its size.
///
/// A sealed segment keeps an evenly spaced sample of its index entries (16 bytes each) and looks
/// up the others in its index files (`sealed_index.rs`), so it holds at most
/// `128 * 16 B = 2 KiB` of index, and the log's memory grows with its number of segments, not
/// its bytes. With the default 128 MiB segments and 4 KiB index interval (32768 entries per
/// segment) every 256th entry is kept: one per MiB of log.
pub(crate) const SEALED_INDEX_ENTRIES_IN_MEMORY_MAX: usize = 128;

/// The most index entries one positioned read of an index file fetches during a lookup in a
/// sealed segment (4 KiB of `.index`, 6 KiB of `.timeindex`).
///
/// A lookup narrows between two sampled entries with single-entry reads until at most this many
/// entries are left, then reads those at once; with the default config that is one read.
pub(crate) const INDEX_LOOKUP_READ_ENTRIES_MAX: usize = 512;

/// The most files of sealed segments (`.log`, `.index`, `.timeindex`) kept open at once by all
/// the logs of a process, the least recently read closed first (`open_files.rs`). An idle
/// sealed segment holds no descriptor; reads in progress hold theirs until they end.
pub const SEALED_FILES_OPEN_MAX: usize = 128;

/// How many times a roll (sealing a segment and creating the next one) is tried when no file
/// descriptor is left, before the commit fails with `LogError::DescriptorsExhausted`.
pub const ROLL_ATTEMPTS_MAX: u32 = 5;

/// The wait before the second try of a roll that ran out of descriptors; each next wait is
/// twice the last (10, 20, 40, 80 ms: 150 ms in all, while the writer waits).
pub const ROLL_RETRY_BACKOFF_MS_FIRST: u64 = 10;

// Index entries store byte positions and relative offsets as u32.
const _: () = assert!(SEGMENT_FILE_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!(SEGMENT_FILE_BYTES_MAX / (RECORD_HEADER_BYTES as u64) <= u32::MAX as u64);
// One record of the largest size must fit in one batch.
const _: () = assert!(FRAME_BYTES_MAX as u64 <= PENDING_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_MAX);
const _: () = assert!(INDEX_INTERVAL_BYTES_MIN <= INDEX_INTERVAL_BYTES_MAX);
const _: () = assert!(READ_CHUNK_BYTES_FIRST >= RECORD_HEADER_BYTES);
const _: () = assert!(READ_CHUNK_BYTES_FIRST <= READ_CHUNK_BYTES);
// A sealed segment keeps at least its first entry, and a lookup reads at least one entry at once.
const _: () = assert!(SEALED_INDEX_ENTRIES_IN_MEMORY_MAX >= 1);
const _: () = assert!(INDEX_LOOKUP_READ_ENTRIES_MAX >= 1);
// A read opens one file at a time, and the cache must hold it.
const _: () = assert!(SEALED_FILES_OPEN_MAX >= 1);
const _: () = assert!(ROLL_ATTEMPTS_MAX >= 1);
// With the default config (128 MiB segments, 4 KiB interval: 32768 entries), the entries between
// two sampled ones fit one lookup read.
const _: () = assert!(
    (128 * 1024 * 1024 / 4096_usize).div_ceil(SEALED_INDEX_ENTRIES_IN_MEMORY_MAX)
        <= INDEX_LOOKUP_READ_ENTRIES_MAX
);
