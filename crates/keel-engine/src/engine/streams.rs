//! Event-sourced streams: reading one key's events with their versions, and appending to a key
//! only if it is at an expected version (optimistic concurrency). The index behind both is
//! `key_index.rs`; `docs/event-sourcing.md` is the user's view.

use std::sync::Arc;

use super::Engine;
use crate::error::{EngineError, StreamError};
use crate::event::Event;
use crate::event::http::HttpRequest;
use crate::key_index::KeyStream;
use crate::limits::KEY_STREAM_RECORDS_MAX;
use crate::routing::partition_for_key;
use crate::topic::{PublishResult, Topic};

/// What a conditional append answers.
#[derive(Debug, Clone)]
pub struct Appended {
    /// One result per event, in input order.
    pub results: Vec<PublishResult>,
    /// The key's version after the append; `None` when every event was a duplicate (a retry
    /// of an append that succeeded: the key may have moved on since).
    pub version: Option<u64>,
}

impl Engine {
    /// Up to `records_max` events of `key` in `topic` from `from_version` (1-based), with the
    /// key's version. Counts every event appended before the call; an unknown key has version
    /// 0 and no events.
    pub async fn key_stream(
        &self,
        topic: &str,
        key: &str,
        from_version: u64,
        records_max: usize,
    ) -> Result<KeyStream, EngineError> {
        self.find_topic(topic).await;
        let topic = self.topic(topic)?;
        if from_version == 0 {
            return Err(invalid_read(
                "from_version must be at least 1: a key's first event has version 1",
            ));
        }
        if !(1..=KEY_STREAM_RECORDS_MAX).contains(&records_max) {
            return Err(invalid_read(&format!(
                "max must be between 1 and {KEY_STREAM_RECORDS_MAX}"
            )));
        }
        let partition = partition_for_key(key, topic.config.partitions);
        let index = topic.key_index(partition)?.clone();
        let log = topic.partition(partition)?.record_log()?;
        index.caught_up(partition, &*log).await?;
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || {
            index.read_stream(&*log, &key, from_version, records_max)
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)?
    }

    /// Appends the events of a CloudEvents HTTP request (any content mode) only if their key is
    /// at `expected_version` (0: a key without events). See [`Engine::append_expecting`].
    pub async fn append_http_expecting(
        &self,
        topic: &str,
        request: &HttpRequest<'_>,
        expected_version: u64,
    ) -> Result<Appended, EngineError> {
        self.find_topic(topic).await;
        let topic = self.writable_topic(topic)?;
        let events = crate::event::http::parse_request(request)?;
        self.append_to_expecting(&topic, events, expected_version)
            .await
    }

    /// Appends validated events, which must all carry one `partitionkey`, only if the key's
    /// version is `expected_version`; else [`StreamError::VersionMismatch`] with the version
    /// now, and nothing appended. A retry of an append that succeeded (every event a duplicate
    /// within the dedupe window) answers the original positions, whatever the version now.
    ///
    /// Conditional appends to one partition take turns from the version check to the end of
    /// the append, so exactly one of several racing for a version wins it.
    pub async fn append_expecting(
        &self,
        topic: &str,
        events: Vec<Event>,
        expected_version: u64,
    ) -> Result<Appended, EngineError> {
        self.find_topic(topic).await;
        let topic = self.writable_topic(topic)?;
        self.append_to_expecting(&topic, events, expected_version)
            .await
    }

    async fn append_to_expecting(
        &self,
        topic: &Arc<Topic>,
        events: Vec<Event>,
        expected_version: u64,
    ) -> Result<Appended, EngineError> {
        let key = common_key(&events)?.to_owned();
        self.check_limits(&events)?;
        let pressure = self.inner.pressure.clone();
        let partition = partition_for_key(&key, topic.config.partitions);
        let index = topic.key_index(partition)?.clone();
        let log = topic.partition(partition)?.record_log()?;
        let turn = index.append_turn(partition).lock_owned().await;
        let topic = topic.clone();
        // In a cluster, other nodes append to the partition too: the append is made
        // conditional on the partition as the version check saw it, and checked again when
        // another event got in between. (On one node the turn serialises conditional appends,
        // and plain publishes of the key are the caller's to avoid.)
        let exact = self.inner.placement.is_some();
        // Spawned with the turn: a client hanging up cannot end the turn while its append is
        // still on its way to the log, which would let the next check miss it.
        tokio::spawn(async move {
            let _turn = turn;
            let mut attempts = 0;
            loop {
                attempts += 1;
                let admission = pressure.admit(&events)?;
                let attempt = append_if_at_version(
                    &topic,
                    &index,
                    &*log,
                    admission,
                    (partition, &key),
                    &events,
                    expected_version,
                    exact,
                );
                match attempt.await {
                    Err(EngineError::Stream(StreamError::Contended { .. }))
                        if attempts < CONTENDED_ATTEMPTS_MAX => {}
                    other => return other,
                }
            }
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)?
    }
}

/// Times a conditional append is tried again after other events got into its partition
/// between its version check and its append (cluster mode only).
const CONTENDED_ATTEMPTS_MAX: u32 = 20;

/// One try of a conditional append of `events` (of `key`, in `partition`), under the
/// partition's turn; with `exact`, the append is made conditional on the partition's next
/// offset as the version check saw it.
#[allow(clippy::too_many_arguments)]
async fn append_if_at_version(
    topic: &Arc<Topic>,
    index: &Arc<crate::key_index::KeyIndex>,
    log: &dyn crate::storage::RecordLog,
    admission: crate::pressure::Admission,
    (partition, key): (u32, &str),
    events: &[Event],
    expected_version: u64,
    exact: bool,
) -> Result<Appended, EngineError> {
    if topic.all_stored(events) {
        let results = topic.publish(events.to_vec(), admission).await?;
        return Ok(Appended {
            results,
            version: None,
        });
    }
    index.caught_up(partition, log).await?;
    let expected_next_offset = exact.then(|| index.indexed_up_to(partition));
    let (version_index, version_key) = (index.clone(), key.to_owned());
    let current = tokio::task::spawn_blocking(move || version_index.version(&version_key))
        .await
        .map_err(|_| EngineError::ShuttingDown)??;
    if current != expected_version {
        return Err(EngineError::Stream(StreamError::VersionMismatch {
            topic: topic.name.clone(),
            key: key.to_owned(),
            expected: expected_version,
            current,
        }));
    }
    let results = topic
        .publish_expecting(events.to_vec(), admission, expected_next_offset)
        .await?;
    let appended = results.iter().filter(|result| !result.duplicate).count() as u64;
    Ok(Appended {
        results,
        version: Some(current + appended),
    })
}

/// The one key every event carries.
fn common_key(events: &[Event]) -> Result<&str, EngineError> {
    let invalid = |detail: String| EngineError::Stream(StreamError::InvalidAppend { detail });
    let first = events
        .first()
        .ok_or_else(|| invalid("a conditional append needs at least one event".to_owned()))?;
    let batch = events.len() > 1;
    let at = |index: usize| {
        if batch {
            format!("the event at index {index}")
        } else {
            "the event".to_owned()
        }
    };
    let Some(key) = first.key() else {
        return Err(invalid(format!(
            "{} has no partitionkey: expected_version applies to one key's stream, so every event of a conditional append must carry the same partitionkey",
            at(0)
        )));
    };
    for (index, event) in events.iter().enumerate().skip(1) {
        match event.key() {
            Some(other) if other == key => {}
            Some(other) => {
                return Err(invalid(format!(
                    "{} has partitionkey {other:?} but the first has {key:?}: every event of a conditional append must carry the same partitionkey",
                    at(index)
                )));
            }
            None => {
                return Err(invalid(format!(
                    "{} has no partitionkey but the first has {key:?}: every event of a conditional append must carry the same partitionkey",
                    at(index)
                )));
            }
        }
    }
    Ok(key)
}

fn invalid_read(detail: &str) -> EngineError {
    EngineError::Stream(StreamError::InvalidRead {
        detail: detail.to_owned(),
    })
}
