//! The scenario engine shared by the mock worker and the fake child: threads and turns that
//! unfold like Codex v0.169.0's (`turn/started`, items, `item/agentMessage/delta`s, token usage,
//! `turn/completed`), with approvals, failures and crashes, on a seeded, optionally virtual clock.
//!
//! The engine emits abstract events; each front end renders them in its own wire format (the
//! bus's, with `jsonrpc` and `sessionId`, or the child's, without).

pub mod clock;
pub mod knobs;
mod rng;
mod shapes;
mod store;
mod text;
mod turn;
mod utc;

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::{json, Value};

use codex_bus_worker_io::log;

use clock::Clock;
use knobs::{ClockKind, Directives, Knobs};
use rng::Rng;
use shapes::{ThreadMeta, TurnTimes};
use store::Store;
use turn::{ApprovalKind, Planned, Step};

/// Steps run per timer release: small enough that output is written in slices, large enough
/// that a release costs far more work than the loop turn around it.
pub const STEPS_PER_RELEASE: usize = 1024;

/// The methods [`Engine::call`] implements.
const METHODS: &[&str] = &[
    "thread/start",
    "thread/resume",
    "thread/fork",
    "thread/unsubscribe",
    "thread/read",
    "thread/list",
    "thread/loaded/list",
    "turn/start",
    "turn/steer",
    "turn/interrupt",
    "model/list",
];

/// Whether the scenario implements `method` (cheap, so other methods cost the mock nothing).
pub fn implements(method: &str) -> bool {
    METHODS.contains(&method)
}

/// Who a thread's events go to: the session token in the mock worker, nothing in the fake child.
pub type Tag = Arc<[u8]>;

/// The tenant a thread belongs to (docs/worker-contract.md, "Tenants"): only callers of that
/// tenant see it. The fake child, standing in for Codex, which knows no tenants, passes one
/// tenant for everything.
pub type Tenant = Arc<str>;

/// A JSON-RPC error the scenario answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The code (Codex answers bad requests with -32600).
    pub code: i32,
    /// The message.
    pub message: String,
}

impl RpcError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: -32600,
            message: message.into(),
        }
    }
}

/// Something the front end must write, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Emit {
    /// The answer to the request being handled (a result or an error).
    Reply(Result<String, RpcError>),
    /// A notification for the thread's owner.
    Notify {
        /// The owner.
        tag: Tag,
        /// The method.
        method: &'static str,
        /// The params object.
        params: String,
        /// `emittedAtMs`.
        at_ms: u64,
    },
    /// A server request (an approval) for the thread's owner.
    Ask {
        /// The owner.
        tag: Tag,
        /// The request id.
        id: u64,
        /// The method.
        method: &'static str,
        /// The params object.
        params: String,
    },
    /// The process must die now (`--crash-after-turns`, `@crash`).
    Crash,
}

/// A loaded thread.
#[derive(Debug)]
struct Thread {
    tag: Tag,
    tenant: Tenant,
    meta: ThreadMeta,
    turn: Option<Turn>,
}

/// The turn in progress on a thread.
#[derive(Debug)]
struct Turn {
    id: String,
    /// Distinguishes this turn's timers from an earlier turn's.
    serial: u64,
    steps: VecDeque<Planned>,
    /// Virtual time of the turn's start and of its latest event.
    started_v: u64,
    cursor_v: u64,
    started_s: u64,
    agent_item: Option<String>,
    agent_open: bool,
    /// `{"threadId":…,"turnId":…,"itemId":…,"delta":` of the open agent message: every delta
    /// params object starts with it, so it is rendered once per item.
    delta_prefix: String,
    text: String,
    input_bytes: usize,
    waiting: Option<Waiting>,
    /// The user message items, kept only when the turn goes into a rollout (the mock worker's
    /// benchmarks run thousands of turns at once and keep nothing).
    users: Vec<Value>,
}

/// An approval the turn waits for.
#[derive(Debug)]
struct Waiting {
    request_id: u64,
    item_id: String,
    kind: ApprovalKind,
}

/// A scheduled step: `(due, seq)` orders, `thread`/`serial` find the turn.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    due: Instant,
    seq: u64,
    thread: Arc<str>,
    serial: u64,
}

/// Threads, turns and their timers.
#[derive(Debug)]
pub struct Engine {
    knobs: Knobs,
    clock: Clock,
    rng: Rng,
    store: Option<Store>,
    /// Thread and turn ids are UUIDv7-shaped, as Codex's, with these random bits mixed in
    /// (the fake child); `None`: `thr_0001`-style counters (the mock worker).
    uuid_salt: Option<u64>,
    next_id: u64,
    threads: HashMap<Arc<str>, Thread>,
    timers: BinaryHeap<Reverse<Timer>>,
    seq: u64,
    /// Open approval requests: id → thread.
    asks: HashMap<u64, String>,
    next_request_id: u64,
    turns_started: u64,
    cwd: String,
}

impl Engine {
    /// The mock worker's engine: `thr_0001`-style ids, nothing persisted.
    pub fn new(knobs: Knobs) -> Self {
        Self::with(knobs, None, None, 1)
    }

    /// The fake child's engine: Codex-like UUIDv7 thread and turn ids and, with `CODEX_HOME`
    /// `home`, persistent threads in rollouts there as Codex keeps them (see [`store`]).
    pub fn fake_child(knobs: Knobs, home: Option<PathBuf>) -> io::Result<Self> {
        // On the virtual clock transcripts must be exact, so the ids' random bits come from the
        // seed and the home (two homes a thread moves between must not mint the same ids from
        // the same counter); otherwise from the OS, so that no two processes ever do.
        let salt = match knobs.clock {
            ClockKind::Virtual => {
                let fixed = BuildHasherDefault::<DefaultHasher>::default();
                knobs.seed ^ home.as_ref().map_or(0, |home| fixed.hash_one(home))
            }
            ClockKind::Real => RandomState::new().hash_one(std::process::id()),
        };
        let (store, next_id) = match home {
            Some(home) => {
                let (store, first) = Store::open(home)?;
                (Some(store), first)
            }
            None => (None, 1),
        };
        Ok(Self::with(knobs, store, Some(salt), next_id))
    }

    fn with(knobs: Knobs, store: Option<Store>, uuid_salt: Option<u64>, next_id: u64) -> Self {
        let cwd = std::env::current_dir()
            .map(|dir| dir.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/".to_owned());
        Self {
            clock: Clock::new(knobs.clock),
            rng: Rng::new(knobs.seed),
            knobs,
            store,
            uuid_salt,
            next_id,
            threads: HashMap::new(),
            timers: BinaryHeap::new(),
            seq: 0,
            asks: HashMap::new(),
            next_request_id: 0,
            turns_started: 0,
            cwd,
        }
    }

    /// A fresh server-request id (shared with the front end's own requests).
    pub fn allocate_request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    /// The timestamp of "now" on the scenario's clock, in epoch milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.clock.stamp_ms(self.clock.virtual_now())
    }

    /// When the next scheduled step is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse(timer)| timer.due)
    }

    /// Whether any turn is still scheduled to make progress (turns waiting for an approval
    /// are not: only an answer moves them).
    pub fn has_timers(&self) -> bool {
        !self.timers.is_empty()
    }

    /// Handles a request of a caller of `tenant` that the scenario implements; returns `false`
    /// for other methods. A thread of another tenant is answered exactly as one that does not
    /// exist, so a caller learns nothing about other tenants' threads.
    pub fn call(
        &mut self,
        method: &str,
        params: Option<&RawValue>,
        tag: &Tag,
        tenant: &str,
        now: Instant,
        emits: &mut Vec<Emit>,
    ) -> bool {
        if !implements(method) {
            return false;
        }
        let params: Value = params
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or(Value::Null);
        if let Some(id) = params["threadId"].as_str() {
            if self
                .threads
                .get(id)
                .is_some_and(|thread| *thread.tenant != *tenant)
            {
                emits.push(Emit::Reply(absent(method, id)));
                return true;
            }
        }
        match method {
            "thread/start" => self.thread_start(&params, tag, tenant, emits),
            "thread/resume" => self.thread_resume(&params, tag, tenant, emits),
            "thread/fork" => self.thread_fork(&params, tag, tenant, emits),
            "thread/unsubscribe" => self.thread_unsubscribe(&params, emits),
            "thread/read" => {
                let with_turns = params["includeTurns"].as_bool().unwrap_or(false);
                let reply = self.find(&params).map(|found| {
                    let turns: &[Value] = if with_turns { &found.turns } else { &[] };
                    json!({"thread": found.thread(turns)}).to_string()
                });
                emits.push(Emit::Reply(reply));
            }
            "thread/list" => self.thread_list(tenant, emits),
            "thread/loaded/list" => {
                let mut ids: Vec<&str> = self
                    .threads
                    .iter()
                    .filter(|(_, thread)| *thread.tenant == *tenant)
                    .map(|(id, _)| &**id)
                    .collect();
                ids.sort_unstable();
                emits.push(Emit::Reply(Ok(
                    json!({"data": ids, "nextCursor": null}).to_string()
                )));
            }
            "turn/start" => self.turn_start(&params, tag, now, emits),
            "turn/steer" => self.turn_steer(&params, emits),
            "turn/interrupt" => self.turn_interrupt(&params, emits),
            "model/list" => emits.push(Emit::Reply(Ok(shapes::model_list().to_string()))),
            _ => return false,
        }
        true
    }

    /// The answer of a caller of `tenant` to approval `id`: `result` is `None` for an error
    /// answer (a decline). Returns `false` when no approval of that tenant has that id (another
    /// tenant's answer changes nothing).
    pub fn answer(
        &mut self,
        id: u64,
        result: Option<&RawValue>,
        tenant: &str,
        now: Instant,
        emits: &mut Vec<Emit>,
    ) -> bool {
        let asked = self
            .asks
            .get(&id)
            .and_then(|thread| self.threads.get(thread.as_str()));
        if asked.is_some_and(|thread| *thread.tenant != *tenant) {
            return false;
        }
        let Some(thread_id) = self.asks.remove(&id) else {
            return false;
        };
        let decision = result
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
            .map(|value| value["decision"].clone())
            .unwrap_or(Value::Null);
        let accepted = match &decision {
            Value::String(word) => word.starts_with("accept"),
            Value::Object(map) => map.keys().any(|key| key.starts_with("accept")),
            _ => false,
        };
        let cancel = decision == "cancel";
        let Some(thread) = self.threads.get_mut(thread_id.as_str()) else {
            return true;
        };
        let Some(turn) = thread.turn.as_mut() else {
            return true;
        };
        let Some(waiting) = turn.waiting.take() else {
            return true;
        };
        let status = if accepted { "completed" } else { "declined" };
        let item = match waiting.kind {
            ApprovalKind::Command => {
                shapes::command_item(&waiting.item_id, &thread.meta.cwd, status)
            }
            ApprovalKind::File => shapes::file_item(&waiting.item_id, status),
        };
        let (tag, turn_id, cursor) = (thread.tag.clone(), turn.id.clone(), turn.cursor_v);
        let at = self.clock.stamp_ms(cursor);
        emits.push(notify(
            &tag,
            "serverRequest/resolved",
            json!({"threadId": thread_id, "requestId": id}),
            at,
        ));
        emits.push(notify(
            &tag,
            "item/completed",
            json!({"item": item, "threadId": thread_id, "turnId": turn_id, "completedAtMs": at}),
            at,
        ));
        if cancel {
            self.finish_interrupted(&thread_id, emits);
        } else {
            self.schedule(&thread_id, now);
        }
        true
    }

    /// Runs up to `budget` of the steps due at `now` (the rest stay due), so that a burst of
    /// turns at latency scale 0 is written out in slices rather than buffered whole.
    pub fn fire_due(&mut self, now: Instant, budget: usize, emits: &mut Vec<Emit>) {
        for _ in 0..budget {
            if self
                .timers
                .peek()
                .is_none_or(|Reverse(timer)| timer.due > now)
            {
                return;
            }
            let Some(Reverse(timer)) = self.timers.pop() else {
                return;
            };
            let current = self
                .threads
                .get(&timer.thread)
                .and_then(|thread| thread.turn.as_ref())
                .is_some_and(|turn| turn.serial == timer.serial && turn.waiting.is_none());
            if current && self.step(&timer.thread, emits) {
                self.schedule(&timer.thread, timer.due);
            }
        }
    }

    fn next_id(&mut self, kind: IdKind) -> String {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(store) = &mut self.store {
            store.used(id);
        }
        match (self.uuid_salt, kind) {
            (Some(salt), IdKind::Thread | IdKind::Turn) => {
                let mut rng = Rng::new(salt ^ id);
                uuid_v7(self.now_ms(), rng.next_u64(), rng.next_u64())
            }
            _ => format!("{}_{id:04}", kind.prefix()),
        }
    }

    /// Where `meta`'s thread `id` is recorded, for `Thread.path`: its rollout; `None` for an
    /// ephemeral thread; a `mock://` name when the fake child has no `CODEX_HOME` to write in.
    fn path_of(&self, id: &str, meta: &ThreadMeta) -> Option<String> {
        if meta.ephemeral {
            return None;
        }
        Some(match self.store.as_ref().and_then(|store| store.path(id)) {
            Some(path) => path.to_string_lossy().into_owned(),
            None => format!("mock://{id}.jsonl"),
        })
    }

    fn stamp_s(&self) -> u64 {
        self.clock.stamp_ms(self.clock.virtual_now()) / 1000
    }

    fn thread_start(&mut self, params: &Value, tag: &Tag, tenant: &str, emits: &mut Vec<Emit>) {
        let now_s = self.stamp_s();
        let meta = ThreadMeta {
            ephemeral: params["ephemeral"].as_bool().unwrap_or(false),
            cwd: params["cwd"].as_str().unwrap_or(&self.cwd).to_owned(),
            model: params["model"].as_str().unwrap_or("mock-model").to_owned(),
            created_s: now_s,
            updated_s: now_s,
            preview: String::new(),
            forked_from: None,
        };
        let id = self.next_id(IdKind::Thread);
        self.create(id, meta, tag, tenant, emits);
    }

    fn thread_fork(&mut self, params: &Value, tag: &Tag, tenant: &str, emits: &mut Vec<Emit>) {
        let source = match self.find(params) {
            Ok(source) => source,
            Err(error) => return emits.push(Emit::Reply(Err(error))),
        };
        let now_s = self.stamp_s();
        let meta = ThreadMeta {
            ephemeral: params["ephemeral"].as_bool().unwrap_or(false),
            created_s: now_s,
            updated_s: now_s,
            forked_from: Some(source.id),
            ..source.meta
        };
        let id = self.next_id(IdKind::Thread);
        self.create(id, meta, tag, tenant, emits);
    }

    /// Registers a new thread of `tenant` and answers with it, `thread/started` before or after
    /// the reply.
    fn create(
        &mut self,
        id: String,
        meta: ThreadMeta,
        tag: &Tag,
        tenant: &str,
        emits: &mut Vec<Emit>,
    ) {
        if !meta.ephemeral {
            if let Some(store) = &mut self.store {
                if let Err(err) = store.create(&id, &meta) {
                    log::line(format_args!(
                        "cannot start the rollout of thread {id}: {err}"
                    ));
                }
            }
        }
        let thread = shapes::thread(&id, &meta, self.path_of(&id, &meta).as_deref(), &[]);
        let reply = Emit::Reply(Ok(shapes::thread_result(thread.clone(), &meta).to_string()));
        let at = self.clock.stamp_ms(self.clock.virtual_now());
        let started = notify(tag, "thread/started", json!({"thread": thread}), at);
        if self.knobs.thread_started_first {
            emits.extend([started, reply]);
        } else {
            emits.extend([reply, started]);
        }
        self.threads.insert(
            Arc::from(id),
            Thread {
                tag: tag.clone(),
                tenant: Tenant::from(tenant),
                meta,
                turn: None,
            },
        );
    }

    /// Loads a thread (a stored one becomes `tenant`'s, and this process its only writer, as
    /// in Codex) and sends its events to `tag` from now on; answers with its full history
    /// unless `excludeTurns`.
    fn thread_resume(&mut self, params: &Value, tag: &Tag, tenant: &str, emits: &mut Vec<Emit>) {
        let id = params["threadId"].as_str().unwrap_or_default();
        let found = if self.threads.contains_key(id) {
            self.find(params)
        } else {
            match &mut self.store {
                Some(store) => store.claim(id).map(|rollout| Found {
                    id: id.to_owned(),
                    path: Some(rollout.path.to_string_lossy().into_owned()),
                    meta: rollout.meta,
                    turns: rollout.turns,
                }),
                None => Err(no_rollout(id)),
            }
        };
        let found = match found {
            Ok(found) => found,
            Err(error) => return emits.push(Emit::Reply(Err(error))),
        };
        let thread = self.threads.entry(Arc::from(id)).or_insert_with(|| Thread {
            tag: tag.clone(),
            tenant: Tenant::from(tenant),
            meta: found.meta.clone(),
            turn: None,
        });
        thread.tag = tag.clone();
        let turns: &[Value] = if params["excludeTurns"].as_bool().unwrap_or(false) {
            &[]
        } else {
            &found.turns
        };
        let result = shapes::thread_result(found.thread(turns), &found.meta);
        emits.push(Emit::Reply(Ok(result.to_string())));
    }

    fn thread_unsubscribe(&mut self, params: &Value, emits: &mut Vec<Emit>) {
        let id = params["threadId"].as_str().unwrap_or_default();
        let status = match self.threads.get(id) {
            Some(thread) if thread.turn.is_none() => {
                self.threads.remove(id);
                "unsubscribed"
            }
            Some(_) => "unsubscribed",
            None => return emits.push(Emit::Reply(absent("thread/unsubscribe", id))),
        };
        emits.push(Emit::Reply(Ok(json!({"status": status}).to_string())));
    }

    /// The threads of `tenant`: loaded ones, and (in the fake child, whose one tenant owns the
    /// store) the other rollouts in its home.
    fn thread_list(&mut self, tenant: &str, emits: &mut Vec<Emit>) {
        let mut all: BTreeMap<String, (ThreadMeta, Option<String>)> = self
            .threads
            .iter()
            .filter(|(_, thread)| *thread.tenant == *tenant)
            .map(|(id, thread)| {
                let path = self.path_of(id, &thread.meta);
                (id.to_string(), (thread.meta.clone(), path))
            })
            .collect();
        // Only the fake child keeps a store, and it has one tenant; a loaded thread is listed
        // above or not at all, by its tenant.
        if let Some(store) = &self.store {
            for (id, rollout) in store.list() {
                if !self.threads.contains_key(id.as_str()) {
                    let path = rollout.path.to_string_lossy().into_owned();
                    all.insert(id, (rollout.meta, Some(path)));
                }
            }
        }
        let data: Vec<Value> = all
            .iter()
            .map(|(id, (meta, path))| shapes::thread(id, meta, path.as_deref(), &[]))
            .collect();
        emits.push(Emit::Reply(Ok(
            json!({"data": data, "nextCursor": null}).to_string()
        )));
    }

    /// The thread named by `params.threadId`, loaded or in a rollout, with its history: the
    /// rollout is the only record of a thread's turns, so a loaded thread's are read back.
    fn find(&self, params: &Value) -> Result<Found, RpcError> {
        let id = params["threadId"].as_str().unwrap_or_default();
        if let Some(thread) = self.threads.get(id) {
            let turns = self
                .store
                .as_ref()
                .filter(|_| !thread.meta.ephemeral)
                .and_then(|store| store.read(id).ok())
                .map(|rollout| rollout.turns)
                .unwrap_or_default();
            return Ok(Found {
                id: id.to_owned(),
                path: self.path_of(id, &thread.meta),
                meta: thread.meta.clone(),
                turns,
            });
        }
        let rollout = self
            .store
            .as_ref()
            .ok_or_else(|| no_rollout(id))?
            .read(id)?;
        Ok(Found {
            id: id.to_owned(),
            path: Some(rollout.path.to_string_lossy().into_owned()),
            meta: rollout.meta,
            turns: rollout.turns,
        })
    }

    fn turn_start(&mut self, params: &Value, tag: &Tag, now: Instant, emits: &mut Vec<Emit>) {
        let thread_id = params["threadId"].as_str().unwrap_or_default().to_owned();
        let input = input_text(params);
        let Some(thread) = self.threads.get_mut(thread_id.as_str()) else {
            return emits.push(Emit::Reply(absent("turn/start", &thread_id)));
        };
        thread.tag = tag.clone();
        if let Some(turn) = &thread.turn {
            // Codex 0.169.0 adds the input to the running turn and answers with that turn.
            let reply = json!({"turn": shapes::turn(&turn.id, "inProgress", None, TurnTimes::default(), &[])});
            emits.push(Emit::Reply(Ok(reply.to_string())));
            self.add_input(&thread_id, &input, emits);
            return;
        }
        self.turns_started += 1;
        let directives = Directives::parse(&input);
        let steps = turn::plan(&self.knobs, &directives, self.turns_started, &mut self.rng);
        let turn_id = self.next_id(IdKind::Turn);
        let user_item = self.next_id(IdKind::Item);
        let persistent = self.store.is_some();
        self.seq += 1;
        let start_v = self.clock.virtual_now();
        let started_s = self.clock.stamp_ms(start_v) / 1000;
        let Some(thread) = self.threads.get_mut(thread_id.as_str()) else {
            return;
        };
        if thread.meta.preview.is_empty() {
            thread.meta.preview = input.chars().take(shapes::PREVIEW_CHARS).collect();
        }
        let users = if persistent && !thread.meta.ephemeral {
            vec![shapes::user_item(&user_item, &input)]
        } else {
            Vec::new()
        };
        thread.turn = Some(Turn {
            id: turn_id.clone(),
            serial: self.seq,
            steps,
            started_v: start_v,
            cursor_v: start_v,
            started_s,
            agent_item: None,
            agent_open: false,
            delta_prefix: String::new(),
            text: String::new(),
            input_bytes: input.len(),
            waiting: None,
            users,
        });
        let tag = thread.tag.clone();
        let reply =
            json!({"turn": shapes::turn(&turn_id, "inProgress", None, TurnTimes::default(), &[])});
        emits.push(Emit::Reply(Ok(reply.to_string())));
        let at = self.clock.stamp_ms(start_v);
        let times = TurnTimes {
            started_s: Some(started_s),
            ..TurnTimes::default()
        };
        emits.push(notify(
            &tag,
            "thread/status/changed",
            json!({"threadId": thread_id, "status": {"type": "active", "activeFlags": []}}),
            at,
        ));
        emits.push(notify(
            &tag,
            "turn/started",
            json!({"threadId": thread_id, "turn": shapes::turn(&turn_id, "inProgress", None, times, &[])}),
            at,
        ));
        emits.extend(user_message(
            &tag, &thread_id, &turn_id, &user_item, &input, at,
        ));
        self.schedule(&thread_id, now);
    }

    /// More input for a running turn: a user message and more deltas.
    fn add_input(&mut self, thread_id: &str, input: &str, emits: &mut Vec<Emit>) {
        let item_id = self.next_id(IdKind::Item);
        let count = (self.knobs.deltas / 4).max(1);
        let interval = self.knobs.delta_interval_ms;
        let Some(thread) = self.threads.get_mut(thread_id) else {
            return;
        };
        let Some(turn) = thread.turn.as_mut() else {
            return;
        };
        turn.input_bytes += input.len();
        if !turn.users.is_empty() {
            turn.users.push(shapes::user_item(&item_id, input));
        }
        turn::extend(&mut turn.steps, count, interval);
        let (tag, turn_id, at) = (
            thread.tag.clone(),
            turn.id.clone(),
            self.clock.stamp_ms(turn.cursor_v),
        );
        emits.extend(user_message(&tag, thread_id, &turn_id, &item_id, input, at));
    }

    fn turn_steer(&mut self, params: &Value, emits: &mut Vec<Emit>) {
        let thread_id = params["threadId"].as_str().unwrap_or_default();
        let expected = params["expectedTurnId"].as_str().unwrap_or_default();
        let active = self
            .threads
            .get(thread_id)
            .and_then(|thread| thread.turn.as_ref())
            .map(|turn| turn.id.clone());
        match active {
            None => emits.push(Emit::Reply(absent("turn/steer", thread_id))),
            Some(turn) if turn != expected => emits.push(Emit::Reply(Err(RpcError::invalid(
                format!("expected active turn id {expected} but found {turn}"),
            )))),
            Some(turn) => {
                emits.push(Emit::Reply(Ok(json!({"turnId": turn}).to_string())));
                let input = input_text(params);
                self.add_input(thread_id, &input, emits);
            }
        }
    }

    fn turn_interrupt(&mut self, params: &Value, emits: &mut Vec<Emit>) {
        let thread_id = params["threadId"].as_str().unwrap_or_default().to_owned();
        let turn_id = params["turnId"].as_str().unwrap_or_default();
        let matches = self
            .threads
            .get(thread_id.as_str())
            .and_then(|thread| thread.turn.as_ref())
            .is_some_and(|turn| turn.id == turn_id);
        if !matches {
            return emits.push(Emit::Reply(absent("turn/interrupt", &thread_id)));
        }
        emits.push(Emit::Reply(Ok("{}".to_owned())));
        self.finish_interrupted(&thread_id, emits);
    }

    /// Ends a turn as interrupted: open items complete, a pending approval is resolved.
    fn finish_interrupted(&mut self, thread_id: &str, emits: &mut Vec<Emit>) {
        let Some(thread) = self.threads.get_mut(thread_id) else {
            return;
        };
        let Some(mut turn) = thread.turn.take() else {
            return;
        };
        let tag = thread.tag.clone();
        let cwd = thread.meta.cwd.clone();
        let at = self.clock.stamp_ms(turn.cursor_v);
        if let Some(waiting) = turn.waiting.take() {
            self.asks.remove(&waiting.request_id);
            emits.push(notify(
                &tag,
                "serverRequest/resolved",
                json!({"threadId": thread_id, "requestId": waiting.request_id}),
                at,
            ));
            let item = match waiting.kind {
                ApprovalKind::Command => shapes::command_item(&waiting.item_id, &cwd, "declined"),
                ApprovalKind::File => shapes::file_item(&waiting.item_id, "declined"),
            };
            emits.push(notify(
                &tag,
                "item/completed",
                json!({"item": item, "threadId": thread_id, "turnId": turn.id, "completedAtMs": at}),
                at,
            ));
        }
        if turn.agent_open {
            turn.agent_open = false;
            let item_id = turn.agent_item.clone().unwrap_or_default();
            emits.push(agent_completed(
                &tag, thread_id, &turn.id, &item_id, &turn.text, at,
            ));
        }
        self.end_turn(&tag, thread_id, &turn, "interrupted", None, emits);
    }

    /// Schedules the next step of `thread`'s turn after the step due at `after`.
    fn schedule(&mut self, thread_id: &str, after: Instant) {
        let Some(turn) = self
            .threads
            .get(thread_id)
            .and_then(|thread| thread.turn.as_ref())
        else {
            return;
        };
        let Some(next) = turn.steps.front() else {
            return;
        };
        let due = after + scaled(next.delay_ms, self.knobs.latency_scale);
        let serial = turn.serial;
        let Some((thread, _)) = self.threads.get_key_value(thread_id) else {
            return;
        };
        self.timers.push(Reverse(Timer {
            due,
            seq: self.seq,
            thread: thread.clone(),
            serial,
        }));
        self.seq += 1;
    }

    /// Runs the next step of `thread`'s turn; returns whether the turn goes on by itself.
    fn step(&mut self, thread_id: &str, emits: &mut Vec<Emit>) -> bool {
        let ids_needed = self
            .threads
            .get(thread_id)
            .and_then(|thread| thread.turn.as_ref())
            .and_then(|turn| turn.steps.front())
            .map(|planned| planned.step);
        let fresh_item = match ids_needed {
            Some(Step::Approval(_) | Step::AgentStart) => Some(self.next_id(IdKind::Item)),
            Some(_) => None,
            None => return false,
        };
        let request_id =
            matches!(ids_needed, Some(Step::Approval(_))).then(|| self.allocate_request_id());
        let bytes = usize::try_from(self.knobs.delta_bytes).unwrap_or(16);
        let delta = (ids_needed == Some(Step::Delta)).then(|| text::delta(&mut self.rng, bytes));
        let Some(thread) = self.threads.get_mut(thread_id) else {
            return false;
        };
        let tag = thread.tag.clone();
        let cwd = thread.meta.cwd.clone();
        let Some(turn) = thread.turn.as_mut() else {
            return false;
        };
        let Some(planned) = turn.steps.pop_front() else {
            return false;
        };
        turn.cursor_v += planned.delay_ms;
        self.clock.reach(turn.cursor_v);
        let at = self.clock.stamp_ms(turn.cursor_v);
        let turn_id = turn.id.clone();
        match planned.step {
            Step::Approval(kind) => {
                let item_id = fresh_item.unwrap_or_default();
                let request_id = request_id.unwrap_or_default();
                let item = match kind {
                    ApprovalKind::Command => shapes::command_item(&item_id, &cwd, "inProgress"),
                    ApprovalKind::File => shapes::file_item(&item_id, "inProgress"),
                };
                emits.push(notify(
                    &tag,
                    "item/started",
                    json!({"item": item, "threadId": thread_id, "turnId": turn_id, "startedAtMs": at}),
                    at,
                ));
                let mut params = json!({
                    "threadId": thread_id,
                    "turnId": turn_id,
                    "itemId": item_id,
                    "startedAtMs": at,
                    "reason": "the mock scenario asks",
                });
                if kind == ApprovalKind::Command {
                    params["command"] = Value::from("mock-tool --apply");
                    params["cwd"] = Value::from(cwd);
                }
                turn.waiting = Some(Waiting {
                    request_id,
                    item_id,
                    kind,
                });
                self.asks.insert(request_id, thread_id.to_owned());
                emits.push(Emit::Ask {
                    tag,
                    id: request_id,
                    method: kind.method(),
                    params: params.to_string(),
                });
                false
            }
            Step::AgentStart => {
                let item_id = fresh_item.unwrap_or_default();
                emits.push(notify(
                    &tag,
                    "item/started",
                    json!({"item": shapes::agent_item(&item_id, ""), "threadId": thread_id, "turnId": turn_id, "startedAtMs": at}),
                    at,
                ));
                turn.delta_prefix = format!(
                    "{{\"threadId\":{},\"turnId\":{},\"itemId\":{},\"delta\":",
                    quote(thread_id),
                    quote(&turn_id),
                    quote(&item_id)
                );
                turn.agent_item = Some(item_id);
                turn.agent_open = true;
                true
            }
            Step::Delta => {
                let delta = delta.unwrap_or_default();
                turn.text.push_str(&delta);
                let mut params = String::with_capacity(turn.delta_prefix.len() + delta.len() + 8);
                params.push_str(&turn.delta_prefix);
                params.push_str(&quote(&delta));
                params.push('}');
                emits.push(Emit::Notify {
                    tag,
                    method: "item/agentMessage/delta",
                    params,
                    at_ms: at,
                });
                true
            }
            Step::Crash => {
                emits.push(Emit::Crash);
                false
            }
            Step::AgentDone => {
                turn.agent_open = false;
                let usage = shapes::token_usage(turn.input_bytes, turn.text.len());
                let item_id = turn.agent_item.clone().unwrap_or_default();
                emits.push(agent_completed(
                    &tag, thread_id, &turn_id, &item_id, &turn.text, at,
                ));
                emits.push(notify(
                    &tag,
                    "thread/tokenUsage/updated",
                    json!({"threadId": thread_id, "turnId": turn_id, "tokenUsage": usage}),
                    at,
                ));
                true
            }
            Step::Finish { failed } => {
                let Some(turn) = thread.turn.take() else {
                    return false;
                };
                let error = failed.then(|| {
                    json!({"message": "mock failure: server overloaded", "codexErrorInfo": "serverOverloaded", "additionalDetails": null})
                });
                if let Some(error) = &error {
                    emits.push(notify(
                        &tag,
                        "error",
                        json!({"error": error, "willRetry": false, "threadId": thread_id, "turnId": turn_id}),
                        at,
                    ));
                }
                let status = if failed { "failed" } else { "completed" };
                self.end_turn(&tag, thread_id, &turn, status, error, emits);
                false
            }
        }
    }

    /// `thread/status/changed` idle then `turn/completed`, and the thread's bookkeeping.
    fn end_turn(
        &mut self,
        tag: &Tag,
        thread_id: &str,
        turn: &Turn,
        status: &str,
        error: Option<Value>,
        emits: &mut Vec<Emit>,
    ) {
        let at = self.clock.stamp_ms(turn.cursor_v);
        let times = TurnTimes {
            started_s: Some(turn.started_s),
            completed_s: Some(at / 1000),
            duration_ms: Some(if self.clock.is_virtual() {
                turn.cursor_v - turn.started_v
            } else {
                (at / 1000).saturating_sub(turn.started_s) * 1000
            }),
        };
        let items: Vec<Value> = turn
            .agent_item
            .iter()
            .map(|item| shapes::agent_item(item, &turn.text))
            .collect();
        emits.push(notify(
            tag,
            "thread/status/changed",
            json!({"threadId": thread_id, "status": {"type": "idle"}}),
            at,
        ));
        let finished = shapes::turn(&turn.id, status, error, times, &items);
        if !turn.users.is_empty() {
            // The rollout keeps what `thread/resume` returns: the user messages, then the
            // agent's answer.
            let mut recorded = finished.clone();
            recorded["items"] = turn.users.iter().chain(&items).cloned().collect();
            if let Some(store) = &self.store {
                if let Err(err) = store.append_turn(thread_id, at, &recorded) {
                    log::line(format_args!(
                        "cannot record turn {} of thread {thread_id}: {err}",
                        turn.id
                    ));
                }
            }
        }
        emits.push(notify(
            tag,
            "turn/completed",
            json!({"threadId": thread_id, "turn": finished}),
            at,
        ));
        if let Some(thread) = self.threads.get_mut(thread_id) {
            thread.meta.updated_s = at / 1000;
        }
    }
}

/// `item/started` and `item/completed` of a user message.
fn user_message(
    tag: &Tag,
    thread_id: &str,
    turn_id: &str,
    item_id: &str,
    text: &str,
    at: u64,
) -> [Emit; 2] {
    let item = shapes::user_item(item_id, text);
    [
        notify(
            tag,
            "item/started",
            json!({"item": item, "threadId": thread_id, "turnId": turn_id, "startedAtMs": at}),
            at,
        ),
        notify(
            tag,
            "item/completed",
            json!({"item": item, "threadId": thread_id, "turnId": turn_id, "completedAtMs": at}),
            at,
        ),
    ]
}

/// `item/completed` of the agent message `item_id` with its full `text`.
fn agent_completed(
    tag: &Tag,
    thread_id: &str,
    turn_id: &str,
    item_id: &str,
    text: &str,
    at: u64,
) -> Emit {
    notify(
        tag,
        "item/completed",
        json!({"item": shapes::agent_item(item_id, text), "threadId": thread_id, "turnId": turn_id, "completedAtMs": at}),
        at,
    )
}

/// A notification emit.
/// What `method` answers for a thread `id` that is not there (or is another tenant's), as
/// Codex v0.169.0 answers each.
fn absent(method: &str, id: &str) -> Result<String, RpcError> {
    match method {
        "turn/start" => Err(RpcError::invalid(format!("thread not found: {id}"))),
        "turn/steer" => Err(RpcError::invalid("no active turn to steer")),
        "turn/interrupt" => Err(RpcError::invalid("no active turn to interrupt")),
        "thread/unsubscribe" => Ok(json!({"status": "notLoaded"}).to_string()),
        _ => Err(no_rollout(id)),
    }
}

/// Codex's answer to a resume, fork or read of a thread it has no rollout of.
fn no_rollout(id: &str) -> RpcError {
    RpcError::invalid(format!("no rollout found for thread id {id}"))
}

fn notify(tag: &Tag, method: &'static str, params: Value, at_ms: u64) -> Emit {
    Emit::Notify {
        tag: tag.clone(),
        method,
        params: params.to_string(),
        at_ms,
    }
}

/// The text items of `params.input`, joined.
fn input_text(params: &Value) -> String {
    params["input"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A JSON string token.
fn quote(text: &str) -> String {
    Value::from(text).to_string()
}

/// What an id names: threads and turns get Codex-like ids in the fake child, items never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdKind {
    Thread,
    Turn,
    Item,
}

impl IdKind {
    /// The prefix of a counter id.
    fn prefix(self) -> &'static str {
        match self {
            Self::Thread => "thr",
            Self::Turn => "turn",
            Self::Item => "item",
        }
    }
}

/// A UUIDv7 string: `ms` (Unix milliseconds) in the top 48 bits, then version 7, 12 bits of
/// `high`, the RFC 4122 variant and 62 bits of `low`, the form of Codex's thread and turn ids.
fn uuid_v7(ms: u64, high: u64, low: u64) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (ms >> 16) & 0xffff_ffff,
        ms & 0xffff,
        0x7000 | (high & 0x0fff),
        0x8000 | ((low >> 48) & 0x3fff),
        low & 0xffff_ffff_ffff
    )
}

/// A thread a request names, with what answering it needs.
#[derive(Debug)]
struct Found {
    id: String,
    meta: ThreadMeta,
    /// `Thread.path`.
    path: Option<String>,
    /// The finished turns in its rollout.
    turns: Vec<Value>,
}

impl Found {
    /// Its Thread object, with `turns` as its history.
    fn thread(&self, turns: &[Value]) -> Value {
        shapes::thread(&self.id, &self.meta, self.path.as_deref(), turns)
    }
}

/// `ms` milliseconds times `scale`.
fn scaled(ms: u64, scale: f64) -> Duration {
    if ms == 0 || scale == 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(ms as f64 * scale / 1000.0)
}

#[cfg(test)]
mod tests;
