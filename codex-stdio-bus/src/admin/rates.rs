//! The dashboard's rates: a sampler that reads the bus's counters once a [`PERIOD`] into the
//! router's ring ([`crate::core::samples`], the last five minutes), and the `rates` frame of the
//! dashboard stream built from it (docs/metrics.md, "The dashboard").
//!
//! The counters are ones the daemon keeps anyway: requests received per tenant metric label
//! (`Tenants::requests`, one relaxed add per request) and error replies sent per reason
//! (`metrics::BusMetrics::error_replies`, beside `codex_bus_error_replies_total`). The recorder's
//! own counters cannot be read back, hence these.
//!
//! The sampler runs for the daemon's life, whether or not a page is open, so that a page opened
//! now shows the last minutes at once. Its cost, independent of load: one timer wake a second,
//! one relaxed load per column (the tenant labels, bounded by the config, plus the 19 reasons of
//! the error table), one uncontended lock, and no allocation once the ring is full (300 rows of
//! a few hundred bytes: under 100 KB). The frame is built only by the dashboard's ticker, so
//! only while a page is open.

use std::sync::Arc;
use std::time::Duration;

use codex_bus_protocol::ErrorKind;
use serde_json::{json, Map, Value};
use tokio::time::MissedTickBehavior;

use crate::metrics;
use crate::router::Router;

/// How often the counters are sampled: the series' step.
const PERIOD: Duration = Duration::from_secs(1);

/// Samples the counters every [`PERIOD`] for the daemon's life (spawned with the admin
/// endpoint). A late tick is not made up: that period's values then cover more than a second.
pub(super) async fn sample(router: Arc<Router>) {
    let mut interval = tokio::time::interval(PERIOD);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        record(&router);
    }
}

/// Records one reading into the ring. Columns: requests by tenant label (in
/// `Tenants::requests` order), then error replies by kind (in [`ErrorKind::ALL`] order).
fn record(router: &Router) {
    let labels = router.tenants().requests().count();
    router
        .samples()
        .record(labels + ErrorKind::ALL.len(), |row| {
            let requests = router.tenants().requests().map(|(_, n)| n);
            let errors = metrics::get().error_replies().map(|(_, n)| n);
            for (cell, count) in row.iter_mut().zip(requests.chain(errors)) {
                *cell = count;
            }
        });
}

/// The `rates` frame, JSON text:
/// `{"period_sec":1,"requests":[n,..],"tenants":{"<label>":[n,..],..},"errors":{"<reason>":[n,..],..},
/// "totals":{"requests":n,"errors":n,"tenants":{"<label>":n,..},"errors_by_reason":{"<reason>":n,..}}}`.
///
/// Each series holds the counts of one period each, oldest first, the newest last (at most 299:
/// the deltas of the ring's 300 samples); all series have the same length. `requests` is the sum
/// of the `tenants` series. `tenants` names every label (configured tenants, `default`,
/// `(other)`); `errors` and `errors_by_reason` name only the reasons with a reply in the window,
/// resp. since the start (the stable `data.reason` values of the protocol's error table).
/// `totals` are read at the time of the frame, the series at the last sample.
pub(super) fn frame(router: &Router) -> Box<str> {
    let columns = router.samples().deltas();
    let labels: Vec<(&str, u64)> = router.tenants().requests().collect();
    let (by_label, by_kind) = columns.split_at(labels.len().min(columns.len()));
    let mut requests = vec![0u64; columns.first().map_or(0, Vec::len)];
    for series in by_label {
        for (sum, n) in requests.iter_mut().zip(series) {
            *sum += n;
        }
    }
    let tenants: Map<String, Value> = labels
        .iter()
        .zip(by_label)
        .map(|((label, _), series)| ((*label).to_owned(), json!(series)))
        .collect();
    let errors: Map<String, Value> = ErrorKind::ALL
        .iter()
        .zip(by_kind)
        .filter(|(_, series)| series.iter().any(|n| *n > 0))
        .map(|(kind, series)| (kind.reason().to_owned(), json!(series)))
        .collect();
    let sent: Vec<(ErrorKind, u64)> = metrics::get().error_replies().collect();
    let errors_by_reason: Map<String, Value> = sent
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(kind, n)| (kind.reason().to_owned(), json!(n)))
        .collect();
    let tenant_totals: Map<String, Value> = labels
        .iter()
        .map(|(label, n)| ((*label).to_owned(), json!(n)))
        .collect();
    json!({
        "period_sec": PERIOD.as_secs(),
        "requests": requests,
        "tenants": tenants,
        "errors": errors,
        "totals": {
            "requests": labels.iter().map(|(_, n)| n).sum::<u64>(),
            "errors": sent.iter().map(|(_, n)| n).sum::<u64>(),
            "tenants": tenant_totals,
            "errors_by_reason": errors_by_reason,
        },
    })
    .to_string()
    .into()
}

#[cfg(test)]
mod tests {
    use codex_bus_config::Config;

    use super::*;
    use crate::core::samples::CAPACITY;

    fn frame_of(router: &Router) -> Value {
        serde_json::from_str(&frame(router)).unwrap()
    }

    #[test]
    fn the_frame_gives_per_period_counts_by_tenant_and_their_totals() {
        let config = Config::from_json_str(
            r#"{"pools":[{"id":"p","command":"cat","instances":1}],
                "tenants":{"acme":{}}}"#,
            "t",
        )
        .unwrap();
        // A new router (a restarted daemon) starts with an empty ring and zero requests.
        let router = Router::new(&config);
        let empty = frame_of(&router);
        assert_eq!(empty["period_sec"], 1);
        assert_eq!(empty["requests"], json!([]));
        assert_eq!(empty["tenants"], json!({}), "no sample yet");
        assert_eq!(empty["totals"]["requests"], 0);

        let acme = router.tenants().get("acme").unwrap();
        let jwt = router.tenants().get("from-a-jwt").unwrap();
        record(&router);
        for _ in 0..3 {
            acme.reserve_request().unwrap();
        }
        jwt.reserve_request().unwrap();
        record(&router);
        record(&router);
        acme.reserve_request().unwrap();
        record(&router);

        let rates = frame_of(&router);
        assert_eq!(rates["requests"], json!([4, 0, 1]));
        assert_eq!(rates["tenants"]["acme"], json!([3, 0, 1]));
        assert_eq!(rates["tenants"]["(other)"], json!([1, 0, 0]));
        assert_eq!(rates["tenants"]["default"], json!([0, 0, 0]));
        assert_eq!(rates["totals"]["requests"], 5);
        assert_eq!(rates["totals"]["tenants"]["acme"], 4);
        // Error replies are process-wide counters other tests also move: only the shape here.
        assert!(rates["errors"].is_object() && rates["totals"]["errors"].is_u64());

        // Bounded: a full ring's frame has CAPACITY - 1 periods in every series.
        for _ in 0..CAPACITY {
            record(&router);
        }
        let full = frame_of(&router);
        assert_eq!(full["requests"].as_array().unwrap().len(), CAPACITY - 1);
        assert_eq!(
            full["tenants"]["acme"].as_array().unwrap().len(),
            CAPACITY - 1
        );
        let idle = frame(&router).len();
        assert!(idle < 8 * 1024, "a full idle frame is {idle} bytes");

        // The largest frame: every column moving by five digits a period (every reason too).
        let width = router.tenants().requests().count() + ErrorKind::ALL.len();
        for i in 1..=CAPACITY as u64 {
            router.samples().record(width, |row| row.fill(i * 12_345));
        }
        let busy = frame(&router).len();
        eprintln!("rates frame, full ring: {idle} bytes idle, {busy} bytes busy");
        assert!(busy < 64 * 1024, "a full busy frame is {busy} bytes");
    }
}
