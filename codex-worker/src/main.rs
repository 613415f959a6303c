//! `codex-worker`: the worker process that codex-stdio-bus spawns for each pool slot, serving bus
//! sessions on a real `codex app-server` child (one shared, or one per session).
//!
//! It reads NDJSON JSON-RPC 2.0 from stdin and writes replies to stdout; the contract is in
//! `docs/worker-contract.md`, the bridge in `docs/codex-worker.md`. The deterministic mock that
//! the daemon's default pool, tests and benchmarks run is the separate `codex-mock` binary.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod app_server;
mod cli;

use std::process::ExitCode;

use clap::Parser;

use codex_bus_worker_io::log;
use codex_bus_worker_io::placement::Placement;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let placement = Placement::from_env();
    let settings = match app_server::Settings::new(&cli, &placement.pool, placement.slot) {
        Ok(settings) => settings,
        Err(err) => {
            log::line(format_args!("{err}"));
            return ExitCode::from(2);
        }
    };
    match app_server::run(settings) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            log::line(format_args!("fatal I/O error: {err}"));
            ExitCode::FAILURE
        }
    }
}
