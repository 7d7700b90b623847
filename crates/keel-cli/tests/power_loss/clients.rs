//! The clients that load keel until it is killed: publishers and a pull consumer. Each runs
//! as a task that ends at its first request keel does not answer, and records only what keel
//! answered: what a test may hold keel to after the crash.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

use crate::api::{Api, Position, Published, Settle};

/// An acknowledged publish: where keel stored it, and when it answered.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ack {
    pub(crate) position: Position,
    pub(crate) at: Instant,
}

/// Event id → every acknowledged publish, shared by the publishers of a test.
pub(crate) type Acked = Arc<Mutex<HashMap<String, Ack>>>;

/// The positions of every acknowledged publish, by event id.
pub(crate) fn positions(acked: &Acked) -> HashMap<String, Position> {
    let acked = acked.lock().unwrap();
    acked
        .iter()
        .map(|(id, ack)| (id.clone(), ack.position))
        .collect()
}

/// Publishes the batches `batch` makes (its argument counts the batches) to `topic` until
/// keel does not answer; records every acknowledged publish in `acked`.
pub(crate) async fn publish_until_dead(
    api: Api,
    topic: String,
    acked: Acked,
    batch: impl Fn(u64) -> Vec<Value>,
) {
    for number in 0.. {
        let Some(published) = api.try_publish(&topic, batch(number)).await else {
            return;
        };
        record(&acked, published);
    }
}

/// Records acknowledged publishes, answered now.
pub(crate) fn record(acked: &Acked, published: Vec<Published>) {
    let at = Instant::now();
    let mut acked = acked.lock().unwrap();
    for one in published {
        let ack = Ack {
            position: one.position,
            at,
        };
        acked.insert(one.id, ack);
    }
}

/// What a pull consumer saw, across crashes.
#[derive(Debug, Default)]
pub(crate) struct Pulled {
    /// Event ids whose ack was answered and not named stale: durably done.
    pub(crate) acked: HashSet<String>,
    /// Event ids whose ack was sent, answered or not (keel may die before it answers: then
    /// the ack may or may not have taken effect, and a redelivery is allowed).
    pub(crate) ack_sent: HashSet<String>,
    /// Acked events delivered again: each one a violation.
    pub(crate) redelivered_after_ack: Vec<String>,
}

/// When a pull consumer stops.
#[derive(Debug)]
pub(crate) enum Until {
    /// At its first request keel does not answer.
    Dead,
    /// Once an ack was sent for each of these event ids; keel must answer until then.
    AckSent(HashSet<String>),
}

/// Pulls from `subscription` and acks everything pulled, until `until`; records in `pulled`.
pub(crate) async fn consume(
    api: Api,
    subscription: String,
    pulled: Arc<Mutex<Pulled>>,
    until: Until,
) {
    let draining = matches!(until, Until::AckSent(_));
    while !done(&pulled, &until) {
        let Some(messages) = api.try_pull(&subscription, 200, "200ms").await else {
            assert!(!draining, "keel stopped answering during the drain");
            return;
        };
        {
            let mut pulled = pulled.lock().unwrap();
            for message in &messages {
                if pulled.acked.contains(&message.event_id) {
                    pulled.redelivered_after_ack.push(message.event_id.clone());
                }
                pulled.ack_sent.insert(message.event_id.clone());
            }
        }
        if messages.is_empty() {
            continue;
        }
        let Some(stale) = api.try_settle(&subscription, Settle::Ack, &messages).await else {
            assert!(!draining, "keel stopped answering during the drain");
            return;
        };
        let mut pulled = pulled.lock().unwrap();
        let fresh = messages.into_iter().filter(|m| !stale.contains(&m.ack_id));
        pulled.acked.extend(fresh.map(|m| m.event_id));
    }
}

fn done(pulled: &Mutex<Pulled>, until: &Until) -> bool {
    let Until::AckSent(wanted) = until else {
        return false;
    };
    let pulled = pulled.lock().unwrap();
    wanted.iter().all(|id| pulled.ack_sent.contains(id))
}
