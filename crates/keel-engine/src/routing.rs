//! Which partition an event goes to.
//!
//! Invariant: the partition of a key depends only on the key bytes and the partition count,
//! so it is stable across restarts and versions (FNV-1a, written out here, never a hasher
//! whose seed or algorithm may change).

/// The partition for a `partitionkey`.
pub fn partition_for_key(key: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    let hash = fnv1a(key.as_bytes());
    u32::try_from(hash % u64::from(partitions)).expect("below a u32 partition count")
}

/// FNV-1a (64 bits) of `bytes`: the same on every platform, run and version.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: keys map to fixed partitions (a change here would reorder every keyed topic) and
    // spread across partitions.
    #[test]
    fn key_routing_is_stable_and_spreads() {
        assert_eq!(
            partition_for_key("order-1001", 8),
            partition_for_key("order-1001", 8)
        );
        assert_eq!(
            partition_for_key("", 8),
            (0xcbf2_9ce4_8422_2325_u64 % 8) as u32
        );
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition_for_key(&format!("key-{i}"), 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (700..1300).contains(&c)),
            "{counts:?}"
        );
    }
}
