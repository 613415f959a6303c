//! Signals as shutdown requests: the first SIGTERM or SIGINT asks for a drain, a second one for an
//! immediate stop; SIGHUP is reserved for reload.
//!
//! The daemon itself knows no signals: [`daemon::run`](crate::daemon::run) takes a [`Shutdown`],
//! and this module makes one from the process's signals (tests and embedders make their own).

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::daemon::Shutdown;
use crate::error::{Error, Kind};

/// Installs the handlers and returns the shutdown they drive. From here on these signals no longer
/// kill the process by default (tokio replaces the default action for good), so the second-signal
/// rule is ours to keep; it is, through [`Shutdown`]'s second future. Must run inside the runtime.
pub fn shutdown() -> Result<Shutdown, Error> {
    let install = |kind: SignalKind| {
        signal(kind)
            .map_err(|e| Error::because(Kind::Environment, "cannot install signal handlers", e))
    };
    let (mut term, mut int, mut hup) = (
        install(SignalKind::terminate())?,
        install(SignalKind::interrupt())?,
        install(SignalKind::hangup())?,
    );
    let (drain, now) = (CancellationToken::new(), CancellationToken::new());
    let shutdown = Shutdown::new(
        drain.clone().cancelled_owned(),
        now.clone().cancelled_owned(),
    );
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    tracing::warn!("SIGHUP received: configuration reload is not supported yet; ignored");
                    continue;
                }
            };
            if !drain.is_cancelled() {
                tracing::info!(signal = name, "shutdown requested; draining");
                drain.cancel();
            } else {
                tracing::warn!(signal = name, "second signal; stopping at once");
                now.cancel();
                return;
            }
        }
    });
    Ok(shutdown)
}
