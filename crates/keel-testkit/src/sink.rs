//! A scriptable HTTP/1.1 sink: a real server on 127.0.0.1 that answers each request as its
//! [`Policy`] decides, keeps connections alive (as keel's client expects), and records every
//! request with what it did.
//!
//! It is written on raw sockets rather than on a framework so that it can misbehave the way
//! real sinks do: answer too late, write a cut or malformed response, read a request and hang
//! up without answering, or go away altogether (listener closed, connections dropped:
//! connecting is refused) and come back on the same port.
//!
//! ```no_run
//! # async fn example() {
//! use keel_testkit::sink::{Reply, Response, Sink, policy};
//!
//! let sink = Sink::start(policy::script(vec![
//!     Response::new(503).header("retry-after", "1").into(),
//!     Reply::HangUp,
//! ]))
//! .await;
//! // … point a subscription at sink.url("/hook"), publish …
//! let accepted = sink.accepted();
//! # }
//! ```

pub mod policy;
mod reply;
mod request;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use policy::Policy;
pub use reply::{Answer, Reply, Response};
pub use request::Request;

/// How often [`Sink::wait_for`] looks at the recorded exchanges.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How long [`Sink::come_back`] retries listening on its old port.
const REBIND_WAIT: Duration = Duration::from_secs(2);

/// One request and what the sink did with it.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The request.
    pub request: Request,
    /// What the sink did.
    pub answer: Answer,
    /// When the sink decided (after reading the whole request, before writing anything).
    pub at: Instant,
}

impl Exchange {
    /// Whether the sink answered 2xx at once: its own decision to take the event.
    pub fn accepted(&self) -> bool {
        self.answer.accepted()
    }
}

/// What the sink knows, behind one lock so that decisions and records keep one order.
struct State {
    policy: Policy,
    exchanges: Vec<Exchange>,
}

struct Inner {
    state: Mutex<State>,
    /// Connections accepted so far.
    connections: AtomicUsize,
    /// True while the sink is down: the accept loop and every connection end.
    down: watch::Sender<bool>,
}

/// A running sink on 127.0.0.1; it stops with the test's runtime.
pub struct Sink {
    addr: SocketAddr,
    inner: Arc<Inner>,
    /// The accept loop; `None` while the sink is down.
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl Sink {
    /// Starts a sink on a free port that answers by `policy`.
    pub async fn start(policy: Policy) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                policy,
                exchanges: Vec::new(),
            }),
            connections: AtomicUsize::new(0),
            down: watch::channel(false).0,
        });
        let accept_task = tokio::spawn(accept(listener, Arc::clone(&inner)));
        Sink {
            addr,
            inner,
            accept_task: Mutex::new(Some(accept_task)),
        }
    }

    /// The URL of `path` (which starts with `/`, and may carry a query) on this sink.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests by `policy`.
    pub fn set_policy(&self, policy: Policy) {
        self.inner.state.lock().unwrap().policy = policy;
    }

    /// Goes away: closes the listener and drops every connection, so that connecting is
    /// refused. Returns once the port refuses connections.
    pub async fn go_down(&self) {
        self.inner.down.send_replace(true);
        let task = self.accept_task.lock().unwrap().take();
        if let Some(task) = task {
            // The accept loop ends on the signal and drops the listener with it.
            task.await.unwrap();
        }
    }

    /// Comes back after [`Sink::go_down`]: listens on the same port again, and returns once it
    /// does. Does nothing if the sink is up.
    pub async fn come_back(&self) {
        if !*self.inner.down.borrow() {
            return;
        }
        let listener = bind_again(self.addr).await;
        self.inner.down.send_replace(false);
        let task = tokio::spawn(accept(listener, Arc::clone(&self.inner)));
        *self.accept_task.lock().unwrap() = Some(task);
    }

    /// Every exchange so far, in the order the sink decided them.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.inner.state.lock().unwrap().exchanges.clone()
    }

    /// The exchanges answered 2xx at once so far, in order.
    pub fn accepted(&self) -> Vec<Exchange> {
        let state = self.inner.state.lock().unwrap();
        let accepted = state
            .exchanges
            .iter()
            .filter(|exchange| exchange.accepted());
        accepted.cloned().collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst)
    }

    /// Waits until `done` holds for the exchanges so far and returns them; panics with `what`
    /// and a summary of the exchanges after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Exchange]) -> bool,
    ) -> Vec<Exchange> {
        let deadline = Instant::now() + timeout;
        loop {
            let exchanges = self.exchanges();
            if done(&exchanges) {
                return exchanges;
            }
            if Instant::now() >= deadline {
                let summary: Vec<_> = exchanges
                    .iter()
                    .map(|e| (e.request.header("ce-id").map(str::to_owned), e.answer))
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
    let deadline = Instant::now() + REBIND_WAIT;
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

/// Accepts connections, counting them, until the sink goes down.
async fn accept(listener: TcpListener, inner: Arc<Inner>) {
    let mut down = inner.down.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                inner.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_connection(stream, Arc::clone(&inner)));
            }
            _ = down.wait_for(|down| *down) => return,
        }
    }
}

/// Serves the requests of one keep-alive connection until the peer closes it, a reply closes
/// it, or the sink goes down.
async fn serve_connection(stream: TcpStream, inner: Arc<Inner>) {
    let mut down = inner.down.subscribe();
    let mut stream = BufReader::new(stream);
    loop {
        let read = tokio::select! {
            read = request::read_request(&mut stream) => read,
            _ = down.wait_for(|down| *down) => return,
        };
        let Some(request) = read else {
            return;
        };
        let (bytes, close) = match decide(&inner, request) {
            Reply::Respond(response) => {
                tokio::select! {
                    () = tokio::time::sleep(response.delay) => {}
                    _ = down.wait_for(|down| *down) => return,
                }
                (response.to_bytes(), false)
            }
            Reply::Raw { bytes, close } => (bytes, close),
            Reply::HangUp => return,
        };
        if stream.get_mut().write_all(&bytes).await.is_err() || close {
            return;
        }
    }
}

/// Decides the reply to a request by the current policy, and records both.
fn decide(inner: &Inner, request: Request) -> Reply {
    let mut state = inner.state.lock().unwrap();
    let reply = (state.policy)(&request);
    let answer = reply.answer();
    state.exchanges.push(Exchange {
        request,
        answer,
        at: Instant::now(),
    });
    reply
}
