//! Hot reload and rolling restarts (issue 16): re-reading the config file the daemon started with
//! and applying the difference without dropping clients.

#[allow(dead_code)] // used by the reload orchestration (issue 16)
pub(crate) mod plan;

use std::future::Future;
use std::pin::Pin;

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
