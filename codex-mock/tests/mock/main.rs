//! End-to-end tests of the real `codex-mock` binary over its stdin/stdout pipes: the mock worker
//! and the fake `codex app-server` child.
#![forbid(unsafe_code)]

mod contract;
mod faults;
mod hooks;
mod lifecycle;
mod mock_app_server;
mod mock_scenario;
mod support;
mod throughput;
