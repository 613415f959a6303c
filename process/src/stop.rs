//! Ending a child: its stdin closed, SIGTERM to its process group, SIGKILL at a deadline; and
//! signalling a group.

#![forbid(unsafe_code)]

use std::io;
use std::process::ExitStatus;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;

/// How [`stop`] ended a child.
#[derive(Debug)]
pub struct Stopped {
    /// Its exit status (the error of `wait` if it could not be collected).
    pub status: io::Result<ExitStatus>,
    /// Whether it was still running at the deadline, so its group was SIGKILLed.
    pub killed: bool,
}

/// Stops `child`, a process group leader (as [`Spec`](crate::Spec) starts every child): closes its
/// stdin if `child` still holds it (a caller that moved stdin out, say to a writer task, closes it
/// itself, once what is queued is written), sends SIGTERM to its group, SIGKILL to the group at
/// `deadline`, and reaps it. A child already reaped is not signalled again.
///
/// The group is SIGKILLed as well once the child has exited, whether on SIGTERM or at the deadline:
/// what is left of it (a tool the child started that ignores SIGTERM) would otherwise outlive it
/// unsupervised. The group's id cannot have been reused by then: Linux keeps a pid allocated while
/// any process is in the group it names. The child itself is also SIGKILLed directly at the
/// deadline, in case it left its group (`setsid`).
pub async fn stop(child: &mut Child, deadline: Instant) -> Stopped {
    drop(child.stdin.take());
    let Some(pid) = child.id() else {
        return Stopped {
            status: child.wait().await,
            killed: false,
        };
    };
    // ESRCH: the group is already empty, and `wait` below collects the child.
    let _ = signal_group(pid, Signal::SIGTERM);
    let mut killed = false;
    let status = tokio::select! {
        status = child.wait() => status,
        () = tokio::time::sleep_until(deadline.into()) => {
            killed = true;
            let _ = signal_group(pid, Signal::SIGKILL);
            let _ = child.start_kill();
            child.wait().await
        }
    };
    if !killed {
        let _ = signal_group(pid, Signal::SIGKILL);
    }
    Stopped { status, killed }
}

/// Sends `signal` to the process group `pgid`; a child started by [`Spec`](crate::Spec) leads the
/// group whose id is its pid (`Child::id`).
///
/// Errors: `ESRCH` when no process is left in the group; `EINVAL` for a `pgid` of 0 or 1 or above
/// `i32::MAX`, which is never a child's group: `killpg` reads 0 as our own group and 1 as every
/// process we may signal (it calls `kill(-pgid)`).
pub fn signal_group(pgid: u32, signal: Signal) -> nix::Result<()> {
    let pgid = i32::try_from(pgid)
        .ok()
        .filter(|&id| id > 1)
        .ok_or(Errno::EINVAL)?;
    killpg(Pid::from_raw(pgid), signal)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, BufReader};

    use super::*;
    use crate::testing::gone;
    use crate::Spec;

    /// Starts `sh -c script` and waits for its first line on stdout, which it writes once ready.
    async fn started(script: &str) -> (Child, String) {
        let mut child = Spec::new("sh").args(["-c", script]).spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).await.unwrap();
        (child, line.trim().to_owned())
    }

    #[tokio::test]
    async fn a_child_that_obeys_sigterm_ends_on_it() {
        let mut child = Spec::new("sleep").arg("1000").spawn().unwrap();
        let pid = child.id().unwrap();
        let begun = Instant::now();
        let stopped = stop(&mut child, begun + Duration::from_secs(30)).await;
        assert!(!stopped.killed);
        assert_eq!(
            stopped.status.unwrap().signal(),
            Some(Signal::SIGTERM as i32)
        );
        assert!(begun.elapsed() < Duration::from_secs(10));
        assert!(gone(pid));
        // Once reaped, it is not signalled again.
        let again = stop(&mut child, Instant::now()).await;
        assert!(!again.killed);
        assert!(again.status.is_ok());
    }

    #[tokio::test]
    async fn a_child_that_ignores_sigterm_is_killed_at_the_deadline() {
        // An ignored signal stays ignored across exec, so `sleep` ignores SIGTERM too.
        let (mut child, ready) = started("trap '' TERM; echo ready; exec sleep 1000").await;
        assert_eq!(ready, "ready");
        let begun = Instant::now();
        let grace = Duration::from_millis(300);
        let stopped = stop(&mut child, begun + grace).await;
        assert!(stopped.killed);
        assert_eq!(
            stopped.status.unwrap().signal(),
            Some(Signal::SIGKILL as i32)
        );
        assert!(begun.elapsed() >= grace);
    }

    #[tokio::test]
    async fn the_group_goes_with_the_child() {
        // A grandchild in the group, one that obeys SIGTERM and one that ignores it.
        let (mut child, pids) =
            started("sleep 1000 & a=$!; (trap '' TERM; exec sleep 1000) & echo $a $!; wait").await;
        let pids: Vec<u32> = pids.split(' ').map(|p| p.parse().unwrap()).collect();
        let stopped = stop(&mut child, Instant::now() + Duration::from_secs(30)).await;
        assert!(!stopped.killed, "sh exits on SIGTERM");
        for pid in pids {
            assert!(gone(pid), "grandchild {pid} survived the stop");
        }
    }

    #[tokio::test]
    async fn stop_closes_stdin() {
        // `cat` would exit on end of input by itself; here SIGTERM comes at the same moment, so
        // only check that stdin is taken and the child ends.
        let mut child = Spec::new("cat").spawn().unwrap();
        let stopped = stop(&mut child, Instant::now() + Duration::from_secs(30)).await;
        assert!(child.stdin.is_none());
        assert!(stopped.status.is_ok());
    }

    #[test]
    fn our_own_group_and_everyone_are_refused() {
        for pgid in [0, 1, u32::MAX] {
            assert_eq!(signal_group(pgid, Signal::SIGCONT), Err(Errno::EINVAL));
        }
    }
}
