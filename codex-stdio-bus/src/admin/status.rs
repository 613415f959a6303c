//! The daemon's status: a JSON snapshot of pools and slots (`GET /status`), and the table that
//! `codex-stdio-bus status` prints from it.

use std::fmt::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::router::Router;

/// The status document.
pub(crate) fn snapshot(router: &Router) -> Value {
    let mut totals = (0usize, 0usize, 0usize, 0usize);
    let pools: Vec<Value> = router
        .pools()
        .iter()
        // A removed pool is shown while its slots drain.
        .filter(|pool| pool.live_slots().next().is_some())
        .map(|pool| {
            let slots: Vec<Value> = pool
                .live_slots()
                .map(|slot| {
                    let s = slot.snapshot();
                    totals.0 += 1;
                    totals.1 += usize::from(s.state.serves());
                    totals.2 += s.in_flight;
                    totals.3 += s.sessions;
                    json!({
                        "slot": slot.index,
                        "pid": s.pid,
                        "state": s.state.as_str(),
                        "uptime_sec": s.uptime.map(|u| u.as_secs_f64()),
                        "restarts": s.restarts,
                        "in_flight": s.in_flight,
                        "queued_bytes": s.queued_bytes,
                        "sessions": s.sessions,
                        "last_exit": s.last_exit.map(|e| json!({
                            "status": &*e.status,
                            "ago_sec": e.at.elapsed().as_secs_f64(),
                        })),
                    })
                })
                .collect();
            json!({"pool": &*pool.id, "slots": slots})
        })
        .collect();
    // By metric label, so bounded as the metrics are (configured tenants, `default`, `(other)`).
    let tenants: Vec<Value> = router
        .tenants()
        .holding()
        .iter()
        .map(|(label, holding)| {
            json!({
                "tenant": &**label,
                "sessions": holding.sessions,
                "connections": holding.connections,
                "in_flight": holding.in_flight,
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": router.config_source().map(|path| path.to_string_lossy()),
        "uptime_sec": router.uptime().as_secs_f64(),
        "draining": router.draining(),
        "ready": router.readiness().is_ok(),
        "clients": router.client_count(),
        "pools": pools,
        "tenants": tenants,
        "totals": {
            "workers": totals.0,
            "ready": totals.1,
            "in_flight": totals.2,
            "sessions": totals.3,
        },
    })
}

/// Logs the status document at INFO: one line per slot, then the totals (what SIGUSR1 asks for).
pub(crate) fn log(router: &Router) {
    let status = snapshot(router);
    for pool in status["pools"].as_array().into_iter().flatten() {
        let name = pool["pool"].as_str().unwrap_or("?");
        for slot in pool["slots"].as_array().into_iter().flatten() {
            tracing::info!(
                pool = name,
                slot = %slot["slot"],
                state = slot["state"].as_str().unwrap_or("?"),
                pid = %slot["pid"],
                in_flight = %slot["in_flight"],
                queued_bytes = %slot["queued_bytes"],
                sessions = %slot["sessions"],
                restarts = %slot["restarts"],
                "status: slot"
            );
        }
    }
    let totals = &status["totals"];
    tracing::info!(
        workers = %totals["workers"],
        ready = %totals["ready"],
        in_flight = %totals["in_flight"],
        sessions = %totals["sessions"],
        clients = %status["clients"],
        draining = %status["draining"],
        uptime_sec = %status["uptime_sec"],
        "status: totals"
    );
}

/// Renders a status document as a table, one line per slot, then the totals.
pub fn table(status: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>4} {:>8} {:<9} {:>10} {:>8} {:>9} {:>8}",
        "POOL", "SLOT", "PID", "STATE", "UPTIME", "RESTARTS", "IN-FLIGHT", "SESSIONS"
    );
    for pool in status["pools"].as_array().into_iter().flatten() {
        let name = pool["pool"].as_str().unwrap_or("?");
        for slot in pool["slots"].as_array().into_iter().flatten() {
            let pid = slot["pid"]
                .as_u64()
                .map_or("-".to_owned(), |p| p.to_string());
            let uptime = slot["uptime_sec"]
                .as_f64()
                .map_or("-".to_owned(), |s| human(Duration::from_secs_f64(s)));
            // Value's Display ignores widths: format the numbers as strings first.
            let _ = writeln!(
                out,
                "{:<16} {:>4} {:>8} {:<9} {:>10} {:>8} {:>9} {:>8}",
                name,
                slot["slot"].to_string(),
                pid,
                slot["state"].as_str().unwrap_or("?"),
                uptime,
                slot["restarts"].to_string(),
                slot["in_flight"].to_string(),
                slot["sessions"].to_string(),
            );
        }
    }
    let totals = &status["totals"];
    let _ = writeln!(
        out,
        "{} workers ({} ready), {} requests in flight, {} sessions, {} clients; up {}{}",
        totals["workers"],
        totals["ready"],
        totals["in_flight"],
        totals["sessions"],
        status["clients"],
        human(Duration::from_secs_f64(
            status["uptime_sec"].as_f64().unwrap_or(0.0)
        )),
        if status["draining"] == json!(true) {
            "; draining"
        } else {
            ""
        },
    );
    out
}

/// A duration as `1h02m`, `3m04s` or `5.2s`.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_every_slot_and_the_totals() {
        let status = json!({
            "uptime_sec": 75.0, "draining": false, "clients": 2,
            "pools": [{"pool": "codex", "slots": [
                {"slot": 0, "pid": 42, "state": "ready", "uptime_sec": 3700.0, "restarts": 1, "in_flight": 3, "sessions": 7},
                {"slot": 1, "pid": null, "state": "backoff", "uptime_sec": null, "restarts": 4, "in_flight": 0, "sessions": 5}
            ]}],
            "totals": {"workers": 2, "ready": 1, "in_flight": 3, "sessions": 12}
        });
        let table = table(&status);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[1].contains("codex") && lines[1].contains("42") && lines[1].contains("1h01m"),
            "{table}"
        );
        assert!(
            lines[2].contains("backoff") && lines[2].contains(" - "),
            "{table}"
        );
        assert!(
            lines[3].starts_with(
                "2 workers (1 ready), 3 requests in flight, 12 sessions, 2 clients; up 1m15s"
            ),
            "{table}"
        );
    }
}
