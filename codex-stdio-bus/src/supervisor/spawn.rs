//! Starting one worker process: its command, environment and directory. Its own process group,
//! piped stdio, death with the daemon and the open-file limit it gets come with
//! [`codex_bus_process::Spec`].

use std::io;

use codex_bus_config::PoolConfig;
use codex_bus_process::Spec;
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
    spec.spawn()
}
