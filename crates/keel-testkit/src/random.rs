//! Seeded pseudo-random numbers: a test prints its seed, and the same seed replays its choices.

/// A pseudo-random mix of `value` (SplitMix64's finaliser): feed it a seed combined with a
/// counter to draw a replayable sequence.
pub fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
