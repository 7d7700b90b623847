//! keel's test kit, used only as a dev-dependency:
//! - [`sink`]: one scriptable HTTP/1.1 sink on a real socket, for push delivery tests at every
//!   level (the engine's webhook client, the server's push subscriptions, the binary's crash
//!   tests). It depends on no keel crate, so keel-engine's own unit tests can use it.
//! - [`process`]: the real `keel` binary (or a program embedding keel) as a child process,
//!   for kill -9, SIGTERM and power-loss tests.
//! - `server` (cargo feature `server`): keel's server in the test's own process, on a real
//!   socket, for API tests.
//! - [`api`]: whole-partition reads and publishes retried across restarts, over keel's HTTP
//!   API.
//! - [`nats`]: a real NATS JetStream cluster (`nats-server` processes) on loopback, whose
//!   servers a test can kill -9, restart, pause and resume, for cluster-mode tests.
//! - [`tls`]: a private CA and the server certificates it signs, for TLS tests.
//! - [`random`]: the seeded pseudo-random mix the tests replay runs with, and the run's seed.

// A test kit's failures are test failures: panicking with the reason is what it should do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod api;
pub mod nats;
pub mod process;
pub mod random;
mod readiness;
#[cfg(feature = "server")]
pub mod server;
pub mod sink;
pub mod tls;
