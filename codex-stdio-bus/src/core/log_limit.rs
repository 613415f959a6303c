//! A rate limit for a repeated warning: at most one per [`PERIOD`], and the next one admitted says
//! how many were held back. A worker that writes 100,000 bad lines would otherwise write 100,000
//! warnings (21 MB of log, measured); the metrics still count every line.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one warning per this long (per limit; the daemon keeps one per slot).
pub(crate) const PERIOD: Duration = Duration::from_secs(1);

/// One repeated warning's limit.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the last warning was admitted.
    last: Option<Instant>,
    /// Warnings held back since then.
    suppressed: u64,
}

impl LogLimit {
    /// Whether a warning happening at `now` may be logged: `Some(n)`, with the number `n` held
    /// back since the last one admitted (to report with it), or `None` if it is to be held back
    /// (and counted). Only the warning's path pays for this: one uncontended lock.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.last {
            Some(last) if now.saturating_duration_since(last) < PERIOD => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_period_and_the_next_reports_how_many_were_held_back() {
        let limit = LogLimit::default();
        let start = Instant::now();
        assert_eq!(limit.admit(start), Some(0));
        for i in 1..=10_000u64 {
            assert_eq!(limit.admit(start + Duration::from_micros(i)), None);
        }
        assert_eq!(limit.admit(start + PERIOD), Some(10_000));
        assert_eq!(limit.admit(start + PERIOD), None);
        assert_eq!(limit.admit(start + PERIOD * 3), Some(1));
    }
}
