//! `GET /v1/topics/{topic}/keys/{key}/events?from_version=&max=`: one key's event stream.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use keel_api::streams::KEY_STREAM_RECORDS_DEFAULT;
use keel_engine::KeyStream;
use keel_engine::clock::format_rfc3339_ms;

use crate::problem::ApiError;
use crate::state::AppState;

/// Query of a key stream read.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// First version to return (default 1).
    from_version: Option<u64>,
    /// Most events to return (default 100, at most 1000).
    max: Option<usize>,
}

/// Reads a key's events: `{"key", "records": [{"version", "partition", "offset", "timestamp",
/// "event"}], "version", "next_version"}`.
#[utoipa::path(
    get,
    path = "/v1/topics/{topic}/keys/{key}/events",
    operation_id = "readKeyStream",
    tag = "events",
    params(("topic" = String, Path, description = "The topic's name"), ("key" = String, Path, description = "The events' partition key"), StreamQuery),
    responses(
        (status = 200, description = "The key's events from `from_version` on.", body = keel_api::streams::KeyStream),
    ),
)]
pub async fn read(
    State(state): State<AppState>,
    Path((topic, key)): Path<(String, String)>,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let Query(query) = query.map_err(|rejection| {
        ApiError::bad_request(format!("invalid query: {}", rejection.body_text()))
    })?;
    let stream = engine
        .key_stream(
            &topic,
            &key,
            query.from_version.unwrap_or(1),
            query.max.unwrap_or(KEY_STREAM_RECORDS_DEFAULT),
        )
        .await?;
    let body = encode_stream(&stream);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Writes the answer, keel-api's [`KeyStream`](keel_api::streams::KeyStream), by hand: each
/// stored event is JSON already, so it is copied, not parsed and re-serialised.
fn encode_stream(stream: &KeyStream) -> String {
    let payload_bytes: usize = stream
        .records
        .iter()
        .map(|r| r.record.payload.len() + 96)
        .sum();
    let mut body = String::with_capacity(payload_bytes + stream.key.len() + 64);
    let key = serde_json::to_string(&stream.key).expect("a string serialises");
    body.push_str(&format!("{{\"key\":{key},\"records\":["));
    for (index, entry) in stream.records.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        let event = String::from_utf8_lossy(&entry.record.payload);
        debug_assert!(
            serde_json::from_str::<&serde_json::value::RawValue>(&event).is_ok(),
            "stored events are JSON"
        );
        body.push_str(&format!(
            "{{\"version\":{},\"partition\":{},\"offset\":{},\"timestamp\":\"{}\",\"event\":{event}}}",
            entry.version,
            entry.partition,
            entry.record.offset,
            format_rfc3339_ms(entry.record.timestamp_ms)
        ));
    }
    body.push_str(&format!(
        "],\"version\":{},\"next_version\":{}}}",
        stream.version, stream.next_version
    ));
    body
}

#[cfg(test)]
mod tests {
    use keel_engine::{Record, StreamRecord};

    use super::*;

    // Goal: the hand-written answer is keel-api's `KeyStream` body byte for byte, with each
    // event verbatim and the key escaped. Method: parse it as `KeyStream` and serialise it.
    #[test]
    fn encoded_stream_is_the_api_body() {
        let entry = |version, offset, payload: &[u8]| StreamRecord {
            version,
            partition: 2,
            record: Record {
                offset,
                timestamp_ms: 1_764_101_075_870,
                payload: payload.to_vec(),
            },
        };
        let stream = KeyStream {
            key: "order \"7\"".to_owned(),
            records: vec![
                entry(4, 10, br#"{"id":"a","data":{"n":1.50}}"#),
                entry(5, 12, b"{}"),
            ],
            version: 5,
            next_version: 6,
        };
        let body = encode_stream(&stream);
        let typed: keel_api::streams::KeyStream = serde_json::from_str(&body).expect("KeyStream");
        assert_eq!(typed.key, "order \"7\"");
        assert_eq!(typed.records[1].offset, 12);
        assert_eq!(serde_json::to_string(&typed).expect("serialise"), body);
        assert!(body.contains(r#""event":{"id":"a","data":{"n":1.50}}"#));
    }
}
