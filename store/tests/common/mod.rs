//! Test bodies shared by both backends: tests/sqlite.rs runs each on a fresh SQLite file,
//! tests/postgres.rs on a fresh throwaway PostgreSQL cluster. Each takes the store URL and opens
//! as many handles as it needs (two handles on one URL stand for two processes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_store::{Acquire, Begin, Finished, Published, Store};

/// A lease TTL no test outlives.
const LONG: Duration = Duration::from_secs(30);
/// A TTL short enough to watch expire; [`PAST_SHORT`] is safely past it.
const SHORT: Duration = Duration::from_millis(300);
/// Sleeping this long makes a [`SHORT`] lease or record expire.
const PAST_SHORT: Duration = Duration::from_millis(500);

/// Opens `url`, panicking with the store's error.
pub async fn open(url: &str) -> Store {
    match Store::open(url).await {
        Ok(store) => store,
        Err(err) => panic!("open {url}: {err}"),
    }
}

/// The epoch of a grant; panics on Held.
fn granted(outcome: Acquire) -> (u64, Option<Published>) {
    match outcome {
        Acquire::Granted { epoch, published } => (epoch, published),
        held => panic!("expected a grant, got {held:?}"),
    }
}

/// Owners: unknown, claimed once, kept against a second tenant; a lease alone records none.
pub async fn owner_and_claim(url: String) {
    let store = open(&url).await;
    assert_eq!(store.owner("th-owner").await.unwrap(), None);
    assert_eq!(store.claim("alice", "th-owner").await.unwrap(), "alice");
    assert_eq!(store.claim("bob", "th-owner").await.unwrap(), "alice");
    assert_eq!(
        store.owner("th-owner").await.unwrap().as_deref(),
        Some("alice")
    );

    // acquire creates the row of an unknown thread without an owner; claim then sets it.
    granted(store.acquire("th-leased", "n/p/0", LONG).await.unwrap());
    assert_eq!(store.owner("th-leased").await.unwrap(), None);
    assert_eq!(store.claim("bob", "th-leased").await.unwrap(), "bob");
    assert_eq!(
        store.owner("th-leased").await.unwrap().as_deref(),
        Some("bob")
    );
}

/// Leases without expiry: grant, held, re-grant to the same holder, fenced publish, release,
/// takeover with the last published rollout, renew reporting lost leases.
pub async fn lease_lifecycle(url: String) {
    let store = open(&url).await;
    let (a, b) = ("nodeA/codex/0", "nodeB/codex/1");

    let (e1, published) = granted(store.acquire("th", a, LONG).await.unwrap());
    assert_eq!((e1, published), (1, None));
    match store.acquire("th", b, LONG).await.unwrap() {
        Acquire::Held { holder, expires_in } => {
            assert_eq!(holder, a);
            assert!(
                expires_in <= LONG && expires_in > LONG / 2,
                "{expires_in:?}"
            );
        }
        granted => panic!("the thread is a's: {granted:?}"),
    }

    // The same holder acquiring again gets a new epoch: its old token is dead.
    let (e2, _) = granted(store.acquire("th", a, LONG).await.unwrap());
    assert_eq!(e2, 2);
    assert!(!store
        .publish("th", a, e1, "sessions/old.jsonl")
        .await
        .unwrap());
    assert!(store
        .publish("th", a, e2, "sessions/r-th.jsonl")
        .await
        .unwrap());
    assert!(!store
        .publish("th", b, e2, "sessions/b.jsonl")
        .await
        .unwrap());

    // Releasing with a stale epoch or another holder's name does nothing.
    store.release("th", a, e1).await.unwrap();
    store.release("th", b, e2).await.unwrap();
    assert!(matches!(
        store.acquire("th", b, LONG).await.unwrap(),
        Acquire::Held { .. }
    ));
    store.release("th", a, e2).await.unwrap();
    store.release("th", a, e2).await.unwrap();
    assert!(!store
        .publish("th", a, e2, "sessions/late.jsonl")
        .await
        .unwrap());

    let (e3, published) = granted(store.acquire("th", b, LONG).await.unwrap());
    assert_eq!(e3, 3);
    assert_eq!(
        published,
        Some(Published {
            epoch: e2,
            rollout: "sessions/r-th.jsonl".to_owned()
        })
    );

    // Renew: a's lease is gone, b's lives; a thread never seen is lost too.
    let lost = store
        .renew(a, &[("th".to_owned(), e2)], LONG)
        .await
        .unwrap();
    assert_eq!(lost, ["th"]);
    let lost = store
        .renew(
            b,
            &[("th".to_owned(), e3), ("th-never".to_owned(), 1)],
            LONG,
        )
        .await
        .unwrap();
    assert_eq!(lost, ["th-never"]);
    assert!(store.renew(b, &[], LONG).await.unwrap().is_empty());
    assert!(store
        .publish("th", b, e3, "sessions/r-th-2.jsonl")
        .await
        .unwrap());
}

/// Expiry: an expired lease cannot publish and is taken over (new epoch); the old holder's
/// renew then reports it lost; a renewed lease outlives its first TTL.
pub async fn lease_expiry(url: String) {
    let store = open(&url).await;
    let (a, b) = ("nodeA/codex/0", "nodeB/codex/0");

    let (e1, _) = granted(store.acquire("th-x", a, SHORT).await.unwrap());
    match store.acquire("th-x", b, LONG).await.unwrap() {
        Acquire::Held { holder, expires_in } => {
            assert_eq!(holder, a);
            assert!(expires_in <= SHORT, "{expires_in:?}");
        }
        granted => panic!("a's lease is live: {granted:?}"),
    }
    tokio::time::sleep(PAST_SHORT).await;
    assert!(!store
        .publish("th-x", a, e1, "sessions/a.jsonl")
        .await
        .unwrap());
    let (e2, _) = granted(store.acquire("th-x", b, LONG).await.unwrap());
    assert!(e2 > e1);
    let lost = store
        .renew(a, &[("th-x".to_owned(), e1)], LONG)
        .await
        .unwrap();
    assert_eq!(lost, ["th-x"]);
    assert!(store
        .publish("th-x", b, e2, "sessions/b.jsonl")
        .await
        .unwrap());

    // Renewed within its TTL, a lease stays held past the first TTL.
    let (e, _) = granted(store.acquire("th-r", a, SHORT).await.unwrap());
    let start = Instant::now();
    while start.elapsed() < SHORT * 2 {
        tokio::time::sleep(SHORT / 3).await;
        let lost = store
            .renew(a, &[("th-r".to_owned(), e)], SHORT)
            .await
            .unwrap();
        assert!(lost.is_empty(), "{lost:?}");
    }
    assert!(matches!(
        store.acquire("th-r", b, LONG).await.unwrap(),
        Acquire::Held { .. }
    ));
    assert!(store
        .publish("th-r", a, e, "sessions/r.jsonl")
        .await
        .unwrap());
}

/// Two handles (two processes) race for the same leases: exactly one holder wins each thread,
/// and every loser is told that winner's name.
pub async fn two_handles_race(url: String) {
    let stores = [Arc::new(open(&url).await), Arc::new(open(&url).await)];
    for round in 0..5 {
        let thread = format!("th-race-{round}");
        let mut tasks = Vec::new();
        for contender in 0..8 {
            let store = Arc::clone(&stores[contender % 2]);
            let thread = thread.clone();
            tasks.push(tokio::spawn(async move {
                let holder = format!("node{contender}/codex/0");
                let outcome = store.acquire(&thread, &holder, LONG).await.unwrap();
                (holder, outcome)
            }));
        }
        let mut winners = Vec::new();
        let mut told = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (holder, Acquire::Granted { epoch, .. }) => winners.push((holder, epoch)),
                (_, Acquire::Held { holder, .. }) => told.push(holder),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let (winner, epoch) = &winners[0];
        assert_eq!(*epoch, 1);
        assert!(told.iter().all(|holder| holder == winner), "{told:?}");
        // The other handle sees the winner's lease.
        assert!(stores[1]
            .publish(&thread, winner, *epoch, "sessions/w.jsonl")
            .await
            .unwrap());
    }
}

/// Idempotency: begin, running seen by a second holder, finish only by the holder, replay,
/// TooLarge, abandon, tenants kept apart.
pub async fn idempotency(url: String) {
    let store = open(&url).await;
    let (a, b) = ("nodeA/codex/0", "nodeB/codex/0");

    assert_eq!(store.begin("t1", "k1", a, LONG).await.unwrap(), Begin::New);
    match store.begin("t1", "k1", b, LONG).await.unwrap() {
        Begin::Running { holder, age } => {
            assert_eq!(holder, a);
            assert!(age < Duration::from_secs(10), "{age:?}");
        }
        other => panic!("k1 is running: {other:?}"),
    }
    // Another holder cannot finish it; its holder can, once.
    let reply = r#"{"result":{"ok":true}}"#.to_owned();
    store
        .finish("t1", "k1", b, Finished::Reply("{}".to_owned()))
        .await
        .unwrap();
    assert!(matches!(
        store.begin("t1", "k1", b, LONG).await.unwrap(),
        Begin::Running { .. }
    ));
    store
        .finish("t1", "k1", a, Finished::Reply(reply.clone()))
        .await
        .unwrap();
    store
        .finish("t1", "k1", a, Finished::TooLarge)
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            store.begin("t1", "k1", b, LONG).await.unwrap(),
            Begin::Done(Finished::Reply(reply.clone()))
        );
    }
    // The key is per tenant.
    assert_eq!(store.begin("t2", "k1", b, LONG).await.unwrap(), Begin::New);

    assert_eq!(store.begin("t1", "k2", a, LONG).await.unwrap(), Begin::New);
    store
        .finish("t1", "k2", a, Finished::TooLarge)
        .await
        .unwrap();
    assert_eq!(
        store.begin("t1", "k2", b, LONG).await.unwrap(),
        Begin::Done(Finished::TooLarge)
    );

    // Abandon: only the holder's running record goes; a finished one stays.
    assert_eq!(store.begin("t1", "k3", a, LONG).await.unwrap(), Begin::New);
    store.abandon("t1", "k3", b).await.unwrap();
    assert!(matches!(
        store.begin("t1", "k3", b, LONG).await.unwrap(),
        Begin::Running { .. }
    ));
    store.abandon("t1", "k3", a).await.unwrap();
    store.abandon("t1", "k3", a).await.unwrap();
    assert_eq!(store.begin("t1", "k3", b, LONG).await.unwrap(), Begin::New);
    store.abandon("t1", "k1", a).await.unwrap();
    assert!(matches!(
        store.begin("t1", "k1", b, LONG).await.unwrap(),
        Begin::Done(_)
    ));
}

/// Idempotency TTL: a finished or running record older than the TTL is gone for the next
/// begin, and the old holder can no longer finish the new one.
pub async fn idempotency_ttl(url: String) {
    let store = open(&url).await;
    let (a, b, c) = ("nodeA/codex/0", "nodeB/codex/0", "nodeC/codex/0");

    assert_eq!(
        store.begin("t", "done", a, SHORT).await.unwrap(),
        Begin::New
    );
    store
        .finish("t", "done", a, Finished::Reply("{\"result\":1}".to_owned()))
        .await
        .unwrap();
    assert_eq!(store.begin("t", "run", a, SHORT).await.unwrap(), Begin::New);
    tokio::time::sleep(PAST_SHORT).await;

    assert_eq!(
        store.begin("t", "done", b, SHORT).await.unwrap(),
        Begin::New
    );
    assert_eq!(store.begin("t", "run", b, LONG).await.unwrap(), Begin::New);
    store
        .finish(
            "t",
            "run",
            a,
            Finished::Reply("{\"result\":\"late\"}".to_owned()),
        )
        .await
        .unwrap();
    match store.begin("t", "run", c, LONG).await.unwrap() {
        Begin::Running { holder, .. } => assert_eq!(holder, b),
        other => panic!("b runs it now: {other:?}"),
    }
}

/// Opening applies the migrations once, even from four handles at the same moment (four
/// processes starting together), and again on a store already migrated.
pub async fn concurrent_open(url: String) {
    let opening: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Store::open(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for task in opening {
        stores.push(task.await.unwrap().unwrap());
    }
    stores.push(open(&url).await);
    assert_eq!(stores[0].claim("t", "th-open").await.unwrap(), "t");
    for store in &stores {
        assert_eq!(store.owner("th-open").await.unwrap().as_deref(), Some("t"));
    }
}
