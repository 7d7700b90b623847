//! Every bound and default the client keeps, as a named constant: timeouts, batch sizes,
//! queue capacities, retry backoff. Those that must stay within the server's bounds are tied to
//! them by `const` asserts in `keel-cli`'s `limits.rs` (this crate does not depend on the
//! engine).

/// How long connecting to the server may take before it counts as unreachable.
pub const CONNECT_TIMEOUT_MS: u64 = 5000;

/// Longest a request may take, answer included, unless the builder sets another; well above
/// the longest long poll the server holds a request for (30 s), so a long poll is never cut
/// short and a hung server still ends in an error.
pub const REQUEST_TIMEOUT_MS: u64 = 60_000;

/// Idle connections a client keeps for reuse, unless the builder sets another number.
pub const IDLE_CONNECTIONS_MAX: usize = 64;

/// Longest text of a non-problem error body quoted in an error message.
pub const ERROR_BODY_CHARS_MAX: usize = 200;

/// Most events a [`Publisher`](crate::Publisher) sends in one batch request (the server takes
/// up to 10 000).
pub const PUBLISH_BATCH_EVENTS_MAX: usize = 1000;

/// Most bytes of events a [`Publisher`](crate::Publisher) puts in one batch request (the
/// server takes up to 16 MiB); an event larger than this goes alone.
pub const PUBLISH_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How long a [`Publisher`](crate::Publisher) waits for more events after the first of a
/// batch before sending a short batch.
pub const PUBLISH_LINGER_MS: u64 = 5;

/// Events queued in a [`Publisher`](crate::Publisher) before `publish` waits for room.
pub const PUBLISH_QUEUE_CAPACITY: usize = 10_000;

/// Attempts a [`Publisher`](crate::Publisher) makes to send one batch, the first included.
pub const PUBLISH_ATTEMPTS_MAX: u32 = 8;

/// The backoff ceiling after a batch's first failed attempt; it doubles per failure.
pub const PUBLISH_BACKOFF_INITIAL_MS: u64 = 50;

/// The largest backoff ceiling between two attempts of a batch.
pub const PUBLISH_BACKOFF_MAX_MS: u64 = 5000;

/// Most messages a [`Consumer`](crate::Consumer) asks for in one pull (the server gives up to
/// 1000).
pub const PULL_MESSAGES_MAX: usize = 100;

/// How long one pull of a [`Consumer`](crate::Consumer) waits on the server for a first
/// message.
pub const PULL_WAIT_MS: u64 = 5000;

/// Most handlers a [`Consumer`](crate::Consumer) runs at once, and the bound its
/// `concurrency` setting is checked against.
pub const CONSUMER_CONCURRENCY_MAX: usize = 10_000;

/// Handlers a [`Consumer`](crate::Consumer) runs at once unless told otherwise.
pub const CONSUMER_CONCURRENCY_DEFAULT: usize = 16;

/// Most settlements a [`Consumer`](crate::Consumer) sends in one ack request (the server takes
/// up to 10 000 ack ids).
pub const ACK_BATCH_MAX: usize = 500;

/// How long a [`Consumer`](crate::Consumer) gathers acks before it sends a short batch.
pub const ACK_LINGER_MS: u64 = 10;

/// Settlements queued between a [`Consumer`](crate::Consumer)'s handlers and its acker.
pub const SETTLE_QUEUE_CAPACITY: usize = 1024;

/// Attempts a [`Consumer`](crate::Consumer) makes to send one batch of settlements; after the
/// last, the server's ack deadline redelivers them (at-least-once).
pub const SETTLE_ATTEMPTS_MAX: u32 = 5;

/// The redelivery delay a [`Consumer`](crate::Consumer) asks for after a handler's first
/// failure; it doubles per attempt.
pub const HANDLER_RETRY_DELAY_INITIAL_MS: u64 = 100;

/// The largest redelivery delay a [`Consumer`](crate::Consumer) asks for after a failure.
pub const HANDLER_RETRY_DELAY_MAX_MS: u64 = 60_000;

/// Pause after a failed pull before the next one, so a down server is not spun on.
pub const PULL_ERROR_PAUSE_MS: u64 = 500;

const _: () = assert!(PUBLISH_BACKOFF_INITIAL_MS <= PUBLISH_BACKOFF_MAX_MS);
const _: () = assert!(HANDLER_RETRY_DELAY_INITIAL_MS <= HANDLER_RETRY_DELAY_MAX_MS);
const _: () = assert!(CONSUMER_CONCURRENCY_DEFAULT <= CONSUMER_CONCURRENCY_MAX);
// A long poll ends well before its request times out.
const _: () = assert!(REQUEST_TIMEOUT_MS > 2 * PULL_WAIT_MS);
const _: () = assert!(PUBLISH_LINGER_MS < REQUEST_TIMEOUT_MS);
