//! A tmux server on a private socket, for tests that drive a terminal program (the Codex TUI):
//! start a program in a detached 200×50 session, read its screen, type keys, and end the tmux
//! server and every program in it when dropped, also when the test panics.
//!
//! The socket is private (`tmux -S <tempdir>/tmux.sock -f /dev/null`), so a fresh tmux server
//! starts in the test's own network namespace with no user configuration, and no other tmux on
//! the machine is touched. The recipe is `../shared/reference/codex-remote.md` §4.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Columns and rows of every session's window: wide enough that the TUI's lines do not wrap.
const SIZE: (&str, &str) = ("200", "50");

/// A private tmux server; killed with its programs when dropped.
pub struct Tmux {
    dir: tempfile::TempDir,
    /// The tmux server's pid, once a session started it.
    server: Option<u32>,
}

impl Tmux {
    /// A tmux with its socket in a fresh temporary directory; no server runs until
    /// [`Tmux::start`]. Panics if `tmux` is not installed.
    pub fn new() -> Tmux {
        let version = Command::new("tmux").arg("-V").output();
        assert!(
            version.is_ok_and(|out| out.status.success()),
            "tmux is not installed (Debian package tmux)"
        );
        Tmux {
            dir: tempfile::tempdir().expect("tmux dir"),
            server: None,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("tmux.sock")
    }

    /// Runs `tmux -S <socket> args…`; returns its output whatever its status.
    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// Starts session `name` running `script` (a shell script, written to a file and run with
    /// `sh`; it should `exec` its program), in a detached window of 200×50. The pane stays after
    /// the program exits, so its last screen and exit status can be read.
    pub fn start(&mut self, name: &str, script: &str) {
        let launcher = self.dir.path().join(format!("{name}.sh"));
        std::fs::write(&launcher, script).unwrap();
        let command = format!("sh {}", launcher.display());
        let out = Command::new("tmux")
            .arg("-S")
            .arg(self.socket())
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                SIZE.0,
                "-y",
                SIZE.1,
            ])
            .args([
                "-s",
                name,
                &command,
                ";",
                "set-option",
                "-w",
                "remain-on-exit",
                "on",
            ])
            .output()
            .expect("run tmux new-session");
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if self.server.is_none() {
            self.server = self.display(name, "#{pid}").parse().ok();
        }
    }

    /// A format string expanded for session `name` (`tmux display-message -p`).
    fn display(&self, name: &str, format: &str) -> String {
        let out = self.tmux(&["display-message", "-p", "-t", name, format]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The visible screen of session `name`, wrapped lines joined, trailing blank lines dropped.
    pub fn screen(&self, name: &str) -> String {
        let out = self.tmux(&["capture-pane", "-p", "-J", "-t", name]);
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        let end = lines
            .iter()
            .rposition(|l| !l.is_empty())
            .map_or(0, |i| i + 1);
        lines[..end].join("\n")
    }

    /// Polls the screen of `name` until it holds one of `needles` or `limit` passes; returns the
    /// index of the needle found and the screen, or the last screen as the error.
    pub fn wait_for(
        &self,
        name: &str,
        needles: &[&str],
        limit: Duration,
    ) -> Result<(usize, String), String> {
        let start = Instant::now();
        loop {
            let screen = self.screen(name);
            if let Some(found) = needles.iter().position(|n| screen.contains(n)) {
                return Ok((found, screen));
            }
            if start.elapsed() > limit || self.exit_status(name).is_some() {
                return Err(screen);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Types `keys` into session `name` (tmux key names, e.g. `C-c`, `Enter`).
    pub fn send_keys(&self, name: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", name];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// The exit status of the program in session `name` once it has exited (128 + the signal's
    /// number when a signal ended it). tmux 3.3 sometimes leaves a pane's program a zombie it
    /// never reaps, so the status is not in `#{pane_dead_status}`; the kernel still has it then,
    /// in `/proc/PID/stat`.
    pub fn exit_status(&self, name: &str) -> Option<i32> {
        let dead = self.display(
            name,
            "#{pane_dead} #{pane_pid} #{pane_dead_status}x #{pane_dead_signal}x",
        );
        let mut parts = dead.split_whitespace();
        if parts.next() != Some("1") {
            return None;
        }
        let pid = parts.next().and_then(|pid| pid.parse().ok());
        let number = |part: Option<&str>| part?.strip_suffix('x')?.parse::<i32>().ok();
        let status = number(parts.next());
        status
            .or_else(|| number(parts.next()).map(|signal| 128 + signal))
            .or_else(|| pid.and_then(zombie_status))
    }

    /// Waits up to `limit` for the program in `name` to exit; returns its status.
    pub fn wait_exit(&self, name: &str, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.exit_status(name) {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// The pids of the programs in every pane.
    fn pane_pids(&self) -> Vec<u32> {
        let out = self.tmux(&["list-panes", "-a", "-F", "#{pane_pid}"]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect()
    }

    /// The socket's directory, for files a test wants beside it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for Tmux {
    fn default() -> Self {
        Tmux::new()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let Some(server) = self.server else {
            return;
        };
        let panes = self.pane_pids();
        self.tmux(&["kill-server"]);
        // kill-server hangs up the panes' programs; a program that ignores SIGHUP, or a server
        // that did not answer, still ends here, by pid.
        for pid in panes.into_iter().chain([server]) {
            if crate::alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// The exit status of `pid` if it is a zombie: field 52 of `/proc/PID/stat` (`exit_code`, as
/// `waitpid` reports it), decoded like a shell does.
fn zombie_status(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3, the state.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() != Some(&"Z") {
        return None;
    }
    let code: i32 = fields.get(52 - 3)?.parse().ok()?;
    Some(if code & 0x7f == 0 {
        (code >> 8) & 0xff
    } else {
        128 + (code & 0x7f)
    })
}
