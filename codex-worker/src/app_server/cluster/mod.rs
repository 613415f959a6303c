//! Cluster mode (`--store`): threads that survive the loss of a node, and idempotent retries
//! (docs/node-loss.md).
//!
//! This layer sits between the bus and the [`Manager`]. Before a request that names a thread this
//! worker does not hold a lease on reaches the manager, it checks in the shared store that the
//! request's tenant owns the thread, takes the thread's lease (refusing with `thread_leased`
//! while another live holder has it) and brings the thread's newest published rollout into the
//! local `CODEX_HOME`, where the bridge resumes it. After each turn the rollout is published, and
//! the turn's `turn/completed` waits for that ([`hold`]); a lease lost while a turn runs stops the
//! turn and reports it failed. A request with an idempotency key runs at most once per (tenant,
//! method, thread, key) ([`keyed`]): a retry while it runs waits for its reply, a later one gets
//! the stored reply. While a request waits for the store, the later lines of its session wait
//! behind it, so a session's order is kept; other sessions go on.
//!
//! The store and the files are reached from tasks ([`tasks`]); this state machine only decides.

mod hold;
mod keyed;
mod keys;
mod leases;
mod rollouts;
mod tasks;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use codex_bus_store::{Acquire, Begin, Finished, Store, StoreError};
use codex_bus_worker_io::log;
use codex_bus_worker_io::message::{self, Message};

use super::errors::WorkerError;
use super::manager::{Effects, Manager};
use super::sessions::{key_of, Scope, SessionKey};
use super::wire;
use hold::Hold;
use keyed::{Key, Keyed, Waiter};
use leases::Leases;
pub use tasks::Done;
use tasks::{Op, TakeError, Taken, Tasks};

/// How long the final publish-and-release of every lease may take at the end of a drain.
const RELEASE_BUDGET: Duration = Duration::from_secs(5);

/// Most bytes of lines waiting behind requests that wait for the store; beyond it the worker
/// stops reading from the bus until the store answers (backpressure, through the bus to the
/// clients), rather than buffer without bound.
const MAX_BLOCKED_BYTES: usize = 16 * 1024 * 1024;

/// What a client is told of a turn that ran while this worker's lease of its thread lapsed or
/// moved on: it is not in the history other nodes read.
const LOST_TURN: &str = "this node lost the thread's lease while the turn ran (the shared store \
was unreachable, or another node took the thread over): the turn is not in the thread's shared \
history";

/// Most threads created during a store outage kept for recording once it is back; beyond it the
/// oldest stay local to this slot (logged), as without cluster mode.
const MAX_UNADOPTED: usize = 10_000;

/// Cluster mode's settings (docs/codex-worker.md, "Cluster mode").
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `sqlite:PATH` or `postgres://…`.
    pub store: String,
    /// The shared state directory, where rollouts are published.
    pub shared_dir: PathBuf,
    /// This worker's lease holder name, `node/pool/slot`.
    pub holder: String,
    /// A lease expires this long after its last renewal; renewed every third of it.
    pub lease_ttl: Duration,
    /// A lease of a thread without a turn or request for this long is released.
    pub lease_idle: Duration,
    /// How long an idempotency record is kept.
    pub idempotency_ttl: Duration,
    /// Largest reply kept for a replay, in bytes.
    pub max_reply: usize,
    /// The worker's per-request timeout: a request still running after it (plus a lease TTL)
    /// at a holder that never answered has lost its holder.
    pub request_timeout: Duration,
}

/// A request line held back while the store is asked about it.
#[derive(Debug)]
struct Head {
    line: Vec<u8>,
    /// The idempotency key this request began: set when it asked the store for the key's record
    /// (the retries arriving meanwhile attach to it), kept once the store said it is this
    /// request's to run. Only this request may end the key's waiters or release its record; a
    /// retry that has not been admitted yet has none, even when its key runs here.
    key: Option<Key>,
}

/// What cluster mode keeps between events.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    tasks: Tasks,
    leases: Leases,
    /// Per session, the lines waiting behind a request whose store work is in flight (that
    /// request first).
    blocked: HashMap<SessionKey, VecDeque<Head>>,
    /// The bytes of the lines in `blocked`.
    blocked_bytes: usize,
    /// Keyed requests in progress here.
    keyed: Keyed,
    /// When this worker started: a record that says it runs here but began before is from an
    /// earlier life of this slot, whose outcome is unknown.
    started: Instant,
    /// Threads created while the store was unreachable (thread, owner, home): recorded at the
    /// next renewal.
    unadopted: Vec<(String, String, PathBuf)>,
    /// `turn/completed` lines (and what follows them) waiting for their turn to be published.
    hold: Hold,
    /// Threads that came back from another node while the local child still has them loaded:
    /// the child must restart (reloading them from the rollout) before they are used here.
    stale: HashSet<String>,
}

impl Cluster {
    /// Opens the store (running its migrations) and the shared directory; the returned
    /// receiver carries the tasks' reports to [`Cluster::done`].
    pub async fn open(
        config: ClusterConfig,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Done>), String> {
        std::fs::create_dir_all(config.shared_dir.join("threads")).map_err(|err| {
            format!(
                "cannot use the shared directory {}: {err}",
                config.shared_dir.display()
            )
        })?;
        let store = Store::open(&config.store)
            .await
            .map_err(|err| format!("cannot open the store: {err}"))?;
        let (done_tx, done) = mpsc::unbounded_channel();
        let tasks = Tasks::new(
            Arc::new(store),
            Arc::from(config.holder.as_str()),
            config.shared_dir.clone(),
            (config.lease_ttl, config.idempotency_ttl),
            done_tx,
        );
        log::line(format_args!(
            "cluster mode: holder {}, shared directory {}, lease TTL {} s",
            config.holder,
            config.shared_dir.display(),
            config.lease_ttl.as_secs()
        ));
        let leases = Leases::new(config.lease_ttl, config.lease_idle, Instant::now());
        Ok((
            Self {
                config,
                tasks,
                leases,
                blocked: HashMap::new(),
                blocked_bytes: 0,
                keyed: Keyed::default(),
                started: Instant::now(),
                unadopted: Vec::new(),
                hold: Hold::default(),
                stale: HashSet::new(),
            },
            done,
        ))
    }

    /// Handles one line from the bus: on to the manager now, or after the store answered.
    pub fn bus_line(&mut self, line: &[u8], now: Instant, manager: &mut Manager, fx: &mut Effects) {
        let session = match message::classify(line) {
            Message::Call(call) => call
                .session
                .and_then(|token| key_of(token.get().as_bytes())),
            _ => None,
        };
        match session {
            Some(session) if self.blocked.contains_key(&session) => {
                if let Some(queue) = self.blocked.get_mut(&session) {
                    self.blocked_bytes += line.len();
                    queue.push_back(Head {
                        line: line.to_vec(),
                        key: None,
                    });
                }
            }
            Some(session) => {
                let head = Head {
                    line: line.to_vec(),
                    key: None,
                };
                if let Some(head) = self.admit(&session, head, now, manager, fx) {
                    self.blocked_bytes += head.line.len();
                    self.blocked.insert(session, VecDeque::from([head]));
                }
            }
            // Answers to server requests need nothing from the store and name no session to
            // wait behind; what cannot be routed is the bridge's to answer.
            None => manager.bus_line(line, now, fx),
        }
    }

    /// Handles a task's report: the blocked request it was for goes on (or is answered), and so
    /// do the lines of its session behind it.
    pub fn done(&mut self, done: Done, now: Instant, manager: &mut Manager, fx: &mut Effects) {
        match done {
            Done::Begun { session, result } => {
                if let Some(head) = self.take_head(&session) {
                    let head = self.begun(&session, head, result, fx);
                    self.resume(&session, head, now, manager, fx);
                }
            }
            Done::Taken { session, result } => {
                if let Some(head) = self.take_head(&session) {
                    let head = self.taken(&session, head, result, now, manager, fx);
                    self.resume(&session, head, now, manager, fx);
                }
            }
            Done::Adopted {
                sent,
                thread,
                owner,
                home,
                result,
            } => match result {
                Ok(Acquire::Granted { epoch, .. }) => {
                    self.leases.granted(&thread, epoch, home, sent)
                }
                Ok(Acquire::Held { holder, .. }) => log::line(format_args!(
                    "thread {thread}, created here, is leased by {holder}"
                )),
                Err(err) => {
                    log::line(format_args!(
                        "cannot record thread {thread} in the store ({err}); retrying"
                    ));
                    if self.unadopted.len() >= MAX_UNADOPTED {
                        let (oldest, _, _) = self.unadopted.remove(0);
                        log::line(format_args!(
                            "too many threads wait to be recorded in the store: {oldest} stays local"
                        ));
                    }
                    self.unadopted.push((thread, owner, home));
                }
            },
            Done::Published {
                thread,
                epoch,
                result,
            } => {
                // A publish that failed (store or shared directory down) is retried at every
                // renewal while the lease lives: the turn stands, and is saved once they are back.
                let lost = matches!(result, Ok(false)).then_some(LOST_TURN);
                self.hold.release(&thread, lost, &mut fx.bus);
                self.published(thread, epoch, result);
            }
            Done::Stored { owner, key, stored } => {
                if stored {
                    self.keyed.stored(&(owner, key));
                }
            }
            Done::Renewed { sent, result } => match result {
                Ok(lost) => self.leases.renewed(sent, &lost),
                Err(err) => {
                    self.leases.renew_failed();
                    log::line(format_args!("cannot renew leases: {err}"));
                }
            },
        }
    }

    /// A publish ended: `Ok(false)` means the lease moved on (fenced out).
    fn published(&mut self, thread: String, epoch: u64, result: Result<bool, String>) {
        match result {
            Ok(true) => self.leases.published(&thread, epoch),
            Ok(false) => {
                log::line(format_args!(
                    "the lease of thread {thread} moved on from epoch {epoch}: it is no longer driven here"
                ));
                self.leases.lost(&thread);
            }
            Err(err) => {
                log::line(format_args!(
                    "cannot publish the rollout of thread {thread} yet: {err}"
                ));
                self.leases.unpublished(&thread);
            }
        }
    }

    /// Runs what is due: renewals, idle releases, local expiry of leases the store could not
    /// renew.
    pub fn on_timer(&mut self, now: Instant, manager: &Manager) {
        if let Some(leases) = self.leases.due_renewal(now) {
            if !leases.is_empty() {
                self.tasks.spawn(Op::Renew { leases });
            }
            for (thread, epoch, home) in self.leases.take_unpublished() {
                self.tasks.spawn(Op::Publish {
                    thread,
                    epoch,
                    home,
                    release: false,
                });
            }
            // Replies the store could not take yet.
            for ((owner, key), outcome) in self.keyed.unstored() {
                self.tasks.spawn(Op::Finish {
                    owner,
                    key,
                    outcome,
                });
            }
            for (thread, owner, home) in std::mem::take(&mut self.unadopted) {
                self.tasks.spawn(Op::Adopt {
                    thread,
                    owner,
                    home,
                });
            }
        }
        for (thread, epoch, home) in self.leases.idle(now, |thread| manager.thread_busy(thread)) {
            log::line(format_args!("releasing the lease of idle thread {thread}"));
            self.tasks.spawn(Op::Publish {
                thread,
                epoch,
                home,
                release: true,
            });
        }
        self.leases.expire(now);
        // A thread no longer leased here is checked afresh when it comes back.
        let leases = &self.leases;
        self.stale.retain(|thread| leases.holds(thread, now));
    }

    /// When [`Cluster::on_timer`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases.next_deadline(!self.unadopted.is_empty())
    }

    /// At the end of a drain: publishes and releases every lease, so another node takes the
    /// threads at once instead of after the TTL; bounded by [`RELEASE_BUDGET`].
    pub async fn release_all(&mut self) {
        let leases = self.leases.drain_all();
        if !leases.is_empty() {
            log::line(format_args!(
                "publishing and releasing {} lease(s) before exiting",
                leases.len()
            ));
        }
        let tasks = &self.tasks;
        let all = async move {
            for (thread, epoch, home) in leases {
                tasks
                    .run(Op::Publish {
                        thread,
                        epoch,
                        home,
                        release: true,
                    })
                    .await;
            }
        };
        if tokio::time::timeout(RELEASE_BUDGET, all).await.is_err() {
            log::line(format_args!(
                "leases not all released within {} s: they expire by their TTL",
                RELEASE_BUDGET.as_secs()
            ));
        }
    }

    /// The worker is exiting: answers every request still waiting for the store (and the
    /// retries attached to it), releases their keys, stores the replies the store has not taken
    /// yet, and lets out every held line; the store work is bounded by [`RELEASE_BUDGET`].
    pub async fn finish(&mut self, fx: &mut Effects) {
        self.hold.release_all(&mut fx.bus);
        let mut abandon = Vec::new();
        self.blocked_bytes = 0;
        for (session, queue) in std::mem::take(&mut self.blocked) {
            for head in queue {
                // Only a key this request began is its to release: a queued retry's key may be
                // its first attempt's, running in Codex.
                if let Some(key) = head.key {
                    for waiter in self.keyed.end(&key) {
                        fx.bus.push(waiter.error(&WorkerError::Draining));
                    }
                    abandon.push(key);
                }
                reply_error(&session, &head.line, &WorkerError::Draining, fx);
            }
        }
        let unstored = self.keyed.unstored();
        let tasks = &self.tasks;
        let work = async move {
            for (owner, key) in abandon {
                tasks.run(Op::Abandon { owner, key }).await;
            }
            for ((owner, key), outcome) in unstored {
                tasks
                    .run(Op::Finish {
                        owner,
                        key,
                        outcome,
                    })
                    .await;
            }
        };
        if tokio::time::timeout(RELEASE_BUDGET, work).await.is_err() {
            log::line(format_args!(
                "idempotency records not all settled within {} s",
                RELEASE_BUDGET.as_secs()
            ));
        }
    }

    /// Decides about one request: returns it when it must wait for a task (started here), or
    /// `None` when it went on to the manager or was answered.
    fn admit(
        &mut self,
        session: &SessionKey,
        head: Head,
        now: Instant,
        manager: &mut Manager,
        fx: &mut Effects,
    ) -> Option<Head> {
        let Message::Call(call) = message::classify(&head.line) else {
            manager.bus_line(&head.line, now, fx);
            return None;
        };
        if call.id.is_none() {
            manager.bus_line(&head.line, now, fx);
            return None;
        }
        let scope = Scope::of(session, call.tenant);
        let owner = owner_name(&scope);
        if head.key.is_none() {
            let key = match keys::key_of(&head.line, &call.name) {
                Ok(key) => key,
                Err(()) => {
                    reply_error(session, &head.line, &WorkerError::InvalidIdempotencyKey, fx);
                    return None;
                }
            };
            if let Some(key) = key {
                let key: Key = (owner.clone(), key);
                let Some(waiter) = Waiter::of(session, &call) else {
                    manager.bus_line(&head.line, now, fx);
                    return None;
                };
                if let Some(outcome) = self.keyed.finishing(&key) {
                    // It finished here; the store may not have the reply yet.
                    fx.bus.push(waiter.replay(outcome));
                    return None;
                }
                // A retry while it runs here gets the first one's reply.
                if self.keyed.attach(&key, waiter).is_ok() {
                    return None;
                }
                self.keyed.begin(key.clone());
                self.tasks.spawn(Op::Begin {
                    session: session.clone(),
                    owner: key.0.clone(),
                    key: key.1.clone(),
                });
                return Some(Head {
                    key: Some(key),
                    ..head
                });
            }
        }
        let refs = wire::params_refs(call.params);
        if let Some(thread) = refs.thread_id.as_deref() {
            if rollouts::shareable(thread) && !self.leases.holds(thread, now) {
                let thread = thread.to_owned();
                let home = manager.codex_home(&scope);
                self.tasks.spawn(Op::Take {
                    session: session.clone(),
                    known_epoch: self.leases.known_epoch(&thread),
                    thread,
                    owner,
                    home,
                });
                return Some(head);
            }
            self.leases.used(thread, now);
            if self.stale.contains(thread) {
                // Codex numbers a rollout's lines and keeps the thread in memory: a child that
                // loaded the thread before it moved would hide, and not know, the turns added
                // elsewhere. It reloads by restarting, which must not fail other turns.
                let why = format!("thread {thread} changed on another node");
                if !manager.reload_child(&scope, &why, now, fx) {
                    self.refuse(session, head, &WorkerError::ThreadReloading, fx);
                    return None;
                }
                self.stale.remove(thread);
            }
        }
        self.pass(session, head, now, manager, fx);
        None
    }

    /// The head of a blocked session's queue, whose task just reported.
    fn take_head(&mut self, session: &SessionKey) -> Option<Head> {
        let head = self.blocked.get_mut(session)?.pop_front()?;
        self.blocked_bytes -= head.line.len();
        Some(head)
    }

    /// Whether so much waits behind the store that the worker must stop reading from the bus.
    pub fn saturated(&self) -> bool {
        self.blocked_bytes > MAX_BLOCKED_BYTES
    }

    /// Goes on with `head` (when it still has a step to take) and then the lines behind it,
    /// until one must wait again or none is left.
    fn resume(
        &mut self,
        session: &SessionKey,
        head: Option<Head>,
        now: Instant,
        manager: &mut Manager,
        fx: &mut Effects,
    ) {
        let mut next = head;
        loop {
            let head = match next.take() {
                Some(head) => head,
                None => match self.take_head(session) {
                    Some(head) => head,
                    None => {
                        self.blocked.remove(session);
                        return;
                    }
                },
            };
            if let Some(waiting) = self.admit(session, head, now, manager, fx) {
                self.blocked_bytes += waiting.line.len();
                if let Some(queue) = self.blocked.get_mut(session) {
                    queue.push_front(waiting);
                } else {
                    self.blocked
                        .insert(session.clone(), VecDeque::from([waiting]));
                }
                return;
            }
        }
    }

    /// The store's answer to beginning a key: the request goes on (`Some`) or is answered here,
    /// and so are the retries that attached to it meanwhile.
    fn begun(
        &mut self,
        session: &SessionKey,
        head: Head,
        result: Result<Begin, StoreError>,
        fx: &mut Effects,
    ) -> Option<Head> {
        let Message::Call(call) = message::classify(&head.line) else {
            return None;
        };
        let key = head.key.clone()?;
        let error = match result {
            Ok(Begin::New) => return Some(head),
            // Began in this life of this worker, and not running here (it would have been
            // attached to): an earlier call committed the record but failed to say so, and the
            // request never ran. It is this worker's to run.
            Ok(Begin::Running { holder, age })
                if holder == self.config.holder && age < self.started.elapsed() =>
            {
                return Some(head)
            }
            Ok(Begin::Done(outcome)) => {
                if let Some(first) = Waiter::of(session, &call) {
                    fx.bus.push(first.replay(&outcome));
                }
                for waiter in self.keyed.end(&key) {
                    fx.bus.push(waiter.replay(&outcome));
                }
                return None;
            }
            Ok(Begin::Running { holder, age }) => {
                let bound = self
                    .config
                    .request_timeout
                    .saturating_add(self.config.lease_ttl);
                if age > bound {
                    WorkerError::IdempotencyOutcomeUnknown
                } else {
                    WorkerError::IdempotencyInProgress(holder)
                }
            }
            Err(err) => {
                // The record may have been written before the call failed: released, so the
                // retry this error invites is not told the request runs.
                self.tasks.spawn(Op::Abandon {
                    owner: key.0.clone(),
                    key: key.1.clone(),
                });
                WorkerError::StoreUnavailable(err.to_string())
            }
        };
        for waiter in self.keyed.end(&key) {
            fx.bus.push(waiter.error(&error));
        }
        reply_error(session, &head.line, &error, fx);
        None
    }

    /// The store's answer to taking a thread: the request goes on (`Some`) or is refused here.
    fn taken(
        &mut self,
        session: &SessionKey,
        head: Head,
        result: Result<Taken, TakeError>,
        now: Instant,
        manager: &mut Manager,
        fx: &mut Effects,
    ) -> Option<Head> {
        let Message::Call(call) = message::classify(&head.line) else {
            return None;
        };
        let scope = Scope::of(session, call.tenant);
        let refs = wire::params_refs(call.params);
        let thread = refs.thread_id.as_deref().unwrap_or_default();
        let error = match result {
            Ok(Taken::Unowned) => {
                // Not shared (yet): the worker's own rules decide.
                self.pass(session, head, now, manager, fx);
                return None;
            }
            Ok(Taken::Granted {
                epoch,
                published,
                sent,
            }) => {
                let home = manager.codex_home(&scope);
                let imported = published.is_some() && published != self.leases.known_epoch(thread);
                log::line(format_args!(
                    "took the lease of thread {thread} (epoch {epoch}){}",
                    match (imported, published) {
                        (true, Some(from)) => format!(", its rollout of epoch {from} brought in"),
                        _ => String::new(),
                    }
                ));
                if imported && manager.thread_loaded(&scope, thread) {
                    self.stale.insert(thread.to_owned());
                }
                self.leases.granted(thread, epoch, home, sent);
                if let Some(published) = published {
                    self.leases.published(thread, published);
                }
                manager.restore_owner(thread, scope, session.clone(), now);
                return Some(head);
            }
            Ok(Taken::Foreign) => match scope {
                Scope::Tenant(_) => WorkerError::ThreadNotFound,
                Scope::Session(_) => WorkerError::ThreadNotOwned,
            },
            Ok(Taken::Held { holder, expires_in }) => WorkerError::ThreadLeased {
                holder,
                retry_after_ms: u64::try_from(expires_in.as_millis()).unwrap_or(u64::MAX),
            },
            Err(TakeError {
                detail,
                retryable: true,
            }) => WorkerError::StoreUnavailable(detail),
            Err(TakeError { detail, .. }) => WorkerError::ThreadLost(detail),
        };
        self.refuse(session, head, &error, fx);
        None
    }

    /// Answers `head` with `error`: the request did not run, so its idempotency key (if it began
    /// one) is released, and the retries that attached to it get the same answer.
    fn refuse(&mut self, session: &SessionKey, head: Head, error: &WorkerError, fx: &mut Effects) {
        if let Some(key) = head.key {
            // Retries that attached to it get the same refusal: nothing ran.
            for waiter in self.keyed.end(&key) {
                fx.bus.push(waiter.error(error));
            }
            self.tasks.spawn(Op::Abandon {
                owner: key.0,
                key: key.1,
            });
        }
        reply_error(session, &head.line, error, fx);
    }

    /// Passes `head` on to the manager; a keyed one is remembered until its reply goes out.
    fn pass(
        &mut self,
        session: &SessionKey,
        head: Head,
        now: Instant,
        manager: &mut Manager,
        fx: &mut Effects,
    ) {
        if let Some(key) = head.key {
            if let Message::Call(call) = message::classify(&head.line) {
                if let Some(id) = call.id {
                    self.keyed
                        .expect_reply(session, id.get().as_bytes().to_vec(), key);
                }
            }
        }
        manager.bus_line(&head.line, now, fx);
    }

    /// Follows up what the manager just did (called before its effects are carried out): new
    /// threads are recorded and leased, finished turns published, keyed replies stored and
    /// copied to their retries.
    pub fn follow_up(&mut self, now: Instant, manager: &mut Manager, fx: &mut Effects) {
        // A turn that ended on a lease past its time must count it lost now, not at the next
        // timer (it would go out as completed, unpublished).
        if !fx.turns_ended.is_empty() {
            self.leases.expire(now);
        }
        // Another node may drive these threads now: stop this node's turns on them (their
        // `turn/completed` reports the turn failed, below).
        for thread in self.leases.take_newly_lost() {
            manager.interrupt_thread(&thread, now, fx);
        }
        for (thread, scope) in std::mem::take(&mut fx.owned) {
            if rollouts::shareable(&thread) {
                self.tasks.spawn(Op::Adopt {
                    thread,
                    owner: owner_name(&scope),
                    home: manager.codex_home(&scope),
                });
            }
        }
        let mut publishing = Vec::new();
        for thread in std::mem::take(&mut fx.turns_ended) {
            if self.leases.was_lost(&thread) {
                hold::fail_turns(fx.bus.iter_mut(), &thread, LOST_TURN);
                continue;
            }
            if let Some((epoch, home)) = self.leases.publishable(&thread, now) {
                publishing.push(thread.clone());
                self.tasks.spawn(Op::Publish {
                    thread,
                    epoch,
                    home,
                    release: false,
                });
            }
        }
        self.hold.hold(&mut fx.bus, &publishing);
        let mut copies = Vec::new();
        for line in &fx.bus {
            let Some(session) = &line.session else {
                continue;
            };
            if !self.keyed.awaits(session) {
                continue;
            }
            let Some((id, outcome, is_error)) = keys::outcome_of(&line.line) else {
                continue;
            };
            let Some(key) = self.keyed.replied(session, id) else {
                continue;
            };
            for waiter in self.keyed.end(&key) {
                copies.push(waiter.reply(&outcome));
            }
            if is_error && keys::not_run(&outcome) {
                self.tasks.spawn(Op::Abandon {
                    owner: key.0,
                    key: key.1,
                });
                continue;
            }
            let stored = if outcome.len() > self.config.max_reply {
                Finished::TooLarge
            } else {
                Finished::Reply(outcome)
            };
            if let Some((owner, dropped)) = self.keyed.finish(key.clone(), stored.clone()) {
                log::line(format_args!(
                    "too many replies wait for the store: {owner}'s {dropped:?} is kept only there"
                ));
            }
            self.tasks.spawn(Op::Finish {
                owner: key.0,
                key: key.1,
                outcome: stored,
            });
        }
        fx.bus.extend(copies);
    }
}

/// The store's name for who owns a scope's threads: `t:<tenant>`, or without `auth` (where the
/// session is the only identity) `s:<session key>`.
fn owner_name(scope: &Scope) -> String {
    match scope {
        Scope::Tenant(tenant) => format!("t:{tenant}"),
        Scope::Session(session) => format!("s:{}", String::from_utf8_lossy(session)),
    }
}

/// Answers the request `line` of `session` with `error`.
fn reply_error(session: &SessionKey, line: &[u8], error: &WorkerError, fx: &mut Effects) {
    let Message::Call(call) = message::classify(line) else {
        return;
    };
    if let Some(request) = Waiter::of(session, &call) {
        fx.bus.push(request.error(error));
    }
}
