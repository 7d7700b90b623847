//! Policies: how the sink decides the reply to each request. A test may swap the policy at
//! any time ([`super::Sink::set_policy`]), or write its own closure.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::reply::{Reply, Response};
use super::request::Request;
use crate::random::splitmix64;

/// Decides the reply to each request. The sink calls it under its lock, one request at a time,
/// so the order of its calls is the order the sink records.
pub type Policy = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// `200 OK` to every request.
pub fn accept() -> Policy {
    always(200)
}

/// `status`, with no headers and an empty body, to every request.
pub fn always(status: u16) -> Policy {
    reply(Reply::status(status))
}

/// The same reply to every request.
pub fn reply(reply: Reply) -> Policy {
    Arc::new(move |_| reply.clone())
}

/// The replies in turn, one per request, then `200 OK` to every later request.
pub fn script(replies: Vec<Reply>) -> Policy {
    let replies = Mutex::new(VecDeque::from(replies));
    Arc::new(move |_| {
        let next = replies.lock().unwrap().pop_front();
        next.unwrap_or_else(|| Reply::status(200))
    })
}

/// `503` to about `percent` % of requests and `200` to the others. The draws come from `seed`
/// and a request counter, so a seed replays the same sequence of answers.
pub fn fail_share(percent: u64, seed: u64) -> Policy {
    let counter = AtomicU64::new(0);
    Arc::new(move |_| {
        let draw = splitmix64(seed ^ counter.fetch_add(1, Ordering::Relaxed)) % 100;
        Reply::status(if draw < percent { 503 } else { 200 })
    })
}

/// A seeded random mix of failures, for [`chaos`].
#[derive(Debug, Clone)]
pub struct Chaos {
    /// Share of failed requests, in [0, 1]. Each fails in one of six ways picked at random:
    /// `500`, `503`, `429` with `Retry-After: 0`, `429` with `Retry-After: 1`, a `200 OK`
    /// only after `late_by`, or the connection closed without an answer.
    pub failure_share: f64,
    /// How late a late answer comes (longer than the caller's timeout).
    pub late_by: Duration,
    /// Seed of the random choices; print it so a failure can be replayed.
    pub seed: u64,
    /// Event ids (`ce-id`) whose requests get `500` every time.
    pub poisoned: Vec<String>,
}

/// One way of failing a request.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// This status at once, with `Retry-After: <seconds>` when given.
    Status(u16, Option<u64>),
    /// `200 OK`, but only after the chaos `late_by` delay.
    Late,
    /// The connection closed without an answer.
    HangUp,
}

/// The ways [`chaos`] fails a request.
const CHAOS_FAILURES: [Failure; 6] = [
    Failure::Status(500, None),
    Failure::Status(503, None),
    Failure::Status(429, Some(0)),
    Failure::Status(429, Some(1)),
    Failure::Late,
    Failure::HangUp,
];

/// `chaos.failure_share` of the requests fail, each in a way picked at random; the others get
/// `200 OK`; requests for a poisoned event get `500` every time.
pub fn chaos(chaos: Chaos) -> Policy {
    let random = Mutex::new(fastrand::Rng::with_seed(chaos.seed));
    Arc::new(move |request| {
        let failure = if chaos
            .poisoned
            .iter()
            .any(|id| request.header("ce-id") == Some(id))
        {
            Some(Failure::Status(500, None))
        } else {
            let mut random = random.lock().unwrap();
            (random.f64() < chaos.failure_share)
                .then(|| CHAOS_FAILURES[random.usize(..CHAOS_FAILURES.len())])
        };
        match failure {
            None => Reply::status(200),
            Some(Failure::Status(status, retry_after_s)) => {
                let mut response = Response::new(status).body("chaos");
                if let Some(seconds) = retry_after_s {
                    response = response.header("retry-after", &seconds.to_string());
                }
                response.into()
            }
            Some(Failure::Late) => Response::new(200).after(chaos.late_by).into(),
            Some(Failure::HangUp) => Reply::HangUp,
        }
    })
}
