//! Push delivery checked by outside libraries: `PushClient::deliver` pushes events to
//! `tests/interop/standard_webhooks_sink.py`, which verifies each signature with the official
//! Standard Webhooks Python library and decodes each event with the CloudEvents Python SDK.
//!
//! Runs only with `KEEL_INTEROP=1` (as `scripts/interop.sh` sets it), since it needs Python and
//! both packages (`scripts/install-test-deps.sh`); otherwise it prints why it skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use keel_engine::webhook::{AttemptOutcome, PushClient, SinkTarget, Url, WebhookSecret};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Kills the sink when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the Python sink for `secret`; returns it with its URL once it listens.
async fn start_sink(secret: &WebhookSecret, dir: &Path) -> (KillOnDrop, Url) {
    let script: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "tests",
        "interop",
        "standard_webhooks_sink.py",
    ]
    .iter()
    .collect();
    let port_file = dir.join("port");
    let child = Command::new("python3")
        .arg(&script)
        .arg(&port_file)
        .arg(secret.to_string())
        .spawn()
        .expect("python3 starts");
    let mut sink = KillOnDrop(child);
    for _ in 0..200 {
        if let Ok(port) = std::fs::read_to_string(&port_file) {
            let url = Url::parse(&format!("http://127.0.0.1:{port}/webhooks")).unwrap();
            return (sink, url);
        }
        if let Some(status) = sink.0.try_wait().unwrap() {
            panic!("the Python sink exited with {status}: are its packages installed?");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the Python sink did not start listening within 10 s");
}

/// Events of each body form the library verifies (it reads bodies as UTF-8 text).
const EVENTS: &[&str] = &[
    r#"{"specversion":"1.0","id":"json-1","source":"/shop","type":"order.created","partitionkey":"order-1001","data":{"amount": 42, "items": ["a", "b"]}}"#,
    r#"{"specversion":"1.0","id":"text-1","source":"/shop","type":"note.added","subject":"café \"x\" 5%","datacontenttype":"text/plain; charset=utf-8","data":"hello, wörld"}"#,
    r#"{"specversion":"1.0","id":"empty-1","source":"/shop","type":"ping","priority":5,"urgent":true}"#,
    r#"{"specversion":"1.0","id":"b64-1","source":"/shop","type":"blob","datacontenttype":"application/octet-stream","data_base64":"aGVsbG8="}"#,
];

// Goal: the official Standard Webhooks library accepts keel's signature on every body form,
// the CloudEvents SDK decodes each push, and the same sink refuses a wrong signature, so the
// check can fail. Method: push each event with the sink's secret (expect 204), then one with
// another secret (expect 401 from the library's verdict).
#[tokio::test]
async fn standard_webhooks_library_verifies_pushes() {
    if std::env::var("KEEL_INTEROP").as_deref() != Ok("1") {
        println!("skipped: set KEEL_INTEROP=1 (scripts/interop.sh does) to run this check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = WebhookSecret::generate();
    let (_sink, url) = start_sink(&secret, dir.path()).await;
    let client = PushClient::new();
    let target = SinkTarget::new(url, secret);
    for (attempt, event) in (1..).zip(EVENTS) {
        let outcome = client.deliver(&target, event, attempt, TIMEOUT).await;
        assert_eq!(
            outcome,
            AttemptOutcome::Delivered { status: 204 },
            "event {event}"
        );
    }

    let forged = SinkTarget::new(target.url.clone(), WebhookSecret::generate());
    let outcome = client.deliver(&forged, EVENTS[0], 1, TIMEOUT).await;
    assert_eq!(
        outcome,
        AttemptOutcome::Reject {
            status: 401,
            error: "401 Unauthorized: signature rejected: No matching signature found".to_owned(),
        }
    );
}

// Goal: during a secret rotation's overlap, the official Standard Webhooks library verifies a
// push with the previous secret and with the new one (two signatures in `webhook-signature`),
// and once the overlap ends only with the new one. Method: two Python sinks, one holding the
// old secret and one the new; push with the previous secret in its overlap, then ended.
#[tokio::test]
async fn standard_webhooks_library_verifies_either_secret_during_a_rotation() {
    if std::env::var("KEEL_INTEROP").as_deref() != Ok("1") {
        println!("skipped: set KEEL_INTEROP=1 (scripts/interop.sh does) to run this check");
        return;
    }
    let (old, new) = (WebhookSecret::generate(), WebhookSecret::generate());
    let (old_dir, new_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_old_sink, old_url) = start_sink(&old, old_dir.path()).await;
    let (_new_sink, new_url) = start_sink(&new, new_dir.path()).await;
    let client = PushClient::new();
    let now_ms = keel_engine::clock::now_ms();
    let rotated = |url: &Url, until_ms: i64| SinkTarget {
        url: url.clone(),
        secret: new.clone(),
        previous_secret: Some((old.clone(), until_ms)),
    };
    let delivered = AttemptOutcome::Delivered { status: 204 };
    for url in [&old_url, &new_url] {
        let in_overlap = rotated(url, now_ms + 3_600_000);
        let outcome = client.deliver(&in_overlap, EVENTS[0], 1, TIMEOUT).await;
        assert_eq!(outcome, delivered, "in the overlap, to {url}");
    }
    let ended = client
        .deliver(&rotated(&new_url, now_ms - 1), EVENTS[0], 1, TIMEOUT)
        .await;
    assert_eq!(ended, delivered, "after the overlap, with the new secret");
    let ended = client
        .deliver(&rotated(&old_url, now_ms - 1), EVENTS[0], 1, TIMEOUT)
        .await;
    assert!(
        matches!(ended, AttemptOutcome::Reject { status: 401, .. }),
        "after the overlap, the old secret no longer verifies: {ended:?}"
    );
}
