//! What a child must not inherit from this process: fds it was handed by whoever started it, an
//! open-file limit raised for our own use, and a life beyond ours.
//!
//! The one module with unsafe code: `pre_exec` runs code between `fork` and `exec`, and fds
//! known only by number must be borrowed to be changed.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;
use tokio::process::Command;

/// Marks every inherited fd above stderr close-on-exec. Call once at startup, before any thread
/// or fd of our own exists.
///
/// Rust and tokio open every fd close-on-exec, but fds *inherited* from whoever started this
/// process (a shell's pipes, a service manager's sockets) are not, and would pass into every
/// child. Best effort: without `/proc` nothing is changed.
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

/// Makes the kernel SIGKILL the child when the thread that spawns it dies, and gives it the
/// open-file limit `fd_limit` (soft, hard) when one is set.
///
/// PDEATHSIG fires on the death of the parent *thread* (prctl(2)): spawn from a thread that lives
/// as long as the process, such as a current-thread runtime's, never from `spawn_blocking`.
#[allow(unsafe_code)]
pub(crate) fn in_child(command: &mut Command, fd_limit: Option<(u64, u64)>) {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec, where only async-signal-safe functions may
    // be called: it calls setrlimit, prctl and getppid (through nix, which returns `Errno` values
    // and converts them with `io::Error::from_raw_os_error`) and allocates nothing. Its error is
    // an OS error code, which std keeps in the `io::Error` itself (no `Box`); std passes only
    // that code back to the parent anyway.
    unsafe {
        command.pre_exec(move || {
            if let Some((soft, hard)) = fd_limit {
                setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
            }
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died before prctl: then nobody would ever send the signal.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(io::Error::from_raw_os_error(Errno::ESRCH as i32));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use nix::fcntl::{fcntl, FcntlArg, FdFlag};

    use super::*;
    use crate::testing::output;
    use crate::Spec;

    #[tokio::test]
    async fn an_inherited_fd_does_not_reach_a_child() {
        // `dup` makes an fd without close-on-exec, like one handed to us by a shell.
        let fd = nix::unistd::dup(std::io::stderr()).unwrap();
        let flags = |fd| FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap());
        assert!(!flags(&fd).contains(FdFlag::FD_CLOEXEC));
        cloexec_inherited_fds();
        assert!(flags(&fd).contains(FdFlag::FD_CLOEXEC));
        let script = format!(
            "test -e /proc/$$/fd/{} && echo leaked || echo clean",
            fd.as_raw_fd()
        );
        let out = output(Spec::new("sh").args(["-c", &script])).await;
        assert_eq!(out.trim(), "clean");
    }
}
