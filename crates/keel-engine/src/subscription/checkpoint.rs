//! A subscription's checkpoints: its progress (per partition the committed offset, the cursor
//! and the undone events between them with their retry state) and whether it is paused,
//! appended to a small log of its own. The newest record is the truth; recovery loads it and
//! replays the topic from each partition's committed offset.
//!
//! Appending a record with one fdatasync is cheaper than rewriting and renaming a file, and the
//! log's framing, checksums and torn-tail recovery already make it crash-safe: after a crash
//! the newest record that was fsynced is found, never a half-written one.

use std::path::Path;

use keel_log::{Log, LogConfig};
use serde::{Deserialize, Serialize};

use super::state::LaneCheckpoint;
use crate::clock::now_ms;
use crate::error::EngineError;

/// Segments of the checkpoint log roll at this size; older segments are deleted once the log
/// is twice as large, so a checkpoint log stays under about 3 of them.
const CHECKPOINT_SEGMENT_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// One checkpoint record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub(crate) lanes: Vec<LaneCheckpoint>,
    /// Why the subscription is paused, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) paused: Option<String>,
}

/// The checkpoint log of one subscription. Blocking.
#[derive(Debug)]
pub(crate) struct CheckpointLog {
    log: Log,
    segment_bytes_max: u64,
}

impl CheckpointLog {
    /// Opens (or creates) the log in `dir` and returns the newest checkpoint, if any.
    pub(crate) fn open(dir: &Path) -> Result<(Self, Option<Checkpoint>), EngineError> {
        Self::open_with(dir, CHECKPOINT_SEGMENT_BYTES_MAX)
    }

    fn open_with(
        dir: &Path,
        segment_bytes_max: u64,
    ) -> Result<(Self, Option<Checkpoint>), EngineError> {
        let config = LogConfig {
            segment_bytes_max,
            ..LogConfig::default()
        };
        let (log, report) = Log::open(dir, config).map_err(|source| EngineError::Log {
            context: format!("open checkpoints {}", dir.display()),
            source,
        })?;
        if report.truncated_bytes > 0 {
            tracing::warn!(path = %dir.display(), bytes = report.truncated_bytes, "cut a torn checkpoint tail");
        }
        let newest = match log.next_offset().checked_sub(1) {
            Some(offset) if offset >= log.start_offset() => {
                let records =
                    log.read(offset, 1, usize::MAX)
                        .map_err(|source| EngineError::Log {
                            context: format!("read checkpoint {}", dir.display()),
                            source,
                        })?;
                let record = records.first().ok_or_else(|| corrupt(dir, "missing"))?;
                let checkpoint = serde_json::from_slice(&record.payload)
                    .map_err(|error| corrupt(dir, &error.to_string()))?;
                Some(checkpoint)
            }
            _ => None,
        };
        let log = CheckpointLog {
            log,
            segment_bytes_max,
        };
        Ok((log, newest))
    }

    /// Appends a checkpoint and fsyncs it; once this returns it survives any crash.
    pub(crate) fn write(&self, checkpoint: &Checkpoint) -> Result<(), EngineError> {
        let payload = serde_json::to_vec(checkpoint).expect("a checkpoint serialises");
        let context = || format!("write checkpoint {}", self.log.dir().display());
        self.log
            .append(now_ms(), &payload)
            .and_then(|_| self.log.commit(true))
            .map_err(|source| EngineError::Log {
                context: context(),
                source,
            })?;
        if self.log.size_bytes() > 2 * self.segment_bytes_max {
            // Only whole older segments go; the newest record is always in the last one.
            let kept = Some(self.segment_bytes_max);
            if let Err(source) = self.log.apply_retention(now_ms(), None, kept) {
                tracing::warn!(context = %context(), %source, "could not trim old checkpoints");
            }
        }
        Ok(())
    }
}

fn corrupt(dir: &Path, detail: &str) -> EngineError {
    EngineError::Corrupt {
        detail: format!(
            "the newest checkpoint in {} cannot be read ({detail}); restore it from a backup or delete the subscription",
            dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the newest fsynced checkpoint is what reopening finds, across segment rolls and
    // trimming.
    #[test]
    fn reopen_finds_the_newest_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let segment_bytes_max = 64 * 1024;
        let (log, none) = CheckpointLog::open_with(dir.path(), segment_bytes_max).expect("open");
        assert!(none.is_none());
        let mut last = None;
        for index in 0..300u64 {
            let checkpoint = Checkpoint {
                lanes: vec![LaneCheckpoint {
                    committed: index,
                    cursor: index + 5,
                    undone: (0..200).map(|delta| (delta * 2, 1)).collect(),
                    retries: Vec::new(),
                }],
                paused: (index % 2 == 0).then(|| "410 Gone".to_owned()),
            };
            log.write(&checkpoint).expect("write");
            last = Some(checkpoint);
        }
        drop(log);
        let (log, newest) =
            CheckpointLog::open_with(dir.path(), segment_bytes_max).expect("reopen");
        assert_eq!(newest, last);
        assert!(log.log.segment_count() > 1, "the test rolls segments");
        assert!(log.log.size_bytes() <= 3 * segment_bytes_max);
    }
}
