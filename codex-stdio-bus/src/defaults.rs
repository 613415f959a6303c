//! The built-in configuration used when no `--config` is given.

use std::path::PathBuf;

use codex_bus_config::Config;

use crate::error::{Error, Kind};

/// One pool `codex` running the mock worker `codex-mock` (built and shipped beside this
/// executable, so the default needs no Codex install), one instance per available CPU.
pub fn built_in() -> Result<Config, Error> {
    let worker = mock_beside_executable()?;
    let instances = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    Ok(Config::single_pool(
        "codex",
        &worker.to_string_lossy(),
        &[],
        instances,
    ))
}

/// The `codex-mock` executable in the daemon's own directory.
fn mock_beside_executable() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::because(Kind::Config, "cannot locate the daemon's executable", e))?;
    Ok(exe.with_file_name("codex-mock"))
}
