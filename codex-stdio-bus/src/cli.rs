//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Routes NDJSON JSON-RPC sessions from many clients onto a supervised pool of worker processes.
#[derive(Debug, Parser)]
#[command(name = "codex-stdio-bus", version, about)]
pub struct Cli {
    /// What to do; without a subcommand the daemon runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of the daemon itself.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a running daemon's pools and slots as a table (from its `/status` endpoint).
    Status {
        /// The daemon's metrics endpoint, as given to its `--metrics`.
        #[arg(long, value_name = "HOST:PORT")]
        metrics: String,
        /// Speak HTTPS (to an endpoint with `metrics.tls`), trusting the PEM certificates in
        /// FILE (the endpoint's own certificate, or the CA that signed it).
        #[arg(long, value_name = "FILE")]
        cacert: Option<PathBuf>,
    },
    /// Ask a running daemon to re-read its config file and apply it (`POST /reload`): pools
    /// added, removed, resized or rolled, credentials, TLS files and the audit path replaced.
    /// Prints the result, and why or what changed. Exit status 0 when applied or unchanged, else 1.
    /// Needs `metrics.bearer_sha256` on the daemon and the token in CODEX_BUS_METRICS_TOKEN.
    Reload {
        /// The daemon's metrics endpoint, as given to its `--metrics`.
        #[arg(long, value_name = "HOST:PORT")]
        metrics: String,
        /// Speak HTTPS (to an endpoint with `metrics.tls`), trusting the PEM certificates in
        /// FILE (the endpoint's own certificate, or the CA that signed it).
        #[arg(long, value_name = "FILE")]
        cacert: Option<PathBuf>,
    },
    /// Ask a running daemon to replace a pool's workers one at a time (`POST /restart`), each
    /// finishing its requests first (within the pool's `roll_timeout_sec`). Exit status 0 once
    /// done, else 1. Needs `metrics.bearer_sha256` and CODEX_BUS_METRICS_TOKEN, like `reload`.
    Restart {
        /// The pool's id.
        #[arg(long, value_name = "NAME")]
        pool: String,
        /// The daemon's metrics endpoint, as given to its `--metrics`.
        #[arg(long, value_name = "HOST:PORT")]
        metrics: String,
        /// Speak HTTPS (to an endpoint with `metrics.tls`), trusting the PEM certificates in
        /// FILE (the endpoint's own certificate, or the CA that signed it).
        #[arg(long, value_name = "FILE")]
        cacert: Option<PathBuf>,
    },
    /// Validate a config file and print the effective config (defaults filled in).
    Check {
        /// Config file (stdio Bus format); without it, the built-in default is checked.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Options for running the daemon.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config file (stdio Bus format); without it, the built-in default pool of codex-mock workers.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve one client on stdin/stdout (the default).
    #[arg(long, group = "endpoint")]
    pub stdio: bool,
    /// Listen on a Unix socket at PATH (created with mode 0600, removed on exit).
    #[arg(long, value_name = "PATH", group = "endpoint")]
    pub unix: Option<PathBuf>,
    /// Listen on TCP at HOST:PORT (IPv4, `[IPv6]` or a host name; port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT", group = "endpoint")]
    pub tcp: Option<String>,
    /// Serve WebSocket clients at HOST:PORT, as `codex app-server --listen ws://` does (`codex
    /// --remote ws://HOST:PORT`); repeatable, added to the config's `websocket` listeners. With
    /// WebSocket listeners and no --stdio, --unix, --tcp or `transport.mode`, stdio is not served.
    #[arg(long, value_name = "HOST:PORT")]
    pub ws: Vec<String>,
    /// Serve /metrics, /healthz, /readyz, /status and the dashboard (/ui) over HTTP (HTTPS with
    /// `metrics.tls`) at HOST:PORT (overrides
    /// `metrics.listen`; bind to loopback unless a firewall protects it).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<String>,
    /// Log filter, e.g. `info` or `codex_stdio_bus=debug` (overrides RUST_LOG).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}
