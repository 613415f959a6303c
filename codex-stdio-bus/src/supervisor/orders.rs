//! What a reload asks of one slot's supervisor: roll the slot onto a new config, or retire it.
//!
//! Orders travel on a channel per supervisor (kept by the [`Fleet`](super::Fleet)); each carries
//! a one-shot sender the supervisor answers on once the order is carried out, so a reload can go
//! slot by slot.

use std::sync::Arc;
use std::time::Duration;

use codex_bus_config::PoolConfig;
use tokio::sync::oneshot;

/// An order to a slot's supervisor.
#[derive(Debug)]
pub(crate) enum Order {
    /// Roll this slot onto `config`: hold new work for the next worker, let the running one
    /// finish its requests for up to `within`, stop it, and start the replacement with `config`.
    /// `done` gets [`Replaced::Ready`] once the replacement is ready, [`Replaced::Failed`] if it
    /// exits or fails its readiness bound first (the supervisor then restarts it per policy); it
    /// is dropped unanswered if the daemon stops meanwhile, or if the supervisor ends before it
    /// takes the order (its pool's policy left the slot empty, or failed it for good).
    Replace {
        /// The pool's new config; the slot's workers are spawned with it from now on.
        config: Arc<PoolConfig>,
        /// How long the running worker may take to answer what it has before it is stopped.
        within: Duration,
        /// Answered once the replacement is ready or has failed to become so.
        done: oneshot::Sender<Replaced>,
    },
    /// Retire this slot for good: refuse new work (`shutting_down`), let the worker finish what it
    /// holds for up to `within`, stop it (its leftover requests are refused with
    /// `shutting_down`); `done` fires once its worker is stopped and the supervisor ends. Dropped
    /// unanswered as a Replace's `done` is.
    Retire {
        /// How long the worker may take to answer what it has before it is stopped.
        within: Duration,
        /// Fired once the worker is stopped, just before the supervisor ends.
        done: oneshot::Sender<()>,
    },
}

impl Order {
    /// How long the running worker may take to finish before it is stopped.
    pub(crate) fn within(&self) -> Duration {
        match self {
            Order::Replace { within, .. } | Order::Retire { within, .. } => *within,
        }
    }
}

/// How a [`Order::Replace`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Replaced {
    /// The replacement worker is ready.
    Ready,
    /// The replacement did not become ready: why (its exit status, its spawn error, or that it
    /// was itself replaced first).
    Failed(String),
}
