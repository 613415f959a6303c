//! The cgroup v2 limits of the pools that ask for them (`pools[].cgroup`): refused where this
//! daemon has no delegated cgroup v2 with the controllers they need, by `check` and by `run` alike;
//! otherwise the daemon takes its cgroup over once ([`prepare`]) and each worker gets a cgroup of
//! its own ([`slot`]). A leaf: imports only the error leaf.

use std::fs::File;
use std::io;
use std::sync::OnceLock;

use codex_bus_config::{Config, PoolConfig};
use codex_bus_process::cgroup::{self, Controller, Limits, Workers};

use crate::error::{Error, Kind};

/// The `workers/` cgroup, once a config with cgroup limits has been put in force: taking the
/// cgroup over moves the daemon itself, so it happens once per process, and every later config
/// uses the same tree.
static WORKERS: OnceLock<Workers> = OnceLock::new();

/// What the operator can do about a refusal, appended to it.
const REMEDY: &str = "remove the field or run the daemon in a delegated cgroup v2 (systemd \
                      Delegate=memory cpu; see docs/operations.md, \"cgroup v2 limits\")";

/// A pool's limits as the process crate takes them.
fn limits(pool: &PoolConfig) -> Limits {
    let cgroup = pool.privileges.cgroup;
    Limits {
        memory_max_bytes: cgroup.memory_max_bytes,
        cpu_max_percent: cgroup.cpu_max_percent,
    }
}

/// The refusal of `pools[i].cgroup` for want of `needed`, because of `reason`.
fn refusal(i: usize, needed: &[Controller], reason: impl std::fmt::Display) -> Error {
    let what = match needed {
        [one] => format!("the cgroup v2 {} controller is", one.name()),
        _ => "the cgroup v2 memory and cpu controllers are".to_owned(),
    };
    Error::new(
        Kind::Config,
        format!("pools[{i}].cgroup: {what} not available to this daemon ({reason}): {REMEDY}"),
    )
}

/// Refuses a pool with `cgroup` limits that this daemon could not apply: `run` before it spawns
/// anything, and `codex-stdio-bus check`, so the two agree. Changes nothing. (`check` judges
/// the cgroup it runs in itself: run it the way the daemon runs, in the same unit or container.)
///
/// # Errors
///
/// [`Kind::Config`] (exit status 78) naming the first such pool, the controllers and why, e.g.
/// `pools[0].cgroup: the cgroup v2 memory and cpu controllers are not available to this daemon
/// (no cgroup2 filesystem is mounted (cgroup v1 only); …): remove the field or …`.
pub fn check_cgroups(config: &Config) -> Result<(), Error> {
    for (i, pool) in config.pools.iter().enumerate() {
        let needed = limits(pool).controllers();
        if needed.is_empty() {
            continue;
        }
        match WORKERS.get() {
            // Taken over already (a reload): the tree must offer what this config needs.
            Some(workers) => match workers.missing(&needed) {
                Ok(missing) if missing.is_empty() => {}
                Ok(missing) => {
                    let names: Vec<&str> = missing.iter().map(|c| c.name()).collect();
                    let reason = format!(
                        "{} does not enable {} for the workers",
                        workers.dir.display(),
                        names.join(", ")
                    );
                    return Err(refusal(i, &needed, reason));
                }
                Err(e) => return Err(refusal(i, &needed, e)),
            },
            None => {
                cgroup::probe(&needed).map_err(|reason| refusal(i, &needed, reason))?;
            }
        }
    }
    Ok(())
}

/// What a reload checks of `config`'s cgroup limits, changing nothing: [`check_cgroups`], and
/// that the daemon took its cgroup over at start if any pool now asks for limits. It cannot do so
/// later: its workers already run in that cgroup, and cgroup v2 enables no controller for the
/// children of a cgroup that holds processes.
///
/// # Errors
///
/// As [`check_cgroups`]; and [`Kind::Config`] naming the first pool with limits when the daemon
/// started without any (a restart is needed).
pub(crate) fn check_reload(config: &Config) -> Result<(), Error> {
    check_cgroups(config)?;
    let first = config
        .pools
        .iter()
        .position(|pool| !pool.privileges.cgroup.is_empty());
    match first {
        Some(i) if WORKERS.get().is_none() => Err(Error::new(
            Kind::Config,
            format!(
                "pools[{i}].cgroup: the daemon started without cgroup limits, so its workers share \
                 its cgroup and it cannot take it over now: a restart is needed to apply it"
            ),
        )),
        _ => Ok(()),
    }
}

/// [`check_cgroups`], then, if any pool has cgroup limits and the cgroup is not taken over yet,
/// takes it over: the daemon moves into `daemon/` and the workers' cgroups go under `workers/`.
///
/// # Errors
///
/// As [`check_cgroups`]; and [`Kind::Config`] when taking the cgroup over fails (another process
/// shares the daemon's cgroup, say), naming the file and the processes in the way.
pub(crate) fn prepare(config: &Config) -> Result<(), Error> {
    check_cgroups(config)?;
    let Some((i, pool)) = config
        .pools
        .iter()
        .enumerate()
        .find(|(_, pool)| !pool.privileges.cgroup.is_empty())
    else {
        return Ok(());
    };
    if WORKERS.get().is_some() {
        return Ok(());
    }
    let needed = limits(pool).controllers();
    let delegated = cgroup::probe(&needed).map_err(|reason| refusal(i, &needed, reason))?;
    let workers = delegated.take().map_err(|e| {
        Error::new(
            Kind::Config,
            format!(
                "pools[{i}].cgroup: cannot take over the daemon's cgroup {} for its workers ({e}): \
                 give the daemon a cgroup of its own, delegated to it (systemd Delegate=memory cpu)",
                delegated.dir.display()
            ),
        )
    })?;
    tracing::info!(workers = %workers.dir.display(), "cgroup v2 taken over: the daemon runs in daemon/, workers with cgroup limits in workers/");
    // Only this task prepares configs, so nothing else can have set it meanwhile.
    let _ = WORKERS.set(workers);
    Ok(())
}

/// The `cgroup.procs` of the cgroup of `slot` of `pool` (`workers/pool-<id>-<slot>`), made and
/// given the pool's limits now; `None` for a pool without cgroup limits.
///
/// # Errors
///
/// The cgroup cannot be made or written (its path and errno), or no config with cgroup limits
/// was prepared (a bug: [`prepare`] runs before any worker is spawned).
pub(crate) fn slot(pool: &PoolConfig, slot: u32) -> io::Result<Option<File>> {
    let limits = limits(pool);
    if limits.controllers().is_empty() {
        return Ok(None);
    }
    let workers = WORKERS.get().ok_or_else(|| {
        io::Error::other("pool has cgroup limits, but the daemon's cgroup was not taken over")
    })?;
    workers
        .slot(&cgroup::slot_name(&pool.id, slot), &limits)
        .map(Some)
}

/// Removes the workers' cgroups that are empty, at a clean stop; those still holding a process
/// stay (see docs/operations.md).
pub(crate) fn release() {
    if let Some(workers) = WORKERS.get() {
        workers.remove_empty();
    }
}
