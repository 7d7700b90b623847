//! The store of a subscription: writes dead letters, removes redriven entries that were
//! delivered, and writes checkpoints — in that order, each fsynced — whenever the delivery
//! state changed. Writes follow each other as fast as the disk syncs, so one fsync covers
//! every change made while the previous one ran (group commit).
//!
//! While nobody waits for durability (push acknowledgements), a write waits up to
//! [`CHECKPOINT_GATHER`] for more changes first: at most about a hundred checkpoints per second,
//! instead of one per fsync, at the price of redelivering up to that much after a crash. A
//! pull ack waits for its checkpoint, so its arrival ends the gathering at once.
//!
//! Order matters: an event's dead-letter entry is durable before a checkpoint records the
//! event as done, so a crash between the two redelivers the event (and replaces its entry)
//! instead of losing it.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use super::checkpoint::Checkpoint;
use super::dlq::DeadLetterEntry;
use super::{Shared, attempt_labels};
use crate::error::EngineError;

/// Longest a checkpoint waits for more changes while nobody waits for it.
const CHECKPOINT_GATHER: Duration = Duration::from_millis(10);

/// Runs until the subscription stops, or until a write fails: then the subscription refuses
/// service (a failed fsync is never retried; the state on disk is unknown until a restart
/// recovers it).
pub(super) async fn run(shared: Arc<Shared>) {
    let mut stopping = shared.stopping.subscribe();
    let mut written = 0;
    loop {
        if let Err(error) = write_once(&shared, &mut written).await {
            let reason = format!(
                "its progress could not be stored ({error}); fix the disk and restart keel"
            );
            tracing::error!(subscription = %shared.name, %error, "subscription refuses service");
            shared
                .durable
                .send_modify(|durable| durable.failed = Some(reason));
            return;
        }
        tokio::select! {
            _ = shared.dirty.notified() => {}
            _ = stopping.wait_for(|stopping| *stopping) => return,
        }
        if shared.waiters.load(SeqCst) == 0 {
            tokio::select! {
                _ = tokio::time::sleep(CHECKPOINT_GATHER) => {}
                _ = shared.waiter_arrived.notified() => {}
                _ = stopping.wait_for(|stopping| *stopping) => return,
            }
        }
    }
}

/// One round: the dead letters and redriven acks taken at its start, then a checkpoint.
///
/// Invariant: the version announced as durable is the one read together with the dead letters
/// and redriven acks this round writes, under one lock. A change made later (a reject, an ack
/// of a redriven entry) has a higher version, so its waiter is answered only by a round that
/// wrote its dead letter or its removal. (The checkpoint itself may hold later changes too:
/// it is built from the state when it is written, which only ever records an event as done
/// after its dead letter is durable.)
async fn write_once(shared: &Arc<Shared>, written: &mut u64) -> Result<(), EngineError> {
    let (version, letters, acked) = {
        let mut core = shared.core();
        let letters = core.delivery.dead_letters_to_write();
        let acked = std::mem::take(&mut core.redrive_acked);
        (core.delivery.version(), letters, acked)
    };
    if !letters.is_empty() {
        let entries: Vec<DeadLetterEntry> = letters
            .iter()
            .map(|letter| DeadLetterEntry::new(letter.origin, &letter.json, letter.history.clone()))
            .collect();
        blocking(shared, move |shared| {
            shared.with_dlq(|dlq| dlq.add(entries))
        })
        .await?;
        shared.core().delivery.finish_dead_letters(&letters);
        shared
            .metrics
            .subscription_attempts
            .get_or_create(&attempt_labels(shared, "dead_lettered"))
            .inc_by(letters.len() as u64);
        shared.wake_readers();
        shared.changed(true);
    }
    if !acked.is_empty() {
        blocking(shared, move |shared| {
            shared.with_dlq(|dlq| dlq.remove_redriven(acked))
        })
        .await?;
    }
    if version > *written {
        let checkpoint = {
            let core = shared.core();
            Checkpoint {
                lanes: core.delivery.checkpoint(),
                paused: core.paused.clone(),
            }
        };
        blocking(shared, move |shared| {
            shared
                .checkpoints
                .lock()
                .expect("checkpoints lock")
                .write(&checkpoint)
        })
        .await?;
        *written = version;
        shared
            .durable
            .send_modify(|durable| durable.version = version);
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    operation: impl FnOnce(&Shared) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || operation(&shared))
        .await
        .map_err(|_| EngineError::ShuttingDown)?
}
