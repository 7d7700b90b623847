//! Backpressure on publishing: what the engine refuses before it queues an append, so that
//! memory and disk stay within their limits while reads, deliveries and acks go on.
//!
//! - **The publish queue's high-water mark**: the bytes of published events admitted and
//!   not yet answered (waiting for a partition's queue, queued, or being written) are
//!   counted; a publish that would take them past `publish_queue_bytes_max` is refused
//!   (429, `Retry-After`) instead of waiting without bound. A publish is always admitted
//!   when nothing is queued, so one larger than the mark still goes through alone.
//! - **The disk guard** (`pressure/space.rs`): a publish that would take the free space of
//!   the data directory's disk below `disk_free_bytes_min`, or the data directory past
//!   `data_dir_bytes_max`, is refused (507) until space returns.
//!
//! Only publishes are refused: appends keel needs to make progress (checkpoints, dead
//! letters, state commits, and the events a stateful subscription emits, whose commit is
//! already durable) go on, into the room `disk_free_bytes_min` keeps.
//!
//! Cost on the publish path: a few atomic operations per request, no system call; the
//! disk is measured by a task every `disk_check_interval` (and soon after retention or a
//! delete frees space).

mod space;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::error::{EngineError, PublishError, StorageLimit, TopicError};
use crate::event::Event;
use crate::limits::{
    DISK_CHECK_INTERVAL_DEFAULT, DISK_CHECK_INTERVAL_MAX, DISK_FREE_BYTES_MIN_DEFAULT,
    PUBLISH_QUEUE_BYTES_MAX_DEFAULT, RECORD_OVERHEAD_BYTES,
};
use crate::metrics::{Metrics, REFUSAL_REASONS, RefusalLabels};
use crate::notices::Notices;
use crate::storage::Storage;
use space::SpaceView;

/// Settings of backpressure (`[backpressure]` in keel's configuration file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PressureConfig {
    /// Publishing is refused while the data directory's disk has less free space than this
    /// (0: never). It is the room keel keeps to make progress while publishing is refused.
    pub disk_free_bytes_min: u64,
    /// Publishing is refused while the data directory holds more than this; none: no cap.
    pub data_dir_bytes_max: Option<u64>,
    /// Publishing answers 429 while this many bytes of published events wait to be written.
    pub publish_queue_bytes_max: u64,
    /// How often the disk is measured (`"1s"`).
    #[serde(with = "crate::duration::serde_text")]
    pub disk_check_interval: Duration,
}

impl Default for PressureConfig {
    fn default() -> Self {
        Self {
            disk_free_bytes_min: DISK_FREE_BYTES_MIN_DEFAULT,
            data_dir_bytes_max: None,
            publish_queue_bytes_max: PUBLISH_QUEUE_BYTES_MAX_DEFAULT,
            disk_check_interval: DISK_CHECK_INTERVAL_DEFAULT,
        }
    }
}

impl PressureConfig {
    /// Checks the settings; the error names the one out of range.
    pub fn validate(&self) -> Result<(), String> {
        if self.data_dir_bytes_max == Some(0) {
            return Err(
                "backpressure.data_dir_bytes_max must be above 0 (leave it out for no cap)"
                    .to_owned(),
            );
        }
        if self.publish_queue_bytes_max == 0 {
            return Err("backpressure.publish_queue_bytes_max must be above 0".to_owned());
        }
        if self.disk_check_interval.is_zero() || self.disk_check_interval > DISK_CHECK_INTERVAL_MAX
        {
            return Err(format!(
                "backpressure.disk_check_interval must be between 1ms and {}, got {}",
                crate::duration::format(DISK_CHECK_INTERVAL_MAX),
                crate::duration::format(self.disk_check_interval)
            ));
        }
        Ok(())
    }
}

/// The engine's backpressure: the publish queue's level and the disk guard.
pub(crate) struct Pressure {
    config: PressureConfig,
    space: SpaceView,
    /// The bytes admitted and not yet answered: the gauge is the count itself.
    queued_bytes: Gauge,
    refused: [Counter; 3],
    blocked: [Gauge; 3],
    metrics: Arc<Metrics>,
    /// Asks the measuring task for a measurement now (space was freed).
    measure_now: Notify,
    /// Where the disk's refusals and their end are reported (`_keel.alerts`); set once the
    /// topics are open.
    notices: std::sync::OnceLock<Notices>,
}

/// Indexes into [`REFUSAL_REASONS`].
const DISK_FULL: usize = 0;
const DATA_DIR_FULL: usize = 1;
const OVERLOADED: usize = 2;

/// A publish admitted: its bytes count in the publish queue until this is dropped (when the
/// publish is answered).
pub(crate) struct Admission {
    /// The queue's gauge and the bytes counted in it; none for an unmetered append.
    counted: Option<(Gauge, i64)>,
}

impl Admission {
    /// An append that backpressure does not refuse or count: the events a stateful
    /// subscription emits, whose commit is durable already.
    pub(crate) fn unmetered() -> Self {
        Self { counted: None }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((queued, bytes)) = &self.counted {
            queued.dec_by(*bytes);
        }
    }
}

impl Pressure {
    /// Backpressure with `config` (validated), reporting to `metrics`.
    pub(crate) fn new(config: PressureConfig, metrics: Arc<Metrics>) -> Self {
        let reason = |index: usize| RefusalLabels {
            reason: REFUSAL_REASONS[index],
        };
        let refused = [0, 1, 2].map(|index| {
            metrics
                .publish_refused
                .get_or_create(&reason(index))
                .clone()
        });
        let blocked = [0, 1, 2].map(|index| {
            metrics
                .publish_blocked
                .get_or_create(&reason(index))
                .clone()
        });
        metrics
            .disk_free_min_bytes
            .set(gauge_value(config.disk_free_bytes_min));
        metrics
            .data_dir_max_bytes
            .set(gauge_value(config.data_dir_bytes_max.unwrap_or(0)));
        metrics
            .publish_queue_max_bytes
            .set(gauge_value(config.publish_queue_bytes_max));
        Self {
            config,
            space: SpaceView::new(config.disk_free_bytes_min, config.data_dir_bytes_max),
            queued_bytes: metrics.publish_queued_bytes.clone(),
            refused,
            blocked,
            metrics,
            measure_now: Notify::new(),
            notices: std::sync::OnceLock::new(),
        }
    }

    /// Admits `events` for publishing, or refuses them: 429 past the queue's high-water
    /// mark, 507 when storage is short. Hold the admission until the publish is answered.
    pub(crate) fn admit(&self, events: &[Event]) -> Result<Admission, EngineError> {
        let bytes: u64 = events
            .iter()
            .map(|event| (event.json().len() + RECORD_OVERHEAD_BYTES) as u64)
            .sum();
        let counted = i64::try_from(bytes).unwrap_or(i64::MAX);
        let before = self.queued_bytes.inc_by(counted);
        // Invariant: the queue holds at most the mark, or one publish alone (which may be
        // larger: refusing it would refuse it forever).
        let max = gauge_value(self.config.publish_queue_bytes_max);
        if before > 0 && before.saturating_add(counted) > max {
            self.queued_bytes.dec_by(counted);
            self.refuse(OVERLOADED);
            return Err(EngineError::Publish(PublishError::Overloaded {
                queued_bytes: u64::try_from(before).unwrap_or(0),
                max_bytes: self.config.publish_queue_bytes_max,
            }));
        }
        let admission = Admission {
            counted: Some((self.queued_bytes.clone(), counted)),
        };
        self.unblock(OVERLOADED);
        if let Err(limit) = self.space.admit(bytes) {
            self.refuse(match limit {
                StorageLimit::DiskFree { .. } | StorageLimit::DeviceFull => DISK_FULL,
                StorageLimit::DataDirFull { .. } => DATA_DIR_FULL,
            });
            return Err(EngineError::Publish(PublishError::StorageFull { limit }));
        }
        Ok(admission)
    }

    fn refuse(&self, reason: usize) {
        self.refused[reason].inc();
        self.block(reason);
    }

    /// Reports refusals for a full disk or data directory and their end on `_keel.alerts`
    /// (an overload comes and goes with each request: its metric is the report).
    pub(crate) fn set_notices(&self, notices: Notices) {
        let _ = self.notices.set(notices);
    }

    fn report(&self, kind: &'static str, reason: usize) {
        if reason == OVERLOADED {
            return;
        }
        if let Some(notices) = self.notices.get() {
            // The figures now (the last measurement with what was admitted since), which
            // are what reached the limit or left it.
            let (free, stored) = self.space.estimate();
            let data = serde_json::json!({
                "reason": REFUSAL_REASONS[reason],
                "disk_free_bytes": free,
                "disk_free_bytes_min": self.config.disk_free_bytes_min,
                "data_dir_bytes": stored,
                "data_dir_bytes_max": self.config.data_dir_bytes_max,
            });
            notices.report(kind, REFUSAL_REASONS[reason], data);
        }
    }

    /// Marks publishing refused for `reason`, and says so once when it starts.
    fn block(&self, reason: usize) {
        if self.blocked[reason].set(1) == 0 {
            self.report("publish.refused", reason);
            let (free, stored) = self.space.estimate();
            tracing::warn!(
                reason = REFUSAL_REASONS[reason],
                disk_free_bytes = free,
                disk_free_bytes_min = self.config.disk_free_bytes_min,
                data_dir_bytes = stored,
                data_dir_bytes_max = self.config.data_dir_bytes_max,
                publish_queued_bytes = self.queued_bytes.get(),
                "publishing is refused until there is room again (see docs/configuration.md, backpressure)"
            );
        }
    }

    fn unblock(&self, reason: usize) {
        // A load first: the common case (not blocked) writes nothing shared.
        if self.blocked[reason].get() != 0 && self.blocked[reason].set(0) != 0 {
            self.report("publish.resumed", reason);
            tracing::info!(reason = REFUSAL_REASONS[reason], "publishing resumes");
        }
    }

    /// The storage reasons publishing is refused for now (not an overload, which comes and
    /// goes with each request).
    pub(crate) fn refusing(&self) -> Vec<String> {
        [DISK_FULL, DATA_DIR_FULL]
            .into_iter()
            .filter(|&reason| self.blocked[reason].get() != 0)
            .map(|reason| REFUSAL_REASONS[reason].to_owned())
            .collect()
    }

    /// Asks for a measurement of the disk soon: space was freed (retention, a delete).
    pub(crate) fn measure_soon(&self) {
        self.measure_now.notify_one();
    }

    /// Measures the disk (and the data directory, with a cap) and updates the view and the
    /// gauges. Blocking. A failed measurement keeps the last view and is logged.
    pub(crate) fn measure(&self, storage: &dyn Storage) {
        let measuring = self.space.begin_measure();
        let measured = storage.free_bytes().and_then(|free| {
            let stored = match self.config.data_dir_bytes_max {
                Some(_) => Some(storage.stored_bytes()?),
                None => None,
            };
            Ok((free, stored))
        });
        let (free, stored) = match measured {
            Ok(measured) => measured,
            Err(error) => {
                tracing::warn!(%error, "cannot measure the data directory's disk; keeping the last figures");
                self.space.abandon_measure(measuring);
                return;
            }
        };
        self.space.end_measure(free, stored);
        if let Some(free) = free {
            self.metrics.disk_free_bytes.set(gauge_value(free));
        }
        if let Some(stored) = stored {
            self.metrics.data_dir_bytes.set(gauge_value(stored));
        }
        for (reason, limit_reached) in [
            (DISK_FULL, self.space.disk_free_below_min()),
            (DATA_DIR_FULL, self.space.data_dir_at_cap()),
        ] {
            if limit_reached {
                self.block(reason);
            } else {
                self.unblock(reason);
            }
        }
    }

    /// Measures the disk every `disk_check_interval`, and soon after [`Pressure::measure_soon`],
    /// until the engine (which holds `storage`) is gone.
    pub(crate) fn spawn_measuring(self: &Arc<Self>, storage: std::sync::Weak<dyn Storage>) {
        let pressure = Arc::downgrade(self);
        let interval = self.config.disk_check_interval;
        tokio::spawn(async move {
            loop {
                let Some(waiting) = pressure.upgrade() else {
                    return;
                };
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = waiting.measure_now.notified() => {}
                }
                drop(waiting);
                let (Some(pressure), Some(storage)) = (pressure.upgrade(), storage.upgrade())
                else {
                    return;
                };
                let measured =
                    tokio::task::spawn_blocking(move || pressure.measure(&*storage)).await;
                if measured.is_err() {
                    return;
                }
            }
        });
    }
}

/// Checks a [`PressureConfig`] at engine start.
pub(crate) fn validate(config: &PressureConfig) -> Result<(), EngineError> {
    config
        .validate()
        .map_err(|detail| EngineError::Topic(TopicError::InvalidConfig { detail }))
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(count: usize, data_bytes: usize) -> Vec<Event> {
        (0..count)
            .map(|n| {
                let json = serde_json::json!({"specversion": "1.0", "id": n.to_string(),
                    "source": "s", "type": "t", "data": "x".repeat(data_bytes)});
                crate::event::parse_structured(json.to_string().as_bytes()).unwrap()
            })
            .collect()
    }

    fn pressure(config: PressureConfig) -> Pressure {
        Pressure::new(config, Arc::new(Metrics::new()))
    }

    // Goal: past the high-water mark a publish is refused as overloaded and counted; its
    // bytes leave the queue when refused, and an admitted publish's when it is answered;
    // a publish larger than the mark goes through alone. Method: admissions held and dropped
    // against a mark of about two events.
    #[test]
    fn queue_refuses_past_its_mark_and_drains_when_answered() {
        let one = events(1, 1000);
        let bytes = (one[0].json().len() + RECORD_OVERHEAD_BYTES) as u64;
        let pressure = pressure(PressureConfig {
            disk_free_bytes_min: 0,
            publish_queue_bytes_max: 2 * bytes,
            ..PressureConfig::default()
        });
        let first = pressure.admit(&one).unwrap();
        let second = pressure.admit(&one).unwrap();
        let error = pressure.admit(&one).err().unwrap();
        assert!(
            matches!(error, EngineError::Publish(PublishError::Overloaded { queued_bytes, .. }) if queued_bytes == 2 * bytes),
            "{error}"
        );
        assert_eq!(pressure.queued_bytes.get(), gauge_value(2 * bytes));
        assert_eq!(pressure.refused[OVERLOADED].get(), 1);
        assert_eq!(pressure.blocked[OVERLOADED].get(), 1);
        drop((first, second));
        assert_eq!(
            pressure.queued_bytes.get(),
            0,
            "answered publishes leave the queue"
        );
        let alone = pressure.admit(&events(3, 1000)).unwrap();
        assert_eq!(
            pressure.blocked[OVERLOADED].get(),
            0,
            "admitted again: not blocked"
        );
        assert!(
            pressure.admit(&one).is_err(),
            "the large one fills the queue"
        );
        drop(alone);
        assert!(Admission::unmetered().counted.is_none());
        assert_eq!(pressure.queued_bytes.get(), 0);
    }
}
