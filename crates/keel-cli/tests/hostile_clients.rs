//! Clients that attack by being slow or greedy, against the real `keel` binary: hundreds of
//! clients that never read their answers, a slowloris, a flood of oversized requests.
//! Invariants: memory stays within the response budget (plus a fixed margin), and a
//! well-behaved client publishes all along.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use keel_testkit::process::{KeelProcess, free_port, resident_bytes};
use serde_json::{Value, json};
use support::KEEL;
use tokio::io::AsyncWriteExt;

/// The response budget the tests give keel: the least allowed.
const BUDGET_BYTES: u64 = 16 * 1024 * 1024;

async fn start(dir: &std::path::Path) -> KeelProcess {
    let config = dir.join("keel.toml");
    std::fs::write(
        &config,
        format!(
            "header_read_timeout = \"2s\"\nwrite_timeout = \"3s\"\nresponse_bytes_max = {BUDGET_BYTES}\n"
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut command = KEEL.serve_command(&dir.join("data"), &listen);
    command.arg("--config").arg(&config);
    let keel = KeelProcess::spawn(command, &dir.join("data"), &listen, &dir.join("keel.log"));
    keel.wait_ready().await;
    keel
}

/// Publishes one small event; how long the answer took.
async fn publish_one(client: &reqwest::Client, url: &str, n: usize) -> Duration {
    let started = Instant::now();
    let event =
        json!({"specversion": "1.0", "id": format!("good-{n}"), "source": "good", "type": "t"});
    let (status, body) = support::publish_event(client, url, "good", &event).await;
    assert_eq!(status, 200, "{body}");
    started.elapsed()
}

/// Publishes while `hostile` runs; the slowest answer.
async fn publish_throughout(url: &str, hostile: impl std::future::Future<Output = ()>) -> Duration {
    let client = reqwest::Client::new();
    let (url, slowest) = (
        url.to_owned(),
        std::sync::Arc::new(std::sync::Mutex::new(Duration::ZERO)),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (slowest, stop) = (slowest.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let took = publish_one(&client, &url, n).await;
                {
                    let mut slowest = slowest.lock().unwrap();
                    *slowest = (*slowest).max(took);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };
    let started = Instant::now();
    hostile.await;
    // The publisher gets at least 2 s of it, however quickly keel dealt with the attack.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(started.elapsed())).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let published = publisher.await.unwrap();
    eprintln!("published {published} while the hostile clients ran");
    assert!(published >= 10, "published {published}");
    *slowest.lock().unwrap()
}

// Goal: 150 clients that ask for 4 MiB pages and never read them hold keel's memory within
// the response budget plus a margin (before the budget, they pushed it past 1 GB), others
// publish meanwhile, and after the write timeout their connections are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_stay_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let keel = start(dir.path()).await;
    let client = reqwest::Client::new();
    for topic in ["big", "good"] {
        let created = client
            .put(format!("{}/v1/topics/{topic}", keel.url))
            .body(r#"{"partitions": 1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    let data = "x".repeat(100_000);
    // More than the 64 records read inline: a read from 0 answers a 4 MiB page.
    for batch in 0..10 {
        let events: Vec<Value> = (0..10)
            .map(|i| json!({"specversion": "1.0", "id": format!("big-{batch}-{i}"), "source": "s", "type": "t", "data": data}))
            .collect();
        let published = client
            .post(format!("{}/v1/topics/big/events", keel.url))
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::Array(events).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(published.status(), 200);
    }
    let baseline = resident_bytes(keel.pid());
    let listen = keel.listen.clone();
    let pid = keel.pid();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let hostile = {
        let peak = peak.clone();
        async move {
            let mut readers = Vec::new();
            for _ in 0..150 {
                // A small receive window: what the client does not read stays with keel.
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_recv_buffer_size(4096).unwrap();
                let mut socket = socket.connect(listen.parse().unwrap()).await.unwrap();
                socket
                    .write_all(b"GET /v1/topics/big/partitions/0/events?from=0&max=1000 HTTP/1.1\r\nhost: keel\r\n\r\n")
                    .await
                    .unwrap();
                readers.push(socket);
                peak.fetch_max(resident_bytes(pid), std::sync::atomic::Ordering::SeqCst);
            }
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                peak.fetch_max(resident_bytes(pid), std::sync::atomic::Ordering::SeqCst);
            }
            readers
        }
    };
    let readers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = readers.clone();
    let slowest = publish_throughout(&keel.url, async move {
        *kept.lock().unwrap() = hostile.await;
    })
    .await;
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    let grown = peak.saturating_sub(baseline);
    eprintln!("RSS {baseline} B before, peak {peak} B (+{grown}); slowest publish {slowest:?}");
    assert!(
        grown < BUDGET_BYTES + 96 * 1024 * 1024,
        "memory grew by {grown} bytes"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "a publish took {slowest:?}"
    );
    // Within the write timeout (3 s) and a margin, keel lets the non-readers go: a read finds
    // the end of each connection.
    let readers: Vec<_> = readers.lock().unwrap().drain(..).collect();
    let mut closed = 0;
    for mut socket in readers {
        closed += usize::from(closed_by_keel(&mut socket, Duration::from_secs(10)).await);
    }
    assert_eq!(closed, 150, "connections keel let go");
}

/// Creates topic `good`, which the well-behaved client publishes to.
async fn create_good_topic(keel: &KeelProcess) {
    let created = reqwest::Client::new()
        .put(format!("{}/v1/topics/good", keel.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
}

/// Whether keel closed `socket` (a read finds the end, or an error) within `within`.
async fn closed_by_keel(socket: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut sink = Vec::new();
    let read = tokio::time::timeout(
        within,
        tokio::io::AsyncReadExt::read_to_end(socket, &mut sink),
    )
    .await;
    read.is_ok()
}

// Goal: 200 slowloris connections, each sending a request head a byte at a time and never
// finishing it, are closed after the header timeout, and hold up no one meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_is_cut_off_and_holds_up_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let keel = start(dir.path()).await;
    create_good_topic(&keel).await;
    let listen = keel.listen.clone();
    let slowest = publish_throughout(&keel.url, async move {
        let mut sockets = Vec::new();
        for _ in 0..200 {
            let mut socket = tokio::net::TcpStream::connect(&listen).await.unwrap();
            socket
                .write_all(b"POST /v1/topics/good/events HTTP/1.1\r\nhost: keel\r\n")
                .await
                .unwrap();
            sockets.push(socket);
        }
        // A byte of another header line every half second, past the 2 s header timeout.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for socket in &mut sockets {
                let _ = socket.write_all(b"x").await;
            }
        }
        let mut closed = 0;
        for socket in &mut sockets {
            closed += usize::from(closed_by_keel(socket, Duration::from_secs(3)).await);
        }
        assert_eq!(closed, 200, "slowloris connections keel closed");
    })
    .await;
    assert!(
        slowest < Duration::from_secs(2),
        "a publish took {slowest:?}"
    );
}

// Goal: a flood of requests over the body limit is refused (413) without keel reading or
// keeping their bodies, and holds up no one meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_oversized_requests_is_refused_cheaply() {
    let dir = tempfile::tempdir().unwrap();
    let keel = start(dir.path()).await;
    create_good_topic(&keel).await;
    let baseline = resident_bytes(keel.pid());
    let (url, pid) = (keel.url.clone(), keel.pid());
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let watched = peak.clone();
    let slowest = publish_throughout(&keel.url, async move {
        let client = reqwest::Client::new();
        let body = bytes_of(20 * 1024 * 1024);
        let mut floods = Vec::new();
        for _ in 0..40 {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            floods.push(tokio::spawn(async move {
                let answer = client
                    .post(format!("{url}/v1/topics/good/events"))
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(body)
                    .send()
                    .await;
                answer.map(|answer| answer.status().as_u16()).unwrap_or(0)
            }));
        }
        for flood in floods {
            let status = flood.await.unwrap();
            watched.fetch_max(resident_bytes(pid), std::sync::atomic::Ordering::SeqCst);
            // 413, or the connection closed while the body was still being sent.
            assert!(status == 413 || status == 0, "{status}");
        }
    })
    .await;
    let grown = peak
        .load(std::sync::atomic::Ordering::SeqCst)
        .saturating_sub(baseline);
    eprintln!("RSS grew by {grown} B under 40 bodies of 20 MiB; slowest publish {slowest:?}");
    assert!(grown < 32 * 1024 * 1024, "memory grew by {grown} bytes");
    assert!(
        slowest < Duration::from_secs(2),
        "a publish took {slowest:?}"
    );
}

fn bytes_of(length: usize) -> Vec<u8> {
    vec![b' '; length]
}
