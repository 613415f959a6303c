//! The daemon's signal table (docs/operations.md, "Signals"): SIGTERM and SIGINT ask for a drain
//! and a second one for an immediate stop; SIGQUIT stops at once; SIGUSR1 asks for a status dump
//! in the log; SIGHUP reopens the files the daemon appends to (the audit trail), for log
//! rotation, and reloads the config file (as `POST /reload` does, for operators and service
//! managers without the admin token: `systemctl reload`); SIGUSR2 is logged and ignored.
//!
//! The daemon itself knows no signals: [`daemon::run`](crate::daemon::run) takes a [`Shutdown`],
//! and this module makes one from the process's signals (tests and embedders make their own).
//! Every signal whose default action would kill the process is caught here, so none of them ends
//! the daemon without its cleanup (workers stopped, the Unix socket file removed). SIGPIPE is
//! ignored by the Rust runtime already: a client that goes away is an `EPIPE` on its write.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::daemon::Shutdown;
use crate::error::{Error, Kind};

/// Installs the handlers and returns the shutdown they drive. From here on these signals no longer
/// kill the process by default (tokio replaces the default action for good), so the second-signal
/// rule is ours to keep; it is, through [`Shutdown`]'s second future. Must run inside the runtime.
///
/// # Errors
///
/// [`Kind::Environment`] if a handler cannot be installed.
pub fn shutdown() -> Result<Shutdown, Error> {
    let install = |kind: SignalKind| -> Result<Signal, Error> {
        signal(kind)
            .map_err(|e| Error::because(Kind::Environment, "cannot install signal handlers", e))
    };
    let mut term = install(SignalKind::terminate())?;
    let mut int = install(SignalKind::interrupt())?;
    let mut quit = install(SignalKind::quit())?;
    let mut hup = install(SignalKind::hangup())?;
    let mut usr1 = install(SignalKind::user_defined1())?;
    let mut usr2 = install(SignalKind::user_defined2())?;
    let (drain, now) = (CancellationToken::new(), CancellationToken::new());
    let shutdown = Shutdown::new(
        drain.clone().cancelled_owned(),
        now.clone().cancelled_owned(),
    );
    let status = shutdown.status_requests();
    let reopen = shutdown.reopen_requests();
    let reload = shutdown.reload_requests();
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = quit.recv() => {
                    tracing::warn!(signal = "SIGQUIT", "stop requested; stopping at once");
                    // Both: a daemon that has not begun draining must leave its serving loop too.
                    drain.cancel();
                    now.cancel();
                    return;
                }
                _ = hup.recv() => {
                    tracing::info!(signal = "SIGHUP", "reopening files and reloading the config");
                    reopen.notify_one();
                    reload.notify_one();
                    continue;
                }
                _ = usr1.recv() => {
                    // Logged by the daemon once it runs (a request during startup waits for it).
                    status.notify_one();
                    continue;
                }
                _ = usr2.recv() => {
                    tracing::info!(signal = "SIGUSR2", "signal has no meaning here; ignored");
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
