//! Starting a supervised child: piped stdio, its own process group, death with the spawning
//! thread, the open-file limit this process was given; and finding its program.

#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::Restrictions;

/// What to run: program, arguments, environment and directory. Stdin, stdout and stderr are always
/// piped: a supervised child talks to its parent and is logged by it.
///
/// Every child starts
/// - in its own process group (its pgid is its pid), so a terminal's Ctrl-C reaches only the
///   parent, and [`stop`](fn@crate::stop) or [`signal_group`](crate::signal_group) reach the child
///   together with anything it started;
/// - with `PR_SET_PDEATHSIG` = SIGKILL, so it dies when the thread that spawned it dies (spawn
///   from a thread that lives as long as the process), even if it ignores stdin EOF;
/// - with the open-file limit this process was started with, if
///   [`fd_limit::raise`](crate::fd_limit::raise) raised ours before the `Spec` was made;
/// - holding no fd of ours but its three pipes, since Rust and tokio open every fd close-on-exec
///   (and [`cloexec_inherited_fds`](crate::cloexec_inherited_fds) covers the inherited ones).
/// - with the [`Restrictions`] given to [`restrict`](Spec::restrict), if any;
/// - in the cgroup given to [`cgroup`](Spec::cgroup), if any.
#[derive(Debug)]
pub struct Spec {
    command: Command,
    fd_limit: Option<(u64, u64)>,
    restrictions: Restrictions,
    /// The `cgroup.procs` of the child's cgroup, opened for writing.
    cgroup: Option<File>,
    /// Whether the code run between fork and exec has been registered (at the first spawn).
    armed: bool,
}

impl Spec {
    /// A child running `program` (a path, or a name looked up in `PATH` as `execvp` does).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let mut command = Command::new(program);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        Spec {
            command,
            fd_limit: crate::fd_limit::for_children(),
            restrictions: Restrictions::default(),
            cgroup: None,
            armed: false,
        }
    }

    /// Restricts the child: another user and group, a umask, resource limits (see
    /// [`Restrictions`]). Call before the first [`spawn`](Spec::spawn).
    pub fn restrict(&mut self, restrictions: Restrictions) -> &mut Self {
        debug_assert!(!self.armed, "restrict a Spec before its first spawn");
        self.restrictions = restrictions;
        self
    }

    /// Moves the child into the cgroup whose `cgroup.procs` this is (opened for writing, as
    /// [`cgroup::Workers::slot`](crate::cgroup::Workers::slot) returns it) before anything else
    /// between fork and exec, so all it runs is limited by that cgroup. Call before the first
    /// [`spawn`](Spec::spawn).
    pub fn cgroup(&mut self, procs: File) -> &mut Self {
        debug_assert!(!self.armed, "give a Spec its cgroup before its first spawn");
        self.cgroup = Some(procs);
        self
    }

    /// Adds one argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.command.arg(arg);
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    /// Sets one environment variable (the rest of our environment is inherited).
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.command.env(key, value);
        self
    }

    /// Sets environment variables.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.command.envs(vars);
        self
    }

    /// Runs the child in `dir` (default: our working directory).
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.command.current_dir(dir);
        self
    }

    /// Whether dropping the [`Child`] SIGKILLs it (default: no). It kills the child only, not its
    /// group; [`stop`](fn@crate::stop) is the orderly way.
    pub fn kill_on_drop(&mut self, kill: bool) -> &mut Self {
        self.command.kill_on_drop(kill);
        self
    }

    /// Starts the child; its `stdin`, `stdout` and `stderr` are `Some`.
    ///
    /// Errors: the program cannot be found or executed (the `execve(2)` errno), or the spawning
    /// process died while the child started (`ESRCH`), or a restriction could not be applied
    /// (its errno, such as `EPERM` for another user when this process is not root), or the child
    /// could not join its cgroup (its errno).
    pub fn spawn(&mut self) -> io::Result<Child> {
        if !self.armed {
            crate::inherit::in_child(
                &mut self.command,
                self.fd_limit,
                &self.restrictions,
                self.cgroup.take(),
            );
            self.armed = true;
        }
        self.command.spawn()
    }
}

/// Finds the program `command` names, as `execvp` would (a name with a `/` is a path, relative to
/// `cwd` if given; any other name is looked up in `search_path`, the `PATH` the child will have,
/// else this process's `PATH`), so a typo fails at startup, not in a crash loop. `None`: no
/// regular file with an execute bit there.
pub fn resolve_command(
    command: &str,
    cwd: Option<&Path>,
    search_path: Option<&OsStr>,
) -> Option<PathBuf> {
    let candidate = Path::new(command);
    if command.contains('/') {
        let full = match cwd {
            Some(dir) if candidate.is_relative() => dir.join(candidate),
            _ => candidate.to_path_buf(),
        };
        return is_executable(&full).then_some(full);
    }
    let path = match search_path {
        Some(path) => Some(path.to_owned()),
        None => std::env::var_os("PATH"),
    };
    path.and_then(|path| {
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
    use crate::testing::{gone, output};

    #[test]
    fn resolves_like_execvp() {
        assert!(resolve_command("sh", None, None).is_some());
        assert_eq!(
            resolve_command("/bin/sh", None, None),
            Some(PathBuf::from("/bin/sh"))
        );
        assert!(resolve_command("no-such-program-here", None, None).is_none());
        let plain = std::env::temp_dir().join(format!("codex-bus-plain-{}", std::process::id()));
        std::fs::write(&plain, "not a program").unwrap();
        let found = resolve_command(plain.to_str().unwrap(), None, None);
        std::fs::remove_file(&plain).unwrap();
        assert!(
            found.is_none(),
            "a file without an execute bit is not a program"
        );
        assert!(resolve_command("./sh", Some(Path::new("/bin")), None).is_some());
        // The child's own PATH decides, not ours.
        assert!(resolve_command("sh", None, Some(OsStr::new("/nonexistent"))).is_none());
        assert!(resolve_command("sh", None, Some(OsStr::new("/nonexistent:/bin"))).is_some());
    }

    #[tokio::test]
    async fn a_child_leads_its_own_group_with_our_environment_and_directory() {
        let mut spec = Spec::new("sh");
        // Fields 1 and 5 of /proc/PID/stat: the pid and the process group.
        let script = "read -r pid comm state ppid pgrp rest < /proc/$$/stat; echo $pid $pgrp $CODEX_BUS_TEST; pwd";
        spec.args(["-c", script])
            .env("CODEX_BUS_TEST", "set")
            .current_dir("/");
        let out = output(&mut spec).await;
        let mut words = out.split_whitespace();
        let (pid, pgid) = (words.next().unwrap(), words.next().unwrap());
        assert_eq!(pid, pgid, "{out}");
        assert_eq!(words.collect::<Vec<_>>(), ["set", "/"], "{out}");
    }

    #[test]
    fn a_child_dies_with_the_thread_that_spawned_it() {
        let pid = std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _guard = runtime.enter();
            let child = Spec::new("sleep").arg("1000").spawn().unwrap();
            child.id().unwrap()
        })
        .join()
        .unwrap();
        assert!(gone(pid), "sleep {pid} outlived the thread that spawned it");
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error() {
        let error = Spec::new("/no/such/program").spawn().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn a_child_starts_with_the_limit_we_were_given() {
        let (soft, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        let original = crate::fd_limit::for_children().map_or(soft, |(soft, _)| soft);
        crate::fd_limit::raise().unwrap();
        let mut spec = Spec::new("sh");
        spec.args(["-c", "ulimit -n"]);
        let out = output(&mut spec).await;
        assert_eq!(out.trim(), original.to_string());
    }

    #[tokio::test]
    async fn a_restricted_child_gets_its_umask_limits_and_no_new_privs() {
        let mut spec = Spec::new("sh");
        spec.args([
            "-c",
            "umask; ulimit -v; ulimit -n; ulimit -c; grep NoNewPrivs /proc/$$/status",
        ])
        .restrict(Restrictions {
            umask: Some(0o077),
            limits: vec![
                (crate::Limit::AddressSpace, 512 << 20),
                (crate::Limit::OpenFiles, 100),
                (crate::Limit::CoreBytes, 0),
            ],
            no_new_privs: true,
            ..Restrictions::default()
        });
        let out = output(&mut spec).await;
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert_eq!(lines[..4], ["0077", "524288", "100", "0"], "{out}");
        assert!(lines[4].ends_with('1'), "{out}");
    }

    #[tokio::test]
    async fn a_child_joins_its_cgroup_before_it_runs() {
        // A plain file stands in for `cgroup.procs`: the child writes `0` (itself) to it, once,
        // before exec; the real move is the cgroup tier's (tests/tests/privileges.rs).
        let procs = tempfile::NamedTempFile::new().unwrap();
        let mut spec = Spec::new("sh");
        spec.args(["-c", "echo ran"])
            .cgroup(File::options().write(true).open(procs.path()).unwrap());
        assert_eq!(output(&mut spec).await.trim(), "ran");
        assert_eq!(std::fs::read_to_string(procs.path()).unwrap(), "0");
    }

    #[tokio::test]
    #[ignore = "tier root: needs root to switch a child's user; .ci/run runs it when it is root"]
    async fn a_root_parent_drops_a_child_to_another_user() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the root tier runs as root (cargo test … -- --ignored as root)"
        );
        let mut spec = Spec::new("sh");
        spec.args(["-c", "grep -E '^(Uid|Gid|Groups):' /proc/$$/status"])
            .restrict(Restrictions {
                groups: Some(vec![]),
                gid: Some(65534),
                uid: Some(65534),
                ..Restrictions::default()
            });
        let out = output(&mut spec).await;
        let fields: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            fields[0],
            ["Uid:", "65534", "65534", "65534", "65534"],
            "{out}"
        );
        assert_eq!(
            fields[1],
            ["Gid:", "65534", "65534", "65534", "65534"],
            "{out}"
        );
        assert_eq!(fields[2], ["Groups:"], "{out}");
    }
}
