//! A seeded fault-injecting file layer for tests: it fails writes and fsyncs on command, tears
//! failing writes, and simulates a crash that drops what was never made durable.
//!
//! Files are real files (in a test's temporary directory); the layer keeps, beside them, what a
//! crash would be allowed to keep:
//! - per file, its content as of its last fsync, and the writes and size changes since;
//! - per directory, the names as of its last fsync.
//!
//! [`FaultyStorage::crash`] then rewrites the files as a crash may leave them: each file holds its
//! fsynced content plus a random subset of its later changes, some writes torn; a name created
//! since its directory's last fsync may be gone, and a name removed since may be back. This is
//! the worst POSIX allows, not what one filesystem does. Every choice comes from the seed.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::storage::{FileStorage, OpenMode, Storage, StorageFile, read_full_at};

/// An operation [`FaultyStorage`] can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// Positioned writes to any file.
    Write,
    /// `fdatasync` of a file and fsync of a directory.
    Sync,
    /// Opening a file (or a directory, to fsync it): fails before anything is opened or
    /// created, as `EMFILE` does.
    Open,
}

/// The error [`FaultyStorage`] injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    /// `EIO`: the device failed.
    Eio,
    /// `ENOSPC`: the device is full.
    Enospc,
    /// `EMFILE`: the process has no file descriptor left.
    Emfile,
}

impl FaultError {
    fn to_io_error(self) -> io::Error {
        // Linux errno values, so the error reads like the real one.
        const EIO: i32 = 5;
        const ENOSPC: i32 = 28;
        const EMFILE: i32 = 24;
        match self {
            FaultError::Eio => io::Error::from_raw_os_error(EIO),
            FaultError::Enospc => io::Error::from_raw_os_error(ENOSPC),
            FaultError::Emfile => io::Error::from_raw_os_error(EMFILE),
        }
    }
}

/// When one kind of operation fails.
#[derive(Debug, Clone, Copy, Default)]
struct FaultRule {
    /// Fail once after this many more successes.
    countdown: Option<(u64, FaultError)>,
    /// Fail each operation with this probability, in millionths, drawn from the seed.
    random: Option<(u32, FaultError)>,
}

/// A change to a file not yet made durable by an fsync.
#[derive(Debug, Clone)]
enum Change {
    Write { position: u64, bytes: Vec<u8> },
    SetSize(u64),
}

/// What a crash may keep of one file.
#[derive(Debug, Clone, Default)]
struct FileHistory {
    /// Content as of the last fsync (empty for a file never fsynced).
    durable: Vec<u8>,
    /// Changes since, in order.
    unsynced: Vec<Change>,
}

#[derive(Debug)]
struct FaultPlan {
    seed: u64,
    rng_state: u64,
    write: FaultRule,
    sync: FaultRule,
    open: FaultRule,
    injected_count: u64,
    /// When set, only paths whose name ends with one of these are failed.
    fault_suffixes: Option<Vec<String>>,
    files: HashMap<PathBuf, FileHistory>,
    /// Per directory, the names as of its last fsync.
    durable_names: HashMap<PathBuf, BTreeSet<String>>,
}

impl FaultPlan {
    /// splitmix64: small, seedable, good enough to pick faults.
    fn next_random(&mut self) -> u64 {
        self.rng_state = self.rng_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.rng_state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    /// A random number in `0..bound` (`bound` > 0).
    fn below(&mut self, bound: u64) -> u64 {
        self.next_random() % bound
    }

    /// Decides whether this operation on `path` fails, and with what.
    fn decide(&mut self, op: FaultOp, path: &Path) -> Option<FaultError> {
        // Opens draw no random number while no open fault is asked for, so that seeds chosen
        // before opens could fail replay as they did.
        if op == FaultOp::Open && self.open.countdown.is_none() && self.open.random.is_none() {
            return None;
        }
        let random = self.next_random();
        if let Some(suffixes) = &self.fault_suffixes {
            let name = path.to_string_lossy();
            if !suffixes
                .iter()
                .any(|suffix| name.ends_with(suffix.as_str()))
            {
                return None;
            }
        }
        let rule = self.rule(op);
        let mut fault = None;
        if let Some((remaining, error)) = rule.countdown {
            if remaining == 0 {
                rule.countdown = None;
                fault = Some(error);
            } else {
                rule.countdown = Some((remaining - 1, error));
            }
        }
        if let (None, Some((per_million, error))) = (fault, rule.random)
            && random % 1_000_000 < u64::from(per_million)
        {
            fault = Some(error);
        }
        if fault.is_some() {
            self.injected_count += 1;
        }
        fault
    }

    fn rule(&mut self, op: FaultOp) -> &mut FaultRule {
        match op {
            FaultOp::Write => &mut self.write,
            FaultOp::Sync => &mut self.sync,
            FaultOp::Open => &mut self.open,
        }
    }

    /// Starts tracking `dir`, taking its present names as durable (they predate this layer).
    fn track_dir(&mut self, dir: &Path) -> io::Result<()> {
        if !self.durable_names.contains_key(dir) {
            let names = FileStorage.list_dir(dir)?.into_iter().collect();
            self.durable_names.insert(dir.to_path_buf(), names);
        }
        Ok(())
    }

    fn record(&mut self, path: &Path, change: Change) {
        self.files
            .entry(path.to_path_buf())
            .or_default()
            .unsynced
            .push(change);
    }

    /// The content a crash leaves of a file: its durable content plus a random subset of its
    /// later changes, each write kept, dropped or torn.
    fn crashed_content(&mut self, history: &FileHistory) -> Vec<u8> {
        let mut content = history.durable.clone();
        for change in &history.unsynced {
            match change {
                Change::Write { position, bytes } => {
                    let kept_bytes = match self.below(3) {
                        0 => 0,
                        1 => bytes.len(),
                        _ => self.below(bytes.len() as u64 + 1) as usize,
                    };
                    apply_write(&mut content, *position, &bytes[..kept_bytes]);
                }
                Change::SetSize(size_bytes) => {
                    if self.below(2) == 0 {
                        content.resize(*size_bytes as usize, 0);
                    }
                }
            }
        }
        content
    }
}

fn apply_write(content: &mut Vec<u8>, position: u64, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let end = position as usize + bytes.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[position as usize..end].copy_from_slice(bytes);
}

/// A file layer over real files that fails writes and syncs on command and simulates crashes,
/// for tests.
///
/// A failing write first writes a seeded random prefix of its bytes (a torn write), then returns
/// the error, as a real device may. Every choice comes from the seed given to
/// [`FaultyStorage::new`], so a failing test is replayed by its seed. Each fsync copies the whole
/// file (to know what a crash keeps): meant for small test logs.
#[derive(Debug, Clone)]
pub struct FaultyStorage {
    plan: Arc<Mutex<FaultPlan>>,
}

impl FaultyStorage {
    /// A storage that injects no fault until told to, drawing random choices from `seed`.
    pub fn new(seed: u64) -> Self {
        let plan = FaultPlan {
            seed,
            rng_state: seed,
            write: FaultRule::default(),
            sync: FaultRule::default(),
            open: FaultRule::default(),
            injected_count: 0,
            fault_suffixes: None,
            files: HashMap::new(),
            durable_names: HashMap::new(),
        };
        FaultyStorage {
            plan: Arc::new(Mutex::new(plan)),
        }
    }

    /// The seed given to `new`.
    pub fn seed(&self) -> u64 {
        self.lock().seed
    }

    /// Lets `successes` more `op`s succeed, then fails the next one with `error` (once).
    pub fn fail_after(&self, op: FaultOp, successes: u64, error: FaultError) {
        self.rule(op, |rule| rule.countdown = Some((successes, error)));
    }

    /// Fails each `op` with probability `per_million` / 1,000,000 (0 turns it off).
    pub fn fail_randomly(&self, op: FaultOp, per_million: u32, error: FaultError) {
        self.rule(op, |rule| {
            rule.random = (per_million > 0).then_some((per_million, error))
        });
    }

    /// Injects faults only on paths ending with one of `suffixes` (such as `".index"`); the
    /// rules above still decide when. Counts only those paths' operations.
    pub fn only_on_paths_ending(&self, suffixes: &[&str]) {
        self.lock().fault_suffixes = Some(suffixes.iter().map(|s| (*s).to_owned()).collect());
    }

    /// Stops injecting faults.
    pub fn heal(&self) {
        let mut plan = self.lock();
        plan.write = FaultRule::default();
        plan.sync = FaultRule::default();
        plan.open = FaultRule::default();
    }

    /// How many faults were injected so far.
    pub fn injected_count(&self) -> u64 {
        self.lock().injected_count
    }

    /// Simulates a crash and reboot: rewrites every file opened through this layer as a crash may
    /// leave it (see the module doc), then takes what is left as durable.
    ///
    /// Call it with no file of this layer in use (drop the log first).
    pub fn crash(&self) -> io::Result<()> {
        let mut plan = self.lock();
        let files = std::mem::take(&mut plan.files);
        let mut paths: Vec<&PathBuf> = files.keys().collect();
        paths.sort();
        for path in paths {
            let history = &files[path];
            let present = match (path.exists(), plan.name_is_durable(path)) {
                (true, true) => true,
                (false, false) => false,
                // A creation or removal the directory was not fsynced after: either way.
                _ => plan.below(2) == 0,
            };
            if present {
                let content = plan.crashed_content(history);
                fs::write(path, content)?;
            } else if path.exists() {
                fs::remove_file(path)?;
            }
        }
        // After the reboot, whatever is on disk is durable.
        plan.durable_names.clear();
        Ok(())
    }

    fn rule(&self, op: FaultOp, change: impl FnOnce(&mut FaultRule)) {
        change(self.lock().rule(op));
    }

    fn lock(&self) -> MutexGuard<'_, FaultPlan> {
        // The plan is counters and copies, consistent after any panic.
        self.plan.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl FaultPlan {
    fn name_is_durable(&self, path: &Path) -> bool {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return false;
        };
        // A directory never tracked was never changed through this layer.
        self.durable_names
            .get(dir)
            .is_none_or(|names| names.contains(name))
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn StorageFile>,
    path: PathBuf,
    storage: FaultyStorage,
}

impl StorageFile for FaultyFile {
    fn read_at(&self, buffer: &mut [u8], position: u64) -> io::Result<usize> {
        self.inner.read_at(buffer, position)
    }
    fn write_all_at(&self, bytes: &[u8], position: u64) -> io::Result<()> {
        let mut plan = self.storage.lock();
        let fault = plan.decide(FaultOp::Write, &self.path);
        let written = match fault {
            None => bytes.len(),
            Some(_) => plan.below(bytes.len() as u64 + 1) as usize,
        };
        self.inner.write_all_at(&bytes[..written], position)?;
        plan.record(
            &self.path,
            Change::Write {
                position,
                bytes: bytes[..written].to_vec(),
            },
        );
        match fault {
            None => Ok(()),
            Some(error) => Err(error.to_io_error()),
        }
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut plan = self.storage.lock();
        if let Some(error) = plan.decide(FaultOp::Sync, &self.path) {
            return Err(error.to_io_error());
        }
        self.inner.sync_data()?;
        let mut content = vec![0; self.inner.size_bytes()? as usize];
        let read = read_full_at(&*self.inner, &mut content, 0)?;
        content.truncate(read);
        plan.files.insert(
            self.path.clone(),
            FileHistory {
                durable: content,
                unsynced: Vec::new(),
            },
        );
        Ok(())
    }
    fn set_size_bytes(&self, size_bytes: u64) -> io::Result<()> {
        let mut plan = self.storage.lock();
        self.inner.set_size_bytes(size_bytes)?;
        plan.record(&self.path, Change::SetSize(size_bytes));
        Ok(())
    }
    fn size_bytes(&self) -> io::Result<u64> {
        self.inner.size_bytes()
    }
}

impl Storage for FaultyStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        FileStorage.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        FileStorage.list_dir(dir)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut plan = self.lock();
        if let Some(error) = plan.decide(FaultOp::Open, path) {
            return Err(error.to_io_error());
        }
        if let Some(dir) = path.parent() {
            plan.track_dir(dir)?;
        }
        let inner = FileStorage.open(path, mode)?;
        if !plan.files.contains_key(path) {
            // A file met for the first time is durable as it is (it predates this layer).
            let mut content = vec![0; inner.size_bytes()? as usize];
            let read = read_full_at(&*inner, &mut content, 0)?;
            content.truncate(read);
            plan.files.insert(
                path.to_path_buf(),
                FileHistory {
                    durable: content,
                    unsynced: Vec::new(),
                },
            );
        }
        drop(plan);
        Ok(Arc::new(FaultyFile {
            inner,
            path: path.to_path_buf(),
            storage: self.clone(),
        }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut plan = self.lock();
        if let Some(dir) = path.parent() {
            plan.track_dir(dir)?;
        }
        FileStorage.remove_file(path)
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        FileStorage.remove_dir(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut plan = self.lock();
        // The directory is opened first, then fsynced.
        if let Some(error) = plan.decide(FaultOp::Open, dir) {
            return Err(error.to_io_error());
        }
        if let Some(error) = plan.decide(FaultOp::Sync, dir) {
            return Err(error.to_io_error());
        }
        FileStorage.sync_dir(dir)?;
        let names: BTreeSet<String> = FileStorage.list_dir(dir)?.into_iter().collect();
        // Removals are durable now: forget those files.
        plan.files
            .retain(|path, _| path.parent() != Some(dir) || path.exists());
        plan.durable_names.insert(dir.to_path_buf(), names);
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faulty_storage_fails_exactly_the_commanded_operation() {
        // Goal: fail_after lets N operations through, fails the next one once, then heals, and a
        // failing write leaves at most a prefix of its bytes (a torn write).
        // Method: three writes with a countdown of one, then read the file back.
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FaultyStorage::new(7);
        let file = storage
            .open(&dir.path().join("f"), OpenMode::CreateNew)
            .expect("create");
        storage.fail_after(FaultOp::Write, 1, FaultError::Enospc);
        file.write_all_at(b"aaaa", 0).expect("first write passes");
        let error = file
            .write_all_at(b"bbbb", 4)
            .expect_err("second write fails");
        assert_eq!(error.raw_os_error(), Some(28));
        assert!(file.size_bytes().expect("size") <= 8);
        file.write_all_at(b"cccc", 8).expect("third write passes");
        assert_eq!(storage.injected_count(), 1);
        let mut buffer = [0; 4];
        assert_eq!(read_full_at(&*file, &mut buffer, 0).expect("read"), 4);
        assert_eq!(&buffer, b"aaaa");
    }

    #[test]
    fn faulty_storage_random_faults_replay_from_the_seed() {
        // Goal: the same seed gives the same faults, so a failing test can be replayed.
        // Method: run 200 syncs at a 30% fault rate twice with one seed and compare outcomes.
        let dir = tempfile::tempdir().expect("tempdir");
        let outcomes = |seed| {
            let storage = FaultyStorage::new(seed);
            let file = storage
                .open(&dir.path().join("g"), OpenMode::Create)
                .expect("open");
            storage.fail_randomly(FaultOp::Sync, 300_000, FaultError::Eio);
            (0..200)
                .map(|_| file.sync_data().is_ok())
                .collect::<Vec<_>>()
        };
        let first = outcomes(42);
        assert_eq!(first, outcomes(42));
        let failures = first.iter().filter(|ok| !**ok).count();
        assert!((20..120).contains(&failures), "{failures} failures of 200");
    }
}
