//! Updating a subscription in place: a `PUT` of another spec on an existing name.
//!
//! Mutable members (the sink: `url`, `endpoints`, `strategy`, `health_check`,
//! `outlier_detection`, `pause_after`, `secret`; and `max_in_flight`, `ack_timeout`, `retry`,
//! `circuit_breaker`, `rate_limit`) change how events are delivered, never which events or
//! in what order: the stored position, dead letters and state stay right. Immutable ones
//! ([`IMMUTABLE_MEMBERS`]) are refused with [`SubscriptionError::Conflict`] naming them.
//!
//! The update is a restart of one subscription: under the admin lock the running one is
//! stopped (its last checkpoint written), the engine waits until nothing holds its logs, the
//! new spec replaces the stored one, and the subscription is opened from its logs with it, as
//! a process restart would. Events in flight at the stop are delivered again (at least once);
//! nothing acknowledged is.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::subscriptions::SubscriptionCreated;
use super::{Created, Engine};
use crate::clock::{format_rfc3339_ms, now_ms};
use crate::error::{EngineError, SubscriptionError};
use crate::limits::SECRET_OVERLAP_MAX;
use crate::storage::Storage;
use crate::subscription::spec::{
    Delivery, NamedPosition, SinkSpec, StartPosition, SubscriptionSpec,
};
use crate::subscription::{Subscription, task_prefix};
use crate::topic::Topic;
use crate::webhook::WebhookSecret;
use keel_api::subscriptions::PreviousSecret;

/// What a secret rotation did.
#[derive(Debug, Clone)]
pub struct SecretRotated {
    /// The new secret: shown in this answer only.
    pub secret: WebhookSecret,
    /// When the previous secret stops signing (RFC 3339); none without an overlap.
    pub previous_secret_until: Option<String>,
    /// The subscription after the rotation.
    pub info: crate::subscription::SubscriptionInfo,
}

/// Members an update may not change, as the spec spells them: `topic` (the position is that
/// topic's offsets), `filters` (events the old filters skipped stay skipped, and the dead
/// letters hold events of the old ones: a new filter would hold for part of the topic only),
/// `ordering` (per-key order is kept in the delivery state and its checkpoint), `stateful`
/// (the state table exists or not), `start` (only where a new subscription begins: a change
/// is refused rather than ignored, and seek is the way to move), and the delivery mode
/// (`sink` given or not: pull ack ids and attached handlers, or a sink).
const IMMUTABLE_MEMBERS: [&str; 6] = [
    "topic",
    "filters",
    "ordering",
    "stateful",
    "start",
    DELIVERY_MODE,
];

/// Longest wait for a stopped subscription's logs to be released by requests that still
/// hold it (a long poll ends at the stop; a dead-letter page or a state read is short).
const RELEASE_WAIT: Duration = Duration::from_secs(10);

impl Engine {
    /// Answers a create on an existing name: unchanged, updated in place, or refused.
    /// Called under the admin lock.
    pub(super) async fn update_subscription(
        &self,
        existing: Arc<Subscription>,
        asked: SubscriptionSpec,
        topic: Arc<Topic>,
    ) -> Result<SubscriptionCreated, EngineError> {
        let name = existing.name().to_owned();
        let spec = keep_unset_members(existing.spec(), asked);
        let changed = changed_members(existing.spec(), &spec);
        if changed.is_empty() {
            return Ok(SubscriptionCreated {
                created: Created::Existing,
                info: existing.info(),
                secret: None,
                changed,
            });
        }
        let immutable: Vec<String> = changed
            .iter()
            .filter(|member| IMMUTABLE_MEMBERS.contains(&member.as_str()))
            .cloned()
            .collect();
        if !immutable.is_empty() {
            return Err(EngineError::Subscription(SubscriptionError::Conflict {
                name,
                members: immutable,
            }));
        }
        let info = self.restart_with(existing, spec, topic).await?;
        tracing::info!(subscription = %name, changed = %changed.join(", "), "updated subscription in place");
        Ok(SubscriptionCreated {
            created: Created::Updated,
            info,
            secret: None,
            changed,
        })
    }

    /// Rotates a push subscription's signing secret: `secret` (or a generated one) signs
    /// from now on, and the current one keeps signing beside it for `overlap` (none when
    /// zero), so a receiver can switch without refusing a request. A previous secret still in
    /// its overlap is dropped: at most two sign. Stored in the spec, so it holds across
    /// restarts and on any node; the subscription restarts as for any update.
    pub async fn rotate_secret(
        &self,
        name: &str,
        overlap: Duration,
        secret: Option<WebhookSecret>,
    ) -> Result<SecretRotated, EngineError> {
        let invalid =
            |detail: String| EngineError::Subscription(SubscriptionError::Invalid { detail });
        if overlap > SECRET_OVERLAP_MAX {
            return Err(invalid(format!(
                "overlap must be at most {}",
                crate::duration::format(SECRET_OVERLAP_MAX)
            )));
        }
        let _admin = self.inner.admin.lock().await;
        let existing = self.subscription(name)?;
        let mut spec = existing.spec().clone();
        let Delivery::Push(sink) = &mut spec.delivery else {
            return Err(EngineError::Subscription(
                SubscriptionError::WrongDeliveryMode {
                    detail: format!(
                        "subscription {name:?} is pulled: only a push sink's requests are signed"
                    ),
                },
            ));
        };
        let secret = secret.unwrap_or_else(WebhookSecret::generate);
        let previous = sink.secret.replace(secret.clone());
        let overlap_ms = i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX);
        let until =
            (!overlap.is_zero()).then(|| format_rfc3339_ms(now_ms().saturating_add(overlap_ms)));
        sink.previous_secret = previous
            .zip(until.clone())
            .map(|(secret, until)| PreviousSecret {
                secret: Some(secret),
                until,
            });
        let topic = self.topic(existing.topic_name())?;
        let info = self.restart_with(existing, spec, topic).await?;
        tracing::info!(subscription = %name, previous_secret_until = until.as_deref().unwrap_or("none"), "rotated the signing secret");
        Ok(SecretRotated {
            secret,
            previous_secret_until: until,
            info,
        })
    }

    /// Stops `existing`, stores `spec` as its spec and opens it again from its logs. While it
    /// runs, requests for the subscription answer 503 (it is being updated). When the old
    /// one does not release its logs, or the new one cannot be opened, the subscription
    /// refuses service with the reason, as one that failed at start does.
    async fn restart_with(
        &self,
        existing: Arc<Subscription>,
        spec: SubscriptionSpec,
        topic: Arc<Topic>,
    ) -> Result<crate::subscription::SubscriptionInfo, EngineError> {
        let name = existing.name().to_owned();
        let old_endpoints = endpoint_urls(&existing.info());
        self.set_unavailable(&name, "it is being updated; retry shortly".to_owned());
        let released = existing.release_watch();
        // In-process handlers drain their calls and move to the updated subscription.
        let handlers = existing.detach_handlers().await;
        existing.stop().await;
        drop(existing);
        if !released.released(RELEASE_WAIT).await {
            let reason = "it was stopped for an update, but a request still held its logs; \
                          its spec is unchanged: restart keel, then update it again";
            self.set_unavailable(&name, reason.to_owned());
            return Err(unavailable(&name, reason));
        }
        let replace = |storage: &dyn Storage, name: &str, spec: &SubscriptionSpec| {
            storage.replace_subscription_spec(name, spec)
        };
        let opened = self.store_and_open(&name, spec, topic, replace).await;
        let subscription = match opened {
            Ok(subscription) => subscription,
            Err(error) => {
                let reason = format!(
                    "it could not be opened after an update ({error}); fix its files and \
                     restart, or delete it"
                );
                tracing::error!(subscription = %name, %error, "subscription refuses service");
                self.set_unavailable(&name, reason);
                return Err(error);
            }
        };
        // Failures of the old tasks say nothing about the new ones.
        self.inner.supervisor.forget(&task_prefix(&name));
        subscription.start(&self.inner.supervisor);
        subscription.reattach_handlers(handlers);
        let info = subscription.info();
        let kept = endpoint_urls(&info);
        let gone: Vec<String> = old_endpoints
            .into_iter()
            .filter(|url| !kept.contains(url))
            .collect();
        self.inner.metrics.remove_endpoints(&name, &gone);
        self.inner
            .failed_subscriptions
            .write()
            .expect("lock")
            .remove(&name);
        self.inner
            .subscriptions
            .write()
            .expect("subscriptions lock")
            .insert(name, Arc::new(subscription));
        Ok(info)
    }

    /// Takes `name` out of the running subscriptions: it answers 503 with `reason`.
    fn set_unavailable(&self, name: &str, reason: String) {
        self.inner
            .subscriptions
            .write()
            .expect("subscriptions lock")
            .remove(name);
        self.inner
            .failed_subscriptions
            .write()
            .expect("lock")
            .insert(name.to_owned(), reason);
    }
}

fn unavailable(name: &str, reason: &str) -> EngineError {
    EngineError::Subscription(SubscriptionError::Unavailable {
        name: name.to_owned(),
        reason: reason.to_owned(),
    })
}

/// The asked spec with what it leaves out taken from the stored one: a start left out keeps
/// the stored start, and a push sink without a secret keeps the stored secret and the stored
/// previous secret (describe never shows them, so a client that re-sends what it described
/// must not rotate them); a previous secret given without its secret (as describe shows it)
/// is the stored one, and none when none is stored.
fn keep_unset_members(stored: &SubscriptionSpec, mut asked: SubscriptionSpec) -> SubscriptionSpec {
    if asked.start == StartPosition::Default {
        asked.start = stored.start.clone();
    }
    if let (Delivery::Push(asked_sink), Delivery::Push(stored_sink)) =
        (&mut asked.delivery, &stored.delivery)
    {
        let previous_unknown = |sink: &SinkSpec| {
            sink.previous_secret
                .as_ref()
                .is_some_and(|previous| previous.secret.is_none())
        };
        if asked_sink.secret.is_none() {
            asked_sink.secret = stored_sink.secret.clone();
            if asked_sink.previous_secret.is_none() {
                asked_sink.previous_secret = stored_sink.previous_secret.clone();
            }
        }
        if previous_unknown(asked_sink) {
            asked_sink.previous_secret = stored_sink.previous_secret.clone();
        }
    }
    asked
}

/// The members that differ, as the spec spells them, in alphabetical order; a push sink's
/// members one by one (`sink.url`), and a sink given or not as the delivery mode. A start
/// left out is `latest` (describe shows it so). Compared as the specs' JSON, so a member added
/// to the spec is compared without a change here.
fn changed_members(stored: &SubscriptionSpec, asked: &SubscriptionSpec) -> Vec<String> {
    let (stored, asked) = (spec_members(stored), spec_members(asked));
    let mut changed = Vec::new();
    for (member, old, new) in differing(&stored, &asked) {
        match (member, old, new) {
            ("sink", Some(Value::Object(old)), Some(Value::Object(new))) => {
                let members = differing(old, new).map(|(member, ..)| format!("sink.{member}"));
                changed.extend(members);
            }
            ("sink", ..) => changed.push(DELIVERY_MODE.to_owned()),
            _ => changed.push(member.to_owned()),
        }
    }
    changed
}

/// How [`IMMUTABLE_MEMBERS`] names a change between a sink and none.
const DELIVERY_MODE: &str = "sink (the delivery mode)";

/// A spec's members as JSON, `null` ones left out (a sink's secret, a pull spec's sink) and
/// the start that describe shows for one left out.
fn spec_members(spec: &SubscriptionSpec) -> Map<String, Value> {
    let mut spec = spec.clone();
    if spec.start == StartPosition::Default {
        spec.start = StartPosition::Named(NamedPosition::Latest);
    }
    match serde_json::to_value(&spec).expect("a spec serialises") {
        Value::Object(members) => members,
        other => unreachable!("a spec serialises as an object, not {other}"),
    }
}

/// The members whose values differ between two objects (one absent counts as `null`), with
/// both values, in key order.
fn differing<'a>(
    old: &'a Map<String, Value>,
    new: &'a Map<String, Value>,
) -> impl Iterator<Item = (&'a str, Option<&'a Value>, Option<&'a Value>)> {
    let keys: BTreeSet<&str> = old.keys().chain(new.keys()).map(String::as_str).collect();
    keys.into_iter().filter_map(|key| {
        let (before, after) = (old.get(key), new.get(key));
        let null = |value: Option<&Value>| value.is_none_or(Value::is_null);
        let same = before == after || (null(before) && null(after));
        (!same).then_some((key, before, after))
    })
}

/// A push subscription's endpoint URLs as its metrics label them (describe's form).
fn endpoint_urls(info: &crate::subscription::SubscriptionInfo) -> Vec<String> {
    info.endpoints
        .iter()
        .map(|endpoint| endpoint.url.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: Value) -> SubscriptionSpec {
        serde_json::from_value(value).expect("a valid spec")
    }

    // Goal: an update names exactly the members that differ, a push sink's one by one, and
    // what a client leaves out (start, the secret) keeps the stored value instead of counting
    // as a change. Method: a stored push spec against a table of asked specs.
    #[test]
    fn changed_members_names_what_differs_and_keeps_what_is_left_out() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let stored = spec(json!({"topic": "t", "start": "earliest",
            "sink": {"url": "http://a.test/", "secret": secret}}));
        let cases = [
            (
                json!({"topic": "t", "sink": {"url": "http://a.test/"}}),
                vec![],
            ),
            (
                json!({"topic": "t", "sink": {"url": "http://b.test/"}, "max_in_flight": 5}),
                vec!["max_in_flight", "sink.url"],
            ),
            (
                json!({"topic": "t", "sink": {"url": "http://a.test/",
                    "secret": "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}),
                vec!["sink.secret"],
            ),
            (
                json!({"topic": "u", "ordering": "key", "start": "latest"}),
                vec!["ordering", DELIVERY_MODE, "start", "topic"],
            ),
        ];
        for (asked, expected) in cases {
            let asked = keep_unset_members(&stored, spec(asked.clone()));
            assert_eq!(changed_members(&stored, &asked), expected, "{asked:?}");
        }
    }
}
