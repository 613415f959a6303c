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
    /// Every slot runs the new config.
    Done,
    /// A replacement did not become ready (the reason says where and why); that slot was put back
    /// on the previous config and the roll stopped.
    RolledBack(String),
    /// The daemon began shutting down; the roll stopped where it was.
    Interrupted,
}

/// Rolls slots `0..rolled.slots` of pool `rolled.pool` onto `rolled.next`, in slot order; stops
/// before the next slot once the daemon is shutting down (`router` leaving).
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
            Some(Replaced::Ready) => {
                tracing::info!(
                    pool = pool_id,
                    slot,
                    "slot rolled onto the new worker config"
                );
            }
            Some(Replaced::Failed(why)) => {
                let reason = format!(
                    "pool '{pool_id}' slot {slot}: the new worker did not become ready ({why}); \
                     the slot went back to the previous config and the roll stopped"
                );
                tracing::error!(pool = pool_id, slot, %why, "rolling restart failed; rolling back the slot");
                // Whatever the previous config does now, it is what the pool ran before the reload.
                let _ = replace(fleet, rolled.pool, slot, &rolled.previous).await;
                return Rolling::RolledBack(reason);
            }
            None => return Rolling::Interrupted,
        }
    }
    Rolling::Done
}

/// Orders slot `slot` of pool `pool` onto `config` and waits for the outcome; `None` if the slot
/// has no supervisor any more (the daemon is stopping).
async fn replace(
    fleet: &Fleet,
    pool: u32,
    slot: u32,
    config: &Arc<PoolConfig>,
) -> Option<Replaced> {
    let (done, outcome) = oneshot::channel();
    let order = Order::Replace {
        config: config.clone(),
        within: Duration::from_secs(config.supervision.roll_timeout_sec),
        done,
    };
    if !fleet.order(pool, slot, order) {
        return None;
    }
    outcome.await.ok()
}
