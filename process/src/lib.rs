//! Process supervision shared by `codex-stdio-bus` (its workers) and `codex-worker` (its
//! `codex app-server` children), so each rule exists once.
//!
//! - [`Backoff`] (jittered exponential delays) and [`RestartLimit`] (at most N restarts in a
//!   window) decide when a dead child starts again.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backoff;
mod restart_limit;

pub use backoff::{Backoff, InvalidBackoff};
pub use restart_limit::RestartLimit;
