//! Throughput of the log: group commit with and without fsync, and sequential reads.
//!
//! Kept short (10 samples, about a second of measurement each) so the whole run stays modest
//! on a 2-core machine: `cargo bench -p keel-log`.

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_main};
use keel_log::{Log, LogConfig};

const RECORD_BYTES: usize = 1024;
const BATCH_RECORDS: u64 = 100;
const READ_RECORDS: u64 = 10_000;

fn append_commit(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("append_commit");
    group.throughput(Throughput::Bytes(BATCH_RECORDS * RECORD_BYTES as u64));
    let payload = vec![0x5a; RECORD_BYTES];
    for fsync in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = Log::open(dir.path(), LogConfig::default()).expect("open");
        let name = if fsync {
            "100x1KiB_fsync"
        } else {
            "100x1KiB_no_fsync"
        };
        group.bench_function(name, |bencher| {
            bencher.iter(|| {
                for timestamp_ms in 0..BATCH_RECORDS as i64 {
                    log.append(timestamp_ms, &payload).expect("append");
                }
                log.commit(fsync).expect("commit")
            })
        });
    }
    group.finish();
}

fn read(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("read");
    group.throughput(Throughput::Bytes(READ_RECORDS * RECORD_BYTES as u64));
    // The default config keeps all 10 MiB in the active segment; 1 MiB segments put nearly all
    // of it in sealed segments, whose index entries are looked up in their index files.
    let cases = [
        ("10k_x_1KiB_in_batches_of_500", LogConfig::default()),
        (
            "10k_x_1KiB_in_batches_of_500_sealed",
            LogConfig {
                segment_bytes_max: 1024 * 1024,
                ..LogConfig::default()
            },
        ),
    ];
    for (name, config) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = filled_log(dir.path(), config, 100);
        group.bench_function(name, |bencher| {
            bencher.iter_batched(|| (), |()| read_all(&log), BatchSize::SmallInput)
        });
    }
    group.finish();
}

/// One-record reads, each from another of many sealed segments: more segments than the
/// process keeps files open for (`SEALED_FILES_OPEN_MAX`), so every read opens its segment's
/// files: the worst case of opening sealed segments on demand.
fn read_scattered(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("read_scattered");
    let config = LogConfig {
        segment_bytes_max: 16 * 1024,
        ..LogConfig::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // Commits of 15 records of 1 KiB: one per 16 KiB segment.
    let log = filled_log(dir.path(), config, 15);
    // One offset in the middle of each segment.
    let offsets: Vec<u64> = (7..READ_RECORDS).step_by(15).collect();
    assert!(log.segment_count() > 4 * keel_log::limits::SEALED_FILES_OPEN_MAX);
    group.throughput(Throughput::Elements(offsets.len() as u64));
    group.bench_function("1_record_from_each_of_667_sealed_segments", |bencher| {
        bencher.iter(|| {
            for offset in &offsets {
                let records = log.read(*offset, 1, usize::MAX).expect("read");
                assert_eq!(records[0].offset, *offset);
            }
        })
    });
    group.finish();
}

/// A log in `dir` holding `READ_RECORDS` records of `RECORD_BYTES`, committed
/// `records_per_commit` at a time.
fn filled_log(dir: &std::path::Path, config: LogConfig, records_per_commit: i64) -> Log {
    let (log, _) = Log::open(dir, config).expect("open");
    let payload = vec![0xa5; RECORD_BYTES];
    for timestamp_ms in 0..READ_RECORDS as i64 {
        log.append(timestamp_ms, &payload).expect("append");
        if timestamp_ms % records_per_commit == records_per_commit - 1 {
            log.commit(false).expect("commit");
        }
    }
    log.commit(true).expect("commit");
    log
}

/// Reads the whole log in calls of 500 records; returns the next offset.
fn read_all(log: &Log) -> u64 {
    let mut from = 0;
    while from < READ_RECORDS {
        from = log
            .read(from, 500, usize::MAX)
            .expect("read")
            .last()
            .expect("a record")
            .offset
            + 1;
    }
    from
}

/// Runs every benchmark of this file with short, small samples (what `criterion_group!` would
/// generate, written out so it carries a doc comment).
fn benches() {
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    append_commit(&mut criterion);
    read(&mut criterion);
    read_scattered(&mut criterion);
}

criterion_main!(benches);
