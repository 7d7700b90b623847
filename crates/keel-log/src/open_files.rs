//! The open files of sealed segments: each opened when a read needs it and kept in one bounded
//! cache shared by every log of the process, the least recently used closed first.
//!
//! Invariant: the cache holds at most [`SEALED_FILES_OPEN_MAX`] files, so however many sealed
//! segments the logs of a process have, their idle files hold at most that many descriptors.
//! A read takes its own handle (an `Arc`) for its duration, so a file closed by the cache while
//! a read uses it stays open until that read ends: descriptors in use are the cache's plus one
//! per read in progress. An active segment keeps its own file open (`Segment::pinned_file`): it
//! is written to all the time.
//!
//! Files are keyed by a number unique to each segment instance ([`SegmentFiles`]), never by
//! path: a log deleted and created again at the same path must not be served a handle to the
//! old, unlinked file. A segment's entries are dropped with it.
//!
//! Retention removes a sealed segment's `.log` while a read may still hold it; a handle open
//! then stays valid (the file is unlinked, not gone), and an open after the removal fails with
//! `NotFound`, which `Log::read` reports like any read of a removed offset.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use crate::limits::SEALED_FILES_OPEN_MAX;
use crate::sealed_index::IndexFiles;
use crate::segment::{INDEX_EXTENSION, TIME_INDEX_EXTENSION};
use crate::storage::{OpenMode, Storage, StorageFile};

/// Which file of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FileKind {
    /// The `.log` file, the frames.
    Log,
    /// The `.index` file.
    OffsetIndex,
    /// The `.timeindex` file.
    TimeIndex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    segment_id: u64,
    kind: FileKind,
}

#[derive(Debug)]
struct Entry {
    file: Arc<dyn StorageFile>,
    /// The cache's clock when the file was last handed out.
    last_used: u64,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<FileKey, Entry>,
    clock: u64,
}

/// A bounded cache of open files (see the module doc).
#[derive(Debug)]
pub(crate) struct OpenFiles {
    files_max: usize,
    state: Mutex<State>,
}

impl OpenFiles {
    /// An empty cache of at most `files_max` (at least 1) open files.
    pub(crate) fn new(files_max: usize) -> OpenFiles {
        assert!(files_max >= 1, "the cache must hold the file a read opens");
        OpenFiles {
            files_max,
            state: Mutex::new(State::default()),
        }
    }

    /// The cache of the process, of [`SEALED_FILES_OPEN_MAX`] files.
    pub(crate) fn shared() -> &'static OpenFiles {
        static SHARED: LazyLock<OpenFiles> =
            LazyLock::new(|| OpenFiles::new(SEALED_FILES_OPEN_MAX));
        &SHARED
    }

    /// The file of `key`, from the cache or opened with `open` (outside the lock, so one slow
    /// open never holds up reads of other files) and then cached.
    fn get_or_open(
        &self,
        key: FileKey,
        open: impl FnOnce() -> io::Result<Arc<dyn StorageFile>>,
    ) -> io::Result<Arc<dyn StorageFile>> {
        if let Some(file) = self.lock().touch(key) {
            return Ok(file);
        }
        let file = open()?;
        Ok(self.insert(key, file))
    }

    /// Caches `file` under `key` and returns the file now cached there (another thread may
    /// have opened and cached the same one meanwhile: then that one, and `file` is closed).
    fn insert(&self, key: FileKey, file: Arc<dyn StorageFile>) -> Arc<dyn StorageFile> {
        let mut state = self.lock();
        if let Some(cached) = state.touch(key) {
            return cached;
        }
        while state.files.len() >= self.files_max {
            state.close_least_recently_used();
        }
        state.clock += 1;
        let last_used = state.clock;
        let entry = Entry {
            file: Arc::clone(&file),
            last_used,
        };
        state.files.insert(key, entry);
        debug_assert!(state.files.len() <= self.files_max);
        file
    }

    /// Closes the cached files of one segment (reads holding one keep it until they end).
    fn forget_segment(&self, segment_id: u64) {
        let mut state = self.lock();
        for kind in [FileKind::Log, FileKind::OffsetIndex, FileKind::TimeIndex] {
            state.files.remove(&FileKey { segment_id, kind });
        }
    }

    /// Closes every cached file (reads holding one keep it until they end); returns how many.
    /// For when the process ran out of descriptors: what is idle goes first.
    pub(crate) fn close_idle(&self) -> usize {
        let mut state = self.lock();
        let closed = state.files.len();
        state.files.clear();
        closed
    }

    /// Files cached now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().files.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The map is consistent after any panic (single inserts and removals).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// The cached file of `key`, marked as used now.
    fn touch(&mut self, key: FileKey) -> Option<Arc<dyn StorageFile>> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.files.get_mut(&key)?;
        entry.last_used = clock;
        Some(Arc::clone(&entry.file))
    }

    /// Drops the least recently used file. A scan of at most `SEALED_FILES_OPEN_MAX` entries,
    /// only when a file is opened into a full cache: an open costs more.
    fn close_least_recently_used(&mut self) {
        let oldest = self
            .files
            .iter()
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(key, _)| *key);
        if let Some(key) = oldest {
            self.files.remove(&key);
        }
    }
}

/// Numbers the segments of the process, for their cache keys.
static NEXT_SEGMENT_ID: AtomicU64 = AtomicU64::new(0);

/// The files of one segment, opened on demand through a cache of open files; the cache's
/// entries for them are dropped with this.
#[derive(Debug)]
pub(crate) struct SegmentFiles {
    id: u64,
    log_path: PathBuf,
    storage: Arc<dyn Storage>,
    cache: &'static OpenFiles,
}

impl SegmentFiles {
    /// The files of the segment whose `.log` is `log_path`, through the process's cache.
    pub(crate) fn new(storage: Arc<dyn Storage>, log_path: PathBuf) -> SegmentFiles {
        Self::with_cache(storage, log_path, OpenFiles::shared())
    }

    /// The same, through `cache`.
    fn with_cache(
        storage: Arc<dyn Storage>,
        log_path: PathBuf,
        cache: &'static OpenFiles,
    ) -> SegmentFiles {
        SegmentFiles {
            id: NEXT_SEGMENT_ID.fetch_add(1, Ordering::Relaxed),
            log_path,
            storage,
            cache,
        }
    }

    /// The path of the `.log` file.
    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The storage the files are opened through.
    pub(crate) fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The path of the file of `kind`.
    pub(crate) fn path(&self, kind: FileKind) -> PathBuf {
        match kind {
            FileKind::Log => self.log_path.clone(),
            FileKind::OffsetIndex => self.log_path.with_extension(INDEX_EXTENSION),
            FileKind::TimeIndex => self.log_path.with_extension(TIME_INDEX_EXTENSION),
        }
    }

    /// The file of `kind`, open: cached, or opened now (it must exist).
    pub(crate) fn open(&self, kind: FileKind) -> io::Result<Arc<dyn StorageFile>> {
        let key = self.key(kind);
        self.cache.get_or_open(key, || {
            self.storage.open(&self.path(kind), OpenMode::Existing)
        })
    }

    fn key(&self, kind: FileKind) -> FileKey {
        FileKey {
            segment_id: self.id,
            kind,
        }
    }
}

impl IndexFiles for SegmentFiles {
    fn offset_index(&self) -> io::Result<Arc<dyn StorageFile>> {
        self.open(FileKind::OffsetIndex)
    }
    fn time_index(&self) -> io::Result<Arc<dyn StorageFile>> {
        self.open(FileKind::TimeIndex)
    }
}

impl Drop for SegmentFiles {
    fn drop(&mut self) {
        self.cache.forget_segment(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FileStorage;

    /// A cache of its own for one test (tests run in parallel and share the process's).
    fn cache(files_max: usize) -> &'static OpenFiles {
        Box::leak(Box::new(OpenFiles::new(files_max)))
    }

    #[test]
    fn the_cache_keeps_at_most_its_bound_and_closes_the_least_recently_used() {
        // Goal: however many segments are read, at most `files_max` files stay open, and the
        // one closed is the least recently read; a segment dropped closes its files.
        // Method: 10 segments' files through a cache of 4, counting the live handles of each
        // file (an `Arc` the cache no longer holds is closed once the read drops it).
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = cache(4);
        let storage: Arc<dyn Storage> = Arc::new(FileStorage);
        let segments: Vec<SegmentFiles> = (0..10)
            .map(|number| {
                let path = dir.path().join(format!("{number}.log"));
                std::fs::write(&path, b"frames").expect("write");
                SegmentFiles::with_cache(Arc::clone(&storage), path, cache)
            })
            .collect();
        let held = |segment: &SegmentFiles| {
            let file = segment.open(FileKind::Log).expect("open");
            // The cache's reference and this one.
            Arc::strong_count(&file) - 1
        };
        for segment in &segments[..4] {
            assert_eq!(held(segment), 1);
        }
        assert_eq!(cache.len(), 4);
        // Read the first again: the second is now the least recently used.
        assert_eq!(held(&segments[0]), 1);
        let second = segments[1].open(FileKind::Log).expect("open");
        assert_eq!(Arc::strong_count(&second), 2, "cached");
        drop(second);
        assert_eq!(held(&segments[0]), 1);
        for segment in &segments[4..] {
            segments[0].open(FileKind::Log).expect("open");
            assert_eq!(held(segment), 1);
            assert!(cache.len() <= 4);
        }
        let first = segments[0].open(FileKind::Log).expect("open");
        assert_eq!(Arc::strong_count(&first), 2, "read all along, never closed");
        let third = segments[2].open(FileKind::Log).expect("open");
        assert_eq!(Arc::strong_count(&third), 2, "opened again");
        drop(segments);
        assert_eq!(cache.len(), 0, "dropped segments close their files");
        assert_eq!(Arc::strong_count(&first), 1, "only the read holds it now");
    }

    #[test]
    fn a_read_keeps_its_file_after_the_cache_closes_it_or_retention_removes_it() {
        // Goal: a file in use by a read stays readable when the cache drops it and when its
        // path is unlinked; an open after the unlink fails with NotFound.
        // Method: hold a handle, evict it through a cache of 1, remove the file, read.
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = cache(1);
        let storage: Arc<dyn Storage> = Arc::new(FileStorage);
        let [a, b] = ["a.log", "b.log"].map(|name| {
            let path = dir.path().join(name);
            std::fs::write(&path, name).expect("write");
            SegmentFiles::with_cache(Arc::clone(&storage), path, cache)
        });
        let held = a.open(FileKind::Log).expect("open");
        b.open(FileKind::Log).expect("open evicts a");
        std::fs::remove_file(a.log_path()).expect("remove");
        let mut bytes = [0; 5];
        assert_eq!(held.read_at(&mut bytes, 0).expect("read"), 5);
        assert_eq!(&bytes, b"a.log");
        let error = a.open(FileKind::Log).expect_err("gone");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert_eq!(cache.close_idle(), 1);
        assert_eq!(cache.len(), 0);
    }
}
