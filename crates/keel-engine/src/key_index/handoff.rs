//! The keys a partition's writer hands its key index follower, so that the follower need not
//! read each record back from the log and parse it for its `partitionkey`.
//!
//! After each successful commit the writer records the commit's offsets and its keyed events'
//! keys here (it has them already: routing needed them). The follower takes them from here
//! when they continue what it has indexed, and reads the log otherwise: after a restart (the
//! records between the index's mark and the first commit of this run), and when it fell so far
//! behind that the writer dropped the oldest keys to stay within
//! [`KEY_INDEX_HANDOFF_BYTES_MAX`].
//!
//! Invariant: the handoff describes exactly the records from `from` to `to` (exclusive): the
//! keyed ones are in `keyed`, with their offsets in increasing order, and the others carry no
//! key. So whether a record's key comes from here or from the log, it is the same key (the
//! event's `partitionkey` as validated and stored), and every record is indexed once.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::limits::KEY_INDEX_HANDOFF_BYTES_MAX;

/// Bytes an entry costs besides its key's text (its offset and the `String`).
const ENTRY_OVERHEAD_BYTES: usize = std::mem::size_of::<(u64, String)>();

/// A keyed record: its offset and its key.
pub(crate) type KeyedRecord = (u64, String);

/// One partition's handed keys, shared by its writer and its key index follower.
pub(crate) struct KeyHandoff {
    state: Mutex<Handed>,
    /// [`KEY_INDEX_HANDOFF_BYTES_MAX`], but for tests.
    bytes_max: usize,
}

impl Default for KeyHandoff {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            bytes_max: KEY_INDEX_HANDOFF_BYTES_MAX,
        }
    }
}

#[derive(Default)]
struct Handed {
    from: u64,
    to: u64,
    keyed: VecDeque<KeyedRecord>,
    bytes: usize,
}

/// Where the follower gets the keys of the records after those it indexed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// From the handoff: the keyed records from the follower's offset up to `next`.
    Handed { keyed: Vec<KeyedRecord>, next: u64 },
    /// From the log: the handoff does not hold the next record; read the records below
    /// `up_to` (where the handoff starts, or the log's end) from the log.
    ReadLog { up_to: u64 },
}

impl KeyHandoff {
    /// Records a commit: its records have offsets from `first_offset`, and `keys` gives each
    /// one's key in order. Call after the commit succeeded.
    pub(crate) fn hand<'a>(&self, first_offset: u64, keys: impl Iterator<Item = Option<&'a str>>) {
        let mut handed = self.state.lock().expect("handoff lock");
        if first_offset != handed.to {
            // Not a continuation (the first commit since the start, or the follower read past
            // what was handed): start over here.
            handed.keyed.clear();
            handed.bytes = 0;
            handed.from = first_offset;
        }
        let mut offset = first_offset;
        for key in keys {
            if let Some(key) = key {
                handed.bytes += ENTRY_OVERHEAD_BYTES + key.len();
                handed.keyed.push_back((offset, key.to_owned()));
            }
            offset += 1;
        }
        handed.to = offset;
        while handed.bytes > self.bytes_max {
            // The follower is far behind: it reads the dropped records from the log instead.
            let (dropped, key) = handed.keyed.pop_front().expect("bytes count entries");
            handed.bytes -= ENTRY_OVERHEAD_BYTES + key.len();
            handed.from = dropped + 1;
        }
    }

    /// The keys of the records from `covered` (the follower's offset) up to `end` (the log's
    /// next offset as the follower found it, above `covered`), or where to read them instead.
    pub(crate) fn take(&self, covered: u64, end: u64) -> Take {
        debug_assert!(
            covered < end,
            "the follower takes only when there is a record"
        );
        let mut handed = self.state.lock().expect("handoff lock");
        if !(handed.from <= covered && covered < handed.to) {
            let up_to = if handed.from > covered {
                handed.from.min(end)
            } else {
                end
            };
            return Take::ReadLog { up_to };
        }
        let next = handed.to.min(end);
        let mut keyed = Vec::new();
        while handed
            .keyed
            .front()
            .is_some_and(|(offset, _)| *offset < next)
        {
            let (offset, key) = handed.keyed.pop_front().expect("front checked");
            handed.bytes -= ENTRY_OVERHEAD_BYTES + key.len();
            // Records below `covered` were read from the log already.
            if offset >= covered {
                keyed.push((offset, key));
            }
        }
        handed.from = next;
        Take::Handed { keyed, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record's key in the model log: every third record is keyless.
    fn key_at(offset: u64) -> Option<String> {
        (!offset.is_multiple_of(3))
            .then(|| format!("key-{}-{}", offset % 7, "x".repeat((offset % 50) as usize)))
    }

    // Goal: whatever the interleaving of commits, takes and log reads (after a restart; when
    // the follower fell behind and the writer dropped keys; when the follower saw a commit in
    // the log before the writer handed its keys), the follower indexes every record's key
    // exactly once, in offset order, as the log holds it. Method: a model log whose keys are a
    // function of the offset; random commits (many overflowing a small bound), each visible in
    // the log before it is handed; a follower starting from a random mark that takes or reads
    // at random, seeded; the indexed keys are compared with the log's.
    #[test]
    fn handed_and_read_keys_cover_every_record_once() {
        for seed in 0..100u64 {
            let mut random = fastrand::Rng::with_seed(seed);
            // A small bound, so that large commits overflow it.
            let handoff = KeyHandoff {
                bytes_max: 4096,
                ..KeyHandoff::default()
            };
            let mut end = random.u64(0..1000);
            let mark = random.u64(0..=end);
            let mut covered = mark;
            let mut indexed: Vec<KeyedRecord> = Vec::new();
            for _ in 0..200 {
                if random.bool() {
                    let count = random.u64(1..200);
                    let first = end;
                    end += count;
                    if covered < end && random.u8(0..4) == 0 {
                        covered = follow(&handoff, covered, end, &mut indexed, &mut random);
                    }
                    let keys: Vec<Option<String>> = (first..end).map(key_at).collect();
                    handoff.hand(first, keys.iter().map(Option::as_deref));
                }
                if covered < end && random.bool() {
                    covered = follow(&handoff, covered, end, &mut indexed, &mut random);
                }
            }
            while covered < end {
                covered = follow(&handoff, covered, end, &mut indexed, &mut random);
            }
            let expected: Vec<KeyedRecord> = (mark..end)
                .filter_map(|offset| key_at(offset).map(|key| (offset, key)))
                .collect();
            assert_eq!(indexed.len(), expected.len(), "seed {seed}");
            assert!(indexed == expected, "seed {seed}");
        }
    }

    /// One step of the model follower: take from the handoff, or read up to 1,000 records of
    /// the model log; returns the new `covered`.
    fn follow(
        handoff: &KeyHandoff,
        covered: u64,
        end: u64,
        indexed: &mut Vec<KeyedRecord>,
        random: &mut fastrand::Rng,
    ) -> u64 {
        match handoff.take(covered, end) {
            Take::Handed { keyed, next } => {
                assert!(next > covered && next <= end);
                assert!(
                    keyed
                        .iter()
                        .all(|(offset, _)| (covered..next).contains(offset))
                );
                indexed.extend(keyed);
                next
            }
            Take::ReadLog { up_to } => {
                assert!(up_to > covered && up_to <= end);
                let next = up_to.min(covered + random.u64(1..1000));
                indexed.extend((covered..next).filter_map(|o| key_at(o).map(|k| (o, k))));
                next
            }
        }
    }
}
