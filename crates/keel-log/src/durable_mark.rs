//! The durable high-water mark: a lower bound on the offsets known to be fsynced.
//!
//! It separates a torn tail from corruption. Records past the mark may legitimately be missing
//! after a crash (they were never fsynced) and recovery cuts them; a record below the mark was
//! acknowledged as durable, so if it is missing or fails its CRC the disk lost data, and `open`
//! refuses the log rather than cutting it.
//!
//! The file `durable.mark` holds two slots, [`SLOT_BYTES`] each, [`SLOT_STRIDE_BYTES`] apart so
//! one torn sector cannot damage both (little-endian):
//!
//! ```text
//! position  bytes  field
//!        0      4  crc                  CRC32C of bytes [4, 24) of the slot
//!        4      4  magic                "KLM1"
//!        8      8  sequence             increases with every write; the higher valid slot wins
//!       16      8  durable_next_offset  every offset below it was fsynced
//! ```
//!
//! Writes alternate between the slots (`sequence % 2`), so a torn write leaves the other slot,
//! one step older, intact.
//!
//! Why the mark is written after each fsync but not fsynced itself: it is written only after the
//! records it covers were fsynced, so whenever the mark is on disk, those records are too — it
//! can never be ahead of the data. If the mark's own write is lost in a crash, recovery sees an
//! older mark: a lower bound that is still true, which only narrows what recovery can tell apart
//! from a torn tail. The kernel writes it back within seconds anyway, and `open` fsyncs it once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::LogError;
use crate::record::{read_u32, read_u64};
use crate::storage::{OpenMode, Storage, StorageFile, read_full_at};

/// Name of the mark file in the log's directory.
pub(crate) const MARK_FILE_NAME: &str = "durable.mark";
/// Bytes of one slot.
pub(crate) const SLOT_BYTES: usize = 24;
/// Distance between the starts of the two slots.
pub(crate) const SLOT_STRIDE_BYTES: u64 = 512;
const SLOT_COUNT: u64 = 2;
const MAGIC: u32 = u32::from_le_bytes(*b"KLM1");
const CRC_POSITION: usize = 0;
const MAGIC_POSITION: usize = 4;
const SEQUENCE_POSITION: usize = 8;
const OFFSET_POSITION: usize = 16;

const _: () = assert!(OFFSET_POSITION + 8 == SLOT_BYTES);
const _: () = assert!(SLOT_BYTES as u64 <= SLOT_STRIDE_BYTES);

/// The mark file, open, with the last value written.
#[derive(Debug)]
pub(crate) struct DurableMark {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    sequence: u64,
    durable_next_offset: u64,
}

/// What one slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    sequence: u64,
    durable_next_offset: u64,
}

impl DurableMark {
    /// Opens the mark in `dir`, creating it (at 0) when missing. Returns whether it was created,
    /// so the caller fsyncs the directory.
    pub(crate) fn open(storage: &dyn Storage, dir: &Path) -> Result<(DurableMark, bool), LogError> {
        let path = dir.join(MARK_FILE_NAME);
        let (file, created) = match storage.open(&path, OpenMode::Existing) {
            Ok(file) => (file, false),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let file = storage
                    .open(&path, OpenMode::CreateNew)
                    .map_err(|source| LogError::io("create", &path, source))?;
                (file, true)
            }
            Err(source) => return Err(LogError::io("open", &path, source)),
        };
        let mut newest: Option<Slot> = None;
        for slot_number in 0..SLOT_COUNT {
            let mut bytes = [0; SLOT_BYTES];
            let read = read_full_at(&*file, &mut bytes, slot_number * SLOT_STRIDE_BYTES)
                .map_err(|source| LogError::io("read", &path, source))?;
            match decode_slot(&bytes[..read]) {
                Ok(Some(slot)) if newest.is_none_or(|n| slot.sequence > n.sequence) => {
                    newest = Some(slot);
                }
                Ok(_) => {}
                Err(detail) => {
                    tracing::warn!(
                        mark = %path.display(), slot = slot_number, %detail,
                        "ignoring a damaged durable-mark slot; corruption checks fall back to the other"
                    );
                    // Zeroed (never written), so it cannot turn valid again: a slot cut short
                    // is whole again once the file grows with zeros (a write to the other
                    // slot), and an old, higher sequence there would then beat every newer
                    // mark: a mark above records recovery has cut, and a log that no longer
                    // opens. `recover` fsyncs the mark before the log is used.
                    file.write_all_at(&[0; SLOT_BYTES], slot_number * SLOT_STRIDE_BYTES)
                        .map_err(|source| LogError::io("write", &path, source))?;
                }
            }
        }
        let slot = newest.unwrap_or(Slot {
            sequence: 0,
            durable_next_offset: 0,
        });
        let mark = DurableMark {
            file,
            path,
            sequence: slot.sequence,
            durable_next_offset: slot.durable_next_offset,
        };
        Ok((mark, created))
    }

    /// Every offset below this was fsynced.
    pub(crate) fn durable_next_offset(&self) -> u64 {
        self.durable_next_offset
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Records that every offset below `durable_next_offset` is fsynced. Call only after the
    /// fsync that made it so succeeded. Not fsynced itself (see the module doc).
    pub(crate) fn advance(&mut self, durable_next_offset: u64) -> std::io::Result<()> {
        if durable_next_offset <= self.durable_next_offset {
            return Ok(());
        }
        let sequence = self.sequence + 1;
        let bytes = encode_slot(Slot {
            sequence,
            durable_next_offset,
        });
        self.file
            .write_all_at(&bytes, (sequence % SLOT_COUNT) * SLOT_STRIDE_BYTES)?;
        self.sequence = sequence;
        self.durable_next_offset = durable_next_offset;
        Ok(())
    }

    /// Fsyncs the mark file.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

fn encode_slot(slot: Slot) -> [u8; SLOT_BYTES] {
    let mut bytes = [0; SLOT_BYTES];
    bytes[MAGIC_POSITION..SEQUENCE_POSITION].copy_from_slice(&MAGIC.to_le_bytes());
    bytes[SEQUENCE_POSITION..OFFSET_POSITION].copy_from_slice(&slot.sequence.to_le_bytes());
    bytes[OFFSET_POSITION..].copy_from_slice(&slot.durable_next_offset.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[MAGIC_POSITION..]);
    bytes[CRC_POSITION..MAGIC_POSITION].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// `Ok(None)` for a slot never written (missing or all zeros); `Err` for a damaged one.
fn decode_slot(bytes: &[u8]) -> Result<Option<Slot>, String> {
    if bytes.iter().all(|byte| *byte == 0) {
        return Ok(None);
    }
    if bytes.len() < SLOT_BYTES {
        return Err(format!(
            "slot is {} bytes, shorter than {SLOT_BYTES}",
            bytes.len()
        ));
    }
    let stored = read_u32(bytes, CRC_POSITION);
    let computed = crc32c::crc32c(&bytes[MAGIC_POSITION..SLOT_BYTES]);
    if stored != computed {
        return Err(format!(
            "CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    if read_u32(bytes, MAGIC_POSITION) != MAGIC {
        return Err("bad magic".to_owned());
    }
    Ok(Some(Slot {
        sequence: read_u64(bytes, SEQUENCE_POSITION),
        durable_next_offset: read_u64(bytes, OFFSET_POSITION),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FileStorage;

    #[test]
    fn durable_mark_survives_reopen_and_a_damaged_slot() {
        // Goal: the newest valid slot wins; a slot failing its checksum is ignored and the other
        // (one write older) is used, so the mark stays a true lower bound.
        // Method: advance the mark three times, reopen, then damage the newest slot and reopen.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut mark, created) = DurableMark::open(&FileStorage, dir.path()).expect("open");
        assert!(created);
        assert_eq!(mark.durable_next_offset(), 0);
        for offset in [5, 9, 3, 12] {
            mark.advance(offset).expect("advance");
        }
        assert_eq!(mark.durable_next_offset(), 12, "the mark never moves back");
        drop(mark);
        let (mark, created) = DurableMark::open(&FileStorage, dir.path()).expect("reopen");
        assert!(!created);
        assert_eq!(mark.durable_next_offset(), 12);
        // Sequence 3 (offset 12) is in slot 1; flip a bit of it.
        let path = dir.path().join(MARK_FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read mark");
        bytes[SLOT_STRIDE_BYTES as usize + OFFSET_POSITION] ^= 0x10;
        std::fs::write(&path, &bytes).expect("write mark");
        drop(mark);
        let (mark, _) = DurableMark::open(&FileStorage, dir.path()).expect("reopen damaged");
        assert_eq!(
            mark.durable_next_offset(),
            9,
            "falls back to the older slot"
        );
    }

    #[test]
    fn a_damaged_slot_never_comes_back_above_a_newer_mark() {
        // Goal: a slot ignored as damaged cannot turn valid later and win over newer writes
        // (the fuzz target recover_segment found it: fuzz/corpus/recover_segment/mark-cut-short;
        // recovery then cut the log below the old mark and the log no longer opened).
        // Method: the mark at 4 in slot 0, the file cut inside slot 0's high bytes (zeros);
        // open finds no valid slot (0), advance to 3 (a write to slot 1 extends the file with
        // zeros, which would make slot 0 whole again), reopen: 3, not 4.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut mark, _) = DurableMark::open(&FileStorage, dir.path()).expect("open");
        for offset in [1, 4] {
            mark.advance(offset).expect("advance");
        }
        drop(mark);
        let path = dir.path().join(MARK_FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read mark");
        bytes.truncate(OFFSET_POSITION + 5);
        std::fs::write(&path, &bytes).expect("cut the mark");
        let (mut mark, _) = DurableMark::open(&FileStorage, dir.path()).expect("open damaged");
        assert_eq!(mark.durable_next_offset(), 0, "no valid slot");
        mark.advance(3).expect("advance");
        drop(mark);
        let (mark, _) = DurableMark::open(&FileStorage, dir.path()).expect("reopen");
        assert_eq!(mark.durable_next_offset(), 3);
    }

    #[test]
    fn durable_mark_slots_reject_damage() {
        // Goal: decoding a slot never panics and tells unwritten, valid and damaged apart.
        // Method: a table of slot bytes and expected outcomes.
        let good = encode_slot(Slot {
            sequence: 4,
            durable_next_offset: 77,
        });
        let mut bad_magic = good;
        bad_magic[MAGIC_POSITION] ^= 1;
        assert_eq!(
            decode_slot(&good),
            Ok(Some(Slot {
                sequence: 4,
                durable_next_offset: 77
            }))
        );
        assert_eq!(decode_slot(&[0; SLOT_BYTES]), Ok(None));
        assert_eq!(decode_slot(&[]), Ok(None));
        assert!(decode_slot(&good[..10]).is_err());
        assert!(decode_slot(&bad_magic).is_err());
    }
}
