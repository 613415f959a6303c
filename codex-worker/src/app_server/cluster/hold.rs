//! Holding back `turn/completed` until the turn is published.
//!
//! A client that saw a turn complete may lose its node the next moment; the turn must then be in
//! the shared directory already, or the client's next request on another node would miss it (or
//! find no thread at all). So a session's `turn/completed`, and every line after it toward that
//! session, waits until the thread's rollout is published. The wait is bounded by the publish
//! (the copy's and the store's deadlines); a publish that fails releases the lines all the same,
//! and one fenced out (the lease moved on: the turn is not in the thread's shared history) turns
//! the `turn/completed` into a failed turn saying so, so no client takes a lost turn for saved.

use std::collections::{HashMap, HashSet, VecDeque};

use codex_bus_worker_io::message::{self, Message};

use crate::app_server::outbound::BusLine;
use crate::app_server::sessions::SessionKey;
use crate::app_server::wire;

/// Lines held per session, and the publishes each session waits for.
#[derive(Debug, Default)]
pub struct Hold {
    sessions: HashMap<SessionKey, Held>,
}

#[derive(Debug, Default)]
struct Held {
    /// Threads whose publish the session waits for.
    threads: HashSet<String>,
    lines: VecDeque<BusLine>,
}

/// Whether `line` is a `turn/completed` of one of `threads`; returns that thread.
fn completes<'t>(line: &[u8], threads: &'t [String]) -> Option<&'t str> {
    // Cheap test first: this runs on every line of a batch in which a turn ended.
    if !contains(line, b"\"turn/completed\"") {
        return None;
    }
    let Message::Call(call) = message::classify(line) else {
        return None;
    };
    if call.name != "turn/completed" {
        return None;
    }
    let thread = wire::params_refs(call.params).thread_id?;
    threads
        .iter()
        .find(|published| **published == *thread)
        .map(String::as_str)
}

/// Rewrites the `turn/completed` lines of `thread` among `lines` into failed turns with `why`:
/// the turn ran, but is not in the thread's shared history.
pub fn fail_turns<'a>(lines: impl Iterator<Item = &'a mut BusLine>, thread: &str, why: &str) {
    let threads = [thread.to_owned()];
    for line in lines {
        if completes(&line.line, &threads).is_none() {
            continue;
        }
        let Ok(mut note) = serde_json::from_slice::<serde_json::Value>(&line.line) else {
            continue;
        };
        let Some(turn) = note
            .pointer_mut("/params/turn")
            .and_then(serde_json::Value::as_object_mut)
        else {
            continue;
        };
        turn.insert("status".into(), "failed".into());
        turn.insert(
            "error".into(),
            serde_json::json!({"message": why, "codexErrorInfo": "other"}),
        );
        if let Ok(mut bytes) = serde_json::to_vec(&note) {
            bytes.push(b'\n');
            line.line = bytes;
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

impl Hold {
    /// Takes out of `bus` what must wait: the `turn/completed` of the `publishing` threads and
    /// every later line of its session, and every line of a session that already waits.
    pub fn hold(&mut self, bus: &mut Vec<BusLine>, publishing: &[String]) {
        if self.sessions.is_empty() && publishing.is_empty() {
            return;
        }
        let mut kept = Vec::with_capacity(bus.len());
        for line in bus.drain(..) {
            let Some(session) = line.session.clone() else {
                kept.push(line);
                continue;
            };
            let thread = if publishing.is_empty() {
                None
            } else {
                completes(&line.line, publishing)
            };
            match (self.sessions.get_mut(&session), thread) {
                (Some(held), thread) => {
                    if let Some(thread) = thread {
                        held.threads.insert(thread.to_owned());
                    }
                    held.lines.push_back(line);
                }
                (None, Some(thread)) => {
                    self.sessions.insert(
                        session,
                        Held {
                            threads: HashSet::from([thread.to_owned()]),
                            lines: VecDeque::from([line]),
                        },
                    );
                }
                (None, None) => kept.push(line),
            }
        }
        *bus = kept;
    }

    /// The publish of `thread` ended: the sessions that waited only for it get their lines back,
    /// in order, appended to `bus`; with `lost`, the thread's `turn/completed` lines among them
    /// report a failed turn with that message.
    pub fn release(&mut self, thread: &str, lost: Option<&str>, bus: &mut Vec<BusLine>) {
        if let Some(why) = lost {
            for held in self.sessions.values_mut() {
                fail_turns(held.lines.iter_mut(), thread, why);
            }
        }
        let done: Vec<SessionKey> = self
            .sessions
            .iter_mut()
            .filter_map(|(session, held)| {
                held.threads.remove(thread);
                held.threads.is_empty().then(|| session.clone())
            })
            .collect();
        for session in done {
            if let Some(held) = self.sessions.remove(&session) {
                bus.extend(held.lines);
            }
        }
    }

    /// Every held line, at the end (the worker exits: better late than never).
    pub fn release_all(&mut self, bus: &mut Vec<BusLine>) {
        for (_, held) in self.sessions.drain() {
            bus.extend(held.lines);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::app_server::outbound::Kind;

    fn line(session: &str, text: &str) -> BusLine {
        BusLine {
            session: Some(Arc::from(session.as_bytes())),
            line: text.as_bytes().to_vec(),
            kind: Kind::Essential,
        }
    }

    fn texts(bus: &[BusLine]) -> Vec<String> {
        bus.iter()
            .map(|line| String::from_utf8(line.line.clone()).unwrap())
            .collect()
    }

    const DONE_T1: &str =
        r#"{"method":"turn/completed","params":{"threadId":"t1","turn":{"id":"u1"}}}"#;

    #[test]
    fn turn_completed_and_what_follows_wait_for_the_publish_other_sessions_do_not() {
        let mut hold = Hold::default();
        let mut bus = vec![
            line("a", "delta"),
            line("a", DONE_T1),
            line("b", "b1"),
            line("a", "after"),
        ];
        hold.hold(&mut bus, &["t1".to_owned()]);
        assert_eq!(texts(&bus), ["delta", "b1"]);
        // A later batch for the held session waits too.
        let mut later = vec![line("a", "later"), line("b", "b2")];
        hold.hold(&mut later, &[]);
        assert_eq!(texts(&later), ["b2"]);
        let mut released = Vec::new();
        hold.release("other", None, &mut released);
        assert!(released.is_empty());
        hold.release("t1", None, &mut released);
        assert_eq!(texts(&released), [DONE_T1, "after", "later"]);
    }

    #[test]
    fn a_turn_whose_publish_was_fenced_out_is_reported_failed() {
        let mut hold = Hold::default();
        let mut bus = vec![line("a", DONE_T1)];
        hold.hold(&mut bus, &["t1".to_owned()]);
        let mut released = Vec::new();
        hold.release("t1", Some("lease lost"), &mut released);
        let note: serde_json::Value = serde_json::from_slice(&released[0].line).unwrap();
        assert_eq!(note["params"]["turn"]["status"], "failed");
        assert_eq!(note["params"]["turn"]["error"]["message"], "lease lost");
        assert_eq!(note["params"]["threadId"], "t1");
    }

    #[test]
    fn a_turn_completed_of_a_thread_not_being_published_passes() {
        let mut hold = Hold::default();
        let mut bus = vec![line("a", DONE_T1)];
        hold.hold(&mut bus, &["t2".to_owned()]);
        assert_eq!(texts(&bus), [DONE_T1]);
        let mut all = Vec::new();
        hold.release_all(&mut all);
        assert!(all.is_empty());
    }
}
