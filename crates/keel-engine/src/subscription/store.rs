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
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::Shared;
use super::checkpoint::Checkpoint;
use super::dlq::DeadLetterEntry;
use crate::error::{EngineError, SubscriptionError};

/// Longest a checkpoint waits for more changes while nobody waits for it.
const CHECKPOINT_GATHER: Duration = Duration::from_millis(10);

/// Whether the subscription's state is durable up to a version, or why it never will be.
#[derive(Debug, Clone, Default)]
struct Durable {
    version: u64,
    failed: Option<String>,
}

/// How far a subscription's state is durable, and who waits for it.
pub(super) struct Durability {
    durable: watch::Sender<Durable>,
    /// Callers waiting for durability (pull acks, admin calls): while there are none, the
    /// store lets changes gather for up to `CHECKPOINT_GATHER` per write.
    waiters: AtomicUsize,
    /// Wakes a gathering store: a caller now waits.
    waiter_arrived: Notify,
}

impl Durability {
    pub(super) fn new() -> Self {
        Durability {
            durable: watch::Sender::new(Durable::default()),
            waiters: AtomicUsize::new(0),
            waiter_arrived: Notify::new(),
        }
    }

    /// Waits until the state at `version` is durable (subscription `name`, for the error).
    pub(super) async fn wait(&self, name: &str, version: u64) -> Result<(), EngineError> {
        let mut durable = self.durable.subscribe();
        self.waiters.fetch_add(1, SeqCst);
        self.waiter_arrived.notify_one();
        let result = durable
            .wait_for(|durable| durable.version >= version || durable.failed.is_some())
            .await
            .map(|durable| durable.failed.clone());
        self.waiters.fetch_sub(1, SeqCst);
        match result {
            Ok(None) => Ok(()),
            Ok(Some(reason)) => Err(EngineError::Subscription(SubscriptionError::Unavailable {
                name: name.to_owned(),
                reason,
            })),
            Err(_) => Err(EngineError::ShuttingDown),
        }
    }

    /// Fails when the state can no longer be stored.
    pub(super) fn check_available(&self, name: &str) -> Result<(), EngineError> {
        match self.failed() {
            Some(reason) => Err(EngineError::Subscription(SubscriptionError::Unavailable {
                name: name.to_owned(),
                reason,
            })),
            None => Ok(()),
        }
    }

    /// Why the state can no longer be stored, once it cannot.
    pub(super) fn failed(&self) -> Option<String> {
        self.durable.borrow().failed.clone()
    }

    /// Nothing more will be stored: every waiter (and every later call) gets `reason`, unless
    /// an earlier failure already gave one.
    pub(super) fn fail(&self, reason: String) {
        self.durable.send_modify(|durable| {
            durable.failed.get_or_insert(reason);
        });
    }

    fn announce(&self, version: u64) {
        self.durable
            .send_modify(|durable| durable.version = version);
    }
}

/// Runs until the subscription stops, or until a write fails: then the subscription refuses
/// service (a failed fsync is never retried; the state on disk is unknown until a restart
/// recovers it).
pub(super) async fn run(shared: Arc<Shared>) {
    let mut stopping = shared.signals.stopping();
    let mut written = 0;
    loop {
        // Another part of the subscription's storage failed (its state's committer): nothing
        // more is stored, so that no attempt made meanwhile counts after the restart.
        if shared.durability.failed().is_some() {
            return;
        }
        if let Err(error) = write_once(&shared, &mut written).await {
            let reason = format!(
                "its progress could not be stored ({error}); fix the disk and restart keel"
            );
            tracing::error!(subscription = %shared.name, %error, "subscription refuses service");
            shared.durability.fail(reason);
            return;
        }
        tokio::select! {
            _ = shared.signals.dirtied() => {}
            _ = stopping.wait_for(|stopping| *stopping) => return,
        }
        let durability = &shared.durability;
        if durability.waiters.load(SeqCst) == 0 {
            tokio::select! {
                _ = tokio::time::sleep(CHECKPOINT_GATHER) => {}
                _ = durability.waiter_arrived.notified() => {}
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
        // The generation now is the one the letters were decided in: a rebuild's seek waits
        // for a round past them before the generation moves.
        let generation = shared.generation();
        let entries: Vec<DeadLetterEntry> = letters
            .iter()
            .map(|letter| {
                let history = letter.history.clone();
                DeadLetterEntry::new(letter.origin, &letter.json, history, generation)
            })
            .collect();
        blocking(shared, move |shared| {
            shared.with_dlq(|dlq| dlq.add(entries))
        })
        .await?;
        shared.core().delivery.finish_dead_letters(&letters);
        shared.count_attempts("dead_lettered", letters.len() as u64);
        shared.signals.wake_readers();
        shared.signals.changed(true);
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
            Checkpoint::new(
                core.delivery.checkpoint(),
                core.paused.clone(),
                core.auto_paused,
            )
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
        shared.durability.announce(version);
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
