//! The open-file limit: raised for the daemon, which holds a socket per client, and put back for
//! its workers, which did not ask for it.
//!
//! systemd and most shells start processes with a soft limit of 1024 and a much higher hard limit,
//! expecting a program that needs more to raise its own soft limit; a program that uses `select()`
//! breaks above 1024, so children get the original back.

use std::sync::OnceLock;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The soft and hard limits the daemon was started with.
static ORIGINAL: OnceLock<(u64, u64)> = OnceLock::new();

/// Raises the soft open-file limit to the hard limit; returns the new soft limit. Call once at
/// startup.
pub fn raise() -> nix::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let _ = ORIGINAL.set((soft, hard));
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// The soft and hard limits a worker should start with: what the daemon was started with.
pub fn for_workers() -> Option<(u64, u64)> {
    ORIGINAL.get().copied()
}
