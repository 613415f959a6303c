//! A hash map keyed by integer ids the daemon itself allocates (bus ids, worker-request ids).
//!
//! SipHash, the std default, guards against keys an attacker chooses; these keys are sequential
//! integers of our own, so one multiplication spreads them well enough and costs a fraction (the
//! pending table is touched twice per request).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map from daemon-allocated ids to `V`.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of one `u64`.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are used; fold anything else in byte by byte rather than panic.
        for b in bytes {
            self.write_u64(u64::from(*b) ^ self.0.rotate_left(8));
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_and_round_trip() {
        let mut map: IdMap<u64> = IdMap::default();
        for id in 0..10_000 {
            map.insert(id, id * 2);
        }
        assert!((0..10_000).all(|id| map.get(&id) == Some(&(id * 2))));
        let high_bits: std::collections::HashSet<u64> = (0..256u64)
            .map(|id| {
                let mut h = IdHasher::default();
                h.write_u64(id);
                h.finish() >> 57
            })
            .collect();
        assert!(
            high_bits.len() > 64,
            "the top bits (hashbrown's tags) vary: {}",
            high_bits.len()
        );
    }
}
