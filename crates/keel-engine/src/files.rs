//! Small durable file operations outside the logs.

use std::path::Path;

use crate::error::EngineError;

/// Writes a whole file and fsyncs it.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(EngineError::io("create", path))?;
    file.write_all(bytes)
        .map_err(EngineError::io("write", path))?;
    file.sync_all().map_err(EngineError::io("fsync", path))
}

/// Fsyncs a directory, making the entries created, renamed or removed in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    std::fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(EngineError::io("fsync", dir))
}
