//! The file side of the worker's bounded JSON-lines logs (the thread-owner log, the handshake
//! log): one record a line, created 0600 (the records are capabilities or a client's data), read
//! back skipping what does not parse (a torn last line after a crash is expected), and rewritten
//! whole with the records a caller keeps when it has grown past its bound. What a record holds,
//! and which records are kept, is the caller's.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::hash::Hash;
use std::io::{self, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use codex_bus_worker_io::log;

use super::home::private;

/// What [`read`] found in a log.
#[derive(Debug)]
pub struct Contents<R> {
    /// The records that parsed, in file order.
    pub records: Vec<R>,
    /// How many non-empty lines the file holds, unreadable ones included.
    pub lines: usize,
    /// Whether the file ends inside a line (a write torn by a crash).
    pub torn: bool,
}

/// What a log keeps of `records` (in file order): the last record of each key, as `live` makes
/// it, for the newest `keep` keys, oldest first. A key whose last record `live` refuses (a
/// forgotten entry) has none and does not count toward `keep`.
pub fn newest_by<R, K: Eq + Hash, T>(
    records: Vec<R>,
    keep: usize,
    mut key: impl FnMut(&R) -> K,
    live: impl FnMut(R) -> Option<T>,
) -> Vec<T> {
    let mut seen = HashSet::new();
    let mut kept: Vec<T> = records
        .into_iter()
        .rev()
        .filter(|record| seen.insert(key(record)))
        .filter_map(live)
        .take(keep)
        .collect();
    kept.reverse();
    kept
}

/// Reads the log at `path` (none yet: empty); an unreadable line is skipped with a warning.
///
/// # Errors
///
/// Reading the file failed for another reason than its absence.
pub fn read<R: DeserializeOwned>(path: &Path) -> io::Result<Contents<R>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(err),
    };
    let mut contents = Contents {
        records: Vec::new(),
        lines: 0,
        torn: bytes.last().is_some_and(|&byte| byte != b'\n'),
    };
    for line in bytes
        .split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
    {
        contents.lines += 1;
        match serde_json::from_slice(line) {
            Ok(record) => contents.records.push(record),
            Err(err) => log::line(format_args!(
                "{}: skipping an unreadable line ({err})",
                path.display()
            )),
        }
    }
    Ok(contents)
}

/// `record` as one line of a log, its newline included.
pub fn line(record: &impl Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(record).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Replaces the log at `path` by `lines`, each one from [`line()`] (written 0600 beside it as
/// `*.jsonl.new`, then renamed over it, so a crash leaves one whole log or the other).
///
/// # Errors
///
/// Writing the new file or renaming it failed.
pub fn rewrite(path: &Path, lines: impl IntoIterator<Item = Vec<u8>>) -> io::Result<()> {
    let text: Vec<u8> = lines.into_iter().flatten().collect();
    let compacted = path.with_extension("jsonl.new");
    let mut file = private(&compacted, OpenOptions::new().write(true).truncate(true))?;
    file.write_all(&text)?;
    drop(file);
    fs::rename(&compacted, path)
}

/// Opens the log at `path` for appending (creating it 0600); when it ends `torn`, ends that line
/// first, so the next record starts on a line of its own.
///
/// # Errors
///
/// Opening the file or ending its torn line failed.
pub fn append_to(path: &Path, torn: bool) -> io::Result<File> {
    let mut file = private(path, OpenOptions::new().append(true))?;
    if torn {
        file.write_all(b"\n")?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_missing_log_reads_empty_and_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let contents = read::<u32>(&path).unwrap();
        assert!(contents.records.is_empty());
        assert_eq!((contents.lines, contents.torn), (0, false));
        drop(append_to(&path, contents.torn).unwrap());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn unreadable_lines_are_skipped_but_counted_and_a_torn_end_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        fs::write(&path, "1\nnot json\n\n2\n[3").unwrap();
        let contents = read::<u32>(&path).unwrap();
        assert_eq!(contents.records, [1, 2]);
        assert_eq!((contents.lines, contents.torn), (4, true));
        let mut file = append_to(&path, contents.torn).unwrap();
        file.write_all(&line(&4)).unwrap();
        drop(file);
        let contents = read::<u32>(&path).unwrap();
        assert_eq!(contents.records, [1, 2, 4]);
        assert!(!contents.torn);
    }

    #[test]
    fn a_rewrite_replaces_the_whole_log_and_leaves_no_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        fs::write(&path, "1\n2\n3\n").unwrap();
        rewrite(&path, [2, 3].iter().map(line)).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "2\n3\n");
        assert_eq!(mode(&path), 0o600);
        assert!(!dir.path().join("log.jsonl.new").exists());
    }
}
