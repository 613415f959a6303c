//! What a child must not inherit from this process: fds it was handed by whoever started it, an
//! open-file limit raised for our own use, a life beyond ours, (when restricted) our
//! user, groups, umask and resource limits, and (when given one) our cgroup.
//!
//! The one module with unsafe code: `pre_exec` runs code between `fork` and `exec`, and fds
//! known only by number must be borrowed to be changed.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use tokio::process::Command;

use crate::{Limit, Restrictions};

fn resource(limit: Limit) -> Resource {
    match limit {
        Limit::AddressSpace => Resource::RLIMIT_AS,
        Limit::OpenFiles => Resource::RLIMIT_NOFILE,
        Limit::Processes => Resource::RLIMIT_NPROC,
        Limit::CpuSeconds => Resource::RLIMIT_CPU,
        Limit::CoreBytes => Resource::RLIMIT_CORE,
    }
}

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

/// Makes the kernel SIGKILL the child when the thread that spawns it dies, gives it the
/// open-file limit `fd_limit` (soft, hard) when one is set, applies `restrictions`, and first of
/// all moves it into the cgroup whose `cgroup.procs` is `cgroup`, when given.
///
/// The cgroup is joined by writing `0` (the writing process) to that file, opened before fork:
/// one `write(2)`, async-signal-safe, before the child changes its credentials (the kernel checks
/// the opener's, but this keeps the order plain) and before exec, so everything the worker ever
/// maps is charged to its cgroup. (`clone3` with `CLONE_INTO_CGROUP` would do it in the kernel,
/// but std's `Command` does not offer it.)
///
/// PDEATHSIG fires on the death of the parent *thread* (prctl(2)): spawn from a thread that lives
/// as long as the process, such as a current-thread runtime's, never from `spawn_blocking`.
#[allow(unsafe_code)]
pub(crate) fn in_child(
    command: &mut Command,
    fd_limit: Option<(u64, u64)>,
    restrictions: &Restrictions,
    cgroup: Option<std::fs::File>,
) {
    let parent = std::process::id();
    // Everything the child needs is built here, before fork: the closure must not allocate.
    let limits: Vec<(Resource, u64)> = restrictions
        .limits
        .iter()
        .map(|&(limit, value)| (resource(limit), value))
        .collect();
    let umask = restrictions.umask.map(Mode::from_bits_truncate);
    let groups: Option<Vec<Gid>> = restrictions
        .groups
        .as_ref()
        .map(|groups| groups.iter().copied().map(Gid::from_raw).collect());
    let gid = restrictions.gid.map(Gid::from_raw);
    let uid = restrictions.uid.map(Uid::from_raw);
    let no_new_privs = restrictions.no_new_privs;
    // SAFETY: the closure runs between fork and exec, where only async-signal-safe functions may
    // be called: it calls write (on an fd opened before fork), setrlimit, umask, setgroups,
    // setgid, setuid, prctl and getppid (through nix, which passes the prepared slices and
    // values straight to libc, which returns `Errno` values and converts them with
    // `io::Error::from_raw_os_error`) and allocates nothing. Its error is an OS error code, which
    // std keeps in the `io::Error` itself (no `Box`); std passes only that code back to the
    // parent anyway.
    unsafe {
        command.pre_exec(move || {
            if let Some(procs) = &cgroup {
                nix::unistd::write(procs, b"0")?;
            }
            if let Some((soft, hard)) = fd_limit {
                setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
            }
            // Limits first, while a root child may still raise a hard limit.
            for &(resource, value) in &limits {
                setrlimit(resource, value, value)?;
            }
            if let Some(mask) = umask {
                nix::sys::stat::umask(mask);
            }
            // Groups before the uid: once the uid is dropped, nothing else may change.
            if let Some(groups) = &groups {
                nix::unistd::setgroups(groups)?;
            }
            if let Some(gid) = gid {
                nix::unistd::setgid(gid)?;
            }
            if let Some(uid) = uid {
                nix::unistd::setuid(uid)?;
            }
            if no_new_privs {
                nix::sys::prctl::set_no_new_privs()?;
            }
            // After any change of credentials, which clears the parent-death signal.
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
