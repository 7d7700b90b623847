//! The `keel` CLI as a user runs it, against a real `keel serve` over a real socket.
//!
//! Invariants: each command prints what the user needs on success and exits 0; an error is
//! one readable line on stderr with a non-zero exit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::process::{Command, Output};

use keel_testkit::process::free_port;
use keel_testkit::sink::{Sink, policy};
use serde_json::json;
use support::KEEL;

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
    let server = KEEL.start(&dir.path().join("data")).await;
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
    let server = KEEL.start(&dir.path().join("data")).await;
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
    let first = KEEL.start(&data_dir).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let output = KEEL.serve_command(&data_dir, &listen).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another keel process"),
        "{stderr}"
    );
    let health = reqwest::get(format!("{}/readyz", first.url)).await.unwrap();
    assert_eq!(health.status(), 200);
}

// Goal: a bad configuration file stops `keel serve` before it writes anything, with the
// setting named: typos, out-of-range values, bad durations and invalid declarations. Method:
// a table of files against the real binary; the data directory must not exist afterwards (a
// valid declaration before the bad one is not applied either).
#[test]
fn bad_config_files_stop_the_start_naming_the_setting() {
    let subscription = "[topics.orders]\n[subscriptions.audit]\ntopic = \"orders\"\n";
    let cases = [
        (
            "segmnet_bytes_max = 1000\n".to_owned(),
            "unknown field `segmnet_bytes_max`",
        ),
        (
            "segment_bytes_max = 10\n".to_owned(),
            "segment_bytes_max must be between 64 and",
        ),
        (
            "retention_check_interval = \"30 seconds\"\n".to_owned(),
            "invalid duration \"30 seconds\"",
        ),
        (
            "[topics.orders]\npartitions = 5000\n".to_owned(),
            "[topics.orders]: invalid topic configuration: partitions",
        ),
        (
            format!("{subscription}sink = {{ endpoints = [{{ url = \"http://a.test/\" }}] }}\n"),
            "[subscriptions.audit]: invalid subscription: sink.endpoints: a group has at least 2",
        ),
        (
            format!(
                "{subscription}sink = {{ endpoints = [{{ url = \"http://a.test/\" }}, {{ url = \"http://b.test/\" }}], strategy = \"random\" }}\n"
            ),
            "unknown variant `random`",
        ),
        (
            format!(
                "{subscription}sink = {{ url = \"http://a.test/\", health_check = {{ interval = \"1s\", timeout = \"2s\" }} }}\n"
            ),
            "sink.health_check.timeout must be above 0 and at most the interval",
        ),
        (
            format!("{subscription}[subscriptions.zbad]\ntopic = \"orders\"\nmax_in_flight = 0\n"),
            "[subscriptions.zbad]: invalid subscription: max_in_flight",
        ),
        (
            "[alerts.lag]\nkind = \"threshold\"\nmetric = \"keel_subscription_lag\"\nop = \">\"\n"
                .to_owned(),
            "[alerts.lag]: invalid alert rule \"lag\": a threshold rule needs value",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let (config, data_dir) = (dir.path().join("keel.toml"), dir.path().join("data"));
    for (text, needle) in cases {
        std::fs::write(&config, &text).unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let output = KEEL
            .serve_command(&data_dir, &listen)
            .args(["--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{text}");
        assert!(stderr.contains(needle), "{text}\n{stderr}");
        assert!(!data_dir.exists(), "{text}: the data directory was written");
    }
}

/// Runs keel and returns its exit code and stderr, checking the error is one line.
fn failure(server: &str, args: &[&str]) -> (Option<i32>, String) {
    let output = keel(server, args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{args:?} must fail");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    (output.status.code(), stderr)
}

/// Runs keel until its stdout satisfies `done`, or fails the test after 10 s.
fn keel_until(server: &str, args: &[&str], done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = stdout(&keel(server, args));
        if done(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{args:?} never satisfied the condition; last output:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// True when `text` has a line reading `label  value` (any spacing).
fn has_pair(text: &str, label: &str, value: &str) -> bool {
    let expected = format!("{label} {value}");
    text.lines()
        .any(|line| line.split_whitespace().collect::<Vec<_>>().join(" ") == expected)
}

/// `sub pull` output as JSON values, one per line.
fn pulled(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn publish_event(server: &str, id: &str) {
    let args = [
        "publish",
        "orders",
        "--type",
        "order.created",
        "--source",
        "shop",
        "--id",
        id,
    ];
    stdout(&keel(server, &args));
}

// Goal: a pull subscription made with `keel sub` delivers, and its dead-letter queue works end
// to end: pull --ack prints the event and counts it delivered; a rejected event shows in
// `dlq list` and `dlq show`; `dlq redrive --all` delivers it again with a fresh attempt count
// and acking it empties the queue. Method: one real server, driven only through the binary.
#[tokio::test]
async fn cli_pull_subscription_delivers_rejects_and_redrives() {
    let dir = tempfile::tempdir().unwrap();
    let server = KEEL.start(&dir.path().join("data")).await;
    let url = server.url.as_str();
    stdout(&keel(url, &["topic", "create", "orders"]));
    let create = [
        "sub", "create", "p", "--topic", "orders", "--start", "earliest",
    ];
    let created = stdout(&keel(url, &create));
    assert!(created.starts_with("created subscription p\n"), "{created}");
    assert!(has_pair(&created, "mode", "pull"), "{created}");
    assert!(!created.contains("secret"), "{created}");

    publish_event(url, "e-1");
    let first = stdout(&keel(url, &["sub", "pull", "p", "--wait", "5s", "--ack"]));
    assert!(first.starts_with(r#"{"ack_id":""#), "{first}");
    let messages = pulled(&first);
    assert_eq!(messages.len(), 1, "{first}");
    assert_eq!(
        (&messages[0]["event"]["id"], &messages[0]["attempt"]),
        (&serde_json::json!("e-1"), &serde_json::json!(1))
    );
    keel_until(url, &["sub", "describe", "p"], |text| {
        has_pair(text, "delivered", "1") && has_pair(text, "in flight", "0")
    });

    publish_event(url, "e-2");
    let second = pulled(&stdout(&keel(url, &["sub", "pull", "p", "--wait", "5s"])));
    assert_eq!(second[0]["event"]["id"], "e-2");
    let ack_id = second[0]["ack_id"].as_str().unwrap();
    let rejected = stdout(&keel(url, &["sub", "reject", "p", ack_id]));
    assert_eq!(rejected, "rejected (dead-lettered) 1 message\n");
    let listed = keel_until(url, &["dlq", "list", "p"], |text| {
        text.contains("order.created/e-2")
    });
    let entry_id = listed
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let shown = stdout(&keel(url, &["dlq", "show", "p", entry_id]));
    assert!(shown.contains(r#""id": "e-2""#), "{shown}");
    assert!(shown.contains("attempt history:"), "{shown}");

    let redriven = stdout(&keel(url, &["dlq", "redrive", "p", "--all"]));
    assert!(redriven.starts_with("redriving 1 entry of p"), "{redriven}");
    let again = pulled(&stdout(&keel(
        url,
        &["sub", "pull", "p", "--wait", "5s", "--ack"],
    )));
    assert_eq!(
        (&again[0]["event"]["id"], &again[0]["attempt"]),
        (&serde_json::json!("e-2"), &serde_json::json!(1))
    );
    keel_until(url, &["dlq", "list", "p"], |text| text.contains("is empty"));
    let listing: serde_json::Value =
        serde_json::from_str(&stdout(&keel(url, &["--json", "sub", "list"]))).unwrap();
    assert_eq!(listing["subscriptions"][0]["name"], "p");
    assert_eq!(listing["subscriptions"][0]["lag"], 0);
}

// Goal: pause refuses pulls until resume, seek rewinds so acknowledged events come back, and
// nack hands an event back for redelivery with the next attempt number. Method: the binary
// against a real server; each step checked through what `sub pull` prints.
#[tokio::test]
async fn cli_pause_seek_and_nack_change_what_is_pulled() {
    let dir = tempfile::tempdir().unwrap();
    let server = KEEL.start(&dir.path().join("data")).await;
    let url = server.url.as_str();
    stdout(&keel(url, &["topic", "create", "orders"]));
    stdout(&keel(url, &["sub", "create", "p", "--topic", "orders"]));
    publish_event(url, "e-1");
    let acked = pulled(&stdout(&keel(
        url,
        &["sub", "pull", "p", "--wait", "5s", "--ack"],
    )));
    assert_eq!(acked[0]["event"]["id"], "e-1");

    assert_eq!(
        stdout(&keel(url, &["sub", "pause", "p"])),
        "paused subscription p\n"
    );
    let (code, stderr) = failure(url, &["sub", "pull", "p"]);
    assert_eq!(code, Some(1));
    assert!(stderr.starts_with("error: 409 Conflict"), "{stderr}");
    stdout(&keel(url, &["sub", "resume", "p"]));

    let seek = stdout(&keel(url, &["sub", "seek", "p", "--to", "earliest"]));
    assert_eq!(seek, "subscription p now reads from earliest\n");
    let rewound = pulled(&stdout(&keel(url, &["sub", "pull", "p", "--wait", "5s"])));
    assert_eq!(
        (&rewound[0]["event"]["id"], &rewound[0]["attempt"]),
        (&serde_json::json!("e-1"), &serde_json::json!(1))
    );
    let ack_id = rewound[0]["ack_id"].as_str().unwrap();
    let nacked = stdout(&keel(url, &["sub", "nack", "p", ack_id, "--delay", "50ms"]));
    assert_eq!(nacked, "nacked (to be redelivered) 1 message\n");
    let redelivered = pulled(&stdout(&keel(url, &["sub", "pull", "p", "--wait", "5s"])));
    assert_eq!(redelivered[0]["attempt"], 2);
    let stale = stdout(&keel(url, &["sub", "ack", "p", ack_id]));
    assert!(stale.contains("1 ack id stale"), "{stale}");
    assert_eq!(
        stdout(&keel(url, &["sub", "delete", "p"])),
        "deleted subscription p\n"
    );
    assert_eq!(stdout(&keel(url, &["sub", "list"])), "no subscriptions\n");
}

// Goal: creating a push subscription without a secret prints the generated `whsec_` secret
// once, with a warning that it is not shown again; describe never shows it, and a spec file
// that brings its own secret prints none; `create` again with another URL updates it in place
// and says what changed. Method: create them against a real server (nothing is published, so
// the sink URL is never called).
#[tokio::test]
async fn cli_push_subscription_create_prints_the_generated_secret_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = KEEL.start(&dir.path().join("data")).await;
    let url = server.url.as_str();
    stdout(&keel(url, &["topic", "create", "orders"]));
    let sink = format!("http://127.0.0.1:{}/hook", free_port());
    let create = [
        "sub", "create", "hooks", "--topic", "orders", "--sink", &sink,
    ];
    let created = stdout(&keel(url, &create));
    assert!(
        has_pair(&created, "mode", &format!("push to {sink}")),
        "{created}"
    );
    let secret_line = created
        .lines()
        .find(|line| line.starts_with("signing secret: whsec_"))
        .unwrap_or_else(|| panic!("no secret in {created}"));
    assert!(created.contains("shown only once"), "{created}");
    let secret = secret_line.trim_start_matches("signing secret: ");
    let described = stdout(&keel(url, &["--json", "sub", "describe", "hooks"]));
    assert!(!described.contains(secret), "{described}");
    let spec = dir.path().join("spec.json");
    let body = serde_json::json!({"topic": "orders", "sink": {"url": sink, "secret": secret}});
    std::fs::write(&spec, body.to_string()).unwrap();
    let from_file = ["sub", "create", "filed", "--spec", spec.to_str().unwrap()];
    let created = stdout(&keel(url, &from_file));
    assert!(
        created.starts_with("created subscription filed\n"),
        "{created}"
    );
    assert!(
        !created.contains("signing secret"),
        "a given secret is not echoed: {created}"
    );
    let listed = stdout(&keel(url, &["sub", "list"]));
    assert!(
        listed
            .lines()
            .any(|line| line.starts_with("hooks  orders  push")),
        "{listed}"
    );

    // `create` on an existing name is the API's PUT: another URL updates it in place (no new
    // secret), the same flags again change nothing, an immutable member is refused by name.
    let moved = format!("http://127.0.0.1:{}/moved", free_port());
    let update = [
        "sub", "create", "hooks", "--topic", "orders", "--sink", &moved,
    ];
    let updated = stdout(&keel(url, &update));
    assert!(
        updated.starts_with("updated subscription hooks in place (changed: sink.url)"),
        "{updated}"
    );
    assert!(
        has_pair(&updated, "mode", &format!("push to {moved}")),
        "{updated}"
    );
    assert!(
        !updated.contains("signing secret"),
        "the secret is kept: {updated}"
    );
    assert_eq!(
        stdout(&keel(url, &update)),
        "subscription hooks already exists with this spec\n"
    );
    let keyed = [&update[..], &["--ordering", "key"]].concat();
    let (code, stderr) = failure(url, &keyed);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("ordering cannot change in place"),
        "{stderr}"
    );
    // An update keeps a pause, and says so.
    stdout(&keel(url, &["sub", "pause", "hooks"]));
    let back = [
        "sub", "create", "hooks", "--topic", "orders", "--sink", &sink,
    ];
    let updated = stdout(&keel(url, &back));
    assert!(
        updated.contains("it is still paused (paused by an operator): keel sub resume hooks"),
        "{updated}"
    );
    // A rotation prints the new secret once, with the overlap's end; describe shows neither.
    let rotate = ["sub", "rotate-secret", "hooks", "--overlap", "1h"];
    let rotated = stdout(&keel(url, &rotate));
    let new_secret = rotated
        .lines()
        .find_map(|line| line.strip_prefix("signing secret: "))
        .unwrap_or_else(|| panic!("no secret in {rotated}"));
    assert!(
        new_secret.starts_with("whsec_") && new_secret != secret,
        "{rotated}"
    );
    assert!(
        rotated.contains("the previous secret signs beside it until "),
        "{rotated}"
    );
    let described = stdout(&keel(url, &["--json", "sub", "describe", "hooks"]));
    assert!(
        !described.contains(secret) && !described.contains(new_secret),
        "{described}"
    );
}

// Goal: subscription errors are one line with the server's detail and exit code 1 (2 for an
// unconfirmed purge); a topic with subscriptions is deleted only with --force, which the error
// suggests. Method: a table of failing commands (how stderr starts, what else it says), then
// the forced delete.
#[tokio::test]
async fn cli_subscription_errors_are_one_line_and_topic_delete_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let server = KEEL.start(&dir.path().join("data")).await;
    let url = server.url.as_str();
    stdout(&keel(url, &["topic", "create", "orders"]));
    stdout(&keel(url, &["sub", "create", "p", "--topic", "orders"]));
    let bad_filter = [
        "sub",
        "create",
        "bad",
        "--topic",
        "orders",
        "--filter",
        "data.amount >",
    ];
    let other_spec = [
        "sub",
        "create",
        "p",
        "--topic",
        "orders",
        "--ordering",
        "key",
    ];
    let cases: [(&[&str], i32, &str, &str); 5] = [
        (
            &["sub", "describe", "nope"],
            1,
            "error: 404 Not Found: subscription \"nope\" not found",
            "",
        ),
        (&bad_filter, 1, "error: 400 Bad Request: ", "filters[0].cel"),
        (&other_spec, 1, "error: 409 Conflict: ", "\"p\""),
        (
            &["dlq", "purge", "p"],
            2,
            "error: purge deletes every entry",
            "--yes",
        ),
        (
            &["topic", "delete", "orders"],
            1,
            "error: 409 Conflict: topic \"orders\" has subscriptions (p)",
            "--force",
        ),
    ];
    for (args, code, start, detail) in cases {
        let (actual, stderr) = failure(url, args);
        assert_eq!(actual, Some(code), "{args:?}: {stderr}");
        assert!(stderr.starts_with(start), "{args:?}: {stderr}");
        assert!(stderr.contains(detail), "{args:?}: {stderr}");
    }
    let forced = stdout(&keel(url, &["topic", "delete", "orders", "--force"]));
    assert_eq!(forced, "deleted topic orders\n");
    let (_, gone) = failure(url, &["sub", "describe", "p"]);
    assert!(gone.starts_with("error: 404 Not Found"), "{gone}");
}

// Goal: `sub create --stateful` makes a stateful subscription whose pulled messages carry
// their key's state; `sub state` shows a key's state and lists keys; `sub rebuild` drops the
// state. Method: commit a state over HTTP (the CLI has no stateful ack), then read it back
// through the binary.
#[tokio::test]
async fn cli_shows_and_rebuilds_a_stateful_subscriptions_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = KEEL.start(&dir.path().join("data")).await;
    let url = server.url.as_str();
    stdout(&keel(url, &["topic", "create", "orders"]));
    let create = [
        "sub",
        "create",
        "ledger",
        "--topic",
        "orders",
        "--ordering",
        "key",
        "--stateful",
        "--start",
        "earliest",
    ];
    stdout(&keel(url, &create));
    let publish = [
        "publish",
        "orders",
        "--type",
        "t",
        "--source",
        "shop",
        "--key",
        "acct-1",
        "--data",
        r#"{"amount": 5}"#,
    ];
    stdout(&keel(url, &publish));
    let messages = pulled(&keel_until(url, &["sub", "pull", "ledger"], |text| {
        !text.is_empty()
    }));
    assert_eq!(
        messages[0]["state"],
        serde_json::Value::Null,
        "{messages:?}"
    );
    assert_eq!(messages[0]["state_version"], 0);
    let ack =
        serde_json::json!({"acks": [{"ack_id": messages[0]["ack_id"], "state": {"balance": 5}}]});
    let answer = reqwest::Client::new()
        .post(format!("{url}/v1/subscriptions/ledger/ack"))
        .header("content-type", "application/json")
        .body(ack.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let shown = stdout(&keel(url, &["sub", "state", "ledger", "acct-1"]));
    assert!(has_pair(&shown, "version", "1"), "{shown}");
    assert!(shown.contains(r#"{"balance":5}"#), "{shown}");
    let listed = stdout(&keel(url, &["sub", "state", "ledger"]));
    assert!(
        listed.lines().any(|line| line.starts_with("acct-1\t1\t")),
        "{listed}"
    );
    let rebuilt = stdout(&keel(url, &["sub", "rebuild", "ledger"]));
    assert!(rebuilt.contains("dropped the state"), "{rebuilt}");
    let (code, error) = failure(url, &["sub", "state", "ledger", "acct-1"]);
    assert_ne!(code, Some(0));
    assert!(error.contains("no state"), "{error}");
}

// Goal: `keel bench e2e --stateful --emit`, as a user runs it, pulls and acks with state,
// reads every key's state back and says it verified them all; its JSON report carries the
// check. Method: two tiny runs of the binary against a real server, plain and --json.
#[tokio::test]
async fn cli_bench_e2e_stateful_verifies_every_keys_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = KEEL.start(&dir.path().join("data")).await;
    let url = server.url.as_str();
    let run = [
        "bench",
        "e2e",
        "--mode",
        "pull",
        "--stateful",
        "--emit",
        "--keys",
        "30",
        "--events",
        "1000",
        "--size",
        "64",
        "--partitions",
        "2",
        "--pull-max",
        "100",
        "--drain-timeout",
        "10s",
    ];
    let report = stdout(&keel(url, &run));
    let state = report
        .lines()
        .find(|line| line.starts_with("state"))
        .unwrap_or_else(|| panic!("no state line in:\n{report}"));
    assert!(
        state.contains("verified 30 of 30 keys") && state.contains("1000 events emitted"),
        "{report}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&keel(
        url,
        &[&run[..], &["--json", "--backlog"]].concat(),
    )))
    .unwrap();
    assert_eq!(json["stateful"], true, "{json}");
    assert_eq!(json["ordering"], "key", "{json}");
    assert_eq!(json["state_errors"], 0, "{json}");
    let check = &json["state_check"];
    assert_eq!(
        (&check["keys_expected"], &check["keys_verified"]),
        (&30.into(), &30.into())
    );
    assert_eq!(check["emitted"], 1000, "{json}");
    // The run's topics and subscription are gone: only what the runs left is checked.
    let subs = stdout(&keel(url, &["sub", "list"]));
    assert!(!subs.contains("bench-e2e"), "{subs}");
}

// Goal: `keel alert` round trip: set from --rule and from --file (201 then 200 wording),
// list shows the rule, get --json answers the stored rule, delete removes it, and errors
// (a bad rule refused by the server, an unknown rule) are one readable line.
#[tokio::test]
async fn cli_sets_lists_gets_and_deletes_alert_rules() {
    let dir = tempfile::tempdir().unwrap();
    let server = KEEL.start(&dir.path().join("data")).await;
    let url = server.url.as_str();
    let rule =
        r#"{"kind": "threshold", "metric": "keel_subscription_dlq_depth", "op": ">", "value": 0}"#;
    let created = stdout(&keel(url, &["alert", "set", "dlq", "--rule", rule]));
    assert!(created.starts_with("alert rule dlq created"), "{created}");
    assert!(
        has_pair(&created, "metric", "keel_subscription_dlq_depth"),
        "{created}"
    );
    let file = dir.path().join("rule.json");
    std::fs::write(&file, rule).unwrap();
    let again = stdout(&keel(
        url,
        &["alert", "set", "dlq", "--file", file.to_str().unwrap()],
    ));
    assert!(again.starts_with("alert rule dlq stored"), "{again}");
    let listed = stdout(&keel(url, &["alert", "list"]));
    let row: Vec<&str> = listed.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..4],
        [
            "dlq",
            "threshold",
            "keel_subscription_dlq_depth",
            "inactive"
        ]
    );
    let got: serde_json::Value =
        serde_json::from_str(&stdout(&keel(url, &["--json", "alert", "get", "dlq"]))).unwrap();
    assert_eq!(got["rule"]["op"], ">");
    let (_, stderr) = failure(
        url,
        &[
            "alert",
            "set",
            "bad",
            "--rule",
            r#"{"kind": "threshold", "metric": "keel_x"}"#,
        ],
    );
    assert!(
        stderr.contains("400") && stderr.contains("needs op"),
        "{stderr}"
    );
    assert_eq!(
        stdout(&keel(url, &["alert", "delete", "dlq"])).trim(),
        "deleted alert rule dlq"
    );
    let (_, stderr) = failure(url, &["alert", "get", "dlq"]);
    assert!(
        stderr.contains("404") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert_eq!(
        stdout(&keel(url, &["alert", "list"])).trim(),
        "no alert rules"
    );
}

/// Runs keel expecting a usage error: exit code 2 and a first stderr line that starts with
/// `error:` and says `says`; returns that line.
fn usage_error(server: &str, args: &[&str], says: &str) -> String {
    let output = keel(server, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().next().unwrap_or_default().to_owned();
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        first.starts_with("error:") && first.contains(says),
        "{args:?}: {stderr}"
    );
    first
}

// Goal: `sub create` makes an endpoint group from repeated --sink flags (a weight from
// URL,weight=N) with its strategy, health checks and ejection policy; describe --json holds
// them as the API keeps them; the text describe shows the strategy and each endpoint's weight
// and state, an endpoint nothing listens on turning unhealthy, which `keel status` reports as
// a problem. Group flags that make no sense (a strategy for one URL, a bad weight, a
// duration that does not parse, a health interval the server refuses) fail with a readable
// error and a non-zero exit, creating nothing.
// Method: the binary against a real server, two real sinks and a port nothing listens on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_creates_and_describes_an_endpoint_group() {
    let sinks = [
        Sink::start(policy::accept()).await,
        Sink::start(policy::accept()).await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let server = KEEL.start(&dir.path().join("data")).await;
    let url = server.url.as_str();
    stdout(&keel(url, &["topic", "create", "orders"]));
    let (first, second) = (sinks[0].url("/hook"), sinks[1].url("/hook"));
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let weighted = format!("{first},weight=3");
    let create = [
        "sub",
        "create",
        "group",
        "--topic",
        "orders",
        "--sink",
        &weighted,
        "--sink",
        &second,
        "--sink",
        &dead,
        "--strategy",
        "weighted",
        "--health-check",
        "--health-interval",
        "500ms",
        "--health-timeout",
        "400ms",
        "--eject-after",
        "2",
        "--ejection-time",
        "1s",
        "--pause-after",
        "1h",
    ];
    let created = stdout(&keel(url, &create));
    assert!(
        has_pair(&created, "auto-pause", "after the sink fails for 1h"),
        "{created}"
    );
    assert!(
        has_pair(
            &created,
            "mode",
            "push to a group of 3 endpoints, strategy weighted"
        ),
        "{created}"
    );
    let described: serde_json::Value =
        serde_json::from_str(&stdout(&keel(url, &["--json", "sub", "describe", "group"]))).unwrap();
    let sink = &described["sink"];
    assert_eq!(
        sink["endpoints"],
        json!([{"url": first, "weight": 3}, {"url": second, "weight": 1},
            {"url": dead, "weight": 1}]),
        "{described}"
    );
    assert_eq!(sink["strategy"], "weighted", "{described}");
    assert_eq!(sink["pause_after"], "1h", "{described}");
    assert_eq!(
        sink["health_check"],
        json!({"path": "/healthz", "interval": "500ms", "timeout": "400ms",
            "healthy_threshold": 2, "unhealthy_threshold": 2}),
        "{described}"
    );
    assert_eq!(
        (
            &sink["outlier_detection"]["consecutive_failures"],
            &sink["outlier_detection"]["base_ejection_time"]
        ),
        (&json!(2), &json!("1s")),
        "{described}"
    );
    // The weight and state of an endpoint's row: the cells between its URL and the five
    // number columns (failures in row, ejections, outages, availability, MTTR).
    let state_of = |text: &str, endpoint: &str| -> String {
        let row = text.lines().find(|line| line.starts_with(endpoint));
        let cells: Vec<&str> = row.unwrap_or_default().split_whitespace().collect();
        cells
            .get(1..cells.len().saturating_sub(5))
            .unwrap_or_default()
            .join(" ")
    };
    let text = keel_until(url, &["sub", "describe", "group"], |text| {
        state_of(text, &dead) == "1 unhealthy"
    });
    assert_eq!(state_of(&text, &first), "3 available", "{text}");
    assert_eq!(state_of(&text, &second), "1 available", "{text}");
    assert!(
        text.contains("ENDPOINT") && text.contains("FAILURES IN ROW"),
        "{text}"
    );
    // `keel status` lists the group's endpoints and names the unhealthy one as a problem.
    let (code, report, _) = status(url, false);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(
        row(&report, &dead)[1..],
        ["group", "unhealthy", "0"],
        "{report}"
    );
    assert!(
        report.contains(&format!("subscription group: endpoint {dead} unhealthy")),
        "{report}"
    );

    let group = ["sub", "create", "bad", "--topic", "orders"];
    let usage: [(&[&str], &str); 3] = [
        (
            &["--sink", &first, "--strategy", "failover"],
            "--strategy applies to an endpoint group",
        ),
        (
            &["--sink", "http://h/x,weight=0", "--sink", &second],
            "is not a weight",
        ),
        (
            &[
                "--sink",
                &first,
                "--sink",
                &second,
                "--ejection-time",
                "soon",
            ],
            "is not a duration",
        ),
    ];
    for (flags, says) in usage {
        usage_error(url, &[&group[..], flags].concat(), says);
    }
    let refused = [
        &group[..],
        &[
            "--sink",
            &first,
            "--health-check",
            "--health-interval",
            "10ms",
        ],
    ];
    let (code, stderr) = failure(url, &refused.concat());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: 400 Bad Request") && stderr.contains("health_check.interval"),
        "{stderr}"
    );
    let listed = stdout(&keel(url, &["sub", "list"]));
    assert!(!listed.contains("bad"), "{listed}");
}

/// `keel status`: its exit code, stdout and stderr.
fn status(server: &str, json: bool) -> (Option<i32>, String, String) {
    let args: &[&str] = if json {
        &["--json", "status"]
    } else {
        &["status"]
    };
    let output = keel(server, args);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

/// The cells of the table row that starts with `name`, split on whitespace.
fn row<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name} ");
    let line = text.lines().find(|line| line.starts_with(&prefix));
    line.unwrap_or_else(|| panic!("no row {name} in:\n{text}"))
        .split_whitespace()
        .collect()
}

// Goal: `keel status` tells a healthy server from one that needs attention, in its text, its
// JSON and its exit code: 0 with healthy subscriptions; 1 with a paused subscription and one
// with dead letters, each named with its next step (resume; dlq list and redrive); 0 again
// once both are dealt with. Method: the binary against a real server; the dead letter is a
// pulled event rejected with `sub reject`.
#[tokio::test]
async fn cli_status_names_what_needs_attention_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = KEEL.start(&dir.path().join("data")).await;
    let url = server.url.as_str();
    stdout(&keel(
        url,
        &["topic", "create", "orders", "--partitions", "2"],
    ));
    for name in ["healthy", "held", "rejects"] {
        let create = [
            "sub", "create", name, "--topic", "orders", "--start", "earliest",
        ];
        stdout(&keel(url, &create));
    }
    let (code, text, stderr) = status(url, false);
    assert_eq!(code, Some(0), "{text}{stderr}");
    assert!(
        text.starts_with(&format!("keel at {url}: ready\n")),
        "{text}"
    );
    assert_eq!(row(&text, "orders")[..3], ["orders", "2", "0"], "{text}");
    assert_eq!(
        row(&text, "healthy")[..4],
        ["healthy", "orders", "pull", "active"]
    );
    assert!(
        text.ends_with("healthy: nothing needs attention\n"),
        "{text}"
    );

    stdout(&keel(url, &["sub", "pause", "held"]));
    publish_event(url, "e-1");
    let pulled = pulled(&stdout(&keel(
        url,
        &["sub", "pull", "rejects", "--wait", "5s"],
    )));
    let ack_id = pulled[0]["ack_id"].as_str().unwrap();
    stdout(&keel(url, &["sub", "reject", "rejects", ack_id]));
    keel_until(url, &["dlq", "list", "rejects"], |text| {
        text.contains("e-1")
    });
    let (code, text, stderr) = status(url, false);
    assert_eq!(code, Some(1), "{text}{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: 2 problems need attention (listed above)"
    );
    assert_eq!(row(&text, "held")[3], "paused", "{text}");
    assert_eq!(row(&text, "rejects")[5], "1", "DLQ depth: {text}");
    let attention = &text[text.find("2 problems need attention:\n").expect(&text)..];
    assert!(
        attention.contains("subscription held: paused: ")
            && attention.contains("next: keel sub resume held"),
        "{attention}"
    );
    assert!(
        attention.contains("subscription rejects: 1 event in the dead-letter queue")
            && attention.contains("keel dlq redrive rejects --all"),
        "{attention}"
    );
    let (code, json, _) = status(url, true);
    assert_eq!(code, Some(1));
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["healthy"], false, "{report}");
    let each = |list: &str, member: &str| -> Vec<String> {
        let items = report[list].as_array().unwrap().iter();
        items
            .map(|item| item[member].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        each("problems", "subject"),
        ["subscription held", "subscription rejects"]
    );
    assert_eq!(report["readiness"]["status"], "ready", "{report}");
    assert_eq!(
        each("subscriptions", "name"),
        ["healthy", "held", "rejects"],
        "{report}"
    );

    stdout(&keel(url, &["sub", "resume", "held"]));
    stdout(&keel(url, &["dlq", "purge", "rejects", "--yes"]));
    let (code, text, stderr) = status(url, false);
    assert_eq!(code, Some(0), "{text}{stderr}");
    assert!(
        text.ends_with("healthy: nothing needs attention\n"),
        "{text}"
    );
    // With no server to ask, --json still prints a report naming the server as the problem.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let (code, report, _) = status(&nowhere, true);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(code, Some(1));
    assert_eq!(
        (&report["healthy"], &report["problems"][0]["subject"]),
        (&json!(false), &json!("server")),
        "{report}"
    );
}
