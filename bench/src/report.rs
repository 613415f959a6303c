//! Results as Markdown tables (stdout) and as one JSON document (`--json FILE`).

use std::fmt::Write;

use serde::Serialize;

use crate::dashboard::Admin;
use crate::run::{RunResult, RunSpec};
use crate::scenario::Derived;
use crate::summary::{Spread, Summary};

/// One row: its runs and their summary, or why it could not run.
#[derive(Clone, Debug, Serialize)]
pub struct RowReport {
    /// Label.
    pub label: String,
    /// What ran.
    pub spec: RunSpec,
    /// Every run's figures.
    pub runs: Vec<RunResult>,
    /// The first error that stopped a run of this row.
    pub error: Option<String>,
    /// Median, min and max over the runs.
    pub summary: Option<Summary>,
}

impl RowReport {
    /// Whether the row ran and every run passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.summary.as_ref().is_some_and(|s| s.passed)
    }
}

/// One scenario's rows and derived figures.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub name: String,
    /// Its rows.
    pub rows: Vec<RowReport>,
    /// Figures computed from the rows' medians.
    pub derived: Vec<Derived>,
}

/// The machine the numbers come from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// CPUs available.
    pub cpus: usize,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// `/proc/loadavg` when the invocation started (other load on the machine skews every figure).
    pub loadavg_at_start: String,
}

impl Machine {
    /// Reads /proc.
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, v)| v.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kb: u64 = meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        Machine {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib: memory_kb / 1024,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned()),
            loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
                .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned()),
        }
    }
}

/// Everything one invocation measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Where.
    pub machine: Machine,
    /// The bus command line.
    pub bus_cmd: Vec<String>,
    /// The worker command line.
    pub worker_cmd: Vec<String>,
    /// Runs per row.
    pub runs: usize,
    /// Whether bus rows ran with authentication on (`--auth`).
    pub auth: bool,
    /// Whether bus rows ran with the admin endpoint (`--admin`) and a dashboard stream open
    /// (`--dashboard`).
    pub admin: Admin,
    /// The scenarios (a single `run` is reported as scenario "run").
    pub scenarios: Vec<ScenarioReport>,
}

impl Report {
    /// Whether every row of every scenario passed.
    pub fn passed(&self) -> bool {
        self.scenarios
            .iter()
            .all(|s| s.rows.iter().all(RowReport::passed))
    }
}

/// A scenario as a Markdown table (median [min–max] of the runs), then its derived figures.
pub fn table(scenario: &ScenarioReport) -> String {
    let mut out = String::new();
    let runs = scenario
        .rows
        .iter()
        .filter_map(|r| r.summary.as_ref().map(|s| s.runs))
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "### {} ({runs} run{}: median [min–max])\n",
        scenario.name,
        if runs == 1 { "" } else { "s" }
    );
    out.push_str(
        "| row | msg/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | daemon CPU s/100k | \
         daemon peak RSS MB | errors | lost/dup/misrouted/other | checks |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for row in &scenario.rows {
        let _ = write!(out, "| {} ", row.label);
        match (&row.summary, &row.error) {
            (Some(s), error) => {
                let t = &s.tally;
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{}/{}/{} | {} |",
                    spread(&s.throughput, rate),
                    spread(&s.p50_us, micros),
                    spread(&s.p90_us, micros),
                    spread(&s.p99_us, micros),
                    spread(&s.p999_us, micros),
                    spread(&s.max_us, micros),
                    s.daemon_cpu_s_per_100k
                        .map_or_else(|| "–".into(), |c| spread(&c, |v| format!("{v:.3}"))),
                    s.daemon_peak_rss_kb.map_or_else(
                        || "–".into(),
                        |m| spread(&m, |kb| format!("{:.1}", kb / 1024.0))
                    ),
                    t.errors,
                    t.lost,
                    t.duplicates,
                    t.misrouted,
                    t.stray + t.unidentified,
                    checks(s, error.as_deref())
                );
            }
            (None, Some(error)) => {
                let _ = writeln!(out, "| FAIL: {error} |||||||||||");
            }
            (None, None) => {
                let _ = writeln!(out, "| not run |||||||||||");
            }
        }
    }
    let streams: Vec<_> = scenario
        .rows
        .iter()
        .filter_map(|r| {
            let s = r.summary.as_ref()?;
            Some((&r.label, s.dashboard_status?, s.dashboard_status_measured?))
        })
        .collect();
    if !scenario.derived.is_empty() || !streams.is_empty() {
        out.push('\n');
        for (label, run, measured) in streams {
            let count = |v: f64| format!("{v:.0}");
            let _ = writeln!(
                out,
                "- dashboard stream, {label}: {} status events per run, {} in the measured phase",
                spread(&run, count),
                spread(&measured, count)
            );
        }
        for d in &scenario.derived {
            let value = if d.value.abs() < 10.0 {
                format!("{:.2}", d.value)
            } else {
                format!("{:.1}", d.value)
            };
            let _ = writeln!(out, "- {}: {value} {}", d.name, d.unit);
        }
    }
    out
}

/// "pass", or what failed.
fn checks(s: &Summary, error: Option<&str>) -> String {
    let mut out = String::from(if s.passed { "pass" } else { "FAIL" });
    let w = &s.warmup;
    if w.failures() > 0 || w.errors > 0 {
        let _ = write!(
            out,
            " (warm-up: {} lost, {} errors, {} dup/misrouted/other)",
            w.lost,
            w.errors,
            w.duplicates + w.misrouted + w.stray + w.unidentified
        );
    }
    if let Some(e) = error {
        let _ = write!(out, "; {e}");
    }
    out
}

fn spread(s: &Spread, f: fn(f64) -> String) -> String {
    format!("{} [{}–{}]", f(s.median), f(s.min), f(s.max))
}

fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn micros(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short() {
        assert_eq!(rate(412_345.0), "412.3k");
        assert_eq!(rate(1_234_567.0), "1.23M");
        assert_eq!(micros(3.456), "3.46");
        assert_eq!(micros(123.45), "123.5");
        assert_eq!(micros(12_345.6), "12346");
    }
}
