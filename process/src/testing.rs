//! Helpers of the unit tests.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use crate::Spec;

/// Everything the child of `spec` wrote on stdout, once it exited successfully.
pub async fn output(spec: &mut Spec) -> String {
    let mut child = spec.spawn().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert!(child.wait().await.unwrap().success());
    out
}

/// Waits up to 10 s for process `pid` to be dead: gone, or a zombie nobody reaped yet (a zombie
/// child of ours is reaped here). False if it still runs.
pub fn gone(pid: u32) -> bool {
    let stat = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::read_to_string(&stat) {
            Err(_) => return true,
            Ok(s) if s.contains(") Z ") => {
                // ECHILD if it is not ours (a grandchild) or tokio reaped it meanwhile.
                let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
                return true;
            }
            Ok(_) if Instant::now() >= deadline => return false,
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
