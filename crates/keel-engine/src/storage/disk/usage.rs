//! How much room the data directory's file system has left, and how much the data directory
//! holds: what the engine's disk guard (`pressure/space.rs`) measures.

use std::path::Path;

use super::files::io;
use crate::storage::StorageError;

/// Bytes an unprivileged process may still write on the file system holding `root`
/// (`f_bavail` blocks of `f_frsize` bytes: the blocks reserved for root are not counted, so
/// keel stops before a root-owned keel would eat into them). One system call.
pub(super) fn free_bytes(root: &Path) -> Result<u64, StorageError> {
    let stats = rustix::fs::statvfs(root).map_err(|errno| io("statvfs", root)(errno.into()))?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// The sizes of every file under `root`, summed (their lengths, as `du --apparent-size`
/// counts: keel writes no sparse files). A file or directory removed during the walk
/// (retention, a delete) counts as gone; any other failure is an error.
pub(super) fn stored_bytes(root: &Path) -> Result<u64, StorageError> {
    let mut total = 0u64;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(io("list", &dir)(error)),
        };
        for entry in entries {
            let entry = entry.map_err(io("list", &dir))?;
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(io("stat", &entry.path())(error)),
            };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                total = total.saturating_add(metadata.len());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the walk counts every file's bytes at every depth, and free space is a real
    // figure. Method: a small tree of known sizes in a temporary directory.
    #[test]
    fn stored_bytes_sums_every_file_at_every_depth() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir_all(dir.path().join("x/y")).unwrap();
        std::fs::write(dir.path().join("x/b"), [0u8; 20]).unwrap();
        std::fs::write(dir.path().join("x/y/c"), [0u8; 3]).unwrap();
        assert_eq!(stored_bytes(dir.path()).unwrap(), 123);
        assert_eq!(stored_bytes(&dir.path().join("gone")).unwrap(), 0);
        assert!(free_bytes(dir.path()).unwrap() > 0);
    }
}
