//! The dashboard in a real browser (headless Chromium, the chromium tier): refused without the
//! admin token, every slot listed ready with it, a killed worker's row red within about a second
//! and ready again with a new pid, its exit and restart in the event list, a client's session and
//! held requests counted on its slot and tenant, requests and an error reply counted in the
//! running totals, the tenant's rate and the errors chart's legend; no error in the browser's
//! console; `draining` on SIGTERM and `disconnected` once the daemon has exited. A page whose
//! stream was refused (503, 16 open) goes live once a seat is free. Screenshots of the page are
//! left in
//! `<target>/tmp/dashboard_browser/` (`restarting.png`, `dashboard.png`; the path is printed),
//! with the browser's logs.

use std::time::Duration;

use codex_bus_tests::browser::Browser;
use codex_bus_tests::{say, sha256_hex, Bus, BusConfig, Mode, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// The admin bearer token; the browser sends it as the Basic password.
const TOKEN: &str = "dashboard-browser-token";

/// How long a held request (`mock/delay`) stays in flight: long enough to be seen on the page.
const HELD_MS: u64 = 3000;

/// What the page shows, read by the names of the dashboard contract (docs/metrics.md, the page's
/// `data-` attributes): the HTTP status of its load, `#link`, `#totals`, one entry per slot row
/// (`tr[data-pool][data-slot]`, its class and `td[data-field]` cells) and per tenant row.
const READ_PAGE: &str = r#"
const text = (el) => el === null ? null : el.textContent;
const cells = (row) => Object.fromEntries(
  [...row.querySelectorAll("td[data-field]")].map((td) => [td.dataset.field, td.textContent]));
const load = performance.getEntriesByType("navigation")[0];
return {
  status: load ? load.responseStatus : null,
  link: text(document.getElementById("link")),
  totals: text(document.getElementById("totals")),
  drain: text(document.getElementById("drain")),
  requests: text(document.getElementById("requests-total")),
  errors: text(document.getElementById("errors-total")),
  legend: text(document.getElementById("errors-legend")),
  events: [...document.querySelectorAll("ol[id=event-list] li[data-seq]")].map((li) => ({
    kind: li.dataset.kind,
    text: li.textContent,
  })),
  slots: [...document.querySelectorAll("tr[data-pool][data-slot]")].map((row) => ({
    pool: row.dataset.pool,
    index: row.dataset.slot,
    down: row.classList.contains("down"),
    ready: row.classList.contains("ready"),
    cells: cells(row),
  })),
  tenants: [...document.querySelectorAll("tr[data-tenant]")].map((row) => ({
    tenant: row.dataset.tenant,
    cells: cells(row),
  })),
};
"#;

/// The row of slot `index` of `pool` in what [`READ_PAGE`] returned, if the page lists it.
fn row<'a>(page: &'a Value, pool: &str, index: u32) -> Option<&'a Value> {
    page["slots"]
        .as_array()?
        .iter()
        .find(|s| s["pool"] == json!(pool) && s["index"] == json!(index.to_string()))
}

/// The cell `field` of slot `index` of `pool`, or "" while the page does not list it.
fn cell<'a>(page: &'a Value, pool: &str, index: u32, field: &str) -> &'a str {
    row(page, pool, index)
        .and_then(|r| r["cells"][field].as_str())
        .unwrap_or_default()
}

/// The cell `field` of tenant `tenant`'s row, or "" while the page does not list it.
fn tenant_cell<'a>(page: &'a Value, tenant: &str, field: &str) -> &'a str {
    page["tenants"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["tenant"] == json!(tenant)))
        .and_then(|t| t["cells"][field].as_str())
        .unwrap_or_default()
}

/// A slot column summed over every slot row (sessions, in flight).
fn slot_sum(page: &Value, field: &str) -> u64 {
    page["slots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["cells"][field].as_str()?.parse::<u64>().ok())
        .sum()
}

#[test]
#[ignore = "tier chromium: needs chromium and chromedriver (Debian packages chromium, chromium-driver); .ci/run installs them and runs this tier"]
fn the_dashboard_in_chromium_is_refused_without_the_token_and_shows_slots_restarts_and_counters() {
    let output = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard_browser");
    let _ = std::fs::remove_dir_all(&output);
    std::fs::create_dir_all(&output).unwrap();

    let config = BusConfig::mock_pools(&[("alpha", 2), ("beta", 1)])
        .section("metrics", json!({"bearer_sha256": sha256_hex(TOKEN)}));
    // The browser first: without it the tier fails before starting anything, naming the package.
    let browser = Browser::start(&output);
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let addr = bus.metrics_addr();

    // (a) Without credentials: 401, and no dashboard (headless Chromium shows no login prompt).
    browser.goto(&format!("http://{addr}/ui"));
    let refused = browser.eval(READ_PAGE);
    assert_eq!(refused["status"], json!(401), "{refused:#}");
    assert_eq!(refused["link"], Value::Null, "{refused:#}");
    assert_eq!(refused["slots"], json!([]), "{refused:#}");
    // The refused load is the console's only entry.
    let console = browser.console();
    assert!(
        console
            .iter()
            .all(|e| e["message"].as_str().is_some_and(|m| m.contains("401"))),
        "{console:#?}"
    );

    // (b) With the token as Basic password in the URL, as after the login prompt: the page and
    // its event stream are let in, and every slot is listed ready.
    browser.goto(&format!("http://operator:{TOKEN}@{addr}/ui"));
    let (page, _) = browser.until(WAIT, "every slot listed ready", READ_PAGE, |p| {
        p["link"] == json!("live")
            && p["slots"]
                .as_array()
                .is_some_and(|s| s.len() == 3 && s.iter().all(|s| s["ready"] == json!(true)))
    });
    assert_eq!(page["status"], json!(200), "{page:#}");
    for (pool, index) in [("alpha", 0), ("alpha", 1), ("beta", 0)] {
        assert_eq!(cell(&page, pool, index, "state"), "ready", "{page:#}");
        assert_eq!(cell(&page, pool, index, "restarts"), "0", "{page:#}");
        assert!(
            cell(&page, pool, index, "pid").parse::<u32>().is_ok(),
            "{page:#}"
        );
    }

    // (c) A worker killed: its row turns red (class `down`) within about a second (a snapshot
    // every 500 ms, read here every 50 ms), then ready again with a new pid and one restart.
    let victim: u32 = cell(&page, "alpha", 1, "pid").parse().unwrap();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let (down, after) = browser.until(
        Duration::from_secs(2),
        "the killed row down",
        READ_PAGE,
        |p| row(p, "alpha", 1).is_some_and(|r| r["down"] == json!(true)),
    );
    say(&format!(
        "dashboard_browser: alpha[1] shown {} {after:?} after SIGKILL",
        cell(&down, "alpha", 1, "state")
    ));
    assert!(after <= Duration::from_millis(1500), "{after:?}");
    // The red row as an operator sees it while the worker restarts (if still red when taken).
    browser.screenshot(&output.join("restarting.png"));
    assert_ne!(cell(&down, "alpha", 1, "state"), "ready", "{down:#}");
    assert_eq!(cell(&down, "alpha", 0, "state"), "ready", "{down:#}");
    let (back, _) = browser.until(WAIT, "the killed row ready again", READ_PAGE, |p| {
        row(p, "alpha", 1).is_some_and(|r| r["ready"] == json!(true))
    });
    assert_ne!(
        cell(&back, "alpha", 1, "pid"),
        victim.to_string(),
        "{back:#}"
    );
    assert_eq!(cell(&back, "alpha", 1, "restarts"), "1", "{back:#}");
    assert!(
        cell(&back, "alpha", 1, "last_exit").contains("SIGKILL"),
        "{back:#}"
    );
    // The event list shows the exit (red) and the restart, the newest at the top.
    let (listed, _) = browser.until(WAIT, "the exit and restart listed", READ_PAGE, |p| {
        let events = p["events"].as_array();
        let index = |kind: &str| {
            events?.iter().position(|e| {
                e["kind"] == json!(kind) && e["text"].as_str().unwrap().contains("alpha[1]")
            })
        };
        matches!((index("restart"), index("exit")), (Some(r), Some(e)) if r < e)
    });
    let exit = listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == json!("exit"))
        .unwrap();
    assert!(exit["text"].as_str().unwrap().contains("SIGKILL"), "{exit}");

    // (d) A client opens a session and holds two requests: the slot and its tenant (`default`,
    // no client auth) count them, and the in-flight counts fall back when the replies go out.
    let mut client = bus.connect();
    client.request(json!(1), "ping", Value::Null, Some("browser-session"));
    client.recv();
    for id in [2, 3] {
        client.request(
            json!(id),
            "mock/delay",
            json!({"ms": HELD_MS}),
            Some("browser-session"),
        );
    }
    let (busy, _) = browser.until(WAIT, "the held requests counted", READ_PAGE, |p| {
        tenant_cell(p, "default", "in_flight") == "2"
    });
    assert_eq!(tenant_cell(&busy, "default", "sessions"), "1", "{busy:#}");
    assert_eq!(
        tenant_cell(&busy, "default", "connections"),
        "1",
        "{busy:#}"
    );
    assert_eq!(slot_sum(&busy, "sessions"), 1, "{busy:#}");
    assert_eq!(slot_sum(&busy, "in_flight"), 2, "{busy:#}");
    let totals = busy["totals"].as_str().unwrap_or_default();
    assert!(totals.contains("2 in flight"), "{totals}");

    // One request to a pool that does not exist: an error reply, counted by its reason. The
    // running totals count all four requests; the tenant's rate (last 10 s) is above zero.
    client.send(&json!({"jsonrpc": "2.0", "id": 4, "method": "m", "pool": "gamma"}));
    assert_eq!(
        codex_bus_tests::reason(&client.recv()),
        Some("unknown_pool")
    );
    let (counted, _) = browser.until(WAIT, "the requests and the error counted", READ_PAGE, |p| {
        p["requests"] == json!("4")
            && p["errors"] == json!("1")
            && p["legend"]
                .as_str()
                .is_some_and(|l| l.contains("unknown_pool"))
    });
    let rate: f64 = tenant_cell(&counted, "default", "rate").parse().unwrap();
    assert!(rate > 0.0, "{counted:#}");

    // (e) The page as an operator sees it: one restart, a session with two requests in flight.
    let shot = output.join("dashboard.png");
    browser.screenshot(&shot);
    say(&format!(
        "dashboard_browser: screenshots {} and restarting.png beside it",
        shot.display()
    ));

    for _ in 0..2 {
        client.recv();
    }
    browser.until(WAIT, "the replies counted out", READ_PAGE, |p| {
        tenant_cell(p, "default", "in_flight") == "0" && slot_sum(p, "in_flight") == 0
    });
    // No script error and nothing refused by the page's content policy while it ran.
    let console = browser.console();
    assert!(console.is_empty(), "{console:#?}");

    // (f) SIGTERM with a request held: the page says `draining` while the reply is owed, and
    // `disconnected` once the daemon has delivered it and exited (the open stream holds nothing).
    client.request(
        json!(5),
        "mock/delay",
        json!({"ms": HELD_MS}),
        Some("browser-session"),
    );
    browser.until(WAIT, "the held request counted", READ_PAGE, |p| {
        tenant_cell(p, "default", "in_flight") == "1"
    });
    bus.signal(Signal::SIGTERM);
    browser.until(WAIT, "the drain shown", READ_PAGE, |p| {
        p["drain"] == json!("draining")
    });
    assert!(client.recv()["result"].is_object());
    assert!(bus.wait_exit().success());
    let (gone, _) = browser.until(WAIT, "the daemon gone", READ_PAGE, |p| {
        p["link"]
            .as_str()
            .is_some_and(|l| l.starts_with("disconnected"))
    });
    assert_eq!(gone["drain"], json!("draining"), "{gone:#}");
}

#[test]
#[ignore = "tier chromium: needs chromium and chromedriver (Debian packages chromium, chromium-driver); .ci/run installs them and runs this tier"]
fn a_page_refused_a_stream_while_sixteen_are_open_connects_once_a_seat_is_free() {
    use std::io::{BufRead, BufReader, Write};
    let output = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard_browser_503");
    let _ = std::fs::remove_dir_all(&output);
    std::fs::create_dir_all(&output).unwrap();
    let browser = Browser::start(&output);
    let bus = Bus::start_with(
        &BusConfig::mock(1),
        Mode::Tcp,
        &["--metrics", "127.0.0.1:0"],
    );
    let addr = bus.metrics_addr();
    // Every seat taken (`admin/ui.rs`, MAX_STREAMS = 16).
    let held: Vec<_> = (0..16)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(&addr).unwrap();
            write!(stream, "GET /ui/events HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
            let mut reader = BufReader::new(stream);
            let mut status = String::new();
            reader.read_line(&mut status).unwrap();
            assert!(status.contains(" 200 "), "{status}");
            reader
        })
        .collect();
    browser.goto(&format!("http://{addr}/ui"));
    let link = r#"return document.getElementById("link").textContent;"#;
    browser.until(WAIT, "the page refused its stream", link, |l| {
        l == &json!("disconnected: retrying")
    });
    // An EventSource answered 503 gives up for good; the page opens a new one (every 5 s).
    drop(held);
    let (_, after) = browser.until(Duration::from_secs(15), "the page live", link, |l| {
        l == &json!("live")
    });
    say(&format!(
        "the page live {after:?} after the seats were freed"
    ));
}
