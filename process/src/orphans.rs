//! Orphans: what a dead child left behind in a process group of its own.
//!
//! Killing a child's group on its exit ([`reap`](crate::reap)) misses the processes it moved into
//! another group or session (`setsid`, a daemonizing tool). Once this process is a child
//! subreaper ([`adopt_orphans`]), the kernel hands such orphans to it instead of to init, and
//! [`kill_orphans`] ends and reaps every child that is not one it runs on purpose.

#![forbid(unsafe_code)]

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// Makes this process the one that adopts its descendants' orphans (`PR_SET_CHILD_SUBREAPER`).
///
/// Errors: whatever `prctl` says (Linux only).
pub fn adopt_orphans() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// Whether this process adopts its descendants' orphans (it called [`adopt_orphans`]). Only then
/// may its children that it did not start be taken for orphans: a process that embeds a
/// supervisor beside children of its own must not have them killed.
pub fn adopting_orphans() -> bool {
    nix::sys::prctl::get_child_subreaper().unwrap_or(false)
}

/// SIGKILLs every child of this process for which `ours` is false (the adopted orphans) and reaps
/// those that have already died (a zombie is reaped, not counted); returns the command name (`/proc/PID/comm`, `?` when it cannot
/// be read) of each it signalled, so an operator can tell what was left behind. Call it from the thread that
/// spawns children, between spawns, so a child just spawned is always known to `ours`.
pub fn kill_orphans(ours: impl Fn(u32) -> bool) -> Vec<String> {
    let mut signalled = Vec::new();
    for pid in children() {
        if ours(pid) {
            continue;
        }
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map_or_else(|_| "?".to_owned(), |comm| comm.trim_end().to_owned());
        let pid = Pid::from_raw(pid as i32);
        // An orphan that already exited (a zombie handed over to be reaped) is only reaped: it
        // was left behind, but nothing was running.
        if !is_zombie(pid) && kill(pid, Signal::SIGKILL).is_ok() {
            signalled.push(name);
        }
        // A zombie is reaped now; one still dying is reaped by the next call.
        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
    }
    signalled
}

/// Whether `pid` has exited and waits to be reaped (state `Z` in `/proc/PID/stat`, the field
/// after the command name, which may itself hold spaces and parentheses).
fn is_zombie(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// The pids of this process's children, from every thread's `/proc` children list.
fn children() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_listed_and_strangers_killed() {
        let mut known = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut stranger = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let listed = children();
        assert!(listed.contains(&known.id()) && listed.contains(&stranger.id()));
        let (known_pid, stranger_pid) = (known.id(), stranger.id());
        // The test harness's other children are ours too: only the stranger may go.
        let signalled = kill_orphans(|pid| pid != stranger_pid);
        assert_eq!(signalled.len(), 1, "{signalled:?}");
        // `sleep`, or the test thread's name when the read raced the child's exec.
        assert!(
            !signalled[0].is_empty() && signalled[0] != "?",
            "a command name is reported: {signalled:?}"
        );
        let _ = stranger.wait();
        assert!(known.try_wait().unwrap().is_none(), "the known child lives");
        let _ = known.kill();
        let _ = known.wait();
        assert_ne!(known_pid, stranger_pid);
    }
}
