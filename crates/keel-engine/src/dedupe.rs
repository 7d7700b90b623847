//! Publish dedupe: which (source, id) pairs a topic has stored recently, and where.
//!
//! A pair is remembered for the topic's dedupe window (and at most `DEDUPE_ENTRIES_MAX`
//! pairs per topic). The table is a cache of the log: after a restart it is rebuilt by
//! scanning the last window of every partition, so it survives restarts without a file of its
//! own.
//!
//! Pairs are kept as 128-bit hashes (the seed is random per process; nothing persists them):
//! with two million entries the chance of any collision is below 10^-26.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher, RandomState};

use tokio::sync::watch;

use crate::limits::DEDUPE_ENTRIES_MAX;

/// Where an event was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) partition: u32,
    pub(crate) offset: u64,
}

/// The outcome of a publish in flight, for duplicates that arrive while it is.
pub(crate) type Outcome = Option<Result<Vec<Option<Position>>, ()>>;

/// What the table says about one pair.
pub(crate) enum Lookup {
    /// Not seen in the window: the caller now owns it (reserved as pending).
    New,
    /// Stored at this position.
    Stored(Position),
    /// Being published by another request: wait on it, then take `index` of its outcome.
    Pending(watch::Receiver<Outcome>, usize),
}

enum Slot {
    Stored {
        position: Position,
        stored_ms: i64,
    },
    Pending {
        outcome: watch::Receiver<Outcome>,
        index: usize,
    },
}

/// A 128-bit identity of a (source, id) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PairHash(u128);

/// The dedupe table of one topic.
pub(crate) struct Dedupe {
    window_ms: i64,
    hasher: RandomState,
    slots: HashMap<PairHash, Slot>,
    /// Stored pairs in the order they were stored, for expiry.
    order: VecDeque<(i64, PairHash)>,
}

impl Dedupe {
    pub(crate) fn new(window_ms: i64) -> Self {
        Self {
            window_ms,
            hasher: RandomState::new(),
            slots: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn hash(&self, source: &str, id: &str) -> PairHash {
        let half = |salt: u8| {
            let mut hasher = self.hasher.build_hasher();
            hasher.write_u8(salt);
            hasher.write(source.as_bytes());
            hasher.write_u8(0xff); // separates source from id: ("ab","c") ≠ ("a","bc")
            hasher.write(id.as_bytes());
            hasher.finish()
        };
        PairHash((u128::from(half(1)) << 64) | u128::from(half(2)))
    }

    /// Looks a pair up; a new pair is reserved as pending for `outcome[index]`.
    pub(crate) fn check_and_reserve(
        &mut self,
        pair: PairHash,
        now_ms: i64,
        outcome: &watch::Receiver<Outcome>,
        index: usize,
    ) -> Lookup {
        match self.slots.get(&pair) {
            Some(Slot::Stored {
                position,
                stored_ms,
            }) if now_ms - stored_ms < self.window_ms => Lookup::Stored(*position),
            Some(Slot::Pending { outcome, index }) => Lookup::Pending(outcome.clone(), *index),
            _ => {
                self.slots.insert(
                    pair,
                    Slot::Pending {
                        outcome: outcome.clone(),
                        index,
                    },
                );
                Lookup::New
            }
        }
    }

    /// Records where a reserved pair was stored. Returns how many pairs were forgotten early
    /// because the table was full.
    pub(crate) fn stored(&mut self, pair: PairHash, position: Position, now_ms: i64) -> u64 {
        self.slots.insert(
            pair,
            Slot::Stored {
                position,
                stored_ms: now_ms,
            },
        );
        self.order.push_back((now_ms, pair));
        self.expire(now_ms)
    }

    /// Forgets a reservation whose publish failed.
    pub(crate) fn release(&mut self, pair: PairHash) {
        if matches!(self.slots.get(&pair), Some(Slot::Pending { .. })) {
            self.slots.remove(&pair);
        }
    }

    /// Drops pairs older than the window, and the oldest beyond the size bound.
    fn expire(&mut self, now_ms: i64) -> u64 {
        let mut evicted_early = 0;
        while let Some(&(stored_ms, pair)) = self.order.front() {
            let expired = now_ms - stored_ms >= self.window_ms;
            let over = self.order.len() > DEDUPE_ENTRIES_MAX;
            if !expired && !over {
                break;
            }
            evicted_early += u64::from(!expired);
            self.order.pop_front();
            // The slot may have been re-stored later under the same pair; only drop our own.
            if let Some(Slot::Stored {
                stored_ms: slot_ms, ..
            }) = self.slots.get(&pair)
            {
                if *slot_ms == stored_ms {
                    self.slots.remove(&pair);
                }
            }
        }
        evicted_early
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a stored pair is found within the window and forgotten after it; a pending one
    // points at its publish; a released one is new again.
    #[test]
    fn pairs_are_remembered_for_the_window() {
        let mut dedupe = Dedupe::new(1000);
        let (_sender, outcome) = watch::channel(None);
        let pair = dedupe.hash("shop", "1");
        assert_ne!(pair, dedupe.hash("shop", "2"));
        assert_ne!(dedupe.hash("ab", "c"), dedupe.hash("a", "bc"));
        assert!(matches!(
            dedupe.check_and_reserve(pair, 0, &outcome, 0),
            Lookup::New
        ));
        assert!(matches!(
            dedupe.check_and_reserve(pair, 1, &outcome, 3),
            Lookup::Pending(_, 0)
        ));
        let position = Position {
            partition: 2,
            offset: 7,
        };
        dedupe.stored(pair, position, 10);
        assert!(
            matches!(dedupe.check_and_reserve(pair, 1009, &outcome, 0), Lookup::Stored(p) if p == position)
        );
        let other = dedupe.hash("shop", "other");
        dedupe.check_and_reserve(other, 1010, &outcome, 0);
        dedupe.stored(other, position, 1010);
        assert!(matches!(
            dedupe.check_and_reserve(pair, 1011, &outcome, 0),
            Lookup::New
        ));
        dedupe.release(pair);
        assert!(matches!(
            dedupe.check_and_reserve(pair, 1011, &outcome, 0),
            Lookup::New
        ));
    }
}
