//! Notices: the one way a part of keel tells operators that something happened to it, as a
//! CloudEvent appended durably to the internal topic `_keel.alerts`
//! ([`keel_api::alerts::NOTICES_TOPIC`]). Anyone may subscribe a webhook to that topic (or
//! read it) like any other; only keel writes it.
//!
//! Alert rules emit `alert.firing` and `alert.resolved`. Other subsystems emit theirs through
//! the same handle, [`Notices::emit`] (or [`Notices::report`] in the background), with a kind
//! of `AREA.WHAT`: a circuit opening or closing (`circuit.opened`, `circuit.closed`), a
//! subscription paused by keel (`subscription.paused`), a supervised task failing
//! (`task.failing`, `task.failed`), publishing refused for a full disk and resuming
//! (`publish.refused`, `publish.resumed`). The event's `type` is `keel.` and the kind, its `source` is `/keel/` and
//! the area, its `subject` and `partitionkey` name what it is about (a rule, a
//! subscription), so one thing's notices stay in order. `docs/alerts.md` documents the
//! format.
//!
//! Inside the engine, whatever holds the topics (an `EmitTargets`, as every subscription
//! does) makes a handle with [`Notices::new`]; outside, [`crate::Engine::notices`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;

use keel_api::alerts::NOTICES_TOPIC;

use crate::clock::{format_rfc3339_ms, now_ms};
use crate::error::{EngineError, TopicError};
use crate::topic::{EmitTargets, PublishResult};

/// A handle that appends notices to `_keel.alerts`. Cheap to clone.
#[derive(Clone)]
pub struct Notices {
    writer: Writer,
    /// The reports waiting to be appended, in the order they were made. Invariant: one
    /// worker appends them, one at a time, so a handle family's reports land in that order
    /// (a circuit opening before the pause it led to). Started by the first report; it ends
    /// once every handle of the family is dropped.
    queue: Arc<OnceLock<mpsc::UnboundedSender<Report>>>,
}

/// What appends a notice; the worker holds it, not the queue.
#[derive(Clone)]
struct Writer {
    targets: EmitTargets,
    /// Makes event ids unique: a random number per handle family, then a sequence.
    run: u64,
    sequence: Arc<AtomicU64>,
}

/// A notice reported in the background.
struct Report {
    kind: &'static str,
    subject: String,
    data: serde_json::Value,
}

impl Notices {
    pub(crate) fn new(targets: EmitTargets) -> Self {
        Notices {
            writer: Writer {
                targets,
                run: fastrand::u64(..),
                sequence: Arc::new(AtomicU64::new(0)),
            },
            queue: Arc::new(OnceLock::new()),
        }
    }

    /// Appends a notice of `kind` (`AREA.WHAT`, such as `alert.firing`) about `subject`
    /// with `data`, and returns once it is durable (as any publish: fsynced by default). Fails
    /// when `_keel.alerts` does not exist (its creation at start failed: the data directory's
    /// `topics/` is damaged) or refuses writes. A caller on a path that must not wait spawns
    /// it; a notice is a report, so a failure is logged, never a reason to stop.
    pub async fn emit(
        &self,
        kind: &str,
        subject: &str,
        data: serde_json::Value,
    ) -> Result<PublishResult, EngineError> {
        self.writer.emit(kind, subject, data).await
    }

    /// Appends a notice in the background (see [`emit`](Self::emit)), after the reports
    /// made before it through this handle family, for callers that must not wait: a failure
    /// is logged. Call inside the runtime.
    pub(crate) fn report(&self, kind: &'static str, subject: &str, data: serde_json::Value) {
        let queue = self.queue.get_or_init(|| {
            let (sender, mut receiver) = mpsc::unbounded_channel::<Report>();
            let writer = self.writer.clone();
            tokio::spawn(async move {
                while let Some(report) = receiver.recv().await {
                    let Report { kind, subject, data } = report;
                    if let Err(error) = writer.emit(kind, &subject, data).await {
                        tracing::warn!(kind, subject, %error, "cannot append a notice to _keel.alerts");
                    }
                }
            });
            sender
        });
        let subject = subject.to_owned();
        // Fails only once the worker is gone, at shutdown.
        let _ = queue.send(Report {
            kind,
            subject,
            data,
        });
    }
}

impl Writer {
    async fn emit(
        &self,
        kind: &str,
        subject: &str,
        data: serde_json::Value,
    ) -> Result<PublishResult, EngineError> {
        let topic = self.targets.topic(NOTICES_TOPIC).ok_or_else(|| {
            EngineError::Topic(TopicError::NotFound {
                topic: NOTICES_TOPIC.to_owned(),
            })
        })?;
        let event = self.event(kind, subject, data)?;
        // Not metered: a notice that the disk is full must go out while publishing is refused
        // (it is a few hundred bytes, and the free-space minimum leaves room for it).
        let admission = crate::pressure::Admission::unmetered();
        let mut results = topic.publish(vec![event], admission).await?;
        Ok(results.remove(0))
    }

    /// The CloudEvent of a notice.
    fn event(
        &self,
        kind: &str,
        subject: &str,
        data: serde_json::Value,
    ) -> Result<crate::Event, EngineError> {
        let area = kind.split('.').next().unwrap_or(kind);
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let event = serde_json::json!({
            "specversion": "1.0",
            "id": format!("{:016x}-{sequence}", self.run),
            "source": format!("/keel/{area}"),
            "type": format!("keel.{kind}"),
            "subject": subject,
            "time": format_rfc3339_ms(now_ms()),
            "partitionkey": subject,
            "datacontenttype": "application/json",
            "data": data,
        });
        Ok(crate::event::from_value(event)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a notice is a valid CloudEvent with the documented attributes, and ids differ.
    #[test]
    fn a_notice_is_a_cloudevent() {
        let notices = Notices::new(EmitTargets {
            topics: Default::default(),
            event_bytes_max: 1024,
        });
        let data = serde_json::json!({"rule": "lag"});
        let first = notices
            .writer
            .event("alert.firing", "lag", data.clone())
            .unwrap();
        let second = notices.writer.event("alert.firing", "lag", data).unwrap();
        assert_ne!(first.id(), second.id());
        let json: serde_json::Value = serde_json::from_str(first.json()).unwrap();
        assert_eq!(json["type"], "keel.alert.firing");
        assert_eq!(json["source"], "/keel/alert");
        assert_eq!(json["subject"], "lag");
        assert_eq!(json["partitionkey"], "lag");
        assert_eq!(json["data"]["rule"], "lag");
    }
}
