//! Event ids made up for events that have none. They must be unique per `source` for
//! the server's dedupe not to drop them, across processes and runs, without a UUID crate: a
//! prefix of the start time (nanoseconds) and the process id, then a counter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of unique event ids: `{start time ns, hex}-{pid, hex}-{counter}`.
///
/// ```
/// let ids = keel_client::EventIds::with_prefix("run7".to_owned());
/// assert_eq!(ids.next_id(), "run7-0");
/// assert_eq!(ids.next_id(), "run7-1");
/// ```
#[derive(Debug)]
pub struct EventIds {
    prefix: String,
    next: AtomicU64,
}

impl Default for EventIds {
    fn default() -> Self {
        Self::new()
    }
}

impl EventIds {
    /// A generator whose prefix no other process, before or after, shares.
    pub fn new() -> Self {
        // A clock before 1970 only weakens uniqueness to the pid and counter; no reason to fail.
        let start_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self::with_prefix(format!("{start_ns:x}-{:x}", std::process::id()))
    }

    /// A generator with a fixed prefix (for reproducible output in tests).
    pub fn with_prefix(prefix: String) -> Self {
        Self {
            prefix,
            next: AtomicU64::new(0),
        }
    }

    /// The prefix every id of this generator starts with, before `-{counter}`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The next id; safe to call from many threads, never the same twice.
    pub fn next_id(&self) -> String {
        let counter = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{counter}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_share_the_prefix() {
        // Goal: no two ids of a run collide. Method: draw many and count distinct ones.
        let ids = EventIds::new();
        let drawn: std::collections::HashSet<String> = (0..10_000).map(|_| ids.next_id()).collect();
        assert_eq!(drawn.len(), 10_000);
        assert!(drawn.iter().all(|id| id.starts_with(ids.prefix())));
    }

    #[test]
    fn prefix_names_the_process() {
        let ids = EventIds::new();
        assert!(
            ids.prefix()
                .ends_with(&format!("-{:x}", std::process::id()))
        );
        assert_eq!(EventIds::with_prefix("p".to_owned()).next_id(), "p-0");
    }
}
