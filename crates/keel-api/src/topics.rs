//! Topics: the configuration `PUT /v1/topics/{topic}` takes (and `topic.json` and the server's
//! config file store), what a client sends to create one, and what describe and list answer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;

/// When appended events are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep events at least this long (`"7d"`); none = forever.
    #[serde(
        default,
        with = "duration::serde_text_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub max_age: Option<Duration>,
    /// Keep at most about this many bytes per partition; none = unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// A topic's configuration. Every member may be left out of the JSON: it then takes the value
/// of [`TopicConfig::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub fsync_interval: Duration,
    /// How long a (source, id) pair is remembered to drop repeated publishes.
    #[serde(default = "default_dedupe_window", with = "duration::serde_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
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

/// The body of `PUT /v1/topics/{topic}` as a client writes it: only the settings it sets, so
/// the server's defaults apply to the rest. Durations are text (`"7d"`) passed on as given:
/// the server reads the body as a [`TopicConfig`] and names a bad value in its error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct TopicSettings {
    /// Number of partitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// Retention by age and size; left out when it sets neither.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub retention: RetentionSettings,
    /// When appends are fsynced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync: Option<FsyncPolicy>,
    /// With `fsync = "interval"`, how often, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub fsync_interval: Option<String>,
    /// How long a repeated (source, id) is answered as a duplicate, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub dedupe_window: Option<String>,
}

/// The retention a client sets in [`TopicSettings`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Keep events at least this long, as text (`"7d"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub max_age: Option<String>,
    /// Keep at most about this many bytes per partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// Figures describing one partition of a topic: the records in `start_offset..next_offset`
/// are readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartitionInfo {
    /// Partition number.
    pub partition: u32,
    /// First offset kept.
    pub start_offset: u64,
    /// Offset the next event will get.
    pub next_offset: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Why it refuses service, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub unavailable: Option<String>,
}

/// A topic's configuration and figures, as describe (`GET /v1/topics/{topic}`) and create
/// answer: the configuration's members, with `partitions` holding each partition's figures
/// instead of their count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TopicInfo {
    /// The name.
    pub name: String,
    /// Per partition figures.
    pub partitions: Vec<PartitionInfo>,
    /// Retention by age and size.
    pub retention: Retention,
    /// When appends are fsynced.
    pub fsync: FsyncPolicy,
    /// With `fsync = "interval"`, how often.
    #[serde(with = "duration::serde_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub fsync_interval: Duration,
    /// How long a (source, id) pair is remembered.
    #[serde(with = "duration::serde_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub dedupe_window: Duration,
}

/// The answer to `GET /v1/topics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TopicList {
    /// Every topic, by name.
    pub topics: Vec<TopicInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: what a client sends is read by the server as the configuration it means: a setting
    // left out takes the default, a given one its value. Method: send empty and full settings,
    // read each back as the server does.
    #[test]
    fn settings_read_as_the_configuration_they_give() {
        let read = |settings: &TopicSettings| {
            let body = serde_json::to_string(settings).expect("settings serialise");
            serde_json::from_str::<TopicConfig>(&body).expect("the server reads them")
        };
        assert_eq!(
            serde_json::to_string(&TopicSettings::default()).expect("serialise"),
            "{}"
        );
        assert_eq!(read(&TopicSettings::default()), TopicConfig::default());
        let settings = TopicSettings {
            partitions: Some(4),
            retention: RetentionSettings {
                max_age: Some("7d".to_owned()),
                max_bytes: Some(1_000),
            },
            fsync: Some(FsyncPolicy::Interval),
            fsync_interval: Some("500ms".to_owned()),
            dedupe_window: Some("90s".to_owned()),
        };
        let expected = TopicConfig {
            partitions: 4,
            retention: Retention {
                max_age: Some(Duration::from_secs(7 * 86_400)),
                max_bytes: Some(1_000),
            },
            fsync: FsyncPolicy::Interval,
            fsync_interval: Duration::from_millis(500),
            dedupe_window: Duration::from_secs(90),
        };
        assert_eq!(read(&settings), expected);
    }
}
