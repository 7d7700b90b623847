//! The sparse indexes of one segment: offset → byte position (`.index`) and
//! timestamp → offset (`.timeindex`).
//!
//! Indexes are caches: the segment's frames are the truth. Both files get one entry for the same
//! records — the segment's first record, then the first record after every
//! `index_interval_bytes` of frames — so in memory they are one sorted `Vec<IndexEntry>`. Only
//! the active segment keeps that whole `Vec` ([`SparseIndex`]); a sealed segment keeps a bounded
//! sample of it and reads the rest from its files (`sealed_index.rs`).
//!
//! On disk (little-endian): an `.index` entry is `relative_offset: u32 | position: u32` and a
//! `.timeindex` entry is `timestamp_ms_max: i64 | relative_offset: u32`. `timestamp_ms_max` is the
//! largest timestamp of the segment's records up to and including that entry's record, so every
//! record before an entry whose `timestamp_ms_max < t` is older than `t`, even if callers ever
//! appended timestamps out of order.

use crate::record::{RECORD_HEADER_BYTES, read_u32, read_u64};

/// Bytes of one `.index` entry.
pub(crate) const OFFSET_INDEX_ENTRY_BYTES: usize = 8;
/// Bytes of one `.timeindex` entry.
pub(crate) const TIME_INDEX_ENTRY_BYTES: usize = 12;

/// One entry of both indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Offset of the record minus the segment's base offset.
    pub(crate) relative_offset: u32,
    /// Byte position of the record's frame in the segment file.
    pub(crate) position: u32,
    /// Largest timestamp of the segment's records up to and including this one.
    pub(crate) timestamp_ms_max: i64,
}

/// What a loaded index is checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexBounds {
    /// Records in the segment.
    pub(crate) record_count: u64,
    /// Bytes of the segment file.
    pub(crate) file_bytes: u64,
}

impl IndexBounds {
    /// The largest `.index` file these bounds allow (one entry per record at most); a larger file
    /// is rejected before it is read.
    pub(crate) fn offset_index_bytes_max(&self) -> u64 {
        self.record_count
            .saturating_mul(OFFSET_INDEX_ENTRY_BYTES as u64)
    }
}

/// The in-memory sparse index of one segment, sorted by offset and by position.
#[derive(Debug, Clone, Default)]
pub(crate) struct SparseIndex {
    /// Invariant: `relative_offset` and `position` strictly increase, `timestamp_ms_max` never
    /// decreases, and a non-empty segment's first entry is `(0, 0)`.
    entries: Vec<IndexEntry>,
}

impl SparseIndex {
    pub(crate) fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    pub(crate) fn last(&self) -> Option<IndexEntry> {
        self.entries.last().copied()
    }

    /// Appends entries for newer records.
    pub(crate) fn extend(&mut self, entries: &[IndexEntry]) {
        for entry in entries {
            debug_assert!(self.last().is_none_or(|last| {
                last.relative_offset < entry.relative_offset && last.position < entry.position
            }));
            self.entries.push(*entry);
        }
    }

    /// The last entry at or before `relative_offset`: where to start scanning for it.
    pub(crate) fn floor_for_offset(&self, relative_offset: u32) -> Option<IndexEntry> {
        let count = self
            .entries
            .partition_point(|entry| entry.relative_offset <= relative_offset);
        count.checked_sub(1).map(|last| self.entries[last])
    }

    /// The last entry whose records, and all records before it, are older than `timestamp_ms`:
    /// where to start scanning for the first record at or after `timestamp_ms`.
    pub(crate) fn floor_for_timestamp(&self, timestamp_ms: i64) -> Option<IndexEntry> {
        let count = self
            .entries
            .partition_point(|entry| entry.timestamp_ms_max < timestamp_ms);
        count.checked_sub(1).map(|last| self.entries[last])
    }

    /// The `.index` file's bytes.
    pub(crate) fn encode_offset_index(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_INDEX_ENTRY_BYTES);
        for entry in &self.entries {
            out.extend_from_slice(&entry.relative_offset.to_le_bytes());
            out.extend_from_slice(&entry.position.to_le_bytes());
        }
        out
    }

    /// The `.timeindex` file's bytes.
    pub(crate) fn encode_time_index(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_INDEX_ENTRY_BYTES);
        for entry in &self.entries {
            out.extend_from_slice(&entry.timestamp_ms_max.to_le_bytes());
            out.extend_from_slice(&entry.relative_offset.to_le_bytes());
        }
        out
    }

    /// Decodes both index files and checks them against each other and against `bounds`.
    /// The error says which sanity check failed; the caller then rebuilds from the segment.
    pub(crate) fn decode(
        offset_index: &[u8],
        time_index: &[u8],
        bounds: IndexBounds,
    ) -> Result<SparseIndex, String> {
        if !offset_index.len().is_multiple_of(OFFSET_INDEX_ENTRY_BYTES)
            || !time_index.len().is_multiple_of(TIME_INDEX_ENTRY_BYTES)
        {
            return Err("a file size is not a whole number of entries".to_owned());
        }
        let count = offset_index.len() / OFFSET_INDEX_ENTRY_BYTES;
        if count != time_index.len() / TIME_INDEX_ENTRY_BYTES {
            return Err("the two indexes have different entry counts".to_owned());
        }
        let mut index = SparseIndex {
            entries: Vec::with_capacity(count),
        };
        for number in 0..count {
            let offset_entry = &offset_index[number * OFFSET_INDEX_ENTRY_BYTES..];
            let time_entry = &time_index[number * TIME_INDEX_ENTRY_BYTES..];
            let entry = IndexEntry {
                relative_offset: read_u32(offset_entry, 0),
                position: read_u32(offset_entry, 4),
                timestamp_ms_max: read_u64(time_entry, 0) as i64,
            };
            if read_u32(time_entry, 8) != entry.relative_offset {
                return Err(format!(
                    "entry {number}: the indexes name different offsets"
                ));
            }
            check_entry(index.last(), entry, bounds)
                .map_err(|why| format!("entry {number}: {why}"))?;
            index.entries.push(entry);
        }
        if index.entries.is_empty() && bounds.record_count > 0 {
            return Err("no entry for a segment with records".to_owned());
        }
        Ok(index)
    }
}

/// Checks one decoded entry against the one before it and the segment's bounds.
fn check_entry(
    previous: Option<IndexEntry>,
    entry: IndexEntry,
    bounds: IndexBounds,
) -> Result<(), String> {
    if u64::from(entry.relative_offset) >= bounds.record_count
        || u64::from(entry.position) >= bounds.file_bytes
    {
        return Err(format!("{entry:?} is past the end of the segment"));
    }
    let Some(previous) = previous else {
        return match (entry.relative_offset, entry.position) {
            (0, 0) => Ok(()),
            _ => Err(format!("the first entry {entry:?} is not the first record")),
        };
    };
    let offset_step =
        u64::from(entry.relative_offset).checked_sub(u64::from(previous.relative_offset));
    let position_step = u64::from(entry.position).checked_sub(u64::from(previous.position));
    match (offset_step, position_step) {
        // Every frame takes at least a header, so positions grow at least that fast.
        (Some(offsets), Some(bytes))
            if offsets > 0 && bytes >= offsets * RECORD_HEADER_BYTES as u64 => {}
        _ => return Err(format!("{entry:?} does not follow {previous:?}")),
    }
    if entry.timestamp_ms_max < previous.timestamp_ms_max {
        return Err(format!(
            "{entry:?} has an older timestamp than {previous:?}"
        ));
    }
    Ok(())
}

/// Decides which records of a segment get index entries: the first, then the first after every
/// `interval_bytes` of frames. Used both when committing and when rebuilding from a scan, so both
/// produce the same index.
#[derive(Debug, Clone)]
pub(crate) struct IndexBuilder {
    interval_bytes: u64,
    bytes_since_entry: u64,
    has_entries: bool,
    timestamp_ms_max: i64,
}

impl IndexBuilder {
    /// A builder for an empty segment.
    pub(crate) fn new(interval_bytes: u32) -> Self {
        IndexBuilder {
            interval_bytes: u64::from(interval_bytes),
            bytes_since_entry: 0,
            has_entries: false,
            timestamp_ms_max: i64::MIN,
        }
    }

    /// Observes the segment's next record; returns its index entry when one is due.
    pub(crate) fn observe(
        &mut self,
        relative_offset: u32,
        position: u32,
        frame_bytes: u64,
        timestamp_ms: i64,
    ) -> Option<IndexEntry> {
        self.timestamp_ms_max = self.timestamp_ms_max.max(timestamp_ms);
        let due = !self.has_entries || self.bytes_since_entry >= self.interval_bytes;
        let entry = due.then(|| {
            self.bytes_since_entry = 0;
            self.has_entries = true;
            IndexEntry {
                relative_offset,
                position,
                timestamp_ms_max: self.timestamp_ms_max,
            }
        });
        self.bytes_since_entry += frame_bytes;
        entry
    }

    /// Largest timestamp observed (`i64::MIN` before any record).
    pub(crate) fn timestamp_ms_max(&self) -> i64 {
        self.timestamp_ms_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index of `count` records of 100 bytes each with timestamps 10 apart, one entry every
    /// 250 bytes (so every third record).
    fn sample(count: u32) -> SparseIndex {
        let mut builder = IndexBuilder::new(250);
        let mut index = SparseIndex::default();
        for relative_offset in 0..count {
            let position = relative_offset * 100;
            let timestamp_ms = i64::from(relative_offset) * 10;
            if let Some(entry) = builder.observe(relative_offset, position, 100, timestamp_ms) {
                index.extend(&[entry]);
            }
        }
        index
    }

    #[test]
    fn index_builder_adds_an_entry_every_interval() {
        // Goal: the first record is always indexed, then one record per interval of bytes.
        // Method: feed 10 records of 100 bytes with a 250-byte interval.
        let offsets: Vec<u32> = sample(10)
            .entries()
            .iter()
            .map(|e| e.relative_offset)
            .collect();
        assert_eq!(offsets, vec![0, 3, 6, 9]);
    }

    #[test]
    fn index_lookup_finds_the_floor_entry() {
        // Goal: lookups return the last entry at or before the target, by offset and by time.
        // Method: query every offset and a range of timestamps on a known index.
        let index = sample(10);
        for (relative_offset, expected) in [(0, 0), (2, 0), (3, 3), (5, 3), (9, 9), (500, 9)] {
            let entry = index.floor_for_offset(relative_offset).expect("an entry");
            assert_eq!(entry.relative_offset, expected, "offset {relative_offset}");
            assert_eq!(entry.position, expected * 100);
        }
        assert_eq!(
            index.floor_for_timestamp(0),
            None,
            "nothing is older than the first"
        );
        assert_eq!(
            index.floor_for_timestamp(1).map(|e| e.relative_offset),
            Some(0)
        );
        assert_eq!(
            index.floor_for_timestamp(30).map(|e| e.relative_offset),
            Some(0)
        );
        assert_eq!(
            index.floor_for_timestamp(31).map(|e| e.relative_offset),
            Some(3)
        );
        assert_eq!(
            index
                .floor_for_timestamp(i64::MAX)
                .map(|e| e.relative_offset),
            Some(9)
        );
        assert_eq!(SparseIndex::default().floor_for_offset(3), None);
    }

    #[test]
    fn index_files_round_trip() {
        // Goal: what is encoded decodes to the same entries.
        // Method: encode both files of a sample index and decode them with matching bounds.
        let index = sample(10);
        let bounds = IndexBounds {
            record_count: 10,
            file_bytes: 1000,
        };
        let decoded = SparseIndex::decode(
            &index.encode_offset_index(),
            &index.encode_time_index(),
            bounds,
        )
        .expect("a fresh index decodes");
        assert_eq!(decoded.entries(), index.entries());
    }

    #[test]
    fn index_files_failing_a_sanity_check_are_rejected() {
        // Goal: every kind of stale or damaged index file is refused (then rebuilt by the caller).
        // Method: a table of damaged file pairs, each of which must fail to decode.
        let index = sample(10);
        let offsets = index.encode_offset_index();
        let times = index.encode_time_index();
        let bounds = IndexBounds {
            record_count: 10,
            file_bytes: 1000,
        };
        let mut swapped = offsets.clone();
        swapped[8..16].copy_from_slice(&offsets[16..24]);
        swapped[16..24].copy_from_slice(&offsets[8..16]);
        let mut older = times.clone();
        older[12..20].copy_from_slice(&(-5i64).to_le_bytes());
        let cases: Vec<(&str, Vec<u8>, Vec<u8>, IndexBounds)> = vec![
            ("ragged file", offsets[..7].to_vec(), times.clone(), bounds),
            (
                "different counts",
                offsets[..8].to_vec(),
                times.clone(),
                bounds,
            ),
            ("empty for a segment with records", vec![], vec![], bounds),
            (
                "zero-filled",
                vec![0; offsets.len()],
                vec![0; times.len()],
                bounds,
            ),
            ("out of order", swapped, times.clone(), bounds),
            ("older timestamp", offsets.clone(), older, bounds),
            (
                "past the records",
                offsets.clone(),
                times.clone(),
                IndexBounds {
                    record_count: 5,
                    ..bounds
                },
            ),
            (
                "past the bytes",
                offsets.clone(),
                times.clone(),
                IndexBounds {
                    file_bytes: 600,
                    ..bounds
                },
            ),
        ];
        for (name, offset_index, time_index, bounds) in cases {
            assert!(
                SparseIndex::decode(&offset_index, &time_index, bounds).is_err(),
                "case {name}"
            );
        }
    }
}
