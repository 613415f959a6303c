//! Rolling restarts: one pool's slots moved onto a worker config one at a time, each replaced only
//! once the previous replacement is ready, so at most one slot of the pool is ever handing over.
//!
//! A replacement that does not become ready stops the roll: that slot goes back to the config it
//! ran, the slots not yet reached were never touched, and the pool keeps serving on the previous
//! version while the operator looks at why.

use std::sync::Arc;
use std::time::Duration;

use codex_bus_config::PoolConfig;
use tokio::sync::oneshot;

use crate::router::reconfigure::Rolled;
use crate::router::Router;
use crate::supervisor::{Fleet, Order, Replaced};

/// How a roll ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rolling {
    /// Every slot runs the new config (or has no worker: left empty by its pool's restart policy).
    Done,
    /// A replacement did not become ready; that slot was put back on the previous config and the
    /// roll stopped. The slots before it (`0..rolled`) run the new config.
    RolledBack {
        /// Where and why.
        reason: String,
        /// How many slots, from slot 0, were rolled onto the new config before the failure.
        rolled: u32,
    },
    /// The daemon began shutting down (a shutdown was requested, or the workers were ordered to
    /// stop); the roll stopped where it was.
    Interrupted,
}

/// Rolls slots `0..rolled.slots` of pool `rolled.pool` onto `rolled.next`, in slot order; stops
/// before the next slot once the daemon is shutting down (`router` leaving: a worker replaced
/// then would only be stopped again, and the drain waits for no held work).
pub(crate) async fn roll(
    fleet: &Fleet,
    router: &Router,
    pool_id: &str,
    rolled: &Rolled,
) -> Rolling {
    for slot in 0..rolled.slots {
        if router.leaving() {
            return Rolling::Interrupted;
        }
        tracing::info!(
            pool = pool_id,
            slot,
            roll_timeout_sec = rolled.next.supervision.roll_timeout_sec,
            "rolling restart: the slot holds new work while its worker finishes what it has"
        );
        match replace(fleet, rolled.pool, slot, &rolled.next).await {
            Slotted::Replaced(Replaced::Ready) => {
                tracing::info!(
                    pool = pool_id,
                    slot,
                    "slot rolled onto the new worker config"
                );
            }
            Slotted::Replaced(Replaced::Failed(why)) => {
                let reason = format!(
                    "pool '{pool_id}' slot {slot}: the new worker did not become ready ({why}); \
                     the pool went back to the previous config and the roll stopped"
                );
                tracing::error!(pool = pool_id, slot, %why, "rolling restart failed; rolling back the slot");
                // Whatever the previous config does now, it is what the pool ran before the reload.
                let _ = replace(fleet, rolled.pool, slot, &rolled.previous).await;
                return Rolling::RolledBack {
                    reason,
                    rolled: slot,
                };
            }
            Slotted::Empty => {
                // Its pool's restart policy left it empty (or failed it for good): no worker runs
                // to be replaced and none will start, so there is nothing to roll; the next slots
                // still are.
                tracing::warn!(
                    pool = pool_id,
                    slot,
                    "slot has no worker (left empty by its pool's restart policy); not rolled"
                );
            }
            Slotted::Stopping => return Rolling::Interrupted,
        }
    }
    Rolling::Done
}

/// Orders `slots` of pool `pool` back onto `config` at once and waits until each has answered:
/// the slots a reload grew with a config whose roll then failed, so that the whole pool runs the
/// config the router has in force again. Returns the slots that had no supervisor left to take
/// the order: their first worker, on the config taken back, was left empty by the pool's policy
/// (`never`), which judged a config that is no longer in force.
pub(crate) async fn revert(
    fleet: &Fleet,
    pool: u32,
    slots: &[u32],
    config: &Arc<PoolConfig>,
) -> Vec<u32> {
    let orders = slots.iter().map(|&slot| replace(fleet, pool, slot, config));
    let answers = futures_util::future::join_all(orders).await;
    slots
        .iter()
        .zip(answers)
        .filter(|(_, answer)| matches!(answer, Slotted::Empty))
        .map(|(&slot, _)| slot)
        .collect()
}

/// What became of an order to one slot.
enum Slotted {
    /// The supervisor took it and answered.
    Replaced(Replaced),
    /// The slot has no supervisor (its pool's policy ended it) while the daemon runs on.
    Empty,
    /// The daemon is stopping: the supervisor is gone or will not answer.
    Stopping,
}

/// Orders slot `slot` of pool `pool` onto `config` and waits for the outcome.
async fn replace(fleet: &Fleet, pool: u32, slot: u32, config: &Arc<PoolConfig>) -> Slotted {
    let (done, outcome) = oneshot::channel();
    let order = Order::Replace {
        config: config.clone(),
        within: Duration::from_secs(config.supervision.roll_timeout_sec),
        done,
    };
    let answer = match fleet.order(pool, slot, order) {
        true => outcome.await.ok(),
        false => None,
    };
    match answer {
        Some(replaced) => Slotted::Replaced(replaced),
        // Unanswered: the daemon's stop drops an order, and so does a supervisor that ends
        // before it takes one (its policy left the slot empty).
        None if fleet.stopping() => Slotted::Stopping,
        None => Slotted::Empty,
    }
}
