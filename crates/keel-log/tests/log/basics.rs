//! Appending, committing, reading, rolling, reopening, lookups and retention.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use keel_log::limits::{PAYLOAD_BYTES_MAX, PENDING_BYTES_MAX};
use keel_log::{FileStorage, Log, LogConfig, LogError, OpenMode, Storage, StorageFile};

use crate::support::{
    append_committed, check_all, files_with_extension, open, payload_for, segment_files,
    small_config, timestamp_for,
};

#[test]
fn log_is_send_and_sync() {
    // Goal: a Log can be shared across threads (the engine keeps it in an Arc).
    // Method: a compile-time bound check.
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Log>();
}

#[test]
fn committed_records_read_back_in_order() {
    // Goal: records read back with the offsets append returned, their timestamps and payloads.
    // Method: append 50 records of varying sizes over several commits, read them all back.
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, report) = open(dir.path(), LogConfig::default());
    assert_eq!(
        (
            report.truncated_bytes,
            log.start_offset(),
            log.next_offset()
        ),
        (0, 0, 0)
    );
    for batch in 0..5u64 {
        for offset in batch * 10..batch * 10 + 10 {
            let appended = log.append(timestamp_for(offset), &payload_for(offset, offset as usize));
            assert_eq!(appended.expect("append"), offset);
        }
        assert_eq!(log.commit(batch % 2 == 0).expect("commit"), batch * 10 + 10);
    }
    check_all(&log, |offset| offset as usize);
    let middle = log.read(17, 3, usize::MAX).expect("read from the middle");
    assert_eq!(
        middle.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![17, 18, 19]
    );
}

#[test]
fn uncommitted_records_are_invisible() {
    // Goal: readers never see a record before its commit.
    // Method: append without committing, check next_offset and reads, then commit.
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), LogConfig::default());
    append_committed(&log, 3, 10, true);
    assert_eq!(log.append(0, b"pending").expect("append"), 3);
    assert_eq!(log.next_offset(), 3);
    assert!(
        log.read(3, 10, usize::MAX)
            .expect("read at next_offset")
            .is_empty()
    );
    assert_eq!(log.read(0, 10, usize::MAX).expect("read all").len(), 3);
    assert!(matches!(
        log.read(4, 10, usize::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.commit(false).expect("commit"), 4);
    assert_eq!(
        log.read(3, 10, usize::MAX).expect("read")[0].payload,
        b"pending"
    );
}

#[test]
fn commit_with_nothing_buffered_returns_the_next_offset() {
    // Goal: an empty commit is a cheap no-op that reports the visible next offset, and an
    // empty commit(true) still makes earlier commit(false) records durable.
    // Method: commit with nothing pending before and after unsynced records.
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), LogConfig::default());
    assert_eq!(log.commit(true).expect("empty commit"), 0);
    append_committed(&log, 2, 10, false);
    assert_eq!(log.commit(true).expect("empty commit syncs"), 2);
    log.sync().expect("sync with nothing unsynced");
    drop(log);
    let (log, report) = open(dir.path(), LogConfig::default());
    assert_eq!((log.next_offset(), report.durable_next_offset), (2, 2));
}

#[test]
fn read_limits_records_and_bytes_but_returns_at_least_one() {
    // Goal: read honours records_max and bytes_max (payload bytes) and still returns one record
    // when even that one is over bytes_max.
    // Method: 20 records of 100 bytes; a table of (from, records_max, bytes_max, expected count).
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), small_config());
    append_committed(&log, 20, 100, true);
    let cases = [
        (0, 5, usize::MAX, 5),
        (0, usize::MAX, 350, 3),
        (0, usize::MAX, 300, 3),
        (0, usize::MAX, 10, 1),
        (0, usize::MAX, 0, 1),
        (0, 0, usize::MAX, 0),
        (19, 10, usize::MAX, 1),
        (20, 10, usize::MAX, 0),
        (3, usize::MAX, usize::MAX, 17),
    ];
    for (from, records_max, bytes_max, expected) in cases {
        let records = log.read(from, records_max, bytes_max).expect("read");
        assert_eq!(
            records.len(),
            expected,
            "read({from}, {records_max}, {bytes_max})"
        );
        let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (from..from + expected as u64).collect::<Vec<_>>());
    }
}

#[test]
fn read_outside_the_log_is_out_of_range() {
    // Goal: offsets above next_offset or below start_offset are errors that name the range.
    // Method: read past the end, then delete old segments and read below the start.
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), small_config());
    for _ in 0..5 {
        append_committed(&log, 8, 40, true);
    }
    match log.read(41, 1, 1) {
        Err(LogError::OffsetOutOfRange {
            offset: 41,
            start_offset: 0,
            next_offset: 40,
        }) => {}
        other => panic!("expected out of range, got {other:?}"),
    }
    log.apply_retention(0, None, Some(0)).expect("retention");
    let start = log.start_offset();
    assert!(start > 0);
    assert!(matches!(
        log.read(start - 1, 1, 1),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(
        log.read(start, 1, 1).expect("read at start")[0].offset,
        start
    );
}

#[test]
fn remove_before_deletes_only_segments_wholly_below_the_offset() {
    // Goal: `remove_before(o)` never removes a record at or above `o`, nor the active segment,
    // and removes every sealed segment wholly below `o`. Method: five segments of 8 records,
    // then remove before offsets inside, at and past segment boundaries.
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), small_config());
    for _ in 0..5 {
        append_committed(&log, 8, 40, true);
    }
    let segments = log.segment_count();
    assert!(segments >= 3, "the test needs several segments");
    log.remove_before(0).expect("nothing below 0");
    assert_eq!((log.start_offset(), log.segment_count()), (0, segments));
    for offset in [3, 8, 13, 17, 40, 1_000] {
        log.remove_before(offset).expect("remove");
        let start = log.start_offset();
        assert!(start <= offset, "start {start} passed {offset}");
        assert!(log.segment_count() >= 1);
        let records = log
            .read(start, 100, usize::MAX)
            .expect("read from the start");
        assert_eq!(
            records.last().map(|r| r.offset),
            Some(39),
            "the newest record stays"
        );
    }
    assert_eq!(log.segment_count(), 1, "only the active segment is left");
}

#[test]
fn segments_roll_over_at_the_size_limit() {
    // Goal: a batch that would push a non-empty segment past segment_bytes_max starts a new
    // segment named by its base offset, and reads cross segment boundaries seamlessly.
    // Method: 64-byte frames in 512-byte segments, committed in batches of 3, then check files.
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), small_config());
    for _ in 0..10 {
        append_committed(&log, 3, 40, false);
    }
    let files = segment_files(dir.path());
    assert_eq!(files.len(), log.segment_count());
    assert!(files.len() >= 4, "{files:?}");
    let mut base_offset = 0;
    for file in &files {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name");
        assert_eq!(name, format!("{base_offset:020}"));
        let size_bytes = std::fs::metadata(file).expect("stat").len();
        assert!(
            size_bytes <= 512 && size_bytes % 64 == 0,
            "{file:?} is {size_bytes} bytes"
        );
        base_offset += size_bytes / 64;
    }
    assert_eq!(base_offset, 30);
    assert_eq!(log.size_bytes(), 30 * 64);
    // Sealed segments have index files; the active one keeps its index in memory.
    assert_eq!(
        files_with_extension(dir.path(), "index").len(),
        files.len() - 1
    );
    assert_eq!(
        files_with_extension(dir.path(), "timeindex").len(),
        files.len() - 1
    );
    check_all(&log, |_| 40);
}

#[test]
fn one_batch_larger_than_a_segment_goes_into_its_own_segment() {
    // Goal: a batch is never split; one larger than segment_bytes_max fills a segment alone.
    // Method: commit 20 frames of 64 bytes at once into 512-byte segments.
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), small_config());
    append_committed(&log, 2, 40, true);
    append_committed(&log, 20, 40, true);
    append_committed(&log, 1, 40, true);
    let sizes: Vec<u64> = segment_files(dir.path())
        .iter()
        .map(|file| std::fs::metadata(file).expect("stat").len())
        .collect();
    assert_eq!(sizes, vec![128, 1280, 64]);
    check_all(&log, |_| 40);
}

#[test]
fn reopen_keeps_every_committed_record_and_continues_offsets() {
    // Goal: after a clean drop, reopening serves every committed record (fsynced or not) and
    // the next append continues at the next offset; pending records are gone.
    // Method: commit with and without fsync over several segments, leave one record pending,
    // reopen twice.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (log, _) = open(dir.path(), small_config());
        append_committed(&log, 25, 40, true);
        append_committed(&log, 5, 40, false);
        log.append(0, b"never committed").expect("append");
    }
    let (log, report) = open(dir.path(), small_config());
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.indexes_rebuilt, 0);
    assert_eq!(log.next_offset(), 30);
    check_all(&log, |_| 40);
    assert_eq!(append_committed(&log, 5, 40, true), 35);
    drop(log);
    let (log, _) = open(dir.path(), small_config());
    assert_eq!(log.next_offset(), 35);
    check_all(&log, |_| 40);
}

#[test]
fn missing_or_damaged_index_files_are_rebuilt() {
    // Goal: index files are caches: missing, zero-filled or stale ones are rebuilt from the
    // frames, a truncated but valid one is still usable, and reads stay correct either way.
    // Method: damage the index files of sealed segments in different ways, then reopen.
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), small_config());
    for _ in 0..10 {
        append_committed(&log, 6, 40, true);
    }
    drop(log);
    let indexes = files_with_extension(dir.path(), "index");
    let times = files_with_extension(dir.path(), "timeindex");
    assert!(indexes.len() >= 4);
    std::fs::remove_file(&indexes[0]).expect("remove index");
    std::fs::write(&indexes[1], vec![0; 64]).expect("zero index");
    std::fs::write(&times[2], b"garbage").expect("garbage time index");
    let truncated = std::fs::read(&indexes[3]).expect("read index");
    std::fs::write(&indexes[3], &truncated[..8]).expect("truncate index");
    let time_truncated = std::fs::read(&times[3]).expect("read time index");
    std::fs::write(&times[3], &time_truncated[..12]).expect("truncate time index");
    let (log, report) = open(dir.path(), small_config());
    assert_eq!(report.indexes_rebuilt, 3);
    check_all(&log, |_| 40);
    for offset in 0..60 {
        assert_eq!(log.read(offset, 1, 1).expect("read one")[0].offset, offset);
        assert_eq!(
            log.offset_for_timestamp(timestamp_for(offset))
                .expect("lookup"),
            offset
        );
    }
    assert!(
        std::fs::metadata(&indexes[0]).is_ok(),
        "the missing index is written again"
    );
    drop(log);
    let (_, report) = open(dir.path(), small_config());
    assert_eq!(
        report.indexes_rebuilt, 0,
        "rebuilt files pass the check next time"
    );
}

/// Rewrites the file at `path` in place (same inode, so an open log's handle sees the change).
fn rewrite(path: &std::path::Path, damage: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).expect("read the file");
    damage(&mut bytes);
    std::fs::write(path, bytes).expect("rewrite the file");
}

/// Adds `delta` to the little-endian integer of `width` bytes at `field` of every entry of
/// `entry_bytes` but the first.
fn shift_field(bytes: &mut [u8], entry_bytes: usize, field: usize, width: usize, delta: i64) {
    for entry in bytes.chunks_exact_mut(entry_bytes).skip(1) {
        let slot = &mut entry[field..field + width];
        let mut value = [0u8; 8];
        value[..width].copy_from_slice(slot);
        let shifted = i64::from_le_bytes(value).wrapping_add(delta).to_le_bytes();
        slot.copy_from_slice(&shifted[..width]);
    }
}

/// Damages a file's bytes.
type Damage = fn(&mut Vec<u8>);

#[test]
fn sealed_segments_read_correctly_with_index_files_damaged_after_open() {
    // Goal: sealed segments look their index entries up in their files while the log runs, and
    // files damaged after open (missing the check on open) never cause a wrong read or time
    // lookup: out-of-place entries are refused, or caught by the frame they point at, and the
    // lookup scans from an in-memory entry instead. Reopening rebuilds what fails its check.
    // Method: index every record of 32 KiB segments (~800 entries each, 7 per sample), damage
    // each sealed segment's files in a different way under an open log, then read and look up
    // timestamps across all of them, before and after reopening.
    let config = LogConfig {
        segment_bytes_max: 32 * 1024,
        index_interval_bytes: 1,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), config.clone());
    while log.segment_count() < 9 {
        append_committed(&log, 50, 16, false);
    }
    drop(log);
    let (log, _) = open(dir.path(), config.clone());
    let indexes = files_with_extension(dir.path(), "index");
    let times = files_with_extension(dir.path(), "timeindex");
    let damages: [(&str, &std::path::Path, Damage); 8] = [
        ("zero-filled .index", &indexes[0], |bytes| bytes.fill(0)),
        ("truncated .index", &indexes[1], |bytes| {
            bytes.truncate(bytes.len() / 3)
        }),
        // A frame of a 16-byte payload is 40 bytes.
        ("positions one frame late", &indexes[2], |bytes| {
            shift_field(bytes, 8, 4, 4, 40)
        }),
        ("offsets one record late", &indexes[3], |bytes| {
            shift_field(bytes, 8, 0, 4, 1)
        }),
        ("timestamps lowered", &times[4], |bytes| {
            shift_field(bytes, 12, 0, 8, -15)
        }),
        // Still in order, but two entries in three claim the timestamp of the one before them:
        // only the frame check catches a start past the target.
        ("timestamps lowered in order", &times[7], |bytes| {
            for first in (0..bytes.len()).step_by(3 * 12) {
                let claimed: [u8; 8] = bytes[first..first + 8].try_into().expect("8 bytes");
                for next in [first + 12, first + 24] {
                    if next + 8 <= bytes.len() {
                        bytes[next..next + 8].copy_from_slice(&claimed);
                    }
                }
            }
        }),
        ("truncated .timeindex", &times[5], |bytes| {
            bytes.truncate(bytes.len() / 2)
        }),
        ("garbage .timeindex", &times[6], |bytes| {
            for (number, byte) in bytes.iter_mut().enumerate() {
                *byte = (number as u8).wrapping_mul(37) ^ 0xc3;
            }
        }),
    ];
    for (_, path, damage) in &damages {
        rewrite(path, damage);
    }
    let check = |log: &Log, when: &str| {
        let next_offset = log.next_offset();
        for offset in 0..next_offset {
            let records = log.read(offset, 2, usize::MAX).expect("read");
            assert_eq!(records[0].offset, offset, "{when}");
            assert_eq!(records[0].payload, payload_for(offset, 16), "{when}");
            for timestamp_ms in [timestamp_for(offset), timestamp_for(offset) - 3] {
                let found = log.offset_for_timestamp(timestamp_ms).expect("lookup");
                assert_eq!(found, offset, "{when}: {timestamp_ms} ms");
            }
        }
        check_all(log, |_| 16);
    };
    check(&log, "damaged under an open log");
    drop(log);
    let (log, report) = open(dir.path(), config);
    assert!(report.indexes_rebuilt >= 3, "{report:?}");
    check(&log, "after reopening");
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    // Goal: the lookup returns the first offset whose timestamp is >= the target, across
    // segments and between index entries, the start for early targets and next_offset for late.
    // Method: timestamps 0, 10, 20, ... with repeats; query a table of targets.
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), small_config());
    // Offsets 0..40 have timestamp offset*10, 8 to a segment; then 40..45 all share 1000.
    for _ in 0..5 {
        append_committed(&log, 8, 40, true);
    }
    for _ in 0..5 {
        log.append(1000, b"same time").expect("append");
    }
    log.commit(true).expect("commit");
    let cases = [
        (i64::MIN, 0),
        (0, 0),
        (1, 1),
        (10, 1),
        (155, 16),
        (390, 39),
        (391, 40),
        (1000, 40),
        (1001, 45),
        (i64::MAX, 45),
    ];
    for (timestamp_ms, expected) in cases {
        assert_eq!(
            log.offset_for_timestamp(timestamp_ms).expect("lookup"),
            expected,
            "{timestamp_ms}"
        );
    }
    log.apply_retention(0, None, Some(0)).expect("retention");
    assert_eq!(
        log.offset_for_timestamp(0).expect("lookup"),
        log.start_offset()
    );
}

#[test]
fn retention_deletes_old_segments_and_moves_the_start() {
    // Goal: retention deletes whole sealed segments (with their index files) by age and by
    // size, never the active one, and the start offset moves to the first kept segment and
    // stays there after reopening.
    // Method: 8 segments of 8 records each with known timestamps; apply both rules in turn.
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), small_config());
    for _ in 0..8 {
        append_committed(&log, 8, 40, true);
    }
    assert_eq!(log.segment_count(), 8);
    // Segment k holds offsets 8k..8k+8 with newest timestamp (8k+7)*10.
    let report = log
        .apply_retention(200, Some(50), None)
        .expect("age retention");
    assert_eq!((report.segments_deleted, report.bytes_deleted), (1, 512));
    assert_eq!(log.start_offset(), 8);
    let report = log
        .apply_retention(0, None, Some(3 * 512))
        .expect("size retention");
    assert_eq!(report.segments_deleted, 4);
    assert_eq!((log.start_offset(), log.size_bytes()), (40, 3 * 512));
    let report = log
        .apply_retention(i64::MAX, Some(0), Some(0))
        .expect("everything");
    assert_eq!(report.segments_deleted, 2, "the active segment stays");
    assert_eq!((log.start_offset(), log.next_offset()), (56, 64));
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert!(files_with_extension(dir.path(), "index").is_empty());
    assert!(files_with_extension(dir.path(), "timeindex").is_empty());
    drop(log);
    let (log, _) = open(dir.path(), small_config());
    assert_eq!((log.start_offset(), log.next_offset()), (56, 64));
    check_all(&log, |_| 40);
}

#[test]
fn oversized_records_and_full_batches_are_refused_without_poisoning() {
    // Goal: input errors reject one append and leave the log writable.
    // Method: append one byte over PAYLOAD_BYTES_MAX, then fill the pending buffer.
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), LogConfig::default());
    let too_large = vec![0; PAYLOAD_BYTES_MAX as usize + 1];
    assert!(matches!(
        log.append(0, &too_large),
        Err(LogError::RecordTooLarge { .. })
    ));
    let largest = vec![7; PAYLOAD_BYTES_MAX as usize];
    let fitting = PENDING_BYTES_MAX / (PAYLOAD_BYTES_MAX as u64 + 24);
    for _ in 0..fitting {
        log.append(0, &largest).expect("append a large record");
    }
    assert!(matches!(
        log.append(0, &largest),
        Err(LogError::BatchFull { .. })
    ));
    assert_eq!(log.commit(false).expect("commit"), fitting);
    log.append(0, b"small").expect("the log still takes writes");
    assert_eq!(log.commit(false).expect("commit"), fitting + 1);
}

#[test]
fn invalid_configs_are_refused() {
    // Goal: config values outside their limits are an error, not a misbehaving log.
    // Method: open with each bad value.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = [
        LogConfig {
            segment_bytes_max: 0,
            index_interval_bytes: 4096,
        },
        LogConfig {
            segment_bytes_max: u64::MAX,
            index_interval_bytes: 4096,
        },
        LogConfig {
            segment_bytes_max: 1 << 20,
            index_interval_bytes: 0,
        },
    ];
    for config in bad {
        assert!(
            matches!(
                Log::open(dir.path(), config.clone()),
                Err(LogError::Config { .. })
            ),
            "{config:?}"
        );
    }
}

#[test]
fn delete_removes_the_whole_log() {
    // Goal: Log::delete removes every file of the log and its directory.
    // Method: write a few segments, delete, check the directory is gone.
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("partition-0");
    let (log, _) = open(&log_dir, small_config());
    for _ in 0..4 {
        append_committed(&log, 8, 40, true);
    }
    assert_eq!(log.segment_count(), 4);
    log.delete().expect("delete");
    assert!(!log_dir.exists());
}

#[test]
fn concurrent_readers_see_only_whole_committed_records() {
    // Goal: readers running during commits and rolls only ever see committed, intact records
    // in offset order, and every reader eventually sees everything.
    // Method: one writer commits 300 records in batches while three readers read in a loop.
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), small_config());
    let log = Arc::new(log);
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (log, done) = (Arc::clone(&log), Arc::clone(&done));
            std::thread::spawn(move || {
                while !done.load(Ordering::Acquire) {
                    let next_offset = log.next_offset();
                    let records = log.read(0, usize::MAX, usize::MAX).expect("read");
                    assert!(records.len() as u64 >= next_offset);
                    for (record, offset) in records.iter().zip(0..) {
                        assert_eq!(record.offset, offset);
                        assert_eq!(
                            record.payload,
                            payload_for(offset, 40 + offset as usize % 7)
                        );
                    }
                }
            })
        })
        .collect();
    for batch in 0..60u64 {
        for offset in batch * 5..batch * 5 + 5 {
            log.append(
                timestamp_for(offset),
                &payload_for(offset, 40 + offset as usize % 7),
            )
            .expect("append");
        }
        log.commit(batch % 3 == 0).expect("commit");
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        reader.join().expect("reader thread");
    }
    check_all(&log, |offset| 40 + offset as usize % 7);
}

/// A file layer whose fsyncs wait until the test releases them.
#[derive(Debug, Default)]
struct GatedSync {
    state: Mutex<(bool, bool)>, // (a sync is waiting, syncs are released)
    changed: Condvar,
}

#[derive(Debug)]
struct GatedStorage(Arc<GatedSync>);

#[derive(Debug)]
struct GatedFile(Arc<dyn StorageFile>, Arc<GatedSync>);

impl StorageFile for GatedFile {
    fn read_at(&self, buffer: &mut [u8], position: u64) -> std::io::Result<usize> {
        self.0.read_at(buffer, position)
    }
    fn write_all_at(&self, bytes: &[u8], position: u64) -> std::io::Result<()> {
        self.0.write_all_at(bytes, position)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        let mut state = self.1.state.lock().expect("gate");
        state.0 = true;
        self.1.changed.notify_all();
        while !state.1 {
            state = self.1.changed.wait(state).expect("gate");
        }
        drop(state);
        self.0.sync_data()
    }
    fn set_size_bytes(&self, size_bytes: u64) -> std::io::Result<()> {
        self.0.set_size_bytes(size_bytes)
    }
    fn size_bytes(&self) -> std::io::Result<u64> {
        self.0.size_bytes()
    }
}

impl Storage for GatedStorage {
    fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
        FileStorage.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        FileStorage.list_dir(dir)
    }
    fn open(
        &self,
        path: &std::path::Path,
        mode: OpenMode,
    ) -> std::io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(GatedFile(
            FileStorage.open(path, mode)?,
            Arc::clone(&self.0),
        )))
    }
    fn remove_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        FileStorage.remove_file(path)
    }
    fn remove_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        FileStorage.remove_dir(dir)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        FileStorage.sync_dir(dir)
    }
}

#[test]
fn reads_are_not_blocked_by_an_fsync_in_progress() {
    // Goal: an fsync holds only the writer's lock: reads, lookups and sizes go on meanwhile,
    // and the records being fsynced stay invisible until it finishes.
    // Method: a file layer whose fsync waits for the test; commit(true) in a thread, and read
    // from the main thread while that fsync is stuck.
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Arc::new(GatedSync::default());
    gate.state.lock().expect("gate").1 = true; // let open's own fsyncs through
    let storage = Arc::new(GatedStorage(Arc::clone(&gate)));
    let (log, _) = Log::open_with_storage(dir.path(), small_config(), storage).expect("open");
    append_committed(&log, 5, 40, false);
    *gate.state.lock().expect("gate") = (false, false);
    let log = Arc::new(log);
    let writer = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            log.append(0, b"being fsynced").expect("append");
            log.commit(true).expect("commit")
        })
    };
    let mut state = gate.state.lock().expect("gate");
    while !state.0 {
        state = gate
            .changed
            .wait_timeout(state, Duration::from_secs(10))
            .expect("gate")
            .0;
    }
    drop(state);
    // The writer is now inside fsync, holding the writer lock.
    assert_eq!(log.read(0, usize::MAX, usize::MAX).expect("read").len(), 5);
    assert_eq!(log.next_offset(), 5);
    assert_eq!(log.offset_for_timestamp(0).expect("lookup"), 0);
    assert!(log.size_bytes() > 0);
    gate.state.lock().expect("gate").1 = true;
    gate.changed.notify_all();
    assert_eq!(writer.join().expect("writer thread"), 6);
    assert_eq!(
        log.read(5, 1, 1).expect("read")[0].payload,
        b"being fsynced"
    );
}
