//! Layer 5, live changes: a reload reads the config file again and puts the difference in force
//! without dropping a connection or a request (docs/operations.md, "Reload and rolling
//! restarts"); a restart rolls one pool onto fresh workers.
//!
//! A reload validates everything before it changes anything: the file parses and checks
//! (`config`), every pool's program is found, the credentials, certificates and audit file load
//! and no listener would be open beyond loopback without authentication (`preflight`), nothing
//! changed that only a restart can change ([`plan`]), and the pool table has room
//! (`router::reconfigure`). Then, in one step on the daemon's thread: credentials, certificates,
//! the audit file and the admin token are swapped, the pool table is replaced, new slots get
//! supervisors and removed ones are told to retire ([`live`] holds what is swapped in place).
//! Then it waits for what takes time: new workers' readiness, rolling restarts ([`roll`]) and
//! retiring slots. One reload or restart runs at a time.
//!
//! Imports: the router, the supervisors, preflight, the TLS and capacity parts of io, and the
//! auth, audit and metrics leaves. Nothing imports it but the daemon and the admin endpoint.

mod live;
pub(crate) mod plan;
mod roll;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use codex_bus_config::{Config, WebSocketConfig};
use tokio::sync::{oneshot, Mutex};

use crate::audit::Event;
use crate::core::address::SlotAddress;
use crate::core::slot::{Slot, SlotState};
use crate::metrics;
use crate::preflight;
use crate::router::reconfigure::{self, Rolled};
use crate::router::Router;
use crate::supervisor::{Fleet, Order, Replaced, STOP_GRACE};
pub(crate) use live::{Bound, Live};
use plan::{Overrides, Plan};
use roll::Rolling;

pub(crate) use crate::metrics::ReloadResult;

/// How a reload or a restart ended: what the admin endpoint answers (as JSON) and the CLI prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The result; its label is the answer's `result`.
    pub result: ReloadResult,
    /// Why it was rejected, failed or busy (or the unknown pool's name), for the operator.
    pub reason: Option<String>,
    /// What changed, one short line each ([`plan::Plan::changes`]); empty when nothing did.
    pub changes: Vec<String>,
}

/// A future answering one reload or restart request.
pub(crate) type Pending<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// What the admin endpoint calls for `POST /reload` and `POST /restart?pool=NAME`; implemented
/// by the daemon's reloader. Each future resolves once the request is complete (every roll and
/// retirement done), which may take up to the pools' `roll_timeout_sec` per slot; a request made
/// while another runs resolves at once with [`ReloadResult::Busy`].
pub(crate) trait Reload: Send + Sync {
    /// Re-reads the config file and applies the difference.
    fn reload(&self) -> Pending<'_>;
    /// Rolls every slot of pool `pool` onto its current config; [`ReloadResult::UnknownPool`]
    /// when there is no such pool.
    fn restart<'a>(&'a self, pool: &'a str) -> Pending<'a>;
}

impl Outcome {
    /// An outcome that changed nothing, for `reason`.
    fn only(result: ReloadResult, reason: impl Into<String>) -> Self {
        Outcome {
            result,
            reason: Some(reason.into()),
            changes: Vec::new(),
        }
    }
}

/// Reloads and restarts for one running daemon.
pub(crate) struct Reloader {
    /// The config in force; held for the whole of a reload or restart, so they run one at a time.
    in_force: Mutex<Config>,
    /// The WebSocket listeners given as `--ws` flags, not in the file: kept on every reload.
    flag_websockets: Vec<WebSocketConfig>,
    /// The file's listener settings that flags override.
    overrides: Overrides,
    router: Arc<Router>,
    fleet: Arc<Fleet>,
    /// What a reload swaps in place.
    live: Live,
}

impl Reloader {
    /// The reloader of a daemon running `config` (whose last `flag_websockets` WebSocket
    /// listeners came from `--ws` flags, and whose listener settings `overrides` names came from
    /// flags too), routing with `router` and supervising with `fleet`.
    pub(crate) fn new(
        config: Config,
        flag_websockets: usize,
        overrides: Overrides,
        router: Arc<Router>,
        fleet: Arc<Fleet>,
        live: Live,
    ) -> Self {
        let from_file = config.websocket.len().saturating_sub(flag_websockets);
        Reloader {
            flag_websockets: config.websocket[from_file..].to_vec(),
            in_force: Mutex::new(config),
            overrides,
            router,
            fleet,
            live,
        }
    }

    /// Reloads the config file once the reload running now (if any) has ended: SIGHUP's way,
    /// since a signal has no one to answer `busy` to.
    pub(crate) async fn reload_when_free(&self) -> Outcome {
        let mut in_force = self.in_force.lock().await;
        let outcome = self.reload_locked(&mut in_force).await;
        self.counted(Action::Reload, "sighup", outcome)
    }

    /// The reload itself, with the config in force held.
    async fn reload_locked(&self, in_force: &mut Config) -> Outcome {
        let rejected = |reason: String| Outcome::only(ReloadResult::Rejected, reason);
        if self.router.leaving() {
            // New workers would only be stopped again; the next start reads the file anyway.
            return rejected(SHUTTING_DOWN.into());
        }
        let Some(source) = in_force.source.clone() else {
            return rejected(
                "the daemon runs its built-in default config: there is no file to read again \
                 (start it with --config FILE)"
                    .into(),
            );
        };
        let next = match self.read(&source) {
            Ok(next) => next,
            Err(reason) => return rejected(reason),
        };
        let plan = match Plan::between(in_force, &next, self.overrides) {
            Ok(plan) => plan,
            Err(reason) => return rejected(reason),
        };
        let prepared = match self.live.prepare(&next, &plan) {
            Ok(prepared) => prepared,
            Err(reason) => return rejected(reason),
        };
        // The last check that can refuse; from here on everything is applied.
        let pools = match self
            .router
            .reconfigure(&next.pools, next.routing.default_pool.as_deref())
        {
            Ok(changes) => changes,
            Err(reason) => return rejected(reason),
        };
        let mut changes = pools.described.clone();
        changes.extend(self.live.apply(prepared, &next, &plan));
        if pools.moved_sessions + pools.dropped_sessions > 0 {
            changes.push(format!(
                "sessions of removed slots: {} moved to the remaining slots, {} of removed pools \
                 released",
                pools.moved_sessions, pools.dropped_sessions
            ));
        }
        let unchanged = pools.is_empty() && plan == Plan::default();
        let table = self.router.pool_table();
        self.live
            .capacity
            .resize(table.load().iter().map(|p| p.active as usize).sum());
        let starting: Vec<_> = pools
            .started
            .iter()
            .filter_map(|address| {
                let pool = table.get(address.pool)?;
                let first = self.fleet.start(&pool, address.slot);
                Some((pool, address.slot, first))
            })
            .collect();
        let retiring: Vec<(Arc<Slot>, oneshot::Receiver<()>)> = pools
            .retired
            .iter()
            .filter_map(|address| {
                let pool = table.get(address.pool)?;
                let slot = pool.slots.get(address.slot as usize)?.clone();
                let within = Duration::from_secs(pool.config.supervision.roll_timeout_sec);
                let (done, retired) = oneshot::channel();
                let order = Order::Retire { within, done };
                if self.fleet.order(address.pool, address.slot, order) {
                    return Some((slot, retired));
                }
                stop_empty(&slot);
                None
            })
            .collect();
        *in_force = next;
        let mut failures = Vec::new();
        for (pool, slot, first) in starting {
            // A new worker is ready within its readiness bound, or has failed before it; the
            // timeout only guards against a supervisor that never answers.
            let settings = &pool.config.supervision;
            let bound = Duration::from_secs(settings.ready_timeout_sec)
                + Duration::from_millis(settings.ready_grace_ms)
                + STOP_GRACE * 2;
            let why = match tokio::time::timeout(bound, first).await {
                Ok(Ok(Replaced::Ready)) => continue,
                Ok(Ok(Replaced::Failed(why))) => why,
                // Dropped unanswered: the daemon's stop (a reload waits for the slots it retires,
                // so a slot it starts is never still supervised).
                Ok(Err(_)) => STOPPING.to_owned(),
                Err(_) => "no answer in time".to_owned(),
            };
            failures.push(format!(
                "pool '{}' slot {slot}: the new worker did not become ready ({why}); its \
                 pool's restart policy decides whether it is started again",
                pool.id
            ));
        }
        for rolled in &pools.rolled {
            if let Some(failure) = self.roll(in_force, rolled, &pools.started).await {
                failures.push(failure);
            }
        }
        for (slot, retired) in retiring {
            // The supervisor answers once its worker has stopped: SIGKILL at the end of the
            // slot's `roll_timeout_sec` at the latest, then its pipes for a few seconds. Waited
            // for in full, so that a later reload never finds the slot still supervised (it could
            // not start it again).
            if retired.await.is_err() && !self.fleet.stopping() {
                // Its supervisor ended before it took the order (the pool's policy left the slot
                // empty just now); a stopping daemon stops every slot anyway.
                stop_empty(&slot);
            }
        }
        let (result, reason) = match failures.is_empty() {
            true if unchanged => (ReloadResult::Unchanged, None),
            true => (ReloadResult::Applied, None),
            false => (ReloadResult::Failed, Some(failures.join("; "))),
        };
        Outcome {
            result,
            reason,
            changes,
        }
    }

    /// Rolls one pool of a reload; on failure puts the pool's previous config back in force (in
    /// the table and in `in_force`), and on the slots the reload grew it with (`started`, which
    /// began on the failed config), and returns why.
    async fn roll(
        &self,
        in_force: &mut Config,
        rolled: &Rolled,
        started: &[SlotAddress],
    ) -> Option<String> {
        let id = rolled.next.id.as_str();
        match roll::roll(&self.fleet, &self.router, id, rolled).await {
            Rolling::Done => None,
            Rolling::RolledBack {
                reason,
                rolled: done,
            } => {
                self.router
                    .restore_config(rolled.pool, rolled.previous.clone());
                if done > 0 {
                    // The slots already on the new config go back too, one at a time as they
                    // came, so that the pool runs the one config the table says it runs.
                    tracing::warn!(
                        pool = id,
                        slots = done,
                        "rolling the slots already rolled back onto the previous config"
                    );
                    let back = Rolled {
                        pool: rolled.pool,
                        slots: done,
                        previous: rolled.next.clone(),
                        next: rolled.previous.clone(),
                    };
                    let _ = roll::roll(&self.fleet, &self.router, id, &back).await;
                }
                let grown: Vec<u32> = started
                    .iter()
                    .filter(|a| a.pool == rolled.pool)
                    .map(|a| a.slot)
                    .collect();
                if !grown.is_empty() {
                    tracing::warn!(pool = id, slots = ?grown, "rolling the slots the reload added back onto the previous config");
                    let empty =
                        roll::revert(&self.fleet, rolled.pool, &grown, &rolled.previous).await;
                    // A grown slot whose first worker, on the config just taken back, was left
                    // empty by the pool's policy starts afresh on the config in force: otherwise
                    // it stays empty under a config it never ran, and reloading the previous file
                    // is `unchanged` with the slot still empty.
                    if let Some(pool) = self.router.pool_table().get(rolled.pool) {
                        let settings = &pool.config.supervision;
                        let bound = Duration::from_secs(settings.ready_timeout_sec)
                            + Duration::from_millis(settings.ready_grace_ms)
                            + STOP_GRACE * 2;
                        for slot in empty {
                            if self.fleet.stopping() {
                                break;
                            }
                            let first = self.fleet.start(&pool, slot);
                            let _ = tokio::time::timeout(bound, first).await;
                        }
                    }
                }
                if let Some(entry) = in_force.pools.iter_mut().find(|p| p.id == id) {
                    let instances = entry.instances;
                    *entry = (*rolled.previous).clone();
                    entry.instances = instances;
                }
                Some(reason)
            }
            Rolling::Interrupted => Some(STOPPING.to_owned()),
        }
    }

    /// Rolls every slot of pool `id` onto fresh workers of its current config, one at a time.
    async fn restart_pool(&self, id: &str) -> Outcome {
        let Ok(in_force) = self.in_force.try_lock() else {
            return Outcome::only(ReloadResult::Busy, BUSY);
        };
        if self.router.leaving() {
            return Outcome::only(ReloadResult::Rejected, SHUTTING_DOWN);
        }
        let pool = self
            .router
            .pools()
            .iter()
            .find(|p| &*p.id == id && !p.is_removed())
            .cloned();
        let Some(pool) = pool else {
            return Outcome::only(ReloadResult::UnknownPool, format!("no pool named '{id}'"));
        };
        // The replacement of slot 0 is spawned only once its worker has stopped: a program
        // removed or made unusable since the start would leave that slot without a worker.
        let checked = in_force
            .pools
            .iter()
            .enumerate()
            .find(|(_, p)| p.id == id)
            .map_or(Ok(()), |(i, p)| preflight::check_command(i, p));
        if let Err(error) = checked {
            return Outcome::only(ReloadResult::Rejected, error.to_string());
        }
        let rolled = Rolled {
            pool: pool.index,
            slots: pool.active,
            previous: pool.config.clone(),
            next: pool.config.clone(),
        };
        tracing::info!(pool = id, slots = pool.active, "rolling restart requested");
        let changes = vec![format!(
            "pool '{id}': rolling restart of {}",
            reconfigure::slots(pool.active)
        )];
        let (result, reason) = match roll::roll(&self.fleet, &self.router, id, &rolled).await {
            Rolling::Done => (ReloadResult::Applied, None),
            // Same config before and after: the slots already replaced need no going back.
            Rolling::RolledBack { reason, .. } => (ReloadResult::Failed, Some(reason)),
            Rolling::Interrupted => (ReloadResult::Failed, Some(STOPPING.to_owned())),
        };
        Outcome {
            result,
            reason,
            changes,
        }
    }

    /// The config file at `source`, checked as at start, with the `--ws` listeners added back.
    fn read(&self, source: &Path) -> Result<Config, String> {
        let mut next = Config::load(source).map_err(|e| e.to_string())?;
        next.websocket.extend(self.flag_websockets.iter().cloned());
        preflight::check_commands(&next).map_err(|e| e.to_string())?;
        Ok(next)
    }
}

impl Reload for Reloader {
    fn reload(&self) -> Pending<'_> {
        Box::pin(async move {
            let Ok(mut in_force) = self.in_force.try_lock() else {
                let busy = Outcome::only(ReloadResult::Busy, BUSY);
                return self.counted(Action::Reload, "admin", busy);
            };
            let outcome = self.reload_locked(&mut in_force).await;
            self.counted(Action::Reload, "admin", outcome)
        })
    }

    fn restart<'a>(&'a self, pool: &'a str) -> Pending<'a> {
        Box::pin(async move {
            let outcome = self.restart_pool(pool).await;
            self.counted(Action::Restart, "admin", outcome)
        })
    }
}

/// What an [`Outcome`] answers.
#[derive(Clone, Copy)]
enum Action {
    /// A reload of the config file.
    Reload,
    /// A rolling restart of one pool.
    Restart,
}

impl Reloader {
    /// Logs `outcome` of `action` asked for `by` (`sighup`, `admin`), counts it in
    /// `codex_bus_config_reloads_total` and writes it to the audit trail.
    fn counted(&self, action: Action, by: &str, outcome: Outcome) -> Outcome {
        metrics::get().config_reload(outcome.result);
        let (result, changes) = (outcome.result.label(), &outcome.changes);
        let reason = outcome.reason.as_deref();
        let name = match action {
            Action::Reload => "reload",
            Action::Restart => "restart",
        };
        match (action, outcome.result) {
            (Action::Reload, ReloadResult::Applied) => {
                tracing::info!(by, ?changes, "config reloaded")
            }
            (Action::Reload, ReloadResult::Unchanged) => {
                tracing::info!(
                    by,
                    "config reloaded: nothing changed (credentials and certificates read again)"
                )
            }
            (Action::Restart, ReloadResult::Applied) => {
                tracing::info!(by, ?changes, "rolling restart done")
            }
            (_, ReloadResult::Rejected) => tracing::warn!(
                action = name,
                by,
                reason = reason.unwrap_or(""),
                "config reload rejected; the config in force is unchanged"
            ),
            (_, ReloadResult::Failed) => tracing::warn!(
                action = name,
                by,
                reason = reason.unwrap_or(""),
                ?changes,
                "config reload or restart failed part way; what it lists under changes was applied"
            ),
            (_, ReloadResult::Busy) => {
                tracing::warn!(action = name, by, "refused: a reload or restart is running")
            }
            (_, ReloadResult::UnknownPool) => {
                tracing::warn!(
                    action = name,
                    by,
                    reason = reason.unwrap_or(""),
                    "restart refused"
                )
            }
            (Action::Restart, ReloadResult::Unchanged) => {}
        }
        let audit = self.router.audit();
        if audit.enabled() {
            audit.record(&Event::ConfigChanged {
                action: name,
                by,
                result,
                reason,
                changes,
            });
        }
        outcome
    }
}

/// Stops a removed slot that no supervisor runs (its pool's restart policy left it empty): it
/// holds nothing to drain, and stopped it leaves /status and the worker gauges as a drained slot
/// does, instead of showing a removed slot down for good.
fn stop_empty(slot: &Slot) {
    slot.retire();
    let left = slot.transition(SlotState::Stopped);
    debug_assert!(left.is_empty(), "an empty slot holds no request");
}

/// Why nothing is changed once a shutdown was requested.
const SHUTTING_DOWN: &str = "the daemon is shutting down";

/// The reason of a `busy` answer.
const BUSY: &str = "a reload or restart is running";

/// Why a roll stopped when the daemon began stopping.
const STOPPING: &str = "the daemon began shutting down during the rolling restart";
