//! cgroup v2 limits per child: finding a delegated cgroup v2 this process may manage
//! ([`probe`]), taking it over ([`Delegated::take`]), and giving each child a cgroup of its own
//! with `memory.max` and `cpu.max` ([`Workers::slot`]), which [`Spec::cgroup`](crate::Spec::cgroup)
//! moves the child into between fork and exec.
//!
//! The layout follows cgroup v2's "no internal processes" rule (a cgroup with controllers enabled
//! for its children holds no process itself), as systemd's `Delegate=` expects of a service:
//!
//! ```text
//! <the daemon's cgroup>/           memory and cpu enabled in cgroup.subtree_control
//!     daemon/                      this process, moved here by `take`
//!     workers/                     memory and cpu enabled in cgroup.subtree_control
//!         pool-<id>-<slot>/        one child: memory.max, memory.swap.max, cpu.max
//! ```

#![forbid(unsafe_code)]

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// A cgroup v2 controller a child's limits need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controller {
    /// `memory`: `memory.max`, `memory.swap.max`, `memory.oom.group`.
    Memory,
    /// `cpu`: `cpu.max`.
    Cpu,
}

impl Controller {
    /// Its name in `cgroup.controllers` and `cgroup.subtree_control`.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
        }
    }
}

/// The cgroup v2 limits of one child; each absent one is `max` (unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max` in bytes; `memory.swap.max` is 0 with it (where the file exists).
    pub memory_max_bytes: Option<u64>,
    /// `cpu.max` as a percentage of one CPU: `P*1000 100000`.
    pub cpu_max_percent: Option<u32>,
}

impl Limits {
    /// The controllers these limits need, memory first.
    pub fn controllers(&self) -> Vec<Controller> {
        let mut needed = Vec::new();
        if self.memory_max_bytes.is_some() {
            needed.push(Controller::Memory);
        }
        if self.cpu_max_percent.is_some() {
            needed.push(Controller::Cpu);
        }
        needed
    }
}

/// Why this process cannot give its children cgroup v2 limits: a sentence for an operator, such
/// as `/sys/fs/cgroup/unified offers the cgroup / the controllers hugetlb, not memory, cpu`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cgroup v2 this process sits in and may manage: its `cgroup.controllers` lists the needed
/// controllers and its directory, `cgroup.procs` and `cgroup.subtree_control` are writable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegated {
    /// This process's cgroup directory (on the cgroup2 mount).
    pub dir: PathBuf,
}

/// Finds the delegated cgroup v2 of this process, from `/proc/self/cgroup` and
/// `/proc/self/mountinfo`. Changes nothing.
///
/// # Errors
///
/// [`Unavailable`] saying what is missing: no cgroup v2 hierarchy (a cgroup v1 host), a needed
/// controller not offered to this process's cgroup (held by cgroup v1, or not delegated), or a
/// cgroup this process may not write to.
pub fn probe(needed: &[Controller]) -> Result<Delegated, Unavailable> {
    let read = |path: &str| {
        fs::read_to_string(path).map_err(|e| Unavailable(format!("cannot read {path}: {e}")))
    };
    probe_from(
        &read("/proc/self/cgroup")?,
        &read("/proc/self/mountinfo")?,
        needed,
    )
}

/// [`probe`] on the given contents of `/proc/self/cgroup` and `/proc/self/mountinfo` (whose
/// mount points are looked at on disk).
fn probe_from(
    self_cgroup: &str,
    mountinfo: &str,
    needed: &[Controller],
) -> Result<Delegated, Unavailable> {
    let mounts: Vec<Mount> = mountinfo.lines().filter_map(Mount::parse).collect();
    // Controllers mounted as cgroup v1 cannot be in cgroup v2 at the same time: name them, since
    // that is the usual reason on an older host.
    let on_v1: Vec<&str> = needed
        .iter()
        .map(|c| c.name())
        .filter(|name| {
            mounts
                .iter()
                .any(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == *name))
        })
        .collect();
    let v1_note = if on_v1.is_empty() {
        String::new()
    } else {
        format!("; {} mounted as cgroup v1 here", on_v1.join(", "))
    };
    let Some(path) = self_cgroup.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Err(Unavailable(format!(
            "this process is in no cgroup v2 hierarchy (cgroup v1 only){v1_note}"
        )));
    };
    let Some(mount) = mounts.iter().find(|m| m.fstype == "cgroup2") else {
        return Err(Unavailable(format!(
            "no cgroup2 filesystem is mounted (cgroup v1 only){v1_note}"
        )));
    };
    // The mount's root is where in the hierarchy it starts (not `/` for a bind mount of a
    // subtree); the process's path is relative to its cgroup namespace, as the mount's is.
    let Some(relative) = Path::new(path).strip_prefix(&mount.root).ok() else {
        return Err(Unavailable(format!(
            "this process's cgroup {path} is outside the cgroup2 mount at {} (root {})",
            mount.point.display(),
            mount.root.display()
        )));
    };
    let dir = mount.point.join(relative);
    let controllers = fs::read_to_string(dir.join("cgroup.controllers")).map_err(|e| {
        Unavailable(format!(
            "cannot read {}: {e}",
            dir.join("cgroup.controllers").display()
        ))
    })?;
    let offered: Vec<&str> = controllers.split_whitespace().collect();
    let missing: Vec<&str> = needed
        .iter()
        .map(|c| c.name())
        .filter(|name| !offered.contains(name))
        .collect();
    if !missing.is_empty() {
        let offered = if offered.is_empty() {
            "no controllers".to_owned()
        } else {
            format!("only {}", offered.join(", "))
        };
        return Err(Unavailable(format!(
            "the cgroup2 mount at {} offers this process's cgroup {path} {offered}, not {}{v1_note}",
            mount.point.display(),
            missing.join(", ")
        )));
    }
    for file in ["", "cgroup.procs", "cgroup.subtree_control"] {
        let target = dir.join(file);
        if let Err(e) = nix::unistd::access(&target, nix::unistd::AccessFlags::W_OK) {
            return Err(Unavailable(format!(
                "this process's cgroup {} is not delegated to it ({} is not writable by uid {}: {e})",
                dir.display(),
                target.display(),
                nix::unistd::geteuid()
            )));
        }
    }
    Ok(Delegated { dir })
}

/// One line of `/proc/self/mountinfo`: `id parent dev root point options [optional…] - fstype
/// source superoptions`.
struct Mount {
    root: PathBuf,
    point: PathBuf,
    fstype: String,
    /// The super options, where a cgroup v1 mount names its controllers (`rw,memory`).
    options: String,
}

impl Mount {
    fn parse(line: &str) -> Option<Mount> {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let mut after = after.split(' ');
        let fstype = after.next()?.to_owned();
        let options = after.nth(1).unwrap_or_default().to_owned();
        Some(Mount {
            root: PathBuf::from(unescape(fields.get(3)?)),
            point: PathBuf::from(unescape(fields.get(4)?)),
            fstype,
            options,
        })
    }
}

/// Mountinfo writes a space, tab, newline and backslash in a path as `\040`, `\011`, `\012`,
/// `\134`.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

impl Delegated {
    /// Takes the cgroup over for children: moves this process into `daemon/` (unless its
    /// cgroup already has the controllers enabled for children), enables `memory` and `cpu`
    /// (those offered) in its `cgroup.subtree_control` and in that of `workers/`, which it
    /// creates. Run once per process: afterwards this process is no longer in `dir` itself.
    ///
    /// # Errors
    ///
    /// An I/O error naming the file, such as `EBUSY` when other processes share the cgroup (they
    /// would have to be moved out too: give this process a cgroup of its own).
    pub fn take(&self) -> io::Result<Workers> {
        let offered = read(&self.dir.join("cgroup.controllers"))?;
        let wanted: Vec<&str> = ["memory", "cpu"]
            .into_iter()
            .filter(|c| offered.split_whitespace().any(|o| o == *c))
            .collect();
        if !enabled(&self.dir, &wanted)? {
            // A process in a cgroup that enables controllers for its children is what cgroup v2
            // forbids, so this process moves to a leaf of its own first.
            let leaf = self.dir.join("daemon");
            make_dir(&leaf)?;
            write(&leaf.join("cgroup.procs"), "0")?;
            enable(&self.dir, &wanted).map_err(|e| {
                let others = read(&self.dir.join("cgroup.procs")).unwrap_or_default();
                let others: Vec<&str> = others.split_whitespace().collect();
                io::Error::new(
                    e.kind(),
                    format!(
                        "{e}; processes left in {} besides this one: {}",
                        self.dir.display(),
                        if others.is_empty() {
                            "none".to_owned()
                        } else {
                            others.join(" ")
                        }
                    ),
                )
            })?;
        }
        let workers = self.dir.join("workers");
        make_dir(&workers)?;
        enable(&workers, &wanted)?;
        Ok(Workers { dir: workers })
    }
}

/// Whether every controller in `wanted` is enabled in `dir`'s `cgroup.subtree_control`.
fn enabled(dir: &Path, wanted: &[&str]) -> io::Result<bool> {
    let on = read(&dir.join("cgroup.subtree_control"))?;
    Ok(wanted
        .iter()
        .all(|c| on.split_whitespace().any(|o| o == *c)))
}

/// Enables `wanted` for `dir`'s children.
fn enable(dir: &Path, wanted: &[&str]) -> io::Result<()> {
    if wanted.is_empty() || enabled(dir, wanted)? {
        return Ok(());
    }
    let line: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
    write(&dir.join("cgroup.subtree_control"), &line.join(" "))
}

/// The `workers/` cgroup under a [`Delegated`] one, where each child gets a cgroup of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workers {
    /// Its directory.
    pub dir: PathBuf,
}

impl Workers {
    /// The controllers of `needed` not enabled for children here (empty: all are).
    ///
    /// # Errors
    ///
    /// `workers/cgroup.subtree_control` cannot be read.
    pub fn missing(&self, needed: &[Controller]) -> io::Result<Vec<Controller>> {
        let on = read(&self.dir.join("cgroup.subtree_control"))?;
        Ok(needed
            .iter()
            .copied()
            .filter(|c| !on.split_whitespace().any(|o| o == c.name()))
            .collect())
    }

    /// Creates (or reuses) the cgroup `name` (`pool-<id>-<slot>`, see [`slot_name`]), writes
    /// `limits` to it (`max` for an absent one, so a reload that drops a limit lifts it) and opens
    /// its `cgroup.procs` for [`Spec::cgroup`](crate::Spec::cgroup).
    ///
    /// `memory.swap.max` is 0 with a memory limit, so swapping cannot stretch it, and
    /// `memory.oom.group` is 1, so the OOM killer ends the whole child (its own children with it)
    /// rather than leave it half alive; both only where the files exist (no swap accounting, an
    /// older kernel). An absent limit is written only where its file exists (its controller is
    /// on), so a pool that needs one controller works where only that one is delegated.
    ///
    /// # Errors
    ///
    /// An I/O error naming the file that could not be made or written.
    pub fn slot(&self, name: &str, limits: &Limits) -> io::Result<File> {
        let dir = self.dir.join(name);
        make_dir(&dir)?;
        // A limit set needs its file; an absent one is lifted where its controller is on (a
        // reload may have dropped it), and needs nothing where it is not.
        match limits.memory_max_bytes {
            Some(bytes) => {
                write(&dir.join("memory.max"), &bytes.to_string())?;
                write_if_present(&dir.join("memory.swap.max"), "0")?;
                write_if_present(&dir.join("memory.oom.group"), "1")?;
            }
            None => {
                write_if_present(&dir.join("memory.max"), "max")?;
                write_if_present(&dir.join("memory.swap.max"), "max")?;
            }
        }
        // 100 ms is the kernel's default period (and systemd's for CPUQuota=).
        match limits.cpu_max_percent {
            Some(percent) => write(
                &dir.join("cpu.max"),
                &format!("{} 100000", u64::from(percent) * 1000),
            )?,
            None => write_if_present(&dir.join("cpu.max"), "max 100000")?,
        }
        let procs = dir.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(|e| named(&procs, e))
    }

    /// Removes every child cgroup that is empty now, then `workers/` itself if it is; the rest
    /// stay (a cgroup that still holds a process cannot be removed). For a clean stop.
    pub fn remove_empty(&self) {
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = fs::remove_dir(entry.path());
                }
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The cgroup name of `slot` of pool `id`: `pool-<id>-<slot>`, with every byte of the id other
/// than ASCII letters, digits, `_` and `.` written `%hh` (a pool id may hold `/`, and `-` is
/// escaped so that the slot number is unambiguous).
pub fn slot_name(id: &str, slot: u32) -> String {
    let mut name = String::from("pool-");
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02x}"));
        }
    }
    name.push_str(&format!("-{slot}"));
    name
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn read(path: &Path) -> io::Result<String> {
    fs::read_to_string(path).map_err(|e| named(path, e))
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| named(path, e))
}

fn write_if_present(path: &Path, value: &str) -> io::Result<()> {
    if path.exists() {
        write(path, value)
    } else {
        Ok(())
    }
}

fn make_dir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(named(path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: &[Controller] = &[Controller::Memory, Controller::Cpu];

    /// This machine's kind of mountinfo: the controllers on cgroup v1, a cgroup2 beside them with
    /// none of them, all under `root`.
    fn hybrid(root: &Path) -> String {
        let r = root.display();
        format!(
            "31 23 0:28 / {r} rw,relatime - tmpfs tmpfs rw,mode=755\n\
             32 31 0:29 / {r}/cpu rw,relatime - cgroup cgroup rw,cpu\n\
             35 31 0:32 / {r}/memory rw,relatime - cgroup cgroup rw,memory\n\
             41 31 0:38 / {r}/unified rw,relatime - cgroup2 cgroup2 rw\n"
        )
    }

    /// A cgroup directory offering `controllers`.
    fn cgroup_dir(dir: &Path, controllers: &str) {
        fs::create_dir_all(dir).unwrap();
        for file in ["cgroup.procs", "cgroup.subtree_control"] {
            fs::write(dir.join(file), "").unwrap();
        }
        fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
    }

    #[test]
    fn a_cgroup_v1_host_is_unavailable_and_says_why() {
        let root = tempfile::tempdir().unwrap();
        let v1_only = "4:memory:/x\n1:cpu:/\n";
        let mounts = hybrid(root.path())
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .collect::<Vec<_>>()
            .join("\n");
        let reason = probe_from(v1_only, &mounts, BOTH).unwrap_err().0;
        assert_eq!(
            reason,
            "this process is in no cgroup v2 hierarchy (cgroup v1 only); memory, cpu mounted as cgroup v1 here"
        );
        let reason = probe_from("0::/\n", &mounts, BOTH).unwrap_err().0;
        assert_eq!(
            reason,
            "no cgroup2 filesystem is mounted (cgroup v1 only); memory, cpu mounted as cgroup v1 here"
        );
    }

    #[test]
    fn a_hybrid_host_without_the_controllers_in_v2_is_unavailable() {
        let root = tempfile::tempdir().unwrap();
        cgroup_dir(&root.path().join("unified"), "hugetlb\n");
        let reason = probe_from("1:cpu:/\n0::/\n", &hybrid(root.path()), BOTH)
            .unwrap_err()
            .0;
        assert_eq!(
            reason,
            format!(
                "the cgroup2 mount at {}/unified offers this process's cgroup / only hugetlb, not memory, cpu; memory, cpu mounted as cgroup v1 here",
                root.path().display()
            )
        );
    }

    #[test]
    fn a_cgroup_v2_with_the_controllers_is_available() {
        let root = tempfile::tempdir().unwrap();
        let mounts = format!(
            "30 23 0:27 / {} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
            root.path().display()
        );
        let own = root.path().join("system.slice/bus.service");
        cgroup_dir(&own, "cpuset cpu io memory pids\n");
        let found = probe_from("0::/system.slice/bus.service\n", &mounts, BOTH).unwrap();
        assert_eq!(found.dir, own);
        // Only what the config needs counts.
        cgroup_dir(&own, "memory pids\n");
        assert!(probe_from(
            "0::/system.slice/bus.service\n",
            &mounts,
            &[Controller::Memory]
        )
        .is_ok());
        let reason = probe_from("0::/system.slice/bus.service\n", &mounts, BOTH)
            .unwrap_err()
            .0;
        assert!(reason.ends_with("only memory, pids, not cpu"), "{reason}");
    }

    #[test]
    fn a_bind_mounted_subtree_is_found_below_its_root() {
        let root = tempfile::tempdir().unwrap();
        let mounts = format!(
            "30 23 0:27 /kubepods/pod1 {} rw - cgroup2 cgroup2 rw\n",
            root.path().display()
        );
        let own = root.path().join("c1");
        cgroup_dir(&own, "cpu memory\n");
        assert_eq!(
            probe_from("0::/kubepods/pod1/c1\n", &mounts, BOTH)
                .unwrap()
                .dir,
            own
        );
        let reason = probe_from("0::/elsewhere\n", &mounts, BOTH).unwrap_err().0;
        assert!(reason.contains("outside the cgroup2 mount"), "{reason}");
    }

    #[test]
    fn taking_over_moves_this_process_to_a_leaf_and_enables_the_controllers() {
        // A directory stands in for the cgroup: what `take` writes is checked, not its effect.
        let root = tempfile::tempdir().unwrap();
        let own = root.path().join("bus");
        cgroup_dir(&own, "cpu memory pids\n");
        cgroup_dir(&own.join("daemon"), "");
        cgroup_dir(&own.join("workers"), "");
        let workers = Delegated { dir: own.clone() }.take().unwrap();
        assert_eq!(workers.dir, own.join("workers"));
        assert_eq!(read(&own.join("daemon/cgroup.procs")).unwrap(), "0");
        assert_eq!(
            read(&own.join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu"
        );
        fs::write(own.join("workers/cgroup.subtree_control"), "memory cpu").unwrap();
        assert!(workers.missing(BOTH).unwrap().is_empty());

        let slot = workers.dir.join("pool-a%2fb-0");
        cgroup_dir(&slot, "");
        fs::write(slot.join("memory.swap.max"), "").unwrap();
        let limits = Limits {
            memory_max_bytes: Some(64 << 20),
            cpu_max_percent: Some(250),
        };
        workers.slot(&slot_name("a/b", 0), &limits).unwrap();
        assert_eq!(read(&slot.join("memory.max")).unwrap(), "67108864");
        assert_eq!(read(&slot.join("memory.swap.max")).unwrap(), "0");
        assert_eq!(read(&slot.join("cpu.max")).unwrap(), "250000 100000");
        assert!(!slot.join("memory.oom.group").exists());
        workers.slot("pool-a%2fb-0", &Limits::default()).unwrap();
        assert_eq!(read(&slot.join("memory.max")).unwrap(), "max");
        assert_eq!(read(&slot.join("memory.swap.max")).unwrap(), "max");
        assert_eq!(read(&slot.join("cpu.max")).unwrap(), "max 100000");
        // Where cpu is not on, a memory limit alone does not touch its file.
        let memory_only = workers.dir.join("pool-m-0");
        cgroup_dir(&memory_only, "");
        let limits = Limits {
            memory_max_bytes: Some(1 << 20),
            cpu_max_percent: None,
        };
        workers.slot("pool-m-0", &limits).unwrap();
        assert!(!memory_only.join("cpu.max").exists());
    }

    #[test]
    fn slot_names_are_unambiguous() {
        assert_eq!(slot_name("codex", 3), "pool-codex-3");
        assert_eq!(slot_name("a-1", 2), "pool-a%2d1-2");
        assert_eq!(slot_name("../x", 0), "pool-..%2fx-0");
    }
}
