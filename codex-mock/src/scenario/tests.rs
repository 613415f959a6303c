//! The scenario engine driven directly, at latency scale 0 on the virtual clock.

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};

use super::clock::VIRTUAL_EPOCH_MS;
use super::knobs::Knobs;
use super::{Emit, Engine, Tag};

#[derive(Parser)]
#[command(args_override_self = true)]
struct Wrapper {
    #[command(flatten)]
    knobs: Knobs,
}

fn knobs(extra: &[&str]) -> Knobs {
    let base = [
        "x",
        "--clock",
        "virtual",
        "--latency-scale",
        "0",
        "--jitter-pct",
        "0",
        "--deltas",
        "3",
    ];
    Wrapper::try_parse_from(base.iter().chain(extra))
        .unwrap()
        .knobs
}

/// A readable event: `reply <json>`, `error <message>`, `<method> <params>`, `ask …`, `crash`.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Reply(Value),
    Error(String),
    Note(String, Value, u64),
    Ask(u64, String, Value),
    Crash,
}

struct Driver {
    engine: Engine,
    now: Instant,
    tag: Tag,
    tenant: &'static str,
}

impl Driver {
    fn new(knobs: Knobs) -> Self {
        Self {
            engine: Engine::new(knobs),
            now: Instant::now(),
            tag: Tag::from(&b"s"[..]),
            tenant: "default",
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Vec<Event> {
        let raw = serde_json::value::to_raw_value(&params).unwrap();
        let mut emits = Vec::new();
        assert!(self.engine.call(
            method,
            Some(&raw),
            &self.tag,
            self.tenant,
            self.now,
            &mut emits
        ));
        events(emits)
    }

    fn run(&mut self) -> Vec<Event> {
        let mut emits = Vec::new();
        self.now += Duration::from_millis(1);
        self.engine.fire_due(self.now, usize::MAX, &mut emits);
        events(emits)
    }

    fn answer(&mut self, id: u64, result: Option<Value>) -> Vec<Event> {
        let raw = result.map(|value| serde_json::value::to_raw_value(&value).unwrap());
        let mut emits = Vec::new();
        assert!(self
            .engine
            .answer(id, raw.as_deref(), self.tenant, self.now, &mut emits));
        events(emits)
    }

    fn thread(&mut self) -> String {
        let events = self.call("thread/start", json!({"cwd": "/w"}));
        match &events[0] {
            Event::Reply(result) => result["thread"]["id"].as_str().unwrap().to_owned(),
            other => panic!("{other:?}"),
        }
    }
}

fn events(emits: Vec<Emit>) -> Vec<Event> {
    emits
        .into_iter()
        .map(|emit| match emit {
            Emit::Reply(Ok(result)) => Event::Reply(serde_json::from_str(&result).unwrap()),
            Emit::Reply(Err(error)) => {
                assert_eq!(error.code, -32600);
                Event::Error(error.message)
            }
            Emit::Notify {
                method,
                params,
                at_ms,
                ..
            } => Event::Note(
                method.to_owned(),
                serde_json::from_str(&params).unwrap(),
                at_ms,
            ),
            Emit::Ask {
                id, method, params, ..
            } => Event::Ask(
                id,
                method.to_owned(),
                serde_json::from_str(&params).unwrap(),
            ),
            Emit::Crash => Event::Crash,
        })
        .collect()
}

fn methods(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|event| match event {
            Event::Reply(_) => "reply".to_owned(),
            Event::Error(_) => "error".to_owned(),
            Event::Note(method, ..) => method.clone(),
            Event::Ask(_, method, _) => format!("ask {method}"),
            Event::Crash => "crash".to_owned(),
        })
        .collect()
}

fn note<'a>(events: &'a [Event], wanted: &str) -> &'a Value {
    events
        .iter()
        .find_map(|event| match event {
            Event::Note(method, params, _) if method == wanted => Some(params),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {wanted} in {events:?}"))
}

#[test]
fn a_turn_streams_like_codex() {
    let mut driver = Driver::new(knobs(&[]));
    let thread = driver.thread();
    let started = driver.call(
        "turn/start",
        json!({"threadId": thread, "input": [{"type":"text","text":"hi"}]}),
    );
    assert_eq!(
        methods(&started),
        [
            "reply",
            "thread/status/changed",
            "turn/started",
            "item/started",
            "item/completed"
        ]
    );
    let Event::Reply(reply) = &started[0] else {
        unreachable!()
    };
    assert_eq!(reply["turn"]["status"], "inProgress");
    let streamed = driver.run();
    assert_eq!(
        methods(&streamed),
        [
            "item/started",
            "item/agentMessage/delta",
            "item/agentMessage/delta",
            "item/agentMessage/delta",
            "item/completed",
            "thread/tokenUsage/updated",
            "thread/status/changed",
            "turn/completed"
        ]
    );
    let deltas: String = streamed
        .iter()
        .filter_map(|event| match event {
            Event::Note(method, params, _) if method == "item/agentMessage/delta" => {
                Some(params["delta"].as_str().unwrap().to_owned())
            }
            _ => None,
        })
        .collect();
    assert_eq!(deltas.len(), 3 * 16);
    assert_eq!(
        note(&streamed, "item/completed")["item"]["text"],
        deltas.as_str()
    );
    let completed = note(&streamed, "turn/completed");
    assert_eq!(completed["turn"]["status"], "completed");
    assert_eq!(completed["turn"]["durationMs"], 800 + 2 * 25);
    assert!(!driver.engine.has_timers());
}

#[test]
fn the_virtual_clock_and_the_seed_make_transcripts_exact() {
    let transcript = |seed: &str| {
        let mut driver = Driver::new(knobs(&["--seed", seed, "--jitter-pct", "20"]));
        let thread = driver.thread();
        let mut all = driver.call("turn/start", json!({"threadId": thread, "input": []}));
        all.extend(driver.run());
        all
    };
    let first = transcript("5");
    assert_eq!(first, transcript("5"));
    assert_ne!(first, transcript("6"));
    let Event::Note(_, _, at) = first.last().unwrap() else {
        unreachable!()
    };
    assert!(*at > VIRTUAL_EPOCH_MS && *at < VIRTUAL_EPOCH_MS + 2000);
}

#[test]
fn approvals_pause_the_turn_until_answered() {
    for (decision, status) in [
        (Some(json!({"decision": "accept"})), "completed"),
        (Some(json!({"decision": "decline"})), "declined"),
        (None, "declined"),
    ] {
        let mut driver = Driver::new(knobs(&[]));
        let thread = driver.thread();
        driver.call(
            "turn/start",
            json!({"threadId": thread, "input": [{"type":"text","text":"@approval"}]}),
        );
        let asked = driver.run();
        assert_eq!(
            methods(&asked),
            ["item/started", "ask item/commandExecution/requestApproval"]
        );
        let Event::Ask(id, _, params) = &asked[1] else {
            unreachable!()
        };
        assert_eq!(params["threadId"], thread.as_str());
        assert!(!driver.engine.has_timers(), "the turn waits for the answer");
        let answered = driver.answer(*id, decision);
        assert_eq!(note(&answered, "serverRequest/resolved")["requestId"], *id);
        assert_eq!(note(&answered, "item/completed")["item"]["status"], status);
        let rest = driver.run();
        assert_eq!(note(&rest, "turn/completed")["turn"]["status"], "completed");
    }
}

#[test]
fn cancel_and_interrupt_end_the_turn_interrupted() {
    let mut driver = Driver::new(knobs(&[]));
    let thread = driver.thread();
    driver.call(
        "turn/start",
        json!({"threadId": thread, "input": [{"type":"text","text":"@file-approval"}]}),
    );
    let Event::Ask(id, method, _) = driver.run().pop().unwrap() else {
        panic!()
    };
    assert_eq!(method, "item/fileChange/requestApproval");
    let cancelled = driver.answer(id, Some(json!({"decision": "cancel"})));
    assert_eq!(
        note(&cancelled, "turn/completed")["turn"]["status"],
        "interrupted"
    );

    let started = driver.call("turn/start", json!({"threadId": thread, "input": []}));
    let Event::Reply(reply) = &started[0] else {
        unreachable!()
    };
    let turn = reply["turn"]["id"].clone();
    let interrupted = driver.call(
        "turn/interrupt",
        json!({"threadId": thread, "turnId": turn}),
    );
    assert_eq!(
        methods(&interrupted),
        ["reply", "thread/status/changed", "turn/completed"]
    );
    assert_eq!(
        note(&interrupted, "turn/completed")["turn"]["status"],
        "interrupted"
    );
    assert!(
        driver.run().is_empty(),
        "the interrupted turn's timers are stale"
    );
    let again = driver.call(
        "turn/interrupt",
        json!({"threadId": thread, "turnId": turn}),
    );
    assert_eq!(again, [Event::Error("no active turn to interrupt".into())]);
}

#[test]
fn steering_and_a_second_turn_start_add_to_the_running_turn() {
    let mut driver = Driver::new(knobs(&["--deltas", "4"]));
    let thread = driver.thread();
    let started = driver.call("turn/start", json!({"threadId": thread, "input": []}));
    let Event::Reply(reply) = &started[0] else {
        unreachable!()
    };
    let turn = reply["turn"]["id"].clone();
    let steered = driver.call("turn/steer", json!({"threadId": thread, "expectedTurnId": turn, "input": [{"type":"text","text":"more"}]}));
    let Event::Reply(steer) = &steered[0] else {
        unreachable!()
    };
    assert_eq!(steer["turnId"], turn);
    let joined = driver.call(
        "turn/start",
        json!({"threadId": thread, "input": [{"type":"text","text":"again"}]}),
    );
    let Event::Reply(join) = &joined[0] else {
        unreachable!()
    };
    assert_eq!(
        join["turn"]["id"], turn,
        "Codex answers with the running turn"
    );
    let rest = driver.run();
    let deltas = methods(&rest)
        .iter()
        .filter(|m| *m == "item/agentMessage/delta")
        .count();
    assert_eq!(deltas, 4 + 1 + 1);
    let wrong = driver.call(
        "turn/steer",
        json!({"threadId": thread, "expectedTurnId": "x", "input": []}),
    );
    assert_eq!(wrong, [Event::Error("no active turn to steer".into())]);
}

#[test]
fn knobs_fail_and_crash_turns() {
    let mut driver = Driver::new(knobs(&["--fail-every", "1"]));
    let thread = driver.thread();
    driver.call("turn/start", json!({"threadId": thread, "input": []}));
    let failed = driver.run();
    assert_eq!(
        note(&failed, "error")["error"]["codexErrorInfo"],
        "serverOverloaded"
    );
    assert_eq!(note(&failed, "turn/completed")["turn"]["status"], "failed");

    let mut driver = Driver::new(knobs(&["--crash-after-turns", "1"]));
    let thread = driver.thread();
    driver.call("turn/start", json!({"threadId": thread, "input": []}));
    let crashed = driver.run();
    assert!(crashed.contains(&Event::Crash));
}

impl Driver {
    /// A fake child's engine with `CODEX_HOME` `home`, as a new process would start it.
    fn fake_child(home: &std::path::Path) -> Self {
        let mut driver = Self::new(knobs(&[]));
        driver.engine = Engine::fake_child(knobs(&[]), Some(home.to_path_buf())).unwrap();
        driver
    }

    /// The reply to `method`, which must succeed.
    fn ok(&mut self, method: &str, params: Value) -> Value {
        match &self.call(method, params)[..] {
            [Event::Reply(result), ..] => result.clone(),
            other => panic!("{method}: {other:?}"),
        }
    }

    /// A finished turn on `thread` with input `text`.
    fn turn(&mut self, thread: &str, text: &str) {
        let input = json!([{"type": "text", "text": text}]);
        self.ok("turn/start", json!({"threadId": thread, "input": input}));
        let events = self.run();
        assert_eq!(
            note(&events, "turn/completed")["turn"]["status"],
            "completed"
        );
    }
}

/// The one rollout file under `home`.
fn rollout_in(home: &std::path::Path) -> std::path::PathBuf {
    let mut found = Vec::new();
    let mut dirs = vec![home.join("sessions")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0)
}

#[test]
fn persistent_threads_resume_in_a_new_process_and_ephemeral_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Driver::fake_child(dir.path());
    let kept = first.thread();
    let gone = first.ok("thread/start", json!({"ephemeral": true}));
    assert_eq!(gone["thread"]["path"], Value::Null);
    let gone = gone["thread"]["id"].as_str().unwrap().to_owned();
    // The process ends: the kernel drops its writer locks.
    drop(first);

    let mut second = Driver::fake_child(dir.path());
    let not_loaded = second.call("turn/start", json!({"threadId": kept, "input": []}));
    assert_eq!(
        not_loaded,
        [Event::Error(format!("thread not found: {kept}"))]
    );
    let resumed = second.ok("thread/resume", json!({"threadId": kept}));
    assert_eq!(resumed["thread"]["id"], kept.as_str());
    let lost = second.call("thread/resume", json!({"threadId": gone}));
    assert_eq!(
        lost,
        [Event::Error(format!(
            "no rollout found for thread id {gone}"
        ))]
    );
    let fresh = second.thread();
    assert_ne!(fresh, kept, "ids never repeat across processes");
    let listed = second.ok("thread/list", json!({}));
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
}

#[test]
fn fake_child_ids_are_uuid_v7_shaped_and_the_rollout_is_named_after_the_thread() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Driver::fake_child(dir.path());
    let started = child.ok("thread/start", json!({"cwd": "/w"}));
    let thread = started["thread"]["id"].as_str().unwrap().to_owned();
    let uuid_shape = |id: &str| {
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        groups == [8, 4, 4, 4, 12]
            && id
                .bytes()
                .all(|byte| byte == b'-' || byte.is_ascii_hexdigit())
            && id.as_bytes()[14] == b'7'
    };
    assert!(uuid_shape(&thread), "{thread}");
    // The virtual clock's epoch is 2023-11-14T22:13:20Z: the time the rollout is named after.
    let expected = dir.path().join(format!(
        "sessions/2023/11/14/rollout-2023-11-14T22-13-20-{thread}.jsonl"
    ));
    assert_eq!(rollout_in(dir.path()), expected);
    assert_eq!(started["thread"]["path"], expected.to_str().unwrap());
    let turn = child.ok(
        "turn/start",
        json!({"threadId": thread, "input": [{"type": "text", "text": "hi"}]}),
    );
    assert!(uuid_shape(turn["turn"]["id"].as_str().unwrap()), "{turn}");
    assert!(
        dir.path()
            .join(format!("thread-writer-locks/{thread}.lock"))
            .exists(),
        "the writer lock is Codex's"
    );
    assert!(
        !dir.path().join("mock-app-server/threads").exists(),
        "the rollout is the only record of a thread"
    );
}

#[test]
fn a_copied_rollout_resumes_in_another_home_with_its_history() {
    let homes = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut first = Driver::fake_child(homes[0].path());
    let thread = first.thread();
    first.turn(&thread, "one");
    first.turn(&thread, "two");
    let source = rollout_in(homes[0].path());
    let relative = source.strip_prefix(homes[0].path()).unwrap();
    let target = homes[1].path().join(relative);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(&source, &target).unwrap();

    // The first process still runs and holds its lock, but in its own home: the copy is free.
    let mut second = Driver::fake_child(homes[1].path());
    let resumed = second.ok("thread/resume", json!({"threadId": thread}));
    assert_ne!(second.thread(), thread, "the homes mint different ids");
    assert_eq!(resumed["thread"]["path"], target.to_str().unwrap());
    assert_eq!(resumed["thread"]["preview"], "one");
    assert_eq!(resumed["thread"]["cwd"], "/w");
    let turns = resumed["thread"]["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2);
    for (turn, text) in turns.iter().zip(["one", "two"]) {
        assert_eq!(turn["status"], "completed");
        let items = turn["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{turn}");
        assert_eq!(items[0]["type"], "userMessage");
        assert_eq!(items[0]["content"][0]["text"], text);
        assert_eq!(items[1]["type"], "agentMessage");
        assert!(!items[1]["text"].as_str().unwrap().is_empty());
    }
    // The history goes on in the new home, in the copied file.
    second.turn(&thread, "three");
    let again = second.ok("thread/resume", json!({"threadId": thread}));
    assert_eq!(again["thread"]["turns"].as_array().unwrap().len(), 3);
    let bare = second.ok(
        "thread/resume",
        json!({"threadId": thread, "excludeTurns": true}),
    );
    assert_eq!(bare["thread"]["turns"], json!([]));
    let read = second.ok("thread/read", json!({"threadId": thread}));
    assert_eq!(read["thread"]["turns"], json!([]));
    let read = second.ok(
        "thread/read",
        json!({"threadId": thread, "includeTurns": true}),
    );
    assert_eq!(read["thread"]["turns"].as_array().unwrap().len(), 3);
    let listed = second.ok("thread/list", json!({}));
    let listed = listed["data"].as_array().unwrap();
    assert!(listed.iter().any(|entry| entry["id"] == thread.as_str()));
    assert_eq!(
        std::fs::read_to_string(&source).unwrap().lines().count(),
        3,
        "the source home is untouched"
    );
}

#[test]
fn a_missing_or_archived_rollout_and_a_second_writer_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Driver::fake_child(dir.path());
    let thread = first.thread();
    first.turn(&thread, "hi");
    assert_eq!(
        first.ok("thread/unsubscribe", json!({"threadId": thread}))["status"],
        "unsubscribed"
    );

    // Unsubscribing does not release the writer: only the end of the process does.
    let mut second = Driver::fake_child(dir.path());
    let busy = second.call("thread/resume", json!({"threadId": thread}));
    assert_eq!(
        busy,
        [Event::Error(format!(
            "thread {thread} already has an active writer"
        ))]
    );
    assert_eq!(
        second.ok("thread/read", json!({"threadId": thread}))["thread"]["id"],
        thread.as_str(),
        "reading takes no lock"
    );
    // The holder itself resumes what it unsubscribed from.
    let back = first.ok("thread/resume", json!({"threadId": thread}));
    assert_eq!(back["thread"]["turns"].as_array().unwrap().len(), 1);
    drop(first);
    second.ok("thread/resume", json!({"threadId": thread}));
    second.turn(&thread, "again");
    drop(second);

    let mut third = Driver::fake_child(dir.path());
    let missing = "018bcfe5-6800-7000-8000-00000000dead";
    assert_eq!(
        third.call("thread/resume", json!({"threadId": missing})),
        [Event::Error(format!(
            "no rollout found for thread id {missing}"
        ))]
    );
    let live = rollout_in(dir.path());
    let archived = dir.path().join("archived_sessions");
    std::fs::create_dir_all(&archived).unwrap();
    std::fs::rename(&live, archived.join(live.file_name().unwrap())).unwrap();
    assert_eq!(
        third.call("thread/resume", json!({"threadId": thread})),
        [Event::Error(format!("thread {thread} is archived"))]
    );
    assert_eq!(third.ok("thread/list", json!({}))["data"], json!([]));
}

#[test]
fn thread_started_can_be_sent_before_the_response() {
    let mut driver = Driver::new(knobs(&["--thread-started-first"]));
    let events = driver.call("thread/start", json!({}));
    assert_eq!(methods(&events), ["thread/started", "reply"]);
    let mut driver = Driver::new(knobs(&[]));
    let events = driver.call("thread/fork", json!({"threadId": "nope"}));
    assert_eq!(
        events,
        [Event::Error("no rollout found for thread id nope".into())]
    );
    let thread = driver.thread();
    let forked = driver.call("thread/fork", json!({"threadId": thread}));
    assert_eq!(
        note(&forked, "thread/started")["thread"]["forkedFromId"],
        thread.as_str()
    );
}

#[test]
fn another_tenants_thread_is_answered_as_one_that_does_not_exist() {
    let mut driver = Driver::new(knobs(&[]));
    driver.tenant = "a";
    driver.tag = Tag::from(&b"a:s1"[..]);
    let thread = driver.thread();
    driver.tenant = "b";
    driver.tag = Tag::from(&b"b:s1"[..]);
    let params =
        json!({"threadId": thread, "turnId": "turn_x", "expectedTurnId": "turn_x", "input": []});
    for method in [
        "thread/resume",
        "thread/read",
        "thread/fork",
        "turn/start",
        "turn/steer",
        "turn/interrupt",
        "thread/unsubscribe",
    ] {
        let foreign = driver.call(method, params.clone());
        let missing = driver.call(method, json!({"threadId": "thr_none", "turnId": "turn_x", "expectedTurnId": "turn_x", "input": []}));
        let text = |events: &[Event]| {
            format!("{events:?}")
                .replace("thr_none", "ID")
                .replace(&thread, "ID")
        };
        assert_eq!(text(&foreign), text(&missing), "{method}");
    }
    let listed = driver.call("thread/list", json!({}));
    assert_eq!(
        listed,
        [Event::Reply(json!({"data": [], "nextCursor": null}))]
    );
    let loaded = driver.call("thread/loaded/list", json!({}));
    assert_eq!(
        loaded,
        [Event::Reply(json!({"data": [], "nextCursor": null}))]
    );
    // The owning tenant's other session resumes it; its events follow that session.
    driver.tenant = "a";
    driver.tag = Tag::from(&b"a:s2"[..]);
    assert_eq!(
        methods(&driver.call("thread/resume", json!({"threadId": thread}))),
        ["reply"]
    );
    let started = driver.call("turn/start", json!({"threadId": thread, "input": []}));
    assert!(started.iter().any(|event| matches!(event, Event::Note(..))));
    let listed = driver.call("thread/list", json!({}));
    let Event::Reply(result) = &listed[0] else {
        panic!("{listed:?}");
    };
    assert_eq!(result["data"][0]["id"], thread.as_str());
}

#[test]
fn only_the_owning_tenant_answers_an_approval() {
    let mut driver = Driver::new(knobs(&[]));
    driver.tenant = "a";
    let thread = driver.thread();
    driver.call(
        "turn/start",
        json!({"threadId": thread, "input": [{"type":"text","text":"@approval"}]}),
    );
    let Event::Ask(ask, ..) = driver.run().pop().unwrap() else {
        panic!("an approval request")
    };
    let mut emits = Vec::new();
    let accept = serde_json::value::to_raw_value(&json!({"decision": "accept"})).unwrap();
    assert!(!driver
        .engine
        .answer(ask, Some(&accept), "b", driver.now, &mut emits));
    assert!(emits.is_empty());
    assert!(!driver
        .answer(ask, Some(json!({"decision": "accept"})))
        .is_empty());
}
