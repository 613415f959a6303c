//! Timestamps for `emittedAtMs`, `createdAt` and the like: the system clock, or a virtual clock
//! that starts at a fixed epoch and moves only by the scheduled delays.

use std::time::{SystemTime, UNIX_EPOCH};

use super::knobs::ClockKind;

/// The virtual clock's epoch: 2023-11-14T22:13:20Z.
pub const VIRTUAL_EPOCH_MS: u64 = 1_700_000_000_000;

/// A source of timestamps.
#[derive(Debug, Clone)]
pub struct Clock {
    kind: ClockKind,
    /// Virtual milliseconds since the epoch reached so far.
    virtual_ms: u64,
}

impl Clock {
    /// A clock of `kind`.
    pub fn new(kind: ClockKind) -> Self {
        Self {
            kind,
            virtual_ms: 0,
        }
    }

    /// Moves the virtual clock to `virtual_ms` if that is later.
    pub fn reach(&mut self, virtual_ms: u64) {
        self.virtual_ms = self.virtual_ms.max(virtual_ms);
    }

    /// The virtual time reached so far, in ms since the virtual epoch.
    pub fn virtual_now(&self) -> u64 {
        self.virtual_ms
    }

    /// Epoch milliseconds for an event at virtual time `virtual_ms`.
    pub fn stamp_ms(&self, virtual_ms: u64) -> u64 {
        match self.kind {
            ClockKind::Virtual => VIRTUAL_EPOCH_MS + virtual_ms,
            ClockKind::Real => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| {
                    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
                }),
        }
    }

    /// Whether timestamps are virtual.
    pub fn is_virtual(&self) -> bool {
        self.kind == ClockKind::Virtual
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_time_is_exact_and_monotonic() {
        let mut clock = Clock::new(ClockKind::Virtual);
        assert_eq!(clock.stamp_ms(25), VIRTUAL_EPOCH_MS + 25);
        clock.reach(100);
        clock.reach(40);
        assert_eq!(clock.virtual_now(), 100);
        assert!(clock.is_virtual());
        let real = Clock::new(ClockKind::Real);
        assert!(real.stamp_ms(0) > VIRTUAL_EPOCH_MS);
    }
}
