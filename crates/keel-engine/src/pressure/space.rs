//! The disk guard's view of storage: the free space and stored bytes of the last
//! measurement, and the bytes admitted since, so that a burst between two measurements
//! cannot overshoot a limit by much.
//!
//! Invariant: a publish is admitted only while, counting every byte admitted since the last
//! measurement, the free space is at or above the minimum and the stored bytes below the
//! cap. Whether a limit is reached is one state for every publish, large or small, so that
//! "blocked" means blocked. What can pass a limit: the publishes admitted just before it was
//! reached, and those admitted before a measurement and written after it (together at most
//! what the publish queue holds, `publish_queue_bytes_max`), and what keel's own appends
//! (checkpoints, dead letters, state) and other programs write — which is what the minimum
//! is kept for.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::StorageLimit;

/// The free space of a backend without a bound on it.
const UNBOUNDED: u64 = u64::MAX;

/// Storage as last measured, plus what was admitted since.
pub(super) struct SpaceView {
    free_bytes_min: u64,
    stored_bytes_max: Option<u64>,
    /// Free bytes at the last measurement ([`UNBOUNDED`] without a bound).
    measured_free_bytes: AtomicU64,
    /// Stored bytes at the last measurement (0 without a cap: not measured).
    measured_stored_bytes: AtomicU64,
    /// Bytes admitted since the last measurement began.
    admitted_bytes: AtomicU64,
}

impl SpaceView {
    /// A view before any measurement: nothing refused until the first.
    pub(super) fn new(free_bytes_min: u64, stored_bytes_max: Option<u64>) -> Self {
        Self {
            free_bytes_min,
            stored_bytes_max,
            measured_free_bytes: AtomicU64::new(UNBOUNDED),
            measured_stored_bytes: AtomicU64::new(0),
            admitted_bytes: AtomicU64::new(0),
        }
    }

    /// Admits `bytes` (counted from now on), or says which limit is reached.
    pub(super) fn admit(&self, bytes: u64) -> Result<(), StorageLimit> {
        let admitted = self.admitted_bytes.load(Ordering::Relaxed);
        let free_bytes = self.free_bytes(admitted);
        if free_bytes < self.free_bytes_min {
            return Err(StorageLimit::DiskFree {
                free_bytes,
                min_bytes: self.free_bytes_min,
            });
        }
        if let Some(max_bytes) = self.stored_bytes_max {
            let stored_bytes = self.stored_bytes(admitted);
            if stored_bytes >= max_bytes {
                return Err(StorageLimit::DataDirFull {
                    stored_bytes,
                    max_bytes,
                });
            }
        }
        self.admitted_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    fn free_bytes(&self, admitted: u64) -> u64 {
        match self.measured_free_bytes.load(Ordering::Relaxed) {
            UNBOUNDED => UNBOUNDED,
            free => free.saturating_sub(admitted),
        }
    }

    fn stored_bytes(&self, admitted: u64) -> u64 {
        let stored = self.measured_stored_bytes.load(Ordering::Relaxed);
        stored.saturating_add(admitted)
    }

    /// Starts a measurement: what is admitted from now on counts on top of it. Returns the
    /// bytes admitted before, for [`SpaceView::abandon_measure`].
    pub(super) fn begin_measure(&self) -> u64 {
        self.admitted_bytes.swap(0, Ordering::Relaxed)
    }

    /// A measurement failed: the last one stands, with everything admitted since it.
    pub(super) fn abandon_measure(&self, admitted_before: u64) {
        self.admitted_bytes
            .fetch_add(admitted_before, Ordering::Relaxed);
    }

    /// Ends a measurement with its figures: free bytes (none: no bound) and stored bytes
    /// (none: not measured).
    pub(super) fn end_measure(&self, free_bytes: Option<u64>, stored_bytes: Option<u64>) {
        let free = free_bytes.map_or(UNBOUNDED, |free| free.min(UNBOUNDED - 1));
        self.measured_free_bytes.store(free, Ordering::Relaxed);
        self.measured_stored_bytes
            .store(stored_bytes.unwrap_or(0), Ordering::Relaxed);
    }

    /// Whether the free space is below the minimum now.
    pub(super) fn disk_free_below_min(&self) -> bool {
        let admitted = self.admitted_bytes.load(Ordering::Relaxed);
        self.free_bytes(admitted) < self.free_bytes_min
    }

    /// Whether the data directory is at or past its cap now.
    pub(super) fn data_dir_at_cap(&self) -> bool {
        let admitted = self.admitted_bytes.load(Ordering::Relaxed);
        self.stored_bytes_max
            .is_some_and(|max| self.stored_bytes(admitted) >= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the free-space limit counts what was admitted since the last measurement, so a
    // burst stops at the minimum without a new measurement, and once below it every publish
    // is refused, however small; a measurement that finds space freed admits again.
    // Method: a view measured at 1,000 free with a minimum of 400.
    #[test]
    fn free_space_counts_bytes_admitted_since_the_measurement() {
        let view = SpaceView::new(400, None);
        let nothing_measured = view.admit(10_000);
        assert_eq!(
            nothing_measured,
            Ok(()),
            "nothing refused before a measurement"
        );
        view.begin_measure();
        view.end_measure(Some(1_000), None);
        assert_eq!(view.admit(300), Ok(()));
        assert_eq!(view.admit(300), Ok(()), "down to the minimum: admitted");
        assert!(!view.disk_free_below_min(), "at the minimum, not below it");
        assert_eq!(view.admit(50), Ok(()), "the last one passes the line");
        assert!(view.disk_free_below_min());
        let refused = view.admit(1);
        let expected = StorageLimit::DiskFree {
            free_bytes: 350,
            min_bytes: 400,
        };
        assert_eq!(
            refused,
            Err(expected),
            "below the minimum: even one byte is refused"
        );
        let admitted = view.begin_measure();
        assert_eq!(admitted, 650);
        view.end_measure(Some(5_000), None);
        assert!(!view.disk_free_below_min());
        assert_eq!(view.admit(4_601), Ok(()), "space freed: admitted again");
        assert!(view.admit(1).is_err());
    }

    // Goal: the cap counts stored plus admitted bytes; a failed measurement keeps counting
    // what was admitted; a backend without a free-space bound is never refused for it.
    // Method: a view with a cap of 1,000 and no free-space bound.
    #[test]
    fn cap_counts_admitted_bytes_and_survives_a_failed_measurement() {
        let view = SpaceView::new(400, Some(1_000));
        let started = view.begin_measure();
        view.end_measure(None, Some(900));
        assert_eq!(started, 0);
        assert_eq!(view.admit(100), Ok(()), "below the cap: admitted, up to it");
        assert!(view.data_dir_at_cap());
        assert!(!view.disk_free_below_min(), "no bound on free space");
        let admitted = view.begin_measure();
        view.abandon_measure(admitted);
        let expected = StorageLimit::DataDirFull {
            stored_bytes: 1_000,
            max_bytes: 1_000,
        };
        assert_eq!(view.admit(1), Err(expected));
        view.begin_measure();
        view.end_measure(None, Some(100));
        assert!(!view.data_dir_at_cap());
        assert_eq!(view.admit(899), Ok(()));
        assert_eq!(
            view.admit(1_000),
            Ok(()),
            "one byte below the cap: admitted"
        );
        assert!(view.admit(1).is_err());
    }
}
