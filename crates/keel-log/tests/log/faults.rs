//! Fault injection: a failed write or fsync is never acknowledged and poisons the log; a roll
//! that finds no file descriptor left is retried and does not.

use std::sync::Arc;

use keel_log::limits::ROLL_ATTEMPTS_MAX;
use keel_log::{FaultError, FaultOp, FaultyStorage, Log, LogConfig, LogError};

use crate::support::{Rng, check_all, open, payload_for, small_config, timestamp_for, with_seed};

fn open_faulty(dir: &std::path::Path, storage: &FaultyStorage, config: LogConfig) -> Log {
    let (log, _) = Log::open_with_storage(dir, config, Arc::new(storage.clone())).expect("open");
    log
}

/// Appends the test records `[first, first + count)` (payload size 40, so 64-byte frames).
fn append_records(log: &Log, first: u64, count: u64) -> Result<(), LogError> {
    for offset in first..first + count {
        assert_eq!(
            log.append(timestamp_for(offset), &payload_for(offset, 40))?,
            offset
        );
    }
    Ok(())
}

/// Checks the poisoned state: writes refused, visible records readable, nothing new visible.
fn assert_poisoned(log: &Log, acknowledged: u64) {
    assert!(matches!(
        log.append(0, b"x"),
        Err(LogError::Poisoned { .. })
    ));
    assert!(matches!(log.commit(true), Err(LogError::Poisoned { .. })));
    assert!(matches!(log.commit(false), Err(LogError::Poisoned { .. })));
    assert!(matches!(log.sync(), Err(LogError::Poisoned { .. })));
    assert_eq!(log.next_offset(), acknowledged);
    assert!(
        log.read(acknowledged, 10, usize::MAX)
            .expect("read at the end")
            .is_empty()
    );
    check_all(log, |_| 40);
}

#[test]
fn a_failed_write_or_fsync_is_never_acknowledged_and_poisons_the_log() {
    // Goal: for each failing operation and error, the failing commit returns the error, its
    // records never become visible, every later write is Poisoned, visible records stay
    // readable, and reopening recovers exactly the acknowledged records.
    // Method: a table of (operation, error, commit kind); fail the next such operation after
    // some good commits, then check the poisoned log and a reopened one.
    let cases = [
        (FaultOp::Write, FaultError::Eio, true),
        (FaultOp::Sync, FaultError::Eio, true),
        (FaultOp::Sync, FaultError::Enospc, true),
    ];
    for (op, error, fsync) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FaultyStorage::new(11);
        let log = open_faulty(dir.path(), &storage, LogConfig::default());
        append_records(&log, 0, 5).expect("append");
        assert_eq!(log.commit(true).expect("good commit"), 5);
        storage.fail_after(op, 0, error);
        append_records(&log, 5, 5).expect("append");
        match log.commit(fsync) {
            Err(LogError::Io {
                op: "write" | "fsync",
                ..
            }) => {}
            other => panic!("{op:?}/{error:?}: expected an I/O error, got {other:?}"),
        }
        assert_eq!(storage.injected_count(), 1, "{op:?}");
        assert_poisoned(&log, 5);
        drop(log);
        let (log, _) = open(dir.path(), LogConfig::default());
        assert_eq!(
            log.next_offset(),
            5,
            "{op:?}/{error:?}: reopen recovers the acknowledged records"
        );
        check_all(&log, |_| 40);
    }
}

#[test]
fn a_full_device_refuses_the_commit_and_the_log_goes_on() {
    // Goal: a commit whose write fails with ENOSPC returns StorageFull, keeps nothing of it
    // (not even after a crash), and does not poison: the next commit succeeds once space
    // returns, and everything acknowledged is served, before and after a crash.
    // Method: 5 fsynced records; the next write fails (torn) with ENOSPC under a commit of
    // 60-byte records, with and without fsync; then 40-byte records at the same offsets.
    for fsync in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FaultyStorage::new(14);
        let log = open_faulty(dir.path(), &storage, LogConfig::default());
        append_records(&log, 0, 5).expect("append");
        assert_eq!(log.commit(true).expect("good commit"), 5);
        storage.fail_after(FaultOp::Write, 0, FaultError::Enospc);
        for offset in 5..8 {
            log.append(timestamp_for(offset), &payload_for(offset, 60))
                .expect("append");
        }
        match log.commit(fsync) {
            Err(LogError::StorageFull { .. }) => {}
            other => panic!("expected StorageFull, got {other:?}"),
        }
        assert_eq!(log.next_offset(), 5);
        append_records(&log, 5, 3).expect("the log takes writes again");
        assert_eq!(log.commit(false).expect("commit once space returns"), 8);
        check_all(&log, |_| 40);
        drop(log);
        storage.crash().expect("crash");
        let log = open_faulty(dir.path(), &storage, LogConfig::default());
        assert!((5..=8).contains(&log.next_offset()), "fsync {fsync}");
        check_all(&log, |_| 40);
    }
}

#[test]
fn a_failed_sync_poisons_the_log_but_keeps_visible_records() {
    // Goal: when sync() fails, records committed without fsync stay readable (they were
    // acknowledged as written), and the log takes no more writes.
    // Method: commit(false), fail the fsync of sync(), check.
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FaultyStorage::new(12);
    let log = open_faulty(dir.path(), &storage, LogConfig::default());
    append_records(&log, 0, 3).expect("append");
    log.commit(false).expect("commit");
    storage.fail_after(FaultOp::Sync, 0, FaultError::Eio);
    assert!(matches!(log.sync(), Err(LogError::Io { op: "fsync", .. })));
    assert_poisoned(&log, 3);
}

#[test]
fn failures_while_rolling_a_segment_poison_without_losing_visible_records() {
    // Goal: a roll does several writes and fsyncs (the sealed segment, its index files, the
    // directory); a failure at any of them either fails the commit that needed the roll (the
    // segment, the directory) or is absorbed (an index file, a cache), and reopening serves
    // exactly the acknowledged records.
    // Method: fill a segment with unsynced commits, then fail the k-th write or sync of the
    // commit that rolls, for every k that the roll performs.
    for op in [FaultOp::Write, FaultOp::Sync] {
        for successes in 0..4 {
            let dir = tempfile::tempdir().expect("tempdir");
            let storage = FaultyStorage::new(13);
            let log = open_faulty(dir.path(), &storage, small_config());
            append_records(&log, 0, 8).expect("append");
            assert_eq!(log.commit(false).expect("commit fills the segment"), 8);
            storage.fail_after(op, successes, FaultError::Eio);
            append_records(&log, 8, 2).expect("append");
            let outcome = log.commit(true);
            let acknowledged = match outcome {
                Ok(next_offset) => next_offset,
                Err(LogError::Io { .. }) => {
                    assert_poisoned(&log, 8);
                    8
                }
                Err(other) => panic!("{op:?} after {successes}: unexpected {other:?}"),
            };
            drop(log);
            let (log, _) = open(dir.path(), small_config());
            assert_eq!(log.next_offset(), acknowledged, "{op:?} after {successes}");
            check_all(&log, |_| 40);
        }
    }
}

#[test]
fn a_roll_out_of_descriptors_is_retried_and_never_poisons() {
    // Goal: a roll whose opens fail with EMFILE (the new segment's creation, the directory's
    // open for its fsync, or an index file's) is tried again: one failure costs nothing; when
    // every try fails the commit returns DescriptorsExhausted, keeps nothing, and the log is
    // not poisoned: the next commit rolls and succeeds once descriptors are free, and every
    // acknowledged record survives a crash.
    // Method: per kind of file, fill a segment, fail that open once (the commit succeeds), then
    // fail it always (the commit is refused after ROLL_ATTEMPTS_MAX tries), heal, commit again,
    // then crash and reopen.
    for suffix in [".log", "/p0", ".index", ".timeindex"] {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("p0");
        let storage = FaultyStorage::new(23);
        let log = open_faulty(&dir, &storage, small_config());
        storage.only_on_paths_ending(&[suffix]);
        append_records(&log, 0, 8).expect("append");
        assert_eq!(log.commit(true).expect("fills the first segment"), 8);
        storage.fail_after(FaultOp::Open, 0, FaultError::Emfile);
        append_records(&log, 8, 8).expect("append");
        assert_eq!(
            log.commit(true).expect("{suffix}: one EMFILE is retried"),
            16
        );
        assert_eq!(storage.injected_count(), 1, "{suffix}");
        assert_eq!(log.segment_count(), 2, "{suffix}");

        storage.fail_randomly(FaultOp::Open, 1_000_000, FaultError::Emfile);
        append_records(&log, 16, 2).expect("append");
        match log.commit(true) {
            Err(LogError::DescriptorsExhausted { .. }) => {}
            other => panic!("{suffix}: expected DescriptorsExhausted, got {other:?}"),
        }
        assert_eq!(
            storage.injected_count(),
            1 + u64::from(ROLL_ATTEMPTS_MAX),
            "{suffix}: tried ROLL_ATTEMPTS_MAX times"
        );
        assert_eq!(
            log.next_offset(),
            16,
            "{suffix}: nothing of the refused commit"
        );

        storage.heal();
        append_records(&log, 16, 2).expect("{suffix}: not poisoned");
        assert_eq!(
            log.commit(true).expect("{suffix}: the roll succeeds now"),
            18
        );
        assert_eq!(log.segment_count(), 3, "{suffix}");
        check_all(&log, |_| 40);
        drop(log);
        storage.crash().expect("crash");
        let (log, _) = open(&dir, small_config());
        assert_eq!(log.next_offset(), 18, "{suffix}: acknowledged records kept");
        check_all(&log, |_| 40);
    }
}

#[test]
fn failed_index_file_writes_never_stop_the_partition() {
    // Goal: index files are caches: when every write or every fsync of them fails, commits
    // still succeed, reads and time lookups stay right, and the next open rebuilds the files.
    // Method: fail all `.index`/`.timeindex` writes (then fsyncs) over many rolls; check every
    // record and a time lookup per record; reopen without faults and check again.
    for op in [FaultOp::Write, FaultOp::Sync] {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FaultyStorage::new(17);
        storage.only_on_paths_ending(&[".index", ".timeindex"]);
        storage.fail_randomly(op, 1_000_000, FaultError::Enospc);
        let log = open_faulty(dir.path(), &storage, small_config());
        for first in (0..60).step_by(3) {
            append_records(&log, first, 3).expect("append");
            assert_eq!(
                log.commit(true).expect("commit despite index faults"),
                first + 3
            );
        }
        assert!(
            storage.injected_count() > 0,
            "{op:?}: the faults were injected"
        );
        let check = |log: &Log| {
            check_all(log, |_| 40);
            for offset in 0..60 {
                let found = log
                    .offset_for_timestamp(timestamp_for(offset))
                    .expect("lookup");
                assert_eq!(found, offset, "{op:?}: time lookup of {offset}");
            }
        };
        check(&log);
        drop(log);
        let (log, report) = open(dir.path(), small_config());
        assert!(report.indexes_rebuilt > 0, "{op:?}: {report:?}");
        assert_eq!(log.next_offset(), 60);
        check(&log);
    }
}

#[test]
fn a_segment_left_by_a_crashed_roll_is_made_durable_at_the_next_open() {
    // Goal: a roll that created a segment but died before the directory fsync leaves a name
    // the next open sees; that open makes it durable before anything is appended to it, so a
    // later power loss keeps every record acknowledged since.
    // Method: per seed, fail the roll's directory fsync, reopen without a crash, commit more
    // records, then crash (dropping names not made durable) and reopen.
    for seed in 0..16 {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("p0");
        let storage = FaultyStorage::new(seed);
        let log = open_faulty(&dir, &storage, small_config());
        append_records(&log, 0, 8).expect("append");
        assert_eq!(log.commit(true).expect("fills the first segment"), 8);
        storage.only_on_paths_ending(&["/p0"]);
        storage.fail_after(FaultOp::Sync, 0, FaultError::Eio);
        append_records(&log, 8, 2).expect("append");
        assert!(
            log.commit(true).is_err(),
            "seed {seed}: the roll's directory fsync failed"
        );
        drop(log);
        storage.heal();
        let log = open_faulty(&dir, &storage, small_config());
        let first = log.next_offset();
        append_records(&log, first, 2).expect("append");
        assert_eq!(log.commit(true).expect("commit"), first + 2, "seed {seed}");
        drop(log);
        storage.crash().expect("crash");
        let (log, _) = open(&dir, small_config());
        assert_eq!(
            log.next_offset(),
            first + 2,
            "seed {seed}: acknowledged records kept"
        );
        check_all(&log, |_| 40);
    }
}

/// One seeded run: random appends, commits and syncs over small segments with random write and
/// fsync failures; checks the poisoned log, then reopens and checks every acknowledged record.
fn random_faults_run(seed: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FaultyStorage::new(seed);
    let log = open_faulty(dir.path(), &storage, small_config());
    storage.fail_randomly(FaultOp::Write, 20_000, FaultError::Enospc);
    storage.fail_randomly(FaultOp::Sync, 40_000, FaultError::Eio);
    let mut rng = Rng::new(seed);
    let mut acknowledged = 0;
    let mut pending = 0;
    let mut failed = false;
    for _ in 0..200 {
        let result = match rng.below(10) {
            0..=5 => append_records(&log, acknowledged + pending, 1).map(|()| pending += 1),
            6 | 7 => log.commit(rng.below(2) == 0).map(|next_offset| {
                assert_eq!(next_offset, acknowledged + pending);
                (acknowledged, pending) = (next_offset, 0);
            }),
            8 => log
                .commit(false)
                .map(|next_offset| (acknowledged, pending) = (next_offset, 0)),
            _ => log.sync(),
        };
        if let Err(LogError::StorageFull { .. }) = result {
            // The full device refused the commit: its records are gone, the log goes on.
            pending = 0;
            assert_eq!(log.next_offset(), acknowledged);
            continue;
        }
        if let Err(error) = result {
            assert!(matches!(error, LogError::Io { .. }), "{error:?}");
            failed = true;
            break;
        }
        assert_eq!(log.next_offset(), acknowledged);
    }
    if failed {
        assert_poisoned(&log, acknowledged);
    }
    drop(log);
    storage.heal();
    let log = open_faulty(dir.path(), &storage, small_config());
    assert_eq!(log.next_offset(), acknowledged);
    check_all(&log, |_| 40);
    // The recovered log takes writes again.
    append_records(&log, acknowledged, 1).expect("append after recovery");
    assert_eq!(
        log.commit(true).expect("commit after recovery"),
        acknowledged + 1
    );
}

#[test]
fn random_write_and_fsync_failures_never_lose_or_invent_acknowledged_records() {
    // Goal: whatever fails and wherever (data, index files, directory, mark), the records a
    // commit acknowledged are exactly those served after reopening.
    // Method: 24 seeded runs of random operations with random faults; the seed is printed on
    // failure and replays the run.
    for seed in 0..24 {
        with_seed(seed, random_faults_run);
    }
}
