//! A rate limit for a repeated warning: at most one per [`PERIOD`], and the next one admitted says
//! how many were held back. A worker that writes 100,000 bad lines would otherwise write 100,000
//! warnings (21 MB of log, measured); the metrics still count every line. The same counting
//! window ([`Window`], `max` per period) keeps a worker's stderr lines in the dashboard's event
//! list at a bounded rate (`core::worker_events::StderrRate`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one warning per this long (per limit; the daemon keeps one per slot).
pub(crate) const PERIOD: Duration = Duration::from_secs(1);

/// One repeated warning's limit.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    window: Mutex<Window>,
}

impl LogLimit {
    /// Whether a warning happening at `now` may be logged: `Some(n)`, with the number `n` held
    /// back since the last one admitted (to report with it), or `None` if it is to be held back
    /// (and counted). Only the warning's path pays for this: one uncontended lock.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        window.admit(now, 1)
    }
}

/// At most `max` events admitted per [`PERIOD`], a period starting at the first event admitted
/// after the last one ended; the others are held back and counted. Owned by one reader (no
/// lock); [`LogLimit`] shares one behind a lock.
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// When the current period began.
    since: Option<Instant>,
    /// Events admitted in it.
    admitted: u32,
    /// Events held back since the last one admitted.
    held: u64,
}

impl Window {
    /// Whether an event at `now` is admitted (at most `max` per period): `Some(n)` with the
    /// number `n` held back since the last one admitted, else `None` (held back and counted).
    pub(crate) fn admit(&mut self, now: Instant, max: u32) -> Option<u64> {
        match self.since {
            Some(since) if now.saturating_duration_since(since) < PERIOD => {
                if self.admitted >= max {
                    self.held += 1;
                    return None;
                }
            }
            _ => {
                self.since = Some(now);
                self.admitted = 0;
            }
        }
        self.admitted += 1;
        Some(self.take_held())
    }

    /// The events held back since the last one admitted, counted from zero again (for a last
    /// report when the events end).
    pub(crate) fn take_held(&mut self) -> u64 {
        std::mem::take(&mut self.held)
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

    #[test]
    fn a_window_admits_max_per_period_and_counts_the_rest() {
        let mut window = Window::default();
        let start = Instant::now();
        for i in 0..3 {
            assert_eq!(window.admit(start + Duration::from_millis(i), 3), Some(0));
        }
        assert_eq!(window.admit(start + Duration::from_millis(3), 3), None);
        assert_eq!(window.admit(start + Duration::from_millis(4), 3), None);
        assert_eq!(window.admit(start + PERIOD, 3), Some(2));
        assert_eq!(window.admit(start + PERIOD, 3), Some(0));
        assert_eq!(window.take_held(), 0);
    }
}
