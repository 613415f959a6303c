//! OTP-style restart intensity: at most `max_restarts` restarts within `window`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Remembers recent restarts of one slot.
#[derive(Debug)]
pub struct RestartLimit {
    max_restarts: u32,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartLimit {
    /// Allows `max_restarts` restarts in any `window` (0 = never restart).
    pub fn new(max_restarts: u32, window: Duration) -> Self {
        RestartLimit {
            max_restarts,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart wanted at `now`; false if it would exceed the limit.
    pub fn allow(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max_restarts as usize {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_past_the_limit_and_forgets_after_the_window() {
        let start = Instant::now();
        let mut limit = RestartLimit::new(2, Duration::from_secs(10));
        assert!(limit.allow(start));
        assert!(limit.allow(start + Duration::from_secs(1)));
        assert!(!limit.allow(start + Duration::from_secs(2)));
        assert!(limit.allow(start + Duration::from_secs(11)));
    }

    #[test]
    fn zero_means_never() {
        let mut limit = RestartLimit::new(0, Duration::from_secs(10));
        assert!(!limit.allow(Instant::now()));
    }
}
