//! One `codex app-server` child process: spawned (in its own process group, with piped stdio)
//! by [`codex_bus_process::Spec`], stdout forwarded to the event loop as chunks, stdin fed from a
//! queue, stderr logged.

use std::io;
use std::path::Path;
use std::process::ExitStatus;

use codex_bus_process::{capture_stderr, signal_group, Spec};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use codex_bus_worker_io::log;

use super::child_log::ChildLog;

/// Bytes read from the child's stdout per read call.
const CHUNK_BYTES: usize = 64 * 1024;

/// Longest stderr line of the child logged; a longer one is replaced by a note. Our own stderr
/// lines are logged by the bus up to 16 KiB each, prefix included.
const STDERR_LINE: usize = 8 * 1024;

/// What a child reports to the event loop; each event carries the child's generation, so that
/// a late event of a dead child is never mistaken for the current one's.
#[derive(Debug)]
pub enum ChildEvent {
    /// Bytes from the child's stdout.
    Stdout(u64, Vec<u8>),
    /// The child's stdout closed and the process was reaped.
    Exited(u64, io::Result<ExitStatus>),
}

/// A running child.
#[derive(Debug)]
pub struct ChildProcess {
    pid: Option<u32>,
    stdin: Option<mpsc::UnboundedSender<Vec<u8>>>,
}

impl ChildProcess {
    /// Starts `command` with `CODEX_HOME=home`; events go to `events`.
    pub fn spawn(
        command: &[String],
        home: &Path,
        generation: u64,
        events: mpsc::Sender<ChildEvent>,
    ) -> io::Result<Self> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty --codex-cmd"))?;
        // Its own group (as every `Spec`), so a lingering child and its tools can be killed
        // together, and the bus's signals to our group do not hit it before we drained it. It is
        // spawned from the event loop's thread, the main thread, so its PDEATHSIG fires only when
        // the worker itself dies.
        let mut spec = Spec::new(program);
        spec.args(args).env("CODEX_HOME", home);
        if std::env::var_os("RUST_LOG").is_none() {
            spec.env("RUST_LOG", "warn");
        }
        let mut child = spec.spawn()?;
        let pid = child.id();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let stdin = child.stdin.take();
        if let Some(mut stdout) = stdout {
            tokio::spawn(async move {
                let mut buf = vec![0; CHUNK_BYTES];
                loop {
                    match stdout.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if events
                                .send(ChildEvent::Stdout(generation, buf[..n].to_vec()))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
                let status = codex_bus_process::reap(&mut child).await;
                let _ = events.send(ChildEvent::Exited(generation, status)).await;
            });
        }
        if let Some(stderr) = stderr {
            tokio::spawn(async move {
                let mut log = ChildLog::new(generation);
                capture_stderr(stderr, STDERR_LINE, |line| log.line(line)).await;
                log.flush();
            });
        }
        let (sender, mut receiver) = mpsc::unbounded_channel::<Vec<u8>>();
        if let Some(mut stdin) = stdin {
            tokio::spawn(async move {
                while let Some(bytes) = receiver.recv().await {
                    if stdin.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                // Dropping stdin here is the child's end of input.
            });
        }
        log::line(format_args!(
            "started {} (generation {generation}, pid {})",
            command.join(" "),
            pid.map_or(-1, i64::from)
        ));
        Ok(Self {
            pid,
            stdin: Some(sender),
        })
    }

    /// Queues bytes for the child's stdin.
    pub fn write(&self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        if let Some(stdin) = &self.stdin {
            let _ = stdin.send(bytes);
        }
    }

    /// Closes the child's stdin once what is queued is written: Codex exits at end of input.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends `signal` to the child's process group (its tools included).
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid {
            let _ = signal_group(pid, signal);
        }
    }
}
