//! Following a shared log: an ordered consumer per partition per node feeds the tail kept in
//! memory and moves the end readers wait on.

use async_nats::jetstream;
use futures_util::StreamExt;
use keel_engine::storage::Record;

use super::{FOLLOWER_IDLE_CHECK, FOLLOWER_RESTART_DELAY, Shared, TIME_HEADER};
use crate::error::ClusterError;

/// Follows a shared log from `first_sequence`: every record any node appends goes into the
/// tail and moves the end. Ends when the log is dropped.
pub(super) async fn follow(
    jetstream: jetstream::Context,
    stream: String,
    mut first_sequence: u64,
    shared: std::sync::Weak<Shared>,
) {
    loop {
        let followed = follow_once(&jetstream, &stream, &mut first_sequence, &shared).await;
        if shared.strong_count() == 0 {
            return;
        }
        if let Err(error) = followed {
            tracing::warn!(stream, %error, "following a partition failed; starting again");
        }
        tokio::time::sleep(FOLLOWER_RESTART_DELAY).await;
    }
}

async fn follow_once(
    jetstream: &jetstream::Context,
    stream: &str,
    first_sequence: &mut u64,
    shared: &std::sync::Weak<Shared>,
) -> Result<(), ClusterError> {
    use jetstream::consumer::{DeliverPolicy, pull};
    let consumer = jetstream
        .create_consumer_on_stream(
            pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: *first_sequence,
                },
                ..Default::default()
            },
            stream,
        )
        .await
        .map_err(|error| ClusterError::jetstream(format!("follow {stream}"), error))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|error| ClusterError::jetstream(format!("follow {stream}"), error))?;
    loop {
        let next = tokio::time::timeout(FOLLOWER_IDLE_CHECK, messages.next()).await;
        let message = match next {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(()),
            Err(_) => {
                // Quiet for a while: make sure the consumer is not stuck (on a server that
                // went away) while the stream moved on.
                let info = jetstream
                    .get_stream(stream)
                    .await
                    .map_err(|error| ClusterError::jetstream(format!("follow {stream}"), error))?
                    .info()
                    .await
                    .map_err(|error| ClusterError::jetstream(format!("follow {stream}"), error))?
                    .state
                    .last_sequence;
                if info >= *first_sequence {
                    return Err(ClusterError::JetStream {
                        op: format!("follow {stream}"),
                        detail: format!(
                            "the follower is at sequence {first_sequence} and the stream at {info}: following it again"
                        ),
                    });
                }
                continue;
            }
        };
        let message =
            message.map_err(|error| ClusterError::jetstream(format!("follow {stream}"), error))?;
        let Some(shared) = shared.upgrade() else {
            return Ok(());
        };
        let info = message
            .info()
            .map_err(|error| ClusterError::jetstream(format!("follow {stream}"), error))?;
        let sequence = info.stream_sequence;
        let timestamp_ms = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(TIME_HEADER))
            .and_then(|value| value.as_str().parse().ok())
            .unwrap_or(0);
        let mut state = shared.state.lock().expect("log state lock");
        state.insert(Record {
            offset: sequence - 1,
            timestamp_ms,
            payload: message.payload.to_vec(),
        });
        if sequence > state.next_offset {
            state.bytes += message.payload.len() as u64;
            state.next_offset = sequence;
            shared.next_offset.send_replace(sequence);
        }
        *first_sequence = sequence + 1;
    }
}
