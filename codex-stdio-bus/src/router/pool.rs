//! A pool: the configured worker command and its numbered slots.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use codex_bus_config::PoolConfig;

use crate::core::address::SlotAddress;
use crate::core::slot::{Slot, SlotState};
use crate::core::worker_events::WorkerEvents;
use crate::metrics::PoolMetrics;

/// One configured pool and its slots.
pub(crate) struct Pool {
    /// The pool's id, as clients name it in a top-level `pool` field.
    pub id: Arc<str>,
    /// Its position in the pool table, stable for the daemon's life.
    pub index: u32,
    /// How to start its workers (the config in force: new slots spawn with it).
    pub config: Arc<PoolConfig>,
    /// One slot per instance, numbered from 0.
    pub slots: Vec<Arc<Slot>>,
    /// Slots `0..active` take sessions (`config.instances`; 0 once the pool is removed).
    pub active: u32,
    /// The pool's metric handles.
    pub metrics: PoolMetrics,
}

impl Pool {
    /// Pool number `index` (config order) with `config.instances` slots, each queueing about
    /// `queue_limit` bytes toward its worker and recording its worker events into `events`.
    pub(crate) fn new(
        index: u32,
        config: PoolConfig,
        queue_limit: usize,
        events: &Arc<WorkerEvents>,
    ) -> Self {
        let id: Arc<str> = config.id.as_str().into();
        let metrics = PoolMetrics::new(&id);
        let slots = (0..config.instances)
            .map(|slot| {
                let address = SlotAddress { pool: index, slot };
                Arc::new(Slot::new(id.clone(), address, queue_limit, events.clone()))
            })
            .collect();
        Pool {
            id,
            index,
            active: config.instances,
            config: Arc::new(config),
            slots,
            metrics,
        }
    }

    /// The slot for a message without a session: the running worker with the fewest requests in
    /// flight, else one that is (re)starting and will take the message when it is up.
    pub(crate) fn least_loaded(&self) -> Option<&Arc<Slot>> {
        let pick = |wanted: fn(SlotState) -> bool| {
            self.slots
                .iter()
                .filter(|s| wanted(s.state()))
                .min_by_key(|s| s.in_flight())
        };
        pick(|s| s == SlotState::Ready).or_else(|| {
            pick(|s| {
                matches!(
                    s,
                    SlotState::Starting | SlotState::Backoff | SlotState::Replacing
                )
            })
        })
    }

    /// Whether no active slot of the pool will get a worker back without the supervisor trying
    /// again (false for a pool without active slots: a removed pool escalates nothing).
    pub(crate) fn all_down(&self) -> bool {
        let active = &self.slots[..(self.active as usize).min(self.slots.len())];
        !active.is_empty() && active.iter().all(|s| s.state().is_down())
    }
}

/// The pool table in force: a snapshot replaced whole by a reload, read without a lock.
pub(crate) struct Pools {
    current: ArcSwap<Vec<Arc<Pool>>>,
}

impl Pools {
    /// A table holding `pools`, in pool-index order.
    pub(crate) fn new(pools: Vec<Arc<Pool>>) -> Self {
        Pools {
            current: ArcSwap::from_pointee(pools),
        }
    }

    /// The current table (hot path: no lock, no reference count taken).
    pub(crate) fn load(&self) -> Guard<Arc<Vec<Arc<Pool>>>> {
        self.current.load()
    }

    /// The current version of the pool at `index`, if there is one.
    pub(crate) fn get(&self, index: u32) -> Option<Arc<Pool>> {
        self.load().iter().find(|p| p.index == index).cloned()
    }

    /// Puts `pools` in force.
    #[allow(dead_code)] // used by reload (issue 16)
    pub(crate) fn replace(&self, pools: Vec<Arc<Pool>>) {
        self.current.store(Arc::new(pools));
    }
}
