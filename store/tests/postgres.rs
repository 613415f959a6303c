//! The store on PostgreSQL: every shared body (tests/common) against a throwaway cluster of its
//! own (codex_bus_tests::postgres::PgCluster), and the server going away and coming back.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use codex_bus_store::{Acquire, Store};
use codex_bus_tests::postgres::PgCluster;

/// Starts a cluster, runs `body` with its URL on a multi-thread runtime, then drops the cluster
/// (killing the server) whatever the outcome.
fn with_cluster<F, Fut>(body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let cluster =
        PgCluster::start().expect("the postgres tier runs only where PostgreSQL is installed");
    runtime().block_on(body(cluster.url()));
}

/// A runtime with several threads, so racing handles really run at once.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
#[ignore = "tier postgres: needs PostgreSQL (Debian package `postgresql`); .ci/run installs it and runs this tier"]
fn owner_and_claim() {
    with_cluster(common::owner_and_claim);
}

#[test]
#[ignore = "tier postgres: needs PostgreSQL (Debian package `postgresql`); .ci/run installs it and runs this tier"]
fn lease_lifecycle() {
    with_cluster(common::lease_lifecycle);
}

#[test]
#[ignore = "tier postgres: needs PostgreSQL (Debian package `postgresql`); .ci/run installs it and runs this tier"]
fn lease_expiry() {
    with_cluster(common::lease_expiry);
}

#[test]
#[ignore = "tier postgres: needs PostgreSQL (Debian package `postgresql`); .ci/run installs it and runs this tier"]
fn two_handles_race() {
    with_cluster(common::two_handles_race);
}

#[test]
#[ignore = "tier postgres: needs PostgreSQL (Debian package `postgresql`); .ci/run installs it and runs this tier"]
fn idempotency() {
    with_cluster(common::idempotency);
}

#[test]
#[ignore = "tier postgres: needs PostgreSQL (Debian package `postgresql`); .ci/run installs it and runs this tier"]
fn idempotency_ttl() {
    with_cluster(common::idempotency_ttl);
}

#[test]
#[ignore = "tier postgres: needs PostgreSQL (Debian package `postgresql`); .ci/run installs it and runs this tier"]
fn concurrent_open() {
    with_cluster(common::concurrent_open);
}

/// The client survives the server going away: while it is down a call fails promptly with a
/// retryable error, and once it is back the next call reconnects on its own. Over the Unix
/// socket (libpq-style `?host=<dir>`), which is how a co-located server is reached.
#[test]
#[ignore = "tier postgres: needs PostgreSQL (Debian package `postgresql`); .ci/run installs it and runs this tier"]
fn the_client_reconnects_after_the_server_restarts() {
    let mut cluster =
        PgCluster::start().expect("the postgres tier runs only where PostgreSQL is installed");
    let url = format!(
        "postgres://postgres@localhost/postgres?host={}&port={}",
        cluster.socket_dir().display(),
        cluster.port()
    );
    let rt = runtime();
    let store = rt.block_on(common::open(&url));
    let epoch = match rt.block_on(store.acquire("th", "n/p/0", Duration::from_secs(60))) {
        Ok(Acquire::Granted { epoch, .. }) => epoch,
        other => panic!("first grant: {other:?}"),
    };

    cluster.stop();
    for _ in 0..2 {
        let start = Instant::now();
        let err = rt
            .block_on(store.owner("th"))
            .expect_err("the server is down");
        assert!(err.retryable(), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "{err} after {:?}",
            start.elapsed()
        );
    }

    cluster.restart();
    // The lease survived in the database; the store reconnects on this call.
    let lost = rt
        .block_on(store.renew(
            "n/p/0",
            &[("th".to_owned(), epoch)],
            Duration::from_secs(60),
        ))
        .unwrap();
    assert!(lost.is_empty(), "{lost:?}");
    assert_eq!(rt.block_on(store.claim("t", "th")).unwrap(), "t");
    drop(store);
    drop(rt);
    drop(cluster);
}

/// A store opened while the server is down fails retryably, naming no password.
#[test]
#[ignore = "tier postgres: needs PostgreSQL (Debian package `postgresql`); .ci/run installs it and runs this tier"]
fn opening_a_stopped_server_is_retryable() {
    let mut cluster =
        PgCluster::start().expect("the postgres tier runs only where PostgreSQL is installed");
    let url = cluster.url().replace("postgres@", "postgres:pa55word@");
    cluster.stop();
    let rt = runtime();
    let Err(err) = rt.block_on(Store::open(&url)) else {
        panic!("the server is down");
    };
    assert!(err.retryable(), "{err}");
    assert!(!err.to_string().contains("pa55word"), "{err}");
    cluster.restart();
    rt.block_on(common::open(&url));
}

/// A hung server (frozen, not gone: the kernel still accepts the connection) costs a call at
/// most the call timeout, with a retryable error; once it answers again the store reconnects.
#[test]
#[ignore = "tier postgres: needs PostgreSQL (Debian package `postgresql`); .ci/run installs it and runs this tier"]
fn a_hung_server_times_out_retryably() {
    let cluster =
        PgCluster::start().expect("the postgres tier runs only where PostgreSQL is installed");
    let rt = runtime();
    let store = rt.block_on(common::open(&cluster.url()));
    assert_eq!(rt.block_on(store.claim("t", "th")).unwrap(), "t");

    cluster.freeze();
    let start = Instant::now();
    let outcome = rt.block_on(store.owner("th"));
    let took = start.elapsed();
    cluster.thaw();
    let err = outcome.expect_err("the server is frozen");
    assert!(err.retryable(), "{err}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(7),
        "{err} after {took:?}"
    );

    assert_eq!(
        rt.block_on(store.owner("th")).unwrap().as_deref(),
        Some("t")
    );
}
