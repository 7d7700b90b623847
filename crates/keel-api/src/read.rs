//! Reading a partition: what `GET /v1/topics/{topic}/partitions/{p}/events` answers.
//!
//! The answer borrows each event from its bytes: parse it with `serde_json::from_slice` (or
//! `from_str`) on a buffer that outlives the [`Records`].

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The answer to a read: records from the requested offset on, and where to read next.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Records<'a> {
    /// The records, in offset order.
    #[serde(borrow)]
    pub records: Vec<Record<'a>>,
    /// The offset to read from next.
    pub next_offset: u64,
}

/// One stored record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Record<'a> {
    /// Its offset in the partition.
    pub offset: u64,
    /// When it was appended: an RFC 3339 UTC string with milliseconds
    /// (`"2026-11-25T20:04:35.870Z"`). Kept as the JSON the server wrote, so a reader passes it
    /// on without decoding; a reader also takes an answer without it.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub timestamp: Option<&'a RawValue>,
    /// The CloudEvent, as stored (validated when published).
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub event: &'a RawValue,
}

impl Records<'_> {
    /// The offset to read from next after asking from `requested`: past every record received,
    /// whatever `next_offset` says, so a confused answer cannot make a reader loop on the same
    /// records.
    pub fn next_read_offset(&self, requested: u64) -> u64 {
        let past_records = self
            .records
            .last()
            .map_or(requested, |record| record.offset + 1);
        self.next_offset.max(past_records).max(requested)
    }
}
