//! Topic configuration: what `PUT /v1/topics/{topic}` takes and `topic.json` stores.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;
use crate::error::EngineError;
use crate::limits::{PARTITIONS_MAX, TOPIC_NAME_BYTES_MAX};

/// When appended events are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Fsync before acknowledging (group commit). The default: an acknowledged event survives
    /// power loss.
    #[default]
    Always,
    /// Acknowledge after the write; fsync every `fsync_interval`. Weaker: a power loss may
    /// lose up to one interval of acknowledged events (a process crash loses nothing).
    Interval,
    /// Acknowledge after the write; leave flushing to the OS. Weakest: a power loss may lose
    /// any acknowledged event not yet flushed.
    Never,
}

/// Retention of a topic: whole segments older than `max_age`, or beyond `max_bytes` per
/// partition, are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep events at least this long (`"7d"`); none = forever.
    #[serde(
        default,
        with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// Keep at most about this many bytes per partition; none = unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// A topic's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Number of partitions (fixed at creation).
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Retention by age and size.
    #[serde(default)]
    pub retention: Retention,
    /// When appends are fsynced.
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// With `fsync = "interval"`, how often.
    #[serde(default = "default_fsync_interval", with = "duration::serde_text")]
    pub fsync_interval: Duration,
    /// How long a (source, id) pair is remembered to drop repeated publishes.
    #[serde(default = "default_dedupe_window", with = "duration::serde_text")]
    pub dedupe_window: Duration,
}

fn default_partitions() -> u32 {
    1
}
fn default_fsync_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_dedupe_window() -> Duration {
    Duration::from_secs(120)
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            partitions: default_partitions(),
            retention: Retention::default(),
            fsync: FsyncPolicy::default(),
            fsync_interval: default_fsync_interval(),
            dedupe_window: default_dedupe_window(),
        }
    }
}

impl TopicConfig {
    /// Checks the values against keel's limits.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |detail: String| Err(EngineError::InvalidConfig { detail });
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return bad(format!(
                "partitions must be between 1 and {PARTITIONS_MAX}, got {}",
                self.partitions
            ));
        }
        if self.retention.max_age == Some(Duration::ZERO) {
            return bad("retention.max_age must be longer than 0".into());
        }
        if self.retention.max_bytes == Some(0) {
            return bad("retention.max_bytes must be more than 0".into());
        }
        if self.fsync_interval.is_zero() {
            return bad("fsync_interval must be longer than 0".into());
        }
        Ok(())
    }
}

/// Checks a topic name: 1 to 128 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or
/// digit (names starting otherwise are kept for keel's internal topics).
pub fn validate_topic_name(name: &str) -> Result<(), EngineError> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.len() <= TOPIC_NAME_BYTES_MAX && starts_well && name.chars().all(valid_char) {
        return Ok(());
    }
    Err(EngineError::InvalidTopicName {
        name: name.to_owned(),
        detail: format!(
            "a topic name is 1 to {TOPIC_NAME_BYTES_MAX} characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        ),
    })
}

mod optional_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_str(&crate::duration::format(*duration)),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| crate::duration::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
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
        assert!(zero.validate().is_err());
    }
}
