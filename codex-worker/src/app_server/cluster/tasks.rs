//! The store and file work cluster mode hands to tasks, so the event loop never waits on the
//! network or the shared filesystem: each [`Op`] runs on its own task and reports one [`Done`].

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use codex_bus_store::{Acquire, Begin, Finished, Store, StoreError};
use codex_bus_worker_io::log;

use super::rollouts;
use crate::app_server::sessions::SessionKey;

/// How long a copy to or from the shared directory may take before the request that waits for
/// it is answered: a network filesystem that hangs must not leave a client without a reply.
const FILE_DEADLINE: Duration = Duration::from_secs(30);

/// Runs `work` on the blocking pool within [`FILE_DEADLINE`]; a copy still running after it is
/// left to finish on its own (what it writes is never made current without the store).
async fn file_work<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    match tokio::time::timeout(FILE_DEADLINE, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(panicked)) => Err(io::Error::other(panicked.to_string())),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the shared directory did not answer within {} s",
                FILE_DEADLINE.as_secs()
            ),
        )),
    }
}

/// Work for a task.
#[derive(Debug)]
pub enum Op {
    /// Begin the idempotency record (owner, key) for the request at the head of `session`.
    Begin {
        session: SessionKey,
        owner: String,
        key: String,
    },
    /// Check that `owner` owns `thread`, take its lease and bring its newest rollout into
    /// `home` unless it is the one of `known_epoch` (published from here).
    Take {
        session: SessionKey,
        thread: String,
        owner: String,
        home: PathBuf,
        known_epoch: Option<u64>,
    },
    /// Record a thread just created here (its rollout in `home`) and take its lease.
    Adopt {
        thread: String,
        owner: String,
        home: PathBuf,
    },
    /// Publish the local rollout under the lease of `epoch`, then release the lease if `release`.
    Publish {
        thread: String,
        epoch: u64,
        home: PathBuf,
        release: bool,
    },
    /// Renew every lease held here.
    Renew { leases: Vec<(String, u64)> },
    /// Store the outcome of a keyed request.
    Finish {
        owner: String,
        key: String,
        outcome: Finished,
    },
    /// Release the key of a request that did not run.
    Abandon { owner: String, key: String },
}

/// How a [`Op::Take`] went.
#[derive(Debug)]
pub enum Taken {
    /// The store knows no owner: the worker's own rules apply.
    Unowned,
    /// Another scope owns it.
    Foreign,
    /// Another live holder has it.
    Held {
        holder: String,
        expires_in: Duration,
    },
    /// Leased here at `epoch`; `published` is the epoch whose rollout `home` now has. The lease
    /// holds until `sent` (when the store was asked) plus the TTL.
    Granted {
        epoch: u64,
        published: Option<u64>,
        sent: Instant,
    },
}

/// Why a [`Op::Take`] failed.
#[derive(Debug)]
pub struct TakeError {
    /// What went wrong, for the error reply's `data.detail`.
    pub detail: String,
    /// Whether the store was unreachable (a retry may succeed) rather than the shared files
    /// broken.
    pub retryable: bool,
}

/// What a task reports.
#[derive(Debug)]
pub enum Done {
    Begun {
        session: SessionKey,
        result: Result<Begin, StoreError>,
    },
    Taken {
        session: SessionKey,
        result: Result<Taken, TakeError>,
    },
    Adopted {
        /// When the store was asked.
        sent: Instant,
        thread: String,
        owner: String,
        home: PathBuf,
        result: Result<Acquire, StoreError>,
    },
    Published {
        thread: String,
        epoch: u64,
        /// `Ok(false)`: fenced out (the lease moved on).
        result: Result<bool, String>,
    },
    /// An [`Op::Finish`] ended; `stored` false: try again later.
    Stored {
        owner: String,
        key: String,
        stored: bool,
    },
    Renewed {
        /// When the renewal was sent: the leases hold until then plus the TTL.
        sent: Instant,
        result: Result<Vec<String>, StoreError>,
    },
}

/// Runs [`Op`]s against the store and the shared directory.
#[derive(Clone)]
pub struct Tasks {
    store: Arc<Store>,
    holder: Arc<str>,
    shared: Arc<PathBuf>,
    lease_ttl: Duration,
    idempotency_ttl: Duration,
    done: mpsc::UnboundedSender<Done>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("holder", &self.holder)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Tasks {
    /// Tasks for `holder` (`node/pool/slot`) reporting on `done`.
    pub fn new(
        store: Arc<Store>,
        holder: Arc<str>,
        shared: PathBuf,
        (lease_ttl, idempotency_ttl): (Duration, Duration),
        done: mpsc::UnboundedSender<Done>,
    ) -> Self {
        Self {
            store,
            holder,
            shared: Arc::new(shared),
            lease_ttl,
            idempotency_ttl,
            done,
        }
    }

    /// Starts `op` on a task of its own; its [`Done`] (if it has one) arrives on the channel.
    pub fn spawn(&self, op: Op) {
        let tasks = self.clone();
        tokio::spawn(async move {
            if let Some(done) = tasks.run(op).await {
                // The receiver lives as long as the event loop; after it, nobody cares.
                let _ = tasks.done.send(done);
            }
        });
    }

    /// Runs `op` now (the drain's final releases).
    pub async fn run(&self, op: Op) -> Option<Done> {
        let holder = &*self.holder;
        match op {
            Op::Begin {
                session,
                owner,
                key,
            } => {
                let result = self
                    .store
                    .begin(&owner, &key, holder, self.idempotency_ttl)
                    .await;
                Some(Done::Begun { session, result })
            }
            Op::Take {
                session,
                thread,
                owner,
                home,
                known_epoch,
            } => {
                let result = self.take(&thread, &owner, &home, known_epoch).await;
                Some(Done::Taken { session, result })
            }
            Op::Adopt {
                thread,
                owner,
                home,
            } => {
                let sent = Instant::now();
                let result = match self.store.claim(&owner, &thread).await {
                    Ok(_) => self.store.acquire(&thread, holder, self.lease_ttl).await,
                    Err(err) => Err(err),
                };
                Some(Done::Adopted {
                    sent,
                    thread,
                    owner,
                    home,
                    result,
                })
            }
            Op::Publish {
                thread,
                epoch,
                home,
                release,
            } => {
                let result = self.publish(&thread, epoch, &home).await;
                if release {
                    if let Err(err) = self.store.release(&thread, holder, epoch).await {
                        log::line(format_args!("cannot release the lease of {thread}: {err}"));
                    }
                }
                Some(Done::Published {
                    thread,
                    epoch,
                    result,
                })
            }
            Op::Renew { leases } => {
                let sent = Instant::now();
                let result = self.store.renew(holder, &leases, self.lease_ttl).await;
                Some(Done::Renewed { sent, result })
            }
            Op::Finish {
                owner,
                key,
                outcome,
            } => {
                let stored = match self.store.finish(&owner, &key, holder, outcome).await {
                    Ok(()) => true,
                    Err(err) => {
                        log::line(format_args!("cannot store an idempotent reply yet: {err}"));
                        false
                    }
                };
                Some(Done::Stored { owner, key, stored })
            }
            Op::Abandon { owner, key } => {
                if let Err(err) = self.store.abandon(&owner, &key, holder).await {
                    log::line(format_args!("cannot release an idempotency key: {err}"));
                }
                None
            }
        }
    }

    /// [`Op::Take`]: the owner check, the lease, the import. Errors say whether a retry may
    /// succeed (the store was unreachable) or not (the shared files are broken).
    async fn take(
        &self,
        thread: &str,
        owner: &str,
        home: &std::path::Path,
        known_epoch: Option<u64>,
    ) -> Result<Taken, TakeError> {
        let sent = Instant::now();
        let store_error = |err: StoreError| TakeError {
            detail: err.to_string(),
            retryable: true,
        };
        match self.store.owner(thread).await.map_err(store_error)? {
            None => return Ok(Taken::Unowned),
            Some(recorded) if recorded != owner => return Ok(Taken::Foreign),
            Some(_) => {}
        }
        match self
            .store
            .acquire(thread, &self.holder, self.lease_ttl)
            .await
            .map_err(store_error)?
        {
            Acquire::Held { holder, expires_in } => Ok(Taken::Held { holder, expires_in }),
            Acquire::Granted { epoch, published } => {
                let Some(published) = published else {
                    return Ok(Taken::Granted {
                        epoch,
                        published: None,
                        sent,
                    });
                };
                if known_epoch != Some(published.epoch) {
                    let (home, shared, thread_id, rollout) = (
                        home.to_owned(),
                        Arc::clone(&self.shared),
                        thread.to_owned(),
                        published.rollout.clone(),
                    );
                    let imported = file_work(move || {
                        rollouts::import(&home, &shared, &thread_id, published.epoch, &rollout)
                    })
                    .await;
                    if let Err(err) = imported {
                        // The lease is given back so the thread is not stuck here until expiry.
                        let _ = self.store.release(thread, &self.holder, epoch).await;
                        return Err(TakeError {
                            detail: format!("cannot import the thread's rollout: {err}"),
                            // A hung filesystem may come back; a missing or broken file will not.
                            retryable: err.kind() == io::ErrorKind::TimedOut,
                        });
                    }
                }
                Ok(Taken::Granted {
                    epoch,
                    published: Some(published.epoch),
                    sent,
                })
            }
        }
    }

    /// [`Op::Publish`]: copies the rollout, then moves the store's pointer to it, fenced by
    /// `epoch`; `Ok(false)` when the lease moved on (the copy is never read).
    async fn publish(
        &self,
        thread: &str,
        epoch: u64,
        home: &std::path::Path,
    ) -> Result<bool, String> {
        let (home, shared, thread_id) =
            (home.to_owned(), Arc::clone(&self.shared), thread.to_owned());
        let copied = file_work(move || rollouts::publish(&home, &shared, &thread_id, epoch))
            .await
            .map_err(|err| format!("cannot copy the rollout: {err}"))?;
        let Some(relative) = copied else {
            // Codex writes the rollout with the first turn: nothing to publish yet.
            return Ok(true);
        };
        let current = self
            .store
            .publish(thread, &self.holder, epoch, &relative)
            .await
            .map_err(|err| err.to_string())?;
        if current {
            rollouts::prune(&self.shared, thread, epoch);
        }
        Ok(current)
    }
}
