//! A state table's entries in memory, ordered by key, with the mark of the last write: the
//! body of every in-memory [`StateTable`](crate::storage::StateTable) (the seeded test
//! storage's, and cluster mode's caches that their logs rebuild).

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::storage::{TableEntry, TableWrite, prefix_end};

/// Entries and mark; see the [`StateTable`](crate::storage::StateTable) methods of the same
/// names for what each does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableMap {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    mark: Option<Vec<u8>>,
}

impl TableMap {
    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.entries.get(key).cloned()
    }

    /// Up to `max` entries whose key starts with `prefix` and sorts after `after`.
    pub fn scan(&self, prefix: &[u8], after: &[u8], max: usize) -> Vec<TableEntry> {
        let from = if after < prefix { prefix } else { after };
        self.entries
            .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
            .filter(|(key, _)| key.as_slice() != after)
            .take_while(|(key, _)| key.starts_with(prefix))
            .take(max)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    /// The entry with the greatest key that starts with `prefix`.
    pub fn last(&self, prefix: &[u8]) -> Option<TableEntry> {
        let end = match prefix_end(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.entries
            .range::<Vec<u8>, _>((Bound::Included(prefix.to_vec()), end))
            .next_back()
            .map(|(key, value)| (key.clone(), value.clone()))
    }

    /// Sets or removes keys, and the mark.
    pub fn write(&mut self, writes: &[TableWrite], mark: &[u8]) {
        for (key, value) in writes {
            match value {
                Some(value) => self.entries.insert(key.clone(), value.clone()),
                None => self.entries.remove(key),
            };
        }
        self.mark = Some(mark.to_vec());
    }

    /// Removes every key and sets the mark.
    pub fn clear(&mut self, mark: &[u8]) {
        self.entries.clear();
        self.mark = Some(mark.to_vec());
    }

    /// The mark of the last write, if any.
    pub fn mark(&self) -> Option<Vec<u8>> {
        self.mark.clone()
    }
}
