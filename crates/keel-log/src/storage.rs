//! The file layer under the log: a small trait and the real implementation on `std::fs`. The
//! seeded fault-injecting one for tests is in `faulty_storage.rs`.
//!
//! The log only uses positioned reads and writes (`pread`/`pwrite`), so one file handle is shared
//! by the writer and any number of readers without a seek position to fight over.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// One open file.
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Reads into `buffer` from byte `position`; returns the bytes read (0 at the end of file).
    fn read_at(&self, buffer: &mut [u8], position: u64) -> io::Result<usize>;
    /// Writes all of `bytes` at byte `position`.
    fn write_all_at(&self, bytes: &[u8], position: u64) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Sets the file's size, cutting or zero-extending it.
    fn set_size_bytes(&self, size_bytes: u64) -> io::Result<()>;
    /// The file's size in bytes.
    fn size_bytes(&self) -> io::Result<u64>;
}

/// How [`Storage::open`] treats a missing or existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The file must exist.
    Existing,
    /// The file must not exist; it is created empty.
    CreateNew,
    /// The file is created when missing and kept as it is otherwise.
    Create,
}

/// The directory and file operations the log needs.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries of `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens `path` for reading and writing.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    /// Removes the file `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes the empty directory `dir`.
    fn remove_dir(&self, dir: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` durable (fsync of the directory): file creations, renames and
    /// removals in it survive a crash only after this.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// Whether `error` says no file descriptor was left: `EMFILE` (the process's limit) or `ENFILE`
/// (the system's). Only an open fails so; nothing was opened, and the same open may succeed
/// once descriptors are closed (unlike a failed fsync, which is never retried).
pub(crate) fn is_descriptor_exhaustion(error: &io::Error) -> bool {
    // Linux errno values.
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    matches!(error.raw_os_error(), Some(ENFILE | EMFILE))
}

/// Reads from `position` until `buffer` is full or the file ends; returns the bytes read.
pub(crate) fn read_full_at(
    file: &dyn StorageFile,
    buffer: &mut [u8],
    position: u64,
) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], position + filled as u64) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// The real file layer, on `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileStorage;

#[derive(Debug)]
struct RealFile(File);

impl StorageFile for RealFile {
    fn read_at(&self, buffer: &mut [u8], position: u64) -> io::Result<usize> {
        self.0.read_at(buffer, position)
    }
    fn write_all_at(&self, bytes: &[u8], position: u64) -> io::Result<()> {
        self.0.write_all_at(bytes, position)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_size_bytes(&self, size_bytes: u64) -> io::Result<()> {
        self.0.set_len(size_bytes)
    }
    fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl Storage for FileStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            // Names that are not UTF-8 are not the log's files.
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        match mode {
            OpenMode::Existing => {}
            OpenMode::CreateNew => {
                options.create_new(true);
            }
            OpenMode::Create => {
                options.create(true);
            }
        }
        Ok(Arc::new(RealFile(options.open(path)?)))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}
