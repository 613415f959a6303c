//! When to restart a dead child: jittered exponential backoff, and a limit on restarts within a
//! window, past which the worker exits and leaves recovery to the bus's supervisor.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Backoff before the first restart; doubled for each further death in the window.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Longest backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Restart bookkeeping.
#[derive(Debug)]
pub struct RestartPolicy {
    max_restarts: u32,
    window: Duration,
    deaths: VecDeque<Instant>,
    jitter: u64,
}

impl RestartPolicy {
    /// Allows `max_restarts` restarts within `window`.
    pub fn new(max_restarts: u32, window: Duration) -> Self {
        Self {
            max_restarts,
            window,
            deaths: VecDeque::new(),
            // Seeded per process so the workers of a pool do not restart in lockstep.
            jitter: u64::from(std::process::id()) | 1,
        }
    }

    /// Records a child death at `now`; returns the delay before the next start, or `None` when
    /// the limit is exceeded.
    pub fn on_death(&mut self, now: Instant) -> Option<Duration> {
        while self
            .deaths
            .front()
            .is_some_and(|&death| now.saturating_duration_since(death) >= self.window)
        {
            self.deaths.pop_front();
        }
        self.deaths.push_back(now);
        let count = u32::try_from(self.deaths.len()).unwrap_or(u32::MAX);
        if count > self.max_restarts {
            return None;
        }
        let base = FIRST_BACKOFF
            .saturating_mul(1 << (count - 1).min(16))
            .min(MAX_BACKOFF);
        Some(self.jittered(base))
    }

    /// `base` ±20 %, from a xorshift sequence.
    fn jittered(&mut self, base: Duration) -> Duration {
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let percent = 80 + self.jitter % 41;
        base * u32::try_from(percent).unwrap_or(100) / 100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_the_limit_counts_deaths_in_the_window() {
        let start = Instant::now();
        let mut policy = RestartPolicy::new(3, Duration::from_secs(60));
        let first = policy.on_death(start).unwrap();
        assert!(first >= Duration::from_millis(160) && first <= Duration::from_millis(240));
        let second = policy.on_death(start + Duration::from_secs(1)).unwrap();
        assert!(second >= Duration::from_millis(320));
        assert!(policy.on_death(start + Duration::from_secs(2)).is_some());
        assert!(policy.on_death(start + Duration::from_secs(3)).is_none());
        // Once the old deaths leave the window, restarts are allowed again.
        assert!(policy.on_death(start + Duration::from_secs(62)).is_some());
    }

    #[test]
    fn zero_restarts_means_never() {
        let mut policy = RestartPolicy::new(0, Duration::from_secs(60));
        assert!(policy.on_death(Instant::now()).is_none());
    }
}
