//! The store on SQLite: every shared body (tests/common) on a fresh file per test, and the
//! SQLite-only cases (URL forms, WAL on the file).

mod common;

use codex_bus_store::Store;

/// A fresh store file in a temporary directory (kept alive by the returned guard) and its URL.
fn fresh() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("store.sqlite").display());
    (dir, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owner_and_claim() {
    let (_dir, url) = fresh();
    common::owner_and_claim(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_lifecycle() {
    let (_dir, url) = fresh();
    common::lease_lifecycle(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_expiry() {
    let (_dir, url) = fresh();
    common::lease_expiry(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_handles_race() {
    let (_dir, url) = fresh();
    common::two_handles_race(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency() {
    let (_dir, url) = fresh();
    common::idempotency(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_ttl() {
    let (_dir, url) = fresh();
    common::idempotency_ttl(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_open() {
    let (_dir, url) = fresh();
    common::concurrent_open(url).await;
}

#[tokio::test]
async fn the_file_is_in_wal_mode_and_both_url_forms_name_it() {
    let (dir, url) = fresh();
    let store = common::open(&url).await;
    assert_eq!(store.claim("t", "th").await.unwrap(), "t");
    // sqlite:///abs is the same file as sqlite:/abs.
    let path = dir.path().join("store.sqlite");
    let other = common::open(&format!("sqlite://{}", path.display())).await;
    assert_eq!(other.owner("th").await.unwrap().as_deref(), Some("t"));
    // WAL keeps its journal beside the file.
    assert!(dir.path().join("store.sqlite-wal").exists());
}

#[tokio::test]
async fn bad_urls_are_refused_and_not_retryable() {
    for url in ["sqlite:", "mysql://x/y", "/tmp/file.sqlite"] {
        let Err(err) = Store::open(url).await else {
            panic!("{url} opened");
        };
        assert!(!err.retryable(), "{url}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("sqlite:{}/no/such/dir/store.sqlite", dir.path().display());
    let Err(err) = Store::open(&missing).await else {
        panic!("{missing} opened");
    };
    assert!(!err.retryable(), "{err}");
}
