//! Model test: random operation sequences against a `Vec` of the records that must be visible.

use keel_log::{Log, LogConfig, RECORD_HEADER_BYTES, Record};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append {
        payload_bytes: usize,
        timestamp_step_ms: i64,
    },
    Commit {
        fsync: bool,
    },
    Sync,
    Read {
        from_permille: u16,
        records_max: usize,
        bytes_max: usize,
    },
    Lookup {
        timestamp_permille: u16,
    },
    Reopen,
    Retention {
        age_ms_max: Option<u64>,
        bytes_max: Option<u64>,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..120, 0i64..30)
            .prop_map(|(payload_bytes, timestamp_step_ms)| {
                Op::Append { payload_bytes, timestamp_step_ms }
            }),
        3 => any::<bool>().prop_map(|fsync| Op::Commit { fsync }),
        1 => Just(Op::Sync),
        3 => (0u16..=1000, 0usize..20, 0usize..600)
            .prop_map(|(from_permille, records_max, bytes_max)| {
                Op::Read { from_permille, records_max, bytes_max }
            }),
        1 => (0u16..=1100).prop_map(|timestamp_permille| Op::Lookup { timestamp_permille }),
        1 => Just(Op::Reopen),
        1 => (prop::option::of(0u64..2000), prop::option::of(0u64..3000))
            .prop_map(|(age_ms_max, bytes_max)| Op::Retention { age_ms_max, bytes_max }),
    ]
}

/// What the log must hold: the visible records from the start offset, and the pending ones.
#[derive(Debug, Default)]
struct Model {
    start_offset: u64,
    visible: Vec<Record>,
    pending: Vec<Record>,
    clock_ms: i64,
}

impl Model {
    fn next_offset(&self) -> u64 {
        self.start_offset + self.visible.len() as u64
    }

    fn size_bytes(&self) -> u64 {
        self.visible
            .iter()
            .map(|r| (RECORD_HEADER_BYTES + r.payload.len()) as u64)
            .sum()
    }

    /// The offset `permille` of the way through `[start_offset, next_offset]`.
    fn offset_at(&self, permille: u16) -> u64 {
        self.start_offset + self.visible.len() as u64 * u64::from(permille) / 1000
    }
}

struct Harness {
    dir: tempfile::TempDir,
    config: LogConfig,
    log: Option<Log>,
    model: Model,
}

impl Harness {
    fn log(&self) -> &Log {
        self.log
            .as_ref()
            .expect("the log is open between operations")
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Append {
                payload_bytes,
                timestamp_step_ms,
            } => {
                self.model.clock_ms += timestamp_step_ms;
                let offset = self.model.next_offset() + self.model.pending.len() as u64;
                let payload: Vec<u8> = (0..payload_bytes)
                    .map(|i| (offset as usize + i) as u8)
                    .collect();
                prop_assert_eq!(
                    self.log()
                        .append(self.model.clock_ms, &payload)
                        .expect("append"),
                    offset
                );
                self.model.pending.push(Record {
                    offset,
                    timestamp_ms: self.model.clock_ms,
                    payload,
                });
            }
            Op::Commit { fsync } => {
                let next_offset = self.log().commit(fsync).expect("commit");
                self.model.visible.append(&mut self.model.pending);
                prop_assert_eq!(next_offset, self.model.next_offset());
            }
            Op::Sync => self.log().sync().expect("sync"),
            Op::Read {
                from_permille,
                records_max,
                bytes_max,
            } => self.check_read(from_permille, records_max, bytes_max)?,
            Op::Lookup { timestamp_permille } => {
                let timestamp_ms = self.model.clock_ms * i64::from(timestamp_permille) / 1000;
                let expected = self
                    .model
                    .visible
                    .iter()
                    .find(|r| r.timestamp_ms >= timestamp_ms);
                let expected = expected.map_or(self.model.next_offset(), |r| r.offset);
                prop_assert_eq!(
                    self.log()
                        .offset_for_timestamp(timestamp_ms)
                        .expect("lookup"),
                    expected
                );
            }
            Op::Reopen => {
                self.log = None;
                self.model.pending.clear();
                let (log, report) =
                    Log::open(self.dir.path(), self.config.clone()).expect("reopen");
                prop_assert_eq!(report.truncated_bytes, 0);
                self.log = Some(log);
            }
            Op::Retention {
                age_ms_max,
                bytes_max,
            } => self.check_retention(age_ms_max, bytes_max)?,
        }
        let log = self.log();
        prop_assert_eq!(log.start_offset(), self.model.start_offset);
        prop_assert_eq!(log.next_offset(), self.model.next_offset());
        prop_assert_eq!(log.size_bytes(), self.model.size_bytes());
        Ok(())
    }

    fn check_read(
        &self,
        from_permille: u16,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<(), TestCaseError> {
        let from = self.model.offset_at(from_permille);
        let records = self.log().read(from, records_max, bytes_max).expect("read");
        let available = &self.model.visible[(from - self.model.start_offset) as usize..];
        let mut expected_count = 0;
        let mut bytes = 0;
        for record in available.iter().take(records_max) {
            bytes += record.payload.len();
            if expected_count > 0 && bytes > bytes_max {
                break;
            }
            expected_count += 1;
        }
        prop_assert_eq!(&records[..], &available[..expected_count]);
        Ok(())
    }

    fn check_retention(
        &mut self,
        age_ms_max: Option<u64>,
        bytes_max: Option<u64>,
    ) -> Result<(), TestCaseError> {
        let now_ms = self.model.clock_ms;
        let report = self
            .log()
            .apply_retention(now_ms, age_ms_max, bytes_max)
            .expect("retention");
        let new_start = self.log().start_offset();
        prop_assert!(new_start >= self.model.start_offset && new_start <= self.model.next_offset());
        let dropped: Vec<Record> = self
            .model
            .visible
            .drain(..(new_start - self.model.start_offset) as usize)
            .collect();
        self.model.start_offset = new_start;
        let dropped_bytes: u64 = dropped
            .iter()
            .map(|r| (RECORD_HEADER_BYTES + r.payload.len()) as u64)
            .sum();
        prop_assert_eq!(report.bytes_deleted, dropped_bytes);
        prop_assert_eq!(report.segments_deleted == 0, dropped.is_empty());
        if let (Some(age_ms_max), None) = (age_ms_max, bytes_max) {
            let cutoff_ms = now_ms - age_ms_max as i64;
            prop_assert!(
                dropped.iter().all(|r| r.timestamp_ms < cutoff_ms),
                "dropped a record too young"
            );
        }
        if let Some(bytes_max) = bytes_max {
            let log = self.log();
            prop_assert!(
                log.size_bytes() <= bytes_max || log.segment_count() == 1,
                "kept too many bytes"
            );
        }
        if age_ms_max.is_none() && bytes_max.is_none() {
            prop_assert!(dropped.is_empty());
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_a_vec_model_under_random_operations(
        ops in prop::collection::vec(op_strategy(), 1..60),
        segment_bytes_max in prop::sample::select(vec![64u64, 300, 1000, 1 << 20]),
        index_interval_bytes in prop::sample::select(vec![1u32, 100, 4096]),
    ) {
        // Goal: whatever the sequence of appends, commits, syncs, reads, lookups, reopens and
        // retention passes, the log serves exactly what a Vec of committed records predicts, and
        // retention drops only what its rules allow.
        // Method: apply random operations to the log and to the model; compare after each.
        let config = LogConfig { segment_bytes_max, index_interval_bytes };
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = Log::open(dir.path(), config.clone()).expect("open");
        let mut harness = Harness { dir, config, log: Some(log), model: Model::default() };
        for op in &ops {
            harness.apply(op)?;
        }
    }
}
