//! The running supervisors, one per live slot, and the order channel to each; plus one deadline
//! task per pool. A reload starts supervisors for new slots and sends orders to existing ones.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::instance::StopOrder;
use super::orders::Order;
use super::{deadlines, supervise, Context, Post};
use crate::router::pool::{Pool, Pools};

/// The running supervisors, one per live slot.
pub(crate) struct Fleet {
    /// What every supervisor shares.
    context: Context,
    /// The pool table in force (read by the escalation check and the deadline tasks).
    pools: Arc<Pools>,
    /// The daemon's stop order, which every task obeys.
    stop: StopOrder,
    /// Where supervisors and deadline tasks run: the daemon's stop waits for it.
    tracker: TaskTracker,
    /// Under a std lock, never held across an await (the runtime has one thread; nothing waits).
    crew: Mutex<Crew>,
}

/// The fleet's mutable part.
#[derive(Default)]
struct Crew {
    /// The order channel of each supervisor started, by (pool index, slot); closed once that
    /// supervisor has ended.
    orders: HashMap<(u32, u32), mpsc::UnboundedSender<Order>>,
    /// The pool indices whose deadline task runs.
    timed: HashSet<u32>,
}

impl Fleet {
    /// A fleet whose supervisors share `context`, see the pool table `pools`, obey `stop`, and
    /// run on `tracker`. Nothing runs until [`Fleet::start`].
    pub(crate) fn new(
        context: Context,
        pools: Arc<Pools>,
        stop: StopOrder,
        tracker: TaskTracker,
    ) -> Self {
        Fleet {
            context,
            pools,
            stop,
            tracker,
            crew: Mutex::default(),
        }
    }

    /// The fleet's mutable part, locked.
    fn crew(&self) -> MutexGuard<'_, Crew> {
        // A panic elsewhere left a plain map behind, still consistent.
        self.crew.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns the supervisor of slot `slot` of `pool` (its workers spawn with `pool.config`);
    /// also the pool's deadline task the first time a pool index is seen. A slot whose
    /// supervisor still runs keeps it (a second one would fight it for the slot): logged, no
    /// effect. `slot` must be below `pool.slots.len()`.
    pub(crate) fn start(&self, pool: &Arc<Pool>, slot: u32) {
        let key = (pool.index, slot);
        let mut crew = self.crew();
        if crew.orders.get(&key).is_some_and(|s| !s.is_closed()) {
            tracing::warn!(pool = %pool.id, slot, "the slot is supervised already; not started again");
            return;
        }
        let (orders, received) = mpsc::unbounded_channel();
        crew.orders.insert(key, orders);
        let post = Post {
            pool: pool.clone(),
            slot: pool.slots[slot as usize].clone(),
            config: pool.config.clone(),
            orders: received,
        };
        self.tracker.spawn(supervise(
            self.context.clone(),
            self.pools.clone(),
            post,
            self.stop.clone(),
        ));
        if crew.timed.insert(pool.index) {
            self.tracker.spawn(deadlines::enforce(
                self.pools.clone(),
                pool.clone(),
                self.context.sink.clone(),
                self.stop.clone(),
            ));
        }
    }

    /// Sends `order` to the supervisor of slot `slot` of pool index `pool`; false if none runs
    /// (never started, or ended: retired, stopped, or left empty or failed by its policy).
    #[allow(dead_code)] // used by reload (issue 16)
    pub(crate) fn order(&self, pool: u32, slot: u32, order: Order) -> bool {
        let crew = self.crew();
        crew.orders
            .get(&(pool, slot))
            .is_some_and(|orders| orders.send(order).is_ok())
    }
}
