//! Retention: which whole segments to delete, and deleting them in a crash-safe order.
//!
//! Only the oldest segments go, as a prefix of the list, so the log never has a hole; the active
//! (last) segment is never deleted, so a log always has a segment to append to.

use std::io;
use std::path::Path;

use crate::error::LogError;
use crate::segment::Segment;
use crate::storage::Storage;

/// What a retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes freed.
    pub bytes_deleted: u64,
}

/// Size and newest timestamp of one segment, what retention decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentStats {
    pub(crate) size_bytes: u64,
    /// `i64::MIN` for an empty segment.
    pub(crate) timestamp_ms_max: i64,
}

/// How many of the oldest segments to delete: those whose newest record is older than
/// `now_ms - age_ms_max`, and then the oldest while all segments hold more than `bytes_max`.
/// Never the last (active) segment; never a segment after one that is kept.
pub(crate) fn expired_prefix(
    segments: &[SegmentStats],
    now_ms: i64,
    age_ms_max: Option<u64>,
    bytes_max: Option<u64>,
) -> usize {
    let sealed = &segments[..segments.len().saturating_sub(1)];
    let by_age = age_ms_max.map_or(0, |age_ms_max| {
        let cutoff_ms = now_ms.saturating_sub(i64::try_from(age_ms_max).unwrap_or(i64::MAX));
        sealed
            .iter()
            .take_while(|segment| segment.timestamp_ms_max < cutoff_ms)
            .count()
    });
    let by_size = bytes_max.map_or(0, |bytes_max| {
        let mut total_bytes: u64 = segments.iter().map(|segment| segment.size_bytes).sum();
        let mut count = 0;
        while count < sealed.len() && total_bytes > bytes_max {
            total_bytes -= sealed[count].size_bytes;
            count += 1;
        }
        count
    });
    by_age.max(by_size)
}

/// Deletes the files of `segment`, the oldest in the log. `unlist` removes it from the segment
/// list once its data file is gone.
///
/// Order: the `.log` first, then the directory fsync, then the index files.
/// - `.log` first: once it is gone the segment is gone, and a crash leaves at most orphaned index
///   files, which `open` removes. Deleting the indexes first would leave, after a crash, a segment
///   whose indexes `open` must rebuild by scanning it whole, only for retention to delete it.
/// - The directory fsync after each `.log` (and before the next segment's) makes the deletions
///   durable oldest first. Without it a crash could undo the removal of an older segment but
///   keep that of a newer one, leaving a hole that `open` must report as corruption.
/// - The index files need no fsync of their own: a lost removal is redone on the next open.
pub(crate) fn delete_segment_files(
    storage: &dyn Storage,
    dir: &Path,
    segment: &Segment,
    unlist: impl FnOnce(),
) -> Result<(), LogError> {
    storage
        .remove_file(segment.path())
        .map_err(|source| LogError::io("remove", segment.path(), source))?;
    unlist();
    storage
        .sync_dir(dir)
        .map_err(|source| LogError::io("fsync", dir, source))?;
    for path in segment.index_paths() {
        match storage.remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(LogError::io("remove", &path, source)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(sizes_and_times: &[(u64, i64)]) -> Vec<SegmentStats> {
        sizes_and_times
            .iter()
            .map(|&(size_bytes, timestamp_ms_max)| SegmentStats {
                size_bytes,
                timestamp_ms_max,
            })
            .collect()
    }

    #[test]
    fn retention_selects_an_expired_prefix_and_never_the_active_segment() {
        // Goal: age and size rules pick the oldest segments, stop at the first kept one, and
        // never pick the last. Method: a table of segment lists and rules with the count each
        // must select.
        let segments = stats(&[(100, 10), (100, 20), (100, 5), (100, 40)]);
        // (name, now_ms, age_ms_max, bytes_max, segments selected)
        type Case = (&'static str, i64, Option<u64>, Option<u64>, usize);
        let cases: [Case; 9] = [
            ("no rule", 1000, None, None, 0),
            ("age: nothing old enough", 15, Some(10), None, 0),
            (
                "age: older segments after a kept one stay",
                25,
                Some(10),
                None,
                1,
            ),
            (
                "age: a segment at the cutoff stops the prefix",
                30,
                Some(10),
                None,
                1,
            ),
            ("age: never the active one", 1000, Some(1), None, 3),
            ("size: under the limit", 0, None, Some(400), 0),
            ("size: just over", 0, None, Some(399), 1),
            ("size: never the active one", 0, None, Some(0), 3),
            ("both: the larger count wins", 25, Some(10), Some(250), 2),
        ];
        for (name, now_ms, age_ms_max, bytes_max, expected) in cases {
            assert_eq!(
                expired_prefix(&segments, now_ms, age_ms_max, bytes_max),
                expected,
                "{name}"
            );
        }
        assert_eq!(
            expired_prefix(&stats(&[(100, 1)]), 1000, Some(1), Some(0)),
            0,
            "one segment"
        );
        assert_eq!(expired_prefix(&[], 1000, Some(1), Some(0)), 0, "no segment");
        let empty_active = stats(&[(100, 1), (0, i64::MIN)]);
        assert_eq!(
            expired_prefix(&empty_active, i64::MIN, Some(u64::MAX), None),
            0,
            "extreme times"
        );
    }
}
