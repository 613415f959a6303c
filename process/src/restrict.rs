//! What a child gives up before it runs its program: another user and group, a umask, resource
//! limits, `no_new_privs`. Applied between fork and exec by [`inherit`](crate::inherit).

#![forbid(unsafe_code)]

/// A resource limit a child can be given (`setrlimit(2)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `RLIMIT_AS`: bytes of virtual address space.
    AddressSpace,
    /// `RLIMIT_NOFILE`: open file descriptors.
    OpenFiles,
    /// `RLIMIT_NPROC`: processes and threads of the child's real user.
    Processes,
    /// `RLIMIT_CPU`: seconds of CPU time (SIGXCPU at the limit, which kills by default).
    CpuSeconds,
    /// `RLIMIT_CORE`: bytes of a core dump.
    CoreBytes,
}

/// The restrictions of one child, all optional (the default changes nothing).
///
/// Applied in this order: resource limits (while the child may still raise a hard limit), umask,
/// supplementary groups, gid, uid, `no_new_privs`; then the parent-death signal, which a change of
/// credentials would clear.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restrictions {
    /// Supplementary groups to set (`setgroups`; an empty list clears them). Needs root.
    pub groups: Option<Vec<u32>>,
    /// The gid to switch to (`setgid`). Needs root.
    pub gid: Option<u32>,
    /// The uid to switch to (`setuid`), after the groups. Needs root.
    pub uid: Option<u32>,
    /// The file mode creation mask (`umask`).
    pub umask: Option<u32>,
    /// Resource limits, each set as soft and hard limit.
    pub limits: Vec<(Limit, u64)>,
    /// Whether to set `PR_SET_NO_NEW_PRIVS`, so exec can never grant privileges (set-user-ID
    /// programs, file capabilities).
    pub no_new_privs: bool,
}

impl Restrictions {
    /// Whether these restrictions change nothing.
    pub fn is_empty(&self) -> bool {
        *self == Restrictions::default()
    }
}
