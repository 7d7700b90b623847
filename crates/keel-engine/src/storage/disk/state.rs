//! [`StateTable`] on local disk: one `redb` database file per stateful subscription, and one
//! per topic for its key index.
//!
//! redb is a copy-on-write B-tree with checksummed commits: a crash leaves the last durable
//! commit whole. Writes commit without an fsync (`Durability::None`: visible, not yet
//! durable) and a snapshot is an empty commit with an fsync (`Durability::Immediate`), which
//! makes every earlier one durable with it. The durability of each ack is the commit log's
//! (see `subscription/keyed_state.rs`); the table only spares recovery a replay from the
//! beginning. Quick repair is on, so that opening after a crash needs no walk of the whole
//! file. The cache is bounded (`STATE_CACHE_BYTES`): the keys live on disk.

use std::path::Path;
use std::sync::OnceLock;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::limits::STATE_CACHE_BYTES;
use crate::storage::{StateTable, StorageError, TableEntry, TableWrite};

/// Keys and their values.
const ENTRIES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("entries");
/// The owner's mark, under [`MARK`].
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const MARK: &str = "mark";

/// A redb database holding one subscription's state.
///
/// Invariant (the `StateTable` contract): after a failed write or snapshot the table takes
/// no more writes; what reached the file is redb's to sort out at the next open.
pub(crate) struct DiskTable {
    db: Database,
    poisoned: OnceLock<String>,
}

impl DiskTable {
    /// Creates the database file at `path` (the caller fsyncs its directory).
    pub(crate) fn create(path: &Path) -> Result<Self, StorageError> {
        let table = Self::open_with(path, true)?;
        let mut transaction = table.db.begin_write().map_err(backend)?;
        transaction.set_quick_repair(true);
        transaction.open_table(ENTRIES).map_err(backend)?;
        transaction.open_table(META).map_err(backend)?;
        transaction.commit().map_err(backend)?;
        Ok(table)
    }

    /// Opens the database file at `path`, repairing it after a crash. It must exist: it is made
    /// with its subscription, so a missing one was lost.
    pub(crate) fn open(path: &Path) -> Result<Self, StorageError> {
        Self::open_with(path, false)
    }

    fn open_with(path: &Path, create: bool) -> Result<Self, StorageError> {
        let mut builder = Database::builder();
        builder.set_cache_size(STATE_CACHE_BYTES);
        let db = if create {
            builder.create(path)
        } else {
            if !path.is_file() {
                return Err(StorageError::Io {
                    op: "open",
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the subscription's state file is missing (lost in a crash, or removed); \
                         restore it from a backup, or delete the subscription",
                    ),
                });
            }
            builder.open(path)
        };
        let db = db.map_err(|error| StorageError::Corrupt {
            source: Box::new(error),
        })?;
        Ok(DiskTable {
            db,
            poisoned: OnceLock::new(),
        })
    }

    /// Runs one write transaction with `durability`, poisoning the table if it fails.
    fn transact(
        &self,
        durability: Durability,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StorageError> {
        if let Some(cause) = self.poisoned.get() {
            return Err(StorageError::Poisoned {
                cause: cause.clone(),
            });
        }
        let result = (|| -> Result<(), redb::Error> {
            let mut transaction = self.db.begin_write()?;
            transaction.set_durability(durability)?;
            transaction.set_quick_repair(true);
            change(&transaction)?;
            transaction.commit()?;
            Ok(())
        })();
        result.map_err(|error| {
            let _ = self.poisoned.set(error.to_string());
            backend(error)
        })
    }
}

fn backend(error: impl Into<redb::Error>) -> StorageError {
    StorageError::Backend(Box::new(error.into()))
}

fn set_mark(transaction: &redb::WriteTransaction, mark: &[u8]) -> Result<(), redb::Error> {
    transaction.open_table(META)?.insert(MARK, mark)?;
    Ok(())
}

impl StateTable for DiskTable {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let transaction = self.db.begin_read().map_err(backend)?;
        let table = transaction.open_table(ENTRIES).map_err(backend)?;
        let value = table.get(key).map_err(backend)?;
        Ok(value.map(|value| value.value().to_vec()))
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let transaction = self.db.begin_read().map_err(backend)?;
        let table = transaction.open_table(ENTRIES).map_err(backend)?;
        keys.iter()
            .map(|key| {
                let value = table.get(key.as_slice()).map_err(backend)?;
                Ok(value.map(|value| value.value().to_vec()))
            })
            .collect()
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: &[u8],
        max: usize,
    ) -> Result<Vec<TableEntry>, StorageError> {
        let transaction = self.db.begin_read().map_err(backend)?;
        let table = transaction.open_table(ENTRIES).map_err(backend)?;
        let from = if after < prefix { prefix } else { after };
        let range = table.range(from..).map_err(backend)?;
        let mut entries = Vec::new();
        for entry in range {
            let (key, value) = entry.map_err(backend)?;
            let key = key.value();
            if key == after {
                continue;
            }
            if !key.starts_with(prefix) || entries.len() == max {
                break;
            }
            entries.push((key.to_vec(), value.value().to_vec()));
        }
        Ok(entries)
    }

    fn last(&self, prefix: &[u8]) -> Result<Option<TableEntry>, StorageError> {
        let transaction = self.db.begin_read().map_err(backend)?;
        let table = transaction.open_table(ENTRIES).map_err(backend)?;
        let mut range = match crate::storage::prefix_end(prefix) {
            Some(end) => table.range(prefix..end.as_slice()),
            None => table.range(prefix..),
        }
        .map_err(backend)?;
        match range.next_back() {
            Some(entry) => {
                let (key, value) = entry.map_err(backend)?;
                Ok(Some((key.value().to_vec(), value.value().to_vec())))
            }
            None => Ok(None),
        }
    }

    fn write(&self, writes: &[TableWrite], mark: &[u8]) -> Result<(), StorageError> {
        self.transact(Durability::None, |transaction| {
            let mut table = transaction.open_table(ENTRIES)?;
            for (key, value) in writes {
                match value {
                    Some(value) => {
                        table.insert(key.as_slice(), value.as_slice())?;
                    }
                    None => {
                        table.remove(key.as_slice())?;
                    }
                }
            }
            drop(table);
            set_mark(transaction, mark)
        })
    }

    fn clear(&self, mark: &[u8]) -> Result<(), StorageError> {
        self.transact(Durability::None, |transaction| {
            transaction.delete_table(ENTRIES)?;
            transaction.open_table(ENTRIES)?;
            set_mark(transaction, mark)
        })
    }

    fn snapshot(&self) -> Result<(), StorageError> {
        self.transact(Durability::Immediate, |_| Ok(()))
    }

    fn mark(&self) -> Result<Option<Vec<u8>>, StorageError> {
        let transaction = self.db.begin_read().map_err(backend)?;
        let table = transaction.open_table(META).map_err(backend)?;
        let mark = table.get(MARK).map_err(backend)?;
        Ok(mark.map(|mark| mark.value().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: writes are visible at once, a snapshot keeps them across a reopen, and scans
    // honour the prefix, `after` and `max`.
    #[test]
    fn writes_scans_and_snapshots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let table = DiskTable::create(&path).expect("create");
        assert_eq!(table.mark().expect("mark"), None);
        let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..10u8)
            .map(|n| (vec![b'k', n], Some(vec![n])))
            .chain([(b"m1".to_vec(), Some(b"x".to_vec()))])
            .collect();
        table.write(&writes, b"one").expect("write");
        table
            .write(&[(vec![b'k', 3], None)], b"two")
            .expect("remove");
        assert_eq!(table.get(&[b'k', 2]).expect("get"), Some(vec![2]));
        assert_eq!(table.get(&[b'k', 3]).expect("get"), None);
        let page = table.scan(b"k", &[b'k', 1], 4).expect("scan");
        let keys: Vec<u8> = page.iter().map(|(key, _)| key[1]).collect();
        assert_eq!(keys, [2, 4, 5, 6]);
        assert_eq!(table.scan(b"k", b"", 100).expect("all").len(), 9);
        let last = table.last(b"k").expect("last");
        assert_eq!(last, Some((vec![b'k', 9], vec![9])));
        assert_eq!(
            table.last(b"m").expect("last m"),
            Some((b"m1".to_vec(), b"x".to_vec()))
        );
        assert_eq!(table.last(b"z").expect("last z"), None);
        table.snapshot().expect("snapshot");
        drop(table);
        let table = DiskTable::open(&path).expect("reopen");
        assert_eq!(table.mark().expect("mark").as_deref(), Some(&b"two"[..]));
        assert_eq!(table.get(&[b'k', 9]).expect("get"), Some(vec![9]));
        table.clear(b"three").expect("clear");
        assert!(table.scan(b"", b"", 100).expect("empty").is_empty());
    }
}
