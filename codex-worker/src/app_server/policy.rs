//! Which client methods a session may send, how each is scoped, and what a thread may do.
//!
//! `codex app-server` is not multi-tenant: one config, one auth and one broadcast space per
//! process. Thread-scoped methods are checked against thread ownership; methods that reach
//! process-global state (`config/*` writes, `account/*`, `fs/*`, `command/exec*`, `plugin/*`, …)
//! would let one session read or change what every other session uses, so they are refused
//! unless the operator enables them. The reads the Codex TUI needs before its first turn are
//! answered without the operator's state, and what a thread may do (its sandbox) is the
//! operator's to grant. The table is in docs/codex-worker.md, "What each client method does".

use serde_json::value::RawValue;
use serde_json::Value;

/// Read-only global methods that reveal nothing about other sessions or the operator's secrets:
/// the model catalogue, Codex's built-in collaboration presets, the managed requirements
/// (`requirements.toml`: which policies the operator's Codex accepts) and whether the
/// configured provider is a GovCloud one (two booleans).
const ALWAYS_ALLOWED: &[&str] = &[
    "model/list",
    "modelProvider/list",
    "modelProvider/capabilities/read",
    "collaborationMode/list",
    "configRequirements/read",
    "account/bedrock/checkGovCloudRequirements",
];

/// Global reads the worker answers itself, and the `result` it gives, shaped as Codex 0.169.0
/// answers them when there is nothing to show. The TUI sends each before its first turn and
/// starts a login flow unless `account/read` says `requiresOpenaiAuth: false`; Codex's own
/// answers would show the operator's account, and the hooks, skills and plugins installed on
/// the worker's host (with their paths, and project files under any `cwds` a client names).
const ANSWERED: &[(&str, &str)] = &[
    (
        "account/read",
        r#"{"account":null,"userId":null,"requiresOpenaiAuth":false,"workspaceRouting":null}"#,
    ),
    ("hooks/list", r#"{"data":[]}"#),
    ("skills/list", r#"{"data":[]}"#),
    (
        "plugin/installed",
        r#"{"marketplaces":[],"marketplaceLoadErrors":[]}"#,
    ),
];

/// Global reads forwarded with their result cut down to what is safe to show (see
/// [`redact_config`]).
const REDACTED: &[&str] = &["config/read"];

/// The `config/read` keys a session is shown: the model and the policies its threads get.
/// Everything else in the operator's `config.toml` (instructions, tools, login settings; and
/// through `layers`/`origins` the file paths) stays on the host.
const SHOWN_CONFIG: &[&str] = &[
    "model",
    "review_model",
    "model_provider",
    "model_context_window",
    "model_auto_compact_token_limit",
    "model_auto_compact_token_limit_scope",
    "model_reasoning_effort",
    "model_reasoning_summary",
    "model_verbosity",
    "service_tier",
    "approval_policy",
    "approvals_reviewer",
    "sandbox_mode",
    "web_search",
];

/// The `config` override keys of `thread/start`, `thread/resume` and `thread/fork` any session
/// may set: how the model answers. Other keys (`mcp_servers`, `model_providers`, `notify`,
/// `shell_environment_policy`, …) can run commands outside the sandbox or send the operator's
/// credentials elsewhere, so they need the `danger-full-access` grant.
const SAFE_CONFIG_OVERRIDES: &[&str] = &[
    "model_reasoning_effort",
    "model_reasoning_summary",
    "model_verbosity",
    "service_tier",
];

/// Whether the `config` override `key` = `value` only switches something off, which any session
/// may do: a feature flag or an `….enabled` set to `false`, `skills.include_instructions: false`,
/// `web_search: "disabled"`, no MCP servers (`mcp_servers: {}`), or the read-only permission
/// profile. The Codex TUI's title-generation thread sends exactly these (issue 13); refusing them
/// cost every prompt its title.
fn disables_only(key: &str, value: &Value) -> bool {
    match (key, value) {
        ("skills.include_instructions", Value::Bool(false)) => true,
        (key, Value::Bool(false)) => key.starts_with("features.") || key.ends_with(".enabled"),
        ("web_search", Value::String(mode)) => mode == "disabled",
        ("mcp_servers", Value::Object(servers)) => servers.is_empty(),
        ("default_permissions", Value::String(profile)) => profile == ":read-only",
        _ => false,
    }
}

/// Sandbox modes every session may ask for; anything else needs `--allow-sandbox`.
const DEFAULT_SANDBOXES: &[&str] = &["read-only", "workspace-write"];

/// The grant that lifts every restriction on what a thread may do.
pub const FULL_ACCESS: &str = "danger-full-access";

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
    /// A global read the worker answers itself with this `result` (JSON).
    Answered(&'static str),
    /// A global read forwarded, its result redacted before the session sees it.
    Redacted,
    /// Refused: process-global and not enabled.
    Refused,
}

/// A sandbox mode the operator granted (`--allow-sandbox [TENANT=]MODE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxGrant {
    /// The tenant it is granted to; `None`: every session.
    pub tenant: Option<String>,
    /// A `sandbox` value: `read-only`, `workspace-write` or `danger-full-access`.
    pub mode: String,
}

impl std::str::FromStr for SandboxGrant {
    type Err = String;

    /// `MODE` or `TENANT=MODE`; the tenant is the bus's tenant name (the last `=` splits, so a
    /// tenant name may hold one).
    fn from_str(text: &str) -> Result<Self, String> {
        let (tenant, mode) = match text.rsplit_once('=') {
            Some((tenant, mode)) => (Some(tenant.to_owned()), mode),
            None => (None, text),
        };
        if !matches!(mode, "read-only" | "workspace-write" | FULL_ACCESS) {
            return Err(format!(
                "unknown sandbox mode {mode:?}: read-only, workspace-write or danger-full-access"
            ));
        }
        Ok(Self {
            tenant,
            mode: mode.to_owned(),
        })
    }
}

/// The method allow-list, the sandbox grants and the classification rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allowed: Vec<String>,
    sandboxes: Vec<SandboxGrant>,
}

impl Policy {
    /// A policy that also allows `patterns` (exact method names, `prefix/*` or `*`) and grants
    /// `sandboxes` besides the default `read-only` and `workspace-write`.
    pub fn new(patterns: &[String], sandboxes: &[SandboxGrant]) -> Self {
        Self {
            allowed: patterns.to_vec(),
            sandboxes: sandboxes.to_vec(),
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
            // The worker's own answers say nothing about any thread, so a `threadId` (the TUI
            // sends one to `hooks/list` once it has a thread) changes nothing.
            (method, thread) => match ANSWERED.iter().find(|(name, _)| *name == method) {
                Some((_, result)) => Class::Answered(result),
                None if thread.is_none() && REDACTED.contains(&method) => Class::Redacted,
                None => Class::Refused,
            },
        }
    }

    /// Whether the result of `method` is redacted (it is [`Class::Redacted`]).
    pub fn redacts(&self, method: &str) -> bool {
        REDACTED.contains(&method) && !self.is_allowed(method)
    }

    /// Whether `tenant` (`None`: a session the bus named no tenant for) may give a thread the
    /// sandbox `mode`.
    pub fn sandbox_allowed(&self, tenant: Option<&str>, mode: &str) -> bool {
        DEFAULT_SANDBOXES.contains(&mode)
            || self.sandboxes.iter().any(|grant| {
                grant.mode == mode
                    && grant
                        .tenant
                        .as_deref()
                        .is_none_or(|granted| Some(granted) == tenant)
            })
    }

    /// Checks what request `method` asks a thread to do against the grants of `tenant`:
    /// `sandbox` and `config` overrides of `thread/start`, `thread/resume` and `thread/fork`,
    /// `sandboxPolicy` of `turn/start`, and `thread/shellCommand` (which Codex runs outside the
    /// sandbox). `Err` says what is not permitted; nothing is clamped, so a client never gets
    /// less than it asked for without being told.
    pub fn permits(
        &self,
        method: &str,
        tenant: Option<&str>,
        params: Option<&RawValue>,
    ) -> Result<(), String> {
        let full = self.sandbox_allowed(tenant, FULL_ACCESS);
        let needs_grant = |mode: &str, what: &str| {
            if self.sandbox_allowed(tenant, mode) {
                Ok(())
            } else {
                Err(format!(
                    "{what} {mode:?} is not granted to this tenant (codex-worker --allow-sandbox)"
                ))
            }
        };
        let params = || -> Value {
            params
                .and_then(|raw| serde_json::from_str(raw.get()).ok())
                .unwrap_or(Value::Null)
        };
        match method {
            "thread/start" | "thread/resume" | "thread/fork" => {
                let params = params();
                if let Some(mode) = params.get("sandbox").and_then(Value::as_str) {
                    needs_grant(mode, "sandbox")?;
                }
                let overrides = params.get("config").and_then(Value::as_object);
                for (key, value) in overrides.into_iter().flatten() {
                    match (key.as_str(), value.as_str()) {
                        ("sandbox_mode", Some(mode)) => needs_grant(mode, "config.sandbox_mode")?,
                        (key, _)
                            if full
                                || SAFE_CONFIG_OVERRIDES.contains(&key)
                                || disables_only(key, value) => {}
                        (key, _) => {
                            return Err(format!(
                                "config override {key:?} needs the danger-full-access grant (codex-worker --allow-sandbox)"
                            ))
                        }
                    }
                }
                Ok(())
            }
            "turn/start" => {
                let params = params();
                let kind = params
                    .get("sandboxPolicy")
                    .and_then(|policy| policy.get("type"))
                    .and_then(Value::as_str);
                match kind {
                    Some("readOnly") => needs_grant("read-only", "sandboxPolicy"),
                    Some("workspaceWrite") => needs_grant("workspace-write", "sandboxPolicy"),
                    // An external sandbox is one Codex does not enforce: full access for Codex.
                    Some(_) => needs_grant(FULL_ACCESS, "sandboxPolicy"),
                    None => Ok(()),
                }
            }
            "thread/shellCommand" if !full => Err(
                "thread/shellCommand runs outside the sandbox: it needs the danger-full-access grant (codex-worker --allow-sandbox)"
                    .to_owned(),
            ),
            _ => Ok(()),
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

/// Cuts a `config/read` result down to the [`SHOWN_CONFIG`] keys of `config`, with no `layers`
/// and no `origins` (they name the host's files); `result` is left alone when it has no
/// `config` object.
pub fn redact_config(result: &mut Value) {
    let Some(object) = result.as_object_mut() else {
        return;
    };
    if let Some(config) = object.get_mut("config").and_then(Value::as_object_mut) {
        config.retain(|key, _| SHOWN_CONFIG.contains(&key.as_str()));
    }
    object.insert("origins".into(), Value::Object(serde_json::Map::new()));
    object.insert("layers".into(), Value::Null);
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
    use serde_json::json;

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
            "config/value/write",
            "config/batchWrite",
            "account/login/start",
            "account/logout",
            "account/rateLimits/read",
            "fs/readFile",
            "command/exec",
            "plugin/list",
            "plugin/install",
            "skills/config/write",
            "marketplace/add",
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

    /// The table of docs/codex-worker.md for the methods the Codex TUI sends at startup.
    #[test]
    fn the_tui_startup_methods_have_a_treatment() {
        let policy = Policy::default();
        for method in [
            "model/list",
            "collaborationMode/list",
            "configRequirements/read",
            "account/bedrock/checkGovCloudRequirements",
        ] {
            assert_eq!(policy.classify(method, None), Class::Global, "{method}");
        }
        for method in [
            "account/read",
            "hooks/list",
            "skills/list",
            "plugin/installed",
        ] {
            let Class::Answered(result) = policy.classify(method, None) else {
                panic!("{method} is not answered by the worker");
            };
            let result: Value = serde_json::from_str(result).expect(method);
            assert!(result.is_object(), "{method}");
        }
        let Class::Answered(account) = policy.classify("account/read", None) else {
            unreachable!()
        };
        assert!(account.contains(r#""requiresOpenaiAuth":false"#));
        assert!(account.contains(r#""account":null"#));
        assert!(matches!(
            policy.classify("hooks/list", Some("t")),
            Class::Answered(_)
        ));
        assert_eq!(policy.classify("config/read", None), Class::Redacted);
        assert!(policy.redacts("config/read"));
        for method in ["thread/list", "thread/loaded/list"] {
            assert_eq!(policy.classify(method, None), Class::List, "{method}");
        }
        for method in [
            "thread/read",
            "thread/turns/list",
            "thread/items/list",
            "thread/goal/get",
            "thread/readState/update",
            "thread/unsubscribe",
            "turn/start",
        ] {
            assert_eq!(policy.classify(method, Some("t")), Class::Thread("t"));
        }
        // `--allow-method` hands the real answer back.
        let real = Policy::new(&["account/read".to_owned(), "config/read".to_owned()], &[]);
        assert_eq!(real.classify("account/read", None), Class::Global);
        assert_eq!(real.classify("config/read", None), Class::Global);
        assert!(!real.redacts("config/read"));
    }

    #[test]
    fn allow_patterns_enable_global_methods() {
        let policy = Policy::new(&["config/*".to_owned(), "fuzzyFileSearch".to_owned()], &[]);
        assert_eq!(policy.classify("config/read", None), Class::Global);
        assert_eq!(policy.classify("config/value/write", None), Class::Global);
        assert_eq!(policy.classify("fuzzyFileSearch", None), Class::Global);
        assert_eq!(policy.classify("account/logout", None), Class::Refused);
        let everything = Policy::new(&["*".to_owned()], &[]);
        assert_eq!(everything.classify("fs/readFile", None), Class::Global);
        assert_eq!(
            everything.classify("mcpServer/tool/call", Some("t")),
            Class::Thread("t")
        );
    }

    fn raw(value: Value) -> Box<RawValue> {
        RawValue::from_string(value.to_string()).unwrap()
    }

    #[test]
    fn sandbox_grants_parse() {
        let grant: SandboxGrant = "danger-full-access".parse().unwrap();
        assert_eq!((grant.tenant, grant.mode.as_str()), (None, FULL_ACCESS));
        let grant: SandboxGrant = "a=b=danger-full-access".parse().unwrap();
        assert_eq!(grant.tenant.as_deref(), Some("a=b"));
        assert!("full".parse::<SandboxGrant>().is_err());
        assert!("ops=".parse::<SandboxGrant>().is_err());
    }

    #[test]
    fn full_access_is_refused_unless_granted() {
        let check = |policy: &Policy, tenant: Option<&str>, method: &str, params: Value| {
            policy.permits(method, tenant, Some(&raw(params)))
        };
        let policy = Policy::default();
        for tenant in [None, Some("a")] {
            for (method, params) in [
                ("thread/start", json!({"sandbox": "danger-full-access"})),
                (
                    "thread/resume",
                    json!({"threadId": "t", "sandbox": "danger-full-access"}),
                ),
                (
                    "thread/fork",
                    json!({"threadId": "t", "sandbox": "danger-full-access"}),
                ),
                (
                    "thread/start",
                    json!({"config": {"sandbox_mode": "danger-full-access"}}),
                ),
                (
                    "thread/start",
                    json!({"config": {"mcp_servers": {"x": {"command": "sh"}}}}),
                ),
                ("thread/start", json!({"config": {"model_providers": {}}})),
                (
                    "turn/start",
                    json!({"threadId": "t", "sandboxPolicy": {"type": "dangerFullAccess"}}),
                ),
                (
                    "turn/start",
                    json!({"threadId": "t", "sandboxPolicy": {"type": "externalSandbox"}}),
                ),
                (
                    "thread/shellCommand",
                    json!({"threadId": "t", "command": "id"}),
                ),
            ] {
                let refused = check(&policy, tenant, method, params.clone());
                assert!(refused.is_err(), "{method} {params}");
            }
            for (method, params) in [
                (
                    "thread/start",
                    json!({"sandbox": "read-only", "config": {}}),
                ),
                ("thread/start", json!({"sandbox": "workspace-write"})),
                (
                    "thread/start",
                    json!({"config": {"model_reasoning_effort": "high"}}),
                ),
                (
                    "turn/start",
                    json!({"threadId": "t", "sandboxPolicy": {"type": "readOnly"}}),
                ),
                (
                    "turn/start",
                    json!({"threadId": "t", "approvalPolicy": "never"}),
                ),
                ("thread/read", json!({"threadId": "t"})),
            ] {
                assert_eq!(
                    check(&policy, tenant, method, params.clone()),
                    Ok(()),
                    "{method} {params}"
                );
            }
        }
        assert_eq!(policy.permits("thread/start", None, None), Ok(()));
        let ops = Policy::new(&[], &["ops=danger-full-access".parse().unwrap()]);
        let full = json!({"sandbox": "danger-full-access", "config": {"mcp_servers": {}}});
        assert_eq!(
            check(&ops, Some("ops"), "thread/start", full.clone()),
            Ok(())
        );
        assert!(check(&ops, Some("other"), "thread/start", full.clone()).is_err());
        assert!(check(&ops, None, "thread/start", full.clone()).is_err());
        let everyone = Policy::new(&[], &["danger-full-access".parse().unwrap()]);
        assert_eq!(check(&everyone, None, "thread/start", full), Ok(()));
        assert_eq!(
            check(
                &everyone,
                Some("x"),
                "thread/shellCommand",
                json!({"threadId": "t", "command": "id"})
            ),
            Ok(())
        );
    }

    #[test]
    fn config_read_keeps_the_model_and_policies() {
        let mut result = json!({
            "config": {"model": "m", "approval_policy": "never", "instructions": "x", "tools": {}},
            "origins": {"model": {"name": {"file": "/srv/config.toml"}}},
            "layers": [{}]});
        redact_config(&mut result);
        assert_eq!(
            result,
            json!({"config": {"model": "m", "approval_policy": "never"}, "origins": {}, "layers": null})
        );
    }

    #[test]
    fn draining_refuses_only_new_work() {
        assert!(starts_work("turn/start"));
        assert!(starts_work("thread/start"));
        assert!(!starts_work("turn/interrupt"));
        assert!(!starts_work("thread/read"));
    }

    #[test]
    fn overrides_that_only_switch_things_off_need_no_grant() {
        // What the TUI's title-generation thread/start sends.
        for (key, value) in [
            ("features.memory_tool", json!(false)),
            ("cloud.skills.enabled", json!(false)),
            ("skills.include_instructions", json!(false)),
            ("web_search", json!("disabled")),
            ("mcp_servers", json!({})),
            ("default_permissions", json!(":read-only")),
        ] {
            assert!(disables_only(key, &value), "{key} = {value}");
        }
        for (key, value) in [
            ("features.memory_tool", json!(true)),
            ("cloud.skills.enabled", json!(true)),
            ("web_search", json!("live")),
            ("mcp_servers", json!({"x": {"command": "sh"}})),
            ("default_permissions", json!(":full-access")),
            ("notify", json!(false)),
        ] {
            assert!(!disables_only(key, &value), "{key} = {value}");
        }
    }
}
