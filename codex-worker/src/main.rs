//! `codex-worker`: the worker process that codex-stdio-bus spawns for each pool slot.
//!
//! It reads NDJSON JSON-RPC 2.0 from stdin and writes replies to stdout; the contract is in
//! `docs/worker-contract.md`, the backends in `docs/codex-worker.md`. `--backend mock` is the
//! deterministic in-process load used by the daemon's tests and benchmarks; `--backend
//! app-server` serves bus sessions on a real `codex app-server` child.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod app_server;
mod cli;
mod delay_queue;
mod event_loop;
mod identity;
mod mock;
mod mock_app_server;
mod scenario;
mod sigterm;

use std::process::ExitCode;

use clap::Parser;

use codex_bus_worker_io::log;
use codex_bus_worker_io::placement::Placement;

use identity::Identity;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let placement = Placement::from_env();
    let status = match (cli.tool, cli.backend) {
        (Some(cli::Tool::MockAppServer(knobs)), _) => mock_app_server::run(knobs),
        (None, cli::BackendKind::Mock) => mock::Mock::new(Identity::of(&placement), cli.scenario)
            .and_then(|mut mock| {
                if cli.stubborn {
                    mock.become_stubborn();
                }
                event_loop::run(mock)
            }),
        (None, cli::BackendKind::AppServer) if cli.stubborn => {
            log::line(format_args!("--stubborn is an option of the mock backend"));
            return ExitCode::from(2);
        }
        (None, cli::BackendKind::AppServer) => {
            match app_server::Settings::new(&cli.app_server, &placement.pool, placement.slot) {
                Ok(settings) => app_server::run(settings),
                Err(err) => {
                    log::line(format_args!("{err}"));
                    return ExitCode::from(2);
                }
            }
        }
    };
    match status {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            log::line(format_args!("fatal I/O error: {err}"));
            ExitCode::FAILURE
        }
    }
}
