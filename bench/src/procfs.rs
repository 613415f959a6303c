//! What the kernel says about a process: CPU time, resident memory, children.

use std::fs;

/// CPU time (user + system) of every live thread of `pid`, in nanoseconds.
///
/// From `/proc/PID/task/*/schedstat` (nanosecond resolution); `/proc/PID/stat`'s utime/stime tick
/// at 10 ms, too coarse for runs where the daemon spends well under a second.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(text) = fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
        {
            total += ns;
            any = true;
        }
    }
    any.then_some(total)
}

/// A field of `/proc/PID/status` in kB, e.g. `VmRSS` (resident now) or `VmHWM` (peak resident).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Open file descriptors of `pid` (entries of `/proc/PID/fd`): how a run sees that the daemon has
/// closed the sockets of clients that left.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Direct children of `pid` (spawned by any of its threads).
pub fn children(pid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return pids;
    };
    for task in tasks.flatten() {
        let listed = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        pids.extend(
            listed
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Every descendant of `pid` (children, their children, …), as listed now.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut found = children(pid);
    let mut next = 0;
    while let Some(&parent) = found.get(next) {
        found.extend(children(parent));
        next += 1;
    }
    found
}

/// CPU time of this process (all threads, the in-process responder included), in nanoseconds.
pub fn own_cpu_ns() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0, |u| {
        let micros =
            |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
        (micros(u.user_time()) + micros(u.system_time())) * 1000
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let spin: u64 = (0..2_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        assert!(spin > 0);
        assert!(cpu_ns(me).unwrap() > 0);
        let rss = status_kb(me, "VmRSS").unwrap();
        assert!(rss > 0);
        assert!(
            status_kb(me, "VmHWM").unwrap() >= rss,
            "the peak is at least the current"
        );
        assert!(own_cpu_ns() > 0);
        // Other tests open and close fds meanwhile: only that the file held here is counted.
        let held = std::fs::File::open("/proc/self/status").unwrap();
        assert!(open_fds(me).unwrap() >= 1);
        drop(held);
    }

    #[test]
    fn lists_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = children(std::process::id()).contains(&child.id());
        assert!(descendants(std::process::id()).contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found);
    }
}
