//! The metadata files of topics and subscriptions (`topic.json`, `subscription.json`): the
//! configuration as JSON, with a `format` member naming the layout, so that a later keel can
//! tell an old file from a new one and an older keel refuses a file it cannot read.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::files::write_synced;
use crate::error::EngineError;
use crate::format::{FORMAT, check, unrecorded};

/// A value with its format, as it is written.
#[derive(Serialize)]
struct Versioned<'a, T> {
    format: u64,
    #[serde(flatten)]
    body: &'a T,
}

/// Writes `value` with its format to `path`, fsynced. Blocking.
pub(super) fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), EngineError> {
    let versioned = Versioned {
        format: FORMAT,
        body: value,
    };
    let text = serde_json::to_vec_pretty(&versioned).expect("metadata serialises");
    Ok(write_synced(path, &text)?)
}

/// Reads a value written by [`write`] (or by a keel from before formats); an error names the
/// file and what is wrong. Blocking.
pub(super) fn read<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let invalid = |detail: String| format!("{}: {detail}", path.display());
    let bytes = std::fs::read(path).map_err(|error| invalid(error.to_string()))?;
    let mut value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|error| invalid(error.to_string()))?;
    // Taken out before the value is read: the configurations refuse unknown members.
    let format = match value
        .as_object_mut()
        .and_then(|object| object.remove("format"))
    {
        None => unrecorded(),
        Some(format) => format
            .as_u64()
            .ok_or_else(|| invalid(format!("format {format} is not a number")))?,
    };
    check(format).map_err(invalid)?;
    serde_json::from_value(value).map_err(|error| invalid(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TopicConfig;

    // Goal: a configuration round-trips with its format; a file from before formats is read
    // as format 1; an unknown format is refused by name. Method: write, read, and hand-made
    // files.
    #[test]
    fn metadata_carries_its_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("topic.json");
        let config = TopicConfig {
            partitions: 3,
            ..TopicConfig::default()
        };
        write(&path, &config).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("\"format\": 1"), "{text}");
        assert_eq!(read::<TopicConfig>(&path).expect("read"), config);
        std::fs::write(&path, r#"{"partitions": 2}"#).expect("write");
        assert_eq!(read::<TopicConfig>(&path).expect("old file").partitions, 2);
        std::fs::write(&path, r#"{"format": 2, "partitions": 2}"#).expect("write");
        let error = read::<TopicConfig>(&path).expect_err("unknown format");
        assert!(error.contains("format 2"), "{error}");
    }
}
