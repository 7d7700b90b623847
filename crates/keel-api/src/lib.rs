//! The bodies of keel's HTTP API, typed once: what each endpoint takes and answers, for the
//! server that writes them and every client that reads them (the `keel` CLI, its load
//! generators, a Rust client).
//!
//! This crate is a leaf: serde and serde_json, no async, no HTTP. It holds shapes, their
//! defaults and their JSON spelling; what keel does with them (validation against its limits,
//! delivery) lives in `keel-engine`, which uses these same types.
//!
//! Member order is part of the contract where the API documents it, and every body keeps the
//! order keel has always written: structs declare their members in that order, and a few
//! (noted on the type) in alphabetical order, because keel wrote them from a sorted map.
//!
//! Answers that carry stored events borrow them as [`serde_json::value::RawValue`] from the
//! answer's bytes: a reader can pass an event on, or parse only what it needs, without a copy.
//!
//! ```
//! use keel_api::topics::TopicInfo;
//!
//! let body = r#"{"name":"orders","partitions":[{"partition":0,"start_offset":0,
//!     "next_offset":2,"bytes":386}],"retention":{"max_age":"7d"},"fsync":"always",
//!     "fsync_interval":"1s","dedupe_window":"2m"}"#;
//! let topic: TopicInfo = serde_json::from_str(body)?;
//! assert_eq!(topic.partitions[0].next_offset, 2);
//! assert_eq!(topic.retention.max_age, Some(std::time::Duration::from_secs(7 * 86_400)));
//! # Ok::<(), serde_json::Error>(())
//! ```

pub mod alerts;
pub mod cluster;
pub mod dead_letters;
pub mod duration;
pub mod health;
pub mod problem;
pub mod publish;
pub mod pull;
pub mod read;
pub mod state;
pub mod streams;
pub mod subscriptions;
pub mod tokens;
pub mod topics;

#[cfg(all(test, feature = "openapi"))]
mod openapi_schemas;

/// Whether a value is its type's default: a settings part that sets nothing is left out.
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}
