//! Fencing a subscription's logs for a new lease holder.
//!
//! A subscription log's stream takes messages on one subject only, which names the epoch of
//! the lease whose holder may write (`keel.{cluster}.s.{id}.{log}.{epoch}`). A node that
//! takes the lease moves the stream to its own epoch's subject before it reads the log; from
//! then on the server refuses every write of an earlier holder (no stream takes its subject),
//! whatever that holder believes: paused, partitioned or slow, it cannot overwrite the new
//! holder's progress. Epochs are lease revisions, so they only grow, and a fence never moves
//! a stream back to an older epoch.
//!
//! The server stores a stream's configuration through the stream's own Raft group, so a
//! write is ordered either before the move (and the new holder reads it when it opens the
//! log) or after it (and refused).

use async_nats::jetstream::stream;
use keel_engine::storage::StorageError;

use crate::error::ClusterError;
use crate::nats::Nats;

/// Moves `stream` to `subject` (of epoch `epoch`, its last token), unless it is there
/// already; refuses when the stream has moved to a later epoch: this node's lease is gone.
pub(crate) fn fence(nats: &Nats, stream_name: &str, subject: &str) -> Result<(), StorageError> {
    let (jetstream, name, subject) = (
        nats.jetstream.clone(),
        stream_name.to_owned(),
        subject.to_owned(),
    );
    nats.block(async move {
        let mut stream = jetstream
            .get_stream(&name)
            .await
            .map_err(|error| ClusterError::jetstream(format!("find stream {name}"), error))?;
        let mut config: stream::Config = stream
            .info()
            .await
            .map_err(|error| ClusterError::jetstream(format!("describe stream {name}"), error))?
            .config
            .clone();
        let current = config.subjects.first().cloned().unwrap_or_default();
        if current == subject {
            return Ok(());
        }
        if epoch_of(&current) > epoch_of(&subject) {
            return Err(ClusterError::JetStream {
                op: format!("fence {name}"),
                detail: format!(
                    "the log is fenced for a later lease ({current}): another node holds it now"
                ),
            });
        }
        config.subjects = vec![subject];
        jetstream
            .update_stream(config)
            .await
            .map_err(|error| ClusterError::jetstream(format!("fence {name}"), error))?;
        Ok(())
    })
    .map_err(StorageError::from)
}

/// The epoch a subscription log's subject names (its last token).
fn epoch_of(subject: &str) -> u64 {
    subject
        .rsplit('.')
        .next()
        .and_then(|token| token.parse().ok())
        .unwrap_or(0)
}
