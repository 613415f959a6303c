//! The handshake log: what each session sent in its last answered `initialize`, so a worker that
//! replaced this one (a rolling restart, a restart after a crash) initializes the session again
//! by itself and the client's next request is served instead of refused `Not initialized`.
//!
//! A line is `{"session":"…","params":{…}}`, plus `"tenant":"…"` when the bus named the session's
//! tenant; `params` keeps the `clientInfo` and `capabilities` members of the `initialize` params
//! (what Codex's `InitializeParams` holds). A line without `params` says the worker forgot the
//! session (`--session-idle-sec`), which must then `initialize` again, as it must in the worker
//! that forgot it. The last line of a session wins. The log is bounded like the owner log beside
//! it: a lane that opens a log of more lines than the bound rewrites it with the newest sessions
//! only. Written 0600: the params are the client's.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use codex_bus_worker_io::log;

use super::jsonl_log;
use super::sessions::SessionKey;

/// The members of `initialize`'s params that are kept: the rest of a client's params is
/// unknown to Codex 0.169.0, and keeping only these bounds a record by what clients really send.
const KEPT_PARAMS: &[&str] = &["clientInfo", "capabilities"];

/// A record's params beyond this many bytes are not kept (the session then gets
/// `Not initialized` after a restart, as before the log existed): a line is read whole at every
/// lane start, so a client must not be able to make it arbitrarily large.
const MAX_PARAMS_BYTES: usize = 64 * 1024;

/// What a session sent in its last answered `initialize`, and the tenant it was sent under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHandshake {
    /// The tenant the bus named on the `initialize` (`None`: no `auth`, no tenant).
    pub tenant: Option<Arc<str>>,
    /// The params' `clientInfo` and `capabilities` members (a JSON object).
    pub params: Map<String, Value>,
}

impl ClientHandshake {
    /// The handshake of an `initialize` with `params` sent under `tenant`; `None` when the kept
    /// members are over [`MAX_PARAMS_BYTES`] (params that are not an object keep nothing).
    pub fn new(params: Option<&RawValue>, tenant: Option<&str>) -> Option<Self> {
        let mut kept = match params.and_then(|raw| serde_json::from_str(raw.get()).ok()) {
            Some(Value::Object(params)) => params,
            _ => Map::new(),
        };
        kept.retain(|key, _| KEPT_PARAMS.contains(&key.as_str()));
        let size = serde_json::to_vec(&kept).map_or(usize::MAX, |bytes| bytes.len());
        (size <= MAX_PARAMS_BYTES).then(|| Self {
            tenant: tenant.map(Arc::from),
            params: kept,
        })
    }

    /// The notification methods the session opted out of
    /// (`capabilities.optOutNotificationMethods`).
    pub fn opt_outs(&self) -> HashSet<String> {
        opt_outs(Some(&Value::Object(self.params.clone())))
    }
}

/// The `capabilities.optOutNotificationMethods` of `initialize` params; empty when absent or
/// malformed (Codex ignores what it cannot read there too).
pub fn opt_outs(params: Option<&Value>) -> HashSet<String> {
    params
        .and_then(|params| params.pointer("/capabilities/optOutNotificationMethods"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|method| method.as_str().map(str::to_owned))
        .collect()
}

#[derive(Serialize, Deserialize)]
struct Record {
    session: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    params: Option<Map<String, Value>>,
}

impl Record {
    fn line(session: &[u8], handshake: Option<&ClientHandshake>) -> Vec<u8> {
        let record = Self {
            session: String::from_utf8_lossy(session).into_owned(),
            tenant: handshake.and_then(|handshake| handshake.tenant.as_deref().map(str::to_owned)),
            params: handshake.map(|handshake| handshake.params.clone()),
        };
        jsonl_log::line(&record)
    }
}

/// Appends handshake records; rewrites the log with the newest sessions once it holds more than
/// twice the bound of lines, so a long-lived worker's log stays bounded too (a session that
/// alternates two `initialize`s appends a line, of up to 64 KiB, at each).
#[derive(Debug)]
pub struct HandshakeLog {
    file: File,
    path: PathBuf,
    keep: usize,
    /// Lines in the file (as read at open, plus those appended since).
    lines: usize,
}

impl HandshakeLog {
    /// Opens (creating, 0600) the log at `path` and returns the remembered handshakes of at most
    /// `keep` sessions, the most recently written, oldest first; unreadable lines are skipped
    /// with a warning (a torn last line after a crash is expected). A log of more than `keep`
    /// lines is rewritten with those only.
    ///
    /// # Errors
    ///
    /// Reading the log, or creating, rewriting or opening it for appending, failed.
    pub fn open(
        path: &Path,
        keep: usize,
    ) -> io::Result<(Self, Vec<(SessionKey, ClientHandshake)>)> {
        let contents = jsonl_log::read::<Record>(path)?;
        let latest = contents.records.into_iter().map(|record| {
            let handshake = record.params.map(|params| ClientHandshake {
                tenant: record.tenant.map(Arc::from),
                params,
            });
            (SessionKey::from(record.session.into_bytes()), handshake)
        });
        let records = newest(latest.collect(), keep);
        let rewrite = contents.lines > keep;
        let lines = if rewrite {
            records.len()
        } else {
            contents.lines
        };
        if rewrite {
            let lines = records
                .iter()
                .map(|(session, handshake)| Record::line(session, Some(handshake)));
            jsonl_log::rewrite(path, lines)?;
            log::line(format_args!(
                "{}: kept the handshakes of the newest {} sessions",
                path.display(),
                records.len()
            ));
        }
        let file = jsonl_log::append_to(path, !rewrite && contents.torn)?;
        let log = Self {
            file,
            path: path.to_owned(),
            keep,
            lines,
        };
        Ok((log, records))
    }

    /// Records `session`'s handshake, or with `None` that the session was forgotten. A failed
    /// write is logged: the session then needs `initialize` after a restart, as before.
    pub fn append(&mut self, session: &[u8], handshake: Option<&ClientHandshake>) {
        if let Err(err) = self.file.write_all(&Record::line(session, handshake)) {
            log::line(format_args!(
                "cannot record the handshake of session {}: {err}",
                String::from_utf8_lossy(session)
            ));
            return;
        }
        self.lines += 1;
        if self.lines > self.keep.saturating_mul(2) {
            // Opening a log of more lines than the bound rewrites it with the newest sessions.
            match Self::open(&self.path, self.keep) {
                Ok((log, _)) => *self = log,
                Err(err) => log::line(format_args!(
                    "cannot rewrite {}: {err}",
                    self.path.display()
                )),
            }
        }
    }
}

/// The live handshakes of the `keep` sessions written last, oldest first: the last record of each
/// session wins, and a forgotten session has none.
fn newest(
    records: Vec<(SessionKey, Option<ClientHandshake>)>,
    keep: usize,
) -> Vec<(SessionKey, ClientHandshake)> {
    jsonl_log::newest_by(
        records,
        keep,
        |(session, _)| session.clone(),
        |(session, handshake)| handshake.map(|handshake| (session, handshake)),
    )
}

/// The handshakes the bridge can initialize sessions from, bounded like the log: past `keep`
/// sessions the one remembered longest ago is dropped.
#[derive(Debug)]
pub struct Remembered {
    /// Each session's handshake, with the order it was remembered in.
    map: HashMap<SessionKey, (u64, ClientHandshake)>,
    next: u64,
    keep: usize,
}

impl Remembered {
    /// Remembers nothing yet; holds at most `keep` sessions.
    pub fn new(keep: usize) -> Self {
        Self {
            map: HashMap::new(),
            next: 0,
            keep,
        }
    }

    /// Remembers `session`'s latest handshake; returns whether it differs from the one
    /// remembered (only then is it worth a line in the log: a TUI initializes again on every
    /// reconnection).
    pub fn remember(&mut self, session: &SessionKey, handshake: ClientHandshake) -> bool {
        let changed = self
            .map
            .get(session)
            .is_none_or(|(_, known)| *known != handshake);
        self.map.insert(session.clone(), (self.next, handshake));
        self.next += 1;
        if self.map.len() > self.keep {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (order, _))| *order)
                .map(|(session, _)| session.clone());
            if let Some(oldest) = oldest {
                self.map.remove(&oldest);
            }
        }
        changed
    }

    /// Forgets `session`'s handshake; returns whether there was one.
    pub fn forget(&mut self, session: &[u8]) -> bool {
        self.map.remove(session).is_some()
    }

    /// `session`'s handshake, if it was sent under `tenant`: a session key is tenant-prefixed by
    /// the bus when `auth` is on, and the tenant must match too, so one tenant's record never
    /// initializes another's session.
    pub fn get(&self, session: &[u8], tenant: Option<&str>) -> Option<&ClientHandshake> {
        self.map
            .get(session)
            .map(|(_, handshake)| handshake)
            .filter(|handshake| handshake.tenant.as_deref() == tenant)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn handshake(tenant: Option<&str>, params: &str) -> ClientHandshake {
        let raw = RawValue::from_string(params.to_owned()).unwrap();
        ClientHandshake::new(Some(&raw), tenant).unwrap()
    }

    fn key(session: &str) -> SessionKey {
        SessionKey::from(session.as_bytes())
    }

    #[test]
    fn only_client_info_and_capabilities_are_kept_and_opt_outs_read_from_them() {
        let kept = handshake(
            None,
            r#"{"clientInfo":{"name":"ide","version":"2"},"capabilities":{"optOutNotificationMethods":["a","b"]},"other":1}"#,
        );
        assert_eq!(
            Value::Object(kept.params.clone()),
            serde_json::json!({"clientInfo":{"name":"ide","version":"2"},"capabilities":{"optOutNotificationMethods":["a","b"]}})
        );
        assert_eq!(kept.opt_outs(), HashSet::from(["a".into(), "b".into()]));
        assert!(ClientHandshake::new(None, None).unwrap().params.is_empty());
        let huge = format!(
            r#"{{"clientInfo":{{"name":"{}"}}}}"#,
            "x".repeat(MAX_PARAMS_BYTES)
        );
        let raw = RawValue::from_string(huge).unwrap();
        assert_eq!(ClientHandshake::new(Some(&raw), None), None);
    }

    #[test]
    fn records_survive_a_reopen_the_last_wins_and_bad_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handshakes.jsonl");
        let (mut log, records) = HandshakeLog::open(&path, 100).unwrap();
        assert!(records.is_empty());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let first = handshake(None, r#"{"clientInfo":{"name":"a","version":"1"}}"#);
        let second = handshake(None, r#"{"clientInfo":{"name":"a","version":"2"}}"#);
        let acme = handshake(Some("acme"), r#"{"clientInfo":{"name":"b","version":"1"}}"#);
        log.append(b"alice", Some(&first));
        log.append(b"acme:b\"ob", Some(&acme));
        log.append(b"carol", Some(&first));
        log.append(b"alice", Some(&second));
        log.append(b"carol", None);
        drop(log);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"not json\n{\"session\":\"dave\",\"par")
            .unwrap();
        drop(file);
        let (mut log, records) = HandshakeLog::open(&path, 100).unwrap();
        assert_eq!(
            records,
            vec![(key("acme:b\"ob"), acme.clone()), (key("alice"), second)]
        );
        log.append(b"erin", Some(&first));
        drop(log);
        let (_, records) = HandshakeLog::open(&path, 100).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2], (key("erin"), first));
    }

    #[test]
    fn a_log_over_the_bound_is_rewritten_with_the_newest_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handshakes.jsonl");
        let (mut log, _) = HandshakeLog::open(&path, 3).unwrap();
        let shake = handshake(None, r#"{"clientInfo":{"name":"c","version":"1"}}"#);
        for n in 0..6 {
            log.append(format!("s{n}").as_bytes(), Some(&shake));
        }
        log.append(b"s5", None);
        drop(log);
        let (mut log, records) = HandshakeLog::open(&path, 3).unwrap();
        let sessions: Vec<_> = records.iter().map(|(session, _)| &session[..]).collect();
        assert_eq!(sessions, [&b"s2"[..], b"s3", b"s4"]);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        log.append(b"s6", Some(&shake));
        drop(log);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(!dir.path().join("handshakes.jsonl.new").exists());
    }

    #[test]
    fn a_session_alternating_its_handshake_does_not_grow_the_log_without_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handshakes.jsonl");
        let (mut log, _) = HandshakeLog::open(&path, 3).unwrap();
        let one = handshake(None, r#"{"clientInfo":{"name":"c","version":"1"}}"#);
        let two = handshake(None, r#"{"clientInfo":{"name":"c","version":"2"}}"#);
        for n in 0..1000 {
            log.append(b"s", Some(if n % 2 == 0 { &one } else { &two }));
            log.append(format!("t{}", n % 5).as_bytes(), Some(&one));
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.lines().count() <= 6, "{} lines", text.lines().count());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(log);
        let (_, records) = HandshakeLog::open(&path, 3).unwrap();
        let sessions: Vec<_> = records.iter().map(|(session, _)| &session[..]).collect();
        assert_eq!(sessions, [&b"t3"[..], b"s", b"t4"]);
        assert_eq!(records[1].1, two);
    }

    #[test]
    fn a_handshake_initializes_only_its_own_tenants_session() {
        let mut remembered = Remembered::new(2);
        let acme = handshake(Some("acme"), r#"{"clientInfo":{"name":"c","version":"1"}}"#);
        assert!(remembered.remember(&key("acme:s"), acme.clone()));
        assert!(
            !remembered.remember(&key("acme:s"), acme.clone()),
            "unchanged"
        );
        assert_eq!(remembered.get(b"acme:s", Some("acme")), Some(&acme));
        assert_eq!(remembered.get(b"acme:s", Some("other")), None);
        assert_eq!(remembered.get(b"acme:s", None), None);
        assert_eq!(remembered.get(b"other:s", Some("acme")), None);
        let plain = handshake(None, "{}");
        assert!(remembered.remember(&key("s"), plain.clone()));
        assert_eq!(remembered.get(b"s", None), Some(&plain));
        assert_eq!(remembered.get(b"s", Some("acme")), None);
        // A third session pushes out the one remembered longest ago.
        assert!(remembered.remember(&key("t"), plain.clone()));
        assert_eq!(remembered.get(b"acme:s", Some("acme")), None);
        assert!(remembered.forget(b"s"));
        assert!(!remembered.forget(b"s"));
        assert_eq!(remembered.get(b"s", None), None);
    }
}
