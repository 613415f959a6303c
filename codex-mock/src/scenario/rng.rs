//! A small seeded generator (SplitMix64): jitter and text must be reproducible from `--seed`.

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `value` moved by up to ±`pct` percent.
    pub fn jitter(&mut self, value: u64, pct: u64) -> u64 {
        if pct == 0 || value == 0 {
            return value;
        }
        let spread = value * pct / 100;
        value - spread + self.below(2 * spread + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let first: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..4).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(Rng::new(8).next_u64(), first[0]);
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            let value = rng.jitter(100, 10);
            assert!((90..=110).contains(&value), "{value}");
        }
        assert_eq!(rng.jitter(100, 0), 100);
    }
}
