//! Every bound the client keeps, as a named constant: request sizes, waits, queue capacities.

/// Most events the client asks for in one read request (`max=` of the read endpoint).
pub(crate) const READ_EVENTS_MAX: u64 = 1000;

/// How long one long-poll read waits on the server when there is nothing new yet.
pub(crate) const LONG_POLL_WAIT_MS: u64 = 5000;

/// Pause after an empty answer while following, in case a server answers at once instead of
/// long-polling: keeps such a server from being spun on.
pub(crate) const EMPTY_READ_PAUSE_MS: u64 = 100;

/// Most events sent in one batch request; `--batch-size` is checked against it.
pub(crate) const BATCH_EVENTS_MAX: u64 = 10_000;

/// How long publishing from JSON Lines waits for more lines before sending a short batch, so a
/// slow producer on stdin sees its events published promptly.
pub(crate) const BATCH_LINGER_MS: u64 = 10;

/// Lines read ahead of the publisher: the reader thread blocks once this many are queued.
pub(crate) const LINE_QUEUE_CAPACITY: usize = 4096;

/// Output lines queued between `tail` readers and the printer.
pub(crate) const TAIL_QUEUE_CAPACITY: usize = 1024;

/// Most concurrent requests `bench` keeps in flight; `--concurrency` is checked against it.
pub(crate) const CONCURRENCY_MAX: u64 = 1024;

/// Largest `data` of one `bench` event, in bytes.
pub(crate) const BENCH_EVENT_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Largest request body `bench publish` builds (`--size` × `--batch-size`, roughly).
pub(crate) const BENCH_REQUEST_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Largest latency the `bench` histograms hold exactly; slower requests count as this.
pub(crate) const LATENCY_US_MAX: u64 = 60_000_000;

// The client's timeouts, connection pool and error texts are keel-client's
// (`keel_client::limits`); its request timeout is well above a long poll of `tail`.
const _: () = assert!(keel_client::limits::REQUEST_TIMEOUT_MS > 2 * LONG_POLL_WAIT_MS);
const _: () = assert!(BENCH_EVENT_BYTES_MAX <= BENCH_REQUEST_BYTES_MAX);

// Tied to the server's bounds (the client talks to a keel of the same version):
// a read asks for no more than a read may return, and waits no longer than a long poll may;
const _: () = assert!(READ_EVENTS_MAX <= keel_engine::limits::READ_RECORDS_MAX as u64);
const _: () = assert!(LONG_POLL_WAIT_MS <= keel_engine::limits::READ_WAIT_MS_MAX);
// a batch the client sends is one the server takes;
const _: () = assert!(BATCH_EVENTS_MAX <= keel_engine::limits::BATCH_EVENTS_MAX as u64);
// a request's timeout outlasts the longest long poll the server may hold it for.
const _: () =
    assert!(keel_client::limits::REQUEST_TIMEOUT_MS > keel_engine::limits::READ_WAIT_MS_MAX);
// keel-client does not depend on the engine, so its bounds are tied to the server's here: its
// publisher's batches, consumer's pulls and ack batches are ones the server takes.
const _: () =
    assert!(keel_client::limits::PUBLISH_BATCH_EVENTS_MAX <= keel_engine::limits::BATCH_EVENTS_MAX);
const _: () =
    assert!(keel_client::limits::PUBLISH_BATCH_BYTES_MAX <= keel_engine::limits::REQUEST_BYTES_MAX);
const _: () =
    assert!(keel_client::limits::PULL_MESSAGES_MAX <= keel_engine::limits::PULL_MESSAGES_MAX);
const _: () = assert!(keel_client::limits::ACK_BATCH_MAX <= keel_engine::limits::ACK_IDS_MAX);
const _: () = assert!(keel_client::limits::PULL_WAIT_MS <= keel_engine::limits::READ_WAIT_MS_MAX);
