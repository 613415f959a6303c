//! The audit trail (config `audit.path`): one JSON line per security event, appended to a file
//! that security reviews and SIEM pipelines read. The events and their fields are documented in
//! docs/operations.md ("Audit trail"); this module is the one place that writes them.
//!
//! A line is written with one `write(2)` on a file opened with `O_APPEND`, so lines never
//! interleave, and a rotated file is let go on SIGHUP ([`Audit::reopen`]); a reload may point it
//! at another file, or turn it on or off ([`Audit::retarget`]). Secrets never reach
//! it: an event carries who (tenant, subject), what and where, never a credential. A line that
//! cannot be written is counted (`codex_bus_audit_write_errors_total`) and warned about once a
//! second; the daemon keeps serving.
//!
//! A leaf: imports nothing of the daemon.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// At most one warning about failed audit writes per this long.
const WARN_PERIOD: Duration = Duration::from_secs(1);

/// One security event. Serialized as `{"ts": <RFC 3339 UTC>, "event": <snake_case name>, …fields}`.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    /// A connection authenticated: its principal is fixed from now on.
    Authenticated {
        /// `tcp`, `unix`, `stdio` or `websocket`.
        transport: &'a str,
        /// The peer's address, when it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        peer: Option<&'a str>,
        /// How: `token`, `jwt`, `peer_credentials` or `local`.
        method: &'a str,
        /// The principal's tenant.
        tenant: &'a str,
        /// The principal's subject.
        subject: &'a str,
    },
    /// A credential was refused (never logged itself), or none was presented. At most one line
    /// per listener per second; `suppressed` counts the refusals since the previous line.
    AuthenticationRefused {
        /// `tcp`, `unix`, `stdio` or `websocket`.
        transport: &'a str,
        /// The peer's address, when it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        peer: Option<&'a str>,
        /// Why, e.g. `unknown token`, `expired jwt`, `handshake timeout`.
        reason: &'a str,
        /// Refusals on the listener not written since the previous line.
        suppressed: u64,
    },
    /// A session entered the session table (first message naming it).
    SessionCreated {
        /// The tenant that owns it.
        tenant: &'a str,
        /// The principal whose message created it.
        subject: &'a str,
        /// The session id as the client sent it (lossy UTF-8).
        session: Cow<'a, str>,
        /// The pool and slot it was placed on.
        pool: &'a str,
        /// The slot number.
        slot: u32,
    },
    /// A session left the table after `limits.session_idle_sec` without a client message.
    SessionExpired {
        /// The tenant that owned it.
        tenant: &'a str,
        /// The session id as its clients sent it (lossy UTF-8).
        session: Cow<'a, str>,
    },
    /// A message tried to name a tenant itself (a top-level `tenant` member) and was refused. At
    /// most one line per tenant per second; `suppressed` counts the refusals since the previous.
    TenantClaimRefused {
        /// The sender's tenant.
        tenant: &'a str,
        /// The sender's subject.
        subject: &'a str,
        /// The tenant's refused claims not written since the previous line.
        suppressed: u64,
    },
    /// A worker's request (e.g. an approval) was forwarded to a client.
    WorkerRequestForwarded {
        /// The session's tenant.
        tenant: &'a str,
        /// The principal of the connection it was sent to.
        subject: &'a str,
        /// The session id as the client knows it (lossy UTF-8).
        session: Cow<'a, str>,
        /// The request's method (lossy UTF-8, as the worker sent it).
        method: Cow<'a, str>,
        /// The pool of the worker that asked.
        pool: &'a str,
        /// Its slot number.
        slot: u32,
        /// The worker's id of the request (its raw JSON token).
        request_id: Cow<'a, str>,
    },
    /// A client answered a worker's request; the answer went to the worker that asked.
    WorkerRequestAnswered {
        /// The answering principal's tenant.
        tenant: &'a str,
        /// The answering principal's subject.
        subject: &'a str,
        /// The pool of the worker that asked.
        pool: &'a str,
        /// Its slot number.
        slot: u32,
        /// The worker's id of the request (its raw JSON token).
        request_id: Cow<'a, str>,
    },
    /// A request or connection was refused for the tenant's rate or a quota. At most one line per
    /// tenant per second; `suppressed` counts the refusals since the previous line.
    QuotaRefused {
        /// The tenant.
        tenant: &'a str,
        /// The principal refused.
        subject: &'a str,
        /// `rate_limited` or `quota_exceeded`.
        reason: &'a str,
        /// The quota reached (`sessions`, `connections`, `in_flight`, `tenants`), if one was.
        #[serde(skip_serializing_if = "Option::is_none")]
        quota: Option<&'a str>,
        /// Refusals of this tenant not written since the previous line.
        suppressed: u64,
    },
    /// A reload (`reload`) or a rolling restart of one pool (`restart`) ended.
    ConfigChanged {
        /// `reload` or `restart`.
        action: &'a str,
        /// Who asked: `sighup` or `admin` (the bearer of `metrics.bearer_sha256`).
        by: &'a str,
        /// `applied`, `unchanged`, `rejected`, `failed`, `busy` or `unknown_pool`.
        result: &'a str,
        /// Why it was rejected or failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        /// What changed, one line each.
        changes: &'a [String],
    },
}

/// One line: the time, then the event's own members.
#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    #[serde(flatten)]
    event: &'a Event<'a>,
}

/// The audit trail: off, or a file that lines are appended to. A reload may move it to another
/// file, turn it on or off ([`Audit::retarget`]).
#[derive(Debug, Default)]
pub struct Audit {
    /// Whether a file is open, read without taking the lock: callers skip building an event when
    /// the trail is off, which is the common case.
    on: AtomicBool,
    /// The file lines go to, `None` while off.
    sink: Mutex<Option<Sink>>,
    /// When a failed write was last warned about, and how many failed since.
    failures: Mutex<(Option<Instant>, u64)>,
}

#[derive(Debug)]
struct Sink {
    path: PathBuf,
    file: File,
}

impl Audit {
    /// An audit trail that records nothing (no `audit.path`).
    pub fn off() -> Self {
        Audit::default()
    }

    /// Opens (creating with mode 0600) the file at `path` for appending.
    ///
    /// # Errors
    ///
    /// The `open(2)` error, e.g. a missing directory or no permission.
    pub fn open(path: &Path) -> io::Result<Self> {
        let audit = Audit::off();
        audit.retarget(Some(path))?;
        Ok(audit)
    }

    /// Whether events are recorded: callers skip building an event when they are not.
    pub fn enabled(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Closes the file and opens the same path again (after a rotation moved it away). On failure
    /// the old file stays in use.
    ///
    /// # Errors
    ///
    /// The `open(2)` error.
    pub fn reopen(&self) -> io::Result<()> {
        let mut sink = self.sink();
        let Some(sink) = sink.as_mut() else {
            return Ok(());
        };
        sink.file = open(&sink.path)?;
        Ok(())
    }

    /// Appends from now on to the file at `path` (opened, or created with mode 0600), or stops
    /// recording with `None`: what a reload that changed `audit.path` does. The next line goes to
    /// the new file; none is lost or split between the two. On failure the trail stays as it was
    /// (the old file, or off).
    ///
    /// # Errors
    ///
    /// The `open(2)` error of `path`.
    pub fn retarget(&self, path: Option<&Path>) -> io::Result<()> {
        let next = match path {
            Some(path) => Some(Sink {
                path: path.to_owned(),
                file: open(path)?,
            }),
            None => None,
        };
        let mut sink = self.sink();
        self.on.store(next.is_some(), Ordering::Relaxed);
        *sink = next;
        Ok(())
    }

    /// Appends `event` as one line, stamped with the current time. Returns whether it was written.
    pub fn record(&self, event: &Event<'_>) -> bool {
        if !self.enabled() {
            return false;
        }
        let ts = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        let mut line = match serde_json::to_vec(&Line { ts, event }) {
            Ok(line) => line,
            Err(error) => return self.failed(self.path().as_deref(), &io::Error::other(error)),
        };
        line.push(b'\n');
        let mut sink = self.sink();
        // Turned off since the check above.
        let Some(sink) = sink.as_mut() else {
            return false;
        };
        match sink.file.write_all(&line) {
            Ok(()) => true,
            Err(error) => self.failed(Some(&sink.path), &error),
        }
    }

    /// The file's path, if the trail is on.
    pub fn path(&self) -> Option<PathBuf> {
        self.sink().as_ref().map(|sink| sink.path.clone())
    }

    /// The sink, locked; a panic while it was held left nothing half-done worth refusing.
    fn sink(&self) -> MutexGuard<'_, Option<Sink>> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a line not written to `path` and warns, at most once per [`WARN_PERIOD`]. Returns
    /// false.
    fn failed(&self, path: Option<&Path>, error: &io::Error) -> bool {
        metrics::counter!("codex_bus_audit_write_errors_total").increment(1);
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.1 += 1;
        let now = Instant::now();
        if failures
            .0
            .is_none_or(|last| now.saturating_duration_since(last) >= WARN_PERIOD)
        {
            let path = path.map(Path::display);
            tracing::warn!(path = ?path, %error, failed = failures.1, "audit line not written");
            *failures = (Some(now), 0);
        }
        false
    }
}

/// Opens `path` for appending, creating it readable by the daemon's user only.
fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn events_are_json_lines_and_a_rotated_file_is_let_go_on_reopen() {
        let dir = std::env::temp_dir().join(format!("audit-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        let audit = Audit::open(&path).unwrap();
        assert!(audit.record(&Event::SessionCreated {
            tenant: "a",
            subject: "ci",
            session: "s\"1".into(),
            pool: "p",
            slot: 3,
        }));
        let got = lines(&path);
        assert_eq!(got[0]["event"], "session_created");
        assert_eq!(got[0]["session"], "s\"1");
        assert_eq!(got[0]["slot"], 3);
        let ts = got[0]["ts"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
        let rotated = dir.join("audit.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        audit.record(&Event::TenantClaimRefused {
            tenant: "b",
            subject: "x",
            suppressed: 0,
        });
        audit.reopen().unwrap();
        audit.record(&Event::AuthenticationRefused {
            transport: "tcp",
            peer: None,
            reason: "expired",
            suppressed: 0,
        });
        assert_eq!(lines(&rotated).len(), 2, "written to the file it had open");
        let fresh = lines(&path);
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0]["event"], "authentication_refused");
        assert!(fresh[0].get("peer").is_none());
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!Audit::off().record(&Event::TenantClaimRefused {
            tenant: "b",
            subject: "x",
            suppressed: 0,
        }));
    }
    #[test]
    fn a_reload_moves_the_trail_or_turns_it_on_and_off() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        let event = Event::SessionExpired {
            tenant: "t",
            session: "s".into(),
        };
        let audit = Audit::off();
        assert!(!audit.record(&event));
        audit.retarget(Some(&first)).unwrap();
        assert!(audit.enabled() && audit.record(&event));
        assert_eq!(audit.path().as_deref(), Some(first.as_path()));

        let missing = dir.path().join("no/such/dir.jsonl");
        assert!(audit.retarget(Some(&missing)).is_err());
        assert_eq!(audit.path().as_deref(), Some(first.as_path()), "unchanged");

        audit.retarget(Some(&second)).unwrap();
        assert!(audit.record(&event));
        assert_eq!((lines(&first).len(), lines(&second).len()), (1, 1));

        audit.retarget(None).unwrap();
        assert!(!audit.enabled() && !audit.record(&event));
        assert_eq!(audit.path(), None);
        audit.reopen().unwrap();
        assert_eq!(lines(&second).len(), 1);
    }
}
