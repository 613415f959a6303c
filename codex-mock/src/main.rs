//! `codex-mock`: the deterministic stand-ins for Codex that codex-stdio-bus's default pool, tests
//! and benchmarks run, so that none of them needs a Codex install.
//!
//! With no subcommand it is a mock worker: it reads NDJSON JSON-RPC 2.0 from stdin and writes
//! replies to stdout as `docs/worker-contract.md` says, plays Codex-like turns from the scenario
//! engine and keeps the `mock/*` test hooks. `codex-mock app-server` is a fake `codex app-server`
//! child (the child's wire format, scripted turns) for testing `codex-worker` without Codex. Both
//! are described in `docs/codex-mock.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

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

use cli::{Cli, Tool};
use identity::Identity;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let status = match cli.tool {
        Some(Tool::AppServer(knobs)) => mock_app_server::run(knobs),
        None => {
            let identity = Identity::of(&Placement::from_env(), cli.tag.as_deref());
            let mut mock = mock::Mock::new(identity, cli.scenario);
            if cli.stubborn {
                mock.become_stubborn();
            }
            event_loop::run(mock)
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
