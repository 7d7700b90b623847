//! The engine's Prometheus metrics, registered once and updated on the hot paths with atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

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

/// Every attempt outcome label.
pub const ATTEMPT_OUTCOMES: [&str; 6] = [
    "acked",
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

/// All engine metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Events appended by publishes (duplicates not counted).
    pub publish_events: Family<TopicLabels, Counter>,
    /// Bytes of events appended by publishes.
    pub publish_bytes: Family<TopicLabels, Counter>,
    /// Publishes answered as duplicates.
    pub publish_duplicates: Family<TopicLabels, Counter>,
    /// Time from an append request entering a partition's queue to its events being durable.
    pub append_seconds: Family<TopicLabels, Histogram, fn() -> Histogram>,
    /// Time of one group commit: the write and the fsync of every record in it.
    pub fsync_seconds: Family<TopicLabels, Histogram, fn() -> Histogram>,
    /// Records per group commit.
    pub commit_records: Family<TopicLabels, Histogram, fn() -> Histogram>,
    /// Bytes on disk per partition.
    pub partition_bytes: Family<PartitionLabels, Gauge>,
    /// First offset kept per partition.
    pub partition_start_offset: Family<PartitionLabels, Gauge>,
    /// Next offset per partition.
    pub partition_next_offset: Family<PartitionLabels, Gauge>,
    /// 1 while a partition refuses service (corrupt log or failed write).
    pub partition_unavailable: Family<PartitionLabels, Gauge>,
    /// Dedupe entries forgotten before their window ended because the table was full.
    pub dedupe_evicted_early: Family<TopicLabels, Counter>,
    /// Bytes cut from torn tails by recovery since start.
    pub recovery_truncated_bytes: Counter,
    /// Events published and not yet done per subscription (acknowledged or dead-lettered).
    pub subscription_lag: Family<SubscriptionLabels, Gauge>,
    /// Events delivered and not yet acknowledged per subscription.
    pub subscription_in_flight: Family<SubscriptionLabels, Gauge>,
    /// Entries in each subscription's dead-letter queue.
    pub subscription_dlq_depth: Family<SubscriptionLabels, Gauge>,
    /// A push subscription's circuit: 0 closed, 1 open, 2 half-open.
    pub subscription_circuit_state: Family<SubscriptionLabels, Gauge>,
    /// 1 while a subscription is paused.
    pub subscription_paused: Family<SubscriptionLabels, Gauge>,
    /// Delivery attempts by outcome.
    pub subscription_attempts: Family<AttemptLabels, Counter>,
    /// Time from publish to acknowledgement.
    pub subscription_delivery_seconds: Family<SubscriptionLabels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keel");
        let metrics = Self {
            publish_events: Family::default(),
            publish_bytes: Family::default(),
            publish_duplicates: Family::default(),
            append_seconds: Family::new_with_constructor(latency_histogram),
            fsync_seconds: Family::new_with_constructor(latency_histogram),
            commit_records: Family::new_with_constructor(records_histogram),
            partition_bytes: Family::default(),
            partition_start_offset: Family::default(),
            partition_next_offset: Family::default(),
            partition_unavailable: Family::default(),
            dedupe_evicted_early: Family::default(),
            recovery_truncated_bytes: Counter::default(),
            subscription_lag: Family::default(),
            subscription_in_flight: Family::default(),
            subscription_dlq_depth: Family::default(),
            subscription_circuit_state: Family::default(),
            subscription_paused: Family::default(),
            subscription_attempts: Family::default(),
            subscription_delivery_seconds: Family::new_with_constructor(delivery_histogram),
            registry: Registry::default(),
        };
        registry.register(
            "publish_events",
            "Events appended by publishes",
            metrics.publish_events.clone(),
        );
        registry.register_with_unit(
            "publish",
            "Bytes of events appended by publishes",
            Unit::Bytes,
            metrics.publish_bytes.clone(),
        );
        registry.register(
            "publish_duplicates",
            "Published events answered as duplicates",
            metrics.publish_duplicates.clone(),
        );
        registry.register_with_unit(
            "append",
            "Time from an append request entering a partition queue to its events being durable",
            Unit::Seconds,
            metrics.append_seconds.clone(),
        );
        registry.register_with_unit(
            "fsync",
            "Time of one group commit: write and fsync",
            Unit::Seconds,
            metrics.fsync_seconds.clone(),
        );
        registry.register(
            "commit_records",
            "Records per group commit",
            metrics.commit_records.clone(),
        );
        registry.register_with_unit(
            "partition_size",
            "Bytes on disk per partition",
            Unit::Bytes,
            metrics.partition_bytes.clone(),
        );
        registry.register(
            "partition_start_offset",
            "First offset kept per partition",
            metrics.partition_start_offset.clone(),
        );
        registry.register(
            "partition_next_offset",
            "Next offset per partition",
            metrics.partition_next_offset.clone(),
        );
        registry.register(
            "partition_unavailable",
            "1 while a partition refuses service",
            metrics.partition_unavailable.clone(),
        );
        registry.register(
            "dedupe_evicted_early",
            "Dedupe entries forgotten before their window ended",
            metrics.dedupe_evicted_early.clone(),
        );
        registry.register_with_unit(
            "recovery_truncated",
            "Bytes cut from torn log tails by recovery",
            Unit::Bytes,
            metrics.recovery_truncated_bytes.clone(),
        );
        metrics.register_subscriptions(&mut registry);
        Self {
            registry,
            ..metrics
        }
    }

    fn register_subscriptions(&self, registry: &mut Registry) {
        registry.register(
            "subscription_lag",
            "Events published and not yet acknowledged or dead-lettered",
            self.subscription_lag.clone(),
        );
        registry.register(
            "subscription_in_flight",
            "Events delivered and not yet acknowledged",
            self.subscription_in_flight.clone(),
        );
        registry.register(
            "subscription_dlq_depth",
            "Entries in the dead-letter queue",
            self.subscription_dlq_depth.clone(),
        );
        registry.register(
            "subscription_circuit_state",
            "Push sink circuit: 0 closed, 1 open, 2 half-open",
            self.subscription_circuit_state.clone(),
        );
        registry.register(
            "subscription_paused",
            "1 while the subscription is paused",
            self.subscription_paused.clone(),
        );
        registry.register(
            "subscription_attempts",
            "Delivery attempts by outcome",
            self.subscription_attempts.clone(),
        );
        registry.register_with_unit(
            "subscription_delivery",
            "Time from publish to acknowledgement",
            Unit::Seconds,
            self.subscription_delivery_seconds.clone(),
        );
    }

    /// Forgets the metrics of a deleted subscription.
    pub(crate) fn remove_subscription(&self, name: &str) {
        let labels = SubscriptionLabels {
            subscription: name.to_owned(),
        };
        self.subscription_lag.remove(&labels);
        self.subscription_in_flight.remove(&labels);
        self.subscription_dlq_depth.remove(&labels);
        self.subscription_circuit_state.remove(&labels);
        self.subscription_paused.remove(&labels);
        self.subscription_delivery_seconds.remove(&labels);
        for outcome in ATTEMPT_OUTCOMES {
            self.subscription_attempts.remove(&AttemptLabels {
                subscription: name.to_owned(),
                outcome,
            });
        }
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
