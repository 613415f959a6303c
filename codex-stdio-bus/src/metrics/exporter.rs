//! The Prometheus recorder, and the scrape: state gauges refreshed from the router, then rendered.

use std::time::Duration;

use metrics::gauge;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::{process, REQUEST_BUCKETS, STARTUP_BUCKETS};
use crate::router::Router;
use crate::slot::SlotState;

/// How often histogram samples are folded into buckets (the exporter does not do it by itself).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Every state a slot reports, so that `codex_bus_workers` always shows all of them (zeros too).
const STATES: [SlotState; 7] = [
    SlotState::Starting,
    SlotState::Ready,
    SlotState::Backoff,
    SlotState::Failed,
    SlotState::Exited,
    SlotState::Draining,
    SlotState::Stopped,
];

/// Installs the global recorder with histogram buckets, describes every metric, and returns the
/// handle that renders them. Must run before any metric handle is resolved.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("codex_bus_request_duration_seconds".into()),
            REQUEST_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("codex_bus_worker_startup_duration_seconds".into()),
                STARTUP_BUCKETS,
            )
        })
        .map_err(|e| format!("metrics: {e}"))?
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))?;
    super::describe();
    Ok(handle)
}

/// Keeps histogram memory bounded by folding samples into buckets periodically.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// Refreshes the state gauges from the router and renders the exposition text.
pub fn render(handle: &PrometheusHandle, router: &Router) -> String {
    for pool in router.pools() {
        let mut by_state = [0u32; STATES.len()];
        for slot in &pool.slots {
            let snapshot = slot.snapshot();
            if let Some(i) = STATES.iter().position(|s| *s == snapshot.state) {
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
