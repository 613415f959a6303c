//! What a reload swaps in place besides the pools: the credentials new connections authenticate
//! against, every listener's TLS files, the audit trail, the admin token, and the connection cap
//! that keeps fds for the workers. Loaded and checked first ([`Live::prepare`]), then put in
//! force in one step ([`Live::apply`]).

use std::net::SocketAddr;
use std::sync::Arc;

use codex_bus_config::Config;

use super::plan::Plan;
use crate::audit::Audit;
use crate::auth::{AdminBearer, AdminCredentials, Authenticator, Credentials};
use crate::cgroups;
use crate::io::capacity::Capacity;
use crate::preflight::{self, Addresses, Tlses};

/// What a reload swaps in place, shared with the listeners, the router and the admin endpoint.
pub(crate) struct Live {
    /// Who clients are (`auth`), for connections that authenticate from now on.
    pub credentials: Arc<Credentials>,
    /// Every listener's TLS (each replaced in place, so open connections keep theirs).
    pub tls: Tlses,
    /// The audit trail.
    pub audit: Arc<Audit>,
    /// The admin endpoint's token (`metrics.bearer_sha256`).
    pub bearer: Arc<AdminCredentials>,
    /// The client listeners' connection cap, which keeps fds for every worker.
    pub capacity: Arc<Capacity>,
    /// Where the listeners are bound, judged again by `preflight::secure_by_default` against the
    /// new credentials.
    pub bound: Bound,
}

/// The addresses the daemon's listeners are bound to (they never change on a reload).
pub(crate) struct Bound {
    /// The TCP NDJSON listener, if any.
    pub tcp: Option<SocketAddr>,
    /// The admin endpoint, if any.
    pub admin: Option<SocketAddr>,
    /// Every WebSocket listener.
    pub websocket: Vec<SocketAddr>,
}

/// What a reload loaded and checked before it changes anything.
pub(crate) struct Prepared {
    credentials: Option<Arc<crate::auth::Authenticator>>,
    bearer: Option<Arc<AdminBearer>>,
}

impl Live {
    /// Loads what `next` needs that can fail, changing nothing: its credentials (the tokens file
    /// and JWT secret read again, so a rotated token takes effect even when the file's path did
    /// not change), every listener's TLS files, the audit file if it moved, and the check that no
    /// listener would be open beyond loopback without authentication.
    pub(crate) fn prepare(&self, next: &Config, plan: &Plan) -> Result<Prepared, String> {
        let credentials = preflight::authenticator(next).map_err(|e| e.to_string())?;
        // `auth` kept but left without a bearer credential, with `insecure_no_auth`, would let
        // new TCP and WebSocket clients in unauthenticated: that is turning auth off for them.
        let bearers =
            |auth: Option<&Authenticator>| auth.is_some_and(Authenticator::accepts_bearers);
        let listening = self.bound.tcp.is_some() || !self.bound.websocket.is_empty();
        if listening
            && bearers(self.credentials.current().as_deref())
            && !bearers(credentials.as_deref())
        {
            return Err(AUTH_OFF.to_owned());
        }
        let addresses = Addresses {
            tcp: self.bound.tcp,
            admin: self.bound.admin,
            websocket: &self.bound.websocket,
        };
        preflight::secure_by_default(next, credentials.as_deref(), addresses)
            .map_err(|e| e.to_string())?;
        preflight::tls(next).map_err(|e| e.to_string())?;
        // Pools with cgroup limits need the delegated cgroup v2 the daemon took over at start.
        cgroups::check_reload(next).map_err(|e| e.to_string())?;
        if plan.audit {
            if let Some(path) = &next.audit.path {
                Audit::open(path)
                    .map_err(|e| format!("audit.path: cannot open '{}': {e}", path.display()))?;
            }
        }
        Ok(Prepared {
            credentials,
            bearer: AdminBearer::of(next),
        })
    }

    /// Puts what [`Live::prepare`] loaded in force; returns one line per change made. A file
    /// that fails between the two (replaced again meanwhile) keeps the previous one in use,
    /// with a WARN.
    pub(crate) fn apply(&self, prepared: Prepared, next: &Config, plan: &Plan) -> Vec<String> {
        self.credentials.replace(prepared.credentials);
        self.bearer.replace(prepared.bearer);
        let every = [(&self.tls.tcp, next.transport.tls.as_ref())]
            .into_iter()
            .chain(
                self.tls
                    .websocket
                    .iter()
                    .zip(next.websocket.iter().map(|w| w.tls.as_ref())),
            )
            .chain([(&self.tls.admin, next.metrics.tls.as_ref())]);
        for (tls, files) in every {
            let (Some(tls), Some(files)) = (tls, files) else {
                continue;
            };
            if let Err(error) = tls.replace(files) {
                tracing::warn!(%error, "cannot load the reloaded TLS files; still serving the previous ones");
            }
        }
        let audit = match plan.audit {
            true => self.audit.retarget(next.audit.path.as_deref()),
            false => self.audit.reopen(),
        };
        if let Err(error) = audit {
            tracing::warn!(%error, "cannot open the audit trail; still appending to the previous file");
        }
        plan.changes()
    }
}

/// Why a reload that leaves TCP and WebSocket clients no credential is refused.
const AUTH_OFF: &str = "auth turned off for TCP and WebSocket clients (no token or JWT secret \
                        left, so auth.insecure_no_auth would let them in unauthenticated): a \
                        restart is needed to apply it";
