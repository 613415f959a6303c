//! End-to-end tests of the real `codex-worker` binary over its stdin/stdout pipes.
#![forbid(unsafe_code)]

mod contract;
mod hooks;
mod lifecycle;
mod support;
mod throughput;
