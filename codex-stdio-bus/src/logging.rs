//! Logging to stderr through a non-blocking, lossy writer: a stderr nobody reads must never stall
//! routing (stdio Bus stalls after 64 KiB of unread log). Lines are dropped instead.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber; keep the guard alive until exit so queued lines are flushed.
///
/// `level` (from `--log-level`) wins over `RUST_LOG`; with neither, INFO.
pub fn init(level: Option<&str>, format: LogFormat) -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .finish(std::io::stderr());
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}
