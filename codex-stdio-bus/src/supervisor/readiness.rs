//! When a new worker counts as ready: once it has stayed up for a grace period, or once it has
//! answered the pool's probe request.
//!
//! Requests are not held back meanwhile: they queue behind the probe in the worker's stdin, so
//! readiness only decides what `/readyz`, `status` and the startup histogram report, and whether a
//! worker that never answers its probe is replaced.

use std::time::Duration;

use codex_bus_config::{ReadyProbe, Supervision};

use crate::core::slot::Slot;

/// The probe request line (with its newline) sent to every new worker before anything else; its
/// id is [`PROBE_ID`](crate::core::slot::PROBE_ID).
pub(crate) fn probe_line(probe: &ReadyProbe) -> Vec<u8> {
    let mut request = serde_json::json!({
        "jsonrpc": "2.0",
        "id": "codex-stdio-bus:ready",
        "method": probe.method,
    });
    if let Some(params) = &probe.params {
        request["params"] = params.clone();
    }
    let mut line = request.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// The worker never answered its probe in time.
#[derive(Debug)]
pub(crate) struct NotReady;

/// Resolves once the worker running as `generation` in `slot` counts as ready.
pub(crate) async fn wait_ready(
    slot: &Slot,
    generation: u64,
    supervision: &Supervision,
) -> Result<(), NotReady> {
    match &supervision.ready_probe {
        None => {
            tokio::time::sleep(Duration::from_millis(supervision.ready_grace_ms)).await;
            Ok(())
        }
        Some(_) => {
            let limit = Duration::from_secs(supervision.ready_timeout_sec);
            tokio::time::timeout(limit, slot.wait_probe(generation))
                .await
                .map_err(|_| NotReady)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::slot::PROBE_ID;

    #[test]
    fn the_probe_line_carries_the_reserved_id_and_the_params() {
        let probe = ReadyProbe {
            method: "mock/echo".to_owned(),
            params: Some(serde_json::json!({"x": [1, "y"]})),
        };
        let line = probe_line(&probe);
        assert_eq!(line.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["id"].to_string().as_bytes(), PROBE_ID);
        assert_eq!(value["method"], "mock/echo");
        assert_eq!(value["params"]["x"][1], "y");
        let bare = probe_line(&ReadyProbe {
            method: "ping".to_owned(),
            params: None,
        });
        assert!(!String::from_utf8(bare).unwrap().contains("params"));
    }
}
