//! The thread-owner log: one JSON line per persistent thread a session created, so a restarted
//! worker still refuses other scopes' threads and can resume the owner's.
//!
//! A line is `{"thread":"…","session":"…"}`, plus `"tenant":"…"` when the bus named the
//! creator's tenant (lines written before tenants existed have none and still read). The log is
//! bounded like the table it restores: when a lane opens a log holding more threads than the
//! table keeps, it is rewritten with the newest ones only. It is created 0600: a thread id is
//! the capability to resume the thread.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use codex_bus_worker_io::log;

use super::jsonl_log;
use super::sessions::{Scope, SessionKey};

#[derive(Serialize, Deserialize)]
struct Record {
    thread: String,
    session: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
}

impl Record {
    fn owned(self) -> Owned {
        let session = SessionKey::from(self.session.into_bytes());
        let scope = match self.tenant {
            Some(tenant) => Scope::Tenant(Arc::from(tenant)),
            None => Scope::Session(session.clone()),
        };
        Owned {
            thread: self.thread,
            scope,
            session,
        }
    }

    fn line(thread: &str, scope: &Scope, session: &[u8]) -> Vec<u8> {
        let record = Self {
            thread: thread.to_owned(),
            session: String::from_utf8_lossy(session).into_owned(),
            tenant: scope.tenant().map(str::to_owned),
        };
        jsonl_log::line(&record)
    }
}

/// One record: a thread, the scope that owns it and the session its events went to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    /// The thread id.
    pub thread: String,
    /// Who owns it.
    pub scope: Scope,
    /// The session that created it.
    pub session: SessionKey,
}

/// Appends ownership records.
#[derive(Debug)]
pub struct OwnerLog {
    file: File,
}

impl OwnerLog {
    /// Opens (creating, 0600: thread ids are capabilities) the log at `path` and returns at most `keep` records, the newest, oldest
    /// first; unreadable lines are skipped (a torn last line after a crash is expected). A log
    /// holding more is rewritten with those only, so it never outgrows the table it restores
    /// by more than what one lane life appends.
    pub fn open(path: &Path, keep: usize) -> io::Result<(Self, Vec<Owned>)> {
        let contents = jsonl_log::read::<Record>(path)?;
        let mut records: Vec<Owned> = contents.records.into_iter().map(Record::owned).collect();
        let rewrite = records.len() > keep;
        if rewrite {
            records = newest(records, keep);
            let lines = records
                .iter()
                .map(|owned| Record::line(&owned.thread, &owned.scope, &owned.session));
            jsonl_log::rewrite(path, lines)?;
            log::line(format_args!(
                "{}: kept the newest {} thread owners",
                path.display(),
                records.len()
            ));
        }
        let file = jsonl_log::append_to(path, !rewrite && contents.torn)?;
        Ok((Self { file }, records))
    }

    /// Records that `scope` owns `thread`, created by `session`.
    pub fn append(&mut self, thread: &str, scope: &Scope, session: &[u8]) {
        if let Err(err) = self.file.write_all(&Record::line(thread, scope, session)) {
            log::line(format_args!(
                "cannot record the owner of thread {thread}: {err}"
            ));
        }
    }
}

/// The last record of each of the newest `keep` threads, oldest first.
fn newest(records: Vec<Owned>, keep: usize) -> Vec<Owned> {
    jsonl_log::newest_by(records, keep, |owned| owned.thread.clone(), Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alone(session: &str) -> Scope {
        Scope::Session(SessionKey::from(session.as_bytes()))
    }

    #[test]
    fn records_survive_a_reopen_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owners.jsonl");
        let (mut log, records) = OwnerLog::open(&path, 100).unwrap();
        assert!(records.is_empty());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        log.append("t1", &alone("alice"), b"alice");
        log.append("t2", &Scope::Tenant(Arc::from("acme")), b"acme:b\"ob");
        drop(log);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"thread\":\"t3\",\"sess")
            .unwrap();
        let (mut log, records) = OwnerLog::open(&path, 100).unwrap();
        let pairs: Vec<_> = records
            .iter()
            .map(|owned| {
                (
                    owned.thread.as_str(),
                    owned.scope.clone(),
                    &owned.session[..],
                )
            })
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("t1", alone("alice"), &b"alice"[..]),
                ("t2", Scope::Tenant(Arc::from("acme")), &b"acme:b\"ob"[..]),
            ]
        );
        log.append("t4", &alone("carol"), b"carol");
        drop(log);
        let (_, records) = OwnerLog::open(&path, 100).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].thread, "t4");
    }

    #[test]
    fn lines_from_before_tenants_read_as_the_sessions_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owners.jsonl");
        std::fs::write(&path, "{\"thread\":\"t1\",\"session\":\"s\"}\n").unwrap();
        let (_, records) = OwnerLog::open(&path, 100).unwrap();
        assert_eq!(records[0].scope, alone("s"));
    }

    #[test]
    fn a_log_over_the_bound_is_rewritten_with_the_newest_threads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owners.jsonl");
        let (mut log, _) = OwnerLog::open(&path, 3).unwrap();
        for n in 0..6 {
            log.append(&format!("t{n}"), &alone("s"), b"s");
        }
        drop(log);
        let (mut log, records) = OwnerLog::open(&path, 3).unwrap();
        let threads: Vec<_> = records.iter().map(|owned| owned.thread.as_str()).collect();
        assert_eq!(threads, ["t3", "t4", "t5"]);
        log.append("t6", &alone("s"), b"s");
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(!dir.path().join("owners.jsonl.new").exists());
    }
}
