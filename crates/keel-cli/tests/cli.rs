//! The `keel` CLI as a user runs it, against a real `keel serve` over a real socket.
//!
//! Invariants: each command prints what the user needs on success and exits 0; an error is
//! one readable line on stderr with a non-zero exit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::process::{Command, Output};

use support::KeelProcess;

fn keel(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["--server", server])
        .args(args)
        .output()
        .expect("run keel")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

// Goal: create, publish (flags and a JSONL file), describe and tail work end to end, and a
// repeated id is reported as a duplicate at the original position.
#[tokio::test]
async fn cli_creates_publishes_describes_and_tails() {
    let dir = tempfile::tempdir().unwrap();
    let server = KeelProcess::start(&dir.path().join("data")).await;
    let url = server.url.as_str();
    assert_eq!(
        stdout(&keel(
            url,
            &["topic", "create", "orders", "--partitions", "2"]
        ))
        .trim(),
        "created topic orders (2 partitions)"
    );
    assert!(
        stdout(&keel(
            url,
            &["topic", "create", "orders", "--partitions", "2"]
        ))
        .contains("already exists with this configuration")
    );
    let publish = [
        "publish",
        "orders",
        "--type",
        "order.created",
        "--source",
        "shop",
        "--id",
        "o-1",
        "--key",
        "k",
        "--data",
        r#"{"amount": 42}"#,
    ];
    let first = stdout(&keel(url, &publish));
    assert!(first.starts_with("o-1 → partition "), "{first}");
    let again = stdout(&keel(url, &publish));
    assert_eq!(again.trim(), format!("{} (duplicate)", first.trim()));
    let file = dir.path().join("events.jsonl");
    let mut lines = std::fs::File::create(&file).unwrap();
    for i in 0..250 {
        writeln!(
            lines,
            r#"{{"specversion":"1.0","id":"f-{i}","source":"file","type":"t","data":{{"i":{i}}}}}"#
        )
        .unwrap();
    }
    drop(lines);
    let output = keel(
        url,
        &[
            "publish",
            "orders",
            "--file",
            file.to_str().unwrap(),
            "--quiet",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let describe = stdout(&keel(url, &["topic", "describe", "orders"]));
    assert!(
        describe.contains("251"),
        "total events in describe: {describe}"
    );
    let tail = stdout(&keel(url, &["tail", "orders", "--from", "earliest"]));
    let records: Vec<serde_json::Value> = tail
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(records.len(), 251);
    let order = records.iter().find(|r| r["event"]["id"] == "o-1").unwrap();
    assert_eq!(order["event"]["data"]["amount"], 42);
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&keel(url, &["--json", "topic", "list"]))).unwrap();
    assert_eq!(listed["topics"][0]["name"], "orders");
}

// Goal: errors are one readable line and a non-zero exit: an unknown topic, a conflicting
// create, an invalid event, and a server that is not running.
#[tokio::test]
async fn cli_errors_are_one_line_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = KeelProcess::start(&dir.path().join("data")).await;
    let url_owned = server.url.clone();
    let url = url_owned.as_str();
    keel(url, &["topic", "create", "t"]);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["topic", "describe", "nope"],
            "error: 404 Not Found: topic \"nope\" does not exist",
        ),
        (
            vec!["topic", "create", "t", "--partitions", "3"],
            "error: 409 Conflict: topic \"t\" already exists",
        ),
        (
            vec!["publish", "t", "--type", "x", "--source", "bad source"],
            "error: 400 Bad Request: invalid CloudEvent",
        ),
        (
            vec!["topic", "create", "_bad"],
            "error: 400 Bad Request: invalid topic name",
        ),
    ];
    for (args, expected) in cases {
        let output = keel(url, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
    }
    drop(server);
    let output = keel(url, &["topic", "list"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot reach keel"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// Goal: a second server on the same data directory refuses to start with a clear message
// (two writers on one log would destroy acknowledged events), and the first keeps serving.
#[tokio::test]
async fn a_second_server_on_one_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let first = KeelProcess::start(&data_dir).await;
    let listen = format!("127.0.0.1:{}", support::free_port());
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "serve",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            &listen,
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another keel process"),
        "{stderr}"
    );
    let health = reqwest::get(format!("{}/readyz", first.url)).await.unwrap();
    assert_eq!(health.status(), 200);
}
