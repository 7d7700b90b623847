//! The engine's alert rules: put, describe, list, delete (stored through the storage seam),
//! the internal topic `_keel.alerts`, and the task that evaluates every rule once per
//! `alert_evaluation_interval` and appends each transition there.

use std::sync::{Arc, Weak};
use std::time::Instant;

use keel_api::alerts::{AlertRule, AlertStatus, NOTICES_TOPIC};
use keel_api::topics::{Retention, TopicConfig};

use super::{Engine, Inner};
use crate::alerts::{AlertNotice, RulePut, validate_alert_name, validate_alert_rule};
use crate::clock::now_ms;
use crate::error::{AlertError, EngineError};
use crate::limits::ALERT_RULES_MAX;
use crate::metrics::AlertLabels;
use crate::notices::Notices;
use crate::storage::Storage;

/// How long `_keel.alerts` keeps notices.
const NOTICES_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

impl Engine {
    /// The handle that appends notices to `_keel.alerts` (see [`Notices`]).
    pub fn notices(&self) -> Notices {
        self.inner.notices.clone()
    }

    /// Creates or replaces an alert rule, stored durably. Putting the same rule again
    /// changes nothing; another rule replaces it, and its instances start over (firing ones
    /// are resolved, with a notice).
    pub async fn put_alert_rule(
        &self,
        name: &str,
        rule: AlertRule,
    ) -> Result<(RulePut, AlertStatus), EngineError> {
        validate_alert_name(name)?;
        validate_alert_rule(name, &rule)?;
        let _admin = self.inner.admin.lock().await;
        let (exists, count) = {
            let alerts = self.inner.alerts.lock().expect("alerts lock");
            (alerts.contains(name), alerts.len())
        };
        if !exists && count >= ALERT_RULES_MAX {
            return Err(EngineError::Alert(AlertError::TooMany {
                max: ALERT_RULES_MAX,
            }));
        }
        let unchanged = self
            .alert_status(name)
            .is_ok_and(|status| status.rule == rule);
        if !unchanged {
            let stored = rule.clone();
            self.blocking_storage(
                move |storage, name| storage.put_alert_rule(name, &stored),
                name,
            )
            .await?;
        }
        let (put, notices) =
            self.inner
                .alerts
                .lock()
                .expect("alerts lock")
                .put(name, rule, now_ms());
        self.emit_alert_notices(notices).await;
        if put != RulePut::Unchanged {
            tracing::info!(rule = name, ?put, "alert rule stored");
        }
        Ok((put, self.alert_status(name)?))
    }

    /// One rule with its instances.
    pub fn alert_status(&self, name: &str) -> Result<AlertStatus, EngineError> {
        let alerts = self.inner.alerts.lock().expect("alerts lock");
        alerts.status(name, now_ms()).ok_or_else(|| {
            EngineError::Alert(AlertError::NotFound {
                name: name.to_owned(),
            })
        })
    }

    /// Every rule with its instances, by name.
    pub fn list_alerts(&self) -> Vec<AlertStatus> {
        let alerts = self.inner.alerts.lock().expect("alerts lock");
        alerts.statuses(now_ms())
    }

    /// Deletes an alert rule; its firing instances resolve, with a notice.
    pub async fn delete_alert_rule(&self, name: &str) -> Result<(), EngineError> {
        let _admin = self.inner.admin.lock().await;
        self.alert_status(name)?;
        self.blocking_storage(|storage, name| storage.delete_alert_rule(name), name)
            .await?;
        let removed = self
            .inner
            .alerts
            .lock()
            .expect("alerts lock")
            .remove(name, now_ms());
        self.inner.metrics.alerts_firing.remove(&AlertLabels {
            rule: name.to_owned(),
        });
        self.emit_alert_notices(removed.unwrap_or_default()).await;
        tracing::info!(rule = name, "alert rule deleted");
        Ok(())
    }

    /// Evaluates every rule now and appends the transitions to `_keel.alerts` (the task does
    /// this once per interval).
    pub async fn evaluate_alerts(&self) {
        let notices = self.inner.evaluate_alerts();
        self.emit_alert_notices(notices).await;
    }

    async fn emit_alert_notices(&self, notices: Vec<AlertNotice>) {
        emit(&self.inner.notices, notices).await;
    }

    /// Creates `_keel.alerts` if it is missing. A failure (a damaged `topics/`) is logged:
    /// keel serves without notices rather than not at all.
    pub(super) async fn create_notices_topic(&self) {
        if self.topic(NOTICES_TOPIC).is_ok() {
            return;
        }
        let config = TopicConfig {
            retention: Retention {
                max_age: Some(NOTICES_RETENTION),
                max_bytes: None,
            },
            ..TopicConfig::default()
        };
        if let Err(error) = self.create_topic_named(NOTICES_TOPIC, config).await {
            tracing::error!(topic = NOTICES_TOPIC, %error, "cannot create the notices topic; alerts are evaluated but not appended");
        }
    }

    /// Loads the stored rules (a rule that cannot be read is logged and left out) and starts
    /// the evaluation task.
    pub(super) async fn start_alerts(&self) -> Result<(), EngineError> {
        let storage: Arc<dyn Storage> = self.inner.storage.clone();
        let stored = tokio::task::spawn_blocking(move || storage.alert_rules())
            .await
            .map_err(|_| EngineError::ShuttingDown)??;
        {
            let mut alerts = self.inner.alerts.lock().expect("alerts lock");
            for stored in stored {
                let rule = stored.rule.and_then(|rule| {
                    validate_alert_rule(&stored.name, &rule).map_err(|error| error.to_string())?;
                    Ok(rule)
                });
                match rule {
                    Ok(rule) => {
                        alerts.put(&stored.name, rule, now_ms());
                    }
                    Err(error) => {
                        tracing::error!(rule = %stored.name, %error, "ignoring an alert rule that cannot be read; put it again or delete it");
                    }
                }
            }
        }
        spawn_evaluation(Arc::downgrade(&self.inner));
        Ok(())
    }
}

impl Inner {
    /// One evaluation of every rule: reads the metrics, steps every rule, updates the alert
    /// metrics. Returns the transitions.
    fn evaluate_alerts(&self) -> Vec<AlertNotice> {
        if self.alerts.lock().expect("alerts lock").is_empty() {
            // Nothing reads the metrics: no encoding, no gauge refresh.
            return Vec::new();
        }
        let started = Instant::now();
        for subscription in self.subscriptions_snapshot() {
            // Refreshes its gauges (lag, in flight…), as a scrape does.
            subscription.info();
        }
        let mut text = String::new();
        if let Err(error) = self.metrics.encode(&mut text) {
            tracing::error!(%error, "metrics encoding failed; alerts not evaluated");
            return Vec::new();
        }
        let mut alerts = self.alerts.lock().expect("alerts lock");
        let notices = alerts.evaluate(&text, now_ms());
        for (rule, firing) in alerts.firing() {
            let labels = AlertLabels {
                rule: rule.to_owned(),
            };
            self.metrics
                .alerts_firing
                .get_or_create(&labels)
                .set(firing as i64);
        }
        drop(alerts);
        self.metrics
            .alert_evaluation_seconds
            .observe(started.elapsed().as_secs_f64());
        notices
    }
}

/// Evaluates every rule once per interval while the engine lives, under the supervisor
/// (`alerts/evaluation`): a panic restarts it; one that keeps failing stops evaluation (the
/// rules' state stays as it was, and `GET /v1/tasks` says why).
fn spawn_evaluation(weak: Weak<Inner>) {
    let Some(inner) = weak.upgrade() else { return };
    let interval = inner.config.alert_evaluation_interval;
    let supervisor = inner.supervisor.clone();
    drop(inner);
    let give_up = Box::new(|reason: String| {
        tracing::error!(%reason, "alert rules are no longer evaluated");
    });
    // Runs while the engine lives; aborting it is not needed (it ends with the engine).
    drop(
        supervisor.spawn("alerts/evaluation".to_owned(), give_up, move || {
            evaluate_every(weak.clone(), interval)
        }),
    );
}

async fn evaluate_every(weak: Weak<Inner>, interval: std::time::Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        if *inner.closing.borrow() {
            return;
        }
        let notices = inner.evaluate_alerts();
        let handle = inner.notices.clone();
        drop(inner);
        emit(&handle, notices).await;
    }
}

/// Appends each notice to `_keel.alerts`, in order; a failure is logged (a notice is a
/// report, never a reason to stop).
async fn emit(notices: &Notices, alerts: Vec<AlertNotice>) {
    for alert in alerts {
        let (kind, rule) = (alert.kind(), alert.rule.clone());
        let (labels, value) = (&alert.data["labels"], &alert.data["value"]);
        if alert.firing {
            tracing::warn!(rule = %rule, %labels, %value, "alert firing");
        } else {
            tracing::info!(rule = %rule, %labels, %value, "alert resolved");
        }
        if let Err(error) = notices.emit(kind, &rule, alert.data).await {
            tracing::error!(rule = %rule, kind, %error, "cannot append the alert to {NOTICES_TOPIC}");
        }
    }
}
