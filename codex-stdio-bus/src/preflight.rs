//! Layer 5, preflight: what a config needs before it is put in force, checked the same way by
//! `run` at start, by a reload before it applies anything, and by `codex-stdio-bus check`: every
//! pool's program found, the credentials and certificates loaded, and no listener open beyond
//! loopback without authentication (secure by default).
//!
//! Imports: the auth leaf, the TLS loader (io) and the error leaf.

use std::sync::Arc;
use std::time::Duration;

use codex_bus_config::{AuthConfig, Config, PoolConfig, TransportMode};
use codex_bus_process::resolve_command;

use crate::auth::Authenticator;
use crate::error::{Error, Kind};
use crate::io::tls::Tls;

/// Refuses a pool whose program does not exist here (looked up on the PATH its own `env` gives it,
/// else the daemon's) or whose `cwd` is not a directory, rather than crash-looping it: `run` before it
/// spawns anything, and `codex-stdio-bus check`, so the two agree.
///
/// # Errors
///
/// [`Kind::Config`] naming the first such pool (`pools[i].command` or `pools[i].cwd`).
pub fn check_commands(config: &Config) -> Result<(), Error> {
    for (i, pool) in config.pools.iter().enumerate() {
        check_command(i, pool)?;
    }
    Ok(())
}

/// [`check_commands`] for one pool, `pools[i]`: a rolling restart of it checks this before it
/// stops a worker, so that a program removed meanwhile leaves the pool serving.
///
/// # Errors
///
/// As [`check_commands`].
pub(crate) fn check_command(i: usize, pool: &PoolConfig) -> Result<(), Error> {
    if let Some(cwd) = pool.cwd.as_deref().filter(|dir| !dir.is_dir()) {
        return Err(Error::new(
            Kind::Config,
            format!(
                "pools[{i}].cwd: '{}' (pool '{}') is not a directory",
                cwd.display(),
                pool.id
            ),
        ));
    }
    // The worker's own PATH, if its pool sets one, is where its command will be looked up.
    let search_path = pool.env.get("PATH").map(std::ffi::OsStr::new);
    if resolve_command(&pool.command, pool.cwd.as_deref(), search_path).is_none() {
        return Err(Error::new(
            Kind::Config,
            format!(
                "pools[{i}].command: '{}' (pool '{}') is not an executable file or not on PATH",
                pool.command, pool.id
            ),
        ));
    }
    Ok(())
}

/// The verifier `auth` configures (its files read and checked now), if any; `run` and
/// `codex-stdio-bus check` both build it, so the two agree.
///
/// # Errors
///
/// [`Kind::Config`]: an unreadable or invalid `auth.tokens_file`, the same token twice, an
/// unreadable or short JWT secret.
pub(crate) fn authenticator(config: &Config) -> Result<Option<Arc<Authenticator>>, Error> {
    match &config.auth {
        Some(auth) => Authenticator::load(auth)
            .map(|auth| Some(Arc::new(auth)))
            .map_err(|message| Error::new(Kind::Config, message)),
        None => Ok(None),
    }
}

/// The TLS of each listener that has it.
pub(crate) struct Tlses {
    /// `transport.tls`, for the TCP listener.
    pub tcp: Option<Arc<Tls>>,
    /// `websocket[i].tls`, in the config's order.
    pub websocket: Vec<Option<Arc<Tls>>>,
    /// `metrics.tls`, for the admin endpoint.
    pub admin: Option<Arc<Tls>>,
}

/// Loads the TLS files of every listener (`transport.tls`, `websocket[].tls`, `metrics.tls`), as
/// `run` does
/// before it starts, so `codex-stdio-bus check` and `run` agree.
///
/// # Errors
///
/// As `run` fails: [`Kind::Config`] naming the field and the file (unreadable, no certificate,
/// no key, or a key that does not match the certificate).
pub fn check_tls(config: &Config) -> Result<(), Error> {
    tls(config).map(drop)
}

/// See [`check_tls`]. A client gets as long to complete its TLS handshake as it then gets to
/// authenticate (`auth.handshake_timeout_sec`, 10 s without `auth`). NDJSON offers no ALPN; a
/// WebSocket listener and the admin endpoint offer `http/1.1`, the only HTTP they speak.
pub(crate) fn tls(config: &Config) -> Result<Tlses, Error> {
    let timeout = Duration::from_secs(
        config
            .auth
            .as_ref()
            .map_or(AuthConfig::default().handshake_timeout_sec, |auth| {
                auth.handshake_timeout_sec
            }),
    );
    let tcp = match &config.transport.tls {
        Some(files) => Some(Arc::new(Tls::load(
            "transport.tls",
            files,
            Vec::new(),
            timeout,
        )?)),
        None => None,
    };
    let websocket = config
        .websocket
        .iter()
        .enumerate()
        .map(|(i, listener)| match &listener.tls {
            Some(files) => Tls::load(
                &format!("websocket[{i}].tls"),
                files,
                vec![b"http/1.1".to_vec()],
                timeout,
            )
            .map(|tls| Some(Arc::new(tls))),
            None => Ok(None),
        })
        .collect::<Result<_, _>>()?;
    let admin = match &config.metrics.tls {
        Some(files) => Some(Arc::new(Tls::load(
            "metrics.tls",
            files,
            vec![b"http/1.1".to_vec()],
            timeout,
        )?)),
        None => None,
    };
    Ok(Tlses {
        tcp,
        websocket,
        admin,
    })
}

/// Checks, for `codex-stdio-bus check`, what `run` checks of `auth` before it starts: the files
/// it names are readable and valid, and the listeners the config names (`transport.address` in
/// tcp mode, `metrics.listen`; flags may name others at run time) are not open beyond loopback
/// without authentication. An address that does not resolve here is left to `run`.
///
/// # Errors
///
/// As `run` fails: [`Kind::Config`] naming the field, the file or the listener.
pub fn check_auth(config: &Config) -> Result<(), Error> {
    let auth = authenticator(config)?;
    let resolve = |address: &str| {
        use std::net::ToSocketAddrs;
        address.to_socket_addrs().ok().and_then(|mut a| a.next())
    };
    let tcp = match (&config.transport.mode, &config.transport.address) {
        (TransportMode::Tcp, Some(address)) => resolve(address),
        _ => None,
    };
    let admin = config.metrics.listen.as_deref().and_then(resolve);
    let websocket: Vec<std::net::SocketAddr> = config
        .websocket
        .iter()
        .filter_map(|listener| resolve(&listener.listen))
        .collect();
    let addresses = Addresses {
        tcp,
        admin,
        websocket: &websocket,
    };
    secure_by_default(config, auth.as_deref(), addresses)
}

/// The addresses of the listeners [`secure_by_default`] judges.
pub(crate) struct Addresses<'a> {
    /// The TCP NDJSON listener, if any.
    pub tcp: Option<std::net::SocketAddr>,
    /// The admin endpoint, if any.
    pub admin: Option<std::net::SocketAddr>,
    /// Every WebSocket listener.
    pub websocket: &'a [std::net::SocketAddr],
}

/// Secure by default (as `codex app-server` refuses a non-loopback listener without auth):
/// refuses a TCP or WebSocket client listener on a non-loopback address unless its clients must
/// authenticate, a metrics listener on one unless `metrics.bearer_sha256` is set, and an `auth`
/// that gives TCP or WebSocket clients no credential; `auth.insecure_no_auth` lifts the first two
/// (with a WARN) and the third.
///
/// # Errors
///
/// [`Kind::Config`] (exit status 78) saying which listener and what to configure.
pub(crate) fn secure_by_default(
    config: &Config,
    auth: Option<&Authenticator>,
    addresses: Addresses<'_>,
) -> Result<(), Error> {
    let Addresses {
        tcp,
        admin,
        websocket,
    } = addresses;
    let insecure = config.auth.as_ref().is_some_and(|a| a.insecure_no_auth);
    let bearers = auth.is_some_and(Authenticator::accepts_bearers);
    let clients = tcp.map(|address| ("TCP", address));
    let clients = clients
        .into_iter()
        .chain(websocket.iter().map(|&address| ("WebSocket", address)));
    for (kind, address) in clients {
        if auth.is_some() && !bearers && !insecure {
            return Err(Error::new(
                Kind::Config,
                format!(
                    "auth is configured but gives {kind} clients no credential to present: set \
                     auth.tokens, auth.tokens_file or auth.jwt"
                ),
            ));
        }
        if !is_loopback(address) && !bearers {
            if !insecure {
                return Err(Error::new(
                    Kind::Config,
                    format!(
                        "refusing to start a {kind} listener on the non-loopback address \
                         {address} without authentication: set auth.tokens, auth.tokens_file or \
                         auth.jwt (or auth.insecure_no_auth: true, on a network you trust \
                         entirely)"
                    ),
                ));
            }
            tracing::warn!(%address, "auth.insecure_no_auth: {kind} clients on a non-loopback address are not authenticated");
        }
    }
    if let Some(address) = admin {
        if !is_loopback(address) && config.metrics.bearer_sha256.is_none() {
            if !insecure {
                return Err(Error::new(
                    Kind::Config,
                    format!(
                        "refusing to start the metrics listener on the non-loopback address \
                         {address} without authentication: set metrics.bearer_sha256 (or \
                         auth.insecure_no_auth: true, on a network you trust entirely)"
                    ),
                ));
            }
            tracing::warn!(%address, "auth.insecure_no_auth: /metrics and /status on a non-loopback address are open to anyone");
        } else if !is_loopback(address) && config.metrics.tls.is_none() {
            // Allowed (a TLS proxy or a private network may carry it), but said once.
            tracing::warn!(%address, "the metrics listener is plain HTTP on a non-loopback address: its bearer token (and the dashboard's login) crosses the network in clear; set metrics.tls or put it behind TLS");
        }
    }
    Ok(())
}

/// Whether `address` is loopback (an IPv4-mapped IPv6 address counts as its IPv4 address).
pub(crate) fn is_loopback(address: std::net::SocketAddr) -> bool {
    address.ip().to_canonical().is_loopback()
}
