//! The data directory: its lock, the directories keel keeps in it, and the manifest that
//! records them, so that a directory lost to a crash (or to an operator) is reported as damage
//! instead of being taken for an empty one.
//!
//! Layout (every file and directory, and the fsync that makes it durable, is listed in
//! `docs/durability.md`):
//!
//! ```text
//! DATA_DIR/
//!   LOCK              flock held while a keel runs on the directory
//!   MANIFEST.json     {"format": 1, "directories": ["topics", "subscriptions"]}
//!   topics/           one directory per topic
//!   subscriptions/    one directory per subscription
//!   trash/            directories being deleted (emptied at start)
//! ```
//!
//! Invariant: once `MANIFEST.json` names a directory, keel never creates that directory
//! again. A named directory that is missing at start is damage: readiness reports it, and
//! nothing is created under it, so no acknowledged event can silently turn into "no topic".

use std::path::{Path, PathBuf};

use super::files::{create_dir_durably, sync_dir, write_synced};
use crate::error::{DataError, EngineError};
use crate::storage::DataDirDamage;

/// Where the topics live, under the data directory.
pub(crate) const TOPICS_DIR: &str = "topics";
/// Where the subscriptions live, under the data directory.
pub(crate) const SUBSCRIPTIONS_DIR: &str = "subscriptions";
/// Where alert rules live, under the data directory.
pub(crate) const ALERTS_DIR: &str = "alerts";
/// Where API tokens live, under the data directory.
pub(crate) const TOKENS_DIR: &str = "tokens";
/// Where directories wait to be deleted, under the data directory.
pub(crate) const TRASH_DIR: &str = "trash";
/// The manifest's file name.
const MANIFEST_FILE: &str = "MANIFEST.json";
/// The lock file's name.
const LOCK_FILE: &str = "LOCK";
/// The manifest format this keel writes and reads.
const MANIFEST_FORMAT: u32 = 1;
/// The directories keel keeps, in the order they are created.
const KEPT_DIRS: [&str; 2] = [TOPICS_DIR, SUBSCRIPTIONS_DIR];

/// What keel records of the directories it created.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: u32,
    directories: Vec<String>,
}

/// An opened data directory: locked, its kept directories present or their loss recorded.
#[derive(Debug)]
pub(crate) struct DataDir {
    root: PathBuf,
    /// Held for the engine's life: a second keel on the same data directory would corrupt it.
    _lock: std::fs::File,
    damage: Vec<DataDirDamage>,
}

impl DataDir {
    /// Creates (durably) and locks `root`, then checks its kept directories against the
    /// manifest, creating them only when no manifest names them yet. Blocking.
    pub(crate) fn open(root: &Path) -> Result<DataDir, EngineError> {
        // Crash: without the parent's fsync a new data directory, with everything acknowledged
        // under it, may vanish.
        create_dir_durably(root)?;
        let lock = lock(root)?;
        let damage = check_kept_dirs(root)?;
        sync_entries_left_by_a_crash(root, &damage)?;
        for damaged in &damage {
            tracing::error!(path = %damaged.path.display(), reason = %damaged.reason, "the data directory is damaged");
        }
        Ok(DataDir {
            root: root.to_path_buf(),
            _lock: lock,
            damage,
        })
    }

    /// The data directory itself.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The `topics/` directory.
    pub(crate) fn topics(&self) -> PathBuf {
        self.root.join(TOPICS_DIR)
    }

    /// The `subscriptions/` directory.
    pub(crate) fn subscriptions(&self) -> PathBuf {
        self.root.join(SUBSCRIPTIONS_DIR)
    }

    /// The `alerts/` directory: alert rules, one file each. Not a kept directory (not in the
    /// manifest): it is made at the first rule, and losing it loses rules, never events.
    pub(crate) fn alerts(&self) -> PathBuf {
        self.root.join(ALERTS_DIR)
    }

    /// The `tokens/` directory: API tokens, one file each. Not a kept directory either: losing
    /// it loses tokens (which then authenticate nothing), never events.
    pub(crate) fn tokens(&self) -> PathBuf {
        self.root.join(TOKENS_DIR)
    }

    /// The `trash/` directory.
    pub(crate) fn trash(&self) -> PathBuf {
        self.root.join(TRASH_DIR)
    }

    /// What is damaged; empty for a healthy directory.
    pub(crate) fn damage(&self) -> &[DataDirDamage] {
        &self.damage
    }

    /// Fails when `dir` (a kept directory) is damaged, or the manifest is: nothing may be created
    /// under it.
    pub(crate) fn check_usable(&self, dir: &Path) -> Result<(), EngineError> {
        let manifest = self.root.join(MANIFEST_FILE);
        let found = self
            .damage
            .iter()
            .find(|damaged| damaged.path == dir || damaged.path == manifest);
        match found {
            Some(damaged) => Err(EngineError::Data(DataError::DataDirDamaged {
                path: damaged.path.clone(),
                reason: damaged.reason.clone(),
            })),
            None => Ok(()),
        }
    }
}

/// Takes the lock file, so that two servers never share one directory. The lock file holds
/// nothing: losing it in a crash costs nothing, so it is not fsynced.
fn lock(root: &Path) -> Result<std::fs::File, EngineError> {
    let path = root.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(EngineError::io("open", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(EngineError::Data(DataError::DataDirLocked { path }))
        }
        Err(std::fs::TryLockError::Error(source)) => Err(EngineError::Data(DataError::Io {
            op: "lock",
            path,
            source,
        })),
    }
}

/// Checks the kept directories against the manifest; creates those it does not name yet (a new
/// data directory, or one from a keel without manifests) and then writes the manifest.
fn check_kept_dirs(root: &Path) -> Result<Vec<DataDirDamage>, EngineError> {
    let manifest_path = root.join(MANIFEST_FILE);
    let named = match read_manifest(&manifest_path) {
        Ok(Some(manifest)) => manifest.directories,
        Ok(None) => Vec::new(),
        Err(reason) => {
            // Nothing is created while the record of what was created is unreadable.
            let reason = format!(
                "{reason}; restore it from a backup, or delete it to let keel record the \
                 directories present now"
            );
            return Ok(vec![DataDirDamage {
                path: manifest_path,
                reason,
            }]);
        }
    };
    let mut damage = Vec::new();
    let mut created = false;
    for name in KEPT_DIRS {
        let dir = root.join(name);
        if dir.is_dir() {
            continue;
        }
        if named.iter().any(|named| named == name) {
            let reason = format!(
                "{MANIFEST_FILE} records that keel created this directory, but it is missing \
                 (lost in a crash, or removed); what was stored under it is gone from this \
                 node. Restore it from a backup; or, to go on without its contents, create \
                 it empty (mkdir {}) and restart",
                dir.display()
            );
            damage.push(DataDirDamage { path: dir, reason });
            continue;
        }
        std::fs::create_dir(&dir).map_err(EngineError::io("create", &dir))?;
        created = true;
    }
    if created {
        // Crash: the new directories' entries must be durable before anything is stored under
        // them and before the manifest names them.
        sync_dir(root)?;
    }
    let complete = KEPT_DIRS
        .iter()
        .all(|name| named.iter().any(|named| named == name));
    if !complete && damage.is_empty() {
        write_manifest(root, &manifest_path)?;
    }
    Ok(damage)
}

/// Fsyncs the data directory and its kept directories before anything in them is served.
///
/// Crash: a run that died between a `mkdir` or `rename` (the manifest, a kept directory, a
/// topic or subscription created) and the fsync of its directory left an entry this run sees
/// and would serve, but that a power loss could still drop with what is acknowledged under
/// it from now on. A handful of fsyncs at start make every entry seen durable.
fn sync_entries_left_by_a_crash(root: &Path, damage: &[DataDirDamage]) -> Result<(), EngineError> {
    sync_dir(root)?;
    for name in KEPT_DIRS {
        let dir = root.join(name);
        if dir.is_dir() && !damage.iter().any(|damaged| damaged.path == dir) {
            sync_dir(&dir)?;
        }
    }
    Ok(())
}

/// The manifest, none when there is no file, or why it cannot be used.
fn read_manifest(path: &Path) -> Result<Option<Manifest>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("{MANIFEST_FILE} cannot be read ({error})")),
    };
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|error| format!("{MANIFEST_FILE} is not a keel manifest ({error})"))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(format!(
            "{MANIFEST_FILE} has format {}, which this keel does not know (it knows {MANIFEST_FORMAT}); \
             run the keel version that wrote it",
            manifest.format
        ));
    }
    Ok(Some(manifest))
}

/// Writes the manifest naming every kept directory: a temporary file, fsynced, renamed over
/// the old one, and the rename made durable.
fn write_manifest(root: &Path, path: &Path) -> Result<(), EngineError> {
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        directories: KEPT_DIRS.iter().map(|name| (*name).to_owned()).collect(),
    };
    let mut text = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    text.push(b'\n');
    let temporary = path.with_extension("json.tmp");
    write_synced(&temporary, &text)?;
    std::fs::rename(&temporary, path).map_err(EngineError::io("rename", path))?;
    // Crash: without this the manifest may vanish after the server answered as ready, and a
    // later loss of topics/ would again look like an empty directory.
    Ok(sync_dir(root)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_data_dir_gets_its_directories_and_a_manifest_naming_them() {
        // Goal: a fresh directory is set up whole. Method: open a missing nested path.
        let parent = tempfile::tempdir().expect("tempdir");
        let root = parent.path().join("a").join("data");
        let data_dir = DataDir::open(&root).expect("open");
        assert!(data_dir.damage().is_empty());
        assert!(data_dir.topics().is_dir() && data_dir.subscriptions().is_dir());
        let manifest = read_manifest(&root.join(MANIFEST_FILE))
            .expect("readable")
            .expect("written");
        assert_eq!(manifest.directories, ["topics", "subscriptions"]);
    }

    #[test]
    fn a_missing_kept_directory_is_damage_and_is_not_recreated() {
        // Goal: a vanished topics/ is reported, never silently recreated empty; once the
        // operator recreates it, the damage is gone. Method: open, remove topics/, reopen.
        let parent = tempfile::tempdir().expect("tempdir");
        let root = parent.path().join("data");
        drop(DataDir::open(&root).expect("open"));
        std::fs::remove_dir(root.join(TOPICS_DIR)).expect("remove");
        let data_dir = DataDir::open(&root).expect("reopen");
        assert_eq!(data_dir.damage().len(), 1);
        assert_eq!(data_dir.damage()[0].path, root.join(TOPICS_DIR));
        assert!(data_dir.damage()[0].reason.contains("mkdir"));
        assert!(!root.join(TOPICS_DIR).exists(), "not recreated");
        assert!(matches!(
            data_dir.check_usable(&data_dir.topics()),
            Err(EngineError::Data(DataError::DataDirDamaged { .. }))
        ));
        assert!(data_dir.check_usable(&data_dir.subscriptions()).is_ok());
        drop(data_dir);
        std::fs::create_dir(root.join(TOPICS_DIR)).expect("operator recreates it");
        assert!(DataDir::open(&root).expect("reopen").damage().is_empty());
    }

    #[test]
    fn a_data_dir_from_before_manifests_is_adopted() {
        // Goal: an older keel's directory (no manifest) opens as it is and gains a manifest.
        // Method: make topics/ by hand, open.
        let parent = tempfile::tempdir().expect("tempdir");
        let root = parent.path().join("data");
        std::fs::create_dir_all(root.join(TOPICS_DIR)).expect("create");
        let data_dir = DataDir::open(&root).expect("open");
        assert!(data_dir.damage().is_empty());
        assert!(root.join(MANIFEST_FILE).is_file());
    }

    #[test]
    fn an_unreadable_manifest_is_damage_and_nothing_is_created() {
        // Goal: a manifest that is not one is reported with what to do; keel creates nothing.
        // Method: a table of bad manifests in a directory without topics/.
        for (text, expected) in [
            ("{not json", "not a keel manifest"),
            (r#"{"format": 9, "directories": []}"#, "format 9"),
        ] {
            let parent = tempfile::tempdir().expect("tempdir");
            let root = parent.path().join("data");
            std::fs::create_dir_all(&root).expect("create");
            std::fs::write(root.join(MANIFEST_FILE), text).expect("write");
            let data_dir = DataDir::open(&root).expect("open");
            assert_eq!(data_dir.damage().len(), 1, "{text}");
            assert!(data_dir.damage()[0].reason.contains(expected), "{text}");
            assert!(!root.join(TOPICS_DIR).exists(), "{text}");
        }
    }
}
