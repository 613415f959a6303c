//! The `codex-stdio-bus` executable.

#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use codex_bus_config::{Config, TransportMode, WebSocketConfig};
use codex_bus_process::{cloexec_inherited_fds, fd_limit};
use codex_stdio_bus::cli::{Cli, Command, RunArgs};
use codex_stdio_bus::daemon::Listeners;
use codex_stdio_bus::error::{Error, Kind};
use codex_stdio_bus::io::listen::Endpoint;
use codex_stdio_bus::{admin, daemon, defaults, logging, signals};

fn main() -> ExitCode {
    cloexec_inherited_fds();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { config }) => check(config.as_deref()),
        Some(Command::Status { metrics, cacert }) => status(&metrics, cacert.as_deref()),
        Some(Command::Reload { metrics, cacert }) => {
            control("reload", &metrics, "/reload", cacert.as_deref())
        }
        Some(Command::Restart {
            pool,
            metrics,
            cacert,
        }) => {
            let path = format!("/restart?pool={}", admin::encode(&pool));
            control("restart", &metrics, &path, cacert.as_deref())
        }
        None => run(cli.run),
    }
}

/// `status`: a running daemon's slots as a table.
fn status(address: &str, ca_file: Option<&Path>) -> ExitCode {
    let document = admin::fetch(address, "/status", ca_file).and_then(|body| {
        serde_json::from_str(&body)
            .map_err(|e| Error::because(Kind::Admin, "bad /status document", e))
    });
    match document {
        Ok(document) => {
            print!("{}", admin::status::table(&document));
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("codex-stdio-bus status: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `reload` and `restart`: posts to `path` and prints the outcome, on stdout when it succeeded
/// (exit status 0), else on stderr (1).
fn control(verb: &str, address: &str, path: &str, ca_file: Option<&Path>) -> ExitCode {
    match admin::submit(address, path, ca_file) {
        Ok(answer) => {
            let report = admin::report(&answer);
            if report.success {
                print!("{}", report.text);
                ExitCode::SUCCESS
            } else {
                eprint!("codex-stdio-bus {verb}: {}", report.text);
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("codex-stdio-bus {verb}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `check`: validate, print the effective config, and refuse (like `run`) a pool whose program
/// cannot be found here, or whose cgroup limits this host cannot apply.
fn check(path: Option<&Path>) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(error) => return fail(&error),
    };
    println!("{}", config.to_pretty_json());
    let checks = daemon::check_commands(&config)
        .and_then(|()| daemon::check_auth(&config))
        .and_then(|()| daemon::check_tls(&config))
        .and_then(|()| daemon::check_cgroups(&config));
    match checks {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// Reports an error that stops the program before the log exists, and its exit status.
fn fail(error: &Error) -> ExitCode {
    eprintln!("codex-stdio-bus: {error}");
    ExitCode::from(error.exit_status())
}

/// Runs the daemon.
fn run(args: RunArgs) -> ExitCode {
    let mut config = match load(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => return fail(&error),
    };
    config
        .websocket
        .extend(args.ws.iter().map(|listen| WebSocketConfig::on(listen)));
    let endpoint = match endpoint(&args, &config) {
        Ok(endpoint) => endpoint,
        Err(error) => return fail(&error),
    };
    let _log = logging::init(args.log_level.as_deref(), args.log_format);
    // What a dead worker leaves outside its process group comes back to the daemon, which kills
    // it (supervisor/orphans.rs), instead of running on under init.
    if let Err(error) = codex_bus_process::adopt_orphans() {
        tracing::warn!(%error, "cannot become the child subreaper; a dead worker's setsid processes may outlive it");
    }
    match fd_limit::raise() {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
    let metrics = args
        .metrics
        .clone()
        .or_else(|| config.metrics.listen.clone());
    // One thread: the router's work per message is a few hundred nanoseconds, and on a small
    // machine cross-thread wake-ups would cost more than they buy. Workers run in their own
    // processes. This thread also lives as long as the daemon, which PDEATHSIG relies on.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("codex-stdio-bus: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        // Signals first: from here a SIGTERM during startup drains instead of killing.
        let shutdown = signals::shutdown()?;
        // Bind before anything starts: a bad address must cost no worker.
        let listeners =
            Listeners::bind_all(endpoint.as_ref(), &config.websocket, metrics.as_deref())
                .await?
                .from_flags(
                    args.ws.len(),
                    args.stdio || args.unix.is_some() || args.tcp.is_some(),
                    args.metrics.is_some(),
                );
        daemon::run(config, listeners, shutdown).await
    });
    // The runtime goes first (its tasks may still log), then the log guard flushes every line.
    drop(runtime);
    match outcome {
        Ok(outcome) => ExitCode::from(outcome.exit_status()),
        // Logged once, at the level its fault calls for (the log is the daemon's stderr); a
        // fatal error still reaches stderr when the log filter hides that level.
        Err(error) => {
            if !error.log() {
                eprintln!("codex-stdio-bus: {error}");
            }
            ExitCode::from(error.exit_status())
        }
    }
}

/// The config from `path`, or the built-in default.
fn load(path: Option<&Path>) -> Result<Config, Error> {
    match path {
        Some(path) => Config::load(path).map_err(|e| Error::new(Kind::Config, e.to_string())),
        None => defaults::built_in(),
    }
}

/// The NDJSON endpoint: a CLI flag wins over `transport.mode`/`transport.address` in the file.
/// `None` when WebSocket listeners are configured and nothing asks for another endpoint: stdio
/// is the default only without them (it would end the daemon at stdin's end).
fn endpoint(args: &RunArgs, config: &Config) -> Result<Option<Endpoint>, Error> {
    if let Some(path) = &args.unix {
        return Ok(Some(Endpoint::Unix(path.clone())));
    }
    if let Some(address) = &args.tcp {
        return Ok(Some(Endpoint::Tcp(address.clone())));
    }
    if args.stdio {
        return Ok(Some(Endpoint::Stdio));
    }
    let address = config.transport.address.clone();
    match (config.transport.mode, address) {
        (TransportMode::Stdio, _) if !config.websocket.is_empty() => Ok(None),
        (TransportMode::Stdio, _) => Ok(Some(Endpoint::Stdio)),
        (TransportMode::Unix, Some(path)) => Ok(Some(Endpoint::Unix(path.into()))),
        (TransportMode::Tcp, Some(address)) => Ok(Some(Endpoint::Tcp(address))),
        (mode, None) => Err(Error::new(Kind::Config, format!(
            "transport.mode is {mode:?} but no address is set: pass --unix PATH or --tcp HOST:PORT, or set transport.address"
        ))),
    }
}
