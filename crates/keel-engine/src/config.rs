//! Topic configuration: what `PUT /v1/topics/{topic}` takes and `topic.json` stores, the
//! [`TopicConfig`] of keel-api, and the checks keel applies to it and to topic names.

use std::time::Duration;

use crate::error::{EngineError, TopicError};
use crate::limits::{PARTITIONS_MAX, TOPIC_NAME_BYTES_MAX};

pub use keel_api::topics::{FsyncPolicy, Retention, TopicConfig};

/// Checks a topic's configuration against keel's limits.
pub fn validate_topic_config(config: &TopicConfig) -> Result<(), EngineError> {
    let bad = |detail: String| Err(EngineError::Topic(TopicError::InvalidConfig { detail }));
    if config.partitions == 0 || config.partitions > PARTITIONS_MAX {
        return bad(format!(
            "partitions must be between 1 and {PARTITIONS_MAX}, got {}",
            config.partitions
        ));
    }
    if config.retention.max_age == Some(Duration::ZERO) {
        return bad("retention.max_age must be longer than 0".into());
    }
    if config.retention.max_bytes == Some(0) {
        return bad("retention.max_bytes must be more than 0".into());
    }
    if config.fsync_interval.is_zero() {
        return bad("fsync_interval must be longer than 0".into());
    }
    Ok(())
}

/// The prefix of keel's internal topics (`_keel.alerts`). Users may read them and subscribe
/// to them; only keel creates, writes and deletes them.
pub const INTERNAL_TOPIC_PREFIX: &str = "_keel.";

/// Whether `name` is one of keel's internal topics.
pub fn is_internal_topic(name: &str) -> bool {
    name.starts_with(INTERNAL_TOPIC_PREFIX)
}

/// Refuses `action` ("published to", "deleted") on an internal topic.
pub(crate) fn refuse_internal(name: &str, action: &'static str) -> Result<(), EngineError> {
    if is_internal_topic(name) {
        return Err(EngineError::Topic(TopicError::Reserved {
            topic: name.to_owned(),
            action,
        }));
    }
    Ok(())
}

/// Whether `name` is 1 to `bytes_max` characters of `A-Z a-z 0-9 . _ -` starting with a
/// letter or digit: safe as a file name, and never one of keel's own (`_keel.`, `.creating-`).
pub(crate) fn is_plain_name(name: &str, bytes_max: usize) -> bool {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    name.len() <= bytes_max && starts_well && name.chars().all(valid_char)
}

/// Checks a topic name: 1 to 128 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or
/// digit (names starting otherwise are kept for keel's internal topics).
pub fn validate_topic_name(name: &str) -> Result<(), EngineError> {
    refuse_internal(name, "created")?;
    if is_plain_name(name, TOPIC_NAME_BYTES_MAX) {
        return Ok(());
    }
    Err(EngineError::Topic(TopicError::InvalidName {
        name: name.to_owned(),
        detail: format!(
            "a topic name is 1 to {TOPIC_NAME_BYTES_MAX} characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the name rule accepts ordinary names and refuses empty, too long, path-like and
    // internal-looking ones.
    #[test]
    fn topic_names_follow_the_rule() {
        for good in ["orders", "a", "Orders.v2_eu-1", &"x".repeat(128)] {
            assert!(validate_topic_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "_internal",
            "-x",
            "a/b",
            "a b",
            "ordérs",
            &"x".repeat(129),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    // Goal: the API's JSON shape parses with defaults, and unknown fields and bad values are
    // refused.
    #[test]
    fn topic_config_parses_with_defaults_and_refuses_unknown_fields() {
        let config: TopicConfig = serde_json::from_str(
            r#"{"partitions": 8, "retention": {"max_age": "7d", "max_bytes": null}}"#,
        )
        .unwrap();
        assert_eq!(config.partitions, 8);
        assert_eq!(
            config.retention.max_age,
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(config.fsync, FsyncPolicy::Always);
        assert_eq!(config.dedupe_window, Duration::from_secs(120));
        assert!(serde_json::from_str::<TopicConfig>(r#"{"partitons": 8}"#).is_err());
        assert!(
            serde_json::from_str::<TopicConfig>(r#"{"retention": {"max_age": "7 days"}}"#).is_err()
        );
        let zero = TopicConfig {
            partitions: 0,
            ..TopicConfig::default()
        };
        assert!(validate_topic_config(&zero).is_err());
    }
}
