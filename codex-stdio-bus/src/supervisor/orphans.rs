//! Processes a dead worker left behind outside its own process group (a `setsid` tool, a
//! daemonized helper): the daemon is their child subreaper, so they come back to it as children,
//! and this task kills and reaps every child that is not a worker of some slot.
//!
//! What a worker leaves in its own group is killed with the worker already
//! ([`codex_bus_process::reap`]); this catches the rest, within a tick.

use std::sync::Arc;
use std::time::Duration;

use super::instance::StopOrder;
use crate::router::pool::Pools;

/// How often children that are not workers are looked for.
const TICK: Duration = Duration::from_secs(1);

/// Kills adopted orphans every [`TICK`] until the daemon orders the workers to stop; a worker is
/// a process running in some slot of the pool table in force in `pools` (retired slots too).
///
/// The supervisors spawn workers on the same thread as this task and record each pid before
/// they next yield, so a worker is never taken for an orphan.
pub(crate) async fn clear(pools: Arc<Pools>, mut stop: StopOrder) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = super::stop_requested(&mut stop) => return,
        }
        let table = pools.load();
        let worker = |pid: u32| {
            table
                .iter()
                .flat_map(|p| &p.slots)
                .any(|s| s.pid() == Some(pid))
        };
        let killed = codex_bus_process::kill_orphans(worker);
        if !killed.is_empty() {
            tracing::warn!(
                processes = killed.len(),
                commands = ?killed,
                "killed orphaned processes a worker's descendants left behind"
            );
        }
    }
}
