//! codex-stdio-bus: a daemon that owns pools of worker processes and routes NDJSON JSON-RPC traffic
//! from many clients to them, keeping each session on one worker and every reply with its client.
//!
//! The daemon is built in layers, each importing only those below it (docs/architecture.md; a test
//! runs `module-cycles` on this crate):
//!
//! 1. `core`: the outbox, id tables, a client's output side, slots with their pending requests;
//! 2. `router`: placement and the two directions of routing;
//! 3. [`io`]: client transports and worker pipes, over one frame-reading loop;
//! 4. `supervisor`: the restart policy loop, driving workers through a `WorkerSink`;
//! 5. [`daemon`] (`run(config, listeners, shutdown)`) and [`admin`] (metrics, health, status).
//!
//! `auth` (credentials), `cgroups` (the pools' cgroup v2 limits), `metrics` and [`error`] are leaves that any layer may use; [`signals`] makes the [`Shutdown`]
//! that `main` hands to [`daemon::run`].
//!
//! [`Shutdown`]: daemon::Shutdown

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
mod audit;
mod auth;
mod cgroups;
pub mod cli;
mod core;
pub mod daemon;
pub mod defaults;
pub mod error;
pub mod io;
pub mod logging;
mod metrics;
mod preflight;
mod reload;
pub mod router;
pub mod signals;
mod supervisor;
