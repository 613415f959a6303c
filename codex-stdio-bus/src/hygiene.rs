//! File-descriptor hygiene: nothing the daemon holds leaks into its workers.
//!
//! Rust and tokio open every fd close-on-exec, but fds the daemon *inherited* from whoever started
//! it (a shell's pipes, a service manager's sockets) are not, and would pass into every worker.

use std::os::fd::{BorrowedFd, RawFd};

/// Marks every inherited fd above stderr close-on-exec. Call once at startup, before any thread
/// or fd of our own exists.
#[allow(unsafe_code)]
pub fn cloexec_inherited_fds() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    // Collect first: the directory handle itself is an fd in the listing.
    let fds: Vec<RawFd> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: the fd was listed as open a moment ago and nothing else runs yet to close it;
        // the borrow lasts for this one fcntl call. A stale fd (the listing's own) just fails.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let flags = nix::fcntl::FdFlag::FD_CLOEXEC;
        let _ = nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_SETFD(flags));
    }
}
