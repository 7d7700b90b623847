//! A scriptable HTTP/1.1 push sink on a real socket (127.0.0.1:0), for delivery tests.
//!
//! A [`Policy`] decides each request's answer (status, optional `Retry-After`); the test may
//! swap it at any time. The sink records every request it answered — event id
//! (`ce-id`), key (`ce-partitionkey`), `keel-attempt`, status, the body and when it answered
//! — in the order it answered them. Connections are kept alive, as keel's client expects.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Bytes of a request head (request line and headers) the sink reads at most.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Bytes of a request body the sink reads at most.
const BODY_BYTES_MAX: usize = 2 * 1024 * 1024;

/// One push request as the policy sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// `ce-id`.
    pub id: String,
    /// `ce-partitionkey`, when the event has a key.
    pub partition_key: Option<String>,
    /// `keel-attempt` (1 for the first attempt).
    pub attempt: u32,
    /// The body: the event's data.
    pub body: Vec<u8>,
}

/// What the sink answers to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// A `Retry-After` header in seconds, when set.
    pub retry_after_s: Option<u64>,
}

impl Answer {
    /// `status` without `Retry-After`.
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            retry_after_s: None,
        }
    }
}

/// One request the sink answered.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The request.
    pub request: Incoming,
    /// The status it got.
    pub status: u16,
    /// When the sink decided the answer (before writing it).
    pub at: Instant,
}

impl Answered {
    /// Whether the answer was 2xx: the handler accepted the event.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Decides the answer to each request.
pub type Policy = Arc<dyn Fn(&Incoming) -> Answer + Send + Sync>;

/// A policy answering `status` to everything.
pub fn always(status: u16) -> Policy {
    Arc::new(move |_| Answer::status(status))
}

/// A policy answering 503 to about `percent` % of requests (pseudo-random from `seed` and a
/// request counter, so a seed replays the same sequence of answers) and 200 to the others.
pub fn fail_share(percent: u64, seed: u64) -> Policy {
    let counter = AtomicU64::new(0);
    Arc::new(move |_| {
        let draw = splitmix64(seed ^ counter.fetch_add(1, Ordering::Relaxed)) % 100;
        Answer::status(if draw < percent { 503 } else { 200 })
    })
}

/// A pseudo-random mix of `value` (SplitMix64's finaliser).
pub fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Shared {
    policy: Mutex<Policy>,
    answered: Mutex<Vec<Answered>>,
}

/// A running sink; it stops with the test's runtime.
pub struct Sink {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    shared: Arc<Shared>,
}

impl Sink {
    /// Starts a sink answering by `policy`.
    pub async fn start(policy: Policy) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            policy: Mutex::new(policy),
            answered: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&accepting)));
            }
        });
        Sink {
            url: format!("http://{address}/hook"),
            shared,
        }
    }

    /// Answers the next requests by `policy`.
    pub fn set_policy(&self, policy: Policy) {
        *self.shared.policy.lock().unwrap() = policy;
    }

    /// Every request answered so far, in the order answered.
    pub fn answered(&self) -> Vec<Answered> {
        self.shared.answered.lock().unwrap().clone()
    }

    /// The requests answered 2xx so far, in the order answered.
    pub fn accepted(&self) -> Vec<Answered> {
        let answered = self.shared.answered.lock().unwrap();
        answered
            .iter()
            .filter(|a| a.is_success())
            .cloned()
            .collect()
    }
}

/// Serves one connection, request after request, until the client closes it.
async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let mut stream = BufReader::new(stream);
    while let Some(request) = read_request(&mut stream).await {
        let answer = {
            let policy = shared.policy.lock().unwrap().clone();
            policy(&request)
        };
        shared.answered.lock().unwrap().push(Answered {
            request,
            status: answer.status,
            at: Instant::now(),
        });
        let mut head = format!(
            "HTTP/1.1 {} Scripted\r\ncontent-length: 0\r\n",
            answer.status
        );
        if let Some(seconds) = answer.retry_after_s {
            head.push_str(&format!("retry-after: {seconds}\r\n"));
        }
        head.push_str("\r\n");
        if stream.get_mut().write_all(head.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads one request with a `content-length` body; `None` at the end of the connection or on
/// a request the sink cannot read.
async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<Incoming> {
    let mut head_bytes = 0;
    let mut request_line = String::new();
    if stream.read_line(&mut request_line).await.ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        head_bytes += stream.read_line(&mut line).await.ok()?;
        if head_bytes > HEAD_BYTES_MAX {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let header = |wanted: &str| {
        let found = headers.iter().find(|(name, _)| name == wanted);
        found.map(|(_, value)| value.clone())
    };
    let length: usize = header("content-length").map_or(Some(0), |v| v.parse().ok())?;
    if length > BODY_BYTES_MAX {
        return None;
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(Incoming {
        id: header("ce-id").unwrap_or_default(),
        partition_key: header("ce-partitionkey"),
        attempt: header("keel-attempt")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        body,
    })
}
