//! Configuration of codex-stdio-bus: the stdio Bus (v2.0.3) config schema, its defaults, our extensions,
//! and validation that reports every problem with its field path.
//!
//! Every config file written for stdio Bus that is valid JSON with known keys loads unchanged. Where stdio Bus
//! is lenient, we are deliberately strict, because each leniency hides a mistake:
//!
//! - **Syntax**: trailing commas and text after the top-level object (both accepted by stdio Bus) are
//!   rejected as `invalid JSON at line L column C: …`.
//! - **Duplicate keys** (stdio Bus keeps the last) are rejected, naming the object and the key.
//! - **Unknown keys** (ignored by stdio Bus at every level) are rejected with a "did you mean" hint, so a
//!   misspelt limit cannot silently fall back to its default. The stdio Bus `transport.options` keys are the
//!   exception: accepted and ignored, since they only configure modes we reject.
//! - **Duplicate pool ids** (stdio Bus starts both pools) are rejected: pool routing could not tell them apart.
//! - **Unsupported transports** (`mqueue`, `shm`, `length`/`raw`/`capnp` framing, `binary` protocol) are
//!   rejected by name instead of being half-supported.
//! - `null` never means "absent": like stdio Bus, a `null` section or value is an error.
//!
//! Validation does not stop at the first problem: [`ConfigError::problems`] lists them all. Only a JSON syntax
//! error or a duplicate key stops the parse, since no tree exists to validate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod model;
mod parse;
mod path;
mod schema;
mod suggest;
mod tenant;
mod tree;
mod validate;

use std::path::Path;

pub use error::ConfigError;
pub use model::{
    Account, AuditConfig, AuthConfig, CgroupLimits, Config, GroupId, IdReferenceConfig, JwtConfig,
    Limits, MetricsConfig, PoolConfig, Privileges, ReadyProbe, RestartPolicy, Rlimits,
    RoutingConfig, Supervision, TenantLimits, TlsConfig, TokenEntry, TokenSecret, TransportConfig,
    TransportMode, WebSocketConfig,
};
pub use tenant::{validate_tenant_name, MAX_TENANT_BYTES};

impl Config {
    /// Parses and validates a config document. `source_name` (a path or `"<built-in>"`) prefixes messages.
    pub fn from_json_str(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        parse::parse_strict(text)
            .map_err(|problem| vec![problem])
            .and_then(|document| validate::config(&document))
            .map_err(|problems| ConfigError {
                source_name: source_name.to_owned(),
                problems,
            })
    }

    /// Reads and validates a file (I/O errors become a ConfigError naming the path); the
    /// config's [`Config::source`] is `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source_name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_json_str(&text, &source_name).map(|config| Config {
                source: Some(path.to_owned()),
                ..config
            }),
            Err(e) => Err(ConfigError {
                source_name,
                problems: vec![format!("cannot read file: {e}")],
            }),
        }
    }

    /// The built-in default: one pool running `command` with `args`, `instances` instances, default limits.
    pub fn single_pool(id: &str, command: &str, args: &[&str], instances: u32) -> Config {
        Config {
            pools: vec![PoolConfig {
                id: id.to_owned(),
                command: command.to_owned(),
                args: args.iter().map(|&a| a.to_owned()).collect(),
                instances,
                env: Default::default(),
                cwd: None,
                supervision: Supervision::default(),
                privileges: Default::default(),
            }],
            limits: Limits::default(),
            transport: TransportConfig::default(),
            routing: RoutingConfig::default(),
            metrics: MetricsConfig::default(),
            tenants: Default::default(),
            audit: AuditConfig::default(),
            auth: None,
            websocket: Vec::new(),
            source: None,
        }
    }

    /// Parses and validates the text of an `auth.tokens_file`: a JSON array of entries shaped like
    /// `auth.tokens[]` (`source_name`, the file's path, prefixes messages).
    pub fn tokens_from_json_str(
        text: &str,
        source_name: &str,
    ) -> Result<Vec<TokenEntry>, ConfigError> {
        parse::parse_strict(text)
            .map_err(|problem| vec![problem])
            .and_then(|document| validate::token_file(&document))
            .map_err(|problems| ConfigError {
                source_name: source_name.to_owned(),
                problems,
            })
    }

    /// The effective config as pretty JSON (every default filled in), for `codex-stdio-bus check`.
    pub fn to_pretty_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .expect("a Config holds only strings, integers and string maps, which always serialize")
    }
}
