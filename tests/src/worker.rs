//! A worker program run on its own, without the bus (`codex-worker`, `codex-mock`, or the fake
//! child `codex-mock app-server`): the test holds its stdin, stdout and stderr, every read is
//! bounded in time, and the child dies with the guard.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::WAIT;

/// A running worker; dropping it kills and reaps the child, whatever the test outcome.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

impl Worker {
    /// Starts `program` with `args` and exactly these bus variables (`CODEX_BUS_POOL`,
    /// `CODEX_BUS_SLOT` and `CODEX_HOME` are removed from the inherited environment first).
    pub fn start(program: &Path, args: &[&str], vars: &[(&str, &str)]) -> Self {
        let mut command = Command::new(program);
        command
            .args(args)
            .env_remove("CODEX_HOME")
            .env_remove("CODEX_BUS_POOL")
            .env_remove("CODEX_BUS_SLOT")
            .envs(vars.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {}: {err}", program.display()));
        let stdout = forward_lines(child.stdout.take().expect("stdout"));
        let stderr = forward_lines(child.stderr.take().expect("stderr"));
        Self {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    /// The child's process id, as it reports it in results.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes `text` to the worker's stdin at once.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin.write_all(text.as_bytes()).expect("write to worker");
        stdin.flush().expect("flush to worker");
    }

    /// Hands stdin over, e.g. to a writer thread; the worker sees EOF when it is dropped.
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().expect("stdin already taken")
    }

    /// Closes stdin so the worker reads EOF.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line, failing the test after [`WAIT`].
    pub fn line(&self) -> String {
        next_line(&self.stdout, "stdout")
    }

    /// The next stdout line parsed as JSON.
    pub fn json(&self) -> Value {
        let line = self.line();
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
    }

    /// Skips stderr lines until one contains `needle`, failing the test after [`WAIT`].
    pub fn stderr_line_containing(&self, needle: &str) -> String {
        loop {
            let line = next_line(&self.stderr, "stderr");
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Sends SIGTERM to the worker.
    pub fn sigterm(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Sends SIGKILL to the worker.
    pub fn sigkill(&self) {
        self.signal(Signal::SIGKILL);
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.pid()).expect("pid fits i32"));
        signal::kill(pid, signal).unwrap_or_else(|err| panic!("send {signal}: {err}"));
    }

    /// Asserts that the worker is still running `period` from now.
    pub fn expect_alive_for(&mut self, period: Duration) {
        let start = Instant::now();
        while start.elapsed() < period {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("worker exited within {period:?}: {status:?}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asserts that no stdout line comes within `period` (and that stdout stays open).
    pub fn expect_silence_for(&self, period: Duration) {
        match self.stdout.recv_timeout(period) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(line) => panic!("unexpected stdout line: {line}"),
            Err(RecvTimeoutError::Disconnected) => panic!("stdout closed within {period:?}"),
        }
    }

    /// Waits for the worker to exit, failing the test after [`WAIT`].
    pub fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < WAIT,
                "worker did not exit within {WAIT:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for exit and asserts the status code.
    pub fn expect_exit_code(&mut self, code: i32) {
        let status = self.wait();
        assert_eq!(status.code(), Some(code), "exit status {status:?}");
    }

    /// Waits for stdout to close and asserts nothing more was written.
    pub fn expect_no_more_output(&self) {
        match self.stdout.recv_timeout(WAIT) {
            Err(RecvTimeoutError::Disconnected) => {}
            Ok(line) => panic!("unexpected stdout line: {line}"),
            Err(RecvTimeoutError::Timeout) => panic!("stdout still open after {WAIT:?}"),
        }
    }

    /// Waits for exit and asserts death by `signal`.
    pub fn expect_killed_by(&mut self, signal: Signal) {
        let status = self.wait();
        assert_eq!(
            status.signal(),
            Some(signal as i32),
            "exit status {status:?}"
        );
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward_lines(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

fn next_line(lines: &Receiver<String>, stream: &str) -> String {
    match lines.recv_timeout(WAIT) {
        Ok(line) => line,
        Err(RecvTimeoutError::Timeout) => panic!("no {stream} line within {WAIT:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{stream} closed"),
    }
}
