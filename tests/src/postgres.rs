//! A throwaway PostgreSQL cluster for the postgres tier: `initdb` into a fresh temporary
//! directory, a server on a free loopback port (and a Unix socket in that directory), killed by
//! pid and removed when the guard drops.
//!
//! It uses the Debian packages' binaries (`/usr/lib/postgresql/<version>/bin`, package
//! `postgresql`). PostgreSQL refuses to run as root, so when the tests run as root (CI does) the
//! binaries run as the `postgres` user (through `runuser`, or `setpriv` where that is missing)
//! and the directory is handed to that user. Durability is off (`fsync=off`): the data dies
//! with the test.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// How long `pg_ctl` may wait for the server to start or stop, in seconds.
const PG_CTL_WAIT_SEC: &str = "30";

/// A running throwaway cluster; dropping it kills the server by pid and removes its directory.
pub struct PgCluster {
    /// The directory holding `data/` (the cluster), `socket/` and `server.log`.
    dir: tempfile::TempDir,
    /// The `bin` directory of the PostgreSQL version in use.
    bin: PathBuf,
    /// The loopback TCP port the server listens on.
    port: u16,
    /// Whether the binaries must run as the `postgres` user (the tests run as root).
    as_postgres: bool,
    /// The postmaster's pid while it runs.
    pid: Option<i32>,
}

impl PgCluster {
    /// Creates and starts a cluster. `Err` says why the tier cannot run here (no PostgreSQL
    /// installed, no `postgres` user while root, initdb or the server failed), with the server
    /// log's tail when it got that far.
    pub fn start() -> Result<PgCluster, String> {
        let bin = find_bin().ok_or_else(|| {
            "no /usr/lib/postgresql/*/bin/initdb: PostgreSQL is not installed (Debian package \
             postgresql)"
                .to_owned()
        })?;
        let as_postgres = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .map_err(|e| format!("cannot tell the effective uid from /proc/self: {e}"))?;
        let dir = tempfile::Builder::new()
            .prefix("pg-cluster-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        std::fs::create_dir(dir.path().join("socket"))
            .map_err(|e| format!("socket directory: {e}"))?;
        if as_postgres {
            let chown = Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(dir.path())
                .output()
                .map_err(|e| format!("chown: {e}"))?;
            if !chown.status.success() {
                return Err(format!(
                    "running as root, but the directory cannot be given to user postgres: {}",
                    String::from_utf8_lossy(&chown.stderr).trim()
                ));
            }
        }
        let port = free_port()?;
        let mut cluster = PgCluster {
            dir,
            bin,
            port,
            as_postgres,
            pid: None,
        };
        let data = cluster.data();
        let init = cluster
            .run("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !init.status.success() {
            return Err(format!("initdb failed: {}", output_text(&init)));
        }
        // Settings go into the cluster's own file, so a restart keeps them.
        let settings = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
            cluster.dir.path().join("socket").display()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut file| file.write_all(settings.as_bytes()))
            .map_err(|e| format!("postgresql.conf: {e}"))?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// The URL of the cluster's `postgres` database as superuser `postgres` over loopback TCP
    /// (trust authentication: no password).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The directory of the server's Unix socket (`.s.PGSQL.<port>`), for libpq-style URLs
    /// such as `postgres://postgres@localhost/postgres?host=<dir>&port=<port>`.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    /// The TCP port (also the socket's number).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown: open sessions are cut), keeping the data. Panics if
    /// `pg_ctl stop` fails.
    pub fn stop(&mut self) {
        let data = self.data();
        let stop = self
            .run("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "fast", "-w", "-t", PG_CTL_WAIT_SEC, "stop"])
            .output()
            .expect("run pg_ctl stop");
        assert!(stop.status.success(), "pg_ctl stop: {}", output_text(&stop));
        self.pid = None;
    }

    /// Starts the server again after [`PgCluster::stop`], on the same port and data. Panics if
    /// it does not start.
    pub fn restart(&mut self) {
        if self.pid.is_some() {
            self.stop();
        }
        if let Err(err) = self.start_server() {
            panic!("restart the PostgreSQL cluster: {err}");
        }
    }

    /// Freezes the server (SIGSTOP to the postmaster, then to each of its processes, by pid):
    /// it still accepts TCP connections in the kernel but answers nothing, like a hung host.
    /// [`PgCluster::thaw`] resumes it; dropping the guard kills it either way.
    pub fn freeze(&self) {
        let pid = self.pid.expect("the server runs");
        let _ = signal::kill(Pid::from_raw(pid), Signal::SIGSTOP);
        for child in children(pid) {
            let _ = signal::kill(Pid::from_raw(child), Signal::SIGSTOP);
        }
    }

    /// Resumes a server stopped by [`PgCluster::freeze`].
    pub fn thaw(&self) {
        let pid = self.pid.expect("the server runs");
        for child in children(pid) {
            let _ = signal::kill(Pid::from_raw(child), Signal::SIGCONT);
        }
        let _ = signal::kill(Pid::from_raw(pid), Signal::SIGCONT);
    }

    /// The cluster's data directory.
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command for PostgreSQL binary `name`, run as `postgres` when the tests run as root,
    /// from the cluster's directory (the `postgres` user may not enter the caller's).
    fn run(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut command = if !self.as_postgres {
            Command::new(&program)
        } else if let Some(runuser) = which("runuser") {
            let mut command = Command::new(runuser);
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            let mut command = Command::new(which("setpriv").unwrap_or_else(|| "setpriv".into()));
            command
                .args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ])
                .arg(&program);
            command
        };
        command.current_dir(self.dir.path()).env_remove("PGDATA");
        command
    }

    /// Starts the server and waits until it accepts connections; records its pid.
    fn start_server(&mut self) -> Result<(), String> {
        let data = self.data();
        let log = self.dir.path().join("server.log");
        let start = self
            .run("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", PG_CTL_WAIT_SEC, "start"])
            .output()
            .map_err(|e| format!("pg_ctl start: {e}"))?;
        if !start.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            return Err(format!(
                "pg_ctl start failed: {}; server log tail:\n{}",
                output_text(&start),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        // postmaster.pid's first line is the postmaster's pid.
        let pid = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().and_then(|l| l.trim().parse().ok()))
            .ok_or("the server started but postmaster.pid has no pid")?;
        self.pid = Some(pid);
        Ok(())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let Some(pid) = self.pid.take() else {
            return;
        };
        // SIGQUIT is PostgreSQL's immediate shutdown: the postmaster ends its backends too.
        // SIGKILL if it is still there after a while (the backends then exit on their own when
        // they notice the postmaster is gone).
        let pid = Pid::from_raw(pid);
        let _ = signal::kill(pid, Signal::SIGQUIT);
        // A frozen server (freeze) acts on SIGQUIT only once it runs again.
        let _ = signal::kill(pid, Signal::SIGCONT);
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid_file = self.data().join("postmaster.pid");
        while pid_file.exists() && signal::kill(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if pid_file.exists() {
            let _ = signal::kill(pid, Signal::SIGKILL);
        }
        // The TempDir removes the directory after this.
    }
}

/// The `bin` directory of the newest PostgreSQL under /usr/lib/postgresql that has `initdb`.
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The pids of the processes whose parent is `parent` (from /proc/*/stat).
fn children(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after
            // the last ')'.
            let ppid: i32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// A TCP port on loopback that was free a moment ago (the kernel's pick).
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// The path of program `name` in a `PATH` directory or /usr/sbin, /sbin (which a `PATH` may
/// lack), if it is there.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| Path::new(&dir).join(name))
        .find(|program| program.is_file())
}

/// A finished command's status, stdout and stderr, for an error message.
fn output_text(output: &Output) -> String {
    format!(
        "{}; stdout: {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}
