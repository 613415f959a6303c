//! Headless Chromium for tests of the dashboard page: `chromium --headless` on a fresh profile,
//! driven over WebDriver through `chromedriver` (with the `fantoccini` client), both ended by pid
//! when dropped, also when the test panics, and by the [`crate::watchdog`] after
//! [`crate::DEADLINE`].
//!
//! The test starts Chromium itself (with `--remote-debugging-port=0`) and has chromedriver attach
//! to it (`goog:chromeOptions.debuggerAddress`), rather than letting chromedriver launch it: so
//! the test holds both pids, and a chromedriver killed by the watchdog cannot leave a browser
//! behind. The calls are blocking (each runs on a current-thread runtime of the browser's own),
//! like the rest of the harness.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use crate::{alive, watchdog, WAIT};

/// The programs a [`Browser`] runs, each with the Debian package that installs it.
const PROGRAMS: [(&str, &str); 2] = [
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
];

/// The browser window, in CSS pixels: wide enough for the slot table on one line, tall enough
/// for a few pools, the charts and the first worker events. A screenshot shows the viewport
/// inside it (143 pixels less tall than the window with Chromium 156).
const WINDOW: &str = "1280,1500";

/// How long Chromium has to exit after SIGTERM before it is killed.
const STOP: Duration = Duration::from_secs(5);

/// Why a [`Browser`] cannot start here, naming what to install; `None` when it can.
fn missing() -> Option<String> {
    let absent: Vec<String> = PROGRAMS
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(program, package)| format!("{program} (Debian package {package})"))
        .collect();
    (!absent.is_empty()).then(|| format!("not installed: {}", absent.join(", ")))
}

/// Whether `program` is an executable file in a `PATH` directory.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// A headless Chromium and the chromedriver session driving it; both killed when dropped.
pub struct Browser {
    runtime: Runtime,
    /// The WebDriver session; taken when dropped, to end it.
    client: Option<Client>,
    chromium: Child,
    chromedriver: Child,
    /// Tells the watchdogs of both processes that they were ended here.
    done: Arc<AtomicBool>,
    /// Chromium's profile and configuration (`XDG_CONFIG_HOME`, `XDG_CACHE_HOME`: nothing is
    /// written to the user's), thrown away afterwards.
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium and chromedriver, their output in `logs/chromium.log` and
    /// `logs/chromedriver.log`, and opens a WebDriver session on the blank page. Panics, naming
    /// the package, if either program is not installed.
    pub fn start(logs: &Path) -> Browser {
        if let Some(why) = missing() {
            panic!("{why}");
        }
        let profile = tempfile::tempdir().expect("a Chromium profile directory");
        let log = |name: &str| std::fs::File::create(logs.join(name)).expect("a browser log");
        let done = Arc::new(AtomicBool::new(false));
        let chromium_log = log("chromium.log");
        let chromium = Command::new("chromium")
            .args([
                "--headless",
                // As root (CI) Chromium refuses to start with its sandbox.
                "--no-sandbox",
                "--disable-gpu",
                // A container's /dev/shm may be too small for its shared memory.
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                // No update checks or other calls out: the test talks to loopback only.
                "--disable-background-networking",
                "--remote-debugging-port=0",
                &format!("--window-size={WINDOW}"),
            ])
            .arg(format!(
                "--user-data-dir={}",
                profile.path().join("user-data").display()
            ))
            .env("XDG_CONFIG_HOME", profile.path())
            .env("XDG_CACHE_HOME", profile.path())
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(chromium_log.try_clone().expect("a browser log"))
            .stderr(chromium_log)
            .spawn()
            .expect("spawn chromium");
        watchdog(chromium.id(), done.clone());
        let chromedriver = Command::new("chromedriver")
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(log("chromedriver.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        watchdog(chromedriver.id(), done.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the WebDriver client");
        let mut browser = Browser {
            runtime,
            client: None,
            chromium,
            chromedriver,
            done,
            profile,
        };
        // Chromium writes its DevTools port as the first line of this file once it listens.
        let port_file = browser.profile.path().join("user-data/DevToolsActivePort");
        let debugger = wait_for(&port_file, "Chromium's DevTools port", |text| {
            text.lines()
                .next()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
        });
        let driver = wait_for(
            &logs.join("chromedriver.log"),
            "chromedriver's port",
            |text| {
                let rest = text.split("started successfully on port ").nth(1)?;
                let port = rest.split('.').next()?;
                port.parse::<u16>().ok()
            },
        );
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"debuggerAddress": format!("127.0.0.1:{debugger}")}),
        );
        let client = browser
            .runtime
            .block_on(
                ClientBuilder::new(HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&format!("http://127.0.0.1:{driver}")),
            )
            .expect("a WebDriver session on Chromium");
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a WebDriver session")
    }

    /// Navigates to `url` and returns once the page has loaded (its scripts have run).
    pub fn goto(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("load {url}: {e}"));
    }

    /// Runs `script` (a function body: its `return` value is the result) in the page.
    pub fn eval(&self, script: &str) -> Value {
        self.runtime
            .block_on(self.client().execute(script, Vec::new()))
            .unwrap_or_else(|e| panic!("run a script in the page: {e}"))
    }

    /// Runs `script` every 50 ms until `check` holds for its result; returns that result and how
    /// long it took. Panics after `within`, with the last result.
    pub fn until(
        &self,
        within: Duration,
        what: &str,
        script: &str,
        check: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            let value = self.eval(script);
            if check(&value) {
                return (value, start.elapsed());
            }
            assert!(
                start.elapsed() < within,
                "{what}: not within {within:?}; the page last showed {value:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes what the window shows now to `path` as PNG.
    pub fn screenshot(&self, path: &Path) {
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .unwrap_or_else(|e| panic!("take a screenshot: {e}"));
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The browser console's entries since the last call (`level`, `message`, `source`): page
    /// script errors, resources refused (by the server or by the page's content policy).
    pub fn console(&self) -> Vec<Value> {
        let entries = self
            .runtime
            .block_on(self.client().issue_cmd(ConsoleLog))
            .unwrap_or_else(|e| panic!("read the browser console: {e}"));
        entries.as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Bounded: a driver that does not answer is killed below all the same.
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), client.close()).await
            });
        }
        // On SIGTERM Chromium ends its renderer, GPU, zygote and crash-handler processes on its
        // way out; SIGKILL would leave them to notice on their own.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.chromium.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        while matches!(self.chromium.try_wait(), Ok(None)) && start.elapsed() < STOP {
            std::thread::sleep(Duration::from_millis(20));
        }
        for child in [&mut self.chromium, &mut self.chromedriver] {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever of this browser still runs is ended by pid: each of its processes names the
        // profile directory on its command line (the crash handler too, through XDG_CONFIG_HOME).
        for pid in processes_naming(self.profile.path()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.done.store(true, Ordering::SeqCst);
    }
}

/// The live processes whose command line contains `path`, from /proc.
fn processes_naming(path: &Path) -> Vec<u32> {
    let needle = path.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|w| w == needle))
        })
        .filter(|&pid| alive(pid))
        .collect()
}

/// Reads `path` until `parse` finds what it needs in it; panics after [`WAIT`].
fn wait_for<T>(path: &Path, what: &str, parse: impl Fn(&str) -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(found) = parse(&text) {
            return found;
        }
        assert!(
            start.elapsed() < WAIT,
            "{what}: not in {} within {WAIT:?}: {text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// chromedriver's `POST /session/{id}/se/log {"type": "browser"}`: the console entries since the
/// last read (not a W3C command, so fantoccini has no method for it).
#[derive(Debug)]
struct ConsoleLog;

impl WebDriverCompatibleCommand for ConsoleLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}
