//! The deployment examples in docs/deploy stay consistent with the daemon: the service manager's
//! stop deadline covers the longest drain, and the embedded config is valid.

use std::path::PathBuf;
use std::process::Command;

use codex_bus_tests::bin;

/// The longest shutdown with the default `drain_grace_sec` (5) and `drain_timeout_sec` (30): the
/// grace, the drain, then at least 2 s between SIGTERM and SIGKILL of the workers, then up to 5 s
/// to flush replies (daemon.rs).
const LONGEST_SHUTDOWN_SEC: u64 = 5 + 30 + 2 + 5;

fn deploy(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of the first `key=value` (systemd) or `key: value` (YAML) line for `key`.
fn setting<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .map(str::trim)
        .find_map(|l| {
            l.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('=').or_else(|| rest.strip_prefix(':')))
        })
        .unwrap_or_else(|| panic!("no {key}"))
        .trim()
}

#[test]
fn systemd_unit_kills_mixed_and_waits_longer_than_the_drain() {
    let unit = deploy("codex-stdio-bus.service");
    assert_eq!(setting(&unit, "KillMode"), "mixed");
    let stop: u64 = setting(&unit, "TimeoutStopSec").parse().unwrap();
    assert!(stop > LONGEST_SHUTDOWN_SEC, "TimeoutStopSec={stop}");
    assert_eq!(
        setting(&unit, "Restart"),
        "on-failure",
        "restarts after an escalation"
    );
    assert_eq!(
        setting(&unit, "RestartPreventExitStatus"),
        "78",
        "a config error (EX_CONFIG) is not restarted in a loop"
    );
}

#[test]
fn kubernetes_grace_period_covers_the_drain_and_its_config_is_valid() {
    let manifest = deploy("kubernetes.yaml");
    let grace: u64 = setting(&manifest, "terminationGracePeriodSeconds")
        .parse()
        .unwrap();
    assert!(
        grace > LONGEST_SHUTDOWN_SEC,
        "terminationGracePeriodSeconds: {grace}"
    );
    // The ConfigMap's block scalar: the lines indented below `config.json: |`.
    let config: String = manifest
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("config.json: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // The listeners are on 0.0.0.0: TCP clients authenticate with tokens from a mounted Secret.
    // `check` reads that file as the daemon does, so a stand-in for it is written here.
    let mounted = "/etc/codex-stdio-bus/auth/tokens.json";
    assert!(config.contains(mounted), "{config}");
    assert!(manifest.contains("secretName: codex-stdio-bus-tokens"));
    let tokens = dir.path().join("tokens.json");
    let digest = "0123456789abcdef".repeat(4);
    let entry = format!(r#"[{{"tenant": "acme", "sha256": "{digest}"}}]"#);
    std::fs::write(&tokens, entry).unwrap();
    let config = config.replace(mounted, tokens.to_str().unwrap());
    assert!(config.contains("\"bearer_sha256\""), "{config}");
    let path = dir.path().join("config.json");
    std::fs::write(&path, &config).unwrap();
    // `check` refuses a pool program it cannot find, as the daemon does: the image has
    // `codex-worker` on PATH, and so has this run, from the workspace's build.
    let daemon = bin("codex-stdio-bus");
    let built = daemon.parent().unwrap();
    let path_var = format!(
        "{}:{}",
        built.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let checked = Command::new(&daemon)
        .args(["check", "--config", path.to_str().unwrap()])
        .env("PATH", path_var)
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr),
    );
    assert!(checked.status.success(), "{config}\n{out}{err}");
    assert!(out.contains("\"drain_timeout_sec\": 30"), "{out}");
}

#[test]
#[ignore = "tier systemd: needs systemd-analyze (Debian package `systemd`); .ci/run installs it and runs this tier"]
fn systemd_unit_verifies_and_its_exposure_is_at_most_4() {
    let version = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("the systemd tier runs only where systemd-analyze is installed");
    assert!(version.status.success());
    // A copy whose ExecStart is the binary just built: verify checks that it is executable.
    let unit = deploy("codex-stdio-bus.service").replace(
        "/usr/local/bin/codex-stdio-bus",
        bin("codex-stdio-bus").to_str().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("codex-stdio-bus.service");
    std::fs::write(&path, unit).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("systemd-analyze")
            .args(args)
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    // verify prints what it ignores (a key in the wrong section) but still exits 0: no output
    // at all is the pass.
    let (ok, text) = run(&["verify"]);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    // --threshold is the exposure times 10.
    let (ok, text) = run(&["security", "--offline=true", "--threshold=40"]);
    let overall = text
        .lines()
        .find(|l| l.contains("Overall exposure"))
        .unwrap_or("");
    assert!(ok, "exposure above 4:\n{text}");
    codex_bus_tests::say(&format!("systemd unit: {}", overall.trim()));
}

#[test]
fn under_type_notify_the_daemon_says_ready_then_stopping() {
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let manager = UnixDatagram::bind(&notify).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let config = codex_bus_tests::BusConfig::mock(1).write(dir.path());
    let mut daemon = Command::new(codex_bus_tests::bin("codex-stdio-bus"))
        .arg("--config")
        .arg(&config)
        .args(["--tcp", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &notify)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = manager.recv(&mut buf).expect("READY=1 within 20 s");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = manager.recv(&mut buf).expect("STOPPING=1 within 20 s");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    let status = daemon.wait().unwrap();
    assert_eq!(ready.trim(), "READY=1", "{ready:?}");
    assert_eq!(stopping.trim(), "STOPPING=1", "{stopping:?}");
    assert!(status.success(), "{status}");
    // The unit asks for exactly this.
    let unit = deploy("codex-stdio-bus.service");
    assert_eq!(setting(&unit, "Type"), "notify");
    assert_eq!(setting(&unit, "NotifyAccess"), "main");
}
