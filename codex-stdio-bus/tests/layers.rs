//! The daemon's layers (docs/architecture.md): each module imports only the layers below it, and
//! no module imports one that imports it back.
//!
//! Two checks: the workspace's `module-cycles` tool (in `../shared/tools`, beside the repository)
//! over every crate with a daemon or worker inside, and this file's own table of which top-level
//! module of the daemon may name which.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The crate's `src/`.
fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules a module may import (`crate::<name>`), by layer.
fn allowed(module: &str) -> Option<&'static [&'static str]> {
    Some(match module {
        // Leaves: nothing of the daemon.
        "metrics" | "error" | "cli" | "audit" | "auth" => &[],
        "core" => &[],
        // The pools' cgroup v2 limits: checked by the daemon (and `check`), applied at spawn.
        "cgroups" => &["error"],
        "router" => &["core", "metrics", "audit", "error"],
        // Every client transport (stdio, Unix, TCP, and `io/websocket`) and the HTTP probes
        // (`io/probes`) the admin endpoint and the WebSocket listeners share.
        "io" => &["core", "router", "auth", "metrics", "audit", "error"],
        "supervisor" => &["core", "router", "io", "cgroups", "metrics", "error"],
        // Layer 5: what a config needs before it is put in force, at start and on a reload.
        "preflight" => &["io", "auth", "error"],
        "reload" => &[
            "core",
            "router",
            "io",
            "supervisor",
            "preflight",
            "auth",
            "cgroups",
            "metrics",
            "audit",
            "error",
        ],
        "admin" => &["core", "router", "io", "auth", "metrics", "error", "reload"],
        "daemon" => &[
            "core",
            "router",
            "io",
            "supervisor",
            "admin",
            "preflight",
            "reload",
            "auth",
            "cgroups",
            "metrics",
            "audit",
            "error",
        ],
        "signals" => &["daemon", "error"],
        "logging" => &["cli"],
        "defaults" => &["error"],
        _ => return None,
    })
}

/// Every `.rs` file under `path` (or `path` itself).
fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        files.extend(rust_files(&entry.unwrap().path()));
    }
    files
}

/// The top-level modules that `text` names as `crate::<module>`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // `crate::{a, b}` lists several.
        if name.is_empty() && rest.starts_with('{') {
            let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
            for item in group.split(',') {
                let item = item.trim().split("::").next().unwrap_or("").to_owned();
                if !item.is_empty() {
                    names.insert(item);
                }
            }
        } else if !name.is_empty() {
            names.insert(name);
        }
    }
    names
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let mut violations = Vec::new();
    for entry in std::fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        let module = path.file_stem().unwrap().to_string_lossy().into_owned();
        if ["lib", "main"].contains(&module.as_str()) {
            continue;
        }
        let Some(allowed) = allowed(&module) else {
            violations.push(format!(
                "{module}: not in the layer table of tests/layers.rs"
            ));
            continue;
        };
        for file in rust_files(&path) {
            let text = std::fs::read_to_string(&file).unwrap();
            for name in named_modules(&text) {
                if name != module && !allowed.contains(&name.as_str()) {
                    let file = file.strip_prefix(src()).unwrap().display();
                    violations.push(format!("{module} imports {name} ({file})"));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let tool = workspace.join("../shared/tools/module-cycles");
    assert!(
        tool.exists(),
        "{} is missing: the repository needs the shared folder beside it",
        tool.display()
    );
    let crates = [
        "codex-stdio-bus",
        "codex-worker",
        "codex-mock",
        "process",
        "worker-io",
        "store",
    ];
    let mut checked = 0;
    for name in crates {
        let dir = workspace.join(name).join("src");
        if !dir.is_dir() {
            continue;
        }
        let out = Command::new(&tool)
            .arg(&dir)
            .output()
            .expect("run module-cycles (needs python3)");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: modules import each other in a circle:\n{report}"
        );
        assert!(report.contains("cycles=0"), "{name}: {report}");
        checked += 1;
    }
    assert!(checked >= 2, "the daemon and the worker were checked");
}

#[test]
fn the_layer_check_sees_imports() {
    let names = named_modules("use crate::core::slot::Slot;\nuse crate::{router, io::x};\n");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["core", "io", "router"]
    );
}
