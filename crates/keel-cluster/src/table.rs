//! A [`StateTable`] in this node's memory, for what cluster mode rebuilds from a log when a
//! node takes the work: a topic's key index (from its partitions) and a stateful
//! subscription's state (from its commit log, which cluster mode keeps whole for that; see
//! `storage.rs`). A snapshot keeps nothing: the log is the durable copy.

use std::sync::Mutex;

use keel_engine::storage::{StateTable, StorageError, TableEntry, TableMap, TableWrite};

/// A table in memory.
#[derive(Default)]
pub(crate) struct MemoryTable {
    map: Mutex<TableMap>,
}

impl MemoryTable {
    fn map(&self) -> std::sync::MutexGuard<'_, TableMap> {
        self.map.lock().expect("table lock")
    }
}

impl StateTable for MemoryTable {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.map().get(key))
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: &[u8],
        max: usize,
    ) -> Result<Vec<TableEntry>, StorageError> {
        Ok(self.map().scan(prefix, after, max))
    }

    fn last(&self, prefix: &[u8]) -> Result<Option<TableEntry>, StorageError> {
        Ok(self.map().last(prefix))
    }

    fn write(&self, writes: &[TableWrite], mark: &[u8]) -> Result<(), StorageError> {
        self.map().write(writes, mark);
        Ok(())
    }

    fn clear(&self, mark: &[u8]) -> Result<(), StorageError> {
        self.map().clear(mark);
        Ok(())
    }

    fn snapshot(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn mark(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.map().mark())
    }
}
