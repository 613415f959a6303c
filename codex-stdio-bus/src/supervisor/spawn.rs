//! Starting one worker process: its command, environment, directory and privileges (user,
//! group, umask, resource limits, cgroup). Its own process group,
//! piped stdio, death with the daemon and the open-file limit it gets come with
//! [`codex_bus_process::Spec`].

use std::io;

use codex_bus_config::{PoolConfig, Privileges};
use codex_bus_process::{Limit, Restrictions, Spec};
use tokio::process::Child;

/// Spawns a worker for `slot` of `pool`.
///
/// Every fd Rust and tokio open is close-on-exec, so the worker inherits only its three pipes: no
/// listener, no client socket, no other worker's pipe (stdio Bus leaked all of them). The daemon
/// spawns workers from its runtime's main thread, which lives as long as the process, as
/// PDEATHSIG requires; workers also exit on stdin EOF, and PDEATHSIG covers the ones that ignore
/// it.
pub(crate) fn spawn_worker(pool: &PoolConfig, slot: u32) -> io::Result<Child> {
    let mut spec = Spec::new(&pool.command);
    spec.args(&pool.args)
        .envs(&pool.env)
        .env("CODEX_BUS_POOL", &pool.id)
        .env("CODEX_BUS_SLOT", slot.to_string())
        .kill_on_drop(true);
    if let Some(cwd) = &pool.cwd {
        spec.current_dir(cwd);
    }
    spec.restrict(restrictions(
        &pool.privileges,
        nix::unistd::geteuid().is_root(),
    ));
    if let Some(procs) = crate::cgroups::slot(pool, slot)? {
        spec.cgroup(procs);
    }
    spec.spawn()
}

/// What the pool's privileges ask of its workers. Only a daemon running as `root` switches user
/// and group; config validation has refused any other user or group for a daemon that is not, so
/// there a `user` or `group` names the daemon's own and nothing needs to change.
fn restrictions(privileges: &Privileges, root: bool) -> Restrictions {
    let r = &privileges.rlimits;
    let limits = [
        (Limit::AddressSpace, r.address_space_bytes),
        (Limit::OpenFiles, r.open_files),
        (Limit::Processes, r.processes),
        (Limit::CpuSeconds, r.cpu_seconds),
        (Limit::CoreBytes, r.core_bytes),
    ]
    .into_iter()
    .filter_map(|(limit, value)| Some((limit, value?)))
    .collect();
    let mut restrictions = Restrictions {
        umask: privileges.umask,
        limits,
        no_new_privs: privileges.no_new_privs,
        ..Restrictions::default()
    };
    if root {
        let user = privileges.user.as_ref();
        let gid = privileges.group.as_ref().map(|g| g.gid);
        // The user's supplementary groups, or none at all: never root's.
        restrictions.groups = match (user, gid) {
            (Some(user), _) => Some(user.groups.clone()),
            (None, Some(_)) => Some(Vec::new()),
            (None, None) => None,
        };
        restrictions.gid = gid.or(user.and_then(|u| u.gid));
        restrictions.uid = user.map(|u| u.uid);
    }
    restrictions
}
