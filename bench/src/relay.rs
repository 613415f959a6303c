//! The `relay` target's process (`bus-bench relay`, hidden): the cheapest forwarder between
//! clients and workers, the floor no bus can beat on the machine it runs on.
//!
//! It takes the bus's command line (`--config FILE` and `--tcp ADDR` or `--unix PATH`), starts
//! the config's workers as the bus would (same program, arguments, `CODEX_BUS_POOL` and
//! `CODEX_BUS_SLOT`, own process group), and copies bytes: client → worker stdin, worker stdout →
//! client, 64 KiB reads each written whole before the next read, nothing parsed or framed. It
//! runs on the daemon's runtime model (one current-thread tokio runtime, the socket and pipes
//! polled by tokio), so the difference between the two is the bus's own work.
//!
//! Without parsing, replies cannot be routed, so each worker serves one connection at a time:
//! an accepted connection takes the worker free longest and gives it back when the client closes
//! its side; a connection that finds every worker taken waits. Runs therefore need at least as
//! many workers as connections (checked by the target). Replies still in flight when a client
//! leaves reach the worker's next client; bus-bench never leaves with replies outstanding.

use std::io;
use std::process::ExitCode;

use codex_bus_process::{capture_stderr, Spec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::bus_config::{BusConfig, PoolConfig};
use crate::cli::RelayArgs;

/// Bytes asked for per read: the daemon's read size (`LineFramer`'s minimum spare room), so the
/// two batch alike.
const CHUNK: usize = 64 * 1024;

/// Longest worker stderr line copied whole (the daemon's cap).
const STDERR_LINE: usize = 16 * 1024;

/// Runs the relay until SIGTERM or SIGINT (exit 0), or until a worker exits or a socket fails
/// to bind or accept (exit 1, the reason on stderr).
pub fn main(args: &RelayArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bus-bench relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Dropping the runtime drops every task and with it every worker (`kill_on_drop`).
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bus-bench relay: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &RelayArgs) -> Result<(), String> {
    let config = BusConfig::read(&args.config)?;
    let [pool] = config.pools.as_slice() else {
        return Err(format!(
            "{}: the relay runs exactly one pool",
            args.config.display()
        ));
    };
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    // Workers first: once the socket accepts, they all exist (bus-bench waits for both).
    let (free_tx, mut free_rx) = mpsc::unbounded_channel();
    for slot in 0..pool.instances {
        free_tx
            .send(Worker::spawn(pool, slot)?)
            .expect("the receiver is alive");
    }
    let listener = Listener::bind(args).await?;
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<String>();
    // Ends only when accepting fails, with the error.
    let serve = async {
        loop {
            let client = match listener.accept().await {
                Ok(client) => client,
                Err(e) => return e,
            };
            let mut worker = free_rx.recv().await.expect("a sender is held here");
            let (free, failed) = (free_tx.clone(), failed_tx.clone());
            tokio::spawn(async move {
                match worker.serve(client).await {
                    Ok(()) => {
                        let _ = free.send(worker);
                    }
                    // No supervision here: a dead worker ends the relay, and the run reports
                    // what it did not get back.
                    Err(e) => {
                        let _ = failed.send(format!("worker {}: {e}", worker.slot));
                    }
                }
            });
        }
    };
    tokio::select! {
        e = serve => Err(format!("accept: {e}")),
        Some(reason) = failed_rx.recv() => Err(reason),
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
    }
}

/// The listening socket.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    async fn bind(args: &RelayArgs) -> Result<Listener, String> {
        if let Some(addr) = &args.tcp {
            let listener = TcpListener::bind(addr.as_str()).await;
            return listener
                .map(Listener::Tcp)
                .map_err(|e| format!("bind {addr}: {e}"));
        }
        let path = args.unix.as_ref().expect("clap requires --tcp or --unix");
        UnixListener::bind(path)
            .map(Listener::Unix)
            .map_err(|e| format!("bind {}: {e}", path.display()))
    }

    /// The next client, with `TCP_NODELAY` as the daemon sets it.
    async fn accept(&self) -> io::Result<Client> {
        match self {
            Listener::Tcp(l) => {
                let (stream, _) = l.accept().await?;
                stream.set_nodelay(true)?;
                Ok(Client::Tcp(stream))
            }
            Listener::Unix(l) => Ok(Client::Unix(l.accept().await?.0)),
        }
    }
}

/// An accepted connection.
enum Client {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// One worker process, its pipes, and a buffer per direction (kept across connections).
struct Worker {
    slot: usize,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Client → worker.
    up_buf: Box<[u8]>,
    /// Worker → client.
    down_buf: Box<[u8]>,
    // Held for `kill_on_drop`: the worker dies with the relay.
    _child: Child,
}

/// Which end of a copy stopped it.
enum End {
    /// The client closed its side or its socket failed: the worker is free again.
    Client,
    /// The worker's pipe closed or failed.
    Worker(io::Error),
}

impl Worker {
    /// Starts slot `slot` of `pool` the way the bus does, through the same process crate: same
    /// program and arguments, the pool and slot in the environment, its own process group, dead
    /// with the relay; its stderr lines are copied to the relay's.
    fn spawn(pool: &PoolConfig, slot: usize) -> Result<Worker, String> {
        let mut child = Spec::new(&pool.command)
            .args(&pool.args)
            .env("CODEX_BUS_POOL", &pool.id)
            .env("CODEX_BUS_SLOT", slot.to_string())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", pool.command.display()))?;
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(capture_stderr(stderr, STDERR_LINE, move |line| {
                eprintln!("worker {slot}: {line}")
            }));
        }
        Ok(Worker {
            slot,
            stdin: child.stdin.take().expect("piped"),
            stdout: child.stdout.take().expect("piped"),
            up_buf: vec![0; CHUNK].into_boxed_slice(),
            down_buf: vec![0; CHUNK].into_boxed_slice(),
            _child: child,
        })
    }

    /// Copies both ways until the client leaves (`Ok`) or the worker's pipes fail (`Err`).
    async fn serve(&mut self, client: Client) -> io::Result<()> {
        let end = match client {
            Client::Tcp(mut s) => {
                let (rx, tx) = s.split();
                self.copy_both(rx, tx).await
            }
            Client::Unix(mut s) => {
                let (rx, tx) = s.split();
                self.copy_both(rx, tx).await
            }
        };
        match end {
            End::Client => Ok(()),
            End::Worker(e) => Err(e),
        }
    }

    async fn copy_both(
        &mut self,
        mut from_client: impl AsyncRead + Unpin,
        mut to_client: impl AsyncWrite + Unpin,
    ) -> End {
        let Worker {
            stdin,
            stdout,
            up_buf,
            down_buf,
            ..
        } = self;
        let up = async {
            loop {
                match from_client.read(up_buf).await {
                    Ok(0) | Err(_) => return End::Client,
                    Ok(n) => {
                        if let Err(e) = stdin.write_all(&up_buf[..n]).await {
                            return End::Worker(e);
                        }
                    }
                }
            }
        };
        let down = async {
            loop {
                match stdout.read(down_buf).await {
                    Ok(0) => return End::Worker(io::ErrorKind::UnexpectedEof.into()),
                    Err(e) => return End::Worker(e),
                    Ok(n) => {
                        if to_client.write_all(&down_buf[..n]).await.is_err() {
                            return End::Client;
                        }
                    }
                }
            }
        };
        tokio::select! {
            end = up => end,
            end = down => end,
        }
    }
}
