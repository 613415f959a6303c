//! Command-line interface.

use std::path::PathBuf;

use clap::Parser;

/// Command-line arguments of `codex-worker`: how it runs and bridges onto its `codex app-server`
/// children (see `docs/codex-worker.md`).
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Cli {
    /// The child command, split on whitespace (no shell quoting); never pass `--listen`.
    #[arg(long, default_value = "codex app-server")]
    pub codex_cmd: String,
    /// Directory of per-slot state: `<dir>/<pool>/slot-<n>/codex-home` is the child's
    /// CODEX_HOME. Default: $XDG_STATE_HOME/codex-worker, else ~/.local/state/codex-worker.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Files (e.g. config.toml, auth.json) copied into CODEX_HOME before every child start.
    #[arg(long)]
    pub seed_home: Option<PathBuf>,
    /// Methods to allow besides the thread-scoped ones: an exact name, `prefix/*` or `*`
    /// (repeatable). Process-global methods let sessions see each other's state.
    #[arg(long = "allow-method", value_name = "PATTERN")]
    pub allow_methods: Vec<String>,
    /// Grant a sandbox mode beyond `read-only` and `workspace-write`: `MODE` for every
    /// session, `TENANT=MODE` for one tenant (repeatable). `danger-full-access` also permits
    /// any `config` override and `thread/shellCommand`.
    #[arg(long = "allow-sandbox", value_name = "[TENANT=]MODE")]
    pub allow_sandboxes: Vec<String>,
    /// Seconds the child gets to answer one request.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub request_timeout_sec: u64,
    /// Seconds a drain (SIGTERM or end of input) waits for active turns before interrupting
    /// them; keep it below the bus's `drain_timeout_sec`.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(..=31_536_000))]
    pub drain_timeout_sec: u64,
    /// Seconds before an unanswered approval is declined (0: wait, as Codex does).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(..=31_536_000))]
    pub approval_timeout_sec: u64,
    /// Seconds of silence after which a session's approvals are declined, its turns interrupted
    /// and its threads unsubscribed (0: never).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(..=31_536_000))]
    pub session_idle_sec: u64,
    /// Child restarts allowed within the window; one more and the worker exits with status 3.
    #[arg(long, default_value_t = 5)]
    pub max_child_restarts: u32,
    /// The window of `--max-child-restarts`, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub child_restart_window_sec: u64,
    /// Most requests in flight to the child (Codex queues 128 and then refuses).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight: u64,
    /// Bytes queued toward the bus per session before its deltas are merged or dropped.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub session_queue_bytes: usize,
    /// `clientInfo.name` the worker gives Codex (part of its user agent).
    #[arg(long, default_value = "codex_worker")]
    pub client_name: String,
    /// Initialize the child with `experimentalApi: true`.
    #[arg(long)]
    pub experimental_api: bool,
    /// Give each session a child of its own (spawned on its first request, CODEX_HOME under
    /// `<slot>/sessions/<hash>`) instead of one child shared by every session; a session of a
    /// tenant the bus names shares its tenant's child (`<slot>/tenants/<hash>`).
    #[arg(long)]
    pub child_per_session: bool,
    /// Most threads whose owner the worker remembers, per child; beyond it the least recently
    /// used ones without a turn or waiting request are forgotten.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_threads: u64,
    /// Seconds a thread without a turn or waiting request stays owned after its last use
    /// (0: until the --max-threads bound forgets it).
    #[arg(long, default_value_t = 7 * 24 * 3600, value_parser = clap::value_parser!(u64).range(..=31_536_000))]
    pub thread_ttl_sec: u64,
    /// With --child-per-session: most children alive at once; the least recently used idle one
    /// makes room for a new session, and when all are busy the new session is refused.
    #[arg(long, default_value_t = 8, requires = "child_per_session",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_children: u64,
    /// With --child-per-session: seconds a child with no active turn and no request in flight
    /// lives on before it is stopped (0: until it is evicted).
    #[arg(long, default_value_t = 300, requires = "child_per_session", value_parser = clap::value_parser!(u64).range(..=31_536_000))]
    pub child_idle_sec: u64,
    /// Cluster mode (docs/node-loss.md): the shared store of thread owners, leases and
    /// idempotency records, `sqlite:PATH` (one host) or `postgres://USER@HOST:PORT/DB`; or
    /// `env:NAME` to read the URL from the environment variable NAME (keeps a password off the
    /// command line).
    #[arg(long, requires = "shared_dir")]
    pub store: Option<String>,
    /// Cluster mode: the directory every node shares (a shared filesystem), where rollouts are
    /// published for other nodes to resume.
    #[arg(long, requires = "store")]
    pub shared_dir: Option<PathBuf>,
    /// Cluster mode: this node's name in lease holders (`NODE/POOL/SLOT`) and `thread_leased`
    /// errors; unique per daemon. Default: the host name.
    #[arg(long, requires = "store")]
    pub node: Option<String>,
    /// Cluster mode: seconds a lease lives after its last renewal (renewed every third of it):
    /// the bound on how long a dead node's threads stay locked.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=86_400))]
    pub lease_ttl_sec: u64,
    /// Cluster mode: seconds without a turn or request after which a thread's lease is released,
    /// so a user the balancer moves elsewhere is not locked out by an idle holder.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub lease_idle_sec: u64,
    /// Cluster mode: seconds an idempotency key is remembered.
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub idempotency_ttl_sec: u64,
    /// Cluster mode: largest reply kept for replays, in bytes; a retry of a request whose reply
    /// was larger gets `idempotent_reply_too_large`.
    #[arg(long, default_value_t = 65_536)]
    pub idempotency_max_reply_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_server_options_parse() {
        let cli = Cli::try_parse_from([
            "codex-worker",
            "--codex-cmd",
            "fake child",
            "--allow-method",
            "config/*",
            "--allow-method",
            "fs/readFile",
            "--allow-sandbox",
            "ops=danger-full-access",
        ])
        .unwrap();
        assert_eq!(cli.codex_cmd, "fake child");
        assert_eq!(cli.allow_methods, ["config/*", "fs/readFile"]);
        assert_eq!(cli.allow_sandboxes, ["ops=danger-full-access"]);
        assert_eq!(cli.request_timeout_sec, 30);
        assert_eq!((cli.max_threads, cli.thread_ttl_sec), (10_000, 604_800));
        assert!(Cli::try_parse_from(["codex-worker", "--max-threads", "0"]).is_err());
        // Durations a clock can add without overflowing.
        for flag in [
            "--drain-timeout-sec",
            "--approval-timeout-sec",
            "--session-idle-sec",
            "--child-restart-window-sec",
            "--thread-ttl-sec",
            "--request-timeout-sec",
            "--lease-ttl-sec",
            "--lease-idle-sec",
            "--idempotency-ttl-sec",
        ] {
            let huge = u64::MAX.to_string();
            assert!(
                Cli::try_parse_from(["codex-worker", flag, huge.as_str()]).is_err(),
                "{flag}"
            );
        }
    }

    #[test]
    fn child_per_session_options_parse_and_need_the_switch() {
        let shared = Cli::try_parse_from(["codex-worker"]).unwrap();
        assert!(!shared.child_per_session);
        assert_eq!(shared.max_children, 8);
        assert_eq!(shared.child_idle_sec, 300);
        let cli = Cli::try_parse_from([
            "codex-worker",
            "--child-per-session",
            "--max-children",
            "2",
            "--child-idle-sec",
            "0",
        ])
        .unwrap();
        assert!(cli.child_per_session);
        assert_eq!(cli.max_children, 2);
        assert_eq!(cli.child_idle_sec, 0);
        assert!(Cli::try_parse_from(["codex-worker", "--max-children", "2"]).is_err());
        assert!(Cli::try_parse_from([
            "codex-worker",
            "--child-per-session",
            "--max-children",
            "0"
        ])
        .is_err());
    }

    #[test]
    fn the_mock_lives_in_codex_mock() {
        // `--backend mock`, `--stubborn` and the fake child moved to the `codex-mock` binary.
        for args in [
            &["codex-worker", "--backend", "app-server"][..],
            &["codex-worker", "--stubborn"],
            &["codex-worker", "mock-app-server"],
            &["codex-worker", "--deltas", "3"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
