//! The readers of a subscription: one per partition reads the topic's log from the lane's
//! cursor and offers events (filtered, with their ordering key) to the delivery state; one
//! hands events redriven from the dead-letter queue to the redrive lane.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use crate::storage::Record;
use serde::Deserialize;

use super::Shared;
use super::state::{Offered, REDRIVE_LANE};
use crate::error::{EngineError, TopicError};
use crate::limits::{READ_BYTES_MAX, READ_RECORDS_MAX};

/// How long one read long-polls for new events before it looks again.
const READ_WAIT: Duration = Duration::from_secs(5);
/// How long a reader waits after its partition failed before it tries again.
const FAILED_READ_RETRY: Duration = Duration::from_secs(1);

/// Reads one partition for the subscription until it stops.
pub(super) async fn read_partition(shared: Arc<Shared>, lane: u32) {
    let mut room = shared.signals.room();
    let mut reset = shared.signals.reset();
    let mut stopping = shared.signals.stopping();
    let Ok(partition) = shared.topic.partition(lane) else {
        return;
    };
    loop {
        room.borrow_and_update();
        reset.borrow_and_update();
        let (from, (space, bytes)) = {
            let core = shared.core();
            (core.delivery.cursor(lane), core.delivery.room(lane))
        };
        if space == 0 {
            tokio::select! {
                _ = room.changed() => continue,
                _ = reset.changed() => continue,
                _ = stopping.wait_for(|stopping| *stopping) => return,
            }
        }
        let read = partition.read(
            Some(from),
            space.min(READ_RECORDS_MAX),
            bytes.min(READ_BYTES_MAX),
            READ_WAIT,
            shared.closing.clone(),
        );
        let result = tokio::select! {
            result = read => result,
            // A seek moved the cursor: read from the new one.
            _ = reset.changed() => continue,
            _ = stopping.wait_for(|stopping| *stopping) => return,
        };
        match result {
            Ok((records, _)) if records.is_empty() => {}
            Ok((records, _)) => {
                let offered = offer_records(&shared, records);
                let ready = shared.core().delivery.offer(lane, from, offered);
                shared.signals.changed(ready);
                // A restored event may come back waiting for its retry time: the timer must
                // look at its schedule again.
                shared.signals.wake_timer();
            }
            Err(EngineError::Topic(TopicError::OffsetBeforeStart {
                start_offset: start,
                ..
            })) => {
                tracing::warn!(subscription = %shared.name, partition = lane, from, start, "retention deleted events before they were delivered");
                shared.core().delivery.skip_to(lane, start);
                shared.signals.changed(false);
            }
            Err(EngineError::ShuttingDown) => return,
            Err(error) => {
                tracing::warn!(subscription = %shared.name, partition = lane, %error, "cannot read the partition; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(FAILED_READ_RETRY) => {}
                    _ = stopping.wait_for(|stopping| *stopping) => return,
                }
            }
        }
    }
}

/// The attributes a reader needs from an event without filters.
#[derive(Deserialize)]
struct KeyOnly<'a> {
    #[serde(borrow, default)]
    partitionkey: Option<Cow<'a, str>>,
}

fn offer_records(shared: &Shared, records: Vec<Record>) -> Vec<Offered> {
    let filters = &shared.spec.filters;
    records
        .into_iter()
        .map(|record| {
            let (matches, key) = if filters.is_empty() {
                let key = serde_json::from_slice::<KeyOnly>(&record.payload)
                    .ok()
                    .and_then(|attributes| attributes.partitionkey.map(|key| key_hash(&key)));
                (true, key)
            } else {
                match serde_json::from_slice::<serde_json::Value>(&record.payload) {
                    Ok(event) => (
                        crate::filter::matches_all(filters, &event),
                        event
                            .get("partitionkey")
                            .and_then(serde_json::Value::as_str)
                            .map(key_hash),
                    ),
                    Err(_) => (true, None),
                }
            };
            // Stored events are UTF-8 JSON (checked on publish, checksummed in the log): the
            // payload becomes the text without a copy, and the Arc takes the one copy.
            let json = String::from_utf8(record.payload)
                .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned());
            Offered {
                offset: record.offset,
                published_ms: record.timestamp_ms,
                json: Arc::from(json),
                key,
                matches,
                origin: None,
            }
        })
        .collect()
}

/// A key's hash for per-key ordering (in memory only; a collision only orders two keys
/// together).
fn key_hash(key: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// Hands redriven dead-letter entries to the redrive lane as it has room.
pub(super) async fn read_redriven(shared: Arc<Shared>) {
    let mut room = shared.signals.room();
    let mut stopping = shared.signals.stopping();
    loop {
        room.borrow_and_update();
        let (from, space) = {
            let core = shared.core();
            (
                core.delivery.cursor(REDRIVE_LANE),
                core.delivery.room(REDRIVE_LANE).0,
            )
        };
        let waiting = shared
            .dlq_redriven
            .load(std::sync::atomic::Ordering::Relaxed);
        if space > 0 && waiting {
            let taker = shared.clone();
            let entries = tokio::task::spawn_blocking(move || {
                let generation = taker.generation();
                taker.with_dlq(|dlq| dlq.take_redriven(space, generation))
            })
            .await;
            match entries {
                Ok(Ok(entries)) => {
                    let offered = (from..)
                        .zip(entries)
                        .map(|(offset, entry)| Offered {
                            offset,
                            published_ms: entry.dead_lettered_ms,
                            json: Arc::from(entry.event.get()),
                            key: None,
                            matches: true,
                            origin: Some((entry.partition, entry.offset)),
                        })
                        .collect();
                    let ready = shared.core().delivery.offer(REDRIVE_LANE, from, offered);
                    shared.signals.changed(ready);
                    continue;
                }
                Ok(Err(error)) => {
                    tracing::error!(subscription = %shared.name, %error, "cannot read redriven dead letters");
                }
                Err(_) => return,
            }
        }
        tokio::select! {
            _ = room.changed() => {}
            _ = stopping.wait_for(|stopping| *stopping) => return,
        }
    }
}
