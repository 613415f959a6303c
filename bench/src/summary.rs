//! Folding several runs of one row into median, min and max.

use serde::Serialize;

use crate::engine::Tally;
use crate::run::RunResult;

/// Median, min and max of one figure over a row's runs.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; `None` if there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// A row's runs, summarised.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Runs summarised.
    pub runs: usize,
    /// Replies per second.
    pub throughput: Spread,
    /// Median latency, µs.
    pub p50_us: Spread,
    /// 90th percentile latency, µs.
    pub p90_us: Spread,
    /// 99th percentile latency, µs.
    pub p99_us: Spread,
    /// 99.9th percentile latency, µs.
    pub p999_us: Spread,
    /// Largest latency, µs.
    pub max_us: Spread,
    /// Daemon CPU seconds per 100k round trips.
    pub daemon_cpu_s_per_100k: Option<Spread>,
    /// Workers' CPU seconds per 100k round trips.
    pub workers_cpu_s_per_100k: Option<Spread>,
    /// Generator CPU seconds per 100k round trips.
    pub client_cpu_s_per_100k: Spread,
    /// Daemon peak RSS, kB.
    pub daemon_peak_rss_kb: Option<Spread>,
    /// Daemon RSS growth per session, bytes.
    pub rss_bytes_per_session: Option<Spread>,
    /// Daemon RSS per open connection, bytes (rows that measure it).
    pub rss_bytes_per_connection: Option<Spread>,
    /// Daemon RSS kept after the connections closed, per connection, bytes.
    pub rss_bytes_kept_per_connection: Option<Spread>,
    /// Workers killed per run.
    pub kills: Spread,
    /// `status` events the dashboard stream received per run (`--dashboard`).
    pub dashboard_status: Option<Spread>,
    /// Of them, during the measured phase.
    pub dashboard_status_measured: Option<Spread>,
    /// Reply counts over all runs.
    pub tally: Tally,
    /// Warm-up reply counts over all runs.
    pub warmup: Tally,
    /// Whether every run passed its checks.
    pub passed: bool,
}

impl Summary {
    /// Summarises a row's runs; `None` without runs.
    pub fn of(runs: &[RunResult]) -> Option<Summary> {
        let all = |f: fn(&RunResult) -> f64| Spread::of(runs.iter().map(f));
        let some = |f: fn(&RunResult) -> Option<f64>| {
            let values: Option<Vec<f64>> = runs.iter().map(f).collect();
            values.and_then(Spread::of)
        };
        let (mut tally, mut warmup) = (Tally::default(), Tally::default());
        for run in runs {
            tally.add(&run.tally);
            warmup.add(&run.warmup);
        }
        Some(Summary {
            runs: runs.len(),
            throughput: all(|r| r.throughput)?,
            p50_us: all(|r| r.latency_us.p50)?,
            p90_us: all(|r| r.latency_us.p90)?,
            p99_us: all(|r| r.latency_us.p99)?,
            p999_us: all(|r| r.latency_us.p999)?,
            max_us: all(|r| r.latency_us.max)?,
            daemon_cpu_s_per_100k: some(|r| r.daemon_cpu_s_per_100k),
            workers_cpu_s_per_100k: some(|r| r.workers_cpu_s_per_100k),
            client_cpu_s_per_100k: all(|r| r.client_cpu_s_per_100k)?,
            daemon_peak_rss_kb: some(|r| r.daemon_peak_rss_kb.map(|kb| kb as f64)),
            rss_bytes_per_session: some(|r| r.rss_bytes_per_session),
            rss_bytes_per_connection: some(|r| r.rss_bytes_per_connection),
            rss_bytes_kept_per_connection: some(|r| r.rss_bytes_kept_per_connection),
            kills: all(|r| r.kills as f64)?,
            dashboard_status: some(|r| r.dashboard.map(|d| d.run.status as f64)),
            dashboard_status_measured: some(|r| r.dashboard.map(|d| d.measured_status as f64)),
            tally,
            warmup,
            passed: runs.iter().all(|r| r.passed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Spread::of([5.0, 1.0, 3.0, 9.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 9.0));
        assert_eq!(Spread::of([4.0, 2.0]).unwrap().median, 3.0);
        assert!(Spread::of([]).is_none());
    }
}
