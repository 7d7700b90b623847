//! Sinks that try to hold keel: an endless response body sent as fast as the socket takes it,
//! one that drips a byte at a time, and a sink that never answers. Each is a real server on
//! 127.0.0.1 speaking raw HTTP/1.1; keel's memory is read from `/proc/self/status` (nextest
//! runs each test in a process of its own).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use keel_engine::webhook::{AttemptOutcome, PushClient, SinkTarget, Url, WebhookSecret};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The attempt's timeout.
const TIMEOUT: Duration = Duration::from_millis(1500);
/// How much later than its timeout an attempt may end.
const SLACK: Duration = Duration::from_millis(500);
/// Deliveries at once to each hostile sink.
const CONCURRENT: usize = 16;
/// How much keel's resident memory may grow after the warm-up round (measured: about 2 MiB).
const RSS_GROWTH_BYTES_MAX: u64 = 6 * 1024 * 1024;

/// How a hostile sink answers.
#[derive(Debug, Clone, Copy)]
enum Hostility {
    /// 200 with a chunked body of 64 KiB chunks, written as fast as the socket takes them,
    /// until the connection is closed.
    EndlessBody,
    /// 200 with a chunked body of one byte every 10 ms, forever.
    DrippingBody,
    /// Reads the request and never answers.
    Silence,
}

/// Starts a sink answering every connection by `hostility`; returns its URL.
async fn hostile_sink(hostility: Hostility) -> Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/hook", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(answer(stream, hostility));
        }
    });
    url
}

/// Answers one connection: reads the request head and body start, then misbehaves until the
/// client goes away.
async fn answer(mut stream: TcpStream, hostility: Hostility) {
    let mut request = [0; 16 * 1024];
    let _ = stream.read(&mut request).await;
    let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunk = [b'x'; 64 * 1024];
    let framed: Vec<u8> = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
    match hostility {
        Hostility::EndlessBody => {
            let _ = stream.write_all(head).await;
            while stream.write_all(&framed).await.is_ok() {}
        }
        Hostility::DrippingBody => {
            let _ = stream.write_all(head).await;
            while stream.write_all(b"1\r\nx\r\n").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Hostility::Silence => {
            // Holds the connection until the client closes it.
            let _ = stream.read(&mut request).await;
        }
    }
}

/// Resident memory of this process, in bytes.
fn rss_bytes() -> u64 {
    keel_testkit::process::resident_bytes(std::process::id())
}

/// Delivers one event to `url` `CONCURRENT` times at once, each in a task; returns each
/// outcome with how long its attempt took.
async fn deliver_at_once(client: &PushClient, url: &Url) -> Vec<(AttemptOutcome, Duration)> {
    let target = SinkTarget::new(url.clone(), WebhookSecret::generate());
    let event = r#"{"specversion":"1.0","id":"e-1","source":"/test","type":"t","data":"x"}"#;
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENT {
        let (client, target) = (client.clone(), target.clone());
        attempts.spawn(async move {
            let started = Instant::now();
            let outcome = client.deliver(&target, event, 1, TIMEOUT).await;
            (outcome, started.elapsed())
        });
    }
    attempts.join_all().await
}

// Goal: a sink that sends an endless body, drips one, or never answers holds no delivery past
// its timeout (plus slack), and keel's memory does not grow with what the sink sends. An
// endless body is read up to its cap (64 KiB) and dropped with its connection: the 2xx it came
// with counts; a dripping body or silence is a retry naming the timeout.
// Method: 16 deliveries at once to each hostile sink, four rounds, timing each; VmRSS after
// the first round (a warm-up) and after the last. The endless sink writes about 1 GB/s on loopback: a
// client reading it whole would grow by hundreds of MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_sinks_hold_neither_memory_nor_deliveries() {
    let client = PushClient::new();
    let endless = hostile_sink(Hostility::EndlessBody).await;
    let dripping = hostile_sink(Hostility::DrippingBody).await;
    let silent = hostile_sink(Hostility::Silence).await;
    let sinks = [
        (endless, Hostility::EndlessBody),
        (dripping, Hostility::DrippingBody),
        (silent, Hostility::Silence),
    ];
    // Warm-up: the runtime's threads, the allocator's arenas and the connections' read buffers
    // (hyper's, at most about 400 KiB each) are allocated by the first round.
    let mut rss_before = 0;
    for round in 0..4 {
        if round == 1 {
            rss_before = rss_bytes();
        }
        for (url, hostility) in &sinks {
            for (outcome, took) in deliver_at_once(&client, url).await {
                assert!(
                    took <= TIMEOUT + SLACK,
                    "{hostility:?} held an attempt {took:?}"
                );
                match hostility {
                    Hostility::EndlessBody => {
                        assert_eq!(outcome, AttemptOutcome::Delivered { status: 200 })
                    }
                    Hostility::DrippingBody | Hostility::Silence => {
                        let AttemptOutcome::Retry { error, .. } = &outcome else {
                            panic!("{hostility:?}: {outcome:?}");
                        };
                        assert_eq!(error, "timed out after 1500ms", "{hostility:?}");
                    }
                }
            }
        }
    }
    let growth = rss_bytes().saturating_sub(rss_before);
    assert!(
        growth <= RSS_GROWTH_BYTES_MAX,
        "resident memory grew by {growth} bytes"
    );
    eprintln!("resident memory grew by {} KiB", growth / 1024);
}
