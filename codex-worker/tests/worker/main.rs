//! End-to-end tests of the real `codex-worker` binary over its stdin/stdout pipes.
#![forbid(unsafe_code)]

mod app_server;
mod contract;
mod faults;
mod hooks;
mod lifecycle;
mod mock_app_server;
mod mock_scenario;
mod support;
mod throughput;
