//! The thread-owner log: one JSON line per persistent thread a session created, so a restarted
//! worker still refuses other sessions' threads and can resume the owner's.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use codex_bus_worker_io::log;

#[derive(Serialize, Deserialize)]
struct Record {
    thread: String,
    session: String,
}

/// One record: a thread and the routing key of the session that owns it.
pub type Owned = (String, Vec<u8>);

/// Appends ownership records.
#[derive(Debug)]
pub struct OwnerLog {
    file: File,
}

impl OwnerLog {
    /// Opens (creating) the log at `path` and returns the `(thread, session key)` pairs in it;
    /// unreadable lines are skipped (a torn last line after a crash is expected).
    pub fn open(path: &Path) -> io::Result<(Self, Vec<Owned>)> {
        let existing = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err),
        };
        let mut records = Vec::new();
        for line in existing
            .split(|&byte| byte == b'\n')
            .filter(|line| !line.is_empty())
        {
            match serde_json::from_slice::<Record>(line) {
                Ok(record) => records.push((record.thread, record.session.into_bytes())),
                Err(err) => log::line(format_args!(
                    "{}: skipping an unreadable line ({err})",
                    path.display()
                )),
            }
        }
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        if existing.last().is_some_and(|&byte| byte != b'\n') {
            // End a torn last line, so the next record starts on a line of its own.
            file.write_all(b"\n")?;
        }
        Ok((Self { file }, records))
    }

    /// Records that `session` owns `thread`.
    pub fn append(&mut self, thread: &str, session: &[u8]) {
        let record = Record {
            thread: thread.to_owned(),
            session: String::from_utf8_lossy(session).into_owned(),
        };
        let mut line = serde_json::to_vec(&record).unwrap_or_default();
        line.push(b'\n');
        if let Err(err) = self.file.write_all(&line) {
            log::line(format_args!(
                "cannot record the owner of thread {thread}: {err}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owners.jsonl");
        let (mut log, records) = OwnerLog::open(&path).unwrap();
        assert!(records.is_empty());
        log.append("t1", b"alice");
        log.append("t2", b"b\"ob");
        drop(log);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"thread\":\"t3\",\"sess")
            .unwrap();
        let (mut log, records) = OwnerLog::open(&path).unwrap();
        assert_eq!(
            records,
            vec![
                ("t1".to_owned(), b"alice".to_vec()),
                ("t2".to_owned(), b"b\"ob".to_vec())
            ]
        );
        log.append("t4", b"carol");
        drop(log);
        let (_, records) = OwnerLog::open(&path).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].0, "t4");
    }
}
