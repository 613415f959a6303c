//! Which client methods a session may send, and how each is scoped.
//!
//! `codex app-server` is not multi-tenant: one config, one auth and one broadcast space per
//! process. Thread-scoped methods are checked against thread ownership; methods that reach
//! process-global state (`config/*`, `account/*`, `fs/*`, `command/exec*`, `plugin/*`, …) would let
//! one session read or change what every other session uses, so they are refused unless the
//! operator enables them.

/// Read-only global methods that reveal nothing about other sessions.
const ALWAYS_ALLOWED: &[&str] = &[
    "model/list",
    "modelProvider/list",
    "modelProvider/capabilities/read",
];

/// Namespaces whose methods act on one thread named by `params.threadId`.
const THREAD_NAMESPACES: &[&str] = &["thread/", "turn/", "review/"];

/// How the worker handles one client request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class<'a> {
    /// `initialize`: answered by the worker from the child's cached handshake.
    Initialize,
    /// `thread/start`: creates a thread the session's scope (its tenant, or itself) will own.
    Start,
    /// `thread/resume`: allowed on the scope's own threads and (within limits, see the bridge)
    /// on threads nobody owns.
    Resume(&'a str),
    /// `thread/fork`: the source must be the scope's or nobody's; the fork becomes the scope's.
    Fork(&'a str),
    /// `thread/list` or `thread/loaded/list`: forwarded, and the result filtered to owned threads.
    List,
    /// A method on one thread: only its owning scope may send it.
    Thread(&'a str),
    /// A global method that is allowed (built in, or enabled with `--allow-method`).
    Global,
    /// Refused: process-global and not enabled.
    Refused,
}

/// The method allow-list and the classification rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allowed: Vec<String>,
}

impl Policy {
    /// A policy that also allows `patterns`: exact method names, `prefix/*` or `*`.
    pub fn new(patterns: &[String]) -> Self {
        Self {
            allowed: patterns.to_vec(),
        }
    }

    /// Classifies `method` whose `params.threadId` is `thread`.
    pub fn classify<'a>(&self, method: &str, thread: Option<&'a str>) -> Class<'a> {
        match (method, thread) {
            ("initialize", _) => Class::Initialize,
            ("thread/start", _) => Class::Start,
            ("thread/resume", Some(thread)) => Class::Resume(thread),
            ("thread/fork", Some(thread)) => Class::Fork(thread),
            ("thread/list" | "thread/loaded/list", _) => Class::List,
            (method, Some(thread)) if self.is_allowed(method) || is_thread_method(method) => {
                Class::Thread(thread)
            }
            (method, None) if self.is_allowed(method) => Class::Global,
            _ => Class::Refused,
        }
    }

    fn is_allowed(&self, method: &str) -> bool {
        ALWAYS_ALLOWED.contains(&method)
            || self
                .allowed
                .iter()
                .any(|pattern| pattern_matches(pattern, method))
    }
}

/// Whether `method` starts work that a draining worker must refuse.
pub fn starts_work(method: &str) -> bool {
    matches!(
        method,
        "thread/start"
            | "thread/resume"
            | "thread/fork"
            | "turn/start"
            | "review/start"
            | "thread/compact/start"
            | "thread/shellCommand"
    )
}

fn is_thread_method(method: &str) -> bool {
    THREAD_NAMESPACES
        .iter()
        .any(|namespace| method.starts_with(namespace))
}

/// `*` matches everything, `a/*` every method under `a/` (and `a` itself), anything else exactly.
fn pattern_matches(pattern: &str, method: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => method.starts_with(prefix) || prefix.strip_suffix('/') == Some(method),
        None => pattern == method,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_methods_are_scoped_by_thread_id() {
        let policy = Policy::default();
        assert_eq!(policy.classify("turn/start", Some("t")), Class::Thread("t"));
        assert_eq!(
            policy.classify("review/start", Some("t")),
            Class::Thread("t")
        );
        assert_eq!(
            policy.classify("thread/read", Some("t")),
            Class::Thread("t")
        );
        assert_eq!(
            policy.classify("thread/resume", Some("t")),
            Class::Resume("t")
        );
        assert_eq!(policy.classify("thread/fork", Some("t")), Class::Fork("t"));
        assert_eq!(policy.classify("thread/start", None), Class::Start);
        assert_eq!(policy.classify("thread/loaded/list", None), Class::List);
        assert_eq!(policy.classify("initialize", None), Class::Initialize);
    }

    #[test]
    fn process_global_methods_are_refused_by_default() {
        let policy = Policy::default();
        for method in [
            "config/read",
            "config/value/write",
            "account/read",
            "fs/readFile",
            "command/exec",
            "plugin/list",
            "fuzzyFileSearch",
            "thread/attachmentOwner/list",
        ] {
            assert_eq!(policy.classify(method, None), Class::Refused, "{method}");
        }
        // A thread id does not make a global method thread-scoped.
        assert_eq!(
            policy.classify("mcpServer/tool/call", Some("t")),
            Class::Refused
        );
        assert_eq!(policy.classify("model/list", None), Class::Global);
    }

    #[test]
    fn allow_patterns_enable_global_methods() {
        let policy = Policy::new(&["config/*".to_owned(), "fuzzyFileSearch".to_owned()]);
        assert_eq!(policy.classify("config/read", None), Class::Global);
        assert_eq!(policy.classify("config/value/write", None), Class::Global);
        assert_eq!(policy.classify("fuzzyFileSearch", None), Class::Global);
        assert_eq!(policy.classify("account/read", None), Class::Refused);
        let everything = Policy::new(&["*".to_owned()]);
        assert_eq!(everything.classify("fs/readFile", None), Class::Global);
        assert_eq!(
            everything.classify("mcpServer/tool/call", Some("t")),
            Class::Thread("t")
        );
    }

    #[test]
    fn draining_refuses_only_new_work() {
        assert!(starts_work("turn/start"));
        assert!(starts_work("thread/start"));
        assert!(!starts_work("turn/interrupt"));
        assert!(!starts_work("thread/read"));
    }
}
