//! What a reload has to do beyond the pools: the difference between the config in force and a
//! newly loaded one, computed without touching anything (pure, so every rule is unit-tested here).
//!
//! The pools' difference is the router's (`router::reconfigure`), which compares the new pools with
//! the table it routes on. Credentials (`auth` tokens, tokens file, JWT settings, the
//! admin bearer), TLS files and the audit path are replaced in place. Everything the daemon only
//! reads at start (listeners and their addresses, `limits`, `routing`, `tenants`, turning `auth`
//! or a listener's TLS on or off) needs a restart: a plan that changes one is refused with a
//! reason naming the field, and the old config keeps serving.

use codex_bus_config::Config;
use serde::Serialize;
use serde_json::Value;

/// What a reload replaces in place besides the pools.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// `auth` changed (it stays on): the authenticator is rebuilt from it.
    pub auth: bool,
    /// A listener's TLS file paths changed (transport, metrics or a WebSocket listener).
    pub tls: bool,
    /// `audit.path` changed (set, moved or removed).
    pub audit: bool,
    /// `metrics.bearer_sha256` changed (set, replaced or removed): the admin endpoint's bearer is
    /// replaced.
    pub bearer: bool,
}

/// Which listener settings of the file the command line overrides (`--stdio`, `--unix` or `--tcp`;
/// `--metrics`): the file's values there are not in force, so a change to them is no change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Overrides {
    /// The NDJSON endpoint came from a flag: `transport.mode` and `transport.address` are not
    /// in force (`transport.tls` is, for a `--tcp` listener).
    pub endpoint: bool,
    /// The admin endpoint came from `--metrics`: `metrics.listen` is not in force.
    pub metrics: bool,
}

/// The tail of every refusal: the operator needs to know the file is not half-applied.
const RESTART: &str = "a restart is needed to apply it";

impl Plan {
    /// Compares the config in force (`old`) with a newly loaded and validated one (`new`), both
    /// read from the file, whose listener settings `overrides` names are not in force.
    /// `Config::source` is not compared (the same file may be reached by another path), nor is
    /// `routing.default_pool`, which the pool table applies (`router::reconfigure`).
    ///
    /// # Errors
    ///
    /// A reason naming the first field found that can only change with a restart, e.g.
    /// `"limits.max_connections changed: a restart is needed to apply it"` or
    /// `"auth turned on: a restart is needed to apply it"`.
    pub(crate) fn between(
        old: &Config,
        new: &Config,
        overrides: Overrides,
    ) -> Result<Plan, String> {
        restart_only(old, new, overrides)?;
        let plan = Plan {
            auth: old.auth != new.auth,
            tls: old.transport.tls != new.transport.tls
                || old.metrics.tls != new.metrics.tls
                || old
                    .websocket
                    .iter()
                    .zip(&new.websocket)
                    .any(|(a, b)| a.tls != b.tls),
            audit: old.audit != new.audit,
            bearer: old.metrics.bearer_sha256 != new.metrics.bearer_sha256,
        };
        Ok(plan)
    }

    /// The changes, one short line each, for logs and the reload answer's `changes`, e.g.
    /// `"auth credentials replaced"`.
    pub(crate) fn changes(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let sections = [
            (self.auth, "auth credentials replaced"),
            (self.bearer, "metrics.bearer_sha256 replaced"),
            (self.tls, "TLS certificate files replaced"),
            (self.audit, "audit.path replaced"),
        ];
        lines.extend(
            sections
                .into_iter()
                .filter(|(changed, _)| *changed)
                .map(|(_, line)| line.to_owned()),
        );
        lines
    }
}

/// Refuses a change to anything read only at start.
fn restart_only(old: &Config, new: &Config, overrides: Overrides) -> Result<(), String> {
    let refuse = |field: String| Err(format!("{field} changed: {RESTART}"));
    match (&old.auth, &new.auth) {
        (None, Some(_)) => return Err(format!("auth turned on: {RESTART}")),
        (Some(_), None) => return Err(format!("auth turned off: {RESTART}")),
        _ => {}
    }
    // A listener's TLS may get new files, not be turned on or off: the listener was built
    // plaintext or TLS.
    let sections = [
        (
            "transport",
            transport(old, overrides),
            transport(new, overrides),
        ),
        ("metrics", admin(old, overrides), admin(new, overrides)),
        ("limits", json(&old.limits), json(&new.limits)),
        ("routing", routing(old), routing(new)),
        ("tenants", json(&old.tenants), json(&new.tenants)),
    ];
    for (name, before, after) in &sections {
        if let Some(field) = difference(before, after, name) {
            return refuse(field);
        }
    }
    if old.websocket.len() != new.websocket.len() {
        return Err(format!(
            "websocket listeners changed from {} to {}: {RESTART}",
            old.websocket.len(),
            new.websocket.len()
        ));
    }
    for (i, (before, after)) in old.websocket.iter().zip(&new.websocket).enumerate() {
        if let Some(field) = difference(
            &listener(before),
            &listener(after),
            &format!("websocket[{i}]"),
        ) {
            return refuse(field);
        }
    }
    Ok(())
}

/// A section as JSON, the form the config is written in, so a difference is named by its key.
fn json(section: &impl Serialize) -> Value {
    serde_json::to_value(section).unwrap_or(Value::Null)
}

/// A listener's section with its `tls` object reduced to "present", since its files may change.
fn listener(section: &impl Serialize) -> Value {
    let mut value = json(section);
    if let Some(tls) = value.get_mut("tls") {
        *tls = Value::Bool(true);
    }
    value
}

/// `metrics` without what a reload applies (its bearer digest and its TLS files) and, when
/// `--metrics` overrides it, its `listen`.
fn admin(config: &Config, overrides: Overrides) -> Value {
    let mut value = listener(&config.metrics);
    if let Some(section) = value.as_object_mut() {
        section.remove("bearer_sha256");
        if overrides.metrics {
            section.remove("listen");
        }
    }
    value
}

/// `transport` as a listener (see [`listener`]), without its mode and address when a flag names
/// the endpoint instead.
fn transport(config: &Config, overrides: Overrides) -> Value {
    let mut value = listener(&config.transport);
    if let Some(section) = value.as_object_mut().filter(|_| overrides.endpoint) {
        section.remove("mode");
        section.remove("address");
    }
    value
}

/// `routing` without `default_pool`, which a reload applies.
fn routing(config: &Config) -> Value {
    let mut value = json(&config.routing);
    if let Some(section) = value.as_object_mut() {
        section.remove("default_pool");
    }
    value
}

/// The dotted path of the first place where `a` and `b` differ, below `path`; `None` if equal.
fn difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            // Keys in sorted order (serde_json's map is a BTreeMap here), so the reason is stable.
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|key| {
                let inner = format!("{path}.{key}");
                match (a.get(key), b.get(key)) {
                    (Some(a), Some(b)) => difference(a, b, &inner),
                    _ => Some(inner),
                }
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (a, b))| difference(a, b, &format!("{path}[{i}]"))),
        _ => (a != b).then(|| path.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOLS: &str = r#"[{"id": "a", "command": "cat", "instances": 2},
                            {"id": "b", "command": "cat", "instances": 1}]"#;

    /// A config with `pools` and any further top-level members (`rest`, JSON members text).
    fn config(pools: &str, rest: &str) -> Config {
        let sep = if rest.is_empty() { "" } else { "," };
        Config::from_json_str(&format!(r#"{{"pools": {pools}{sep}{rest}}}"#), "t.json")
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn plan(old: &Config, new: &Config) -> Plan {
        Plan::between(old, new, Overrides::default()).unwrap_or_else(|e| panic!("refused: {e}"))
    }

    fn refusal(old: &Config, new: &Config) -> String {
        Plan::between(old, new, Overrides::default()).expect_err("should be refused")
    }

    #[test]
    fn the_same_config_is_an_empty_plan_whatever_its_source() {
        let old = config(POOLS, "");
        let mut new = old.clone();
        new.source = Some("/elsewhere/bus.json".into());
        let plan = plan(&old, &new);
        assert_eq!(plan, Plan::default());
        assert!(plan.changes().is_empty());
    }

    #[test]
    fn sections_read_only_at_start_are_refused_naming_the_field() {
        let old = config(
            POOLS,
            r#""transport": {"mode": "tcp", "address": "127.0.0.1:4000"}"#,
        );
        let cases = [
            (
                r#""transport": {"mode": "tcp", "address": "127.0.0.1:4001"}"#,
                "transport.address changed: a restart is needed to apply it",
            ),
            (
                r#""transport": {"mode": "unix", "address": "/run/bus.sock"}"#,
                "transport.address changed: a restart is needed to apply it",
            ),
            (
                r#""transport": {"mode": "tcp", "address": "127.0.0.1:4000"},
                   "limits": {"max_connections": 5}"#,
                "limits.max_connections changed: a restart is needed to apply it",
            ),
            (
                r#""transport": {"mode": "tcp", "address": "127.0.0.1:4000"},
                   "routing": {"session_id_field": "params.sessionId"}"#,
                "routing.session_id_field changed: a restart is needed to apply it",
            ),
            (
                r#""transport": {"mode": "tcp", "address": "127.0.0.1:4000"},
                   "tenants": {"acme": {"max_sessions": 3}}"#,
                "tenants.acme changed: a restart is needed to apply it",
            ),
            (
                r#""transport": {"mode": "tcp", "address": "127.0.0.1:4000"},
                   "metrics": {"listen": "127.0.0.1:9464"}"#,
                "metrics.listen changed: a restart is needed to apply it",
            ),
        ];
        for (rest, reason) in cases {
            assert_eq!(refusal(&old, &config(POOLS, rest)), reason, "{rest}");
        }
    }

    #[test]
    fn the_default_pool_and_what_flags_override_are_no_restart() {
        let old = config(POOLS, "");
        let new = config(POOLS, r#""routing": {"default_pool": "b"}"#);
        assert_eq!(
            plan(&old, &new),
            Plan::default(),
            "the pool table applies it"
        );
        // Started with --tcp and --metrics: the file's listener settings are not in force.
        let flags = Overrides {
            endpoint: true,
            metrics: true,
        };
        let moved = config(
            POOLS,
            r#""transport": {"mode": "tcp", "address": "127.0.0.1:7000"},
               "metrics": {"listen": "127.0.0.1:9464"}"#,
        );
        assert_eq!(Plan::between(&old, &moved, flags), Ok(Plan::default()));
        assert_eq!(
            refusal(&old, &moved),
            "transport.address changed: a restart is needed to apply it",
            "without the flags they are in force"
        );
        let tls = config(
            POOLS,
            r#""transport": {"mode": "tcp", "tls": {"cert_file": "c.pem", "key_file": "k.pem"}}"#,
        );
        assert_eq!(
            Plan::between(&old, &tls, flags).unwrap_err(),
            "transport.tls changed: a restart is needed to apply it",
            "a --tcp listener still takes transport.tls from the file"
        );
    }

    #[test]
    fn a_tenant_limit_change_names_the_limit() {
        let old = config(POOLS, r#""tenants": {"acme": {"max_sessions": 3}}"#);
        let new = config(POOLS, r#""tenants": {"acme": {"max_sessions": 4}}"#);
        assert_eq!(
            refusal(&old, &new),
            "tenants.acme.max_sessions changed: a restart is needed to apply it"
        );
    }

    #[test]
    fn auth_may_change_but_not_turn_on_or_off() {
        let token = |digit: char| {
            format!(
                r#""auth": {{"tokens": [{{"tenant": "acme", "sha256": "{}"}}]}}"#,
                digit.to_string().repeat(64)
            )
        };
        let off = config(POOLS, "");
        let on = config(POOLS, &token('a'));
        assert_eq!(
            refusal(&off, &on),
            "auth turned on: a restart is needed to apply it"
        );
        assert_eq!(
            refusal(&on, &off),
            "auth turned off: a restart is needed to apply it"
        );
        let plan = plan(&on, &config(POOLS, &token('b')));
        assert!(plan.auth && !plan.tls && !plan.audit && !plan.bearer);
        assert_eq!(plan.changes(), ["auth credentials replaced"]);
    }

    #[test]
    fn tls_files_may_move_but_tls_cannot_turn_on_or_off() {
        let tls = |cert: &str| format!(r#""tls": {{"cert_file": "{cert}", "key_file": "k.pem"}}"#);
        let transport = |tls: &str| {
            format!(r#""transport": {{"mode": "tcp", "address": "127.0.0.1:4000"{tls}}}"#)
        };
        let with = config(POOLS, &transport(&format!(", {}", tls("a.pem"))));
        let moved = config(POOLS, &transport(&format!(", {}", tls("b.pem"))));
        let without = config(POOLS, &transport(""));
        let plan = plan(&with, &moved);
        assert!(plan.tls && !plan.auth);
        assert_eq!(plan.changes(), ["TLS certificate files replaced"]);
        assert_eq!(
            refusal(&with, &without),
            "transport.tls changed: a restart is needed to apply it"
        );
        assert_eq!(
            refusal(&without, &with),
            "transport.tls changed: a restart is needed to apply it"
        );

        let admin = |tls: &str| format!(r#""metrics": {{"listen": "127.0.0.1:9464"{tls}}}"#);
        let with = config(POOLS, &admin(&format!(", {}", tls("a.pem"))));
        let moved = config(POOLS, &admin(&format!(", {}", tls("b.pem"))));
        assert!(
            Plan::between(&with, &moved, Overrides::default())
                .unwrap()
                .tls
        );
        assert_eq!(
            refusal(&with, &config(POOLS, &admin(""))),
            "metrics.tls changed: a restart is needed to apply it"
        );
    }

    #[test]
    fn websocket_tls_files_may_move_but_not_the_listener() {
        let ws = |listen: &str, cert: &str| {
            format!(
                r#""websocket": [{{"listen": "127.0.0.1:5000"}},
                                 {{"listen": "{listen}", "tls": {{"cert_file": "{cert}", "key_file": "k.pem"}}}}]"#
            )
        };
        let old = config(POOLS, &ws("127.0.0.1:5001", "a.pem"));
        let plan = plan(&old, &config(POOLS, &ws("127.0.0.1:5001", "b.pem")));
        assert!(plan.tls);
        assert_eq!(
            refusal(&old, &config(POOLS, &ws("127.0.0.1:5002", "a.pem"))),
            "websocket[1].listen changed: a restart is needed to apply it"
        );
        assert_eq!(
            refusal(
                &old,
                &config(POOLS, r#""websocket": [{"listen": "127.0.0.1:5000"}]"#)
            ),
            "websocket listeners changed from 2 to 1: a restart is needed to apply it"
        );
        let origins = r#""websocket": [{"listen": "127.0.0.1:5000", "allowed_origins": ["https://x"]},
                           {"listen": "127.0.0.1:5001", "tls": {"cert_file": "a.pem", "key_file": "k.pem"}}]"#;
        assert_eq!(
            refusal(&old, &config(POOLS, origins)),
            "websocket[0].allowed_origins changed: a restart is needed to apply it"
        );
    }

    #[test]
    fn the_audit_path_and_the_admin_bearer_are_applied() {
        let old = config(POOLS, r#""audit": {"path": "/var/log/a.jsonl"}"#);
        for (rest, audit) in [
            (r#""audit": {"path": "/var/log/b.jsonl"}"#, true),
            (r#""audit": {}"#, true),
        ] {
            let plan = plan(&old, &config(POOLS, rest));
            assert_eq!(plan.audit, audit, "{rest}");
            assert_eq!(plan.changes(), ["audit.path replaced"]);
        }
        assert!(plan(&config(POOLS, ""), &old).audit, "turned on");

        let bearer = format!(
            r#""metrics": {{"listen": "127.0.0.1:9464", "bearer_sha256": "{}"}}"#,
            "c".repeat(64)
        );
        let open = config(POOLS, r#""metrics": {"listen": "127.0.0.1:9464"}"#);
        let replaced = plan(&open, &config(POOLS, &bearer));
        assert!(replaced.bearer && !replaced.tls);
        assert_eq!(replaced.changes(), ["metrics.bearer_sha256 replaced"]);
    }

    #[test]
    fn the_first_refused_field_wins_over_applied_changes() {
        let old = config(POOLS, "");
        let new = config(
            r#"[{"id": "a", "command": "cat", "instances": 9}]"#,
            r#""limits": {"max_sessions": 7}"#,
        );
        assert_eq!(
            refusal(&old, &new),
            "limits.max_sessions changed: a restart is needed to apply it"
        );
    }
}
