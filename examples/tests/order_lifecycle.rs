//! The order life cycle example (`examples/order_lifecycle.rs`), run as its own process with
//! its documented command; its outcome is then read back from the data directory it leaves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use keel_engine::{Engine, EngineConfig};
use support::{documented_args, with_arg};

/// Each order's status once the script is handled: what its events that fit lead to.
const FINAL_STATUS: [(&str, &str); 3] = [
    ("order-1", "delivered"),
    ("order-2", "shipped"),
    ("order-4", "created"),
];

/// The events that do not fit, by id, with the reason the handler gave.
const DEAD_LETTERS: [(&str, &str); 4] = [
    ("e04", "order.shipped does not follow created"),
    ("e05", "order.paid for an unknown order"),
    ("e10", "order.created does not follow created"),
    ("e12", "order.paid does not follow delivered"),
];

/// Runs the example with its documented command on `data_dir`; returns its standard output.
fn run_example(data_dir: &Path) -> String {
    let args = documented_args("order_lifecycle.rs");
    let args = with_arg(args, "--data-dir", data_dir.to_str().unwrap());
    let output = Command::new(env!("CARGO_BIN_EXE_order_lifecycle"))
        .args(&args)
        .output()
        .expect("run order_lifecycle");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "order_lifecycle failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

// Goal: the example leaves every order in the status its fitting events lead to, an order
// never created without state, and exactly the out-of-place events in the dead-letter queue,
// each with its reason; run again on the same directory, it publishes nothing and reports the
// same. Method: run the binary twice with its documented command; between the runs, open the
// data directory it left with the engine and read the states and the dead letters there.
#[tokio::test]
async fn order_lifecycle_dead_letters_exactly_the_invalid_transitions() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("orders");
    let first = run_example(&data_dir);
    assert!(first.contains("published 12 order events"), "{first}");
    for (order, status) in FINAL_STATUS {
        let line = format!("  {order}: {status}");
        assert!(first.contains(&line), "no {line:?} in:\n{first}");
    }
    for (id, reason) in DEAD_LETTERS {
        assert!(
            first.contains(&format!("  {id} (")),
            "{id} not printed:\n{first}"
        );
        assert!(first.contains(reason), "{reason:?} not printed:\n{first}");
    }

    // What the example left on disk.
    let engine = Engine::open(EngineConfig::new(&data_dir)).await.unwrap();
    let (states, more) = engine.list_state("order-status", None, 100).await.unwrap();
    assert!(!more);
    let states: BTreeMap<String, String> = states
        .into_iter()
        .map(|state| (state.key, state.state.get().to_owned()))
        .collect();
    let wanted: BTreeMap<String, String> = FINAL_STATUS
        .iter()
        .map(|(order, status)| ((*order).to_owned(), format!("\"{status}\"")))
        .collect();
    assert_eq!(
        states, wanted,
        "order → status in keel's state (none for order-3)"
    );
    let (entries, more) = engine.dlq_list("order-status", None, 100).await.unwrap();
    assert!(!more);
    let dead_letters: BTreeMap<String, String> = entries
        .iter()
        .map(|entry| {
            let event: serde_json::Value = serde_json::from_str(entry.event.get()).unwrap();
            let reason = entry.last_error.clone().unwrap_or_default();
            (event["id"].as_str().unwrap().to_owned(), reason)
        })
        .collect();
    let wanted: BTreeMap<String, String> = DEAD_LETTERS
        .iter()
        .map(|(id, reason)| ((*id).to_owned(), (*reason).to_owned()))
        .collect();
    assert_eq!(dead_letters, wanted, "dead letters: event id → reason");
    engine.shut_down().await;
    drop(engine);

    let second = run_example(&data_dir);
    assert!(second.contains("publishing nothing more"), "{second}");
    let report = |output: &str| output.split_once("final status").map(|(_, r)| r.to_owned());
    assert_eq!(
        report(&second),
        report(&first),
        "the second run reports the same"
    );
}
