//! Helpers shared by the tests.

use std::path::{Path, PathBuf};

use keel_log::{Log, LogConfig, RecoveryReport};

/// Small segments and a dense index, so a few records exercise rolling and index lookups.
pub(crate) fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 512,
        index_interval_bytes: 64,
    }
}

/// Opens the log in `dir`, failing the test on error.
pub(crate) fn open(dir: &Path, config: LogConfig) -> (Log, RecoveryReport) {
    Log::open(dir, config).expect("open the log")
}

/// The payload the tests store at `offset`: its length varies and its bytes name the offset, so
/// a record read back can be checked on its own.
pub(crate) fn payload_for(offset: u64, bytes: usize) -> Vec<u8> {
    let seed = offset.to_le_bytes();
    (0..bytes).map(|i| seed[i % 8] ^ (i as u8)).collect()
}

/// Appends `count` records with `payload_for(offset, bytes)` and `timestamp_for(offset)` (nothing
/// may be pending before), then commits them; returns the new next offset.
pub(crate) fn append_committed(log: &Log, count: u64, bytes: usize, fsync: bool) -> u64 {
    let first = log.next_offset();
    for offset in first..first + count {
        let appended = log
            .append(timestamp_for(offset), &payload_for(offset, bytes))
            .expect("append");
        assert_eq!(appended, offset);
    }
    log.commit(fsync).expect("commit")
}

/// The timestamp the tests store at `offset`.
pub(crate) fn timestamp_for(offset: u64) -> i64 {
    offset as i64 * 10
}

/// Reads every visible record and checks each against `payload_for` and `timestamp_for`.
pub(crate) fn check_all(log: &Log, payload_bytes: impl Fn(u64) -> usize) {
    let records = log
        .read(log.start_offset(), usize::MAX, usize::MAX)
        .expect("read all");
    assert_eq!(records.len() as u64, log.next_offset() - log.start_offset());
    for (record, offset) in records.iter().zip(log.start_offset()..) {
        assert_eq!(record.offset, offset);
        assert_eq!(record.timestamp_ms, timestamp_for(offset));
        assert_eq!(
            record.payload,
            payload_for(offset, payload_bytes(offset)),
            "offset {offset}"
        );
    }
}

/// The `.log` files in `dir`, oldest first.
pub(crate) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    files_with_extension(dir, "log")
}

/// The files in `dir` ending in `.{extension}`, sorted.
pub(crate) fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

/// Runs `test` and, if it panics, prints the seed so the failure can be replayed.
pub(crate) fn with_seed(seed: u64, test: impl FnOnce(u64)) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(seed)));
    if let Err(panic) = outcome {
        eprintln!("failing seed: {seed} (rerun with this seed to replay)");
        std::panic::resume_unwind(panic);
    }
}

/// splitmix64, for seeded choices in tests.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}
