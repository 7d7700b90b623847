//! Fuzzes a log's recovery (`Log::open`) on damaged files: segments written by the log itself,
//! then bytes overwritten, files cut short or given a tail (zeros or garbage), index files and
//! the durable mark included; or a segment file of raw bytes.
//!
//! Invariants: opening never panics; when it succeeds, every record it serves is the one
//! written at that offset (a damaged record is `Corrupt`, never data), no offset past those
//! written appears, and with every commit fsynced and the mark untouched no record is lost;
//! opening again gives the same log without cutting or rebuilding anything.
//!
//! Input: byte 0: records to write (`% 24`); byte 1: flags (bit 0 fsync every commit, bit 1 a
//! raw segment: the rest of the input is the only segment file); one byte per record, its
//! payload length (`% 64`); then damage operations of 4 bytes `[target, position high,
//! position low, value]`: `target % files` picks a file of the directory (sorted), `target /
//! 64` the operation: 0 or 1 set a byte, 2 cut the file, 3 append `position high % 64` bytes of
//! `value`.

#![no_main]

use std::path::Path;

use keel_log::{Log, LogConfig, LogError, Record};
use libfuzzer_sys::fuzz_target;

/// Tiny segments and an index entry per record: a few records make several segments, with
/// index files to damage too.
fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64,
        index_interval_bytes: 1,
    }
}

fn payload(offset: u64, bytes: usize) -> Vec<u8> {
    (0..bytes).map(|i| (offset as u8) ^ (i as u8)).collect()
}

/// Writes `lengths.len()` records, one commit each; returns them.
fn write(dir: &Path, lengths: &[u8], fsync: bool) -> Vec<Record> {
    let (log, _) = Log::open(dir, config()).expect("a new log opens");
    let mut written = Vec::new();
    for (offset, length) in (0..).zip(lengths) {
        let record = Record {
            offset,
            timestamp_ms: offset as i64 * 1000,
            payload: payload(offset, usize::from(*length % 64)),
        };
        log.append(record.timestamp_ms, &record.payload)
            .expect("append");
        log.commit(fsync).expect("commit");
        written.push(record);
    }
    written
}

/// Applies the damage operations; returns whether one touched the durable mark.
fn damage(dir: &Path, operations: &[u8]) -> bool {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .into_string()
                .expect("UTF-8")
        })
        .collect();
    names.sort();
    let mut mark_touched = false;
    for operation in operations.chunks_exact(4) {
        let name = &names[usize::from(operation[0]) % names.len()];
        mark_touched |= name == "durable.mark";
        let path = dir.join(name);
        let mut bytes = std::fs::read(&path).expect("read");
        let position = usize::from(u16::from_be_bytes([operation[1], operation[2]]));
        let value = operation[3];
        match operation[0] / 64 {
            0 | 1 => {
                let position = position % (bytes.len() + 1);
                if position == bytes.len() {
                    bytes.push(value);
                } else {
                    bytes[position] = value;
                }
            }
            2 => bytes.truncate(position % (bytes.len() + 1)),
            _ => bytes.extend(std::iter::repeat_n(value, usize::from(operation[1] % 64))),
        }
        std::fs::write(&path, bytes).expect("write");
    }
    mark_touched
}

/// The records `log` serves from its start, one read each, up to the first `Corrupt`.
fn served(log: &Log) -> Vec<Record> {
    let mut records = Vec::new();
    for offset in log.start_offset()..log.next_offset() {
        match log.read(offset, 1, usize::MAX) {
            Ok(mut read) => records.push(read.remove(0)),
            Err(LogError::Corrupt { .. }) => break,
            Err(error) => panic!("read {offset}: {error}"),
        }
    }
    records
}

fuzz_target!(|input: &[u8]| {
    let [count, flags, rest @ ..] = input else {
        return;
    };
    let base = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    };
    let root = base.expect("tempdir");
    let dir = root.path().join("log");
    let fsync = flags & 1 == 1;
    let (written, mark_touched) = if flags & 2 == 2 {
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("00000000000000000000.log"), rest).expect("write");
        (Vec::new(), true)
    } else {
        let count = usize::from(count % 24).min(rest.len());
        let (lengths, operations) = rest.split_at(count);
        let written = write(&dir, lengths, fsync);
        (written, damage(&dir, operations))
    };
    let Ok((log, _)) = Log::open(&dir, config()) else {
        return;
    };
    let next_offset = log.next_offset();
    if !written.is_empty() {
        assert!(next_offset <= written.len() as u64, "no record is invented");
    }
    if fsync && !mark_touched {
        assert_eq!(
            next_offset,
            written.len() as u64,
            "fsynced records are kept"
        );
    }
    let records = served(&log);
    for record in &records {
        if let Some(expected) = written.get(record.offset as usize) {
            assert_eq!(record, expected, "a record served is the one written");
        }
    }
    let start_offset = log.start_offset();
    drop(log);
    let (log, report) = Log::open(&dir, config()).expect("a recovered log opens again");
    assert_eq!(report.truncated_bytes, 0, "{report:?}");
    assert_eq!(report.indexes_rebuilt, 0, "{report:?}");
    assert_eq!(
        (log.start_offset(), log.next_offset()),
        (start_offset, next_offset)
    );
    assert_eq!(served(&log), records, "the same records after reopening");
});
