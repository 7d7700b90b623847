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
//!
//! Hysteresis: a limit once reached holds until a measurement finds room past it by
//! 1 / [`RESUME_MARGIN_DIVISOR`] of the limit, so that publishing does not flap between
//! refused and resumed as each second's writes cross the line again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::StorageLimit;

/// The free space of a backend without a bound on it.
const UNBOUNDED: u64 = u64::MAX;
/// A reached limit is left once there is room past it by this fraction of it (1 %).
const RESUME_MARGIN_DIVISOR: u64 = 100;

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
    /// The free-space minimum was reached, and no measurement has found the margin past it
    /// since.
    disk_reached: AtomicBool,
    /// The same for the cap.
    cap_reached: AtomicBool,
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
            disk_reached: AtomicBool::new(false),
            cap_reached: AtomicBool::new(false),
        }
    }

    /// Admits `bytes` (counted from now on), or says which limit is reached.
    pub(super) fn admit(&self, bytes: u64) -> Result<(), StorageLimit> {
        let admitted = self.admitted_bytes.load(Ordering::Relaxed);
        if self.disk_free_below_min() {
            self.disk_reached.store(true, Ordering::Relaxed);
            return Err(StorageLimit::DiskFree {
                free_bytes: self.free_bytes(admitted),
                min_bytes: self.free_bytes_min,
            });
        }
        if let Some(max_bytes) = self.stored_bytes_max
            && self.data_dir_at_cap()
        {
            self.cap_reached.store(true, Ordering::Relaxed);
            return Err(StorageLimit::DataDirFull {
                stored_bytes: self.stored_bytes(admitted),
                max_bytes,
            });
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
        // A reached limit is left only with the margin past it.
        let min = self.free_bytes_min;
        if free >= min.saturating_add(min / RESUME_MARGIN_DIVISOR) {
            self.disk_reached.store(false, Ordering::Relaxed);
        }
        if let Some(max) = self.stored_bytes_max
            && stored_bytes.unwrap_or(0) <= max - max / RESUME_MARGIN_DIVISOR
        {
            self.cap_reached.store(false, Ordering::Relaxed);
        }
    }

    /// Whether the free space is below the minimum now (or was, without the margin past it
    /// since).
    pub(super) fn disk_free_below_min(&self) -> bool {
        let admitted = self.admitted_bytes.load(Ordering::Relaxed);
        self.disk_reached.load(Ordering::Relaxed) || self.free_bytes(admitted) < self.free_bytes_min
    }

    /// Whether the data directory is at or past its cap now (or was, without the margin
    /// below it since).
    pub(super) fn data_dir_at_cap(&self) -> bool {
        let admitted = self.admitted_bytes.load(Ordering::Relaxed);
        self.stored_bytes_max.is_some_and(|max| {
            self.cap_reached.load(Ordering::Relaxed) || self.stored_bytes(admitted) >= max
        })
    }

    /// The free bytes and stored bytes now: the last measurement with what was admitted
    /// since (none: no bound, or not measured).
    pub(super) fn estimate(&self) -> (Option<u64>, Option<u64>) {
        let admitted = self.admitted_bytes.load(Ordering::Relaxed);
        let free = Some(self.free_bytes(admitted)).filter(|&free| free != UNBOUNDED);
        let stored = self.stored_bytes_max.map(|_| self.stored_bytes(admitted));
        (free, stored)
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

    // Goal: a reached limit holds until a measurement finds 1 % of room past it, so that
    // publishing does not flap as each second's writes cross the line again; the estimate
    // counts what was admitted since the measurement. Method: a cap of 10,000.
    #[test]
    fn a_reached_limit_holds_until_there_is_a_margin() {
        let view = SpaceView::new(0, Some(10_000));
        view.begin_measure();
        view.end_measure(None, Some(9_000));
        assert_eq!(view.admit(1_000), Ok(()));
        assert_eq!(view.estimate(), (None, Some(10_000)));
        assert!(view.admit(1).is_err(), "at the cap");
        view.begin_measure();
        view.end_measure(None, Some(9_950));
        assert!(view.admit(1).is_err(), "under the cap, within the margin");
        view.begin_measure();
        view.end_measure(None, Some(9_900));
        assert_eq!(view.admit(1), Ok(()), "1 % under the cap");
    }
}
