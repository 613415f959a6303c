//! When to restart a dead child: the worker's policy, expressed with the shared
//! [`Backoff`] and [`RestartLimit`]. Past the limit the worker exits and leaves recovery to the
//! bus's supervisor.

use std::time::{Duration, Instant};

use codex_bus_process::{Backoff, RestartLimit};

/// 200 ms before the first restart, doubled for each further death in the window, at most 30 s,
/// each ±20 % so the workers of a pool do not restart their children in lockstep. Checked when
/// the worker is compiled.
const BACKOFF: Backoff =
    match Backoff::new(Duration::from_millis(200), Duration::from_secs(30), 0.2) {
        Ok(backoff) => backoff,
        Err(_) => panic!("the worker's backoff bounds are invalid"),
    };

/// Restart bookkeeping of one child.
#[derive(Debug)]
pub struct RestartPolicy {
    limit: RestartLimit,
}

impl RestartPolicy {
    /// Allows `max_restarts` restarts within `window`.
    pub fn new(max_restarts: u32, window: Duration) -> Self {
        Self {
            limit: RestartLimit::new(max_restarts, window),
        }
    }

    /// Records a child death at `now`; returns the delay before the next start, or `None` when
    /// the limit is exceeded.
    pub fn on_death(&mut self, now: Instant) -> Option<Duration> {
        if !self.limit.allow(now) {
            return None;
        }
        // The backoff grows with the deaths still in the window (this one included), so it falls
        // back as old deaths leave the window.
        Some(BACKOFF.delay(self.limit.restarts_in_window() - 1))
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
