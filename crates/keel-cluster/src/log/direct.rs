//! Reading a log's stream without a consumer: batch direct gets (ADR-31), served by any
//! replica.

use futures_util::StreamExt;
use keel_engine::storage::{Record, StorageError};

use super::{DIRECT_READ_BYTES_MAX, TIME_HEADER};
use crate::error::ClusterError;
use crate::nats::{Nats, REQUEST_TIMEOUT};

/// Up to `records_max` records from sequence `first_sequence` on, within `bytes_max` (at
/// least one), by one batch direct get (served by any replica; ADR-31).
pub(super) async fn direct_get_batch(
    nats: Nats,
    stream: String,
    first_sequence: u64,
    records_max: usize,
    bytes_max: usize,
) -> Result<Vec<Record>, StorageError> {
    let request = serde_json::json!({
        "seq": first_sequence,
        "batch": records_max,
        "max_bytes": bytes_max.clamp(1, DIRECT_READ_BYTES_MAX),
    });
    let failed = |detail: String| {
        StorageError::Backend(Box::new(ClusterError::JetStream {
            op: format!("read {stream} from sequence {first_sequence}"),
            detail,
        }))
    };
    let inbox = nats.client.new_inbox();
    let mut replies = nats
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|error| failed(error.to_string()))?;
    nats.client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            request.to_string().into(),
        )
        .await
        .map_err(|error| failed(error.to_string()))?;
    let mut records = Vec::new();
    loop {
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, replies.next())
            .await
            .map_err(|_| StorageError::Unavailable {
                source: Box::new(ClusterError::JetStream {
                    op: format!("read {stream}"),
                    detail: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
                }),
            })?
            .ok_or_else(|| failed("the reply subscription ended".into()))?;
        match reply.status.map(|status| status.as_u16()) {
            // The end of the batch (204), or nothing at or after the sequence (404).
            Some(204) | Some(404) => return Ok(records),
            Some(status) => {
                return Err(failed(format!(
                    "status {status} {}",
                    reply.description.unwrap_or_default()
                )));
            }
            None => {}
        }
        let headers = reply.headers.as_ref();
        let header = |name: &str| {
            headers
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str().to_owned())
        };
        let sequence: u64 = header("Nats-Sequence")
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| failed("a message without its sequence".into()))?;
        let timestamp_ms = header(TIME_HEADER)
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        records.push(Record {
            offset: sequence - 1,
            timestamp_ms,
            payload: reply.payload.to_vec(),
        });
    }
}

/// The sequence of the first message stored at or after `timestamp_ms` by the stream's
/// clock, if any.
pub(super) async fn first_at_or_after(
    nats: Nats,
    stream: String,
    timestamp_ms: i64,
) -> Result<Option<u64>, StorageError> {
    let start =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(timestamp_ms) * 1_000_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let start = start
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let request = serde_json::json!({ "start_time": start });
    let reply = nats
        .client
        .request(
            format!("$JS.API.DIRECT.GET.{stream}"),
            request.to_string().into(),
        )
        .await
        .map_err(|error| StorageError::from(ClusterError::jetstream("find by time", error)))?;
    if reply.status.map(|status| status.as_u16()) == Some(404) {
        return Ok(None);
    }
    Ok(reply
        .headers
        .as_ref()
        .and_then(|headers| headers.get("Nats-Sequence"))
        .and_then(|value| value.as_str().parse().ok()))
}
