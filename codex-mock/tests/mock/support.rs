//! `codex-mock` started on its own, in the harness every worker program shares
//! ([`codex_bus_tests::worker`]), and the mock's default result as an exact line.

use std::path::Path;

pub use codex_bus_tests::worker::Worker;

/// Pool id the default spawn puts in the environment.
pub const POOL: &str = "test-pool";

/// Slot number the default spawn puts in the environment.
pub const SLOT: &str = "7";

/// Spawns the mock worker with `CODEX_BUS_POOL=test-pool` and `CODEX_BUS_SLOT=7`.
pub fn spawn() -> Worker {
    spawn_with_env(&[("CODEX_BUS_POOL", POOL), ("CODEX_BUS_SLOT", SLOT)])
}

/// Spawns the mock worker with exactly these bus variables (others removed).
pub fn spawn_with_env(vars: &[(&str, &str)]) -> Worker {
    spawn_with(&[], vars)
}

/// Spawns `codex-mock` with `args` and exactly these bus variables (others removed, `CODEX_HOME`
/// too).
pub fn spawn_with(args: &[&str], vars: &[(&str, &str)]) -> Worker {
    Worker::start(Path::new(env!("CARGO_BIN_EXE_codex-mock")), args, vars)
}

/// The default result the mock gives `method` for request `id`, as an exact line.
pub fn default_reply(worker: &Worker, id: &str, method: &str, session: Option<&str>) -> String {
    let session = session.map_or_else(String::new, |session| format!(",\"sessionId\":{session}"));
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"pool\":\"{POOL}\",\"slot\":{SLOT},\"pid\":{},\"method\":\"{method}\"}}{session}}}",
        worker.pid()
    )
}
