//! What a power loss keeps: the state rebuilt from its durable parts.
//!
//! Directories keep the entries of their last `fsyncdir`, and only those reachable from the
//! root through such entries survive. Files keep their data as of their last `fsync`, plus, in
//! torn mode, a seeded random prefix of their later changes whose last write may land in part.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;

use crate::state::{Body, FileBody, FileOp, ROOT, State, write_at};
use crate::{Loss, LossReport};

/// How much of a file's unsynced changes a power loss keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cut {
    /// How many changes, oldest first, survive.
    pub(crate) ops_kept: usize,
    /// When the last surviving change is a write: how many of its bytes survive.
    pub(crate) last_write_bytes_kept: Option<usize>,
}

impl Cut {
    /// A cut that keeps nothing unsynced.
    const NOTHING: Cut = Cut {
        ops_kept: 0,
        last_write_bytes_kept: None,
    };

    /// A random cut of `ops`: any prefix, whose last write keeps any number of its bytes.
    pub(crate) fn random(ops: &[FileOp], rng: &mut fastrand::Rng) -> Cut {
        let ops_kept = rng.usize(0..=ops.len());
        let last_write_bytes_kept = match ops_kept.checked_sub(1).map(|last| &ops[last]) {
            Some(FileOp::Write { bytes, .. }) => Some(rng.usize(0..=bytes.len())),
            _ => None,
        };
        Cut {
            ops_kept,
            last_write_bytes_kept,
        }
    }

    /// Whether the last surviving write lost some of its bytes.
    fn tears(self, ops: &[FileOp]) -> bool {
        self.torn_bytes(ops) > 0
    }

    /// The bytes of the last surviving write that did not survive.
    fn torn_bytes(self, ops: &[FileOp]) -> u64 {
        let (Some(last), Some(kept)) = (self.ops_kept.checked_sub(1), self.last_write_bytes_kept)
        else {
            return 0;
        };
        ops[last].written_bytes() - kept as u64
    }

    /// The written bytes that do not survive.
    fn dropped_bytes(self, ops: &[FileOp]) -> u64 {
        let lost: u64 = ops[self.ops_kept..].iter().map(FileOp::written_bytes).sum();
        lost + self.torn_bytes(ops)
    }
}

/// Applies the surviving part of `ops` to `durable`, giving the file after the power loss.
pub(crate) fn replay(mut durable: Vec<u8>, ops: &[FileOp], cut: Cut) -> Vec<u8> {
    for (index, op) in ops[..cut.ops_kept].iter().enumerate() {
        let is_last = index + 1 == cut.ops_kept;
        match (op, cut.last_write_bytes_kept) {
            (FileOp::Write { offset, bytes }, Some(kept)) if is_last => {
                write_at(&mut durable, *offset, &bytes[..kept]);
            }
            _ => op.apply(&mut durable),
        }
    }
    durable
}

/// What survives of one inode.
enum Survivor {
    /// A file and how many surviving entries name it.
    File { links: u32 },
    /// A directory, where its surviving entry is, and its surviving entries.
    Dir {
        parent: u64,
        entries: BTreeMap<OsString, u64>,
    },
}

/// Turns `state` into what a power loss of kind `loss` leaves, and says what was lost.
pub(crate) fn apply(state: &mut State, loss: Loss) -> LossReport {
    let mut report = LossReport {
        entries_dropped: reverted_entries(state),
        ..LossReport::default()
    };
    let mut survivors = durable_tree(state, &mut report);
    let mut rng = match loss {
        Loss::Unsynced => None,
        Loss::Torn { seed } => Some(fastrand::Rng::with_seed(seed)),
    };
    let inos: Vec<u64> = state.inodes.keys().copied().collect();
    // Inode-number order keeps a seed's cuts the same for the same history.
    for ino in inos {
        let Some(survivor) = survivors.remove(&ino) else {
            let inode = state.inodes.remove(&ino).expect("listed above");
            if let Body::File(file) = inode.body {
                report.bytes_dropped +=
                    file.unsynced.iter().map(FileOp::written_bytes).sum::<u64>();
            }
            report.inodes_dropped += 1;
            continue;
        };
        let inode = state.inodes.get_mut(&ino).expect("listed above");
        let links = match (&mut inode.body, survivor) {
            (Body::File(file), Survivor::File { links }) => {
                revert_file(file, rng.as_mut(), &mut report);
                links
            }
            (Body::Dir(dir), Survivor::Dir { parent, entries }) => {
                dir.durable.clone_from(&entries);
                dir.entries = entries;
                dir.parent = parent;
                1
            }
            _ => unreachable!("a survivor has its inode's kind"),
        };
        inode.links = links;
        inode.durable_links = links;
        inode.handles_open = 0;
        inode.lookups = 0;
    }
    state.handles.clear();
    report
}

/// The directory entries added or removed since each directory's last `fsyncdir`, summed over
/// every directory (a name now naming another inode counts once).
fn reverted_entries(state: &State) -> usize {
    let mut reverted = 0;
    for inode in state.inodes.values() {
        let Body::Dir(dir) = &inode.body else {
            continue;
        };
        let changed = dir
            .entries
            .iter()
            .filter(|(name, ino)| dir.durable.get(*name) != Some(ino));
        let removed = dir
            .durable
            .keys()
            .filter(|name| !dir.entries.contains_key(*name));
        reverted += changed.count() + removed.count();
    }
    reverted
}

/// Walks the durable entries from the root: what it reaches survives.
///
/// Directories synced at different times can name one inode twice. A file then survives with
/// two links; a directory keeps only the first place the walk (breadth first, by name) finds,
/// so the tree stays a tree, and the other entries count as dropped.
fn durable_tree(state: &State, report: &mut LossReport) -> BTreeMap<u64, Survivor> {
    let mut survivors = BTreeMap::new();
    survivors.insert(
        ROOT,
        Survivor::Dir {
            parent: ROOT,
            entries: BTreeMap::new(),
        },
    );
    let mut queue = VecDeque::from([ROOT]);
    // Each directory is queued once, when first reached, so the walk ends.
    while let Some(ino) = queue.pop_front() {
        let Body::Dir(dir) = &state.inodes[&ino].body else {
            unreachable!("only dirs queue")
        };
        let mut kept = BTreeMap::new();
        for (name, &child) in &dir.durable {
            match &state.inodes[&child].body {
                Body::File(_) => {
                    let survivor = survivors
                        .entry(child)
                        .or_insert(Survivor::File { links: 0 });
                    if let Survivor::File { links } = survivor {
                        *links += 1;
                    }
                }
                Body::Dir(_) if survivors.contains_key(&child) => {
                    report.entries_dropped += 1;
                    continue;
                }
                Body::Dir(_) => {
                    survivors.insert(
                        child,
                        Survivor::Dir {
                            parent: ino,
                            entries: BTreeMap::new(),
                        },
                    );
                    queue.push_back(child);
                }
            }
            kept.insert(name.clone(), child);
        }
        if let Some(Survivor::Dir { entries, .. }) = survivors.get_mut(&ino) {
            *entries = kept;
        }
    }
    survivors
}

/// Reverts one surviving file to its durable data plus what `rng`'s cut keeps of the rest.
fn revert_file(file: &mut FileBody, rng: Option<&mut fastrand::Rng>, report: &mut LossReport) {
    let ops = std::mem::take(&mut file.unsynced);
    if ops.is_empty() {
        return;
    }
    let cut = rng.map_or(Cut::NOTHING, |rng| Cut::random(&ops, rng));
    let durable = std::mem::take(&mut file.durable);
    file.data = replay(durable, &ops, cut);
    file.durable.clone_from(&file.data);
    report.bytes_dropped += cut.dropped_bytes(&ops);
    if cut.tears(&ops) {
        report.writes_torn += 1;
    }
    if cut.ops_kept < ops.len() || cut.tears(&ops) {
        report.files_reverted += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use fuser::{Errno, RenameFlags};

    use super::*;

    fn name(name: &str) -> &OsStr {
        OsStr::new(name)
    }

    fn write(offset: u64, bytes: &[u8]) -> FileOp {
        FileOp::Write {
            offset,
            bytes: bytes.to_vec(),
        }
    }

    // Goal: a cut keeps exactly its prefix of changes, the last write in part; method: a table
    // of cuts over writes, a truncate and an extension.
    #[test]
    fn replay_keeps_the_cut_prefix_in_order() {
        let ops = [
            write(3, b"abc"),
            FileOp::SetLen { size: 4 },
            write(6, b"xyz"),
        ];
        let cases: [(usize, Option<usize>, &[u8], u64); 6] = [
            (0, None, b"012", 6),
            (1, Some(0), b"012", 6),
            (1, Some(2), b"012ab", 4),
            (2, None, b"012a", 3),
            (3, Some(1), b"012a\0\0x", 2),
            (3, Some(3), b"012a\0\0xyz", 0),
        ];
        for (ops_kept, last_write_bytes_kept, expected, dropped) in cases {
            let cut = Cut {
                ops_kept,
                last_write_bytes_kept,
            };
            assert_eq!(replay(b"012".to_vec(), &ops, cut), expected, "{cut:?}");
            assert_eq!(cut.dropped_bytes(&ops), dropped, "{cut:?}");
        }
    }

    fn owner() -> crate::state::Owner {
        crate::state::Owner {
            uid: 0,
            gid: 0,
            perm: 0o755,
        }
    }

    // Goal: a move synced at both old and new directory snapshots leaves a file under both
    // names (two links) and a directory in the first place the walk reaches only; method:
    // move a file and a directory, sync only the destination, lose power.
    #[test]
    fn inode_named_twice_survives_as_a_tree() {
        let mut state = State::new(0, 0);
        let a = state.make_dir(ROOT, name("a"), owner()).unwrap().ino.0;
        let b = state.make_dir(ROOT, name("b"), owner()).unwrap().ino.0;
        let f = state.make_file(a, name("f"), owner()).unwrap().ino.0;
        let d = state.make_dir(a, name("d"), owner()).unwrap().ino.0;
        state.sync(ROOT).unwrap();
        state.sync(a).unwrap();
        state
            .rename(a, name("f"), b, name("f"), RenameFlags::empty())
            .unwrap();
        state
            .rename(a, name("d"), b, name("d"), RenameFlags::empty())
            .unwrap();
        state.sync(b).unwrap();

        let report = apply(&mut state, Loss::Unsynced);

        assert_eq!(
            (state.entry(a, name("f")), state.entry(b, name("f"))),
            (Ok(f), Ok(f))
        );
        assert_eq!(state.inodes[&f].links, 2);
        assert_eq!(state.entry(a, name("d")), Ok(d));
        assert_eq!(state.entry(b, name("d")), Err(Errno::ENOENT));
        assert_eq!(report.entries_dropped, 3, "a's two moves and b's second d");
    }

    // Goal: durable entries forming a cycle (each directory synced while holding the other)
    // end the walk, with both directories back at the root; method: build the cycle with
    // renames, lose power.
    #[test]
    fn cycle_of_durable_entries_ends_at_the_root() {
        let mut state = State::new(0, 0);
        let a = state.make_dir(ROOT, name("a"), owner()).unwrap().ino.0;
        let b = state.make_dir(ROOT, name("b"), owner()).unwrap().ino.0;
        state.sync(ROOT).unwrap();
        state
            .rename(ROOT, name("b"), a, name("b"), RenameFlags::empty())
            .unwrap();
        state.sync(a).unwrap();
        state
            .rename(a, name("b"), ROOT, name("b"), RenameFlags::empty())
            .unwrap();
        state
            .rename(ROOT, name("a"), b, name("a"), RenameFlags::empty())
            .unwrap();
        state.sync(b).unwrap();

        apply(&mut state, Loss::Unsynced);

        assert_eq!(
            (state.entry(ROOT, name("a")), state.entry(ROOT, name("b"))),
            (Ok(a), Ok(b))
        );
        assert_eq!(state.entry(a, name("b")), Err(Errno::ENOENT));
        assert_eq!(state.entry(b, name("a")), Err(Errno::ENOENT));
    }

    // Goal: random cuts are seeded and cover both whole and partial last writes; method: draw
    // many cuts from two generators with the same seed.
    #[test]
    fn random_cuts_repeat_per_seed_and_sometimes_tear() {
        let ops = [write(0, b"aaaa"), write(4, b"bbbb")];
        let draw = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..64)
                .map(|_| Cut::random(&ops, &mut rng))
                .collect::<Vec<_>>()
        };
        let cuts = draw(7);
        assert_eq!(cuts, draw(7));
        assert!(cuts.iter().any(|cut| cut.tears(&ops)));
        assert!(cuts.iter().any(|cut| cut.ops_kept == 2 && !cut.tears(&ops)));
    }
}
