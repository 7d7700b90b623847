//! Every bound and default the server keeps, as a named constant. Tunable ones are settings
//! (`config.rs`) that default to these and are checked against the engine's ceilings
//! (`keel_engine::limits`); the asserts below tie them to the engine's bounds.

use std::time::Duration;

use keel_engine::limits::READ_WAIT_MS_MAX;

/// Most connections open at once; further clients wait in the listen backlog. Never more
/// than half the process's open-file limit (see `listener::connections_max`): the logs need
/// file descriptors too, and running out of them while rolling a segment stops a partition.
pub const CONNECTIONS_MAX: usize = 4096;
/// Fewest connections served at once, however low the open-file limit is.
pub const CONNECTIONS_MIN: usize = 16;
/// Each connection's kernel send buffer (`SO_SNDBUF`; Linux doubles it for its own
/// bookkeeping): what a client that stops reading can make the kernel hold. Enough for full
/// speed on a local network.
pub const SEND_BUFFER_BYTES: usize = 256 * 1024;
/// How long shutdown waits for open requests to finish before dropping their connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, say) before accepting again, so a
/// persistent failure does not spin a core.
pub const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How often retention runs, by default (`retention_check_interval`).
pub const RETENTION_CHECK_INTERVAL_DEFAULT: Duration = Duration::from_secs(30);
/// How long a client may take to send a request head, by default (`header_read_timeout`).
pub const HEADER_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Bytes of large answers keel holds for clients that have not read them yet, by default
/// (`response_bytes_max`); past it, requests are answered 503 (`budget.rs`).
pub const RESPONSE_BYTES_MAX_DEFAULT: usize = 512 * 1024 * 1024;
/// Least `response_bytes_max`: the largest page of events fits.
pub const RESPONSE_BYTES_MAX_MIN: usize = 16 * 1024 * 1024;
/// How long a write to a client may make no progress before its connection is closed, by
/// default (`write_timeout`).
pub const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Longest a request may take from its head to its answer, by default (`request_timeout`).
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

const _: () = assert!(CONNECTIONS_MIN <= CONNECTIONS_MAX);
// A request's timeout never cuts the longest long poll short (`validate` checks a configured
// one the same way).
const _: () = assert!(REQUEST_TIMEOUT_DEFAULT.as_millis() > READ_WAIT_MS_MAX as u128);
