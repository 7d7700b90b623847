//! The Python reference examples `examples/fanout.py` and `examples/aggregate.py`, each run by
//! exactly the one command its docstring opens with, against the real binary. Their outcomes
//! are checked over keel's HTTP API, not taken from what they print:
//! - fan-out: every subscription acknowledged every published event once, nothing is pending
//!   or dead-lettered, and only the sink that was down needed retries;
//! - aggregate: the account's stream has versions 1..=N with no gap, holds exactly the events
//!   the writers applied, and folds to balances that never go below 0 and match the balance
//!   each event recorded when it was decided (a lost or doubled update breaks the chain),
//!   also when keel is killed with `kill -9` while the writers run.
//!
//! (`examples/balances.py` is tested by `exactly_once.rs`.) Needs `python3` on the PATH.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use keel_testkit::process::free_port;
use serde_json::Value;
use support::example::{Example, argument, documented_command, require_python3};
use support::{KEEL, get, read_topic};

/// How long one run of an example may take.
const EXAMPLE_RUN_WAIT: Duration = Duration::from_secs(60);
/// When keel is killed while aggregate.py runs: this long after the previous (re)start.
const AGGREGATE_KILL_AFTER: [Duration; 2] =
    [Duration::from_millis(800), Duration::from_millis(1500)];

/// examples/fanout.py: its file, topic, sinks and the one that fails for a while.
const FANOUT: &str = "fanout.py";
const FANOUT_TOPIC: &str = "purchases";
const FANOUT_SINKS: [&str; 3] = ["billing", "shipping", "analytics"];
const FANOUT_FAILING_SINK: &str = "shipping";

/// examples/aggregate.py: its file, topic and default account.
const AGGREGATE: &str = "aggregate.py";
const AGGREGATE_TOPIC: &str = "accounts";
const AGGREGATE_ACCOUNT: &str = "acct-1";

// Goal: fan-out delivers every event to every sink although one sink is down for a while, and
// the healthy sinks need no retry. Method: run fanout.py by its documented command (20 events;
// `shipping` answers 503 for the first 3 s) against a fresh keel; it must exit 0; then each
// subscription's describe (counters since this keel started, and the subscriptions are new)
// must show every event delivered exactly once and nothing pending, in flight or
// dead-lettered; `shipping` must show retries, the others none.
#[tokio::test]
async fn fanout_example_delivers_every_event_to_every_sink_through_an_outage() {
    require_python3();
    let dir = tempfile::tempdir().unwrap();
    let keel = KEEL.start(&dir.path().join("data")).await;
    let client = reqwest::Client::new();
    let events: u64 = argument(&documented_command(FANOUT), "--events");
    let example = Example::start(FANOUT, &keel.url, &dir.path().join("fanout.log"), &[]);
    let output = example.finish(EXAMPLE_RUN_WAIT).await;
    let published = read_topic(&client, &keel.url, FANOUT_TOPIC).await;
    assert_eq!(published.len() as u64, events, "events in the topic");
    for sink in FANOUT_SINKS {
        let url = format!("{}/v1/subscriptions/{FANOUT_TOPIC}-{sink}", keel.url);
        let (status, info) = get(&client, &url).await;
        assert_eq!(status, 200, "{info}");
        let counters = |name: &str| info[name].as_u64().unwrap();
        assert_eq!(
            (counters("delivered"), counters("dead_lettered")),
            (events, 0),
            "{sink}: (delivered, dead-lettered) {info:#}\nthe example's output:\n{output}"
        );
        for idle in ["lag", "in_flight", "pending", "dlq_depth"] {
            assert_eq!(counters(idle), 0, "{sink}: {idle} {info:#}");
        }
        let retried = counters("retried");
        if sink == FANOUT_FAILING_SINK {
            assert!(retried > 0, "{sink} failed, so keel retried: {info:#}");
        } else {
            assert_eq!(retried, 0, "{sink} was healthy, so never retried: {info:#}");
        }
    }
}

// Goal: fanout.py says so, by its exit status, when a sink does not get every event in time.
// Method: its documented command with the failing sink down for longer than the example
// waits (`--fail-for 60s --timeout 2s`); it must exit 1 naming the missing deliveries.
#[tokio::test]
async fn fanout_example_fails_when_a_sink_misses_events() {
    require_python3();
    let dir = tempfile::tempdir().unwrap();
    let keel = KEEL.start(&dir.path().join("data")).await;
    let log = dir.path().join("fanout.log");
    let extra = ["--fail-for", "60s", "--timeout", "2s"];
    let example = Example::start(FANOUT, &keel.url, &log, &extra);
    let (status, output) = example.exit(EXAMPLE_RUN_WAIT).await;
    assert_eq!(status.code(), Some(1), "{output}");
    let events: u64 = argument(&documented_command(FANOUT), "--events");
    assert!(
        output.contains(&format!("{events} deliveries missing")),
        "{output}"
    );
}

/// What one run of aggregate.py said it did: its summary line `W writers, C commands: A
/// applied, R refused (insufficient funds), K conflicts retried`.
#[derive(Debug)]
struct AggregateRun {
    commands: u64,
    applied: u64,
    refused: u64,
    conflicts: u64,
}

fn aggregate_run(output: &str) -> AggregateRun {
    let line = output
        .lines()
        .find(|line| line.contains(" conflicts retried"))
        .unwrap_or_else(|| panic!("no summary line in:\n{output}"));
    // The number before each word.
    let before = |word: &str| -> u64 {
        let words: Vec<&str> = line
            .split([' ', ',', ':'])
            .filter(|w| !w.is_empty())
            .collect();
        let at = words.iter().position(|w| *w == word).unwrap();
        words[at - 1].parse().unwrap()
    };
    AggregateRun {
        commands: before("commands"),
        applied: before("applied"),
        refused: before("refused"),
        conflicts: before("conflicts"),
    }
}

/// Reads the account's whole stream over HTTP and checks it: versions 1..=version with no gap,
/// distinct event ids, and a fold whose balance never goes below 0 and equals, after every
/// event, the balance that event recorded. Returns the stream's version.
async fn check_account_stream(client: &reqwest::Client, url: &str) -> u64 {
    let path = format!("{url}/v1/topics/{AGGREGATE_TOPIC}/keys/{AGGREGATE_ACCOUNT}/events");
    let (mut records, mut from) = (Vec::<Value>::new(), 1);
    let version = loop {
        let (status, page) = get(client, &format!("{path}?from_version={from}&max=1000")).await;
        assert_eq!(status, 200, "{page}");
        records.extend(page["records"].as_array().unwrap().iter().cloned());
        from = page["next_version"].as_u64().unwrap();
        let version = page["version"].as_u64().unwrap();
        if from > version {
            break version;
        }
    };
    let (mut balance, mut ids) = (0_i64, BTreeSet::new());
    for (index, record) in records.iter().enumerate() {
        assert_eq!(
            record["version"],
            index as u64 + 1,
            "versions without a gap"
        );
        let event = &record["event"];
        assert!(
            ids.insert(event["id"].as_str().unwrap().to_owned()),
            "{event}: id twice"
        );
        let amount = event["data"]["amount"].as_i64().unwrap();
        balance += match event["type"].as_str().unwrap() {
            "deposited" => amount,
            "withdrawn" => -amount,
            other => panic!("event type {other}"),
        };
        assert!(balance >= 0, "overdrawn at version {}: {event}", index + 1);
        assert_eq!(
            event["data"]["balance"].as_i64().unwrap(),
            balance,
            "version {}: the event was decided on another balance than the stream's: {event}",
            index + 1
        );
    }
    assert_eq!(records.len() as u64, version, "one record per version");
    version
}

// Goal: concurrent writers of one event-sourced aggregate, each appending with
// `expected_version` and retrying on 409, lose no update and double none, and never overdraw
// the account. Method: run aggregate.py by its documented command (8 writers, 25 commands
// each, at one account) against a fresh keel, then once more (continuing the same stream);
// each run must exit 0. Then read the stream over HTTP and check it (see
// `check_account_stream`); its version must equal the events both runs said they applied, and
// every command must have been applied or refused. The writers must have met conflicts, or
// the test proved nothing about concurrency.
#[tokio::test]
async fn aggregate_example_concurrent_writers_lose_and_double_no_update() {
    require_python3();
    let dir = tempfile::tempdir().unwrap();
    let keel = KEEL.start(&dir.path().join("data")).await;
    let client = reqwest::Client::new();
    let command = documented_command(AGGREGATE);
    let writers: u64 = argument(&command, "--writers");
    let per_writer: u64 = argument(&command, "--commands");
    let mut runs = Vec::new();
    for run in ["first", "second"] {
        let log = dir.path().join(format!("aggregate-{run}.log"));
        let output = Example::start(AGGREGATE, &keel.url, &log, &[])
            .finish(EXAMPLE_RUN_WAIT)
            .await;
        let said = aggregate_run(&output);
        assert_eq!(said.commands, writers * per_writer, "{output}");
        assert_eq!(said.applied + said.refused, said.commands, "{output}");
        runs.push(said);
    }
    let version = check_account_stream(&client, &keel.url).await;
    let applied: u64 = runs.iter().map(|run| run.applied).sum();
    assert_eq!(
        version, applied,
        "stream version vs events applied: {runs:?}"
    );
    assert!(
        runs.iter().all(|run| run.conflicts > 0 && run.applied > 0),
        "the writers raced (409s) and appended: {runs:?}"
    );
}

// Goal: the aggregate stays exact when keel is killed mid-run: an append whose answer was lost
// to the kill is sent again with the same event id and expected version, and is answered as a
// duplicate if it had been appended, so no command is applied twice or lost. Method: run
// aggregate.py by its documented command with more commands per writer; kill -9 keel twice
// while it runs, restarting it at once on the same data dir and port; the example must exit 0
// having met keel unavailable, and the stream must check out (`check_account_stream`) with a
// version equal to the events the writers applied.
#[tokio::test]
async fn aggregate_example_stays_exact_across_kill_9_of_keel() {
    require_python3();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut keel = KEEL.start_on(&data_dir, &listen).await;
    let client = reqwest::Client::new();
    let log = dir.path().join("aggregate.log");
    let mut example = Example::start(AGGREGATE, &keel.url, &log, &["--commands", "100"]);
    for pause in AGGREGATE_KILL_AFTER {
        tokio::time::sleep(pause).await;
        example.assert_running();
        keel.kill9();
        keel = KEEL.start_on(&data_dir, &listen).await;
    }
    let output = example.finish(EXAMPLE_RUN_WAIT).await;
    assert!(
        output.contains("keel unavailable"),
        "the kills interrupted it:\n{output}"
    );
    let said = aggregate_run(&output);
    let version = check_account_stream(&client, &keel.url).await;
    assert_eq!(
        version, said.applied,
        "stream version vs events applied: {said:?}"
    );
}
