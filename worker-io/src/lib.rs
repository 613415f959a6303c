//! The worker side of the bus's worker contract (`docs/worker-contract.md`), shared by the
//! two worker programs: `codex-worker` (the bridge onto a real `codex app-server`) and
//! `codex-mock` (the deterministic mock worker and fake `codex app-server` child).
//!
//! Reading stdin in large chunks ([`input`]), cutting it into lines ([`lines`], on the bus's own
//! framer), classifying a line without re-serialising it ([`message`]), writing replies in the
//! bus's format ([`render`]), waiting on one timer ([`timer`]), reading where the bus placed the
//! worker ([`placement`]) and logging on stderr ([`log`]) are the same in both, so they live here
//! once.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod input;
pub mod lines;
pub mod log;
pub mod message;
pub mod placement;
pub mod render;
pub mod timer;
