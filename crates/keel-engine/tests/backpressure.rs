//! The disk guard on the engine itself, in-process on the in-memory storage (whose stored
//! bytes are its logs' payloads): every way of appending a publish is refused at the cap,
//! nothing refused is stored, reads go on, and a delete makes room without a reopen.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_engine::error::{PublishError, StorageLimit};
use keel_engine::pressure::PressureConfig;
use keel_engine::storage::{Faults, MemoryStorage};
use keel_engine::{Engine, EngineConfig, EngineError, Event, TopicConfig};
use serde_json::json;

/// The cap on stored bytes: some fifty events of the size below.
const CAP_BYTES: u64 = 60_000;

fn event(id: &str, key: &str) -> Event {
    let value = json!({"specversion": "1.0", "id": id, "source": "test", "type": "t",
        "partitionkey": key, "data": "x".repeat(1000)});
    keel_engine::event::from_value(value).unwrap()
}

fn is_data_dir_full(error: &EngineError) -> bool {
    matches!(
        error,
        EngineError::Publish(PublishError::StorageFull {
            limit: StorageLimit::DataDirFull { .. }
        })
    )
}

// Invariant: at the cap, publishes and conditional appends are refused as "data directory
// full" and store nothing, while reads answer; deleting a topic frees its bytes and
// publishing resumes within a measurement, on the same engine.
// Method: a cap of about fifty events; one topic filled until refused, another read and
// appended to, then the filled one deleted.
#[tokio::test]
async fn cap_refuses_every_publish_path_and_a_delete_makes_room() {
    let storage = Arc::new(MemoryStorage::new(Faults::default()));
    let mut config = EngineConfig::new("/unused");
    config.pressure = PressureConfig {
        data_dir_bytes_max: Some(CAP_BYTES),
        disk_check_interval: Duration::from_millis(20),
        ..PressureConfig::default()
    };
    let engine = Engine::open_with_storage(config, storage).await.unwrap();
    let topic = TopicConfig::default();
    engine.create_topic("orders", topic).await.unwrap();
    engine.create_topic("fill", topic).await.unwrap();
    engine
        .publish("orders", vec![event("o-0", "k")])
        .await
        .unwrap();
    let mut refused = None;
    for n in 0..1000 {
        if let Err(error) = engine
            .publish("fill", vec![event(&format!("f-{n}"), "f")])
            .await
        {
            refused = Some(error);
            break;
        }
    }
    let refused = refused.expect("1,000 events of 1 KiB under a 60 KB cap");
    assert!(is_data_dir_full(&refused), "{refused}");

    let publish = engine.publish("orders", vec![event("o-1", "k")]).await;
    assert!(is_data_dir_full(&publish.unwrap_err()));
    let conditional = engine
        .append_expecting("orders", vec![event("o-1", "k")], 1)
        .await;
    assert!(is_data_dir_full(&conditional.unwrap_err()));
    let read = engine.read("orders", 0, None, 100, Duration::ZERO).await;
    assert_eq!(
        read.unwrap().records.len(),
        1,
        "reads go on; nothing refused is stored"
    );

    engine.delete_topic("fill", false).await.unwrap();
    let deleted = Instant::now();
    let appended = loop {
        match engine
            .append_expecting("orders", vec![event("o-1", "k")], 1)
            .await
        {
            Ok(appended) => break appended,
            Err(error) if is_data_dir_full(&error) => {}
            Err(error) => panic!("{error}"),
        }
        assert!(deleted.elapsed() < Duration::from_secs(5), "still refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        appended.version,
        Some(2),
        "the refused append left no version behind"
    );
    engine.shut_down().await;
}
