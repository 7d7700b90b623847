//! Pull delivery, a mode of the delivery interface (`delivery.rs`): consumers take ready
//! events with a long poll and settle them by ack id.
//!
//! An ack id names one delivery: the server's boot (so ids from before a restart are
//! stale), the event's lane and offset, and the delivery's lease (so an id from before a
//! redelivery is stale). It is 24 bytes in URL-safe base64: opaque to clients.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::sync::Arc;

use super::delivery::{Deliveries, Settlement, position};
use super::keyed_state::{Committed, Effects, Found, KeyState, commit_request, invalid_commit};
use super::state::{Outcome, Slot};
use crate::clock::now_ms;
use crate::error::{EngineError, SubscriptionError};
use crate::limits::{ACK_IDS_MAX, PULL_MESSAGES_MAX, READ_WAIT_MS_MAX};

/// A pulled event.
#[derive(Debug, Clone)]
pub struct PulledMessage {
    /// Settles this delivery.
    pub ack_id: String,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// The partition it was read from (for redriven events: where it was first read).
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// The event, as stored: JSON text (validated when published, checksummed in the log).
    pub event: Arc<str>,
    /// Stateful subscriptions: the state of the event's key (none for an event without a
    /// `partitionkey`, whose ack commits no state).
    pub state: Option<KeyState>,
}

/// How pulled events are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done.
    Ack,
    /// Failed: retried after `delay`, or after the retry policy's backoff when none.
    Nack {
        /// How long to wait before the redelivery.
        delay: Option<Duration>,
    },
    /// Dead-letter now.
    Reject,
}

pub use keel_api::pull::AckResult;
use keel_api::state::{CommitOutcome, CommitResult};

/// An ack with a commit, as the engine takes it: its effects checked (see [`Effects::checked`]).
pub(crate) struct AckCommit {
    pub(crate) ack_id: String,
    pub(crate) effects: Effects,
}

const ACK_ID_BYTES: usize = 24;

fn encode_ack_id(boot: u32, slot: Slot, lease: u64) -> String {
    let mut bytes = [0u8; ACK_ID_BYTES];
    bytes[0..4].copy_from_slice(&boot.to_be_bytes());
    bytes[4..8].copy_from_slice(&slot.lane.to_be_bytes());
    bytes[8..16].copy_from_slice(&slot.offset.to_be_bytes());
    bytes[16..24].copy_from_slice(&lease.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_ack_id(text: &str) -> Result<(u32, Slot, u64), EngineError> {
    let malformed = || {
        EngineError::Subscription(SubscriptionError::MalformedAckId {
            ack_id: text.chars().take(64).collect(),
        })
    };
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| malformed())?;
    let bytes: [u8; ACK_ID_BYTES] = bytes.try_into().map_err(|_| malformed())?;
    let word = |range: std::ops::Range<usize>| -> [u8; 8] {
        let mut out = [0u8; 8];
        out[8 - range.len()..].copy_from_slice(&bytes[range]);
        out
    };
    let boot = u64::from_be_bytes(word(0..4)) as u32;
    let lane = u64::from_be_bytes(word(4..8)) as u32;
    let slot = Slot {
        lane,
        offset: u64::from_be_bytes(word(8..16)),
    };
    Ok((boot, slot, u64::from_be_bytes(word(16..24))))
}

/// Takes up to `max` ready events, long-polling up to `wait` for the first.
pub(super) async fn pull(
    deliveries: &Deliveries,
    max: usize,
    wait: Duration,
) -> Result<Vec<PulledMessage>, EngineError> {
    let spec = deliveries.spec();
    if spec.is_push() {
        return Err(EngineError::Subscription(
            SubscriptionError::WrongDeliveryMode {
                detail: format!(
                    "subscription {:?} pushes to a sink; only pull subscriptions (created without a sink) can be pulled",
                    deliveries.name()
                ),
            },
        ));
    }
    deliveries.check_available()?;
    let max = max.clamp(1, PULL_MESSAGES_MAX);
    let wait = wait.min(Duration::from_millis(READ_WAIT_MS_MAX));
    let deadline = tokio::time::Instant::now() + wait;
    let ack_timeout_ms = i64::try_from(spec.ack_timeout.as_millis()).unwrap_or(i64::MAX);
    let mut ready = deliveries.ready();
    let mut closing = deliveries.closing();
    // A delete or an update stops the subscription: the poll ends, so that nothing holds it.
    let mut stopping = deliveries.stopping();
    loop {
        ready.borrow_and_update();
        if let Some(reason) = deliveries.lapsed() {
            return Err(EngineError::Subscription(SubscriptionError::Unavailable {
                name: deliveries.name().to_owned(),
                reason,
            }));
        }
        let now = now_ms();
        let (taken, _) = deliveries
            .take(max, Some(now.saturating_add(ack_timeout_ms)), now)
            .map_err(|reason| {
                EngineError::Subscription(SubscriptionError::Paused {
                    name: deliveries.name().to_owned(),
                    reason,
                })
            })?;
        if !taken.is_empty() {
            // A stateful subscription's keyless events carry no state: `null`, version 0.
            let stateful = deliveries.keyed().is_some();
            let found = match deliveries.keyed() {
                Some(_) => deliveries.find_state(&taken).await?,
                None => vec![Found::Deliver(None); taken.len()],
            };
            let messages: Vec<PulledMessage> = taken
                .into_iter()
                .zip(found)
                .filter_map(|(delivery, found)| match found {
                    // Applied before a crash or by an earlier delivery: settled as done.
                    Found::Applied => None,
                    Found::Deliver(state) => Some(PulledMessage {
                        ack_id: encode_ack_id(deliveries.boot(), delivery.slot, delivery.lease),
                        attempt: delivery.attempt,
                        partition: delivery.origin.0,
                        offset: delivery.origin.1,
                        event: delivery.json,
                        state: state.or_else(|| {
                            stateful.then_some(KeyState {
                                state: None,
                                version: 0,
                            })
                        }),
                    }),
                })
                .collect();
            if !messages.is_empty() {
                return Ok(messages);
            }
            continue;
        }
        tokio::select! {
            _ = ready.changed() => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            _ = closing.wait_for(|closing| *closing) => return Ok(Vec::new()),
            _ = stopping.wait_for(|stopping| *stopping) => return Ok(Vec::new()),
        }
    }
}

/// Fails unless `count` deliveries of the subscription may be settled by ack id now.
fn check_settleable(deliveries: &Deliveries, count: usize) -> Result<(), EngineError> {
    if deliveries.spec().is_push() {
        return Err(EngineError::Subscription(
            SubscriptionError::WrongDeliveryMode {
                detail: format!(
                    "subscription {:?} pushes to a sink, which acknowledges by its answer; ack, nack and reject apply to pull subscriptions",
                    deliveries.name()
                ),
            },
        ));
    }
    if count > ACK_IDS_MAX {
        return Err(EngineError::Subscription(SubscriptionError::Invalid {
            detail: format!("at most {ACK_IDS_MAX} ack ids per call"),
        }));
    }
    deliveries.check_available()
}

/// Settles pulled events; returns once the result is durable. Malformed ids fail the whole
/// call before anything is settled.
pub(super) async fn settle(
    deliveries: &Deliveries,
    ack_ids: &[String],
    action: Settle,
) -> Result<AckResult, EngineError> {
    check_settleable(deliveries, ack_ids.len())?;
    let decoded = ack_ids
        .iter()
        .map(|id| decode_ack_id(id))
        .collect::<Result<Vec<_>, _>>()?;
    let (label, outcome) = match action {
        Settle::Ack => ("acked", Outcome::Ack),
        Settle::Nack { delay: Some(delay) } => ("nacked", Outcome::Delay(delay)),
        Settle::Nack { delay: None } => (
            "nacked",
            Outcome::Fail {
                status: None,
                error: "nacked by the consumer".to_owned(),
                retry_after: None,
            },
        ),
        Settle::Reject => (
            "rejected",
            Outcome::Reject {
                status: None,
                error: "rejected by the consumer".to_owned(),
            },
        ),
    };
    // Ids from before a restart name deliveries that no longer exist: stale without a look.
    let boot = deliveries.boot();
    let (mut positions, mut settlements) = (Vec::new(), Vec::new());
    for (index, (id_boot, slot, lease)) in decoded.into_iter().enumerate() {
        if id_boot == boot {
            positions.push(index);
            let outcome = outcome.clone();
            settlements.push(Settlement {
                slot,
                lease,
                outcome,
            });
        }
    }
    let (results, version) = deliveries.settle(settlements, label);
    let mut settled = vec![false; ack_ids.len()];
    for (index, result) in positions.into_iter().zip(results) {
        settled[index] = result.is_ok();
    }
    let answer = AckResult {
        settled: settled.iter().filter(|settled| **settled).count(),
        stale: (ack_ids.iter().zip(&settled))
            .filter(|(_, settled)| !**settled)
            .map(|(id, _)| id.clone())
            .collect(),
        results: Vec::new(),
    };
    deliveries.wait_durable(version).await?;
    Ok(answer)
}

/// Acks with commits (a stateful subscription's acks, and acks carrying state or events):
/// commits each one's state, events and ack at once, durably; then settles the deliveries.
/// Nothing is committed when any ack is malformed, invalid, or stale while carrying state or
/// events.
pub(super) async fn commit(
    deliveries: &Deliveries,
    acks: Vec<AckCommit>,
) -> Result<AckResult, EngineError> {
    check_settleable(deliveries, acks.len())?;
    let Some(keyed) = deliveries.keyed() else {
        return Err(invalid_commit(format!(
            "subscription {:?} is not stateful, so its acks carry no state or events; create a subscription with \"stateful\": true",
            deliveries.name()
        )));
    };
    let decoded = acks
        .iter()
        .map(|ack| decode_ack_id(&ack.ack_id))
        .collect::<Result<Vec<_>, _>>()?;
    let boot = deliveries.boot();
    // Read before the deliveries are found outstanding: a rebuild after this makes the
    // commits stale.
    let generation = keyed.generation();
    let named: Vec<(Slot, u64)> = decoded
        .iter()
        .map(|(_, slot, lease)| (*slot, *lease))
        .collect();
    let mut outstanding = deliveries.outstanding(&named);
    for ((id_boot, _, _), found) in decoded.iter().zip(outstanding.iter_mut()) {
        if *id_boot != boot {
            *found = None;
        }
    }
    let stale_with_effects: Vec<String> = acks
        .iter()
        .zip(&outstanding)
        .filter(|(ack, found)| found.is_none() && ack.effects.any())
        .map(|(ack, _)| ack.ack_id.clone())
        .collect();
    if !stale_with_effects.is_empty() {
        return Err(EngineError::Subscription(SubscriptionError::StaleAcks {
            ack_ids: stale_with_effects,
        }));
    }
    // Every commit is built (and checked) before any is sent.
    let mut requests = Vec::new();
    let mut keyed_acks = Vec::new();
    for (index, (ack, found)) in acks.iter().zip(&outstanding).enumerate() {
        let Some(in_flight) = found else {
            continue;
        };
        let position = position(decoded[index].1, in_flight.origin);
        let request = commit_request(
            keyed.emitter(),
            &in_flight.json,
            (position, generation, in_flight.state_version),
            index,
            &ack.effects,
        )?;
        if let Some(request) = request {
            requests.push(request);
            keyed_acks.push(index);
        }
    }
    let committed = keyed.commit(requests).await?;
    let mut results: Vec<Option<Committed>> = vec![None; acks.len()];
    for (index, outcome) in keyed_acks.into_iter().zip(committed) {
        results[index] = Some(outcome);
    }
    // Applied, found applied before, or keyless: each delivery is done. A conflict is
    // delivered again, with the key's new state.
    let settlements: Vec<Settlement> = named
        .iter()
        .zip(&outstanding)
        .zip(&results)
        .filter(|((_, found), _)| found.is_some())
        .map(|(((slot, lease), _), result)| Settlement {
            slot: *slot,
            lease: *lease,
            outcome: match result {
                Some(Committed::Conflict) => Outcome::Fail {
                    status: None,
                    error: keyed.conflict().to_string(),
                    retry_after: Some(std::time::Duration::ZERO),
                },
                _ => Outcome::Ack,
            },
        })
        .collect();
    let keyless = outstanding.len()
        - results.iter().filter(|r| r.is_some()).count()
        - outstanding.iter().filter(|found| found.is_none()).count();
    let (_, version) = deliveries.settle(settlements, "acked");
    if keyless > 0 {
        // No commit holds a keyless event's ack: its checkpoint does.
        deliveries.wait_durable(version).await?;
    }
    let mut answer = AckResult {
        settled: 0,
        stale: Vec::new(),
        results: Vec::with_capacity(acks.len()),
    };
    for ((ack, found), result) in acks.into_iter().zip(&outstanding).zip(results) {
        let (outcome, state_version) = match (found, result) {
            (Some(_), Some(Committed::Applied(version))) => (CommitOutcome::Applied, Some(version)),
            (Some(_), None) => (CommitOutcome::Applied, None),
            _ => (CommitOutcome::Stale, None),
        };
        if outcome == CommitOutcome::Applied {
            answer.settled += 1;
        } else {
            answer.stale.push(ack.ack_id.clone());
        }
        answer.results.push(CommitResult {
            ack_id: ack.ack_id,
            outcome,
            state_version,
        });
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: ack ids round-trip, and anything else is malformed (never a wrong event); an id
    // never starts with `-` or `_`, which a command line would take for an option.
    #[test]
    fn ack_ids_round_trip_and_reject_garbage() {
        let slot = Slot {
            lane: 7,
            offset: 1 << 40,
        };
        let id = encode_ack_id(0xdead_beef, slot, 42);
        assert_eq!(id.len(), 32);
        assert_eq!(
            decode_ack_id(&id).expect("decodes"),
            (0xdead_beef, slot, 42)
        );
        let lowest = encode_ack_id(0, slot, 0);
        let highest = encode_ack_id(crate::subscription::BOOT_LIMIT - 1, slot, u64::MAX);
        for id in [lowest, highest] {
            assert!(id.starts_with(|c: char| c.is_ascii_alphabetic()), "{id}");
        }
        for bad in ["", "abc", &id[..31], &format!("{id}A"), "!!!!"] {
            assert!(matches!(
                decode_ack_id(bad),
                Err(EngineError::Subscription(
                    SubscriptionError::MalformedAckId { .. }
                ))
            ));
        }
    }
}
