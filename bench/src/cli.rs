//! Command line.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::load::Sessions;
use crate::scenario::Name;
use crate::target::{Client, Kind, Transport};

/// Load generator for codex-stdio-bus, or any bus that reads stdio Bus config files: drives it
/// over TCP (with or without TLS), a Unix socket, stdio or WebSocket, checks every reply, and reports throughput, latency, and the
/// daemon's CPU time and memory.
#[derive(Debug, Parser)]
#[command(name = "bus-bench", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Settings shared by every run.
    #[command(flatten)]
    pub common: Common,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one load you describe with the options below.
    Run(RunArgs),
    /// Run a named scenario (or `all`) as docs/benchmarks.md describes.
    Scenario(ScenarioArgs),
    /// The `relay` target's process: takes a bus's command line, starts its workers and copies
    /// bytes between each client and a worker of its own (started by `--target relay`).
    #[command(hide = true)]
    Relay(RelayArgs),
}

/// Options of every subcommand.
#[derive(Debug, Args)]
pub struct Common {
    /// The bus command (split on spaces); `--config FILE` and `--tcp ADDR`, `--unix PATH` or
    /// `--stdio` are appended. Default: codex-stdio-bus beside this binary.
    #[arg(long, global = true, value_name = "CMD")]
    pub bus_cmd: Option<String>,
    /// The worker program named in the bus config and run by `direct`. Default: codex-mock (the
    /// mock worker) beside this binary.
    #[arg(long, global = true, value_name = "PATH")]
    pub worker_cmd: Option<PathBuf>,
    /// The worker's arguments (split on spaces); none by default.
    #[arg(
        long,
        global = true,
        value_name = "ARGS",
        default_value = "",
        hide_default_value = true,
        allow_hyphen_values = true
    )]
    pub worker_args: String,
    /// Runs per row; tables show median [min–max].
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Give up on a run when no reply arrived for this many seconds (what is missing is lost).
    #[arg(long, global = true, default_value_t = 10.0, value_name = "SECONDS")]
    pub stall_timeout: f64,
    /// After the last reply, keep reading this many milliseconds to catch duplicates.
    #[arg(long, global = true, default_value_t = 100, value_name = "MS")]
    pub linger_ms: u64,
    /// Run the bus (not the relay) with authentication on: an `auth` section with a token made
    /// up for this invocation, and every TCP connection authenticated before the warm-up (Unix
    /// and stdio connections need no handshake). Every message then carries the bus's tenant
    /// namespacing.
    #[arg(long, global = true)]
    pub auth: bool,
    /// Run the bus (not the relay) with its admin endpoint (`metrics.listen` on a loopback
    /// port), nobody reading it: the baseline of `--dashboard` (the endpoint also turns the
    /// daemon's metrics recorder on).
    #[arg(long, global = true)]
    pub admin: bool,
    /// `--admin`, and one dashboard stream (`GET /ui/events`) held open through every bus run,
    /// as an open page would be; the `status` events it received are reported.
    #[arg(long, global = true)]
    pub dashboard: bool,
    /// Also write every figure of every run as JSON to FILE.
    #[arg(long, global = true, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `bus-bench run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// What to drive: the bus, the worker directly, or the in-process responder.
    #[arg(long, value_enum, default_value_t = Kind::Bus)]
    pub target: Kind,
    /// Transport to the bus or responder (`direct` always uses the worker's stdin/stdout); `ws`
    /// is the bus's WebSocket front (blocking client, one connection).
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// TLS on the bus's tcp or ws listener (`wss`), with a self-signed certificate made for the
    /// run (blocking client, one connection).
    #[arg(long)]
    pub tls: bool,
    /// The client loop: `epoll` (every target, NDJSON) or `blocking` (one bus connection, tcp or
    /// ws, TLS or not). Default: blocking with `--tls` or `--transport ws`, else epoll.
    #[arg(long, value_enum)]
    pub client: Option<Client>,
    /// Concurrent connections (C).
    #[arg(short, long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Requests in flight per connection (W).
    #[arg(short, long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub window: u32,
    /// Requests in total (N).
    #[arg(short = 'n', long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: u64,
    /// Sessions (S): none, per-connection, unique (one per request) or a number.
    #[arg(short, long, default_value = "none")]
    pub sessions: Sessions,
    /// Request line size in bytes (P), padded inside params; 0 = unpadded (~60 bytes).
    #[arg(short, long, default_value_t = 0)]
    pub payload: usize,
    /// JSON-RPC method of the requests.
    #[arg(long, default_value = "ping")]
    pub method: String,
    /// Worker instances in the bus's pool.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: u32,
    /// Kill a worker every MS milliseconds during the measured phase.
    #[arg(long, value_name = "MS")]
    pub churn_ms: Option<u64>,
    /// Accept error replies (each request still needs exactly one reply).
    #[arg(long)]
    pub allow_errors: bool,
    /// Report the daemon's RSS per connection (all open, after the last reply, against its RSS
    /// before the first connected) and what it keeps once they have closed.
    #[arg(long)]
    pub rss_per_connection: bool,
}

/// `bus-bench scenario`.
#[derive(Debug, Args)]
pub struct ScenarioArgs {
    /// Scenario to run.
    #[arg(value_enum)]
    pub name: Name,
    /// Multiply request counts (and the connection count of `connections`) by this factor.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Run only the rows that drive the bus (skip the `direct` and `self` baselines).
    #[arg(long)]
    pub bus_only: bool,
}

/// `bus-bench relay`: the part of a bus's command line the relay understands.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("endpoint").required(true)))]
pub struct RelayArgs {
    /// The stdio Bus config bus-bench wrote (its one pool names the workers).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Listen on this TCP address (HOST:PORT).
    #[arg(long, group = "endpoint", value_name = "ADDR")]
    pub tcp: Option<String>,
    /// Listen on this Unix socket path.
    #[arg(long, group = "endpoint", value_name = "PATH")]
    pub unix: Option<PathBuf>,
}
