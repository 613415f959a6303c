//! The daemon raises its own open-file limit (it holds a socket per client) and starts its workers
//! with the limit it was given. Alone in its binary: it lowers this test process's own limit.

use codex_bus_tests::{Bus, BusConfig, Mode};
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The soft and hard "Max open files" of a process, from /proc.
fn open_files(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn the_daemon_raises_its_limit_and_workers_get_the_original() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let soft = 1024.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    let bus = Bus::start(&BusConfig::mock(2), Mode::Tcp);
    let workers = bus.wait_workers(2);
    assert_eq!(
        open_files(bus.pid()),
        (hard, hard),
        "the daemon runs at the hard limit"
    );
    for pid in workers {
        assert_eq!(
            open_files(pid),
            (soft, hard),
            "worker {pid} has the limit the daemon was started with"
        );
    }
}
