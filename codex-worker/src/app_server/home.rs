//! The worker slot's state directory: a stable `CODEX_HOME` (so rollouts survive child
//! restarts), the thread-owner log and the handshake log, seeded with the operator's Codex files; with a child per
//! session, one such directory per session (with `auth`, per tenant) under the slot's.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Hex digits of a session's or tenant's directory name: 128 bits of SHA-256, so that no
/// client-chosen session id can be made to share another's directory.
const SESSION_DIR_HEX: usize = 32;

/// Where one worker slot keeps its state.
#[derive(Debug, Clone)]
pub struct SlotDir {
    /// `<state-dir>/<pool>/slot-<n>`.
    pub root: PathBuf,
}

impl SlotDir {
    /// The directory of `slot` in `pool` under `state_dir`; without a slot number (run outside
    /// the bus) the process id keeps concurrent workers apart.
    pub fn new(state_dir: &Path, pool: &str, slot: Option<i64>) -> Self {
        let pool = if pool.is_empty() { "default" } else { pool };
        let slot = slot.map_or_else(
            || format!("pid-{}", std::process::id()),
            |slot| format!("slot-{slot}"),
        );
        Self {
            root: state_dir.join(sanitize(pool)).join(slot),
        }
    }

    /// The directory of the session with routing key `session`, `<root>/sessions/<hash>`: a
    /// session id is client text, so it names the directory only through a hash.
    pub fn session(&self, session: &[u8]) -> Self {
        self.hashed("sessions", session)
    }

    /// The directory of the tenant `tenant`, `<root>/tenants/<hash>`, shared by all of the
    /// tenant's sessions; hashed like a session's, so no name (`..` is a valid tenant name) is
    /// ever a path.
    pub fn tenant(&self, tenant: &str) -> Self {
        self.hashed("tenants", tenant.as_bytes())
    }

    fn hashed(&self, kind: &str, key: &[u8]) -> Self {
        let mut name = String::with_capacity(SESSION_DIR_HEX);
        for byte in &Sha256::digest(key)[..SESSION_DIR_HEX / 2] {
            let _ = write!(name, "{byte:02x}");
        }
        Self {
            root: self.root.join(kind).join(name),
        }
    }

    /// The name of the directory, enough to tell session directories apart in log lines.
    pub fn name(&self) -> String {
        self.root
            .file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
    }

    /// The child's `CODEX_HOME`.
    pub fn codex_home(&self) -> PathBuf {
        self.root.join("codex-home")
    }

    /// The thread-owner log.
    pub fn owner_log(&self) -> PathBuf {
        self.root.join("owners.jsonl")
    }

    /// The handshake log: each session's last `initialize` (see `handshakes`).
    pub fn handshake_log(&self) -> PathBuf {
        self.root.join("handshakes.jsonl")
    }

    /// Creates the directories and copies the regular files of `seed` (e.g. `config.toml`,
    /// `auth.json`) into `CODEX_HOME`, replacing older copies: the seed is the source of truth.
    pub fn prepare(&self, seed: Option<&Path>) -> io::Result<()> {
        let home = self.codex_home();
        fs::create_dir_all(&home)?;
        let Some(seed) = seed else {
            return Ok(());
        };
        for entry in fs::read_dir(seed)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::copy(entry.path(), home.join(entry.file_name()))?;
            }
        }
        Ok(())
    }
}

/// Opens `path` with `options`, creating it readable and writable by the worker's user only
/// (the slot's logs hold client data and thread ids, which are capabilities).
///
/// # Errors
///
/// As [`OpenOptions::open`].
pub fn private(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    options.create(true).mode(0o600).open(path)
}

/// A pool id as one safe path component.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_directories_are_stable_and_safe() {
        let dir = SlotDir::new(Path::new("/s"), "../codex pool", Some(3));
        assert_eq!(dir.root, Path::new("/s/_codex_pool/slot-3"));
        assert_eq!(
            dir.codex_home(),
            Path::new("/s/_codex_pool/slot-3/codex-home")
        );
        let anonymous = SlotDir::new(Path::new("/s"), "", None);
        assert!(anonymous
            .root
            .to_string_lossy()
            .starts_with("/s/default/pid-"));
    }

    #[test]
    fn session_directories_are_stable_hashes_under_the_slot() {
        let slot = SlotDir::new(Path::new("/s"), "p", Some(1));
        let dir = slot.session(b"../../alice");
        assert_eq!(dir.root, slot.session(b"../../alice").root);
        assert_ne!(dir.root, slot.session(b"bob").root);
        assert_eq!(dir.root.parent(), Some(Path::new("/s/p/slot-1/sessions")));
        let name = dir.name();
        assert_eq!(name.len(), SESSION_DIR_HEX);
        assert!(name.bytes().all(|byte| byte.is_ascii_hexdigit()));
        // SHA-256("bob") begins 81b637d8fcd2c6da6359e6963113a117.
        assert_eq!(
            slot.session(b"bob").name(),
            "81b637d8fcd2c6da6359e6963113a117"
        );
        let tenant = slot.tenant("bob");
        assert_eq!(tenant.name(), slot.session(b"bob").name());
        assert_eq!(tenant.root.parent(), Some(Path::new("/s/p/slot-1/tenants")));
        assert_ne!(slot.tenant("..").root, slot.root.join("tenants").join(".."));
    }

    #[test]
    fn prepare_copies_the_seed_files() {
        let state = tempfile::tempdir().unwrap();
        let seed = tempfile::tempdir().unwrap();
        fs::write(seed.path().join("config.toml"), "model = \"m\"\n").unwrap();
        fs::create_dir(seed.path().join("skip")).unwrap();
        let dir = SlotDir::new(state.path(), "p", Some(0));
        dir.prepare(Some(seed.path())).unwrap();
        let copied = fs::read_to_string(dir.codex_home().join("config.toml")).unwrap();
        assert_eq!(copied, "model = \"m\"\n");
        assert!(!dir.codex_home().join("skip").exists());
    }
}
