//! Layer 5, the daemon's life: spawn the pools, serve clients on listeners bound beforehand, then
//! drain and stop in order when the [`Shutdown`] asks (mini-redis's `run(listener, shutdown)`).
//!
//! Imports every layer below: the router, the client transports (io), the supervisors and the
//! admin endpoint.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_config::{Config, Limits, WebSocketConfig};
use nix::sys::signal::Signal;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::audit::Audit;
use crate::auth::{AdminBearer, AdminCredentials, Credentials};
pub use crate::cgroups::check_cgroups;
use crate::core::sink::WorkerSink;
use crate::error::{Error, Kind};
use crate::io::capacity::Capacity;
use crate::io::{self, listen::Bound, listen::Endpoint, websocket};
use crate::metrics::recorder;
use crate::preflight::{authenticator, secure_by_default, tls, Addresses, Tlses};
pub use crate::preflight::{check_auth, check_commands, check_tls};
use crate::reload::plan::Overrides;
use crate::reload::{self, Reload, Reloader};
use crate::router::Router;
use crate::supervisor::instance::signal_group;
use crate::supervisor::{self, Fleet, STOP_GRACE};

/// How long queued replies may take to reach clients once the workers are stopped.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the daemon ended after a clean start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A shutdown request or stdin's end drained the daemon: exit status 0.
    Drained,
    /// Every slot of an escalating pool was down: exit status 3, so the service manager restarts
    /// the daemon.
    Escalated,
    /// A stop-at-once request (a second SIGTERM/SIGINT, or SIGQUIT) cut the drain short or
    /// skipped it, and the workers were killed: exit status 1.
    Stopped,
}

impl Outcome {
    /// The process exit status for this outcome (documented in docs/operations.md).
    pub fn exit_status(self) -> u8 {
        match self {
            Outcome::Drained => 0,
            Outcome::Stopped => 1,
            Outcome::Escalated => 3,
        }
    }
}

/// When to stop: `drain` resolves when the daemon should stop accepting and drain; `now`, once
/// draining, when it should kill its workers and return at once (both resolving together stops
/// at once, no drain waited for). Also carries requests to log the daemon's status ([`Shutdown::status_requests`]).
/// The `signals` module makes one from the process's signals.
pub struct Shutdown {
    drain: Pin<Box<dyn Future<Output = ()> + Send>>,
    now: Pin<Box<dyn Future<Output = ()> + Send>>,
    status: Arc<Notify>,
    reopen: Arc<Notify>,
    reload: Arc<Notify>,
}

impl Shutdown {
    /// A shutdown driven by two futures: the drain request and the stop-at-once request.
    pub fn new(
        drain: impl Future<Output = ()> + Send + 'static,
        now: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Shutdown {
            drain: Box::pin(drain),
            now: Box::pin(now),
            status: Arc::new(Notify::new()),
            reopen: Arc::new(Notify::new()),
            reload: Arc::new(Notify::new()),
        }
    }

    /// Each `notify_one` on this asks the running daemon to log its status: one INFO line per
    /// slot (state, pid, in-flight requests, queued bytes, sessions, restarts) and the totals, the
    /// figures of `GET /status`. A request made before the daemon runs is logged once it does.
    pub fn status_requests(&self) -> Arc<Notify> {
        self.status.clone()
    }

    /// Each `notify_one` on this asks the running daemon to reopen the files it appends to (the
    /// audit trail, `audit.path`), after a log rotation moved them away.
    pub fn reopen_requests(&self) -> Arc<Notify> {
        self.reopen.clone()
    }

    /// Each `notify_one` on this asks the running daemon to reload its config file (as
    /// `POST /reload` does); requests made while a reload runs are folded into one more after it.
    pub fn reload_requests(&self) -> Arc<Notify> {
        self.reload.clone()
    }
}

/// Everything the daemon listens on, bound before it starts (a bad address costs no worker).
pub struct Listeners {
    /// The NDJSON endpoint; none when only WebSocket listeners are configured.
    clients: Option<Bound>,
    websocket: Vec<websocket::Listener>,
    admin: Option<TcpListener>,
    /// How many of the last `websocket` listeners come from `--ws` flags rather than the config
    /// file (a reload, which reads the file again, keeps them).
    flag_websockets: usize,
    /// Which of the file's listener settings flags override, so that a reload does not take a
    /// change to them for a change in force.
    overrides: Overrides,
}

impl Listeners {
    /// Binds the client `endpoint` and, if given, the admin endpoint at `admin` (HOST:PORT).
    pub async fn bind(endpoint: &Endpoint, admin: Option<&str>) -> Result<Self, Error> {
        Listeners::bind_all(Some(endpoint), &[], admin).await
    }

    /// Binds the NDJSON `endpoint` if any, every WebSocket listener of `websocket`, and the admin
    /// endpoint at `admin` if given; fails on the first that cannot be bound.
    pub async fn bind_all(
        endpoint: Option<&Endpoint>,
        websocket: &[WebSocketConfig],
        admin: Option<&str>,
    ) -> Result<Self, Error> {
        let clients = match endpoint {
            Some(endpoint) => Some(io::listen::bind(endpoint).await?),
            None => None,
        };
        let mut bound = Vec::with_capacity(websocket.len());
        for listener in websocket {
            bound.push(websocket::bind(listener).await?);
        }
        let admin = match admin {
            Some(address) => Some(admin::bind(address).await?),
            None => None,
        };
        Ok(Listeners {
            clients,
            websocket: bound,
            admin,
            flag_websockets: 0,
            overrides: Overrides::default(),
        })
    }

    /// These listeners as the command line gave them: the last `websockets` WebSocket ones come
    /// from `--ws` flags (main appends them to the config's, and a reload keeps them, since the
    /// file does not name them); `endpoint` when `--stdio`, `--unix` or `--tcp` chose the NDJSON
    /// endpoint, `metrics` when `--metrics` chose the admin endpoint (the file's
    /// `transport.mode`/`address` and `metrics.listen` are then not in force, and a reload
    /// ignores changes to them).
    pub fn from_flags(mut self, websockets: usize, endpoint: bool, metrics: bool) -> Self {
        self.flag_websockets = websockets.min(self.websocket.len());
        self.overrides = Overrides { endpoint, metrics };
        self
    }
}

/// Runs the daemon on `listeners` until `shutdown` (or stdin's end, or an escalation) has it
/// drained; `Err` is a startup failure, reported before any worker ran.
///
/// A drain that `shutdown` asks for is preceded by `limits.drain_grace_sec` of full service with
/// `/readyz` at 503, so that load balancers stop sending new clients before the listeners close;
/// `shutdown`'s stop-at-once request cuts the grace short like any other stage.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: Shutdown,
) -> Result<Outcome, Error> {
    check_commands(&config)?;
    crate::cgroups::prepare(&config)?;
    let auth = authenticator(&config)?;
    let tcp = match &listeners.clients {
        Some(Bound::Tcp(listener)) => Some(local_address(listener)?),
        _ => None,
    };
    let admin_address = listeners.admin.as_ref().map(local_address).transpose()?;
    let websockets = listeners
        .websocket
        .iter()
        .map(|listener| {
            listener.local_addr().map_err(|e| {
                Error::because(Kind::Environment, "cannot read a listener's address", e)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let addresses = Addresses {
        tcp,
        admin: admin_address,
        websocket: &websockets,
    };
    secure_by_default(&config, auth.as_deref(), addresses)?;
    let Tlses {
        tcp: tls,
        websocket: websocket_tls,
        admin: admin_tls,
    } = tls(&config)?;
    let tls = match (&listeners.clients, tls) {
        (Some(Bound::Tcp(_)), tls) => tls,
        (_, Some(_)) => {
            tracing::warn!("transport.tls is ignored: it applies to a TCP listener, and clients come on stdio, a Unix socket or only WebSocket listeners");
            None
        }
        (_, None) => None,
    };
    if listeners.admin.is_none() && admin_tls.is_some() {
        tracing::warn!("metrics.tls is ignored: no metrics listener (metrics.listen or --metrics)");
    }
    let admin = match listeners.admin {
        // The recorder goes in before the router resolves its metric handles.
        Some(listener) => {
            let handle = recorder::install().map_err(|e| {
                Error::because(Kind::Metrics, "cannot install the metrics recorder", e)
            })?;
            Some((listener, handle))
        }
        None => None,
    };
    let limits = config.limits;
    let audit = Arc::new(match &config.audit.path {
        Some(path) => Audit::open(path).map_err(|e| {
            let context = format!("cannot open the audit trail {}", path.display());
            Error::because(Kind::Config, context, e)
        })?,
        None => Audit::off(),
    });
    if config.auth.is_some() && limits.tenant_max_sessions >= limits.max_sessions {
        // The defaults suit one tenant; with several, one of them could fill the table alone.
        tracing::warn!(
            tenant_max_sessions = limits.tenant_max_sessions,
            max_sessions = limits.max_sessions,
            "auth is on and limits.tenant_max_sessions lets one tenant fill the session table; lower it (or set per-tenant limits) so tenants cannot lock each other out"
        );
    }
    let router = Arc::new(Router::new(&config).audited(audit.clone()));
    let sink: Arc<dyn WorkerSink> = router.clone();
    let escalation = CancellationToken::new();
    let context = supervisor::Context {
        sink: sink.clone(),
        limits,
        escalation: escalation.clone(),
    };
    let (stop, stop_order) = watch::channel(None);
    let supervisors = TaskTracker::new();
    let fleet = Arc::new(Fleet::new(
        context,
        router.pool_table(),
        stop_order.clone(),
        supervisors.clone(),
    ));
    for pool in router.pools().iter() {
        for slot in 0..pool.active {
            fleet.start(pool, slot);
        }
    }
    // Only where main made the daemon the subreaper: an embedder's own children are not orphans.
    if codex_bus_process::adopting_orphans() {
        let pools = router.pool_table();
        supervisors.spawn(supervisor::orphans::clear(pools, stop_order.clone()));
    }
    supervisors.close();
    let credentials = Arc::new(Credentials::new(auth));
    let capacity = Arc::new(Capacity::new(limits.max_connections, router.slots().len()));
    let bearer = Arc::new(AdminCredentials::new(AdminBearer::of(&config)));
    let live = reload::Live {
        credentials: credentials.clone(),
        tls: Tlses {
            tcp: tls.clone(),
            websocket: websocket_tls.clone(),
            admin: admin_tls.clone(),
        },
        audit: audit.clone(),
        bearer: bearer.clone(),
        capacity: capacity.clone(),
        bound: reload::Bound {
            tcp,
            admin: admin_address,
            websocket: websockets.clone(),
        },
    };
    let session_id_field: Arc<str> = config.routing.session_id_field.as_str().into();
    let reloader = Arc::new(Reloader::new(
        config,
        listeners.flag_websockets,
        listeners.overrides,
        router.clone(),
        fleet,
        live,
    ));
    if let Some((listener, handle)) = admin {
        tokio::spawn(recorder::upkeep(handle.clone()));
        let reload: Arc<dyn Reload> = reloader.clone();
        tokio::spawn(admin::serve(
            listener,
            admin_tls.clone(),
            router.clone(),
            handle,
            bearer,
            reload,
        ));
    }
    tracing::info!(
        pools = router.pools().len(),
        workers = router.slots().len(),
        version = env!("CARGO_PKG_VERSION"),
        "codex-stdio-bus started"
    );

    let drain = CancellationToken::new();
    let writers = TaskTracker::new();
    let listening = io::Listening {
        router: router.clone(),
        limits,
        auth: credentials,
        capacity,
        writers: writers.clone(),
        drain: drain.clone(),
    };
    let mut accepting = Vec::new();
    // Bound from `config.websocket` in its order (main appends `--ws` flags there, without TLS).
    for (listener, tls) in listeners.websocket.into_iter().zip(websocket_tls.clone()) {
        accepting.push(tokio::spawn(websocket::serve(
            listener,
            tls,
            session_id_field.clone(),
            listening.clone(),
        )));
    }
    if let Some(clients) = listeners.clients {
        accepting.push(tokio::spawn(io::serve(clients, tls.clone(), listening)));
    }
    // Ends once every listener has stopped accepting: the drain waits for it.
    let serving = tokio::spawn(async move {
        for listener in accepting {
            let _ = listener.await;
        }
    });
    let Shutdown {
        drain: requested,
        mut now,
        status,
        reopen,
        reload,
    } = shutdown;
    // A SIGHUP during a reload is kept (one `Notify` permit) and runs once that one has ended.
    tokio::spawn(async move {
        loop {
            reload.notified().await;
            reloader.reload_when_free().await;
        }
    });
    tokio::spawn(async move {
        loop {
            reopen.notified().await;
            match audit.reopen() {
                Ok(()) => tracing::info!(path = %shown(audit.path()), "files reopened"),
                Err(error) => {
                    tracing::warn!(path = %shown(audit.path()), %error, "cannot reopen the audit trail; still appending to the old file")
                }
            }
            // A renewed certificate is picked up the same way rotated logs are.
            let every = tls.iter().chain(websocket_tls.iter().flatten());
            for tls in every.chain(admin_tls.iter()) {
                match tls.reload() {
                    Ok(()) => {
                        tracing::info!(field = tls.field(), "TLS certificate and key reloaded")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot reload the TLS certificate; still serving the previous one")
                    }
                }
            }
        }
    });
    tokio::spawn({
        let router = router.clone();
        async move {
            loop {
                status.notified().await;
                admin::status::log(&router);
            }
        }
    });
    // Idle sessions leave the sticky table on a timer, so routing never pays for expiry.
    tokio::spawn({
        let router = router.clone();
        async move {
            let mut sweep = tokio::time::interval(router.session_sweep_period());
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                sweep.tick().await;
                router.expire_sessions();
            }
        }
    });
    // Under systemd `Type=notify`, the unit is started once listeners are bound and every
    // supervisor runs (workers count as ready later; /readyz says when).
    notify_service_manager(&[sd_notify::NotifyState::Ready]);
    let (outcome, grace) = tokio::select! {
        () = requested => (Outcome::Drained, Duration::from_secs(limits.drain_grace_sec)),
        // stdin's end: no balancer sends this client anywhere else, so there is nothing to wait for.
        () = drain.cancelled() => (Outcome::Drained, Duration::ZERO),
        () = escalation.cancelled() => (Outcome::Escalated, Duration::ZERO),
    };
    router.leave_rotation();
    notify_service_manager(&[sd_notify::NotifyState::Stopping]);
    let stages = Stages {
        router: &router,
        limits,
        stop: &stop,
        supervisors: &supervisors,
        writers: &writers,
    };
    let drained = async {
        if !grace.is_zero() {
            tracing::info!(
                grace_sec = grace.as_secs(),
                "shutdown requested; not ready, still serving for drain_grace_sec"
            );
            // stdin's end or an escalation during the grace cuts it short: the drain follows.
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                () = drain.cancelled() => {}
                () = escalation.cancelled() => {}
            }
        }
        drain.cancel();
        stages.drain(serving).await;
    };
    tokio::select! {
        () = drained => {}
        () = &mut now => {
            // Whatever stage the drain is in, nothing more is waited for.
            for slot in router.slots() {
                signal_group(&slot, Signal::SIGKILL);
            }
            tracing::warn!("workers killed; stopping at once");
            return Ok(Outcome::Stopped);
        }
    }
    crate::cgroups::release();
    tracing::info!(?outcome, "codex-stdio-bus stopped");
    Ok(outcome)
}

/// What the drain works through, in order.
struct Stages<'a> {
    router: &'a Router,
    limits: Limits,
    stop: &'a watch::Sender<Option<Instant>>,
    supervisors: &'a TaskTracker,
    writers: &'a TaskTracker,
}

impl Stages<'_> {
    /// Stops accepting (dropping the listener removes a Unix socket file), refuses new requests
    /// while replies to those in flight are still routed, waits for them up to
    /// `drain_timeout_sec`, stops the workers (SIGKILL no earlier than [`STOP_GRACE`] after
    /// SIGTERM), then lets clients take their last replies for up to [`FLUSH_TIMEOUT`].
    async fn drain(self, serving: JoinHandle<()>) {
        let _ = serving.await;
        self.router.begin_drain();
        let deadline = Instant::now() + Duration::from_secs(self.limits.drain_timeout_sec);
        let idle = async {
            // New work is refused now, so a slot that went idle stays idle.
            for slot in self.router.slots() {
                slot.wait_idle().await;
            }
        };
        let _ = tokio::time::timeout_at(deadline.into(), idle).await;
        let unanswered = self.router.in_flight();
        tracing::info!(unanswered, "drain finished; stopping workers");
        let _ = self
            .stop
            .send(Some(deadline.max(Instant::now() + STOP_GRACE)));
        self.supervisors.wait().await;

        self.router.close_clients();
        self.writers.close();
        if tokio::time::timeout(FLUSH_TIMEOUT, self.writers.wait())
            .await
            .is_err()
        {
            tracing::warn!("some clients did not take their last replies in time");
        }
    }
}

/// The address a listener is bound to.
fn local_address(listener: &TcpListener) -> Result<std::net::SocketAddr, Error> {
    listener
        .local_addr()
        .map_err(|e| Error::because(Kind::Environment, "cannot read a listener's address", e))
}

/// The audit trail's path for a log line, `off` when there is none.
fn shown(path: Option<std::path::PathBuf>) -> String {
    path.map_or_else(|| "off".to_owned(), |p| p.display().to_string())
}

/// Tells the service manager (systemd's `NOTIFY_SOCKET`, when set) how the daemon is doing. The
/// variable is kept, so workers inherit it; the unit's `NotifyAccess=main` makes systemd ignore
/// anything but the daemon's own messages.
fn notify_service_manager(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "cannot notify the service manager");
    }
}
