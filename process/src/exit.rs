//! Waiting for a child that ends on its own, and clearing its process group before it is reaped.
//!
//! A worker that crashes may leave processes it started in its group (a tool, a `sleep`); they
//! would outlive it unsupervised and keep its pipes open. Killing the group is only safe while
//! its id cannot name anyone else's group: as long as the leader is an unreaped zombie, its pid
//! (the group's id) stays allocated. So the exit is awaited through a pidfd, which becomes
//! readable when the process exits without reaping it; then the group is SIGKILLed; then the
//! child is reaped.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitStatus;

use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::process::Child;

use crate::stop::signal_group;

/// Waits until `child` (a group leader, as [`Spec`](crate::Spec) starts every child) exits,
/// SIGKILLs what is left of its process group, and reaps it.
///
/// Where pidfds are not available (Linux before 5.3) the group is SIGKILLed right after the
/// reap instead, which leaves a window of microseconds in which the id could be reused.
pub async fn reap(child: &mut Child) -> io::Result<ExitStatus> {
    let Some(pid) = child.id() else {
        return child.wait().await;
    };
    match exit_of(pid) {
        Ok(exited) => {
            // Readable once the process has exited; it is a zombie until `wait` below.
            let _ = exited.readable().await;
            let _ = signal_group(pid, Signal::SIGKILL);
            child.wait().await
        }
        Err(_) => {
            let status = child.wait().await;
            let _ = signal_group(pid, Signal::SIGKILL);
            status
        }
    }
}

/// A pidfd of `pid`, registered with the runtime: readable once the process exits.
fn exit_of(pid: u32) -> io::Result<AsyncFd<OwnedFd>> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    #[allow(unsafe_code)]
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    #[allow(unsafe_code)]
    // SAFETY: an `OwnedFd` is open for as long as it lives and always names the same fd, and the
    // `AsyncFd` owns it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, BufReader};

    use super::*;
    use crate::testing::gone;
    use crate::Spec;

    #[tokio::test]
    async fn a_child_that_exits_takes_its_group_with_it() {
        // The child starts a grandchild in its own group, says its pid, and exits.
        let mut child = Spec::new("sh")
            .args(["-c", "sleep 300 & echo $!; exit 7"])
            .spawn()
            .unwrap();
        // One line, not to the end: the grandchild holds stdout open.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).await.unwrap();
        let grandchild: u32 = line.trim().parse().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), reap(&mut child))
            .await
            .expect("reaped")
            .unwrap();
        assert_eq!(status.code(), Some(7));
        assert!(
            gone(grandchild),
            "the grandchild {grandchild} outlived its group's leader"
        );
    }
}
