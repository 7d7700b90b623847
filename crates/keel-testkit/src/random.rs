//! Seeded pseudo-random numbers: a test prints its seed, and the same seed replays its choices.

/// A pseudo-random mix of `value` (SplitMix64's finaliser): feed it a seed combined with a
/// counter to draw a replayable sequence.
pub fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The run's seed: `KEEL_TEST_SEED`, or the clock. Printed (under the test's name) so that a
/// failing run can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("KEEL_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.unwrap().as_nanos() as u64
        });
    eprintln!("{test}: seed {seed} (KEEL_TEST_SEED={seed} replays it)");
    seed
}
