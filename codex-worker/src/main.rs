//! `codex-worker`: the worker process that codex-stdio-bus spawns for each pool slot.
//!
//! It reads NDJSON JSON-RPC 2.0 from stdin and writes replies to stdout; the contract is in
//! `docs/worker-contract.md`. The only backend so far is `mock`, the deterministic load used by the
//! daemon's end-to-end tests and benchmarks.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cli;
mod delay_queue;
mod event_loop;
mod framing;
mod identity;
mod input;
mod log;
mod message;
mod mock;
mod render;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let backend = match cli.backend {
        cli::BackendKind::Mock => mock::Mock::new(identity::Identity::from_env()),
    };
    match event_loop::run(backend) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            log::line(format_args!("fatal I/O error: {err}"));
            ExitCode::FAILURE
        }
    }
}
