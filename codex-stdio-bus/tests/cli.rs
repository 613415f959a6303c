//! The command line itself. (Having an integration test here also makes `cargo test --workspace`
//! build this crate's binary, which the end-to-end tests in `tests/` run.)

use std::process::Command;

fn bus(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_codex-stdio-bus"))
        .args(args)
        .output()
        .expect("run codex-stdio-bus");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_option_and_exits_zero() {
    let (ok, out, _) = bus(&["--help"]);
    assert!(ok);
    for flag in [
        "--config",
        "--stdio",
        "--unix",
        "--tcp",
        "--log-level",
        "check",
    ] {
        assert!(out.contains(flag), "--help lists {flag}:\n{out}");
    }
}

#[test]
fn version_prints_the_crate_version() {
    let (ok, out, _) = bus(&["--version"]);
    assert!(ok);
    assert_eq!(
        out.trim(),
        format!("codex-stdio-bus {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn endpoint_flags_are_exclusive_and_unknown_options_refused() {
    let (ok, _, err) = bus(&["--stdio", "--tcp", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(err.contains("cannot be used with"), "{err}");
    let (ok, _, err) = bus(&["--bogus"]);
    assert!(!ok);
    assert!(err.contains("--bogus"), "{err}");
}
