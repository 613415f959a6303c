//! The PostgreSQL backend: one database shared by every node.
//!
//! One connection per [`Postgres`], behind an async mutex (a transaction needs the connection
//! to itself anyway). The server may go away and come back: a call that meets a broken
//! connection or runs past [`CALL_TIMEOUT`] drops it and fails with a retryable error, and the
//! next call connects again. Times are the server's (`now()`), so nodes need no synchronised
//! clocks. No TLS (`NoTls`): the server is on loopback, a Unix socket or a private network.

use std::error::Error as _;
use std::str::FromStr;
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;
use tokio_postgres::{Client, Config, NoTls};

use crate::{
    begin_from_row, epoch_i64, finished_row, granted, millis, Acquire, Begin, Finished, Migration,
    StoreError,
};

/// The migrations, in order.
const MIGRATIONS: &[Migration] = &[(
    1,
    "init",
    include_str!("../migrations/postgres/0001_init.sql"),
)];

/// The longest any one call may take, waiting for the connection and connecting included: a
/// dead or hung server then gives a retryable error promptly instead of hanging the worker's
/// request.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The advisory lock key that serialises migrations across processes ("codexbus" in ASCII).
const MIGRATION_LOCK: i64 = 0x636f_6465_7862_7573;

/// A store in a PostgreSQL database (see [`crate::Store::Postgres`]).
pub struct Postgres {
    /// The parsed URL, to connect again after the connection broke.
    config: Config,
    /// The URL's password, to scrub from error texts (a server or driver message could echo it).
    password: Option<String>,
    /// The live connection, or None before the first call and after one broke.
    client: Mutex<Option<Client>>,
}

/// How many times `begin` inserts a key whose row vanished between its insert and its read.
const BEGIN_ATTEMPTS: usize = 3;

/// A tokio-postgres error as a store error. Retryable: the connection is gone or failed (I/O),
/// or the server refused for a passing reason (shutting down, starting, too many clients,
/// serialization failure, deadlock, connection exceptions).
fn error(err: &tokio_postgres::Error) -> StoreError {
    let retryable = err.is_closed()
        || err
            .source()
            .is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some())
        || err.code().is_some_and(|code| {
            let code = code.code();
            code.starts_with("08")
                || code.starts_with("57P")
                || matches!(code, "40001" | "40P01" | "53300")
        });
    StoreError::new(retryable, format!("postgres: {err}"))
}

/// A call that ran past its deadline ([`CALL_TIMEOUT`]; longer for the migrations of `open`).
fn timed_out() -> StoreError {
    StoreError::new(
        true,
        "postgres: no answer in time (the server is down, hung or unreachable)",
    )
}

/// A TTL as fractional seconds, for `make_interval(secs => …)`.
fn secs(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

/// Milliseconds between two timestamps, computed by the server, as a bigint.
macro_rules! ms_between {
    ($later:literal, $earlier:literal) => {
        concat!(
            "(EXTRACT(EPOCH FROM (",
            $later,
            " - ",
            $earlier,
            ")) * 1000)::bigint"
        )
    };
}

impl Postgres {
    /// Parses `url`, connects and migrates.
    pub(crate) async fn open(url: &str) -> Result<Postgres, StoreError> {
        let mut config = Config::from_str(url).map_err(|e| {
            StoreError::new(
                false,
                scrub(url, &format!("postgres: invalid store URL: {e}")),
            )
        })?;
        config.connect_timeout(CALL_TIMEOUT);
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| !p.is_empty());
        let store = Postgres {
            config,
            password,
            client: Mutex::new(None),
        };
        // Migrating may wait for another process's migration (the advisory lock): more time.
        let deadline = Instant::now() + CALL_TIMEOUT * 4;
        let mut guard = store.connected(deadline).await?;
        let client = guard.as_mut().expect("connected() leaves a client");
        let migrated = tokio::time::timeout_at(deadline, migrate(client)).await;
        store.settle(&mut guard, migrated)?;
        drop(guard);
        Ok(store)
    }

    /// The connection, connecting first if there is none or it closed; waiting for the
    /// connection (another call holds it) and connecting both end at `deadline`, the end of
    /// the whole call, so no call outlives [`CALL_TIMEOUT`].
    async fn connected(
        &self,
        deadline: Instant,
    ) -> Result<MutexGuard<'_, Option<Client>>, StoreError> {
        let mut guard = tokio::time::timeout_at(deadline, self.client.lock())
            .await
            .map_err(|_| timed_out())?;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = None;
            let connecting = tokio::time::timeout_at(deadline, self.config.connect(NoTls)).await;
            let (client, connection) = match connecting {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => return Err(self.scrubbed(error(&e))),
                Err(_) => return Err(timed_out()),
            };
            // The connection task ends when the socket does; the client then reports closed
            // and the next call connects again. Its error reaches the caller through the
            // client's own calls, so it is not logged here.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            *guard = Some(client);
        }
        Ok(guard)
    }

    /// Runs `work` on the connection (made if there is none) within [`CALL_TIMEOUT`], counting
    /// the wait for the connection and the connecting; see [`Postgres::settle`] for what a
    /// failure does to the connection.
    async fn call<T>(
        &self,
        work: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        let mut guard = self.connected(deadline).await?;
        let client = guard.as_mut().expect("connected() leaves a client");
        let outcome = tokio::time::timeout_at(deadline, work(client)).await;
        self.settle(&mut guard, outcome)
    }

    /// The outcome of one bounded call: on a timeout or a retryable error (a broken connection
    /// among them), drops the client (the server rolls back whatever transaction it had open)
    /// so the next call starts on a fresh connection.
    fn settle<T>(
        &self,
        guard: &mut MutexGuard<'_, Option<Client>>,
        outcome: Result<Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                let err = self.scrubbed(error(&e));
                if err.retryable || guard.as_ref().is_some_and(Client::is_closed) {
                    **guard = None;
                }
                Err(err)
            }
            Err(_) => {
                **guard = None;
                Err(timed_out())
            }
        }
    }

    /// `err` without the URL's password.
    fn scrubbed(&self, mut err: StoreError) -> StoreError {
        if let Some(password) = &self.password {
            err.detail = err.detail.replace(password.as_str(), "***");
        }
        err
    }

    /// See [`crate::Store::owner`].
    pub(crate) async fn owner(&self, thread: &str) -> Result<Option<String>, StoreError> {
        self.call(async |client| {
            let row = client
                .query_opt("SELECT tenant FROM threads WHERE thread = $1", &[&thread])
                .await?;
            Ok(row.and_then(|row| row.get::<_, Option<String>>(0)))
        })
        .await
    }

    /// See [`crate::Store::claim`].
    pub(crate) async fn claim(&self, tenant: &str, thread: &str) -> Result<String, StoreError> {
        self.call(async |client| {
            // One statement: insert, or keep the recorded owner (COALESCE), and read it back.
            let row = client
                .query_one(
                    "INSERT INTO threads AS t (thread, tenant) VALUES ($1, $2)
                     ON CONFLICT (thread) DO UPDATE SET tenant = COALESCE(t.tenant, excluded.tenant)
                     RETURNING tenant",
                    &[&thread, &tenant],
                )
                .await?;
            Ok(row.get::<_, String>(0))
        })
        .await
    }

    /// See [`crate::Store::acquire`].
    pub(crate) async fn acquire(
        &self,
        thread: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Acquire, StoreError> {
        self.call(async |client| {
            let tx = client.transaction().await?;
            // Insert-or-take in one statement. When the WHERE refuses, ON CONFLICT still locks
            // the row until commit, so the read below sees the holder that refused us.
            let row = tx
                .query_opt(
                    "INSERT INTO threads AS t (thread, epoch, holder, expires_at)
                     VALUES ($1, 1, $2, now() + make_interval(secs => $3))
                     ON CONFLICT (thread) DO UPDATE
                         SET epoch = t.epoch + 1, holder = excluded.holder,
                             expires_at = excluded.expires_at
                         WHERE t.holder IS NULL OR t.expires_at <= now() OR t.holder = excluded.holder
                     RETURNING epoch, published_epoch, rollout",
                    &[&thread, &holder, &secs(ttl)],
                )
                .await?;
            let outcome = match row {
                Some(row) => granted(row.get(0), row.get(1), row.get(2)),
                None => {
                    let row = tx
                        .query_one(
                            concat!(
                                "SELECT holder, ",
                                ms_between!("expires_at", "now()"),
                                " FROM threads WHERE thread = $1"
                            ),
                            &[&thread],
                        )
                        .await?;
                    Acquire::Held {
                        holder: row.get::<_, Option<String>>(0).unwrap_or_default(),
                        expires_in: millis(row.get(1)),
                    }
                }
            };
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    /// See [`crate::Store::renew`].
    pub(crate) async fn renew(
        &self,
        holder: &str,
        leases: &[(String, u64)],
        ttl: Duration,
    ) -> Result<Vec<String>, StoreError> {
        self.call(async |client| {
            let tx = client.transaction().await?;
            let update = tx
                .prepare(
                    "UPDATE threads SET expires_at = now() + make_interval(secs => $4)
                     WHERE thread = $1 AND holder = $2 AND epoch = $3",
                )
                .await?;
            let mut lost = Vec::new();
            for (thread, epoch) in leases {
                let changed = tx
                    .execute(&update, &[thread, &holder, &epoch_i64(*epoch), &secs(ttl)])
                    .await?;
                if changed == 0 {
                    lost.push(thread.clone());
                }
            }
            tx.commit().await?;
            Ok(lost)
        })
        .await
    }

    /// See [`crate::Store::release`].
    pub(crate) async fn release(
        &self,
        thread: &str,
        holder: &str,
        epoch: u64,
    ) -> Result<(), StoreError> {
        self.call(async |client| {
            client
                .execute(
                    "UPDATE threads SET holder = NULL WHERE thread = $1 AND holder = $2 AND epoch = $3",
                    &[&thread, &holder, &epoch_i64(epoch)],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// See [`crate::Store::publish`].
    pub(crate) async fn publish(
        &self,
        thread: &str,
        holder: &str,
        epoch: u64,
        rollout: &str,
    ) -> Result<bool, StoreError> {
        self.call(async |client| {
            let changed = client
                .execute(
                    "UPDATE threads SET published_epoch = $3, rollout = $4
                     WHERE thread = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()",
                    &[&thread, &holder, &epoch_i64(epoch), &rollout],
                )
                .await?;
            Ok(changed == 1)
        })
        .await
    }

    /// See [`crate::Store::begin`].
    pub(crate) async fn begin(
        &self,
        tenant: &str,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Begin, StoreError> {
        let outcome = self
            .call(async |client| {
                let tx = client.transaction().await?;
                tx.execute(
                    "DELETE FROM idempotency WHERE began_at <= now() - make_interval(secs => $1)",
                    &[&secs(ttl)],
                )
                .await?;
                // An insert that conflicts locks nothing: another node may finish the row or
                // delete it (`abandon`, its own purge) before the read below locks it. A vanished
                // row is inserted again, a few times at most.
                for _ in 0..BEGIN_ATTEMPTS {
                    let inserted = tx
                        .execute(
                            "INSERT INTO idempotency (tenant, key, holder, state, reply, began_at)
                             VALUES ($1, $2, $3, 'running', NULL, now())
                             ON CONFLICT (tenant, key) DO NOTHING",
                            &[&tenant, &key, &holder],
                        )
                        .await?;
                    if inserted == 1 {
                        tx.commit().await?;
                        return Ok(Some(Begin::New));
                    }
                    // FOR UPDATE: from this read on, the row cannot change until the commit.
                    let row = tx
                        .query_opt(
                            concat!(
                                "SELECT state, reply, holder, ",
                                ms_between!("now()", "began_at"),
                                " FROM idempotency WHERE tenant = $1 AND key = $2 FOR UPDATE"
                            ),
                            &[&tenant, &key],
                        )
                        .await?;
                    if let Some(row) = row {
                        let found = begin_from_row(
                            row.get::<_, &str>(0),
                            row.get(1),
                            row.get(2),
                            row.get(3),
                        );
                        tx.commit().await?;
                        return Ok(Some(found));
                    }
                }
                Ok(None)
            })
            .await?;
        outcome.ok_or_else(|| {
            StoreError::new(
                true,
                "the idempotency key kept changing under concurrent requests; retry",
            )
        })
    }

    /// See [`crate::Store::finish`].
    pub(crate) async fn finish(
        &self,
        tenant: &str,
        key: &str,
        holder: &str,
        reply: Finished,
    ) -> Result<(), StoreError> {
        let (state, reply) = finished_row(reply);
        self.call(async |client| {
            client
                .execute(
                    "UPDATE idempotency SET state = $4, reply = $5
                     WHERE tenant = $1 AND key = $2 AND holder = $3 AND state = 'running'",
                    &[&tenant, &key, &holder, &state, &reply],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// See [`crate::Store::abandon`].
    pub(crate) async fn abandon(
        &self,
        tenant: &str,
        key: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        self.call(async |client| {
            client
                .execute(
                    "DELETE FROM idempotency
                     WHERE tenant = $1 AND key = $2 AND holder = $3 AND state = 'running'",
                    &[&tenant, &key, &holder],
                )
                .await?;
            Ok(())
        })
        .await
    }
}

/// Applies the migrations not yet recorded in `schema_migrations`, in one transaction that
/// first takes a transaction-scoped advisory lock: a second process migrating at the same time
/// waits, then finds them recorded.
async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    for (version, name, sql) in MIGRATIONS {
        let applied = tx
            .query_opt(
                "SELECT version FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?;
        if applied.is_none() {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await?;
        }
    }
    tx.commit().await
}

/// `text` without the password of `url` (`scheme://user:password@…`), for errors raised before
/// the URL is parsed.
fn scrub(url: &str, text: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|password| !password.is_empty());
    match password {
        Some(password) => text.replace(password, "***"),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_hides_the_password_of_the_url() {
        let url = "postgres://bus:s3cr%et@db:5432/codex";
        assert_eq!(scrub(url, "bad s3cr%et here"), "bad *** here");
        assert_eq!(scrub("postgres://bus@db/codex", "text"), "text");
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable_and_hides_the_password() {
        // Port 1 on loopback: nothing listens, the kernel refuses at once.
        let url = "postgres://bus:hunter2secret@127.0.0.1:1/codex";
        let err = match crate::Store::open(url).await {
            Ok(_) => panic!("nothing listens on port 1"),
            Err(err) => err,
        };
        assert!(err.retryable(), "{err}");
        assert!(!err.to_string().contains("hunter2secret"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2secret"), "{err:?}");
    }

    #[tokio::test]
    async fn a_bad_url_is_not_retryable() {
        let err = match crate::Store::open("postgres://bus:pw@host:notaport/db").await {
            Ok(_) => panic!("the port is not a number"),
            Err(err) => err,
        };
        assert!(!err.retryable(), "{err}");
        assert!(!err.to_string().contains(":pw@"), "{err}");
    }
}
