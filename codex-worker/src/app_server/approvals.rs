//! Server→client requests (approvals and the like): each gets a worker-unique id, belongs to the
//! session that owns its thread, and only that session's answer reaches the child.
//!
//! The child's own ids are integers from 0 that restart with every child, so forwarding them
//! would let a stale answer approve the wrong command after a restart. With a child per session
//! the worker ids come from one source for all children, so an answer names one request.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Instant;

use super::sessions::SessionKey;

/// One server request the worker forwarded to a session.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerRequest {
    /// The child generation that asked.
    pub generation: u64,
    /// The child's id token, restored on the answer.
    pub child_id: Vec<u8>,
    /// The session that must answer.
    pub session: SessionKey,
    /// The thread it is about.
    pub thread: String,
    /// The request method, which decides the declining answer.
    pub method: String,
    /// When it was forwarded.
    pub since: Instant,
    /// Whether an answer already went to the child.
    pub answered: bool,
}

/// Why a client's answer is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such request is waiting (never sent, already answered or resolved).
    Unknown,
    /// The answer names another session than the one asked.
    WrongSession,
}

/// The source of worker ids for server requests, shared by every bridge of a worker: the bus
/// hands answers back by id alone, so an id must name one request across all children.
#[derive(Debug, Clone, Default)]
pub struct ApprovalIds(Rc<Cell<u64>>);

impl ApprovalIds {
    fn take(&self) -> u64 {
        let id = self.0.get();
        self.0.set(id + 1);
        id
    }
}

/// The server requests waiting for, or answered by, sessions.
#[derive(Debug, Default)]
pub struct Approvals {
    ids: ApprovalIds,
    pending: BTreeMap<u64, ServerRequest>,
    by_child: HashMap<(u64, Vec<u8>), u64>,
}

impl Approvals {
    /// Server requests numbered from `ids`.
    pub fn new(ids: ApprovalIds) -> Self {
        Self {
            ids,
            pending: BTreeMap::new(),
            by_child: HashMap::new(),
        }
    }

    /// Registers a forwarded server request; returns its worker-unique id.
    pub fn register(&mut self, request: ServerRequest) -> u64 {
        let id = self.ids.take();
        self.by_child
            .insert((request.generation, request.child_id.clone()), id);
        self.pending.insert(id, request);
        id
    }

    /// Accepts the answer to `id` from `from` (the answer's `sessionId`, when it has one: the
    /// bus already delivers worker requests only to the session's client); marks it answered.
    pub fn answer(&mut self, id: u64, from: Option<&[u8]>) -> Result<ServerRequest, Refusal> {
        let request = self.pending.get_mut(&id).ok_or(Refusal::Unknown)?;
        if request.answered {
            return Err(Refusal::Unknown);
        }
        if from.is_some_and(|from| *request.session != *from) {
            return Err(Refusal::WrongSession);
        }
        request.answered = true;
        Ok(request.clone())
    }

    /// The child resolved its request `child_id`: forgets it and returns its worker id, so that
    /// `serverRequest/resolved` names the id the session saw.
    pub fn resolved(&mut self, generation: u64, child_id: &[u8]) -> Option<(u64, ServerRequest)> {
        let id = self.by_child.remove(&(generation, child_id.to_vec()))?;
        let request = self.pending.remove(&id)?;
        Some((id, request))
    }

    /// Removes and returns the unanswered requests that match `keep`, in id order.
    pub fn take_unanswered(
        &mut self,
        mut matches: impl FnMut(&ServerRequest) -> bool,
    ) -> Vec<(u64, ServerRequest)> {
        let ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, request)| !request.answered && matches(request))
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter().filter_map(|id| self.take(id)).collect()
    }

    /// The child died: removes every request, answered or not, in id order.
    pub fn take_all(&mut self) -> Vec<(u64, ServerRequest)> {
        self.by_child.clear();
        std::mem::take(&mut self.pending).into_iter().collect()
    }

    /// Forgets the requests of a thread whose turn completed (the child resolved them).
    pub fn forget_thread(&mut self, thread: &str) {
        let ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, request)| request.thread == thread)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.take(id);
        }
    }

    /// Whether `id` names a request of this child's that was forwarded and not yet resolved.
    pub fn contains(&self, id: u64) -> bool {
        self.pending.contains_key(&id)
    }

    /// How many requests still wait for an answer.
    pub fn unanswered(&self) -> usize {
        self.pending
            .values()
            .filter(|request| !request.answered)
            .count()
    }

    fn take(&mut self, id: u64) -> Option<(u64, ServerRequest)> {
        let request = self.pending.remove(&id)?;
        self.by_child
            .remove(&(request.generation, request.child_id.clone()));
        Some((id, request))
    }
}

/// The answer the worker gives the child for a server request nobody can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decline {
    /// A `result` that declines.
    Result(&'static str),
    /// A JSON-RPC `error` object, for requests that have no declining result.
    Error(&'static str),
}

/// How to decline `method` so the child's turn goes on instead of waiting forever.
pub fn decline(method: &str) -> Decline {
    match method {
        "item/commandExecution/requestApproval" | "item/fileChange/requestApproval" => {
            Decline::Result(r#"{"decision":"decline"}"#)
        }
        "execCommandApproval" | "applyPatchApproval" => Decline::Result(r#"{"decision":"denied"}"#),
        "mcpServer/elicitation/request" => Decline::Result(r#"{"action":"decline"}"#),
        "item/permissions/requestApproval" => Decline::Result(r#"{"permissions":{}}"#),
        "item/tool/requestUserInput" => Decline::Result(r#"{"answers":{}}"#),
        "item/tool/call" => Decline::Result(r#"{"contentItems":[],"success":false}"#),
        _ => Decline::Error(
            r#"{"code":-32000,"message":"declined by codex-worker: no session can answer"}"#,
        ),
    }
}

/// Appends the child line that declines request `child_id` of kind `method`.
pub fn write_decline(out: &mut Vec<u8>, child_id: &[u8], method: &str) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(child_id);
    match decline(method) {
        Decline::Result(result) => {
            out.extend_from_slice(b",\"result\":");
            out.extend_from_slice(result.as_bytes());
        }
        Decline::Error(error) => {
            out.extend_from_slice(b",\"error\":");
            out.extend_from_slice(error.as_bytes());
        }
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn request(generation: u64, child_id: &str, session: &str) -> ServerRequest {
        ServerRequest {
            generation,
            child_id: child_id.as_bytes().to_vec(),
            session: Arc::from(session.as_bytes()),
            thread: "t".into(),
            method: "item/commandExecution/requestApproval".into(),
            since: Instant::now(),
            answered: false,
        }
    }

    #[test]
    fn child_ids_that_restart_at_zero_get_distinct_worker_ids() {
        let mut approvals = Approvals::default();
        let first = approvals.register(request(1, "0", "a"));
        let second = approvals.register(request(2, "0", "a"));
        assert_ne!(first, second);
        assert_eq!(approvals.resolved(2, b"0").map(|(id, _)| id), Some(second));
        assert_eq!(approvals.resolved(2, b"0"), None);
        assert_eq!(approvals.resolved(1, b"0").map(|(id, _)| id), Some(first));
    }

    #[test]
    fn approvals_sharing_an_id_source_never_hand_out_one_id_twice() {
        let ids = ApprovalIds::default();
        let mut first = Approvals::new(ids.clone());
        let mut second = Approvals::new(ids);
        let a = first.register(request(1, "0", "a"));
        let b = second.register(request(2, "0", "b"));
        let c = first.register(request(1, "1", "a"));
        assert!(a != b && b != c && a != c);
        assert!(first.contains(a) && !first.contains(b) && second.contains(b));
    }

    #[test]
    fn only_the_owning_session_answers_and_only_once() {
        let mut approvals = Approvals::default();
        let id = approvals.register(request(1, "4", "a"));
        assert_eq!(approvals.answer(id, Some(b"b")), Err(Refusal::WrongSession));
        assert_eq!(approvals.unanswered(), 1);
        let answered = approvals.answer(id, Some(b"a")).unwrap();
        assert_eq!(answered.child_id, b"4");
        assert_eq!(approvals.answer(id, None), Err(Refusal::Unknown));
        assert_eq!(approvals.answer(99, None), Err(Refusal::Unknown));
        assert_eq!(approvals.unanswered(), 0);
    }

    #[test]
    fn unanswered_requests_of_a_session_can_be_taken_for_declining() {
        let mut approvals = Approvals::default();
        let a = approvals.register(request(1, "0", "a"));
        approvals.register(request(1, "1", "b"));
        let taken = approvals.take_unanswered(|request| &*request.session == b"a");
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, a);
        assert_eq!(approvals.resolved(1, b"0"), None);
        approvals.forget_thread("t");
        assert!(approvals.take_all().is_empty());
    }

    #[test]
    fn declines_fit_each_request_kind() {
        let mut out = Vec::new();
        write_decline(&mut out, b"3", "item/fileChange/requestApproval");
        write_decline(&mut out, b"4", "account/chatgptAuthTokens/refresh");
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            serde_json::json!({"id":3,"result":{"decision":"decline"}})
        );
        assert_eq!(lines[1]["id"], 4);
        assert!(lines[1]["error"]["message"].is_string());
    }
}
