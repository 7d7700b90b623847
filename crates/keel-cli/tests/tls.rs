//! HTTPS for the API, with the real `keel` binary: the configured certificate is served, a
//! client that does not trust its CA is refused by its own verification, plain HTTP gets
//! no answer, and SIGHUP swaps the certificate for new connections without dropping the
//! open ones (a reload that fails keeps the certificate in use).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use keel_testkit::process::{KeelProcess, free_port};
use keel_testkit::tls::TestCa;
use support::KEEL;

/// A client trusting `cas` (PEM), reporting the certificate each server presents.
fn client_trusting(cas: &[&TestCa]) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().tls_info(true);
    for ca in cas {
        builder = builder
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

/// `GET url/readyz`: the status and the DER of the certificate the server presented.
async fn ready(client: &reqwest::Client, url: &str) -> Result<(u16, Vec<u8>), reqwest::Error> {
    let response = client.get(format!("{url}/readyz")).send().await?;
    let presented = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    Ok((response.status().as_u16(), presented))
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

// Goal: the invariants in the module documentation, on one server.
#[tokio::test]
async fn https_with_a_certificate_read_again_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (first_ca, second_ca) = (
        TestCa::new("keel test CA one"),
        TestCa::new("keel test CA two"),
    );
    let first = first_ca.issue(dir.path(), "first");
    let second = second_ca.issue(dir.path(), "second");
    let (cert, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    copy(&first.cert, &cert);
    copy(&first.key, &key);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut command = KEEL.serve_command(&dir.path().join("data"), &listen);
    command.args([
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let keel = KeelProcess::spawn(
        command,
        &dir.path().join("data"),
        &listen,
        &dir.path().join("keel.log"),
    );
    let url = format!("https://localhost:{port}");
    let both = [&first_ca, &second_ca];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = ready(&client_trusting(&both), &url).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready over HTTPS: {}",
            keel.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        keel.log_text().contains(&format!("https://{listen}")),
        "{}",
        keel.log_text()
    );

    // The configured certificate is the one presented.
    let held = client_trusting(&both);
    assert_eq!(ready(&held, &url).await.unwrap(), (200, first.der.clone()));
    // A client that does not trust the CA refuses the server itself.
    let stranger = client_trusting(&[&second_ca]);
    let refused = ready(&stranger, &url).await.unwrap_err();
    assert!(refused.is_connect(), "{refused:?}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{listen}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    // SIGHUP after the files changed: new connections get the new certificate.
    copy(&second.cert, &cert);
    copy(&second.key, &key);
    keel.hang_up();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, presented) = ready(&client_trusting(&both), &url).await.unwrap();
        assert_eq!(status, 200);
        if presented == second.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served 5 s after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened before the reload goes on, on its own handshake.
    assert_eq!(ready(&held, &url).await.unwrap(), (200, first.der.clone()));
    assert!(
        ready(&stranger, &url).await.is_ok(),
        "the second CA's client now gets in"
    );

    // A reload that fails keeps the certificate in use.
    std::fs::write(&key, "not a key").unwrap();
    keel.hang_up();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !keel
        .log_text()
        .contains("cannot read the TLS certificate and key")
    {
        assert!(
            Instant::now() < deadline,
            "no error logged: {}",
            keel.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ready(&client_trusting(&both), &url).await.unwrap(),
        (200, second.der.clone())
    );
}

// Goal: a missing or mismatched certificate stops the start with the file named, before
// keel serves anything.
#[tokio::test]
async fn a_bad_certificate_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("keel test CA");
    let (one, other) = (ca.issue(dir.path(), "one"), ca.issue(dir.path(), "other"));
    for (cert, key, needle) in [
        (
            dir.path().join("missing.crt"),
            one.key.clone(),
            "missing.crt",
        ),
        (one.cert.clone(), other.key.clone(), "one.crt"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--tls-cert",
            ])
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
}

// Goal: in cluster mode keel reaches NATS over TLS, verifying the servers' certificate
// against the CA it is given (--nats-ca), and works through it; without that CA it refuses
// the servers' certificate and does not start, saying it cannot connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_speaks_tls_to_nats() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("keel test NATS CA");
    let served = ca.issue(dir.path(), "nats");
    let nats =
        keel_testkit::nats::NatsCluster::start_with_tls(1, Some((&served.cert, &served.key))).await;
    let ca_file = ca.write_pem(dir.path(), "nats-ca");
    let serve = |extra: &[&str]| {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut command = KEEL.serve_command(&dir.path().join("data"), &listen);
        command.args([
            "--cluster",
            &nats.url(0),
            "--replicas",
            "1",
            "--node-id",
            "tls-node",
        ]);
        command.args(extra);
        (command, listen)
    };
    let (mut untrusting, _) = serve(&[]);
    let refused = untrusting.output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot connect") || stderr.contains("connect"),
        "{stderr}"
    );

    let (command, listen) = serve(&["--nats-ca", ca_file.to_str().unwrap()]);
    let keel = KeelProcess::spawn(
        command,
        &dir.path().join("data"),
        &listen,
        &dir.path().join("tls-node.log"),
    );
    keel.wait_ready().await;
    let client = reqwest::Client::new();
    let created = client
        .put(format!("{}/v1/topics/secure", keel.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let event = serde_json::json!({"specversion": "1.0", "id": "e1", "source": "tls", "type": "t"});
    let (status, body) = support::publish_event(&client, &keel.url, "secure", &event).await;
    assert_eq!(status, 200, "{body}");
    let records = support::read_partition(&client, &keel.url, "secure", 0).await;
    assert_eq!(records.len(), 1, "{records:?}");
}
