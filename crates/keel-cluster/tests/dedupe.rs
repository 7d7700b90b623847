//! A partition log on a real JetStream stream dedupes by the ids its appends carry: a retry
//! of an append that seemed to fail (its answer lost, or a quorum gone) is not stored again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keel_cluster::{ClusterNode, ClusterOptions};
use keel_engine::TopicConfig;
use keel_engine::storage::{Appended, StorageError};
use keel_testkit::nats::NatsCluster;

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

// Goal: JetStream's message-id window dedupes a partition's appends. Method: append a batch,
// then the same ids again (alone and as a batch), then a batch of new ids after stored ones.
// Invariants: a repeat answers the original offsets and stores nothing; a batch mixing
// stored and new ids stores the new ones once (consecutively here: nothing else was
// appended between) and answers with the stored ones' offsets; the log holds each id once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_ids_are_stored_once() {
    let nats = NatsCluster::start(1).await;
    let options = ClusterOptions {
        servers: nats.url_list(),
        cluster_name: "dedupe".into(),
        node_id: "n".into(),
        advertise_url: "http://127.0.0.1:1".into(),
        replicas: 1,
        lease_ttl: Duration::from_secs(2),
        tls: keel_cluster::NatsTls::default(),
    };
    tokio::task::spawn_blocking(move || {
        let node = ClusterNode::connect(options).unwrap();
        let storage = node.storage();
        let config = TopicConfig {
            partitions: 1,
            ..TopicConfig::default()
        };
        keel_engine::storage::Storage::create_topic(&*storage, "t", &config).unwrap();
        let log = keel_engine::storage::Storage::open_partition(&*storage, "t", 0).unwrap();
        assert!(log.dedupes());

        let first = log
            .append_identified(1, &[b"a", b"b"], &ids(&["a", "b"]), true)
            .unwrap();
        assert_eq!(
            first,
            Appended {
                first_offset: 0,
                already_stored: false
            }
        );
        let again = log
            .append_identified(2, &[b"a", b"b"], &ids(&["a", "b"]), true)
            .unwrap();
        assert_eq!(
            again,
            Appended {
                first_offset: 0,
                already_stored: true
            }
        );
        let alone = log
            .append_identified(3, &[b"b"], &ids(&["b"]), true)
            .unwrap();
        assert_eq!(
            alone,
            Appended {
                first_offset: 1,
                already_stored: true
            }
        );
        // "b" stored at 1, "c" new: appended right after it, at 2.
        let mixed = log
            .append_identified(4, &[b"b", b"c"], &ids(&["b", "c"]), true)
            .unwrap();
        assert_eq!(
            mixed,
            Appended {
                first_offset: 1,
                already_stored: true
            }
        );
        // "a" at 0, "d" new at 3: not consecutive.
        let scattered = log.append_identified(5, &[b"a", b"d"], &ids(&["a", "d"]), true);
        assert!(
            matches!(scattered, Err(StorageError::PartlyStored)),
            "{scattered:?}"
        );

        let records = log.read(0, 100, usize::MAX).unwrap();
        let payloads: Vec<&[u8]> = records
            .iter()
            .map(|record| record.payload.as_slice())
            .collect();
        assert_eq!(payloads, [b"a".as_slice(), b"b", b"c", b"d"], "each once");
    })
    .await
    .unwrap();
}
