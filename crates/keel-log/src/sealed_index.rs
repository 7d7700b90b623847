//! The index of a sealed segment: a bounded sample of its entries in memory, the others looked
//! up in its `.index` and `.timeindex` files when needed.
//!
//! Memory: a sealed segment keeps every `stride`-th entry (the first always), at most
//! `SEALED_INDEX_ENTRIES_IN_MEMORY_MAX` of them at 16 bytes each, whatever its size. The active
//! segment keeps its whole index in memory (`index.rs`) until it is sealed.
//!
//! A lookup takes the last sampled entry at or before its target, then narrows between it and
//! the next sampled entry in the file: single-entry reads while more than
//! `INDEX_LOOKUP_READ_ENTRIES_MAX` entries are left, then one read of the rest. With the default
//! config that is one read of 2 KiB; a time lookup also reads the 8-byte `.index` entry of the
//! entry it found, for its position. The files are small and read often, so they stay in the
//! page cache.
//!
//! Index files are caches, and they can be damaged after they were checked on open. Every entry
//! read is checked against the entries around it that are already known (sampled or read and
//! checked) and against the segment's bounds; a lookup that reads anything out of place, or fails
//! to read, falls back to its sampled entry. The caller also checks the frame at the entry found
//! ([`Floor::fallback`]). A fallback scans more frames; it never reads a wrong record.
//!
//! What no check here catches: a `.timeindex` entry whose `timestamp_ms_max` was made lower but
//! stays in order and not below its own record's timestamp. When writers append timestamps out
//! of order, such an entry can make `offset_for_timestamp` skip an older-but-later-stamped
//! record; with timestamps in order (append time) it is caught by the frame check.

use std::io;
use std::sync::Arc;

use crate::index::{IndexEntry, OFFSET_INDEX_ENTRY_BYTES, TIME_INDEX_ENTRY_BYTES};
use crate::limits::{INDEX_LOOKUP_READ_ENTRIES_MAX, SEALED_INDEX_ENTRIES_IN_MEMORY_MAX};
use crate::record::{RECORD_HEADER_BYTES, read_u32, read_u64};
use crate::storage::{StorageFile, read_full_at};

/// Where to start scanning a segment for a lookup's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Floor {
    /// The index entry to start from. Found by offset in an index file, its
    /// `timestamp_ms_max` is not read: it is the sampled entry's, a lower bound.
    pub(crate) entry: IndexEntry,
    /// Where to start instead when the frame at `entry` does not fit it: the sampled entry the
    /// lookup started from when `entry` was just read from an index file, otherwise `None`, the
    /// segment's first record.
    pub(crate) fallback: Option<IndexEntry>,
}

impl Floor {
    /// A floor at an entry held in memory.
    pub(crate) fn in_memory(entry: IndexEntry) -> Floor {
        Floor {
            entry,
            fallback: None,
        }
    }
}

/// The result of a lookup in a sealed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lookup {
    /// Where to start scanning; `None` to start at the segment's first record.
    pub(crate) floor: Option<Floor>,
    /// Why the index files could not be used, when the lookup fell back to a sampled entry.
    pub(crate) damage: Option<String>,
}

/// Where a lookup gets a sealed segment's index files: opened on demand through the cache of
/// open files (`open_files.rs`), so an idle sealed segment holds no descriptor.
pub(crate) trait IndexFiles {
    /// The `.index` file, open.
    fn offset_index(&self) -> io::Result<Arc<dyn StorageFile>>;
    /// The `.timeindex` file, open.
    fn time_index(&self) -> io::Result<Arc<dyn StorageFile>>;
}

/// What entries read from a sealed segment's index files are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SealedBounds {
    /// Records in the segment.
    pub(crate) record_count: u64,
    /// Bytes of the segment file.
    pub(crate) file_bytes: u64,
    /// Largest timestamp of the segment's records.
    pub(crate) timestamp_ms_max: i64,
}

/// The index of a sealed segment (see the module doc).
#[derive(Debug)]
pub(crate) struct SealedIndex {
    /// Entries `0, stride, 2 * stride, ...` of the index files; at most
    /// `SEALED_INDEX_ENTRIES_IN_MEMORY_MAX`, boxed so no spare capacity is kept.
    samples: Box<[IndexEntry]>,
    /// Index file entries per sample, at least 1.
    stride: u64,
    /// Entries in each index file.
    entry_count: u64,
    bounds: SealedBounds,
    /// False when the files could not be written: lookups then scan from the samples.
    files_written: bool,
}

/// An `.index` entry as read, or the end of the segment as an upper bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OffsetKey {
    relative_offset: u64,
    position: u64,
}

/// A `.timeindex` entry as read, or the end of the segment as an upper bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimeKey {
    timestamp_ms_max: i64,
    relative_offset: u64,
}

/// An index file entry known to be in place, and its number in the file.
#[derive(Debug, Clone, Copy)]
struct Known<K> {
    number: u64,
    key: K,
}

impl SealedIndex {
    /// The index of a sealed segment whose index files hold `entries` (all of them, checked).
    pub(crate) fn new(
        entries: &[IndexEntry],
        bounds: SealedBounds,
        files_written: bool,
    ) -> SealedIndex {
        let stride = entries
            .len()
            .div_ceil(SEALED_INDEX_ENTRIES_IN_MEMORY_MAX)
            .max(1);
        let samples: Box<[IndexEntry]> = entries.iter().step_by(stride).copied().collect();
        assert!(samples.len() <= SEALED_INDEX_ENTRIES_IN_MEMORY_MAX);
        SealedIndex {
            samples,
            stride: stride as u64,
            entry_count: entries.len() as u64,
            bounds,
            files_written,
        }
    }

    /// Index entries held in memory.
    #[cfg(test)]
    pub(crate) fn entries_in_memory(&self) -> usize {
        self.samples.len()
    }

    /// The last entry at or before `relative_offset`: where to start scanning for it. The index
    /// files are `files`.
    pub(crate) fn floor_for_offset(&self, files: &dyn IndexFiles, relative_offset: u32) -> Lookup {
        let count = self
            .samples
            .partition_point(|entry| entry.relative_offset <= relative_offset);
        let Some(sample_number) = count.checked_sub(1) else {
            return self.sampled(None);
        };
        let sample = self.samples[sample_number];
        if !self.files_needed() {
            return self.sampled(Some(sample));
        }
        let file = match files.offset_index() {
            Ok(file) => file,
            Err(error) => return self.unopened(sample, &error),
        };
        let target = u64::from(relative_offset);
        match self.search_offset(&*file, sample_number, target) {
            Ok(entry) => self.found(entry, sample),
            Err(why) => Lookup {
                floor: Some(Floor::in_memory(sample)),
                damage: Some(format!(".index: {why}")),
            },
        }
    }

    /// The last entry whose records, and all records before it, are older than `timestamp_ms`:
    /// where to start scanning for the first record at or after `timestamp_ms`. The index files
    /// are `files`.
    pub(crate) fn floor_for_timestamp(&self, files: &dyn IndexFiles, timestamp_ms: i64) -> Lookup {
        let count = self
            .samples
            .partition_point(|entry| entry.timestamp_ms_max < timestamp_ms);
        let Some(sample_number) = count.checked_sub(1) else {
            return self.sampled(None);
        };
        let sample = self.samples[sample_number];
        if !self.files_needed() {
            return self.sampled(Some(sample));
        }
        let opened = files
            .time_index()
            .and_then(|time| Ok((time, files.offset_index()?)));
        let (time_file, offset_file) = match opened {
            Ok(files) => files,
            Err(error) => return self.unopened(sample, &error),
        };
        match self.search_timestamp(&*time_file, &*offset_file, sample_number, timestamp_ms) {
            Ok(entry) => self.found(entry, sample),
            Err(why) => Lookup {
                floor: Some(Floor::in_memory(sample)),
                damage: Some(why),
            },
        }
    }

    /// Whether a lookup reads the index files: not when they could not be written, nor when
    /// every entry is sampled (the sample found is the entry the files would give), which
    /// saves opening them.
    fn files_needed(&self) -> bool {
        self.files_written && self.stride > 1
    }

    /// A floor at `sample` when an index file could not be opened (out of descriptors, say):
    /// not damage, so not reported as such; the scan from the sample is slower, not wrong.
    fn unopened(&self, sample: IndexEntry, error: &io::Error) -> Lookup {
        tracing::debug!(%error, "could not open an index file; scanning from a sampled entry");
        self.sampled(Some(sample))
    }

    fn sampled(&self, entry: Option<IndexEntry>) -> Lookup {
        Lookup {
            floor: entry.map(Floor::in_memory),
            damage: None,
        }
    }

    /// A floor at `entry`, found from `sample`; an entry read from a file keeps the sample as
    /// its fallback.
    fn found(&self, entry: IndexEntry, sample: IndexEntry) -> Lookup {
        let floor = if entry == sample {
            Floor::in_memory(sample)
        } else {
            Floor {
                entry,
                fallback: Some(sample),
            }
        };
        Lookup {
            floor: Some(floor),
            damage: None,
        }
    }

    /// The numbers of the file entries from sample `sample_number` to the next sample (or the
    /// end), as known bounds.
    fn window<K>(
        &self,
        sample_number: usize,
        key: impl Fn(IndexEntry) -> K,
        end: K,
    ) -> (Known<K>, Known<K>) {
        let lower = Known {
            number: sample_number as u64 * self.stride,
            key: key(self.samples[sample_number]),
        };
        let upper = match self.samples.get(sample_number + 1) {
            Some(next) => Known {
                number: lower.number + self.stride,
                key: key(*next),
            },
            None => Known {
                number: self.entry_count,
                key: end,
            },
        };
        (lower, upper)
    }

    /// The last `.index` entry at or before `target`, searched from sample `sample_number`.
    fn search_offset(
        &self,
        file: &dyn StorageFile,
        sample_number: usize,
        target: u64,
    ) -> Result<IndexEntry, String> {
        let end = OffsetKey {
            relative_offset: self.bounds.record_count,
            position: self.bounds.file_bytes,
        };
        let (lower, upper) = self.window(sample_number, offset_key, end);
        let found = narrow(
            lower,
            upper,
            |first, count| read_offset_keys(file, first, count),
            offset_follows,
            |key| key.relative_offset <= target,
        )?;
        let sample = self.samples[sample_number];
        Ok(IndexEntry {
            relative_offset: u32::try_from(found.key.relative_offset)
                .expect("checked below the record count, which fits in u32"),
            position: u32::try_from(found.key.position)
                .expect("checked below the file size, which fits in u32"),
            // Not read: the sample's is a lower bound, and offset lookups do not use it.
            timestamp_ms_max: sample.timestamp_ms_max,
        })
    }

    /// The last time index entry older than `timestamp_ms`, searched from sample
    /// `sample_number`, with its position from the matching `.index` entry.
    fn search_timestamp(
        &self,
        time_file: &dyn StorageFile,
        offset_file: &dyn StorageFile,
        sample_number: usize,
        timestamp_ms: i64,
    ) -> Result<IndexEntry, String> {
        let end = TimeKey {
            timestamp_ms_max: self.bounds.timestamp_ms_max,
            relative_offset: self.bounds.record_count,
        };
        let (lower, upper) = self.window(sample_number, time_key, end);
        let found = narrow(
            lower,
            upper,
            |first, count| read_time_keys(time_file, first, count),
            time_follows,
            |key| key.timestamp_ms_max < timestamp_ms,
        )
        .map_err(|why| format!(".timeindex: {why}"))?;
        let sample = self.samples[sample_number];
        if found.number == lower.number {
            return Ok(sample);
        }
        // The position of the same entry, checked against the samples around it.
        let end = OffsetKey {
            relative_offset: self.bounds.record_count,
            position: self.bounds.file_bytes,
        };
        let (offset_lower, offset_upper) = self.window(sample_number, offset_key, end);
        let offset = read_one(
            |first, count| read_offset_keys(offset_file, first, count),
            found.number,
        )
        .map_err(|why| format!(".index: {why}"))?;
        let in_place = offset.relative_offset == found.key.relative_offset
            && offset_follows(&offset_lower.key, &offset)
            && offset_follows(&offset, &offset_upper.key);
        if !in_place {
            return Err(format!(
                ".index entry {} {offset:?} does not match .timeindex entry {:?}",
                found.number, found.key
            ));
        }
        Ok(IndexEntry {
            relative_offset: u32::try_from(offset.relative_offset)
                .expect("checked below the record count, which fits in u32"),
            position: u32::try_from(offset.position)
                .expect("checked below the file size, which fits in u32"),
            timestamp_ms_max: found.key.timestamp_ms_max,
        })
    }
}

/// The last file entry strictly between `lower` and `upper` for which `at_or_before` holds, or
/// `lower` when there is none (`at_or_before` holds for `lower` and not for `upper`).
///
/// Every entry read must follow the known entry before it and precede the one after it; the
/// entries between two known ones are read at once when there are at most
/// `INDEX_LOOKUP_READ_ENTRIES_MAX`, otherwise the middle one is read to halve the window.
fn narrow<K: Copy + std::fmt::Debug>(
    mut lower: Known<K>,
    mut upper: Known<K>,
    read: impl Fn(u64, usize) -> Result<Vec<K>, String>,
    follows: impl Fn(&K, &K) -> bool,
    at_or_before: impl Fn(&K) -> bool,
) -> Result<Known<K>, String> {
    debug_assert!(lower.number < upper.number);
    // Each pass halves the window, so this ends within 64 passes.
    while upper.number - lower.number - 1 > INDEX_LOOKUP_READ_ENTRIES_MAX as u64 {
        let number = lower.number + (upper.number - lower.number) / 2;
        let key = read_one(&read, number)?;
        if !follows(&lower.key, &key) || !follows(&key, &upper.key) {
            return Err(format!(
                "entry {number} {key:?} is not between {:?} and {:?}",
                lower.key, upper.key
            ));
        }
        let known = Known { number, key };
        if at_or_before(&key) {
            lower = known;
        } else {
            upper = known;
        }
    }
    let count = (upper.number - lower.number - 1) as usize;
    let keys = read(lower.number + 1, count)?;
    let mut found = lower;
    let mut previous = lower.key;
    for (key, number) in keys.iter().zip(lower.number + 1..) {
        if !follows(&previous, key) {
            return Err(format!(
                "entry {number} {key:?} does not follow {previous:?}"
            ));
        }
        if at_or_before(key) {
            found = Known { number, key: *key };
        }
        previous = *key;
    }
    if !follows(&previous, &upper.key) {
        return Err(format!(
            "entry {} {previous:?} does not precede {:?}",
            upper.number - 1,
            upper.key
        ));
    }
    Ok(found)
}

/// Reads entry `number` with `read`.
fn read_one<K: Copy>(
    read: impl Fn(u64, usize) -> Result<Vec<K>, String>,
    number: u64,
) -> Result<K, String> {
    let keys = read(number, 1)?;
    Ok(*keys
        .first()
        .expect("a read returns every entry asked for or fails"))
}

fn offset_key(entry: IndexEntry) -> OffsetKey {
    OffsetKey {
        relative_offset: u64::from(entry.relative_offset),
        position: u64::from(entry.position),
    }
}

fn time_key(entry: IndexEntry) -> TimeKey {
    TimeKey {
        timestamp_ms_max: entry.timestamp_ms_max,
        relative_offset: u64::from(entry.relative_offset),
    }
}

/// Whether `next` can come after `previous` in an `.index` file (or be the end of the segment):
/// both fields increase, positions by at least a header per record.
fn offset_follows(previous: &OffsetKey, next: &OffsetKey) -> bool {
    let offsets = next.relative_offset.checked_sub(previous.relative_offset);
    let bytes = next.position.checked_sub(previous.position);
    match (offsets, bytes) {
        (Some(offsets), Some(bytes)) => {
            offsets > 0 && bytes >= offsets.saturating_mul(RECORD_HEADER_BYTES as u64)
        }
        _ => false,
    }
}

/// Whether `next` can come after `previous` in a `.timeindex` file (or be the end of the
/// segment): offsets increase and timestamps never decrease.
fn time_follows(previous: &TimeKey, next: &TimeKey) -> bool {
    next.relative_offset > previous.relative_offset
        && next.timestamp_ms_max >= previous.timestamp_ms_max
}

/// Reads `count` whole entries of `entry_bytes` from entry `first` of `file`.
fn read_entries(
    file: &dyn StorageFile,
    entry_bytes: usize,
    first: u64,
    count: usize,
) -> Result<Vec<u8>, String> {
    debug_assert!(count <= INDEX_LOOKUP_READ_ENTRIES_MAX);
    let mut bytes = vec![0; count * entry_bytes];
    let read = read_full_at(file, &mut bytes, first * entry_bytes as u64)
        .map_err(|error| format!("reading entries from {first}: {error}"))?;
    if read < bytes.len() {
        return Err(format!(
            "the file ends before entry {}",
            first + (read / entry_bytes) as u64
        ));
    }
    Ok(bytes)
}

fn read_offset_keys(
    file: &dyn StorageFile,
    first: u64,
    count: usize,
) -> Result<Vec<OffsetKey>, String> {
    let bytes = read_entries(file, OFFSET_INDEX_ENTRY_BYTES, first, count)?;
    let keys = bytes
        .chunks_exact(OFFSET_INDEX_ENTRY_BYTES)
        .map(|entry| OffsetKey {
            relative_offset: u64::from(read_u32(entry, 0)),
            position: u64::from(read_u32(entry, 4)),
        })
        .collect();
    Ok(keys)
}

fn read_time_keys(
    file: &dyn StorageFile,
    first: u64,
    count: usize,
) -> Result<Vec<TimeKey>, String> {
    let bytes = read_entries(file, TIME_INDEX_ENTRY_BYTES, first, count)?;
    let keys = bytes
        .chunks_exact(TIME_INDEX_ENTRY_BYTES)
        .map(|entry| TimeKey {
            timestamp_ms_max: read_u64(entry, 0) as i64,
            relative_offset: u64::from(read_u32(entry, 8)),
        })
        .collect();
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Mutex;

    use super::*;
    use crate::index::{IndexBuilder, SparseIndex};

    /// A file in memory whose bytes a test can damage.
    #[derive(Debug, Default)]
    struct MemoryFile(Mutex<Vec<u8>>);

    impl MemoryFile {
        fn with(bytes: Vec<u8>) -> Arc<MemoryFile> {
            Arc::new(MemoryFile(Mutex::new(bytes)))
        }
        fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
            self.0.lock().expect("not poisoned")
        }
    }

    impl StorageFile for MemoryFile {
        fn read_at(&self, buffer: &mut [u8], position: u64) -> io::Result<usize> {
            let bytes = self.bytes();
            let start = (position as usize).min(bytes.len());
            let read = buffer.len().min(bytes.len() - start);
            buffer[..read].copy_from_slice(&bytes[start..start + read]);
            Ok(read)
        }
        fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
            unimplemented!("index files are only read here")
        }
        fn sync_data(&self) -> io::Result<()> {
            Ok(())
        }
        fn set_size_bytes(&self, size_bytes: u64) -> io::Result<()> {
            self.bytes().resize(size_bytes as usize, 0);
            Ok(())
        }
        fn size_bytes(&self) -> io::Result<u64> {
            Ok(self.bytes().len() as u64)
        }
    }

    /// A sealed segment's two index files, in memory.
    struct MemoryIndexFiles {
        offset_file: Arc<MemoryFile>,
        time_file: Arc<MemoryFile>,
    }

    impl IndexFiles for MemoryIndexFiles {
        fn offset_index(&self) -> io::Result<Arc<dyn StorageFile>> {
            Ok(self.offset_file.clone())
        }
        fn time_index(&self) -> io::Result<Arc<dyn StorageFile>> {
            Ok(self.time_file.clone())
        }
    }

    /// A sealed segment of `count` records of 100 bytes with timestamps 10 apart (each one
    /// indexed), its full in-memory index, its sealed index and the two files behind it.
    struct Sample {
        full: SparseIndex,
        sealed: SealedIndex,
        files: MemoryIndexFiles,
    }

    fn sample(count: u32) -> Sample {
        let mut builder = IndexBuilder::new(1);
        let mut full = SparseIndex::default();
        for relative_offset in 0..count {
            let timestamp_ms = i64::from(relative_offset) * 10;
            let entry = builder.observe(relative_offset, relative_offset * 100, 100, timestamp_ms);
            full.extend(&[entry.expect("every record is indexed")]);
        }
        let offset_file = MemoryFile::with(full.encode_offset_index());
        let time_file = MemoryFile::with(full.encode_time_index());
        let bounds = SealedBounds {
            record_count: u64::from(count),
            file_bytes: u64::from(count) * 100,
            timestamp_ms_max: builder.timestamp_ms_max(),
        };
        let sealed = SealedIndex::new(full.entries(), bounds, true);
        Sample {
            full,
            sealed,
            files: MemoryIndexFiles {
                offset_file,
                time_file,
            },
        }
    }

    /// Where an entry starts a scan.
    fn place(entry: IndexEntry) -> (u32, u32) {
        (entry.relative_offset, entry.position)
    }

    /// Targets around every sampled entry and a spread of others, for a segment of `count`.
    fn targets(count: u32) -> Vec<u32> {
        let mut targets: Vec<u32> = (0..count).step_by(97).collect();
        for sampled in (0..count).step_by(count.div_ceil(128).max(1) as usize) {
            targets.extend([sampled.saturating_sub(1), sampled, sampled + 1]);
        }
        targets.extend([count.saturating_sub(1), count, count + 5, u32::MAX]);
        targets
    }

    #[test]
    fn sealed_index_lookups_match_the_full_index() {
        // Goal: a sealed segment's lookups, from a sample plus its files, find the same entries
        // as the whole index in memory, whether the window between two samples is read at once
        // or narrowed first.
        // Method: segments from 1 to 200k entries (stride 1 to 1563); compare every kind of
        // target with the full index.
        for count in [1, 7, 128, 129, 1_000, 65_537, 200_000] {
            let sample = sample(count);
            for target in targets(count) {
                let lookup = sample.sealed.floor_for_offset(&sample.files, target);
                assert_eq!(lookup.damage, None);
                // An offset lookup reads no timestamp: compare where it starts.
                let expected = sample.full.floor_for_offset(target).map(place);
                let found = lookup.floor.map(|f| place(f.entry));
                assert_eq!(found, expected, "{count}: {target}");
                for timestamp_ms in [i64::from(target) * 10, i64::from(target) * 10 + 1] {
                    let lookup = sample
                        .sealed
                        .floor_for_timestamp(&sample.files, timestamp_ms);
                    assert_eq!(lookup.damage, None);
                    let expected = sample.full.floor_for_timestamp(timestamp_ms);
                    let found = lookup.floor.map(|f| f.entry);
                    assert_eq!(found, expected, "{count}: {timestamp_ms} ms");
                }
            }
        }
    }

    #[test]
    fn sealed_index_keeps_a_bounded_sample_in_memory() {
        // Goal: however many entries a sealed segment has, at most
        // SEALED_INDEX_ENTRIES_IN_MEMORY_MAX stay in memory (memory is O(segments), not bytes).
        // Method: seal indexes of growing size, up to the most entries a segment can have with
        // a 4 KiB interval, and count.
        for count in [1, 128, 129, 32_768, 262_144] {
            let in_memory = sample(count).sealed.entries_in_memory();
            assert!(in_memory <= SEALED_INDEX_ENTRIES_IN_MEMORY_MAX, "{count}");
            assert!(
                in_memory * std::mem::size_of::<IndexEntry>() <= 2048,
                "{count}"
            );
            // Small indexes are kept whole; larger ones keep at least half the bound, evenly.
            let kept_min = (count as usize).min(SEALED_INDEX_ENTRIES_IN_MEMORY_MAX / 2);
            assert!(in_memory >= kept_min, "{count}");
        }
    }

    /// Damages the `.index` and `.timeindex` bytes.
    type Damage = fn(&mut Vec<u8>, &mut Vec<u8>);

    #[test]
    fn damaged_index_files_fall_back_to_a_sampled_entry() {
        // Goal: entries read from damaged index files are never used when out of place: the
        // lookup reports the damage and starts from its sampled entry, and it never returns an
        // entry past its target (which would skip records).
        // Method: damage the files of a 65k-entry index in different ways, look up many targets,
        // and check each result is the true floor or a sample at or before it.
        let cases: [(&str, Damage); 5] = [
            ("truncated", |offsets, times| {
                offsets.truncate(offsets.len() / 2);
                times.truncate(times.len() / 3);
            }),
            ("zero-filled", |offsets, times| {
                offsets.fill(0);
                times.fill(0);
            }),
            ("emptied", |offsets, times| {
                offsets.clear();
                times.clear();
            }),
            ("garbage", |offsets, times| {
                for (number, byte) in offsets.iter_mut().chain(times.iter_mut()).enumerate() {
                    *byte = (number as u8).wrapping_mul(31) ^ 0x5a;
                }
            }),
            ("shifted by one entry", |offsets, times| {
                offsets.drain(..OFFSET_INDEX_ENTRY_BYTES);
                times.drain(..TIME_INDEX_ENTRY_BYTES);
            }),
        ];
        for (name, damage) in cases {
            let sample = sample(65_537);
            damage(
                &mut sample.files.offset_file.bytes(),
                &mut sample.files.time_file.bytes(),
            );
            let mut damage_seen = false;
            for target in targets(65_537) {
                let true_floor = sample.full.floor_for_offset(target).expect("an entry");
                let lookup = sample.sealed.floor_for_offset(&sample.files, target);
                damage_seen |= lookup.damage.is_some();
                let floor = lookup.floor.expect("an entry");
                assert!(
                    floor.entry.relative_offset <= true_floor.relative_offset,
                    "{name}"
                );
                if place(floor.entry) != place(true_floor) {
                    assert!(
                        sample.sealed.samples.contains(&floor.entry),
                        "{name} {target}"
                    );
                }
                let timestamp_ms = i64::from(target) * 10 + 1;
                let true_floor = sample.full.floor_for_timestamp(timestamp_ms);
                let floor = sample
                    .sealed
                    .floor_for_timestamp(&sample.files, timestamp_ms)
                    .floor;
                let floor = floor.map(|floor| floor.entry);
                assert!(floor.is_some() == true_floor.is_some(), "{name}");
                if floor != true_floor {
                    let floor = floor.expect("an entry");
                    assert!(
                        sample.sealed.samples.contains(&floor),
                        "{name} {timestamp_ms}"
                    );
                }
            }
            assert!(damage_seen, "{name}: the damage is reported");
        }
    }

    #[test]
    fn without_index_files_lookups_start_from_samples() {
        // Goal: a sealed segment whose index files could not be written still answers lookups,
        // from its samples alone (the caller scans further).
        // Method: seal an index without files and look up targets between samples.
        let Sample { full, files, .. } = sample(1_000);
        let bounds = SealedBounds {
            record_count: 1_000,
            file_bytes: 100_000,
            timestamp_ms_max: 9_990,
        };
        let sealed = SealedIndex::new(full.entries(), bounds, false);
        let lookup = sealed.floor_for_offset(&files, 500);
        assert_eq!(lookup.damage, None);
        let floor = lookup.floor.expect("an entry");
        assert_eq!((floor.entry.relative_offset, floor.fallback), (496, None));
        let floor = sealed
            .floor_for_timestamp(&files, 5_001)
            .floor
            .expect("an entry");
        assert_eq!(floor.entry.relative_offset, 496);
    }
}
