//! What the fake child keeps in `CODEX_HOME`, laid out as Codex 0.169.0 lays it out, so that a
//! thread moves to another home by copying one file, as it does with Codex
//! (docs/thread-resume.md):
//!
//! - `sessions/YYYY/MM/DD/rollout-<YYYY-MM-DDThh-mm-ss>-<id>.jsonl` per persistent thread (UTC
//!   creation time): a `session_meta` line, then one `turn` line per finished turn. The rollout
//!   is the thread's only record: resume, read and list all read it, so a copied file is all
//!   another home needs.
//! - `thread-writer-locks/<id>.lock` per thread this process writes, holding its pid, under an
//!   exclusive `flock` kept for the life of the process: a second process cannot drive the same
//!   thread, and a killed one leaves nothing to clean up (the kernel drops its locks).
//! - `mock-app-server/counter`: the fake's own id counter, so item ids never repeat across
//!   restarts.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use codex_bus_worker_io::log;

use super::shapes::{ThreadMeta, CLI_VERSION, PREVIEW_CHARS};
use super::utc::Utc;
use super::{no_rollout, RpcError};

/// Ids reserved per counter write, so the counter file is written once per block.
const ID_BLOCK: u64 = 1000;

/// The fake's own state directory in `CODEX_HOME` (Codex has no such thing).
const STATE_DIR: &str = "mock-app-server";

/// Where live rollouts are, as in Codex.
const SESSIONS_DIR: &str = "sessions";

/// Where archived rollouts are, as in Codex: their threads cannot be resumed.
const ARCHIVED_DIR: &str = "archived_sessions";

/// Where the writer locks are, as in Codex.
const LOCKS_DIR: &str = "thread-writer-locks";

/// Length of the `YYYY-MM-DDThh-mm-ss` stamp in a rollout's file name.
const FILE_STAMP_LEN: usize = 19;

/// A thread as its rollout records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Its metadata; `preview` and `updated_s` come from its turns.
    pub meta: ThreadMeta,
    /// The rollout file.
    pub path: PathBuf,
    /// Its finished turns, oldest first, as `Turn` objects with their items.
    pub turns: Vec<Value>,
}

/// A thread this process writes: its rollout and the lock that makes it the only writer.
#[derive(Debug)]
struct Writer {
    rollout: PathBuf,
    /// Never read: holding it is the point. Dropped (unlocked) only with the store.
    _lock: Flock<File>,
}

/// The fake child's persistent threads and id counter in one `CODEX_HOME`.
#[derive(Debug)]
pub struct Store {
    home: PathBuf,
    reserved: u64,
    /// The threads this process has created or resumed; kept after `thread/unsubscribe`, since
    /// Codex releases a writer only when the process ends.
    writers: HashMap<String, Writer>,
}

/// The first line of a rollout: Codex's `session_meta` fields the fake uses, plus `model`, which
/// Codex records in later `turn_context` lines.
#[derive(Debug, Serialize, Deserialize)]
struct SessionMeta {
    id: String,
    timestamp: String,
    cwd: String,
    originator: String,
    cli_version: String,
    source: String,
    model_provider: String,
    model: String,
    forked_from_id: Option<String>,
}

/// A rollout line: `{"timestamp":…,"type":…,"payload":…}`, as Codex writes them.
#[derive(Debug, Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    payload: Value,
}

impl Store {
    /// Opens (creating) the store of `CODEX_HOME` `home`; returns it and the first free id.
    pub fn open(home: PathBuf) -> io::Result<(Self, u64)> {
        fs::create_dir_all(home.join(STATE_DIR))?;
        let first = fs::read_to_string(home.join(STATE_DIR).join("counter"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(1);
        let mut store = Self {
            home,
            reserved: first,
            writers: HashMap::new(),
        };
        store.reserve(first)?;
        Ok((store, first))
    }

    /// Called with each id handed out; persists a new block when the reserved one runs out.
    pub fn used(&mut self, id: u64) {
        if id >= self.reserved {
            if let Err(err) = self.reserve(id + 1) {
                log::line(format_args!("cannot persist the id counter: {err}"));
            }
        }
    }

    fn reserve(&mut self, from: u64) -> io::Result<()> {
        self.reserved = from + ID_BLOCK;
        fs::write(
            self.home.join(STATE_DIR).join("counter"),
            self.reserved.to_string(),
        )
    }

    /// Starts the rollout of the new thread `id` (its `session_meta` line) and takes its writer
    /// lock.
    pub fn create(&mut self, id: &str, meta: &ThreadMeta) -> io::Result<()> {
        let lock = self
            .lock(id)?
            .ok_or_else(|| io::Error::other(format!("thread {id} already has a writer")))?;
        let path = self.home.join(rollout_path(id, meta.created_s));
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let created_ms = meta.created_s * 1000;
        let payload = SessionMeta {
            id: id.to_owned(),
            timestamp: Utc::from_ms(created_ms).iso(),
            cwd: meta.cwd.clone(),
            originator: "codex-mock".to_owned(),
            cli_version: CLI_VERSION.to_owned(),
            source: "vscode".to_owned(),
            model_provider: "mock_provider".to_owned(),
            model: meta.model.clone(),
            forked_from_id: meta.forked_from.clone(),
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all(line(created_ms, "session_meta", &json!(payload)).as_bytes())?;
        self.writers.insert(
            id.to_owned(),
            Writer {
                rollout: path,
                _lock: lock,
            },
        );
        Ok(())
    }

    /// Appends the finished `turn` (a `Turn` object with its items) to the rollout of `id`, a
    /// thread this process writes: one whole line per write, so a copy taken at any moment has
    /// every earlier turn intact.
    pub fn append_turn(&self, id: &str, at_ms: u64, turn: &Value) -> io::Result<()> {
        let writer = self
            .writers
            .get(id)
            .ok_or_else(|| io::Error::other(format!("thread {id} is not written here")))?;
        let mut file = OpenOptions::new().append(true).open(&writer.rollout)?;
        file.write_all(line(at_ms, "turn", turn).as_bytes())?;
        file.flush()
    }

    /// Loads thread `id` for writing, as Codex's `thread/resume` does: finds its rollout, takes
    /// its writer lock (unless this process holds it already) and reads it.
    pub fn claim(&mut self, id: &str) -> Result<Rollout, RpcError> {
        if let Some(writer) = self.writers.get(id) {
            return read_rollout(id, &writer.rollout);
        }
        let path = self.find(id)?;
        let lock = match self.lock(id) {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                return Err(RpcError::invalid(format!(
                    "thread {id} already has an active writer"
                )))
            }
            Err(err) => return Err(internal(format!("cannot lock thread {id}: {err}"))),
        };
        let rollout = read_rollout(id, &path)?;
        self.writers.insert(
            id.to_owned(),
            Writer {
                rollout: path,
                _lock: lock,
            },
        );
        Ok(rollout)
    }

    /// Reads thread `id` without writing it (`thread/read`, `thread/fork`, the history of a
    /// loaded thread).
    pub fn read(&self, id: &str) -> Result<Rollout, RpcError> {
        match self.writers.get(id) {
            Some(writer) => read_rollout(id, &writer.rollout),
            None => read_rollout(id, &self.find(id)?),
        }
    }

    /// The rollout of `id` if this process writes it.
    pub fn path(&self, id: &str) -> Option<&Path> {
        self.writers.get(id).map(|writer| writer.rollout.as_path())
    }

    /// Every readable rollout under `sessions/`, by thread id.
    pub fn list(&self) -> BTreeMap<String, Rollout> {
        rollouts(&self.home.join(SESSIONS_DIR))
            .into_iter()
            .filter_map(|(id, path)| {
                let rollout = read_rollout(&id, &path).ok()?;
                Some((id, rollout))
            })
            .collect()
    }

    /// The rollout of `id` under `sessions/`; Codex's errors when there is none.
    fn find(&self, id: &str) -> Result<PathBuf, RpcError> {
        let named = |dir: &str| {
            rollouts(&self.home.join(dir))
                .into_iter()
                .find(|(found, _)| found == id)
                .map(|(_, path)| path)
        };
        if let Some(path) = named(SESSIONS_DIR) {
            return Ok(path);
        }
        if named(ARCHIVED_DIR).is_some() {
            return Err(RpcError::invalid(format!("thread {id} is archived")));
        }
        Err(no_rollout(id))
    }

    /// Takes the writer lock of `id`; `Ok(None)` when another process holds it. The file keeps
    /// the holder's pid for people looking at a stuck thread; the lock, not the pid, decides.
    fn lock(&self, id: &str) -> io::Result<Option<Flock<File>>> {
        let dir = self.home.join(LOCKS_DIR);
        fs::create_dir_all(&dir)?;
        // Not truncated on open: the pid in it is the holder's until we hold the lock.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(format!("{id}.lock")))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, errno)) => return Err(errno.into()),
        };
        lock.set_len(0)?;
        writeln!(&*lock, "{}", std::process::id())?;
        Ok(Some(lock))
    }
}

/// Where the rollout of thread `id` created at `created_s` lives, relative to `CODEX_HOME`.
pub fn rollout_path(id: &str, created_s: u64) -> PathBuf {
    let at = Utc::from_ms(created_s * 1000);
    PathBuf::from(format!(
        "{SESSIONS_DIR}/{:04}/{:02}/{:02}/rollout-{}-{id}.jsonl",
        at.year,
        at.month,
        at.day,
        at.file_stamp()
    ))
}

/// The thread id in a rollout's file name `rollout-<YYYY-MM-DDThh-mm-ss>-<id>.jsonl`. Taken by
/// position, not by suffix, since ids contain `-` and one id may end another.
fn rollout_id(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("rollout-")?.strip_suffix(".jsonl")?;
    let id = rest.get(FILE_STAMP_LEN + 1..)?;
    (rest.as_bytes().get(FILE_STAMP_LEN) == Some(&b'-') && !id.is_empty()).then_some(id)
}

/// Every rollout file under `dir`, at any depth (Codex nests `sessions/` by date and keeps
/// `archived_sessions/` flat), as (thread id, path).
fn rollouts(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                dirs.push(path);
            } else if let Some(id) = entry.file_name().to_str().and_then(rollout_id) {
                found.push((id.to_owned(), path));
            }
        }
    }
    found
}

/// Reads the rollout of `id` at `path`. Lines the fake does not write are skipped, and so is a
/// torn last line (a writer killed mid-write), as Codex skips what it cannot parse.
fn read_rollout(id: &str, path: &Path) -> Result<Rollout, RpcError> {
    let unreadable =
        |why: String| internal(format!("cannot read rollout {}: {why}", path.display()));
    let file = File::open(path).map_err(|err| unreadable(err.to_string()))?;
    let mut lines = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|text| serde_json::from_str::<Line>(&text).ok());
    let meta = lines
        .next()
        .filter(|first| first.kind == "session_meta")
        .and_then(|first| serde_json::from_value::<SessionMeta>(first.payload).ok())
        .filter(|meta| meta.id == id)
        .ok_or_else(|| unreadable("no session_meta line of this thread".to_owned()))?;
    let turns: Vec<Value> = lines
        .filter(|line| line.kind == "turn")
        .map(|line| line.payload)
        .collect();
    let created_s = Utc::parse_iso_s(&meta.timestamp).unwrap_or(0);
    let preview = turns
        .first()
        .and_then(|turn| turn["items"].as_array())
        .and_then(|items| items.iter().find(|item| item["type"] == "userMessage"))
        .and_then(|item| item["content"][0]["text"].as_str())
        .map(|text| text.chars().take(PREVIEW_CHARS).collect())
        .unwrap_or_default();
    let updated_s = turns
        .last()
        .and_then(|turn| turn["completedAt"].as_u64())
        .unwrap_or(created_s);
    Ok(Rollout {
        meta: ThreadMeta {
            ephemeral: false,
            cwd: meta.cwd,
            model: meta.model,
            created_s,
            updated_s,
            preview,
            forked_from: meta.forked_from_id,
        },
        path: path.to_path_buf(),
        turns,
    })
}

/// One rollout line, newline included.
fn line(at_ms: u64, kind: &str, payload: &Value) -> String {
    let mut text =
        json!({"timestamp": Utc::from_ms(at_ms).iso(), "type": kind, "payload": payload})
            .to_string();
    text.push('\n');
    text
}

/// An internal error: the fake's home is broken, not the request.
fn internal(message: String) -> RpcError {
    RpcError {
        code: -32603,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ThreadMeta {
        ThreadMeta {
            ephemeral: false,
            cwd: "/w".into(),
            model: "m".into(),
            created_s: 1_700_000_000,
            updated_s: 1_700_000_000,
            preview: String::new(),
            forked_from: None,
        }
    }

    const ID: &str = "018bcfe5-6800-7000-8000-000000000001";

    #[test]
    fn the_counter_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, first) = Store::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(first, 1);
        store.used(5);
        let (_, first) = Store::open(dir.path().to_path_buf()).unwrap();
        assert!(first > 5, "ids never repeat across processes");
    }

    #[test]
    fn a_rollout_is_named_and_laid_out_as_codex_names_it() {
        assert_eq!(
            rollout_path(ID, 1_700_000_000),
            Path::new(&format!(
                "sessions/2023/11/14/rollout-2023-11-14T22-13-20-{ID}.jsonl"
            ))
        );
        assert_eq!(
            rollout_id(&format!("rollout-2023-11-14T22-13-20-{ID}.jsonl")),
            Some(ID)
        );
        assert_eq!(rollout_id("rollout-2023-11-14T22-13-20.jsonl"), None);
        assert_eq!(rollout_id("notes-2023-11-14T22-13-20-x.jsonl"), None);

        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path().to_path_buf()).unwrap();
        store.create(ID, &meta()).unwrap();
        let path = dir.path().join(rollout_path(ID, 1_700_000_000));
        let turn = json!({"id": "t", "status": "completed", "completedAt": 1_700_000_009_u64,
            "items": [{"type": "userMessage", "id": "i", "content": [{"type": "text", "text": "hello"}]}]});
        store.append_turn(ID, 1_700_000_009_000, &turn).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["type"], "session_meta");
        assert_eq!(lines[0]["timestamp"], "2023-11-14T22:13:20.000Z");
        assert_eq!(lines[0]["payload"]["id"], ID);
        assert_eq!(lines[0]["payload"]["cwd"], "/w");
        assert_eq!(lines[1]["type"], "turn");
        assert_eq!(lines[1]["payload"], turn);
        let lock = dir.path().join(LOCKS_DIR).join(format!("{ID}.lock"));
        assert_eq!(
            fs::read_to_string(lock).unwrap().trim(),
            std::process::id().to_string()
        );

        let read = store.read(ID).unwrap();
        assert_eq!(read.path, path);
        assert_eq!(read.turns, [turn]);
        assert_eq!(read.meta.preview, "hello");
        assert_eq!(read.meta.updated_s, 1_700_000_009);
        assert_eq!(store.list().keys().collect::<Vec<_>>(), [ID]);
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path().to_path_buf()).unwrap();
        store.create(ID, &meta()).unwrap();
        let path = dir.path().join(rollout_path(ID, 1_700_000_000));
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"timestamp":"x","type":"turn","payl"#)
            .unwrap();
        assert_eq!(store.read(ID).unwrap().turns, Vec::<Value>::new());
    }

    #[test]
    fn a_second_store_on_one_home_is_refused_the_writer_lock_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut first, _) = Store::open(dir.path().to_path_buf()).unwrap();
        first.create(ID, &meta()).unwrap();
        // flock locks belong to an open file, so a second store in one process contends as a
        // second process would.
        let (mut second, _) = Store::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(
            second.claim(ID).unwrap_err(),
            RpcError::invalid(format!("thread {ID} already has an active writer"))
        );
        assert!(second.read(ID).is_ok(), "reading needs no lock");
        drop(first);
        assert!(second.claim(ID).is_ok());
        assert!(second.claim(ID).is_ok(), "the holder may claim again");
    }

    #[test]
    fn missing_and_archived_rollouts_are_refused_as_codex_refuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(
            store.claim(ID).unwrap_err(),
            RpcError::invalid(format!("no rollout found for thread id {ID}"))
        );
        assert_eq!(store.claim("../x").unwrap_err().code, -32600);
        let archived = dir.path().join(ARCHIVED_DIR);
        fs::create_dir_all(&archived).unwrap();
        fs::write(
            archived.join(format!("rollout-2023-11-14T22-13-20-{ID}.jsonl")),
            "",
        )
        .unwrap();
        assert_eq!(
            store.claim(ID).unwrap_err(),
            RpcError::invalid(format!("thread {ID} is archived"))
        );
        assert!(
            !dir.path()
                .join(LOCKS_DIR)
                .join(format!("{ID}.lock"))
                .exists(),
            "a refused resume takes no lock"
        );
    }
}
