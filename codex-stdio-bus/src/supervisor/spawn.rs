//! Starting one worker process: its own process group, piped stdio, its environment, and death of
//! the worker when the daemon dies.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use codex_bus_config::PoolConfig;
use tokio::process::{Child, Command};

/// Spawns a worker for `slot` of `pool`.
///
/// Every fd Rust and tokio open is close-on-exec, so the worker inherits only its three pipes: no
/// listener, no client socket, no other worker's pipe (stdio Bus leaked all of them).
pub fn spawn_worker(pool: &PoolConfig, slot: u32) -> io::Result<Child> {
    let mut command = Command::new(&pool.command);
    command
        .args(&pool.args)
        .envs(&pool.env)
        .env("CODEX_BUS_POOL", &pool.id)
        .env("CODEX_BUS_SLOT", slot.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: a terminal's Ctrl-C reaches only the daemon (which drains), and the daemon
        // can signal the worker together with anything it started.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &pool.cwd {
        command.current_dir(cwd);
    }
    before_exec(&mut command);
    command.spawn()
}

/// Makes the kernel SIGKILL the worker when the thread that spawned it dies, and gives the worker
/// the open-file limit the daemon was started with.
///
/// The daemon spawns workers from its runtime's main thread, which lives as long as the process
/// (PDEATHSIG fires on the death of the parent *thread*). Workers also exit on stdin EOF; this
/// covers the ones that ignore it.
#[allow(unsafe_code)]
fn before_exec(command: &mut Command) {
    let parent = std::process::id();
    let fd_limit = crate::fd_limit::for_workers();
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe functions
    // (prctl, getppid, setrlimit); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if let Some((soft, hard)) = fd_limit {
                // The daemon raised its own limit; the worker starts with the one it was given.
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    soft,
                    hard,
                )?;
            }
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The parent may have died before prctl: then nobody would ever send the signal.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(io::Error::other(
                    "the daemon exited while the worker was starting",
                ));
            }
            Ok(())
        });
    }
}

/// Finds the program a pool runs, as `execvp` would, so a typo fails at startup, not in a crash loop.
pub fn resolve_command(command: &str, cwd: Option<&Path>) -> Option<PathBuf> {
    let candidate = Path::new(command);
    if command.contains('/') {
        let full = match cwd {
            Some(dir) if candidate.is_relative() => dir.join(candidate),
            _ => candidate.to_path_buf(),
        };
        return is_executable(&full).then_some(full);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(command))
            .find(|p| is_executable(p))
    })
}

/// A regular file with an execute bit.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_execvp() {
        assert!(resolve_command("sh", None).is_some());
        assert_eq!(
            resolve_command("/bin/sh", None),
            Some(PathBuf::from("/bin/sh"))
        );
        assert!(resolve_command("no-such-program-here", None).is_none());
        let plain = std::env::temp_dir().join(format!("codex-bus-plain-{}", std::process::id()));
        std::fs::write(&plain, "not a program").unwrap();
        let found = resolve_command(plain.to_str().unwrap(), None);
        std::fs::remove_file(&plain).unwrap();
        assert!(
            found.is_none(),
            "a file without an execute bit is not a program"
        );
        assert!(resolve_command("./sh", Some(Path::new("/bin"))).is_some());
    }
}
