//! A pool: the configured worker command and its numbered slots.

use std::sync::Arc;

use codex_bus_config::PoolConfig;

use crate::core::address::SlotAddress;
use crate::core::slot::{Slot, SlotState};
use crate::core::worker_events::WorkerEvents;
use crate::metrics::PoolMetrics;

/// One configured pool and its slots.
pub(crate) struct Pool {
    /// The pool's id, as clients name it in a top-level `pool` field.
    pub id: Arc<str>,
    /// How to start its workers.
    pub config: PoolConfig,
    /// One slot per instance, numbered from 0.
    pub slots: Vec<Arc<Slot>>,
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
            config,
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
        pick(|s| s == SlotState::Ready)
            .or_else(|| pick(|s| matches!(s, SlotState::Starting | SlotState::Backoff)))
    }

    /// Whether no slot of the pool will get a worker back without the supervisor trying again.
    pub(crate) fn all_down(&self) -> bool {
        self.slots.iter().all(|s| s.state().is_down())
    }
}
