//! Lines toward the bus: one bounded queue per session, drained round-robin by a writer thread.
//!
//! The child must never wait on us (a reader that stops reading its stdout stalls every session),
//! and the event loop must never block on stdout. So lines are queued per session and written by
//! a thread. A session over its byte budget first has consecutive text deltas of one item merged,
//! then loses further deltas (counted and reported once the queue drains); responses, requests
//! and every other notification are always kept, since clients cannot recover from losing them
//! (`item/completed` still carries the full text the dropped deltas would have built).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use serde_json::Value;

use codex_bus_worker_io::log;

use super::sessions::{key_token, SessionKey};

/// Bytes handed to one `write` call at most; large enough to amortise syscalls.
const BATCH_BYTES: usize = 256 * 1024;

/// Bytes one session may contribute per turn of the ring, so a busy session cannot starve others.
const SHARE_BYTES: usize = 16 * 1024;

/// Delta notifications whose `delta` strings may be concatenated when a session falls behind.
const MERGEABLE: &[&str] = &[
    "item/agentMessage/delta",
    "item/plan/delta",
    "item/reasoning/summaryTextDelta",
    "item/reasoning/textDelta",
];

/// How a line may be treated when its session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Never dropped nor merged.
    Essential,
    /// A streaming delta: may be merged with the previous one, or dropped.
    Delta,
}

impl Kind {
    /// The kind of a notification `method`.
    pub fn of_method(method: &str) -> Self {
        if method.ends_with("Delta") || method.ends_with("/delta") {
            Self::Delta
        } else {
            Self::Essential
        }
    }
}

/// A line for the bus, with the session whose queue it joins (`None`: lines with no session).
#[derive(Debug)]
pub struct BusLine {
    /// The routing key of the session, or `None`.
    pub session: Option<SessionKey>,
    /// The whole line, `\n` included.
    pub line: Vec<u8>,
    /// How it may be treated under overflow.
    pub kind: Kind,
}

/// One session's queue.
#[derive(Debug, Default)]
struct Queue {
    lines: VecDeque<(Kind, Vec<u8>)>,
    bytes: usize,
    /// Deltas dropped since the queue was last empty, reported before its next line.
    dropped: u64,
}

/// The per-session queues (the part shared with the writer thread).
#[derive(Debug)]
pub struct Queues {
    sessions: HashMap<Option<SessionKey>, Queue>,
    /// Sessions with queued lines, in the order they are served.
    ring: VecDeque<Option<SessionKey>>,
    budget: usize,
    share: usize,
    closing: bool,
}

impl Queues {
    /// Queues with a per-session budget of `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Self {
            sessions: HashMap::new(),
            ring: VecDeque::new(),
            budget,
            share: SHARE_BYTES,
            closing: false,
        }
    }

    /// Queues `line`, applying the overflow policy.
    pub fn push(&mut self, line: BusLine) {
        let queue = self.sessions.entry(line.session.clone()).or_default();
        if queue.lines.is_empty() {
            self.ring.push_back(line.session.clone());
        }
        if line.kind == Kind::Delta && queue.bytes + line.line.len() > self.budget {
            if merge_into_last(queue, &line.line) {
                return;
            }
            queue.dropped += 1;
            if queue.dropped == 1 {
                log::line(format_args!(
                    "session {} is {} bytes behind: dropping deltas until it catches up",
                    String::from_utf8_lossy(line.session.as_deref().unwrap_or_default()),
                    queue.bytes
                ));
            }
            if queue.lines.is_empty() {
                self.ring.retain(|session| *session != line.session);
            }
            return;
        }
        if queue.dropped > 0 && line.kind == Kind::Essential {
            let report = dropped_report(queue.dropped, line.session.as_deref());
            queue.dropped = 0;
            queue.bytes += report.len();
            queue.lines.push_back((Kind::Essential, report));
        }
        queue.bytes += line.line.len();
        queue.lines.push_back((line.kind, line.line));
    }

    /// Moves up to about `limit` bytes into `out`, taking whole lines round-robin by session.
    pub fn take(&mut self, out: &mut Vec<u8>, limit: usize) {
        while out.len() < limit {
            let Some(session) = self.ring.pop_front() else {
                return;
            };
            let Some(queue) = self.sessions.get_mut(&session) else {
                continue;
            };
            let share = out.len() + self.share;
            while let Some((_, line)) = queue.lines.pop_front() {
                queue.bytes -= line.len();
                out.extend_from_slice(&line);
                if out.len() >= share {
                    break;
                }
            }
            if queue.lines.is_empty() {
                if queue.dropped == 0 {
                    self.sessions.remove(&session);
                }
            } else {
                self.ring.push_back(session);
            }
        }
    }

    /// Whether no line is queued.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Bytes queued for `session`.
    #[cfg(test)]
    fn bytes_of(&self, session: Option<&[u8]>) -> usize {
        self.sessions
            .get(&session.map(SessionKey::from))
            .map_or(0, |queue| queue.bytes)
    }
}

/// Merges delta `line` into the queue's last line when both are the same mergeable delta of one
/// item; returns whether it did.
fn merge_into_last(queue: &mut Queue, line: &[u8]) -> bool {
    let Some((Kind::Delta, last)) = queue.lines.back_mut() else {
        return false;
    };
    let (Ok(mut old), Ok(new)) = (
        serde_json::from_slice::<Value>(last),
        serde_json::from_slice::<Value>(line),
    ) else {
        return false;
    };
    let method = old["method"].as_str().unwrap_or_default();
    let same_item = MERGEABLE.contains(&method)
        && old["method"] == new["method"]
        && old["params"]["threadId"] == new["params"]["threadId"]
        && old["params"]["itemId"] == new["params"]["itemId"];
    let (Some(head), Some(tail)) = (
        old["params"]["delta"].as_str(),
        new["params"]["delta"].as_str(),
    ) else {
        return false;
    };
    if !same_item {
        return false;
    }
    let merged = format!("{head}{tail}");
    old["params"]["delta"] = Value::from(merged);
    let mut bytes = old.to_string().into_bytes();
    bytes.push(b'\n');
    queue.bytes = queue.bytes - last.len() + bytes.len();
    *last = bytes;
    true
}

/// The notification telling a session how many deltas it lost.
fn dropped_report(count: u64, session: Option<&[u8]>) -> Vec<u8> {
    let mut line = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"codexWorker/deltasDropped\",\"params\":{{\"count\":{count}}}"
    )
    .into_bytes();
    if let Some(session) = session {
        line.extend_from_slice(b",\"sessionId\":");
        line.extend_from_slice(&key_token(session));
    }
    line.extend_from_slice(b"}\n");
    line
}

/// The queues plus the thread that writes them to stdout.
#[derive(Debug)]
pub struct Outbound {
    shared: Arc<(Mutex<Queues>, Condvar)>,
    writer: Option<JoinHandle<()>>,
}

impl Outbound {
    /// Starts the writer thread with a per-session budget of `budget` bytes.
    pub fn start(budget: usize) -> io::Result<Self> {
        let shared = Arc::new((Mutex::new(Queues::new(budget)), Condvar::new()));
        let writer_shared = shared.clone();
        let writer = thread::Builder::new()
            .name("stdout-writer".to_owned())
            .spawn(move || write_loop(&writer_shared))?;
        Ok(Self {
            shared,
            writer: Some(writer),
        })
    }

    /// Queues lines for the writer.
    pub fn push_all(&self, lines: impl IntoIterator<Item = BusLine>) {
        let (queues, ready) = &*self.shared;
        let mut queues = queues.lock().unwrap_or_else(PoisonError::into_inner);
        let mut pushed = false;
        for line in lines {
            queues.push(line);
            pushed = true;
        }
        if pushed {
            ready.notify_one();
        }
    }

    /// Writes everything still queued, then stops the writer.
    pub fn finish(mut self) {
        {
            let (queues, ready) = &*self.shared;
            queues
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .closing = true;
            ready.notify_one();
        }
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn write_loop(shared: &(Mutex<Queues>, Condvar)) {
    let (queues, ready) = shared;
    let mut stdout = io::stdout().lock();
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    loop {
        {
            let mut guard = queues.lock().unwrap_or_else(PoisonError::into_inner);
            while guard.is_empty() && !guard.closing {
                guard = ready.wait(guard).unwrap_or_else(PoisonError::into_inner);
            }
            if guard.is_empty() {
                return;
            }
            guard.take(&mut batch, BATCH_BYTES);
        }
        if let Err(err) = stdout.write_all(&batch).and_then(|()| stdout.flush()) {
            // The bus closed our stdout: nobody can hear us any more (worker contract: exit 1).
            log::line(format_args!("stdout write failed, exiting: {err}"));
            std::process::exit(1);
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(session: &str, kind: Kind, text: &str) -> BusLine {
        BusLine {
            session: Some(SessionKey::from(session.as_bytes())),
            line: format!("{text}\n").into_bytes(),
            kind,
        }
    }

    fn delta(item: &str, text: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","method":"item/agentMessage/delta","params":{{"threadId":"t","itemId":"{item}","delta":"{text}"}},"sessionId":"a"}}"#
        )
    }

    fn drain(queues: &mut Queues) -> Vec<String> {
        let mut out = Vec::new();
        queues.take(&mut out, usize::MAX);
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn json(line: &str) -> Value {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn sessions_are_served_round_robin_in_order_within_each() {
        let mut queues = Queues::new(1 << 20);
        queues.share = 1;
        for n in 0..3 {
            queues.push(line("a", Kind::Essential, &format!("a{n}")));
            queues.push(line("b", Kind::Essential, &format!("b{n}")));
        }
        let mut out = Vec::new();
        queues.take(&mut out, 3);
        assert_eq!(out, b"a0\n");
        let rest = drain(&mut queues);
        assert_eq!(rest, ["b0", "a1", "b1", "a2", "b2"]);
        assert!(queues.is_empty());
    }

    #[test]
    fn overflow_merges_deltas_of_one_item_then_drops_and_reports() {
        let first = delta("i", "ab");
        let budget = first.len() + 1;
        let mut queues = Queues::new(budget);
        queues.push(line("a", Kind::Delta, &first));
        // Over budget: merged into the previous delta of the same item.
        queues.push(line("a", Kind::Delta, &delta("i", "cd")));
        let merged = drain(&mut queues);
        assert_eq!(merged.len(), 1);
        assert_eq!(json(&merged[0]), json(&delta("i", "abcd")));

        queues.push(line("a", Kind::Delta, &first));
        // Another item cannot merge: dropped.
        queues.push(line("a", Kind::Delta, &delta("j", "x")));
        // Essential lines are kept whatever the budget, after a report of the loss.
        queues.push(line("a", Kind::Essential, "done"));
        let lines = drain(&mut queues);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], first);
        let report: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(report["method"], "codexWorker/deltasDropped");
        assert_eq!(report["params"]["count"], 1);
        assert_eq!(report["sessionId"], "a");
        assert_eq!(lines[2], "done");
        assert_eq!(queues.bytes_of(Some(b"a")), 0);
    }

    #[test]
    fn one_slow_session_does_not_cost_another_its_deltas() {
        let first = delta("i", "ab");
        let mut queues = Queues::new(first.len() + 1);
        queues.push(line("a", Kind::Delta, &first));
        queues.push(line("a", Kind::Delta, &delta("j", "zz")));
        queues.push(line("b", Kind::Delta, &first));
        let lines = drain(&mut queues);
        assert_eq!(lines, [first.clone(), first]);
    }

    #[test]
    fn method_kinds() {
        assert_eq!(Kind::of_method("item/agentMessage/delta"), Kind::Delta);
        assert_eq!(
            Kind::of_method("item/commandExecution/outputDelta"),
            Kind::Delta
        );
        assert_eq!(Kind::of_method("turn/completed"), Kind::Essential);
        assert_eq!(Kind::of_method("item/completed"), Kind::Essential);
    }
}
