//! The config file bus-bench hands to the bus under test: stdio Bus's format, which
//! codex-stdio-bus reads unchanged. The `relay` target reads it back to start the same workers.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A stdio Bus config with the one pool bus-bench uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BusConfig {
    /// The worker pools; bus-bench writes exactly one.
    pub pools: Vec<PoolConfig>,
    /// Extra `limits` members (e.g. `max_restarts` for `churn`); left out when empty.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub limits: serde_json::Map<String, serde_json::Value>,
    /// codex-stdio-bus's `auth` section (`--auth`); left out when `None`, so other buses never
    /// see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<serde_json::Value>,
    /// codex-stdio-bus's `transport` section (`transport.tls` with `--tls` on TCP); left out
    /// when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<serde_json::Value>,
    /// codex-stdio-bus's `websocket` listeners (`--transport ws`); left out when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<serde_json::Value>,
    /// codex-stdio-bus's `metrics` section (`metrics.listen` with `--admin` or `--dashboard`);
    /// left out when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<serde_json::Value>,
}

/// One pool: `instances` copies of `command args`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// Pool name (the bus passes it to workers as `CODEX_BUS_POOL`).
    pub id: String,
    /// The worker program.
    pub command: PathBuf,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// How many workers to run.
    pub instances: usize,
}

impl BusConfig {
    /// Writes the config as JSON to `path`.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string(self).expect("the config serialises");
        std::fs::write(path, text).map_err(|e| format!("write config {}: {e}", path.display()))
    }

    /// Reads a config written by [`BusConfig::write`]; an error names the file and the problem.
    pub fn read(path: &Path) -> Result<BusConfig, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_stdio_bus_shape() {
        let mut limits = serde_json::Map::new();
        limits.insert("max_restarts".into(), 7.into());
        let config = BusConfig {
            pools: vec![PoolConfig {
                id: "bench".into(),
                command: "/bin/worker".into(),
                args: vec!["--backend".into(), "mock".into()],
                instances: 4,
            }],
            limits,
            auth: Some(serde_json::json!({"tokens": []})),
            transport: None,
            websocket: Some(serde_json::json!([{"listen": "127.0.0.1:1"}])),
            metrics: Some(serde_json::json!({"listen": "127.0.0.1:2"})),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.json");
        config.write(&path).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["pools"][0]["instances"], 4);
        assert_eq!(json["pools"][0]["args"][1], "mock");
        assert_eq!(json["limits"]["max_restarts"], 7);
        assert_eq!(json["auth"]["tokens"], serde_json::json!([]));
        assert_eq!(json["websocket"][0]["listen"], "127.0.0.1:1");
        assert_eq!(json["metrics"]["listen"], "127.0.0.1:2");
        assert_eq!(BusConfig::read(&path).unwrap(), config);

        let plain = BusConfig {
            limits: serde_json::Map::new(),
            auth: None,
            websocket: None,
            metrics: None,
            ..config
        };
        plain.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for absent in ["limits", "auth", "transport", "websocket", "metrics"] {
            assert!(!text.contains(absent), "{text}");
        }
    }
}
