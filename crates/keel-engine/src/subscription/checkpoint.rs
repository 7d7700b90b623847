//! A subscription's checkpoints: its progress (per partition the committed offset, the cursor
//! and the undone events between them with their retry state) and whether it is paused,
//! appended to a small log of its own. The newest record is the truth; recovery loads it and
//! replays the topic from each partition's committed offset.
//!
//! Appending a record with one fdatasync is cheaper than rewriting and renaming a file, and the
//! log's framing, checksums and torn-tail recovery already make it crash-safe: after a crash
//! the newest record that was fsynced is found, never a half-written one.

use serde::{Deserialize, Serialize};

use super::state::LaneCheckpoint;
use crate::clock::now_ms;
use crate::error::{DataError, EngineError};
use crate::limits::CHECKPOINT_LOG_BYTES_MAX;
use crate::storage::RecordLog;

/// One checkpoint record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    /// The record's layout (see `format.rs`).
    #[serde(default = "crate::format::unrecorded")]
    format: u64,
    pub(crate) lanes: Vec<LaneCheckpoint>,
    /// Why the subscription is paused, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) paused: Option<String>,
    /// Whether keel paused it, its sink failing past `pause_after`: a passing health check
    /// resumes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) auto_paused: bool,
}

impl Checkpoint {
    /// A checkpoint of `lanes`, paused for a reason (by keel or not) or not.
    pub(crate) fn new(
        lanes: Vec<LaneCheckpoint>,
        paused: Option<String>,
        auto_paused: bool,
    ) -> Self {
        Checkpoint {
            format: crate::format::FORMAT,
            lanes,
            paused,
            auto_paused,
        }
    }

    /// The checkpoint as stored.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a checkpoint serialises")
    }
}

/// The checkpoint log of one subscription. Blocking.
pub(crate) struct CheckpointLog {
    log: Box<dyn RecordLog>,
    /// Past this size the log is trimmed to about half of it.
    bytes_max: u64,
}

impl CheckpointLog {
    /// Takes a subscription's checkpoint log and returns the newest checkpoint, if any.
    pub(crate) fn open(log: Box<dyn RecordLog>) -> Result<(Self, Option<Checkpoint>), EngineError> {
        Self::open_with(log, CHECKPOINT_LOG_BYTES_MAX)
    }

    fn open_with(
        log: Box<dyn RecordLog>,
        bytes_max: u64,
    ) -> Result<(Self, Option<Checkpoint>), EngineError> {
        let newest = match log.next_offset().checked_sub(1) {
            Some(offset) if offset >= log.start_offset() => {
                let records = log.read(offset, 1, usize::MAX).map_err(|source| {
                    EngineError::Data(DataError::Storage {
                        context: "read the newest checkpoint".to_owned(),
                        source,
                    })
                })?;
                let record = records.first().ok_or_else(|| corrupt("missing"))?;
                let checkpoint: Checkpoint = serde_json::from_slice(&record.payload)
                    .map_err(|error| corrupt(&error.to_string()))?;
                crate::format::check(checkpoint.format).map_err(|error| corrupt(&error))?;
                Some(checkpoint)
            }
            _ => None,
        };
        Ok((CheckpointLog { log, bytes_max }, newest))
    }

    /// Appends a checkpoint and fsyncs it; once this returns it survives any crash.
    pub(crate) fn write(&self, checkpoint: &Checkpoint) -> Result<(), EngineError> {
        let payload = checkpoint.to_bytes();
        self.log
            .append(now_ms(), &[&payload], true)
            .map_err(|source| {
                EngineError::Data(DataError::Storage {
                    context: "write a checkpoint".to_owned(),
                    source,
                })
            })?;
        if self.log.size_bytes() > self.bytes_max {
            // Only whole older segments go; the newest record is always kept.
            let kept = Some(self.bytes_max / 2);
            if let Err(source) = self.log.apply_retention(now_ms(), None, kept) {
                tracing::warn!(%source, "could not trim old checkpoints");
            }
        }
        Ok(())
    }
}

fn corrupt(detail: &str) -> EngineError {
    EngineError::Data(DataError::Corrupt {
        detail: format!(
            "the newest checkpoint cannot be read ({detail}); restore it from a backup or delete the subscription"
        ),
    })
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
        let open = || {
            let log = crate::storage::disk_log_for_tests(dir.path(), segment_bytes_max);
            CheckpointLog::open_with(log, 2 * segment_bytes_max)
        };
        let (log, none) = open().expect("open");
        assert!(none.is_none());
        let mut last = None;
        for index in 0..300u64 {
            let lanes = vec![LaneCheckpoint {
                committed: index,
                cursor: index + 5,
                undone: (0..200).map(|delta| (delta * 2, 1)).collect(),
                retries: Vec::new(),
            }];
            let paused = (index % 2 == 0).then(|| "410 Gone".to_owned());
            let checkpoint = Checkpoint::new(lanes, paused, index % 4 == 0);
            log.write(&checkpoint).expect("write");
            last = Some(checkpoint);
        }
        drop(log);
        let (log, newest) = open().expect("reopen");
        assert_eq!(newest, last);
        assert!(log.log.start_offset() > 0, "the test trims old segments");
        assert!(log.log.size_bytes() <= 3 * segment_bytes_max);
    }
}
