//! Where the bus placed this worker: the pool and slot it names in the worker's environment.

use std::env;

use crate::log;

/// Where the bus placed this worker: `CODEX_BUS_POOL` and `CODEX_BUS_SLOT` (see
/// `docs/worker-contract.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The pool id, empty when unset.
    pub pool: String,
    /// The slot number, `None` when unset or not an integer.
    pub slot: Option<i64>,
}

impl Placement {
    /// Reads the variables the bus sets for each worker; a slot that is not an integer is logged
    /// and read as `None`.
    pub fn from_env() -> Self {
        let pool = env::var_os("CODEX_BUS_POOL")
            .map(|pool| pool.to_string_lossy().into_owned())
            .unwrap_or_default();
        let slot = env::var("CODEX_BUS_SLOT").ok().and_then(|raw| {
            let parsed = raw.trim().parse::<i64>().ok();
            if parsed.is_none() {
                log::line(format_args!("ignoring non-integer CODEX_BUS_SLOT {raw:?}"));
            }
            parsed
        });
        Self { pool, slot }
    }
}
