//! Publish dedupe: which (source, id) pairs a topic has stored recently, and where.
//!
//! A pair is remembered for the topic's dedupe window, and at most `DEDUPE_ENTRIES_MAX`
//! pairs per topic (beyond it the oldest are forgotten early and counted). The table is a
//! cache of the log: after a restart it is rebuilt by scanning the newest events of every
//! partition, so it survives restarts without a file of its own.
//!
//! Pairs are kept as 128-bit hashes (the seed is random per process; nothing persists them):
//! with a million entries the chance of any collision is below 10^-26. Memory: about 60
//! bytes per remembered pair (a 33-byte table slot at 7/8 load, rounded up to a power of
//! two, plus a 24-byte expiry queue entry).

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

/// A 128-bit identity of a (source, id) pair (two words: 8-byte alignment keeps entries small).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PairHash([u64; 2]);

/// A stored pair: where (partition and offset packed in one word), and when (the expiry
/// queue entry it belongs to). 16 bytes: with the 16-byte key, 33 bytes a table slot.
#[derive(Clone, Copy)]
struct Stored {
    position: u64,
    stored_ms: i64,
}

/// Bits of a packed position that hold the offset; the partition (below `PARTITIONS_MAX`)
/// takes the rest.
const OFFSET_BITS: u32 = 53;
const _: () = assert!(crate::limits::PARTITIONS_MAX as u64 <= 1 << (64 - OFFSET_BITS));

impl Position {
    fn pack(self) -> u64 {
        debug_assert!(self.offset < 1 << OFFSET_BITS, "offsets stay below 2^53");
        (u64::from(self.partition) << OFFSET_BITS) | self.offset
    }

    fn unpack(packed: u64) -> Self {
        let partition = u32::try_from(packed >> OFFSET_BITS).expect("packed from a u32");
        Position {
            partition,
            offset: packed & ((1 << OFFSET_BITS) - 1),
        }
    }
}

/// The dedupe table of one topic.
pub(crate) struct Dedupe {
    window_ms: i64,
    hasher: RandomState,
    /// Pairs stored within the window (expired ones are removed before every lookup).
    stored: HashMap<PairHash, Stored>,
    /// Pairs being published right now.
    pending: HashMap<PairHash, (watch::Receiver<Outcome>, usize)>,
    /// Stored pairs in the order they were stored, for expiry.
    order: VecDeque<(i64, PairHash)>,
}

impl Dedupe {
    pub(crate) fn new(window_ms: i64) -> Self {
        Self {
            window_ms,
            hasher: RandomState::new(),
            stored: HashMap::new(),
            pending: HashMap::new(),
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
        PairHash([half(1), half(2)])
    }

    /// Looks a pair up; a new pair is reserved as pending for `outcome[index]`. Call
    /// `expire` first so that `stored` holds only pairs within the window.
    pub(crate) fn check_and_reserve(
        &mut self,
        pair: PairHash,
        outcome: &watch::Receiver<Outcome>,
        index: usize,
    ) -> Lookup {
        if let Some((outcome, index)) = self.pending.get(&pair) {
            return Lookup::Pending(outcome.clone(), *index);
        }
        if let Some(stored) = self.stored.get(&pair) {
            return Lookup::Stored(Position::unpack(stored.position));
        }
        self.pending.insert(pair, (outcome.clone(), index));
        Lookup::New
    }

    /// Whether a pair is stored (within the window: call `expire` first), without reserving
    /// it.
    pub(crate) fn is_stored(&self, pair: PairHash) -> bool {
        self.stored.contains_key(&pair)
    }

    /// Records where a pair was stored (reserved by this process, or found in the log on
    /// restart). Returns how many pairs were forgotten early because the table was full.
    pub(crate) fn stored(&mut self, pair: PairHash, position: Position, stored_ms: i64) -> u64 {
        self.pending.remove(&pair);
        self.stored.insert(
            pair,
            Stored {
                position: position.pack(),
                stored_ms,
            },
        );
        self.order.push_back((stored_ms, pair));
        self.expire(stored_ms)
    }

    /// Forgets a reservation whose publish failed.
    pub(crate) fn release(&mut self, pair: PairHash) {
        self.pending.remove(&pair);
    }

    /// Drops pairs older than the window, and the oldest beyond the size bound; returns how
    /// many were dropped before their window ended.
    /// Records a pair found in the log that this table did not store itself (in a cluster,
    /// an event another node appended), unless it knows the pair already: a later publish
    /// of it through this node is then a duplicate. Returns how many entries were evicted
    /// before their window ended.
    pub(crate) fn observed(&mut self, pair: PairHash, position: Position, stored_ms: i64) -> u64 {
        if self.stored.contains_key(&pair) || self.pending.contains_key(&pair) {
            return 0;
        }
        self.stored(pair, position, stored_ms)
    }

    pub(crate) fn expire(&mut self, now_ms: i64) -> u64 {
        let mut evicted_early = 0;
        while let Some(&(stored_ms, pair)) = self.order.front() {
            let expired = now_ms - stored_ms >= self.window_ms;
            let over = self.order.len() > DEDUPE_ENTRIES_MAX;
            if !expired && !over {
                break;
            }
            evicted_early += u64::from(!expired);
            self.order.pop_front();
            // A pair found twice in the log on restart has a newer queue entry: keep it.
            if self
                .stored
                .get(&pair)
                .is_some_and(|stored| stored.stored_ms == stored_ms)
            {
                self.stored.remove(&pair);
            }
        }
        if self.stored.capacity() > 1024 && self.stored.len() < self.stored.capacity() / 4 {
            self.stored.shrink_to_fit();
            self.order.shrink_to_fit();
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
            dedupe.check_and_reserve(pair, &outcome, 0),
            Lookup::New
        ));
        assert!(matches!(
            dedupe.check_and_reserve(pair, &outcome, 3),
            Lookup::Pending(_, 0)
        ));
        let position = Position {
            partition: 2,
            offset: 7,
        };
        dedupe.stored(pair, position, 10);
        dedupe.expire(1009);
        assert!(
            matches!(dedupe.check_and_reserve(pair, &outcome, 0), Lookup::Stored(p) if p == position)
        );
        dedupe.expire(1010);
        assert!(matches!(
            dedupe.check_and_reserve(pair, &outcome, 0),
            Lookup::New
        ));
        dedupe.release(pair);
        assert!(matches!(
            dedupe.check_and_reserve(pair, &outcome, 0),
            Lookup::New
        ));
    }

    // Goal: a pair stored twice (found twice in the log) is remembered from its newer copy.
    #[test]
    fn a_pair_stored_twice_expires_with_its_newer_copy() {
        let mut dedupe = Dedupe::new(1000);
        let (_sender, outcome) = watch::channel(None);
        let pair = dedupe.hash("s", "twice");
        dedupe.stored(
            pair,
            Position {
                partition: 0,
                offset: 1,
            },
            0,
        );
        dedupe.stored(
            pair,
            Position {
                partition: 0,
                offset: 9,
            },
            500,
        );
        dedupe.expire(1200);
        let found = dedupe.check_and_reserve(pair, &outcome, 0);
        assert!(matches!(found, Lookup::Stored(Position { offset: 9, .. })));
    }

    // Goal: packing keeps every partition and offset in range exactly.
    #[test]
    fn positions_pack_and_unpack_exactly() {
        for (partition, offset) in [(0, 0), (1023, (1 << OFFSET_BITS) - 1), (7, 123_456_789)] {
            let position = Position { partition, offset };
            assert_eq!(Position::unpack(position.pack()), position);
        }
    }
}
