//! What the binary's integration tests share: the `keel` binary they run, and (from the test
//! kit) reads of whole partitions, publishes retried across restarts, and the run's seed.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code, unreachable_pub, unused_imports)]

use keel_testkit::process::KeelBinary;

/// The `keel` binary cargo built for these tests.
pub const KEEL: KeelBinary = KeelBinary::new(env!("CARGO_BIN_EXE_keel"));

pub use keel_testkit::api::{publish_until_acknowledged, read_partition, read_partition_from};
pub use keel_testkit::random::seed;
