//! HTTPS sinks behind a private certificate authority: a real TLS server on 127.0.0.1 whose
//! certificate is signed by a CA the test makes. Without `webhooks.ca_bundle` keel refuses its
//! certificate (describe says so); with the CA's PEM as the bundle, events are delivered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keel_engine::subscription::SubscriptionInfo;
use keel_engine::webhook::WebhookSettings;
use keel_engine::{Engine, EngineConfig, EngineError, TopicConfig};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const PATIENCE: Duration = Duration::from_secs(20);

/// A CA's certificate in PEM, and a server configuration whose certificate (for `localhost`
/// and 127.0.0.1) it signed.
fn private_ca() -> (String, rustls::ServerConfig) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![server_cert.der().clone()], key)
        .unwrap();
    (ca_pem, config)
}

/// An HTTPS sink on 127.0.0.1 answering every request 204; returns its URL and the count of
/// requests it answered (handshakes that fail answer none).
async fn https_sink(config: rustls::ServerConfig) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/hook",
        listener.local_addr().unwrap().port()
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                read_request(&mut tls).await;
                let answer = b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n";
                if tls.write_all(answer).await.is_ok() {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    (url, answered)
}

/// Reads one request: its head, then as many body bytes as its `content-length` says.
async fn read_request(stream: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut request = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        let Ok(read) = stream.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        request.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length: usize = text[..head_end]
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().unwrap());
            if request.len() >= head_end + 4 + length {
                return;
            }
        }
    }
}

async fn engine(dir: &Path, ca_bundle: Option<PathBuf>) -> Result<Engine, EngineError> {
    let mut config = EngineConfig::new(dir);
    config.webhooks = WebhookSettings {
        ca_bundle,
        ..WebhookSettings::default()
    };
    Engine::open(config).await
}

/// Subscribes `name` to `url` and publishes one event.
async fn push_one(engine: &Engine, url: &str) {
    engine
        .create_topic("orders", TopicConfig::default())
        .await
        .unwrap();
    let spec = json!({"topic": "orders", "start": "earliest", "sink": {"url": url}});
    let created = engine
        .create_subscription("hooks", serde_json::from_value(spec).unwrap())
        .await;
    created.unwrap();
    let event = json!({"specversion": "1.0", "id": "e-1", "source": "/test", "type": "t"});
    let event = keel_engine::event::from_value(event).unwrap();
    engine.publish("orders", vec![event]).await.unwrap();
}

async fn wait_until(engine: &Engine, done: impl Fn(&SubscriptionInfo) -> bool) -> SubscriptionInfo {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = engine.describe_subscription("hooks").unwrap();
        if done(&info) {
            return info;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Goal: an HTTPS sink whose certificate a private CA signed is refused without a CA bundle,
// with a certificate error in describe and no request answered, and is delivered to once the
// CA's PEM is the bundle (the system's roots stay trusted beside it). Method: a CA and a
// server certificate made by rcgen, a rustls server on 127.0.0.1 counting the requests it
// answers; one engine without the bundle, one with it.
#[tokio::test]
async fn private_ca_sinks_need_the_ca_bundle() {
    let (ca_pem, server_config) = private_ca();
    let (url, answered) = https_sink(server_config).await;
    let dir = tempfile::tempdir().unwrap();

    let without = engine(&dir.path().join("without"), None).await.unwrap();
    push_one(&without, &url).await;
    let info = wait_until(&without, |info| info.last_error.is_some()).await;
    let error = &info.last_error.unwrap().error;
    assert!(
        error.contains("invalid peer certificate: UnknownIssuer"),
        "{error}"
    );
    assert_eq!(answered.load(Ordering::SeqCst), 0);
    without.shut_down().await;

    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, &ca_pem).unwrap();
    let with = engine(&dir.path().join("with"), Some(bundle))
        .await
        .unwrap();
    push_one(&with, &url).await;
    wait_until(&with, |info| info.delivered == 1).await;
    assert_eq!(answered.load(Ordering::SeqCst), 1);
    with.shut_down().await;
}

// Goal: a CA bundle that cannot be used stops the engine from opening, with the setting, the
// file and the reason named. Method: a missing file, a file without PEM certificates.
#[tokio::test]
async fn an_unusable_ca_bundle_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for (bundle, reason) in [
        (missing, "cannot read the CA bundle"),
        (empty, "holds no certificate"),
    ] {
        let Err(error) = engine(&dir.path().join("data"), Some(bundle.clone())).await else {
            panic!("{} was accepted", bundle.display());
        };
        let text = error.to_string();
        assert!(
            text.starts_with("invalid setting: ")
                && text.contains(&format!("(webhooks.ca_bundle) {}", bundle.display()))
                && text.contains(reason),
            "{text}"
        );
    }
}
