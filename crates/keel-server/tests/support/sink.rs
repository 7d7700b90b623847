//! A scriptable webhook sink for the push tests: a real HTTP/1.1 server on 127.0.0.1 that
//! records every request and answers by a [`Behaviour`] switched at run time.
//!
//! It is written on raw sockets rather than on a framework so that it can misbehave the way
//! real sinks do: answer too late, read a request and hang up without answering, or go away
//! altogether (listener closed, connections dropped: connecting is refused) and come back on
//! the same port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Most lines in a request head; a longer head closes the connection.
const HEAD_LINES_MAX: usize = 200;
/// Most bytes of a request body read; a longer body closes the connection.
const BODY_BYTES_MAX: usize = 1024 * 1024;
/// How often [`Sink::wait_for`] looks at the recorded requests.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How the sink answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// `200 OK` to every request.
    Accept,
    /// The same answer to every request.
    Answer {
        /// The status code.
        status: u16,
        /// Extra headers, e.g. `("location", "…")`.
        headers: Vec<(String, String)>,
        /// The body.
        body: String,
    },
    /// Gone: the listener is closed and every connection dropped, so connecting is refused.
    /// Switching to another behaviour listens on the same port again.
    Down,
    /// A seeded random mix: `failure_share` of the requests fail, each in one of the
    /// [`CHAOS_FAILURES`] ways picked at random; the others get `200 OK`. Requests for the
    /// `poisoned` event ids (`ce-id`) get `500` every time.
    Chaos {
        /// Share of failed requests, in [0, 1].
        failure_share: f64,
        /// How late a late answer comes (longer than the caller's timeout).
        late_by: Duration,
        /// Seed of the random choices; print it so a failure can be replayed.
        seed: u64,
        /// Event ids that always fail.
        poisoned: Vec<String>,
    },
}

/// The ways [`Behaviour::Chaos`] fails a request.
pub const CHAOS_FAILURES: [Failure; 6] = [
    Failure::Status(500, None),
    Failure::Status(503, None),
    Failure::Status(429, Some(0)),
    Failure::Status(429, Some(1)),
    Failure::Late,
    Failure::HangUp,
];

/// One way of failing a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Answers this status at once, with `Retry-After: <seconds>` when given.
    Status(u16, Option<u64>),
    /// Answers `200 OK`, but only after the chaos `late_by` delay.
    Late,
    /// Reads the request, then closes the connection without answering.
    HangUp,
}

/// What the sink decided to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Answered this status at once.
    Status(u16),
    /// Answered this status after a delay meant to exceed the caller's timeout.
    Late(u16),
    /// Closed the connection without answering.
    HungUp,
}

/// One request as the sink read it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method, e.g. `POST`.
    pub method: String,
    /// The request target, e.g. `/hook`.
    pub path: String,
    /// Header names lower-cased, values as sent (lossy UTF-8).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// When its head was read.
    pub arrived: Instant,
    /// What the sink did with it.
    pub answer: Answer,
}

impl Request {
    /// The value of the one header called `name` (lower case); panics if it is sent twice.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        let value = values.next().map(|(_, value)| value.as_str());
        assert!(
            value.is_none() || values.next().is_none(),
            "header {name} sent twice"
        );
        value
    }

    /// The `ce-id` header.
    pub fn event_id(&self) -> &str {
        self.header("ce-id")
            .expect("every push request carries ce-id")
    }

    /// The `keel-attempt` header as a number.
    pub fn attempt(&self) -> u32 {
        let attempt = self.header("keel-attempt").expect("keel-attempt header");
        attempt.parse().expect("keel-attempt is a number")
    }

    /// Whether the sink answered 2xx in time: its own decision to take the event.
    pub fn accepted(&self) -> bool {
        matches!(self.answer, Answer::Status(200..=299))
    }
}

/// What the sink knows, behind one lock.
struct State {
    behaviour: Behaviour,
    random: fastrand::Rng,
    requests: Vec<Request>,
}

struct Inner {
    state: Mutex<State>,
    /// True while the sink is down: the accept loop and every connection end.
    down: watch::Sender<bool>,
}

/// A running sink on 127.0.0.1; it stops with the test's runtime.
pub struct Sink {
    /// Its address.
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl Sink {
    /// Starts a sink on a free port that behaves as `behaviour`.
    pub async fn start(behaviour: Behaviour) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                behaviour: Behaviour::Accept,
                random: fastrand::Rng::new(),
                requests: Vec::new(),
            }),
            down: watch::channel(false).0,
        });
        let accept_task = tokio::spawn(accept(listener, inner.clone()));
        let sink = Sink {
            addr,
            inner,
            accept_task: Mutex::new(Some(accept_task)),
        };
        sink.set(behaviour).await;
        sink
    }

    /// The URL of `path` (which starts with `/`) on this sink.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Switches the behaviour. Going down returns once the port refuses connections; coming
    /// back returns once it listens again.
    pub async fn set(&self, behaviour: Behaviour) {
        let going_down = matches!(behaviour, Behaviour::Down);
        {
            let mut state = self.inner.state.lock().unwrap();
            if let Behaviour::Chaos { seed, .. } = &behaviour {
                state.random = fastrand::Rng::with_seed(*seed);
            }
            state.behaviour = behaviour;
        }
        let is_down = *self.inner.down.borrow();
        if going_down && !is_down {
            self.inner.down.send_replace(true);
            let task = self.accept_task.lock().unwrap().take();
            if let Some(task) = task {
                // The accept loop ends on the signal and drops the listener with it.
                task.await.unwrap();
            }
        } else if !going_down && is_down {
            let listener = bind_again(self.addr).await;
            self.inner.down.send_replace(false);
            let task = tokio::spawn(accept(listener, self.inner.clone()));
            *self.accept_task.lock().unwrap() = Some(task);
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.state.lock().unwrap().requests.clone()
    }

    /// Waits until `done` holds for the requests so far and returns them; panics with
    /// `what` and the requests after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if done(&requests) {
                return requests;
            }
            if Instant::now() >= deadline {
                let summary: Vec<_> = requests
                    .iter()
                    .map(|r| (r.header("ce-id").map(str::to_owned), r.answer))
                    .collect();
                panic!("sink: timed out after {timeout:?} waiting for {what}; saw {summary:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// Listens on `addr` again after the sink was down; retries briefly in case the old socket
/// is still being torn down.
async fn bind_again(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(error) if Instant::now() < deadline => {
                eprintln!("sink: rebinding {addr} failed ({error}); retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("sink: cannot listen on {addr} again: {error}"),
        }
    }
}

/// Accepts connections until the sink goes down.
async fn accept(listener: TcpListener, inner: Arc<Inner>) {
    let mut down = inner.down.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(serve_connection(stream, inner.clone()));
            }
            _ = down.wait_for(|down| *down) => return,
        }
    }
}

/// What to do with one request.
enum Action {
    Respond {
        delay: Duration,
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    HangUp,
}

/// Serves the requests of one keep-alive connection until the peer closes it, the sink hangs
/// up, or the sink goes down.
async fn serve_connection(stream: TcpStream, inner: Arc<Inner>) {
    let mut down = inner.down.subscribe();
    let mut stream = BufReader::new(stream);
    loop {
        let read = tokio::select! {
            read = read_request(&mut stream) => read,
            _ = down.wait_for(|down| *down) => return,
        };
        let Some(read) = read else {
            return;
        };
        let action = decide(&inner, read);
        let Action::Respond {
            delay,
            status,
            headers,
            body,
        } = action
        else {
            return;
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = down.wait_for(|down| *down) => return,
        }
        let response = response_bytes(status, &headers, &body);
        if stream.get_mut().write_all(&response).await.is_err() {
            return;
        }
    }
}

/// Decides the answer to a request by the current behaviour, and records both.
fn decide(inner: &Inner, read: ReadRequest) -> Action {
    let mut state = inner.state.lock().unwrap();
    let respond = |delay, status, headers, body| Action::Respond {
        delay,
        status,
        headers,
        body,
    };
    let (action, answer) = match state.behaviour.clone() {
        Behaviour::Accept | Behaviour::Down => (
            respond(Duration::ZERO, 200, vec![], String::new()),
            Answer::Status(200),
        ),
        Behaviour::Answer {
            status,
            headers,
            body,
        } => (
            respond(Duration::ZERO, status, headers, body),
            Answer::Status(status),
        ),
        Behaviour::Chaos {
            failure_share,
            late_by,
            poisoned,
            ..
        } => {
            let id = read.headers.iter().find(|(name, _)| name == "ce-id");
            let failure = if id.is_some_and(|(_, id)| poisoned.contains(id)) {
                Some(Failure::Status(500, None))
            } else {
                (state.random.f64() < failure_share)
                    .then(|| CHAOS_FAILURES[state.random.usize(..CHAOS_FAILURES.len())])
            };
            match failure {
                None => (
                    respond(Duration::ZERO, 200, vec![], String::new()),
                    Answer::Status(200),
                ),
                Some(Failure::Status(status, retry_after)) => {
                    let headers = retry_after
                        .map(|seconds| ("retry-after".to_owned(), seconds.to_string()))
                        .into_iter()
                        .collect();
                    (
                        respond(Duration::ZERO, status, headers, "chaos".to_owned()),
                        Answer::Status(status),
                    )
                }
                Some(Failure::Late) => (
                    respond(late_by, 200, vec![], String::new()),
                    Answer::Late(200),
                ),
                Some(Failure::HangUp) => (Action::HangUp, Answer::HungUp),
            }
        }
    };
    state.requests.push(Request {
        method: read.method,
        path: read.path,
        headers: read.headers,
        body: read.body,
        arrived: Instant::now(),
        answer,
    });
    action
}

/// A request as read off the socket.
struct ReadRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 request with a `content-length` body (or none). `None` when the peer
/// closed the connection or sent something this sink does not read (an oversized head or
/// body).
async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<ReadRequest> {
    let request_line = read_line(stream).await?;
    let mut words = request_line.split(' ');
    let method = words.next()?.to_owned();
    let path = words.next()?.to_owned();
    let mut headers = Vec::new();
    for _ in 0..HEAD_LINES_MAX {
        let line = read_line(stream).await?;
        if line.is_empty() {
            let length = headers
                .iter()
                .find(|(name, _)| name == "content-length")
                .map_or(Some(0), |(_, value): &(String, String)| value.parse().ok())?;
            let chunked = headers.iter().any(|(name, _)| name == "transfer-encoding");
            assert!(
                !chunked,
                "sink: chunked request bodies are not expected from keel"
            );
            if length > BODY_BYTES_MAX {
                return None;
            }
            let mut body = vec![0; length];
            stream.read_exact(&mut body).await.ok()?;
            return Some(ReadRequest {
                method,
                path,
                headers,
                body,
            });
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    None
}

/// One line without its CRLF; `None` at the end of the stream.
async fn read_line(stream: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = Vec::new();
    let read = stream.read_until(b'\n', &mut line).await.ok()?;
    if read == 0 {
        return None;
    }
    let text = String::from_utf8_lossy(&line);
    Some(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// A complete response with a `content-length` body.
fn response_bytes(status: u16, headers: &[(String, String)], body: &str) -> Vec<u8> {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|status| status.canonical_reason())
        .unwrap_or("Unknown");
    let mut text = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    text.into_bytes()
}
