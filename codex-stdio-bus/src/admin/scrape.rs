//! The scrape: state gauges refreshed from the slots, then the recorder's text plus the standard
//! `process_*` figures.

use metrics::gauge;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::core::slot::SlotState;
use crate::metrics::process;
use crate::router::Router;

/// Every state a slot reports, so that `codex_bus_workers` always shows all of them (zeros too).
const STATES: [SlotState; 8] = [
    SlotState::Starting,
    SlotState::Ready,
    SlotState::Backoff,
    SlotState::Failed,
    SlotState::Exited,
    SlotState::Replacing,
    SlotState::Draining,
    SlotState::Stopped,
];

/// Refreshes the state gauges from the router and renders the exposition text.
pub(crate) fn render(handle: &PrometheusHandle, router: &Router) -> String {
    for pool in router.pools().iter() {
        let mut by_state = [0u32; STATES.len()];
        // Every slot, removed ones too: a stopped removed slot counts in no state, and its gauges
        // read 0 rather than the last figures it had.
        for slot in &pool.slots {
            let snapshot = slot.snapshot();
            let live = pool.is_live(slot, snapshot.state);
            if let Some(i) = STATES.iter().position(|s| live && *s == snapshot.state) {
                by_state[i] += 1;
            }
            let labels = [
                ("pool", pool.id.to_string()),
                ("slot", slot.index.to_string()),
            ];
            gauge!("codex_bus_requests_in_flight", &labels).set(snapshot.in_flight as f64);
            gauge!("codex_bus_slot_queue_bytes", &labels).set(snapshot.queued_bytes as f64);
            gauge!("codex_bus_sessions", &labels).set(snapshot.sessions as f64);
        }
        for (state, count) in STATES.iter().zip(by_state) {
            gauge!("codex_bus_workers", "pool" => pool.id.to_string(), "state" => state.as_str())
                .set(f64::from(count));
        }
    }
    let tenants = router.tenants();
    gauge!("codex_bus_tenants").set(tenants.count() as f64);
    for (label, holding) in tenants.holding() {
        let labels = [("tenant", label.to_string())];
        gauge!("codex_bus_tenant_sessions", &labels).set(holding.sessions as f64);
        gauge!("codex_bus_tenant_connections", &labels).set(holding.connections as f64);
        gauge!("codex_bus_tenant_requests_in_flight", &labels).set(holding.in_flight as f64);
    }
    let mut text = handle.render();
    append_process(&mut text, &process::read());
    text
}

/// Appends the standard `process_*` metrics. They are written here rather than recorded because
/// the `metrics` facade's counters are integers and CPU seconds are fractional.
fn append_process(text: &mut String, stats: &process::ProcessStats) {
    use std::fmt::Write;
    let rows = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the daemon in seconds.",
            stats.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the daemon in bytes.",
            stats.resident_bytes as f64,
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors of the daemon.",
            stats.open_fds as f64,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the daemon since the Unix epoch in seconds.",
            stats.start_time,
        ),
    ];
    for (name, kind, help, value) in rows {
        let _ = write!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
        );
    }
}
