//! Recovery: torn tails are cut, corruption below the durable mark is refused.

use std::path::{Path, PathBuf};

use keel_log::{Log, LogConfig, LogError, RECORD_HEADER_BYTES};
use proptest::prelude::*;

use crate::support::{
    append_committed, check_all, open, payload_for, segment_files, small_config, timestamp_for,
};

/// One segment large enough for every test here.
fn one_segment_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 1 << 20,
        index_interval_bytes: 100,
    }
}

/// Payload size of the record at `offset` in these tests: varied, so frame boundaries are not
/// regular.
fn payload_bytes(offset: u64) -> usize {
    10 + (offset as usize * 7) % 23
}

/// Byte position where the frame of each offset starts, plus the end of the last one.
fn frame_starts(count: u64) -> Vec<u64> {
    let mut starts = vec![0];
    for offset in 0..count {
        let last = *starts.last().expect("not empty");
        starts.push(last + (RECORD_HEADER_BYTES + payload_bytes(offset)) as u64);
    }
    starts
}

/// Writes `durable` records committed with fsync, then `count - durable` committed without
/// (visible, but past the durable mark), one record per commit. Returns the segment file.
fn write_log(dir: &Path, count: u64, durable: u64) -> PathBuf {
    let (log, _) = open(dir, one_segment_config());
    for offset in 0..count {
        log.append(
            timestamp_for(offset),
            &payload_for(offset, payload_bytes(offset)),
        )
        .expect("append");
        log.commit(offset < durable).expect("commit");
    }
    drop(log);
    let files = segment_files(dir);
    assert_eq!(files.len(), 1);
    files[0].clone()
}

/// The index of the frame that holds byte `position`.
fn frame_holding(starts: &[u64], position: u64) -> u64 {
    (starts.partition_point(|start| *start <= position) - 1) as u64
}

/// Opens and checks that recovery kept exactly `[0, kept)`, cutting `cut_bytes`.
fn assert_recovered(dir: &Path, kept: u64, cut_bytes: u64) {
    let (log, report) = open(dir, one_segment_config());
    assert_eq!(log.next_offset(), kept, "{report:?}");
    assert_eq!(report.truncated_bytes, cut_bytes, "{report:?}");
    assert_eq!(report.truncation_reason.is_some(), cut_bytes > 0);
    assert_eq!(
        report.first_truncated_offset,
        (cut_bytes > 0).then_some(kept)
    );
    check_all(&log, payload_bytes);
    // The log goes on from the cut, and reopens clean.
    log.append(timestamp_for(kept), &payload_for(kept, payload_bytes(kept)))
        .expect("append");
    assert_eq!(log.commit(true).expect("commit"), kept + 1);
    drop(log);
    let (log, report) = open(dir, one_segment_config());
    assert_eq!((log.next_offset(), report.truncated_bytes), (kept + 1, 0));
    check_all(&log, payload_bytes);
}

/// Opens and checks that it fails with Corrupt and that the segment file was left untouched.
fn assert_refused(dir: &Path, segment: &Path) {
    let before = std::fs::read(segment).expect("read segment");
    match Log::open(dir, one_segment_config()) {
        Err(LogError::Corrupt {
            segment: reported,
            detail,
            ..
        }) => {
            assert_eq!(reported, segment);
            assert!(detail.contains("durable mark"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(segment).expect("read segment"),
        before,
        "nothing may be cut"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn recovery_truncates_a_torn_tail_at_any_byte(
        count in 1u64..24,
        durable_fraction in 0.0f64..1.0,
        cut_fraction in 0.0f64..1.0,
    ) {
        // Goal: cutting the file anywhere past the durable mark loses only the records past the
        // cut: reopening keeps every whole record before it, cuts the partial one, reports the
        // bytes cut, and goes on appending.
        // Method: write records (a prefix fsynced), truncate the file at a random byte past the
        // mark, reopen, compare.
        let dir = tempfile::tempdir().expect("tempdir");
        let durable = (count as f64 * durable_fraction) as u64;
        let segment = write_log(dir.path(), count, durable);
        let starts = frame_starts(count);
        let durable_bytes = starts[durable as usize];
        let end = starts[count as usize];
        let cut = durable_bytes + ((end - durable_bytes) as f64 * cut_fraction) as u64;
        cut_file(&segment, cut);
        let kept = frame_holding(&starts, cut).min(count);
        assert_recovered(dir.path(), kept, cut - starts[kept as usize]);
    }

    #[test]
    fn recovery_cuts_at_a_flipped_bit_past_the_durable_mark(
        count in 1u64..24,
        durable_fraction in 0.0f64..1.0,
        flip_fraction in 0.0f64..1.0,
        bit in 0u8..8,
    ) {
        // Goal: a damaged record past the durable mark is treated as a torn tail: it and every
        // record after it are dropped, the ones before are kept intact.
        // Method: flip one random bit in the records past the mark, reopen, compare.
        let dir = tempfile::tempdir().expect("tempdir");
        let durable = ((count - 1) as f64 * durable_fraction) as u64;
        let segment = write_log(dir.path(), count, durable);
        let starts = frame_starts(count);
        let (durable_bytes, end) = (starts[durable as usize], starts[count as usize]);
        let position = durable_bytes + ((end - durable_bytes) as f64 * flip_fraction) as u64;
        let position = position.min(end - 1);
        flip_bit(&segment, position, bit);
        let damaged = frame_holding(&starts, position);
        assert_recovered(dir.path(), damaged, end - starts[damaged as usize]);
    }

    #[test]
    fn damage_below_the_durable_mark_is_corruption_and_nothing_is_cut(
        count in 1u64..24,
        flip_fraction in 0.0f64..1.0,
        bit in 0u8..8,
        truncate in any::<bool>(),
    ) {
        // Goal: a record the mark says was fsynced that is missing or fails its CRC makes open
        // fail with Corrupt, and the file is not touched, so nothing acknowledged is destroyed.
        // Method: fsync every record, then flip a bit or cut the file below the mark; reopen.
        let dir = tempfile::tempdir().expect("tempdir");
        let segment = write_log(dir.path(), count, count);
        let end = frame_starts(count)[count as usize];
        let position = ((end as f64 * flip_fraction) as u64).min(end - 1);
        if truncate {
            cut_file(&segment, position);
        } else {
            flip_bit(&segment, position, bit);
        }
        assert_refused(dir.path(), &segment);
        assert_refused(dir.path(), &segment);
    }
}

fn cut_file(path: &Path, size_bytes: u64) {
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    file.set_len(size_bytes).expect("cut");
}

fn flip_bit(path: &Path, position: u64, bit: u8) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[position as usize] ^= 1 << bit;
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn a_zero_filled_tail_is_cut_as_torn() {
    // Goal: zeros past the last frame (a file extended but never written, as after a crash
    // with delayed allocation) are a torn tail, cut and reported as such.
    // Method: append 4 KiB of zeros to the segment, reopen.
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = write_log(dir.path(), 5, 5);
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes.extend_from_slice(&[0; 4096]);
    std::fs::write(&segment, bytes).expect("write");
    let (log, report) = open(dir.path(), one_segment_config());
    assert_eq!((log.next_offset(), report.truncated_bytes), (5, 4096));
    assert!(
        report
            .truncation_reason
            .expect("a reason")
            .contains("zero-filled")
    );
}

#[test]
fn a_cut_tail_is_never_resurrected_by_later_appends() {
    // Goal: after a cut, stale frames past it cannot come back even when new records of the
    // same sizes line them up with the expected offsets again.
    // Method: damage record 5 of 15 (none fsynced), reopen (cuts 5..15), append 5 records of
    // the same sizes, reopen: the log must end at 10, not serve the old 10..15.
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = write_log(dir.path(), 15, 0);
    let starts = frame_starts(15);
    flip_bit(&segment, starts[5] + 30, 0);
    let (log, report) = open(dir.path(), one_segment_config());
    assert_eq!(
        (log.next_offset(), report.first_truncated_offset),
        (5, Some(5))
    );
    for offset in 5..10 {
        log.append(
            timestamp_for(offset),
            &payload_for(offset, payload_bytes(offset)),
        )
        .expect("append");
    }
    log.commit(false).expect("commit");
    drop(log);
    let (log, report) = open(dir.path(), one_segment_config());
    assert_eq!((log.next_offset(), report.truncated_bytes), (10, 0));
    check_all(&log, payload_bytes);
}

#[test]
fn a_missing_segment_is_corruption() {
    // Goal: losing a whole segment file is never mistaken for a torn tail: the last one lost
    // below the durable mark, or one in the middle, makes open fail with Corrupt.
    // Method: write 4 segments; remove the last, reopen; restore it, remove a middle one.
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), small_config());
    for _ in 0..4 {
        append_committed(&log, 8, 40, true);
    }
    drop(log);
    let files = segment_files(dir.path());
    let last = std::fs::read(&files[3]).expect("read");
    std::fs::remove_file(&files[3]).expect("remove last");
    assert!(matches!(
        Log::open(dir.path(), small_config()),
        Err(LogError::Corrupt { .. })
    ));
    std::fs::write(&files[3], last).expect("restore");
    std::fs::remove_file(&files[1]).expect("remove middle");
    match Log::open(dir.path(), small_config()) {
        Err(LogError::Corrupt { segment, .. }) => assert_eq!(segment, files[0]),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_damaged_record_in_a_sealed_segment_is_never_served() {
    // Goal: a sealed segment's bad record is an error when read, or when open checks it, and
    // never returned as data; the records around it stay readable.
    // Method: flip a bit in a middle record of segment 0 (read fails there, not elsewhere),
    // then in the last record of segment 1 (open's tail check fails).
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path(), small_config());
    for _ in 0..4 {
        append_committed(&log, 8, 40, true);
    }
    drop(log);
    let files = segment_files(dir.path());
    // 64-byte frames, one index entry per record: record 3 starts at byte 192.
    flip_bit(&files[0], 3 * 64 + 40, 2);
    let (log, _) = open(dir.path(), small_config());
    match log.read(0, usize::MAX, usize::MAX) {
        Err(LogError::Corrupt {
            segment, position, ..
        }) => assert_eq!((segment, position), (files[0].clone(), 192)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        log.read(0, 3, usize::MAX).expect("before the damage").len(),
        3
    );
    assert_eq!(
        log.read(4, usize::MAX, usize::MAX)
            .expect("after the damage")
            .len(),
        28
    );
    drop(log);
    flip_bit(&files[1], 7 * 64 + 30, 5);
    match Log::open(dir.path(), small_config()) {
        Err(LogError::Corrupt {
            segment, position, ..
        }) => assert_eq!((segment, position), (files[1].clone(), 448)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_damaged_durable_mark_falls_back_to_a_lower_bound() {
    // Goal: a mark that fails its checksum is ignored (not trusted, not fatal): with both slots
    // damaged the mark is 0, so recovery can only treat damage as a torn tail.
    // Method: fsync 10 records, damage both mark slots and record 7, reopen.
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = write_log(dir.path(), 10, 10);
    let mark = dir.path().join("durable.mark");
    flip_bit(&mark, 10, 0);
    flip_bit(&mark, 512 + 10, 0);
    flip_bit(&segment, frame_starts(10)[7] + 5, 1);
    let (log, report) = open(dir.path(), one_segment_config());
    assert_eq!((report.durable_next_offset, log.next_offset()), (0, 7));
    assert!(report.truncated_bytes > 0);
}

#[test]
fn orphaned_index_files_are_removed_on_open() {
    // Goal: index files whose segment is gone (left by a crash during retention) are removed.
    // Method: create stray index files, reopen, check they are gone and the log is intact.
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 3, 3);
    let stray = dir.path().join(format!("{:020}.index", 999));
    std::fs::write(&stray, [1, 2, 3]).expect("write stray");
    std::fs::write(stray.with_extension("timeindex"), [4]).expect("write stray");
    let (log, _) = open(dir.path(), one_segment_config());
    assert!(!stray.exists() && !stray.with_extension("timeindex").exists());
    assert_eq!(log.next_offset(), 3);
}
