//! What the fake child keeps in `CODEX_HOME`: its persistent threads (so a restarted child can
//! resume them, as Codex does from its rollouts) and an id counter (so ids never repeat).

use std::fs;
use std::io;
use std::path::PathBuf;

use codex_bus_worker_io::log;

use super::shapes::ThreadMeta;

/// Ids reserved per counter write, so the counter file is written once per block.
const ID_BLOCK: u64 = 1000;

/// A directory of thread files plus the counter.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    reserved: u64,
}

impl Store {
    /// Opens (creating) the store in `dir`; returns it and the first free id.
    pub fn open(dir: PathBuf) -> io::Result<(Self, u64)> {
        fs::create_dir_all(dir.join("threads"))?;
        let first = fs::read_to_string(dir.join("counter"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(1);
        let mut store = Self {
            dir,
            reserved: first,
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
        fs::write(self.dir.join("counter"), self.reserved.to_string())
    }

    /// Saves a persistent thread.
    pub fn save(&self, id: &str, meta: &ThreadMeta) {
        let Some(path) = self.thread_path(id) else {
            return;
        };
        let written = serde_json::to_vec(meta)
            .map_err(io::Error::from)
            .and_then(|bytes| fs::write(path, bytes));
        if let Err(err) = written {
            log::line(format_args!("cannot persist thread {id}: {err}"));
        }
    }

    /// Loads a persistent thread.
    pub fn load(&self, id: &str) -> Option<ThreadMeta> {
        let bytes = fs::read(self.thread_path(id)?).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The ids of every persistent thread, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(self.dir.join("threads"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                name.strip_suffix(".json").map(str::to_owned)
            })
            .collect();
        ids.sort();
        ids
    }

    /// The file of thread `id`; `None` for ids that are not plain names.
    fn thread_path(&self, id: &str) -> Option<PathBuf> {
        let plain = !id.is_empty()
            && id
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
        plain.then(|| self.dir.join("threads").join(format!("{id}.json")))
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
            created_s: 1,
            updated_s: 1,
            preview: "hi".into(),
            forked_from: None,
        }
    }

    #[test]
    fn threads_and_the_counter_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, first) = Store::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(first, 1);
        store.used(5);
        store.save("thr_0005", &meta());
        store.save("../evil", &meta());
        let (store, first) = Store::open(dir.path().to_path_buf()).unwrap();
        assert!(first > 5, "ids never repeat across processes");
        assert_eq!(store.load("thr_0005"), Some(meta()));
        assert_eq!(store.load("../evil"), None);
        assert_eq!(store.ids(), vec!["thr_0005".to_owned()]);
    }
}
