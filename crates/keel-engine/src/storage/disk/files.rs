//! Small durable file operations outside the logs.

use std::path::Path;

use crate::storage::StorageError;

/// Writes a whole file and fsyncs it.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(io("create", path))?;
    file.write_all(bytes).map_err(io("write", path))?;
    file.sync_all().map_err(io("fsync", path))
}

/// Fsyncs a directory, making the entries created, renamed or removed in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(io("fsync", dir))
}

/// Creates `dir` and its missing parents, and makes `dir`'s entry (and each new parent's)
/// durable by fsyncing the directory that holds it.
///
/// Crash: a directory entry is durable only once its parent is fsynced; without that, a power
/// loss can drop the new directory together with everything fsynced under it. An existing
/// `dir` gets its parent fsynced too: a run that crashed between its `mkdir` and that fsync
/// left an entry that looks permanent but is not.
pub(crate) fn create_dir_durably(dir: &Path) -> Result<(), StorageError> {
    let mut missing = Vec::new();
    let mut cursor = dir;
    while !cursor.exists() {
        missing.push(cursor);
        match cursor.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => cursor = parent,
            _ => break,
        }
    }
    if !missing.is_empty() {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    if missing.is_empty() {
        missing.push(dir);
    }
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

pub(super) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io { op, path, source }
}
