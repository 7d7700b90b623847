//! What the engine's randomized crash tests share: which seeds to run, and the lives of one
//! seed on the seeded in-memory storage, each ended by a simulated power loss.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::storage::{Faults, MemoryStorage};
use keel_engine::{Engine, EngineConfig};
use serde_json::Value;

/// The seeds to run: `KEEL_TEST_SEED` alone when it is set (a replay), else `$count_var` (or
/// `default`) seeds from a random base.
pub(crate) fn seeds(count_var: &str, default: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("KEEL_TEST_SEED") {
        return vec![seed.parse().expect("KEEL_TEST_SEED is a number")];
    }
    let count = std::env::var(count_var)
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(default);
    let base = fastrand::u64(..);
    (0..count).map(|index| base.wrapping_add(index)).collect()
}

/// One life of a seed's run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Life {
    /// 0 for the first.
    pub(crate) number: usize,
    /// The last life runs without injected failures (it checks the end state).
    pub(crate) last: bool,
}

/// Runs `lives` lives of one seed: each opens an engine on the storage the last one left, in
/// a runtime of its own, and runs `life`; appends and fsyncs fail at `failures_ppm` (drawn from
/// the seed) in every life but the last. Each life ends in a power loss: what was not synced
/// is lost or torn, and the engine's tasks die with the runtime, never writing again. Stops at
/// the first life that fails.
pub(crate) fn run_lives(
    seed: u64,
    lives: usize,
    failures_ppm: u32,
    mut life: impl AsyncFnMut(&Engine, Life) -> Result<(), String>,
) -> Result<(), String> {
    let mut storage = MemoryStorage::new(Faults {
        seed,
        append_failures_ppm: failures_ppm,
        sync_failures_ppm: failures_ppm,
    });
    for number in 0..lives {
        let last = number + 1 == lives;
        if last {
            storage.set_faults(Faults {
                seed,
                ..Faults::default()
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let result = runtime.block_on(async {
            let config = EngineConfig::new("unused: the storage is in memory");
            let engine = Engine::open_with_storage(config, Arc::new(storage.clone()))
                .await
                .map_err(|error| format!("the engine does not open after a crash: {error}"))?;
            life(&engine, Life { number, last }).await
        });
        let crashed = storage.crash();
        runtime.shutdown_background();
        result?;
        storage = crashed;
    }
    Ok(())
}

/// Every stored event of a topic's first `partitions` partitions, by (partition, offset).
pub(crate) async fn read_topic(
    engine: &Engine,
    topic: &str,
    partitions: u32,
) -> Result<BTreeMap<(u32, u64), Value>, String> {
    let mut stored = BTreeMap::new();
    for partition in 0..partitions {
        let mut from = 0;
        loop {
            let batch = engine
                .read(topic, partition, Some(from), 1000, Duration::ZERO)
                .await
                .map_err(|error| format!("read {topic}/{partition}: {error}"))?;
            if batch.records.is_empty() {
                break;
            }
            for record in &batch.records {
                let event =
                    serde_json::from_slice(&record.payload).expect("stored events are JSON");
                stored.insert((partition, record.offset), event);
            }
            from = batch.next_offset;
        }
    }
    Ok(stored)
}
