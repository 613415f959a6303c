//! Signals: the first SIGTERM/SIGINT drains, a second stops at once; SIGHUP is reserved for reload.

use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::router::Router;
use crate::supervisor::instance::signal_group;

/// Exit status after a second signal cut the drain short.
pub const STOPPED_AT_ONCE: i32 = 1;

/// The daemon's signal handlers, installed before anything else starts.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. From here on these signals no longer kill the process by default
    /// (tokio replaces the default action for good), so the second-signal rule is ours to keep.
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Handles signals for the life of the daemon.
    pub async fn watch(mut self, drain: CancellationToken, router: Arc<Router>) {
        loop {
            let name = tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
                _ = self.hup.recv() => {
                    tracing::warn!("SIGHUP received: configuration reload is not supported yet; ignored");
                    continue;
                }
            };
            if !drain.is_cancelled() {
                tracing::info!(signal = name, "shutdown requested; draining");
                drain.cancel();
                continue;
            }
            tracing::warn!(signal = name, "second signal; stopping at once");
            for slot in router.pools().iter().flat_map(|p| &p.slots) {
                signal_group(slot, Signal::SIGKILL);
            }
            std::process::exit(STOPPED_AT_ONCE);
        }
    }
}
