//! The named scenarios of issue 6 (see docs/benchmarks.md): which rows each one runs, and the
//! figures derived from its rows (bus vs direct, added latency, bytes per session and per idle
//! connection).

use clap::ValueEnum;
use serde::Serialize;

use crate::load::{Load, Sessions};
use crate::run::RunSpec;
use crate::summary::Summary;
use crate::target::{Client, Kind, Transport};

/// The rows that compare the bus's fronts in `single` and `latency`, all driven by the blocking
/// client: NDJSON over TCP, then TLS, WebSocket and WebSocket over TLS; (label, transport, tls).
const FRONTS: [(&str, Transport, bool); 4] = [
    ("bus tcp blocking", Transport::Tcp, false),
    ("bus tcp+tls", Transport::Tcp, true),
    ("bus ws", Transport::Ws, false),
    ("bus wss", Transport::Ws, true),
];

/// What each front adds per round trip: (name, front, the row it is measured against).
const FRONT_COSTS: [(&str, &str, &str); 3] = [
    ("ws - tcp", "bus ws", "bus tcp blocking"),
    ("wss - ws", "bus wss", "bus ws"),
    ("tls - tcp", "bus tcp+tls", "bus tcp blocking"),
];

/// A scenario name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Name {
    /// 1 TCP connection, 1 worker, 100k requests of ~60 bytes, window 1000.
    Single,
    /// 4 connections, 4 workers, 100k requests, window 1000 each, one session per connection.
    Fanout,
    /// 1 KiB and 64 KiB requests, window 100.
    Large,
    /// Window 1 (sequential), 20k requests: bus latency minus direct latency.
    Latency,
    /// 100k distinct sessions, one request each: daemon RSS growth per session.
    Sessions,
    /// 1,000 concurrent connections, 10 requests each.
    Connections,
    /// `single` while a worker is killed every 100 ms.
    Churn,
    /// 10,000 connections, one request each, then idle: daemon RSS per idle connection, and what
    /// it keeps once they have closed.
    IdleConnections,
    /// 1M distinct sessions, one request each, over 4 connections: daemon RSS per session in a
    /// table at its default cap (`limits.max_sessions`).
    SessionTable,
    /// Every scenario above, in order.
    All,
}

impl Name {
    /// The scenarios `self` stands for.
    pub fn expand(self) -> Vec<Name> {
        match self {
            Name::All => vec![
                Name::Single,
                Name::Fanout,
                Name::Large,
                Name::Latency,
                Name::Sessions,
                Name::Connections,
                Name::Churn,
                Name::IdleConnections,
                Name::SessionTable,
            ],
            one => vec![one],
        }
    }

    /// The scenario's command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            Name::Single => "single",
            Name::Fanout => "fanout",
            Name::Large => "large",
            Name::Latency => "latency",
            Name::Sessions => "sessions",
            Name::Connections => "connections",
            Name::Churn => "churn",
            Name::IdleConnections => "idle-connections",
            Name::SessionTable => "session-table",
            Name::All => "all",
        }
    }
}

/// One line of a scenario's table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Label in tables, e.g. "bus tcp".
    pub label: String,
    /// What it runs.
    pub spec: RunSpec,
}

/// Which rows to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// The bus rows and the `relay`, `direct` and `self` baselines.
    All,
    /// Only the rows that drive the bus (e.g. when comparing another bus binary).
    BusOnly,
}

/// The rows of scenario `name`, with request (and, for `connections`, connection) counts
/// multiplied by `scale` (tests use tiny scales).
pub fn rows(name: Name, scale: f64, which: Rows) -> Vec<Row> {
    let n = |count: usize| ((count as f64 * scale).round() as usize).max(10);
    let load = |connections, window, requests, sessions, payload| Load {
        connections,
        window,
        requests,
        sessions,
        payload,
        method: "ping".into(),
    };
    let row = |label: &str, kind, transport, load: Load, workers| Row {
        label: label.into(),
        spec: RunSpec {
            kind,
            transport,
            tls: false,
            client: Client::Epoll,
            load,
            workers,
            churn_ms: None,
            allow_errors: false,
            rss_per_connection: false,
        },
    };
    let fronts = |load: &Load| {
        FRONTS.map(|(label, transport, tls)| {
            let mut front = row(label, Kind::Bus, transport, load.clone(), 1);
            front.spec.tls = tls;
            front.spec.client = Client::Blocking;
            front
        })
    };
    use Kind::{Bus, Direct, Relay, SelfResponder};
    use Transport::{Stdio, Tcp, Unix};
    let mut rows = match name {
        Name::Single => {
            let l = load(1, 1000, n(100_000), Sessions::None, 0);
            let mut rows = vec![
                row("bus tcp", Bus, Tcp, l.clone(), 1),
                row("bus unix", Bus, Unix, l.clone(), 1),
                row("bus stdio", Bus, Stdio, l.clone(), 1),
            ];
            rows.extend(fronts(&l));
            rows.extend([
                row("relay tcp", Relay, Tcp, l.clone(), 1),
                row("direct", Direct, Stdio, l.clone(), 1),
                row("self tcp", SelfResponder, Tcp, l, 1),
            ]);
            rows
        }
        Name::Fanout => {
            let l = load(4, 1000, n(100_000), Sessions::PerConnection, 0);
            vec![
                row("bus tcp", Bus, Tcp, l.clone(), 4),
                row("relay tcp", Relay, Tcp, l.clone(), 4),
                row("direct", Direct, Stdio, l.clone(), 4),
                row("self tcp", SelfResponder, Tcp, l, 4),
            ]
        }
        Name::Large => {
            let kib = load(1, 100, n(50_000), Sessions::None, 1024);
            let big = load(1, 100, n(2_000), Sessions::None, 65_536);
            vec![
                row("bus tcp 1 KiB", Bus, Tcp, kib.clone(), 1),
                row("direct 1 KiB", Direct, Stdio, kib, 1),
                row("bus tcp 64 KiB", Bus, Tcp, big.clone(), 1),
                row("direct 64 KiB", Direct, Stdio, big, 1),
            ]
        }
        Name::Latency => {
            let l = load(1, 1, n(20_000), Sessions::None, 0);
            let mut rows = vec![
                row("bus tcp", Bus, Tcp, l.clone(), 1),
                row("bus unix", Bus, Unix, l.clone(), 1),
            ];
            rows.extend(fronts(&l));
            rows.extend([
                row("relay tcp", Relay, Tcp, l.clone(), 1),
                row("direct", Direct, Stdio, l.clone(), 1),
                row("self tcp", SelfResponder, Tcp, l, 1),
            ]);
            rows
        }
        Name::Sessions => {
            let l = load(1, 1000, n(100_000), Sessions::Unique, 0);
            vec![row("bus tcp", Bus, Tcp, l, 1)]
        }
        Name::Connections => {
            let conns = ((1000.0 * scale).round() as usize).max(4);
            let l = load(conns, 10, conns * 10, Sessions::None, 0);
            vec![
                row("bus tcp", Bus, Tcp, l.clone(), 1),
                row("bus unix", Bus, Unix, l, 1),
            ]
        }
        Name::IdleConnections => {
            // One request each (and one of the warm-up): every connection has read a line,
            // routed it and written a reply, then holds what an idle connection holds.
            let conns = ((10_000.0 * scale).round() as usize).max(4);
            let l = load(conns, 1, conns, Sessions::None, 0);
            let mut idle = vec![
                row("bus tcp", Bus, Tcp, l.clone(), 1),
                row("bus unix", Bus, Unix, l, 1),
            ];
            for r in &mut idle {
                r.spec.rss_per_connection = true;
            }
            idle
        }
        Name::SessionTable => {
            let l = load(4, 1000, n(1_000_000), Sessions::Unique, 0);
            vec![row("bus tcp", Bus, Tcp, l, 1)]
        }
        Name::Churn => {
            let mut r = row(
                "bus tcp",
                Bus,
                Tcp,
                load(1, 1000, n(100_000), Sessions::None, 0),
                1,
            );
            r.spec.churn_ms = Some(100);
            r.spec.allow_errors = true;
            vec![r]
        }
        Name::All => Vec::new(),
    };
    if which == Rows::BusOnly {
        rows.retain(|r| r.spec.kind == Kind::Bus);
    }
    rows
}

/// A figure computed from a scenario's rows (medians), e.g. added latency.
#[derive(Clone, Debug, Serialize)]
pub struct Derived {
    /// What it is.
    pub name: String,
    /// Its value.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
}

/// The derived figures of scenario `name` from its summarised rows (label, summary).
pub fn derived(name: Name, rows: &[(String, Option<Summary>)]) -> Vec<Derived> {
    let get = |label: &str| {
        rows.iter()
            .find(|(l, _)| l == label)
            .and_then(|(_, s)| s.as_ref())
    };
    let mut out = Vec::new();
    let mut push = |name: String, value: f64, unit| out.push(Derived { name, value, unit });
    let ratio = |bus: &str, direct: &str| {
        Some(get(bus)?.throughput.median / get(direct)?.throughput.median * 100.0)
    };
    let cpu_us = |label: &str| Some(get(label)?.daemon_cpu_s_per_100k?.median * 10.0);
    // The relay's figures are the floor: the bus's own cost is how far above them it lands.
    let cpu_vs_relay = |push: &mut dyn FnMut(String, f64, &'static str)| {
        for label in ["bus tcp", "relay tcp"] {
            if let Some(cpu) = cpu_us(label) {
                push(format!("daemon CPU per round trip ({label})"), cpu, "µs");
            }
        }
        if let (Some(bus), Some(relay)) = (cpu_us("bus tcp"), cpu_us("relay tcp")) {
            push(
                "daemon CPU per round trip, bus tcp / relay tcp".into(),
                bus / relay,
                "×",
            );
        }
    };
    // The daemon CPU each front adds per round trip.
    let front_cpu = |push: &mut dyn FnMut(String, f64, &'static str)| {
        for (what, front, base) in FRONT_COSTS {
            if let (Some(front), Some(base)) = (cpu_us(front), cpu_us(base)) {
                push(
                    format!("daemon CPU per round trip, {what}"),
                    front - base,
                    "µs",
                );
            }
        }
    };
    match name {
        Name::Single | Name::Fanout => {
            for label in ["bus tcp", "relay tcp"] {
                if let Some(r) = ratio(label, "direct") {
                    push(format!("{label} throughput / direct"), r, "%");
                }
            }
            cpu_vs_relay(&mut push);
            front_cpu(&mut push);
        }
        Name::Large => {
            for size in ["1 KiB", "64 KiB"] {
                if let Some(r) = ratio(&format!("bus tcp {size}"), &format!("direct {size}")) {
                    push(format!("bus tcp / direct throughput, {size}"), r, "%");
                }
            }
        }
        Name::Latency => {
            let added = |label: &str, p99: bool| {
                let at = |s: &Summary| {
                    if p99 {
                        s.p99_us.median
                    } else {
                        s.p50_us.median
                    }
                };
                Some(at(get(label)?) - at(get("direct")?))
            };
            for (name, p99) in [("p50", false), ("p99", true)] {
                for label in ["bus tcp", "relay tcp"] {
                    if let Some(v) = added(label, p99) {
                        push(format!("added {name} ({label} - direct)"), v, "µs");
                    }
                }
                if let (Some(bus), Some(relay)) = (added("bus tcp", p99), added("relay tcp", p99)) {
                    push(
                        format!("added {name}, bus tcp / relay tcp"),
                        bus / relay,
                        "×",
                    );
                }
            }
            cpu_vs_relay(&mut push);
            front_cpu(&mut push);
            for (what, front, base) in FRONT_COSTS {
                for (name, p99) in [("p50", false), ("p99", true)] {
                    let at = |label: &str| {
                        let s = get(label)?;
                        Some(if p99 {
                            s.p99_us.median
                        } else {
                            s.p50_us.median
                        })
                    };
                    if let (Some(front), Some(base)) = (at(front), at(base)) {
                        push(format!("round trip {name}, {what}"), front - base, "µs");
                    }
                }
            }
        }
        Name::Sessions | Name::SessionTable => {
            if let Some(b) = get("bus tcp").and_then(|s| s.rss_bytes_per_session) {
                push("daemon RSS growth per session".into(), b.median, "bytes");
            }
        }
        Name::IdleConnections => {
            for label in ["bus tcp", "bus unix"] {
                let Some(s) = get(label) else { continue };
                if let Some(b) = s.rss_bytes_per_connection {
                    push(
                        format!("daemon RSS per idle connection ({label})"),
                        b.median,
                        "bytes",
                    );
                }
                if let Some(b) = s.rss_bytes_kept_per_connection {
                    push(
                        format!("daemon RSS kept after they closed, per connection ({label})"),
                        b.median,
                        "bytes",
                    );
                }
            }
        }
        Name::Churn => {
            if let Some(s) = get("bus tcp") {
                push("workers killed per run".into(), s.kills.median, "");
                push("error replies (all runs)".into(), s.tally.errors as f64, "");
                push("lost (all runs)".into(), s.tally.lost as f64, "");
            }
        }
        Name::Connections | Name::All => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_has_bus_rows_and_scales_down() {
        for name in Name::All.expand() {
            let full = rows(name, 1.0, Rows::All);
            let tiny = rows(name, 0.001, Rows::All);
            let bus_only = rows(name, 1.0, Rows::BusOnly);
            assert!(!bus_only.is_empty(), "{name:?}");
            assert!(bus_only.iter().all(|r| r.spec.kind == Kind::Bus));
            assert_eq!(tiny.len(), full.len());
            for (t, f) in tiny.iter().zip(&full) {
                assert!(t.spec.load.requests <= f.spec.load.requests);
                assert!(t.spec.load.requests >= t.spec.load.connections);
            }
        }
        let single = rows(Name::Single, 1.0, Rows::All);
        assert_eq!(single[0].spec.load.requests, 100_000);
        assert_eq!(single[0].spec.load.window, 1000);
        assert_eq!(
            rows(Name::Connections, 1.0, Rows::All)[0]
                .spec
                .load
                .connections,
            1000
        );
        let idle = &rows(Name::IdleConnections, 1.0, Rows::All)[0].spec;
        assert_eq!(
            (idle.load.connections, idle.load.requests),
            (10_000, 10_000)
        );
        assert!(idle.rss_per_connection);
        let table = &rows(Name::SessionTable, 1.0, Rows::All)[0].spec.load;
        assert_eq!(table.requests, 1_000_000);
        assert_eq!(table.sessions, Sessions::Unique);
    }
}
