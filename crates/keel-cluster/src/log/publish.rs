//! Publishing to a log's stream: one message, or an atomic batch (ADR-50), and what a
//! refusal means for keel.

use async_nats::HeaderMap;
use keel_engine::storage::StorageError;

use super::Writers;
use crate::error::ClusterError;
use crate::nats::Nats;

/// Why a publish failed.
pub(crate) enum PublishFailure {
    /// The stream's last sequence was not the one expected: another writer got there first.
    Conflict(String),
    /// No stream takes the subject: the log was fenced for a newer lease holder (or deleted).
    NoStream,
    /// An atomic batch was refused because one of its message ids was stored within the
    /// stream's duplicate window: nothing of the batch was stored.
    Duplicate,
    /// JetStream did not answer in time, or said it cannot (no quorum, no leader, no
    /// connection): the records may or may not be stored.
    Unavailable(String),
    /// Anything else.
    Other(String),
}

impl PublishFailure {
    /// The storage error of a failed append. Nothing JetStream answers can leave a log
    /// half-written on keel's side, so no failure poisons a log: a lease holder's log refuses
    /// a conflict or a fence for good (`Backend`: the subscription stops here and the cluster
    /// hosts it again, wherever its lease is), and everything else (no quorum, no leader, no
    /// connection, an answer that never came) is `Unavailable`: the append may or may not be
    /// stored, and the log takes appends again.
    pub(super) fn into_storage_error(self, stream: &str, writers: Writers) -> StorageError {
        let op = format!("append to {stream}");
        let fenced = |detail: String| {
            StorageError::Backend(Box::new(ClusterError::JetStream {
                op: op.clone(),
                detail,
            }))
        };
        match (self, writers) {
            (PublishFailure::Conflict(detail), Writers::LeaseHolder) => fenced(format!(
                "another node wrote to this log ({detail}): this node no longer holds its lease"
            )),
            (PublishFailure::NoStream, Writers::LeaseHolder) => fenced(
                "the log no longer takes this node's writes: another node holds its lease now"
                    .into(),
            ),
            (failure, _) => {
                let detail = match failure {
                    PublishFailure::Conflict(detail)
                    | PublishFailure::Unavailable(detail)
                    | PublishFailure::Other(detail) => detail,
                    PublishFailure::NoStream => {
                        "no stream takes this topic's records (deleted by another node?)".into()
                    }
                    PublishFailure::Duplicate => "a batch held a message id stored before".into(),
                };
                StorageError::Unavailable {
                    source: Box::new(ClusterError::JetStream { op, detail }),
                }
            }
        }
    }
}

/// Publishes `messages` on `subject`: one alone, or several as one atomic batch. Returns
/// the last message's stream sequence, and (for one alone) whether it was a duplicate of a
/// message stored earlier under its id (the sequence is then that message's).
pub(crate) async fn publish_batch(
    nats: Nats,
    subject: String,
    mut messages: Vec<(HeaderMap, Vec<u8>)>,
) -> Result<(u64, bool), PublishFailure> {
    if messages.len() > 1 {
        let batch_id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let count = messages.len();
        for (index, (headers, _)) in messages.iter_mut().enumerate() {
            headers.insert(async_nats::header::NATS_BATCH_ID, batch_id.as_str());
            headers.insert(
                async_nats::header::NATS_BATCH_SEQUENCE,
                (index + 1).to_string().as_str(),
            );
            if index + 1 == count {
                headers.insert(async_nats::header::NATS_BATCH_COMMIT, "1");
            }
        }
        let last = messages.pop().expect("a batch has a last message");
        for (headers, payload) in messages {
            // The batch's messages before the commit need no answer; the commit's answer
            // covers the batch (a gap makes the server refuse it whole).
            nats.client
                .publish_with_headers(subject.clone(), headers, payload.into())
                .await
                .map_err(|error| PublishFailure::Unavailable(error.to_string()))?;
        }
        return publish_one(&nats, subject, last).await;
    }
    let last = messages.pop().expect("a publish has a message");
    publish_one(&nats, subject, last).await
}

async fn publish_one(
    nats: &Nats,
    subject: String,
    (headers, payload): (HeaderMap, Vec<u8>),
) -> Result<(u64, bool), PublishFailure> {
    use async_nats::jetstream::context::PublishErrorKind;
    let acknowledged = nats
        .jetstream
        .publish_with_headers(subject, headers, payload.into())
        .await;
    let acknowledged = match acknowledged {
        Ok(future) => future.await,
        Err(error) => Err(error),
    };
    match acknowledged {
        Ok(ack) => Ok((ack.sequence, ack.duplicate)),
        Err(error) => Err(match error.kind() {
            PublishErrorKind::WrongLastSequence => PublishFailure::Conflict(error.to_string()),
            PublishErrorKind::StreamNotFound => PublishFailure::NoStream,
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                PublishFailure::Unavailable(error.to_string())
            }
            _ if error.to_string().contains("duplicate message id") => PublishFailure::Duplicate,
            _ => PublishFailure::Other(error.to_string()),
        }),
    }
}

/// The stream's last sequence as JetStream states it in a refusal ("wrong last sequence: N").
pub(super) fn last_sequence_in(detail: &str) -> Option<u64> {
    let (_, after) = detail.split_once("wrong last sequence: ")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
