//! The daemon's own process figures, read from /proc (the exporter does not provide them).

/// CPU, memory and fd figures of this process at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident set size in bytes.
    pub resident_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time: f64,
}

/// Reads this process's figures; fields that cannot be read stay 0.
pub fn read() -> ProcessStats {
    let mut stats = ProcessStats::default();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces) start at field 3 ("state").
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            stats.cpu_seconds = (utime + stime) as f64 / ticks;
        }
        if let (Some(start), Some(boot)) = (field(22), boot_time()) {
            stats.start_time = boot + start as f64 / ticks;
        }
        if let Some(rss_pages) = field(24) {
            stats.resident_bytes = rss_pages * page;
        }
    }
    stats.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    stats
}

/// The system boot time in seconds since the epoch (`btime` in /proc/stat).
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime = stat.lines().find_map(|l| l.strip_prefix("btime "))?;
    btime.trim().parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plausible_figures_of_this_process() {
        let burn: u64 = (0..2_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        assert!(burn > 0);
        let stats = read();
        assert!(stats.cpu_seconds > 0.0, "{stats:?}");
        assert!(stats.resident_bytes > 1 << 20, "{stats:?}");
        assert!(stats.open_fds >= 3, "{stats:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let age = now - stats.start_time;
        assert!(
            (0.0..3600.0).contains(&age),
            "started {age} s ago? {stats:?}"
        );
    }
}
