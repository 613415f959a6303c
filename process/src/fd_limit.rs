//! The open-file limit: raised for a process that holds many fds (the daemon holds a socket per
//! client), and put back for its children, which did not ask for it.
//!
//! systemd and most shells start processes with a soft limit of 1024 and a much higher hard limit,
//! expecting a program that needs more to raise its own soft limit; a program that uses `select()`
//! breaks above 1024, so children get the original back: [`Spec`](crate::Spec)
//! applies [`for_children`] to every child.

#![forbid(unsafe_code)]

use std::sync::OnceLock;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The soft and hard limits this process was started with, once [`raise`] has run.
static ORIGINAL: OnceLock<(u64, u64)> = OnceLock::new();

/// Raises the soft open-file limit to the hard limit; returns the new soft limit. Call once at
/// startup, before spawning children.
///
/// Errors: those of `getrlimit(2)` and `setrlimit(2)`.
pub fn raise() -> nix::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let _ = ORIGINAL.set((soft, hard));
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// The soft and hard limits a child should start with: what this process was started with, if
/// [`raise`] changed them (`None`: children inherit the limit unchanged).
pub fn for_children() -> Option<(u64, u64)> {
    ORIGINAL.get().copied()
}
