//! Jittered exponential backoff between restarts of one slot.

use std::time::Duration;

/// Delay schedule: `initial`, doubling up to `max`, each delay randomised by ±`jitter`.
///
/// Jitter keeps a pool whose workers all crash on the same input from restarting them in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    attempt: u32,
}

impl Backoff {
    /// A schedule from explicit bounds; `jitter` is clamped to 0..=1.
    pub fn new(initial: Duration, max: Duration, jitter: f64) -> Self {
        Backoff {
            initial: initial.min(max),
            max,
            jitter: jitter.clamp(0.0, 1.0),
            attempt: 0,
        }
    }

    /// The delay before the next restart; each call doubles the base.
    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(31))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let factor = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        base.mul_f64(factor)
    }

    /// Starts the schedule over (after a worker stayed up long enough to count as stable).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_and_caps() {
        // The documented default: 100 ms doubling to 30 s with ±20 % jitter.
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30), 0.2);
        let mut base = 0.1;
        for _ in 0..12 {
            let d = b.next_delay().as_secs_f64();
            assert!(
                d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                "{d} vs {base}"
            );
            base = (base * 2.0).min(30.0);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }

    #[test]
    fn no_jitter_is_exact() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(35), 0.0);
        let got: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [10, 20, 35, 35]);
    }
}
