//! OTP-style restart intensity: at most `max_restarts` restarts within `window`.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Remembers the recent restarts of one child (a daemon slot, a worker's Codex child): Erlang/OTP's
/// MaxR restarts in MaxT, past which the supervisor gives up.
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

    /// Records a restart wanted at `now`; false (and nothing recorded) if it would exceed the
    /// limit.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.forget_before(now);
        if self.recent.len() >= self.max_restarts as usize {
            return false;
        }
        self.recent.push_back(now);
        true
    }

    /// The earliest moment from `now` at which `allow` would succeed: when the oldest restart
    /// leaves the window (with `max_restarts` 0, one window from now).
    pub fn next_allowed(&mut self, now: Instant) -> Instant {
        self.forget_before(now);
        match self.recent.front() {
            Some(oldest) if self.recent.len() >= self.max_restarts as usize => {
                *oldest + self.window
            }
            Some(_) => now,
            None if self.max_restarts == 0 => now + self.window,
            None => now,
        }
    }

    /// The restarts recorded within the window as of the last [`allow`](Self::allow) or
    /// [`next_allowed`](Self::next_allowed): after a successful `allow`, this one included.
    pub fn restarts_in_window(&self) -> u32 {
        u32::try_from(self.recent.len()).unwrap_or(u32::MAX)
    }

    /// Drops the restarts that have left the window at `now`.
    fn forget_before(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            self.recent.pop_front();
        }
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
        assert_eq!(limit.restarts_in_window(), 2);
        assert!(!limit.allow(start + Duration::from_secs(2)));
        assert_eq!(
            limit.restarts_in_window(),
            2,
            "a refused restart is not recorded"
        );
        assert!(limit.allow(start + Duration::from_secs(11)));
        assert_eq!(limit.restarts_in_window(), 1);
    }

    #[test]
    fn zero_means_never() {
        let mut limit = RestartLimit::new(0, Duration::from_secs(10));
        assert!(!limit.allow(Instant::now()));
    }

    #[test]
    fn next_allowed_is_when_the_oldest_restart_leaves_the_window() {
        let start = Instant::now();
        let window = Duration::from_secs(10);
        let mut limit = RestartLimit::new(2, window);
        assert_eq!(limit.next_allowed(start), start);
        assert!(limit.allow(start));
        assert!(limit.allow(start + Duration::from_secs(3)));
        let at = start + Duration::from_secs(4);
        assert!(!limit.allow(at));
        assert_eq!(limit.next_allowed(at), start + window);
        let next = limit.next_allowed(at);
        assert!(limit.allow(next));
        let mut never = RestartLimit::new(0, window);
        assert_eq!(never.next_allowed(start), start + window);
    }
}
