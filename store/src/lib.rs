//! The shared thread store of codex-worker's cluster mode.
//!
//! Several workers (on one host or many) that serve the same threads agree through this store on
//! three things:
//! - **owner**: the tenant a thread belongs to ([`Store::owner`], [`Store::claim`]);
//! - **lease**: which holder (`node/pool/slot`) drives a thread now, for how long, and under which
//!   epoch, a fencing token that only grows per thread ([`Store::acquire`], [`Store::renew`],
//!   [`Store::release`]); a holder that lost its lease can no longer publish
//!   ([`Store::publish`]), so a paused node that wakes up cannot overwrite its successor's work;
//! - **idempotency**: a request retried with the same key (per tenant) runs at most once and
//!   its reply is replayed ([`Store::begin`], [`Store::finish`], [`Store::abandon`]).
//!
//! Two backends, picked by the URL given to [`Store::open`]:
//! - `sqlite:/path/to/file.sqlite`: one file shared by the processes of one host (WAL journal,
//!   busy timeout); times come from the local clock;
//! - `postgres://user@host:port/db` (or `postgresql://`, libpq-style `?host=/socket/dir`): shared
//!   by hosts; times come from the server's clock, so skewed node clocks do not matter. No TLS:
//!   the server is expected on loopback, a Unix socket or a private network.
//!
//! Every multi-step operation is atomic (one `UPDATE … WHERE`, or a transaction), so two
//! processes racing on one thread never both win.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod postgres;
mod sqlite;

pub use postgres::Postgres;
pub use sqlite::Sqlite;

use std::fmt;
use std::time::Duration;

/// The shared store, opened from a URL: SQLite or PostgreSQL.
///
/// Cheap to share behind an `Arc`; every method takes `&self`. Dispatch is a `match`, not a trait
/// object: the two backends are all there is.
pub enum Store {
    /// A SQLite file (`sqlite:/path`), used on the tokio blocking pool.
    Sqlite(Sqlite),
    /// A PostgreSQL database (`postgres://…`), one connection, reconnected after it breaks.
    /// Boxed: a client is a few hundred bytes, the SQLite variant one pointer.
    Postgres(Box<Postgres>),
}

/// What [`Store::acquire`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// The lease is now the caller's, under `epoch` (the fencing token to pass to
    /// [`Store::renew`], [`Store::release`] and [`Store::publish`]); `published` is the last
    /// rollout published for the thread, if any (what to import before driving it).
    Granted {
        /// The thread's new epoch: one more than any before.
        epoch: u64,
        /// The last published rollout, if one was published.
        published: Option<Published>,
    },
    /// Another holder drives the thread; its lease ends in `expires_in` unless renewed.
    Held {
        /// The live holder, `node/pool/slot`.
        holder: String,
        /// Time left on that lease (zero or more).
        expires_in: Duration,
    },
}

/// A rollout published for a thread under a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The epoch of the lease it was published under.
    pub epoch: u64,
    /// The rollout's path relative to CODEX_HOME (`sessions/YYYY/MM/DD/rollout-…-<id>.jsonl`).
    pub rollout: String,
}

/// What [`Store::begin`] found for an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// No live record: one is now running under the caller; run the request, then
    /// [`Store::finish`] (or [`Store::abandon`] if it never ran).
    New,
    /// A first attempt is running (or its holder died before finishing) under `holder`, begun
    /// `age` ago.
    Running {
        /// The holder that began it, `node/pool/slot`.
        holder: String,
        /// Time since it began.
        age: Duration,
    },
    /// The first attempt finished: replay its reply.
    Done(Finished),
}

/// The outcome of a finished request, as kept for replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    /// The reply's JSON text, `{"result":…}` or `{"error":…}`.
    Reply(String),
    /// The request ran, but its reply was too large to keep.
    TooLarge,
}

/// A store operation that failed.
///
/// `retryable` is true when the store could not be reached or was busy (connection refused or
/// closed, a timeout, `SQLITE_BUSY`, a serialization failure): the same call may succeed later.
/// `Display` shows `detail`, which never contains the password of a PostgreSQL URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError {
    retryable: bool,
    detail: String,
}

impl StoreError {
    /// An error; `detail` must not carry secrets.
    fn new(retryable: bool, detail: impl Into<String>) -> Self {
        StoreError {
            retryable,
            detail: detail.into(),
        }
    }

    /// Whether the same call may succeed later (the store was unreachable or busy).
    pub fn retryable(&self) -> bool {
        self.retryable
    }

    /// What failed, for logs and for the `data.detail` of a `store_unavailable` reply.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for StoreError {}

/// A migration: its version (the file's `NNNN`), name and SQL.
type Migration = (i64, &'static str, &'static str);

impl Store {
    /// Opens the store at `url` and applies the migrations it lacks (embedded from
    /// `store/migrations/{sqlite,postgres}/NNNN_name.sql`, in order, in one transaction,
    /// recorded in `schema_migrations`; safe when several processes open it at once).
    ///
    /// `url` is `sqlite:/path/to/file.sqlite` (the file is created if missing) or
    /// `postgres://user[:password]@host[:port]/db` / `postgresql://…` (libpq-style parameters
    /// such as `?host=/socket/dir` allowed). Errors: an unknown scheme or a bad URL (not
    /// retryable), an unreachable server (retryable).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            // `sqlite:///abs` and `sqlite:/abs` name the same file.
            let path = path.strip_prefix("//").unwrap_or(path);
            Ok(Store::Sqlite(Sqlite::open(path).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(Box::new(Postgres::open(url).await?)))
        } else {
            Err(StoreError::new(
                false,
                "store URL must start with sqlite: or postgres:// (postgresql://)",
            ))
        }
    }

    /// The tenant owning `thread`, if one is recorded.
    pub async fn owner(&self, thread: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.owner(thread).await,
            Store::Postgres(p) => p.owner(thread).await,
        }
    }

    /// Records `tenant` as the owner of `thread` unless one is recorded (creating the thread's
    /// row if needed); returns the owner now recorded, which differs from `tenant` when another
    /// tenant owned it first.
    pub async fn claim(&self, tenant: &str, thread: &str) -> Result<String, StoreError> {
        match self {
            Store::Sqlite(s) => s.claim(tenant, thread).await,
            Store::Postgres(p) => p.claim(tenant, thread).await,
        }
    }

    /// Takes the lease of `thread` for `holder` for `ttl` if it is free, expired, or already
    /// `holder`'s; a grant increments the thread's epoch (the fencing token: it only grows, per
    /// thread) and returns the last published rollout. A thread without a row gets one (owner
    /// unset). Otherwise returns the live holder and the time left on its lease.
    pub async fn acquire(
        &self,
        thread: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Acquire, StoreError> {
        match self {
            Store::Sqlite(s) => s.acquire(thread, holder, ttl).await,
            Store::Postgres(p) => p.acquire(thread, holder, ttl).await,
        }
    }

    /// Extends to `ttl` from now every lease in `leases` (thread, epoch) still held by `holder`
    /// at that epoch, in one transaction; returns the threads whose lease was lost (taken over,
    /// released or missing). A lease that expired but was not taken over is still the holder's
    /// (its epoch did not move) and is extended.
    pub async fn renew(
        &self,
        holder: &str,
        leases: &[(String, u64)],
        ttl: Duration,
    ) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.renew(holder, leases, ttl).await,
            Store::Postgres(p) => p.renew(holder, leases, ttl).await,
        }
    }

    /// Ends the lease of `thread` if it is still `holder`'s at `epoch`; otherwise does nothing
    /// (idempotent). The epoch stays: the next grant goes above it.
    pub async fn release(&self, thread: &str, holder: &str, epoch: u64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.release(thread, holder, epoch).await,
            Store::Postgres(p) => p.release(thread, holder, epoch).await,
        }
    }

    /// Fenced write: records `rollout` (a path relative to CODEX_HOME) as published at `epoch`
    /// only if the lease is still `holder`'s at `epoch` and not expired. `Ok(false)` = fenced
    /// out: another holder took over (or the lease lapsed), and what this holder wrote must not
    /// be used.
    pub async fn publish(
        &self,
        thread: &str,
        holder: &str,
        epoch: u64,
        rollout: &str,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.publish(thread, holder, epoch, rollout).await,
            Store::Postgres(p) => p.publish(thread, holder, epoch, rollout).await,
        }
    }

    /// Begins idempotency key `key` of `tenant` for `holder`. A record older than `ttl` (counted
    /// from its begin) is gone: this call first deletes every record that old (of any tenant; the
    /// TTL is one setting per deployment), then inserts a running record unless a live one
    /// exists, which it returns instead.
    pub async fn begin(
        &self,
        tenant: &str,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Begin, StoreError> {
        match self {
            Store::Sqlite(s) => s.begin(tenant, key, holder, ttl).await,
            Store::Postgres(p) => p.begin(tenant, key, holder, ttl).await,
        }
    }

    /// Stores the finished reply (`{"result":…}` or `{"error":…}` JSON text) or
    /// [`Finished::TooLarge`] on the record of (`tenant`, `key`), only if it is `holder`'s and
    /// still running; otherwise (expired, purged, someone else's) does nothing.
    pub async fn finish(
        &self,
        tenant: &str,
        key: &str,
        holder: &str,
        reply: Finished,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.finish(tenant, key, holder, reply).await,
            Store::Postgres(p) => p.finish(tenant, key, holder, reply).await,
        }
    }

    /// Forgets a record that `holder` began and that is still running (the request never ran:
    /// it was refused before reaching Codex), so a retry starts afresh. Idempotent.
    pub async fn abandon(&self, tenant: &str, key: &str, holder: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.abandon(tenant, key, holder).await,
            Store::Postgres(p) => p.abandon(tenant, key, holder).await,
        }
    }
}

/// The state column's values for a finished reply, and its text (NULL for TooLarge).
fn finished_row(reply: Finished) -> (&'static str, Option<String>) {
    match reply {
        Finished::Reply(text) => ("done", Some(text)),
        Finished::TooLarge => ("too_large", None),
    }
}

/// What an idempotency row read back means: `state`, `reply`, `holder`, age in milliseconds.
fn begin_from_row(state: &str, reply: Option<String>, holder: String, age_ms: i64) -> Begin {
    match (state, reply) {
        ("done", Some(text)) => Begin::Done(Finished::Reply(text)),
        ("too_large", _) => Begin::Done(Finished::TooLarge),
        _ => Begin::Running {
            holder,
            age: millis(age_ms),
        },
    }
}

/// A duration from a count of milliseconds that may be negative (clock arithmetic): clamps at 0.
fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A duration in whole milliseconds for the database, saturating (a TTL beyond i64 ms is
/// forever anyway).
fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// An epoch for the database: epochs start at 1 and grow by one per grant, so they fit; one
/// that does not fit matches no row.
fn epoch_i64(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(-1)
}

/// A granted lease as both backends read it: its `epoch`, and the rollout last published for the
/// thread (`published_epoch` and `rollout` are set together, or neither). Stored epochs are never
/// negative; one that were would read as 0, which no grant has.
fn granted(epoch: i64, published_epoch: Option<i64>, rollout: Option<String>) -> Acquire {
    let epoch_u64 = |epoch: i64| u64::try_from(epoch).unwrap_or(0);
    Acquire::Granted {
        epoch: epoch_u64(epoch),
        published: published_epoch
            .zip(rollout)
            .map(|(epoch, rollout)| Published {
                epoch: epoch_u64(epoch),
                rollout,
            }),
    }
}
