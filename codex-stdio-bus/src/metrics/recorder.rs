//! The Prometheus recorder: installed once at startup, kept bounded, rendered on scrape.

use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use super::{REQUEST_BUCKETS, STARTUP_BUCKETS};

/// How often histogram samples are folded into buckets (the exporter does not do it by itself).
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the global recorder with histogram buckets, describes every metric, and returns the
/// handle that renders them. Must run before any metric handle is resolved.
pub(crate) fn install() -> Result<PrometheusHandle, BuildError> {
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
        })?
        .install_recorder()?;
    super::describe();
    Ok(handle)
}

/// Keeps histogram memory bounded by folding samples into buckets periodically.
pub(crate) async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}
