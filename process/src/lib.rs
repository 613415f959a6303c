//! Process supervision shared by `codex-stdio-bus` (its workers) and `codex-worker` (its
//! `codex app-server` children), so each rule exists once.
//!
//! - [`Spec`] spawns a child with piped stdio into its own process group, killed by the kernel when
//!   the spawning thread dies, with the open-file limit this process was started with
//!   ([`fd_limit`]) and any [`Restrictions`] (user, group, umask, resource limits), in a cgroup v2
//!   of its own if given one ([`cgroup`]);
//!   [`resolve_command`] finds a program as `execvp` would.
//! - [`cloexec_inherited_fds`] keeps fds this process inherited out of its children.
//! - [`stop`](fn@crate::stop) ends a child (stdin closed, SIGTERM to its group, SIGKILL at a deadline, reaped);
//!   [`reap`] waits for a child that ends on its own and kills what is left of its group before
//!   reaping it; [`signal_group`] signals a group.
//! - [`adopt_orphans`] makes this process adopt what its children leave behind in other groups,
//!   and [`kill_orphans`] ends those.
//! - [`capture_stderr`] reads a child's stderr as lines of bounded length.
//! - [`Backoff`] (jittered exponential delays) and [`RestartLimit`] (at most N restarts in a
//!   window) decide when a dead child starts again.
//!
//! Linux only: the parent-death signal is `prctl(PR_SET_PDEATHSIG)` and fd hygiene reads
//! `/proc/self/fd`.

// Unsafe code lives in `inherit` (`pre_exec`, and borrowing fds known by number) and `exit`
// (opening a pidfd); every other module forbids it.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod backoff;
pub mod cgroup;
mod exit;
pub mod fd_limit;
mod inherit;
mod orphans;
mod restart_limit;
mod restrict;
mod spawn;
mod stderr;
mod stop;
#[cfg(test)]
mod testing;

pub use backoff::{Backoff, InvalidBackoff};
pub use exit::reap;
pub use inherit::cloexec_inherited_fds;
pub use orphans::{adopt_orphans, adopting_orphans, kill_orphans};
pub use restart_limit::RestartLimit;
pub use restrict::{Limit, Restrictions};
pub use spawn::{resolve_command, Spec};
pub use stderr::capture_stderr;
pub use stop::{signal_group, stop, Stopped};
