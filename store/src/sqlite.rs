//! The SQLite backend: one file shared by the processes of one host.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool. Each [`Sqlite`] has one
//! connection behind a mutex; processes (and handles) share the file through SQLite's own
//! locking: the WAL journal lets readers run beside the one writer, and a busy timeout makes a
//! writer wait for the lock instead of failing at once. Writes that read first take the write
//! lock up front (`BEGIN IMMEDIATE`), so two writers never both read the old state.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use crate::{
    begin_from_row, epoch_i64, finished_row, granted, millis, ms, Acquire, Begin, Finished,
    Migration, StoreError,
};

/// The migrations, in order.
const MIGRATIONS: &[Migration] = &[(
    1,
    "init",
    include_str!("../migrations/sqlite/0001_init.sql"),
)];

/// How long a writer waits for another process's write lock before failing with a retryable
/// `SQLITE_BUSY`: longer than any transaction here takes, short enough to surface a stuck peer.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A store in a SQLite file (see [`crate::Store::Sqlite`]).
pub struct Sqlite {
    /// The one connection of this handle; a `std` mutex because it is only locked on the
    /// blocking pool.
    conn: Arc<Mutex<Connection>>,
}

/// A rusqlite error as a store error: busy/locked is retryable (another process holds the
/// lock longer than the busy timeout), anything else is not.
fn error(err: rusqlite::Error) -> StoreError {
    StoreError::new(busy(&err), format!("sqlite: {err}"))
}

/// Whether `err` is SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock.
fn busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// The local clock in milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms)
}

impl Sqlite {
    /// Opens (creating if missing) the file at `path`, switches it to WAL and migrates it.
    pub(crate) async fn open(path: &str) -> Result<Sqlite, StoreError> {
        if path.is_empty() {
            return Err(StoreError::new(
                false,
                "sqlite: the store URL names no file",
            ));
        }
        let path = Path::new(path).to_owned();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            let mut conn = Connection::open(&path).map_err(|e| {
                StoreError::new(
                    false,
                    format!("sqlite: cannot open {}: {e}", path.display()),
                )
            })?;
            conn.busy_timeout(BUSY_TIMEOUT).map_err(error)?;
            // Two processes opening a new file at once can get SQLITE_BUSY here without the
            // busy handler being called (switching the journal to WAL needs the file to
            // itself), so these steps retry on their own, up to the busy timeout.
            let deadline = Instant::now() + BUSY_TIMEOUT;
            loop {
                match prepare(&mut conn) {
                    Err(err) if busy(&err) && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    outcome => break outcome.map_err(error)?,
                }
            }
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::new(false, format!("sqlite: open task failed: {e}")))??;
        Ok(Sqlite {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `work` on the connection on the blocking pool, answering within [`BUSY_TIMEOUT`]
    /// however many calls wait for the connection: while another process holds the database
    /// locked, each queued call would otherwise wait its own busy timeout in turn.
    async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let call = tokio::task::spawn_blocking(move || {
            // A panic while locked cannot leave a transaction open (rusqlite rolls back on
            // drop), so a poisoned lock still guards a usable connection.
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut conn).map_err(error)
        });
        match tokio::time::timeout(BUSY_TIMEOUT, call).await {
            Ok(done) => {
                done.map_err(|e| StoreError::new(false, format!("sqlite: task failed: {e}")))?
            }
            // The call still runs (and commits or not) on its own; its caller learns the store
            // is busy, as from SQLITE_BUSY.
            Err(_) => Err(StoreError::new(
                true,
                "sqlite: the database stayed locked".to_owned(),
            )),
        }
    }

    /// See [`crate::Store::owner`].
    pub(crate) async fn owner(&self, thread: &str) -> Result<Option<String>, StoreError> {
        let thread = thread.to_owned();
        self.run(move |conn| {
            let tenant: Option<Option<String>> = conn
                .query_row(
                    "SELECT tenant FROM threads WHERE thread = ?1",
                    params![thread],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(tenant.flatten())
        })
        .await
    }

    /// See [`crate::Store::claim`].
    pub(crate) async fn claim(&self, tenant: &str, thread: &str) -> Result<String, StoreError> {
        let (tenant, thread) = (tenant.to_owned(), thread.to_owned());
        self.run(move |conn| {
            // One statement: insert, or keep the recorded owner (COALESCE), and read it back.
            conn.query_row(
                "INSERT INTO threads (thread, tenant) VALUES (?1, ?2)
                 ON CONFLICT (thread) DO UPDATE SET tenant = COALESCE(threads.tenant, excluded.tenant)
                 RETURNING tenant",
                params![thread, tenant],
                |row| row.get(0),
            )
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
        let (thread, holder, ttl) = (thread.to_owned(), holder.to_owned(), ms(ttl));
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO threads (thread) VALUES (?1) ON CONFLICT (thread) DO NOTHING",
                params![thread],
            )?;
            let row = tx
                .query_row(
                    "UPDATE threads SET epoch = epoch + 1, holder = ?2, expires_at = ?3 + ?4
                     WHERE thread = ?1 AND (holder IS NULL OR expires_at <= ?3 OR holder = ?2)
                     RETURNING epoch, published_epoch, rollout",
                    params![thread, holder, now, ttl],
                    |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, Option<i64>>(1)?,
                            row.get::<_, Option<String>>(2)?,
                        ))
                    },
                )
                .optional()?;
            let outcome = match row {
                Some((epoch, published_epoch, rollout)) => granted(epoch, published_epoch, rollout),
                None => {
                    // Same transaction, write lock held: the holder read is the one that refused.
                    let (holder, expires_at): (Option<String>, i64) = tx.query_row(
                        "SELECT holder, expires_at FROM threads WHERE thread = ?1",
                        params![thread],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )?;
                    Acquire::Held {
                        holder: holder.unwrap_or_default(),
                        expires_in: millis(expires_at - now),
                    }
                }
            };
            tx.commit()?;
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
        let (holder, leases, ttl) = (holder.to_owned(), leases.to_vec(), ms(ttl));
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let expires_at = now_ms().saturating_add(ttl);
            let mut lost = Vec::new();
            {
                let mut update = tx.prepare(
                    "UPDATE threads SET expires_at = ?4 WHERE thread = ?1 AND holder = ?2 AND epoch = ?3",
                )?;
                for (thread, epoch) in leases {
                    if update.execute(params![thread, holder, epoch_i64(epoch), expires_at])? == 0 {
                        lost.push(thread);
                    }
                }
            }
            tx.commit()?;
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
        let (thread, holder) = (thread.to_owned(), holder.to_owned());
        self.run(move |conn| {
            conn.execute(
                "UPDATE threads SET holder = NULL WHERE thread = ?1 AND holder = ?2 AND epoch = ?3",
                params![thread, holder, epoch_i64(epoch)],
            )?;
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
        let (thread, holder, rollout) = (thread.to_owned(), holder.to_owned(), rollout.to_owned());
        self.run(move |conn| {
            let changed = conn.execute(
                "UPDATE threads SET published_epoch = ?3, rollout = ?4
                 WHERE thread = ?1 AND holder = ?2 AND epoch = ?3 AND expires_at > ?5",
                params![thread, holder, epoch_i64(epoch), rollout, now_ms()],
            )?;
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
        let (tenant, key, holder, ttl) = (
            tenant.to_owned(),
            key.to_owned(),
            holder.to_owned(),
            ms(ttl),
        );
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            tx.execute(
                "DELETE FROM idempotency WHERE began_at <= ?1",
                params![now.saturating_sub(ttl)],
            )?;
            let inserted = tx.execute(
                "INSERT INTO idempotency (tenant, key, holder, state, reply, began_at)
                 VALUES (?1, ?2, ?3, 'running', NULL, ?4) ON CONFLICT (tenant, key) DO NOTHING",
                params![tenant, key, holder, now],
            )?;
            let outcome = if inserted == 1 {
                Begin::New
            } else {
                tx.query_row(
                    "SELECT state, reply, holder, began_at FROM idempotency
                     WHERE tenant = ?1 AND key = ?2",
                    params![tenant, key],
                    |row| {
                        Ok(begin_from_row(
                            &row.get::<_, String>(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            now - row.get::<_, i64>(3)?,
                        ))
                    },
                )?
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    /// See [`crate::Store::finish`].
    pub(crate) async fn finish(
        &self,
        tenant: &str,
        key: &str,
        holder: &str,
        reply: Finished,
    ) -> Result<(), StoreError> {
        let (tenant, key, holder) = (tenant.to_owned(), key.to_owned(), holder.to_owned());
        let (state, reply) = finished_row(reply);
        self.run(move |conn| {
            conn.execute(
                "UPDATE idempotency SET state = ?4, reply = ?5
                 WHERE tenant = ?1 AND key = ?2 AND holder = ?3 AND state = 'running'",
                params![tenant, key, holder, state, reply],
            )?;
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
        let (tenant, key, holder) = (tenant.to_owned(), key.to_owned(), holder.to_owned());
        self.run(move |conn| {
            conn.execute(
                "DELETE FROM idempotency
                 WHERE tenant = ?1 AND key = ?2 AND holder = ?3 AND state = 'running'",
                params![tenant, key, holder],
            )?;
            Ok(())
        })
        .await
    }
}

/// Makes a freshly opened connection ready: WAL journal (a property of the file, so setting it
/// again is a no-op; readers then never block the writer of another process), migrations.
fn prepare(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    migrate(conn)
}

/// Applies the migrations not yet recorded in `schema_migrations`, in one `BEGIN IMMEDIATE`
/// transaction: a second process opening the file at the same time waits for the write lock,
/// then finds them recorded.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY NOT NULL,
             name       TEXT NOT NULL,
             applied_at INTEGER NOT NULL
         )",
    )?;
    for (version, name, sql) in MIGRATIONS {
        let applied: Option<i64> = tx
            .query_row(
                "SELECT version FROM schema_migrations WHERE version = ?1",
                params![version],
                |row| row.get(0),
            )
            .optional()?;
        if applied.is_none() {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![version, name, now_ms()],
            )?;
        }
    }
    tx.commit()
}
