//! Decoder and recovery fuzzing with proptest: arbitrary bytes never cause a panic.

use keel_log::{Log, LogConfig, LogError, encode_frame};
use proptest::prelude::*;

/// Valid frames for offsets `0..count`, then byte mutations and a random tail: bytes that
/// reach deep into the decoder rather than failing at the first header.
fn segment_bytes() -> impl Strategy<Value = (Vec<u8>, usize)> {
    (
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(payloads, mutations, tail)| {
            let mut bytes = Vec::new();
            for (offset, payload) in payloads.iter().enumerate() {
                encode_frame(offset as u64, offset as i64, payload, &mut bytes);
            }
            for (index, xor) in mutations {
                if !bytes.is_empty() {
                    let position = index.index(bytes.len());
                    bytes[position] ^= xor;
                }
            }
            bytes.extend_from_slice(&tail);
            (bytes, payloads.len())
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn opening_arbitrary_segment_bytes_never_panics((bytes, written) in segment_bytes()) {
        // Goal: recovery survives any bytes in a segment: it never panics, serves only frames
        // that pass every check, and what it keeps reopens unchanged.
        // Method: write mutated frames as the only segment (no durable mark), open, read all,
        // reopen.
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig { segment_bytes_max: 1 << 20, index_interval_bytes: 50 };
        std::fs::write(dir.path().join(format!("{:020}.log", 0)), &bytes).expect("write segment");
        let opened = Log::open(dir.path(), config.clone());
        let (log, report) = opened.expect("with no mark, damage is a torn tail");
        prop_assert!(log.next_offset() as usize <= written || report.truncated_bytes == 0);
        let records = log.read(0, usize::MAX, usize::MAX).expect("recovered records read back");
        prop_assert_eq!(records.len() as u64, log.next_offset());
        drop(log);
        let (log, report) = Log::open(dir.path(), config).expect("reopen");
        prop_assert_eq!(report.truncated_bytes, 0);
        prop_assert_eq!(log.read(0, usize::MAX, usize::MAX).expect("read again"), records);
    }

    #[test]
    fn arbitrary_index_files_never_break_reads(
        offset_index in prop::collection::vec(any::<u8>(), 0..100),
        time_index in prop::collection::vec(any::<u8>(), 0..100),
    ) {
        // Goal: index files are untrusted caches: any bytes in them are either accepted because
        // they fit the segment, or rebuilt; reads and lookups stay correct either way.
        // Method: two sealed segments, overwrite the first one's index files, reopen, read.
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig { segment_bytes_max: 256, index_interval_bytes: 1 };
        let (log, _) = Log::open(dir.path(), config.clone()).expect("open");
        for batch in 0..3 {
            for offset in batch * 4..batch * 4 + 4 {
                log.append(offset * 10, &[offset as u8; 40]).expect("append");
            }
            log.commit(true).expect("commit");
        }
        drop(log);
        let base = dir.path().join(format!("{:020}", 0));
        std::fs::write(base.with_extension("index"), &offset_index).expect("write index");
        std::fs::write(base.with_extension("timeindex"), &time_index).expect("write time index");
        let (log, _) = Log::open(dir.path(), config).expect("reopen");
        for offset in 0..12u64 {
            let record = &log.read(offset, 1, 1).expect("read")[0];
            prop_assert_eq!((record.offset, record.payload[0]), (offset, offset as u8));
            prop_assert_eq!(log.offset_for_timestamp(offset as i64 * 10).expect("lookup"), offset);
        }
        let error = log.read(13, 1, 1).expect_err("past the end");
        let out_of_range = matches!(error, LogError::OffsetOutOfRange { .. });
        prop_assert!(out_of_range, "{:?}", error);
    }
}
