//! The engine's Prometheus metrics, registered once and updated on the hot paths with atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::borrow::Cow;

/// Labels of per-topic metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    /// The topic.
    pub topic: String,
}

/// Labels of per-partition metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// The topic.
    pub topic: String,
    /// The partition number.
    pub partition: String,
}

impl PartitionLabels {
    pub(crate) fn new(topic: &str, partition: u32) -> Self {
        Self {
            topic: topic.to_owned(),
            partition: partition.to_string(),
        }
    }
}

/// Labels of per-subscription metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    /// The subscription.
    pub subscription: String,
}

/// Labels of per-endpoint metrics of a push sink.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The subscription.
    pub subscription: String,
    /// The endpoint's URL (a password in it redacted).
    pub endpoint: String,
}

/// Labels of per-task metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// The supervised task's name (`subscription/billing/dispatcher`).
    pub task: String,
}

/// Labels of per-alert-rule metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// The rule.
    pub rule: String,
}

/// Every attempt outcome label.
pub const ATTEMPT_OUTCOMES: [&str; 7] = [
    "acked",
    "applied_before",
    "failed",
    "rejected",
    "timed_out",
    "nacked",
    "dead_lettered",
];

/// Labels of delivery attempts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// The subscription.
    pub subscription: String,
    /// `acked`, `failed`, `rejected`, `timed_out`, `nacked` or `dead_lettered`.
    pub outcome: &'static str,
}

/// Every reason a publish is refused for by backpressure.
pub const REFUSAL_REASONS: [&str; 3] = ["disk_full", "data_dir_full", "overloaded"];

/// Labels of publishes refused by backpressure.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `disk_full` (free space below `disk_free_bytes_min`), `data_dir_full` (the data
    /// directory at `data_dir_bytes_max`) or `overloaded` (the publish queue at
    /// `publish_queue_bytes_max`).
    pub reason: &'static str,
}

/// A gauge of a fractional value (seconds, a share).
pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

fn delivery_histogram() -> Histogram {
    // 100 µs to about 1.8 h: a local push takes under a millisecond, a retried event hours.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 26))
}

fn latency_histogram() -> Histogram {
    // 25 µs to about 0.8 s: fsyncs here take 100–300 µs, a loaded append a few ms.
    Histogram::new(exponential_buckets(0.000_025, 2.0, 16))
}

fn records_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

/// Declares the engine's metrics once: each one's field (with its documentation), how it is
/// made, and the name, help and unit it is registered under.
macro_rules! metrics {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $type:ty = $make:expr => $name:literal, $help:literal $(, $unit:expr)?;
    )*) => {
        /// All engine metrics.
        #[derive(Debug)]
        pub struct Metrics {
            registry: Registry,
            $(
                $(#[doc = $doc])*
                pub $field: $type,
            )*
        }

        impl Metrics {
            /// Registers every metric.
            pub fn new() -> Self {
                Self::for_node(None)
            }

            /// Registers every metric; in a cluster, each carries the label `node` with this
            /// node's id.
            pub fn for_node(node: Option<&str>) -> Self {
                let labels = node.map(|node| (Cow::Borrowed("node"), Cow::Owned(node.to_owned())));
                let mut registry = Registry::with_prefix_and_labels("keel", labels.into_iter());
                $(
                    let $field: $type = $make;
                    let unit: Option<Unit> = None $(.or(Some($unit)))?;
                    match unit {
                        Some(unit) => {
                            registry.register_with_unit($name, $help, unit, $field.clone())
                        }
                        None => registry.register($name, $help, $field.clone()),
                    }
                )*
                Self { registry, $($field),* }
            }
        }
    };
}

metrics! {
    /// Events appended by publishes (duplicates not counted).
    publish_events: Family<TopicLabels, Counter> = Family::default()
        => "publish_events", "Events appended by publishes";
    /// Bytes of events appended by publishes.
    publish_bytes: Family<TopicLabels, Counter> = Family::default()
        => "publish", "Bytes of events appended by publishes", Unit::Bytes;
    /// Publishes answered as duplicates.
    publish_duplicates: Family<TopicLabels, Counter> = Family::default()
        => "publish_duplicates", "Published events answered as duplicates";
    /// Time from an append request entering a partition's queue to its events being durable.
    append_seconds: Family<TopicLabels, Histogram, fn() -> Histogram> =
        Family::new_with_constructor(latency_histogram)
        => "append",
        "Time from an append request entering a partition queue to its events being durable",
        Unit::Seconds;
    /// Time of one group commit: the write and the fsync of every record in it.
    fsync_seconds: Family<TopicLabels, Histogram, fn() -> Histogram> =
        Family::new_with_constructor(latency_histogram)
        => "fsync", "Time of one group commit: write and fsync", Unit::Seconds;
    /// Records per group commit.
    commit_records: Family<TopicLabels, Histogram, fn() -> Histogram> =
        Family::new_with_constructor(records_histogram)
        => "commit_records", "Records per group commit";
    /// Bytes on disk per partition.
    partition_bytes: Family<PartitionLabels, Gauge> = Family::default()
        => "partition_size", "Bytes on disk per partition", Unit::Bytes;
    /// First offset kept per partition.
    partition_start_offset: Family<PartitionLabels, Gauge> = Family::default()
        => "partition_start_offset", "First offset kept per partition";
    /// Next offset per partition.
    partition_next_offset: Family<PartitionLabels, Gauge> = Family::default()
        => "partition_next_offset", "Next offset per partition";
    /// 1 while a partition refuses service (corrupt log or failed write).
    partition_unavailable: Family<PartitionLabels, Gauge> = Family::default()
        => "partition_unavailable", "1 while a partition refuses service";
    /// Dedupe entries forgotten before their window ended because the table was full.
    dedupe_evicted_early: Family<TopicLabels, Counter> = Family::default()
        => "dedupe_evicted_early", "Dedupe entries forgotten before their window ended";
    /// Bytes cut from torn tails by recovery since start.
    recovery_truncated_bytes: Counter = Counter::default()
        => "recovery_truncated", "Bytes cut from torn log tails by recovery", Unit::Bytes;
    /// Free bytes of the file system holding the data directory, at the last check.
    disk_free_bytes: Gauge = Gauge::default()
        => "disk_free", "Free bytes of the disk holding the data directory, at the last check",
        Unit::Bytes;
    /// The free space below which publishing is refused (`disk_free_bytes_min`).
    disk_free_min_bytes: Gauge = Gauge::default()
        => "disk_free_min", "Free space below which publishing is refused", Unit::Bytes;
    /// Bytes under the data directory at the last check (measured only with a cap).
    data_dir_bytes: Gauge = Gauge::default()
        => "data_dir", "Bytes under the data directory at the last check (with a cap only)",
        Unit::Bytes;
    /// The data directory's cap (`data_dir_bytes_max`); 0 without one.
    data_dir_max_bytes: Gauge = Gauge::default()
        => "data_dir_max", "The data directory's cap; 0 without one", Unit::Bytes;
    /// Bytes of published events admitted and not yet answered (queued or being written).
    publish_queued_bytes: Gauge = Gauge::default()
        => "publish_queued", "Bytes of published events waiting to be written", Unit::Bytes;
    /// The publish queue's high-water mark (`publish_queue_bytes_max`).
    publish_queue_max_bytes: Gauge = Gauge::default()
        => "publish_queue_max", "High-water mark of the publish queue", Unit::Bytes;
    /// Publishes refused by backpressure, by reason.
    publish_refused: Family<RefusalLabels, Counter> = Family::default()
        => "publish_refused", "Publishes refused by backpressure, by reason";
    /// 1 while publishing is refused for a reason (disk, cap: from the last check;
    /// overloaded: from a refusal until the next publish admitted).
    publish_blocked: Family<RefusalLabels, Gauge> = Family::default()
        => "publish_blocked", "1 while publishing is refused for this reason";
    /// Events published and not yet done per subscription (acknowledged or dead-lettered).
    subscription_lag: Family<SubscriptionLabels, Gauge> = Family::default()
        => "subscription_lag", "Events published and not yet acknowledged or dead-lettered";
    /// Events delivered and not yet acknowledged per subscription.
    subscription_in_flight: Family<SubscriptionLabels, Gauge> = Family::default()
        => "subscription_in_flight", "Events delivered and not yet acknowledged";
    /// Entries in each subscription's dead-letter queue.
    subscription_dlq_depth: Family<SubscriptionLabels, Gauge> = Family::default()
        => "subscription_dlq_depth", "Entries in the dead-letter queue";
    /// A push subscription's circuit: 0 closed, 1 open, 2 half-open.
    subscription_circuit_state: Family<SubscriptionLabels, Gauge> = Family::default()
        => "subscription_circuit_state", "Push sink circuit: 0 closed, 1 open, 2 half-open";
    /// A push sink's outages: times its circuit opened from closed or its last available
    /// endpoint left.
    subscription_sink_outages: Family<SubscriptionLabels, Counter> = Family::default()
        => "subscription_sink_outages",
        "Push sink outages: times the circuit opened or no endpoint was left available";
    /// A push sink's time in outages (circuit open or half-open, or no endpoint available)
    /// since start.
    subscription_sink_down_seconds: Family<SubscriptionLabels, FloatGauge> = Family::default()
        => "subscription_sink_down", "Push sink time in outages since start", Unit::Seconds;
    /// A push sink's availability since start: MTBF / (MTBF + MTTR).
    subscription_sink_availability: Family<SubscriptionLabels, FloatGauge> = Family::default()
        => "subscription_sink_availability", "Push sink availability: MTBF / (MTBF + MTTR)";
    /// A push sink's mean time between failures (set once it had an outage).
    subscription_sink_mtbf_seconds: Family<SubscriptionLabels, FloatGauge> = Family::default()
        => "subscription_sink_mtbf", "Push sink mean time between failures", Unit::Seconds;
    /// A push sink's mean time to recover (set once it had an outage).
    subscription_sink_mttr_seconds: Family<SubscriptionLabels, FloatGauge> = Family::default()
        => "subscription_sink_mttr", "Push sink mean time to recover", Unit::Seconds;
    /// The last outage's time to detect: first failure after a success to the circuit opening.
    subscription_sink_detect_seconds: Family<SubscriptionLabels, FloatGauge> = Family::default()
        => "subscription_sink_time_to_detect",
        "Push sink's last outage: first failure to circuit open", Unit::Seconds;
    /// 1 while an endpoint of a push sink takes deliveries (healthy and not ejected).
    subscription_endpoint_available: Family<EndpointLabels, Gauge> = Family::default()
        => "subscription_endpoint_available",
        "1 while the sink's endpoint is available: healthy and not ejected";
    /// An endpoint's outages: times it was ejected or found unhealthy.
    subscription_endpoint_outages: Family<EndpointLabels, Counter> = Family::default()
        => "subscription_endpoint_outages",
        "Endpoint outages: times it was ejected or found unhealthy";
    /// An endpoint's time in outages since start.
    subscription_endpoint_down_seconds: Family<EndpointLabels, FloatGauge> = Family::default()
        => "subscription_endpoint_down", "Endpoint time in outages since start", Unit::Seconds;
    /// An endpoint's availability since start: MTBF / (MTBF + MTTR).
    subscription_endpoint_availability: Family<EndpointLabels, FloatGauge> = Family::default()
        => "subscription_endpoint_availability", "Endpoint availability: MTBF / (MTBF + MTTR)";
    /// An endpoint's mean time between failures (set once it had an outage).
    subscription_endpoint_mtbf_seconds: Family<EndpointLabels, FloatGauge> = Family::default()
        => "subscription_endpoint_mtbf", "Endpoint mean time between failures", Unit::Seconds;
    /// An endpoint's mean time to recover (set once it had an outage).
    subscription_endpoint_mttr_seconds: Family<EndpointLabels, FloatGauge> = Family::default()
        => "subscription_endpoint_mttr", "Endpoint mean time to recover", Unit::Seconds;
    /// An endpoint's last outage's time to detect: first failure to ejection or verdict.
    subscription_endpoint_detect_seconds: Family<EndpointLabels, FloatGauge> = Family::default()
        => "subscription_endpoint_time_to_detect",
        "Endpoint's last outage: first failure to ejection or unhealthy verdict", Unit::Seconds;
    /// 1 while a subscription is paused.
    subscription_paused: Family<SubscriptionLabels, Gauge> = Family::default()
        => "subscription_paused", "1 while the subscription is paused";
    /// Delivery attempts by outcome.
    subscription_attempts: Family<AttemptLabels, Counter> = Family::default()
        => "subscription_attempts", "Delivery attempts by outcome";
    /// Time from publish to acknowledgement.
    subscription_delivery_seconds: Family<SubscriptionLabels, Histogram, fn() -> Histogram> =
        Family::new_with_constructor(delivery_histogram)
        => "subscription_delivery", "Time from publish to acknowledgement", Unit::Seconds;
    /// Panics of supervised tasks (each followed by a restart, or by giving up).
    task_failures: Family<TaskLabels, Counter> = Family::default()
        => "task_failures", "Panics of supervised engine tasks";
    /// 1 once a supervised task kept failing and was not restarted again.
    task_failed: Family<TaskLabels, Gauge> = Family::default()
        => "task_failed", "1 once a supervised task kept failing and is no longer restarted";
    /// Firing instances per alert rule.
    alerts_firing: Family<AlertLabels, Gauge> = Family::default()
        => "alerts_firing", "Firing instances per alert rule";
    /// Time of one evaluation of every alert rule.
    alert_evaluation_seconds: Histogram = latency_histogram()
        => "alert_evaluation", "Time of one evaluation of every alert rule", Unit::Seconds;
}

impl Metrics {
    /// Forgets the metrics of a deleted subscription, whose sink had `endpoints` (URLs as
    /// describe shows them).
    pub(crate) fn remove_subscription(&self, name: &str, endpoints: &[String]) {
        self.remove_endpoints(name, endpoints);
        let labels = SubscriptionLabels {
            subscription: name.to_owned(),
        };
        self.subscription_lag.remove(&labels);
        self.subscription_in_flight.remove(&labels);
        self.subscription_dlq_depth.remove(&labels);
        self.subscription_circuit_state.remove(&labels);
        self.subscription_sink_outages.remove(&labels);
        self.subscription_sink_down_seconds.remove(&labels);
        self.subscription_sink_availability.remove(&labels);
        self.subscription_sink_mtbf_seconds.remove(&labels);
        self.subscription_sink_mttr_seconds.remove(&labels);
        self.subscription_sink_detect_seconds.remove(&labels);
        self.subscription_paused.remove(&labels);
        self.subscription_delivery_seconds.remove(&labels);
        for outcome in ATTEMPT_OUTCOMES {
            self.subscription_attempts.remove(&AttemptLabels {
                subscription: name.to_owned(),
                outcome,
            });
        }
    }

    /// Forgets the per-endpoint metrics of a subscription's `endpoints` (URLs as describe
    /// shows them): it was deleted, or an update took them out of its sink.
    pub(crate) fn remove_endpoints(&self, name: &str, endpoints: &[String]) {
        for endpoint in endpoints {
            let labels = EndpointLabels {
                subscription: name.to_owned(),
                endpoint: endpoint.clone(),
            };
            self.subscription_endpoint_available.remove(&labels);
            self.subscription_endpoint_outages.remove(&labels);
            self.subscription_endpoint_down_seconds.remove(&labels);
            self.subscription_endpoint_availability.remove(&labels);
            self.subscription_endpoint_mtbf_seconds.remove(&labels);
            self.subscription_endpoint_mttr_seconds.remove(&labels);
            self.subscription_endpoint_detect_seconds.remove(&labels);
        }
    }

    /// Forgets the metrics of a supervised task that is gone.
    pub(crate) fn remove_task(&self, task: &str) {
        let labels = TaskLabels {
            task: task.to_owned(),
        };
        self.task_failures.remove(&labels);
        self.task_failed.remove(&labels);
    }

    /// Appends the Prometheus text exposition of every metric to `out`.
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::text::encode(out, &self.registry)
    }

    /// Forgets the metrics of a deleted topic.
    pub(crate) fn remove_topic(&self, topic: &str, partitions: u32) {
        let labels = TopicLabels {
            topic: topic.to_owned(),
        };
        self.publish_events.remove(&labels);
        self.publish_bytes.remove(&labels);
        self.publish_duplicates.remove(&labels);
        self.append_seconds.remove(&labels);
        self.fsync_seconds.remove(&labels);
        self.commit_records.remove(&labels);
        self.dedupe_evicted_early.remove(&labels);
        for partition in 0..partitions {
            let labels = PartitionLabels::new(topic, partition);
            self.partition_bytes.remove(&labels);
            self.partition_start_offset.remove(&labels);
            self.partition_next_offset.remove(&labels);
            self.partition_unavailable.remove(&labels);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
