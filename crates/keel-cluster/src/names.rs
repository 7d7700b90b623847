//! What keel's objects are called in JetStream. One cluster name (`--cluster-name`, default
//! `keel`) keeps several keel clusters apart on one NATS account.
//!
//! ```text
//! KV  KEEL_{cluster}_META        topics.NAME, subscriptions.NAME, alerts.NAME: the specs
//! KV  KEEL_{cluster}_NODES       one key per live node (its heartbeat), with a TTL
//! KV  KEEL_{cluster}_LEASES      one key per unit of work, the owner's lease, with a TTL
//! stream KEEL_{cluster}_T{id}_{p}           a topic's partition p, subject keel.{cluster}.t.{id}.{p}
//! stream KEEL_{cluster}_S{id}_{log}         a subscription's checkpoints, dead letters, state
//!                                           commits; subject keel.{cluster}.s.{id}.{log}.{epoch}
//! ```
//!
//! A topic or subscription is named in JetStream by a random id kept in its spec, not by its
//! name: streams left behind by a delete that crashed half-way can never be mistaken for a
//! new topic's of the same name.

use crate::error::ClusterError;

/// Longest cluster name: stream names stay short (they are directory names on the servers).
pub const CLUSTER_NAME_BYTES_MAX: usize = 32;

/// The names of one keel cluster's objects.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    cluster: String,
}

/// A subscription's logs, each its own stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscriptionLog {
    Checkpoints,
    DeadLetters,
    StateCommits,
}

impl SubscriptionLog {
    fn token(self) -> &'static str {
        match self {
            SubscriptionLog::Checkpoints => "CKPT",
            SubscriptionLog::DeadLetters => "DLQ",
            SubscriptionLog::StateCommits => "STATE",
        }
    }
}

impl Names {
    /// Checks the cluster name: 1 to 32 characters of `A-Z a-z 0-9 _ -`.
    pub(crate) fn new(cluster: &str) -> Result<Names, ClusterError> {
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-');
        if cluster.is_empty()
            || cluster.len() > CLUSTER_NAME_BYTES_MAX
            || !cluster.chars().all(valid)
        {
            return Err(ClusterError::InvalidClusterName {
                name: cluster.to_owned(),
            });
        }
        Ok(Names {
            cluster: cluster.to_owned(),
        })
    }

    /// The cluster's name.
    pub(crate) fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The bucket of specs.
    pub(crate) fn meta_bucket(&self) -> String {
        format!("KEEL_{}_META", self.cluster)
    }

    /// The bucket of node heartbeats.
    pub(crate) fn nodes_bucket(&self) -> String {
        format!("KEEL_{}_NODES", self.cluster)
    }

    /// The bucket of leases.
    pub(crate) fn leases_bucket(&self) -> String {
        format!("KEEL_{}_LEASES", self.cluster)
    }

    /// A topic partition's stream.
    pub(crate) fn partition_stream(&self, topic_id: &str, partition: u32) -> String {
        format!("KEEL_{}_T{topic_id}_{partition}", self.cluster)
    }

    /// The subject a topic partition's records are published on.
    pub(crate) fn partition_subject(&self, topic_id: &str, partition: u32) -> String {
        format!("keel.{}.t.{topic_id}.{partition}", self.cluster)
    }

    /// A subscription log's stream.
    pub(crate) fn subscription_stream(&self, id: &str, log: SubscriptionLog) -> String {
        format!("KEEL_{}_S{id}_{}", self.cluster, log.token())
    }

    /// The subject a subscription log is written on by the holder of lease `epoch`: the
    /// stream takes only the current holder's subject (see `fence.rs`).
    pub(crate) fn subscription_subject(
        &self,
        id: &str,
        log: SubscriptionLog,
        epoch: u64,
    ) -> String {
        format!(
            "keel.{}.s.{id}.{}.{epoch}",
            self.cluster,
            log.token().to_ascii_lowercase()
        )
    }
}

/// A new random id for a topic or subscription: 16 hex digits.
pub(crate) fn new_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// The key of a topic's spec in the meta bucket.
pub(crate) fn topic_key(name: &str) -> String {
    format!("topics.{name}")
}

/// The key of a subscription's spec in the meta bucket.
pub(crate) fn subscription_key(name: &str) -> String {
    format!("subscriptions.{name}")
}

/// Where API tokens are in the meta bucket.
pub(crate) const TOKEN_KEY_PREFIX: &str = "tokens.";

/// The key of an API token in the meta bucket, by its id.
pub(crate) fn token_key(id: &str) -> String {
    format!("{TOKEN_KEY_PREFIX}{id}")
}

/// The key of an alert rule in the meta bucket.
pub(crate) fn alert_key(name: &str) -> String {
    format!("alerts.{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: cluster names that would break stream or subject names are refused; names are
    // laid out as the module documentation draws them.
    #[test]
    fn names_follow_the_layout() {
        for bad in ["", "a.b", "a b", "a*", &"x".repeat(33)] {
            assert!(Names::new(bad).is_err(), "{bad:?}");
        }
        let names = Names::new("prod-1").unwrap();
        assert_eq!(names.meta_bucket(), "KEEL_prod-1_META");
        assert_eq!(names.partition_stream("ab12", 3), "KEEL_prod-1_Tab12_3");
        assert_eq!(names.partition_subject("ab12", 3), "keel.prod-1.t.ab12.3");
        assert_eq!(
            names.subscription_subject("cd34", SubscriptionLog::DeadLetters, 7),
            "keel.prod-1.s.cd34.dlq.7"
        );
        assert_eq!(new_id().len(), 16);
    }
}
