//! Rollout files between a slot's `CODEX_HOME` and the shared state directory.
//!
//! Codex resumes a thread in another `CODEX_HOME` from its rollout alone, under its own file name
//! (docs/thread-resume.md). A published rollout is `<shared>/threads/<thread>/e<epoch>.jsonl`: one
//! file per lease epoch, so a holder fenced out by a newer epoch can only ever write a file that
//! the store does not point at.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

/// Longest thread id the cluster layer shares; Codex's are 36-character UUIDs.
const MAX_THREAD_ID: usize = 128;

/// How deep `sessions/YYYY/MM/DD/` goes.
const SESSIONS_DEPTH: usize = 3;

/// Whether `thread` can name a directory: ids are client text until a store vouches for them.
pub fn shareable(thread: &str) -> bool {
    !thread.is_empty()
        && thread.len() <= MAX_THREAD_ID
        && thread
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// The rollout of `thread` in `home`: its path and its path relative to `home`
/// (`sessions/YYYY/MM/DD/rollout-<ts>-<thread>.jsonl`).
pub fn find_local(home: &Path, thread: &str) -> Option<(PathBuf, String)> {
    let suffix = format!("-{thread}.jsonl");
    let mut dirs = vec![(home.join("sessions"), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && depth < SESSIONS_DEPTH {
                dirs.push((path, depth + 1));
            } else if kind.is_file() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("rollout-") && name.ends_with(&suffix) {
                    let relative = path.strip_prefix(home).ok()?.to_string_lossy().into_owned();
                    return Some((path, relative));
                }
            }
        }
    }
    None
}

/// The published rollout of `thread` at `epoch`.
fn published_path(shared: &Path, thread: &str, epoch: u64) -> PathBuf {
    shared
        .join("threads")
        .join(thread)
        .join(format!("e{epoch}.jsonl"))
}

/// Whether a relative path the store recorded stays inside `sessions/` (the store is shared, so
/// what it says is checked before it names a file).
fn safe_relative(relative: &str) -> bool {
    let path = Path::new(relative);
    path.starts_with("sessions")
        && path
            .components()
            .all(|component| matches!(component, Component::Normal(_)))
}

/// Copies `from` to `to` through a temporary file beside it, synced and renamed, so a reader
/// (or a crash) never sees half a rollout.
fn copy_atomically(from: &Path, to: &Path) -> io::Result<()> {
    let dir = to
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    fs::create_dir_all(dir)?;
    let temporary = to.with_extension(format!("tmp-{}", std::process::id()));
    let copied = fs::copy(from, &temporary)
        .and_then(|_| File::open(&temporary)?.sync_all())
        .and_then(|()| fs::rename(&temporary, to));
    if copied.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    copied
}

/// Brings the rollout published at `epoch` into `home` under its recorded name `relative`,
/// replacing an older local copy of the thread under another name.
///
/// A local copy under the same name is rewritten in place rather than replaced: a child that
/// still has the thread loaded from an earlier lease keeps the file open for appending, and its
/// next lines must land in the file other nodes will read, not in an unlinked one.
pub fn import(
    home: &Path,
    shared: &Path,
    thread: &str,
    epoch: u64,
    relative: &str,
) -> io::Result<()> {
    if !safe_relative(relative) {
        return Err(io::Error::other(format!(
            "the store names a rollout outside sessions/: {relative:?}"
        )));
    }
    let target = home.join(relative);
    if let Some((old, _)) = find_local(home, thread) {
        if old != target {
            fs::remove_file(old)?;
        }
    }
    let source = published_path(shared, thread, epoch);
    if target.exists() {
        let bytes = fs::read(&source)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&target)?;
        file.write_all(&bytes)?;
        return file.sync_all();
    }
    copy_atomically(&source, &target)
}

/// Publishes the local rollout of `thread` at `epoch`; returns its relative name, or `None` when
/// Codex has not written one yet.
pub fn publish(home: &Path, shared: &Path, thread: &str, epoch: u64) -> io::Result<Option<String>> {
    let Some((local, relative)) = find_local(home, thread) else {
        return Ok(None);
    };
    copy_atomically(&local, &published_path(shared, thread, epoch))?;
    Ok(Some(relative))
}

/// Removes the thread's files of epochs older than `epoch`, once the store points at `epoch`:
/// nothing reads them any more.
pub fn prune(shared: &Path, thread: &str, epoch: u64) {
    let Ok(entries) = fs::read_dir(shared.join("threads").join(thread)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let older = name
            .to_str()
            .and_then(|name| {
                name.strip_prefix('e')?
                    .strip_suffix(".jsonl")?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|old| old < epoch);
        if older {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREAD: &str = "0199a0b1-1111-7222-8333-444455556666";

    fn write_rollout(home: &Path, day: &str, text: &str) -> String {
        let relative = format!("sessions/{day}/rollout-2026-12-01T10-00-00-{THREAD}.jsonl");
        let path = home.join(&relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
        relative
    }

    #[test]
    fn thread_ids_that_name_directories() {
        assert!(shareable(THREAD));
        for bad in ["", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(!shareable(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_published_rollout_comes_back_under_its_own_name_in_another_home() {
        let root = tempfile::tempdir().unwrap();
        let (a, b, shared) = (
            root.path().join("a"),
            root.path().join("b"),
            root.path().join("s"),
        );
        let relative = write_rollout(&a, "2026/12/01", "meta\nturn 1\n");
        assert_eq!(find_local(&a, THREAD).unwrap().1, relative);
        assert_eq!(
            publish(&a, &shared, THREAD, 3).unwrap().as_deref(),
            Some(&*relative)
        );
        // An older local copy under another name is replaced.
        write_rollout(&b, "2026/11/30", "stale\n");
        import(&b, &shared, THREAD, 3, &relative).unwrap();
        let (path, found) = find_local(&b, THREAD).unwrap();
        assert_eq!(found, relative);
        assert_eq!(fs::read_to_string(path).unwrap(), "meta\nturn 1\n");
        assert!(!b
            .join(format!(
                "sessions/2026/11/30/rollout-2026-12-01T10-00-00-{THREAD}.jsonl"
            ))
            .exists());
    }

    #[test]
    fn a_copy_under_the_same_name_is_rewritten_in_place_for_a_child_that_appends_to_it() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let (a, b, shared) = (
            root.path().join("a"),
            root.path().join("b"),
            root.path().join("s"),
        );
        let relative = write_rollout(&a, "2026/12/01", "meta\nturn on a\nturn on b\n");
        publish(&a, &shared, THREAD, 2).unwrap();
        write_rollout(&b, "2026/12/01", "meta\nturn on a\n");
        let path = b.join(&relative);
        let mut appender = fs::OpenOptions::new().append(true).open(&path).unwrap();
        let inode = fs::metadata(&path).unwrap().ino();
        import(&b, &shared, THREAD, 2, &relative).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
        appender.write_all(b"turn on a again\n").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "meta\nturn on a\nturn on b\nturn on a again\n"
        );
    }

    #[test]
    fn nothing_to_publish_before_codex_writes_and_older_epochs_are_pruned() {
        let root = tempfile::tempdir().unwrap();
        let (home, shared) = (root.path().join("h"), root.path().join("s"));
        assert_eq!(publish(&home, &shared, THREAD, 1).unwrap(), None);
        write_rollout(&home, "2026/12/01", "x\n");
        publish(&home, &shared, THREAD, 1).unwrap();
        publish(&home, &shared, THREAD, 2).unwrap();
        prune(&shared, THREAD, 2);
        assert!(!published_path(&shared, THREAD, 1).exists());
        assert!(published_path(&shared, THREAD, 2).exists());
    }

    #[test]
    fn a_recorded_name_outside_sessions_is_refused() {
        let root = tempfile::tempdir().unwrap();
        for bad in [
            "../x.jsonl",
            "sessions/../../x.jsonl",
            "/etc/passwd",
            "config.toml",
        ] {
            let err = import(root.path(), root.path(), THREAD, 1, bad).unwrap_err();
            assert!(
                err.to_string().contains("outside sessions/"),
                "{bad}: {err}"
            );
        }
    }
}
