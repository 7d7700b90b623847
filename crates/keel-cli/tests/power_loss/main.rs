//! Power loss of the whole process: the real `keel` binary runs with its data directory on
//! [`keel_powerloss::PowerLossFs`], a FUSE filesystem that keeps every write and every
//! directory operation in memory until it is fsynced. A test kills keel with SIGKILL at a
//! point of its choosing, drops everything unsynced (or keeps a torn, seeded part of it),
//! remounts, restarts keel on what survived and checks it against what keel had answered.
//!
//! The invariant behind every test: what keel answered as done is still done after kill -9
//! and a power loss, and keel starts ready (never "damaged") with all of it. Each module
//! drives one part of keel there:
//! - `load`: publishes, pull acks, topic creates and deletes under load; at the end both a
//!   pull and a push subscription receive every acknowledged publish;
//! - `admin`: subscription creates, deletes, pauses, resumes and seeks; a topic deleted and
//!   created again; losses while keel starts (recovering torn tails) and in a row;
//! - `dead_letters`: answered rejects and answered acks of redriven dead letters (each
//!   undone now and then before e0e35ef); a DLQ compaction killed at points around its swap;
//! - `partial_create`: the data directory, a topic or a subscription left by a run killed
//!   between its `mkdir` or `rename` and the fsync of its parent (served without that fsync
//!   before e0e35ef, then lost at the next power loss with what was acknowledged under it);
//! - `retention`: segments deleted by age and by size under load.
//!
//! `rig` mounts the filesystem and runs keel (through the test kit's `KeelProcess`), `api` is the
//! HTTP client and its checks of stored events, `clients` the publishers and the pull
//! consumer that load keel until it dies.
//!
//! Needs root and `/dev/fuse` (CI has both); without them each test fails saying so. The
//! defaults keep the whole binary near half a minute on two cores. Environment:
//! - `KEEL_POWERLOSS=skip` skips every test, each printing a SKIPPED line (never silently);
//! - `KEEL_TEST_SEED=N` replays a run's random choices (each test prints its seed);
//! - `KEEL_POWERLOSS_CYCLES=N` runs N crash cycles (or compaction kill points) in every test
//!   that cycles, for a soak (defaults: load 12, settles 30, compaction 5, starts 6,
//!   retention 4);
//! - `KEEL_POWERLOSS_ATTEMPTS=N`: `partial_create` makes N tries at its kill window (by
//!   default up to 40, stopping after 3 land in it);
//! - `KEEL_POWERLOSS_KILL_ONLY=1` skips every loss, leaving kill -9 alone: a failure that
//!   stays is a crash bug, one that goes is a missing fsync.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod api;
mod clients;
mod dead_letters;
mod load;
mod partial_create;
mod retention;
mod rig;
