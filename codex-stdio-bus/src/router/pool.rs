//! The pools: each configured worker command with its numbered slots, and the table of them that
//! a reload replaces whole.
//!
//! A [`Pool`] is a value: a reload builds new ones and swaps the table ([`Pools::replace`]), so a
//! message is routed on one consistent version, never on a half-applied change. What must outlive
//! a version is shared between them: the slots (`Arc<Slot>`: their queues, pending requests and
//! workers) and the metric handles. A pool keeps its index in the table for the daemon's life, so
//! a [`SlotAddress`] a client holds still names the same slot after any reload.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use codex_bus_config::PoolConfig;

use crate::core::address::SlotAddress;
use crate::core::slot::{Slot, SlotState};
use crate::core::worker_events::WorkerEvents;
use crate::metrics::PoolMetrics;

/// Most pools the table holds over the daemon's life, removed ones included (a removed pool keeps
/// its index, so that the addresses of its slots stay valid while they drain, and a pool added
/// again under the same id takes it back). A reload that would need more is refused.
pub(crate) const MAX_POOLS: usize = 256;

/// One version of one configured pool and its slots.
pub(crate) struct Pool {
    /// The pool's id, as clients name it in a top-level `pool` field.
    pub id: Arc<str>,
    /// Its place in the table, stable for the daemon's life.
    pub index: u32,
    /// How to start its workers, in force since this version: new slots spawn with it, and a
    /// rolling restart moves the others onto it (each supervisor keeps the config its worker
    /// runs with).
    pub config: Arc<PoolConfig>,
    /// Every slot the pool has had, numbered from 0: slots `active..` were removed by a reload
    /// (they drain, then stay stopped until the pool grows again).
    pub slots: Vec<Arc<Slot>>,
    /// Slots `0..active` take sessions and messages: `config.instances`, or 0 once the pool is
    /// removed.
    pub active: u32,
    /// The pool's metric handles.
    pub metrics: PoolMetrics,
}

impl Pool {
    /// Pool number `index` with `config.instances` slots, each queueing about `queue_limit` bytes
    /// toward its worker and recording its worker events into `events`.
    pub(crate) fn new(
        index: u32,
        config: PoolConfig,
        queue_limit: usize,
        events: &Arc<WorkerEvents>,
    ) -> Self {
        let id: Arc<str> = config.id.as_str().into();
        let metrics = PoolMetrics::new(&id);
        let active = config.instances;
        let mut pool = Pool {
            id,
            index,
            config: Arc::new(config),
            slots: Vec::new(),
            active: 0,
            metrics,
        };
        pool.slots = pool.grown(active, queue_limit, events);
        pool.active = active;
        pool
    }

    /// The next version of this pool under `config` (same id): its slots kept, more made when
    /// `config.instances` exceeds every count so far, `active` set to `config.instances`.
    pub(crate) fn reconfigured(
        &self,
        config: Arc<PoolConfig>,
        queue_limit: usize,
        events: &Arc<WorkerEvents>,
    ) -> Self {
        let active = config.instances;
        Pool {
            id: self.id.clone(),
            index: self.index,
            slots: self.grown(active, queue_limit, events),
            config,
            active,
            metrics: self.metrics.clone(),
        }
    }

    /// The next version of this pool once removed: every slot kept (they drain), none active.
    pub(crate) fn removed(&self) -> Self {
        Pool {
            id: self.id.clone(),
            index: self.index,
            config: self.config.clone(),
            slots: self.slots.clone(),
            active: 0,
            metrics: self.metrics.clone(),
        }
    }

    /// This pool's slots, extended with new ones up to `count`.
    fn grown(&self, count: u32, queue_limit: usize, events: &Arc<WorkerEvents>) -> Vec<Arc<Slot>> {
        let mut slots = self.slots.clone();
        for slot in slots.len() as u32..count {
            let address = SlotAddress {
                pool: self.index,
                slot,
            };
            let fresh = Slot::new(self.id.clone(), address, queue_limit, events.clone());
            slots.push(Arc::new(fresh));
        }
        slots
    }

    /// The slots that take sessions and messages now: `slots[..active]`.
    pub(crate) fn active_slots(&self) -> &[Arc<Slot>] {
        &self.slots[..self.active as usize]
    }

    /// The slots worth showing: the active ones and removed ones whose worker has not stopped yet
    /// (a removed slot drains what it holds first).
    pub(crate) fn live_slots(&self) -> impl Iterator<Item = &Arc<Slot>> {
        self.slots.iter().filter(|s| self.is_live(s, s.state()))
    }

    /// Whether `slot` of this pool, in `state`, is one of its [live slots](Pool::live_slots).
    pub(crate) fn is_live(&self, slot: &Slot, state: SlotState) -> bool {
        slot.index < self.active || state != SlotState::Stopped
    }

    /// Whether a reload removed the pool: it takes no message and clients cannot name it.
    pub(crate) fn is_removed(&self) -> bool {
        self.active == 0
    }

    /// The slot for a message without a session: the running worker with the fewest requests in
    /// flight, else one that is (re)starting and will take the message when it is up.
    pub(crate) fn least_loaded(&self) -> Option<&Arc<Slot>> {
        let pick = |wanted: fn(SlotState) -> bool| {
            self.active_slots()
                .iter()
                .filter(|s| wanted(s.state()))
                .min_by_key(|s| s.in_flight())
        };
        // A replacing slot holds the message for its next worker.
        let waiting = |s| {
            matches!(
                s,
                SlotState::Starting | SlotState::Backoff | SlotState::Replacing
            )
        };
        pick(|s| s == SlotState::Ready).or_else(|| pick(waiting))
    }

    /// Whether no active slot of the pool will get a worker back without the supervisor trying
    /// again (a removed pool has none, and is not down: it was asked to go).
    pub(crate) fn all_down(&self) -> bool {
        !self.is_removed() && self.active_slots().iter().all(|s| s.state().is_down())
    }
}

/// The pool table in force: read on every message, replaced whole by a reload.
pub(crate) struct Pools(ArcSwap<Vec<Arc<Pool>>>);

impl Pools {
    /// A table holding `pools`, in config order (their indexes).
    pub(crate) fn new(pools: Vec<Arc<Pool>>) -> Self {
        Pools(ArcSwap::from_pointee(pools))
    }

    /// The table now. Cheap (no reference count on the fast path), for the hot path; hold it only
    /// for the message at hand, since it keeps that version alive.
    pub(crate) fn load(&self) -> Guard<Arc<Vec<Arc<Pool>>>> {
        self.0.load()
    }

    /// The current version of pool `index`, if the table has one.
    pub(crate) fn get(&self, index: u32) -> Option<Arc<Pool>> {
        self.0.load().get(index as usize).cloned()
    }

    /// Puts `pools` in force; messages routed from now on see them. Indexes must stay where they
    /// were (a pool keeps its index; new ones are appended).
    pub(crate) fn replace(&self, pools: Vec<Arc<Pool>>) {
        debug_assert!(pools.iter().enumerate().all(|(i, p)| p.index as usize == i));
        self.0.store(Arc::new(pools));
    }
}
