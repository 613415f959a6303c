//! How many client connections the daemon serves at once (`limits.max_connections`), kept below
//! its open-file limit so that connections can never take the fds a worker restart needs: a worker
//! that could not be respawned for want of fds would leave its slot `failed`.
//!
//! A connection over the cap is accepted and closed at once, without an error line: writing one
//! could block on a peer that does not read, and the close tells the client as much (it sees end
//! of file).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nix::sys::resource::{getrlimit, Resource};

use crate::core::log_limit::LogLimit;

/// Fds a worker slot may hold while it is respawned: the old process's three pipes until they are
/// closed, the new one's three pipes (both ends during the spawn), its pidfd and the exec-status
/// pipe; rounded up.
const FDS_PER_WORKER: u64 = 16;

/// Fds kept free beyond the workers' and those open at start: admin connections (bounded by the
/// admin endpoint to fit), DNS lookups, log rotation, and writers still flushing to a connection
/// that has just left.
pub(crate) const HEADROOM: u64 = 32;

/// The connections of one listener against its cap.
#[derive(Debug)]
pub(crate) struct Capacity {
    /// Connections being served now.
    open: AtomicUsize,
    /// The effective cap; lowered or raised when a reload changes the number of worker slots
    /// ([`Capacity::resize`]).
    max: AtomicUsize,
    /// `limits.max_connections`.
    configured: usize,
    /// Fds left for connections and workers: the open-file limit less the fds open at start and
    /// [`HEADROOM`]; `None` when either could not be read (the cap is then `configured`).
    room: Option<u64>,
    /// Refusals are warned about at most once a second.
    warnings: LogLimit,
}

impl Capacity {
    /// The cap for a daemon with `workers` worker slots configured with `configured`
    /// (`limits.max_connections`): the smaller of it and the open-file limit less the fds open
    /// now and [`FDS_PER_WORKER`] per slot and [`HEADROOM`]. Logged once, with how it was reached.
    pub(crate) fn new(configured: usize, workers: usize) -> Capacity {
        let room = match (getrlimit(Resource::RLIMIT_NOFILE), open_fds()) {
            (Ok((soft, _)), Ok(open)) => Some(soft.saturating_sub(open + HEADROOM)),
            (Err(error), _) => {
                tracing::warn!(%error, max_connections = configured, "cannot read the open-file limit");
                None
            }
            (_, Err(error)) => {
                tracing::warn!(%error, max_connections = configured, "cannot count open fds");
                None
            }
        };
        let capacity = Capacity {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(configured),
            configured,
            room,
            warnings: LogLimit::default(),
        };
        capacity.resize(workers);
        capacity
    }

    /// Sets the cap for `workers` worker slots (at start, and when a reload adds or removes
    /// slots): [`FDS_PER_WORKER`] each are kept from connections. A lower cap closes no
    /// connection; new ones wait until enough have left.
    pub(crate) fn resize(&self, workers: usize) {
        let Some(room) = self.room else {
            return;
        };
        let reserve = FDS_PER_WORKER * workers as u64;
        let fits = usize::try_from(room.saturating_sub(reserve)).unwrap_or(usize::MAX);
        let max = self.configured.min(fits);
        let was = self.max.swap(max, Ordering::Relaxed);
        if max < self.configured {
            tracing::warn!(
                max_connections = max,
                configured = self.configured,
                workers,
                "max_connections lowered to keep fds for worker restarts"
            );
        } else if was != max || workers == 0 {
            tracing::info!(max_connections = max, workers, "connection cap");
        }
    }

    /// The cap now.
    fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// A seat for one more connection, held while it is served; `None` (and a rate-limited
    /// warning) when the cap is reached.
    pub(crate) fn take(self: &Arc<Self>) -> Option<Seat> {
        // One thread accepts, so a load and a store would do; fetch_update keeps it right anyway.
        let taken = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (open < self.max()).then_some(open + 1)
            });
        match taken {
            Ok(_) => Some(Seat(self.clone())),
            Err(_) => {
                if let Some(suppressed) = self.warnings.admit(Instant::now()) {
                    tracing::warn!(
                        max_connections = self.max(),
                        suppressed,
                        "connection over max_connections closed"
                    );
                }
                None
            }
        }
    }
}

/// One connection's place under the cap, given back when dropped.
#[derive(Debug)]
pub(crate) struct Seat(Arc<Capacity>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many fds this process has open now.
fn open_fds() -> std::io::Result<u64> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seats_stop_at_the_cap_and_come_back_when_dropped() {
        let capacity = Arc::new(Capacity::new(2, 0));
        let first = capacity.take().expect("first seat");
        let _second = capacity.take().expect("second seat");
        assert!(capacity.take().is_none(), "over the cap");
        drop(first);
        assert!(
            capacity.take().is_some(),
            "a seat given back is taken again"
        );
    }

    #[test]
    fn more_workers_leave_fewer_seats_and_fewer_workers_give_them_back() {
        let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
            return;
        };
        let capacity = Capacity::new(usize::MAX, 0);
        let all = capacity.max();
        assert!(
            (all as u64) < soft,
            "fds open now and the headroom are kept"
        );
        capacity.resize(4);
        assert_eq!(capacity.max(), all - 4 * FDS_PER_WORKER as usize);
        capacity.resize(0);
        assert_eq!(capacity.max(), all);
    }
}
