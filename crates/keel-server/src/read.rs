//! `GET /v1/topics/{topic}/partitions/{partition}/events?from=&max=&wait=`.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use keel_engine::Record;
use keel_engine::clock::format_rfc3339_ms;

use crate::problem::ApiError;
use crate::state::AppState;

/// Query of a read.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// First offset to read (default: the partition's first kept offset).
    from: Option<u64>,
    /// Most records to return (default 100, at most 1000).
    #[param(minimum = 1)]
    max: Option<usize>,
    /// Milliseconds to long-poll when there is nothing yet (default 0, at most 30000).
    #[param(maximum = 30000)]
    wait: Option<u64>,
}

/// Reads records: `{"records": [{"offset", "timestamp", "event"}], "next_offset"}`.
#[utoipa::path(
    get,
    path = "/v1/topics/{topic}/partitions/{partition}/events",
    operation_id = "readPartition",
    tag = "events",
    params(("topic" = String, Path, description = "The topic's name"), ("partition" = u32, Path, description = "The partition, from 0"), ReadQuery),
    responses(
        (status = 200, description = "Records from `from` on (none yet: an empty list).", body = keel_api::read::Records),
    ),
)]
pub async fn read(
    State(state): State<AppState>,
    Path((topic, partition)): Path<(String, String)>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let Query(query) = query.map_err(|rejection| {
        ApiError::bad_request(format!("invalid query: {}", rejection.body_text()))
    })?;
    let partition: u32 = partition.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "partition must be a whole number, got {partition:?}"
        ))
    })?;
    let wait_limit = keel_engine::limits::READ_WAIT_MS_MAX;
    if query.wait.is_some_and(|wait| wait > wait_limit) {
        return Err(ApiError::bad_request(format!(
            "wait must be at most {wait_limit} (milliseconds)"
        )));
    }
    let wait = Duration::from_millis(query.wait.unwrap_or(0));
    if query.max == Some(0) {
        return Err(ApiError::bad_request("max must be at least 1"));
    }
    let batch = engine
        .read(
            &topic,
            partition,
            query.from,
            query.max.unwrap_or(100),
            wait,
        )
        .await?;
    let body = encode_records(&batch.records, batch.next_offset);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Writes the answer, keel-api's [`Records`](keel_api::read::Records), by hand: each stored
/// event is JSON already (validated when published, checksummed in the log), so it is copied,
/// not parsed and re-serialised.
fn encode_records(records: &[Record], next_offset: u64) -> String {
    let payload_bytes: usize = records.iter().map(|record| record.payload.len() + 64).sum();
    let mut body = String::with_capacity(payload_bytes + 32);
    body.push_str("{\"records\":[");
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        let event = String::from_utf8_lossy(&record.payload);
        debug_assert!(
            serde_json::from_str::<&serde_json::value::RawValue>(&event).is_ok(),
            "stored events are JSON"
        );
        body.push_str(&format!(
            "{{\"offset\":{},\"timestamp\":\"{}\",\"event\":{event}}}",
            record.offset,
            format_rfc3339_ms(record.timestamp_ms)
        ));
    }
    body.push_str(&format!("],\"next_offset\":{next_offset}}}"));
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the hand-written response is valid JSON carrying each event unchanged.
    #[test]
    fn encoded_records_are_json_with_events_verbatim() {
        let records = vec![
            Record {
                offset: 7,
                timestamp_ms: 0,
                payload: br#"{"id":"a","n":1.50}"#.to_vec(),
            },
            Record {
                offset: 8,
                timestamp_ms: 1,
                payload: br#"{"id":"b"}"#.to_vec(),
            },
        ];
        let body = encode_records(&records, 9);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["next_offset"], 9);
        assert_eq!(value["records"][0]["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(value["records"][1]["event"]["id"], "b");
        assert!(body.contains(r#""event":{"id":"a","n":1.50}"#));
    }

    // Goal: the hand-written answer is keel-api's `Records` body byte for byte, so readers of
    // the typed form read it whole. Method: parse it as `Records` and serialise that again.
    #[test]
    fn encoded_records_are_the_api_body() {
        let record = |offset, payload: &[u8]| Record {
            offset,
            timestamp_ms: 1_764_101_075_870,
            payload: payload.to_vec(),
        };
        let records = [
            record(3, br#"{"id":"a","data":{"n":1.50}}"#),
            record(4, b"{}"),
        ];
        let body = encode_records(&records, 5);
        let typed: keel_api::read::Records = serde_json::from_str(&body).expect("Records");
        assert_eq!(typed.next_offset, 5);
        assert_eq!(serde_json::to_string(&typed).expect("serialise"), body);
        assert_eq!(encode_records(&[], 0), r#"{"records":[],"next_offset":0}"#);
    }
}
