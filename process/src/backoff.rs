//! Jittered exponential backoff between restarts of a child.

#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

/// Delay schedule: `initial`, doubling with each attempt up to `max`, each delay randomised by
/// ±`jitter` (a fraction of the delay).
///
/// Jitter keeps children that all die on the same input from restarting in lockstep. The bounds
/// are checked once, when the schedule is made (the idea of linkerd2-proxy's
/// `ExponentialBackoff`), so no delay ever needs clamping.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    attempt: u32,
}

/// Why [`Backoff::new`] refused a schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InvalidBackoff {
    /// `max` is shorter than `initial`.
    MaxBelowInitial {
        /// The first delay asked for.
        initial: Duration,
        /// The longest delay asked for.
        max: Duration,
    },
    /// The jitter is not a fraction in `0.0..=1.0` (NaN included).
    Jitter(f64),
}

impl fmt::Display for InvalidBackoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidBackoff::MaxBelowInitial { initial, max } => write!(
                f,
                "the longest backoff ({max:?}) is shorter than the first ({initial:?})"
            ),
            InvalidBackoff::Jitter(jitter) => {
                write!(f, "backoff jitter {jitter} is not within 0.0..=1.0")
            }
        }
    }
}

impl std::error::Error for InvalidBackoff {}

impl Backoff {
    /// A schedule from `initial` to `max`, each delay within ±`jitter` of its base (0.0: exact
    /// delays; 1.0: anywhere from zero to twice the base).
    ///
    /// Errors: [`InvalidBackoff::MaxBelowInitial`] when `max < initial`,
    /// [`InvalidBackoff::Jitter`] when `jitter` is outside `0.0..=1.0` or NaN. `const`, so a fixed
    /// policy is checked when the program is compiled.
    pub const fn new(
        initial: Duration,
        max: Duration,
        jitter: f64,
    ) -> Result<Self, InvalidBackoff> {
        if max.as_nanos() < initial.as_nanos() {
            return Err(InvalidBackoff::MaxBelowInitial { initial, max });
        }
        // Written so that NaN, which compares false with everything, is refused too.
        if !(jitter >= 0.0 && jitter <= 1.0) {
            return Err(InvalidBackoff::Jitter(jitter));
        }
        Ok(Backoff {
            initial,
            max,
            jitter,
            attempt: 0,
        })
    }

    /// The delay before restart number `attempt` (0: the first): `initial × 2^attempt`, at most
    /// `max`, then jittered. Does not advance the schedule.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(31))
            .min(self.max);
        let factor = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        // `factor` is within 0.0..=2.0, so only a base near `Duration::MAX` can overflow.
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(Duration::MAX)
    }

    /// The delay before the next restart; each call doubles the base.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Starts the schedule over (after a child stayed up long enough to count as stable).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_and_caps() {
        // The daemon's documented default: 100 ms doubling to 30 s with ±20 % jitter.
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30), 0.2).unwrap();
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
        let mut b =
            Backoff::new(Duration::from_millis(10), Duration::from_millis(35), 0.0).unwrap();
        let got: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [10, 20, 35, 35]);
    }

    #[test]
    fn delay_by_attempt_leaves_the_schedule_alone() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1), 0.0).unwrap();
        assert_eq!(b.delay(3), Duration::from_millis(80));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
        let mut b = b;
        assert_eq!(b.next_delay(), Duration::from_millis(10));
    }

    #[test]
    fn bounds_are_checked_when_made() {
        let (ms, s) = (Duration::from_millis(1), Duration::from_secs(1));
        assert_eq!(
            Backoff::new(s, ms, 0.1).unwrap_err(),
            InvalidBackoff::MaxBelowInitial {
                initial: s,
                max: ms
            }
        );
        assert_eq!(
            Backoff::new(ms, s, 1.5).unwrap_err(),
            InvalidBackoff::Jitter(1.5)
        );
        assert_eq!(
            Backoff::new(ms, s, -0.1).unwrap_err(),
            InvalidBackoff::Jitter(-0.1)
        );
        assert!(Backoff::new(ms, s, f64::NAN).is_err());
        assert!(Backoff::new(s, s, 0.0).is_ok());
        assert!(Backoff::new(ms, s, 1.0).is_ok());
        assert!(Backoff::new(Duration::ZERO, Duration::ZERO, 0.0).is_ok());
    }

    #[test]
    fn full_jitter_stays_within_zero_and_twice_the_base() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 1.0).unwrap();
        for _ in 0..200 {
            assert!(b.delay(0) <= Duration::from_millis(200));
        }
    }
}
