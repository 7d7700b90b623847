//! The wake-up protocol between a subscription's tasks.
//!
//! The tasks share one delivery state behind a lock (see `subscription.rs`); none sends
//! another data. A task that finds nothing to do sleeps on its signals, and a task that
//! changes something another may act on bumps that one's signal. A signal carries no data:
//! the woken task reads the state again under the lock, so a wake-up that finds nothing is
//! harmless, and a bump while nobody sleeps is kept (a watch keeps its newest value, a
//! `Notify` one permit), so none is lost between a look at the state and the sleep.
//!
//! | signal | bumped by | wakes | meaning |
//! |---|---|---|---|
//! | `ready` | readers (events offered), settling, the timer (a retry came due, a deadline passed), the store (dead letters written), resume | the push dispatcher, pull long polls, (next) in-process handlers | events may be taken |
//! | `room` | settling (an event done), the store (dead letters written), dead-letter redrive and purge | readers waiting at their lane's bound, the redrive reader | a lane may read again |
//! | `reset` | seek | readers | cursors moved: read from the new ones |
//! | `dirty` | every change to the state | the store | there is progress to write |
//! | `timers` | settling (a retry scheduled), pulls (an ack deadline set), readers (a restored event waits for its retry) | the timer | a nearer time may be due |
//! | `stopping` | stop | every task | end now |
//!
//! Durability is the store's answer, not a signal: a caller that must not answer before its
//! change is durable (a pull ack, pause, seek) waits on the store's `Durable` version (see
//! `store.rs`), and its arrival ends the store's gathering at once.

use tokio::sync::{Notify, watch};

/// The signals of one subscription. See the module documentation for who bumps and who
/// waits on each.
pub(super) struct Signals {
    ready: watch::Sender<u64>,
    room: watch::Sender<u64>,
    reset: watch::Sender<u64>,
    dirty: Notify,
    timers: Notify,
    stopping: watch::Sender<bool>,
}

impl Signals {
    pub(super) fn new() -> Self {
        Signals {
            ready: watch::Sender::new(0),
            room: watch::Sender::new(0),
            reset: watch::Sender::new(0),
            dirty: Notify::new(),
            timers: Notify::new(),
            stopping: watch::Sender::new(false),
        }
    }

    /// After a change to the state: wakes the store, and the takers when events may be ready.
    pub(super) fn changed(&self, ready: bool) {
        self.dirty.notify_one();
        if ready {
            self.ready.send_modify(|count| *count += 1);
        }
    }

    /// Pending room was freed, or redriven entries wait: readers may read again.
    pub(super) fn wake_readers(&self) {
        self.room.send_modify(|count| *count += 1);
    }

    /// Cursors moved under the readers.
    pub(super) fn reset_readers(&self) {
        self.reset.send_modify(|count| *count += 1);
    }

    /// A nearer timer may be due.
    pub(super) fn wake_timer(&self) {
        self.timers.notify_one();
    }

    /// Every task ends.
    pub(super) fn stop(&self) {
        self.stopping.send_replace(true);
    }

    pub(super) fn ready(&self) -> watch::Receiver<u64> {
        self.ready.subscribe()
    }

    pub(super) fn room(&self) -> watch::Receiver<u64> {
        self.room.subscribe()
    }

    pub(super) fn reset(&self) -> watch::Receiver<u64> {
        self.reset.subscribe()
    }

    pub(super) fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Resolves at the next change to the state (the store's wake-up).
    pub(super) async fn dirtied(&self) {
        self.dirty.notified().await;
    }

    /// Resolves when a nearer timer may be due (the timer's wake-up).
    pub(super) async fn timer_woken(&self) {
        self.timers.notified().await;
    }
}
