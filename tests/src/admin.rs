//! The admin endpoint (`metrics.listen`) as the reload tests drive it: a pool of tagged mock
//! workers, the `metrics` section behind a bearer token, the config file rewritten in place, the
//! `codex-stdio-bus reload` / `restart` commands run as children, and HTTP requests to the
//! endpoint with or without the bearer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{bin, sha256_hex, Bus};

/// How long one reload or restart (the command, or `POST /reload` / `POST /restart`) may take: a
/// roll of a few workers takes seconds.
pub const RELOAD_WAIT: Duration = Duration::from_secs(60);

/// A pool `id` of `instances` mock workers `codex-mock --tag TAG` (plus `extra` arguments), ready
/// as soon as they answer a ping (so a roll does not wait `ready_grace_ms` per slot).
pub fn mock_pool(id: &str, tag: &str, instances: u32, extra: &[&str]) -> Value {
    let mut args = vec!["--tag", tag];
    args.extend_from_slice(extra);
    json!({
        "id": id,
        "command": bin("codex-mock").to_str().unwrap(),
        "args": args,
        "instances": instances,
        "ready_probe": {"method": "ping"},
    })
}

/// The `metrics` section of a config: the admin endpoint on a free loopback port, guarded by
/// `token` (its SHA-256 is `bearer_sha256`).
pub fn admin_section(token: &str) -> Value {
    json!({"listen": "127.0.0.1:0", "bearer_sha256": sha256_hex(token)})
}

impl Bus {
    /// Replaces the config file the daemon started with by `config` (a JSON [`Value`], or any
    /// text: written aside, then renamed over it, so a reload never reads half a file).
    pub fn rewrite_config(&self, config: impl std::fmt::Display) {
        let path = self.dir.path().join("bus.json");
        let next = self.dir.path().join("bus.json.next");
        std::fs::write(&next, config.to_string()).unwrap();
        std::fs::rename(&next, &path).unwrap();
    }
}

/// What a `codex-stdio-bus reload` or `restart` run printed, how it exited and how long it took.
#[derive(Debug)]
pub struct CliRun {
    /// The exit code (`None` if a signal ended it).
    pub code: Option<i32>,
    /// stdout and stderr together.
    pub output: String,
    /// From the start to the exit.
    pub took: Duration,
}

impl CliRun {
    /// Exit status 0: applied or unchanged.
    pub fn succeeded(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `codex-stdio-bus` with `args` and the admin token `token` in `CODEX_BUS_METRICS_TOKEN`,
/// killed (by its pid) if it outlives [`RELOAD_WAIT`].
pub fn run_cli(args: &[&str], token: &str) -> CliRun {
    let dir = tempfile::tempdir().unwrap();
    let out = std::fs::File::create(dir.path().join("out")).unwrap();
    let err = std::fs::File::create(dir.path().join("err")).unwrap();
    let start = Instant::now();
    let mut child = Command::new(bin("codex-stdio-bus"))
        .args(args)
        .env("CODEX_BUS_METRICS_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("run codex-stdio-bus");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > RELOAD_WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("codex-stdio-bus {args:?} still running after {RELOAD_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = start.elapsed();
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    CliRun {
        code: status.code(),
        output: format!("{}{}", read("out"), read("err")),
        took,
    }
}

/// An HTTP request `method path` to the admin endpoint `addr`, with `bearer` if given; returns
/// (status code, body, de-chunked). Bounded by [`RELOAD_WAIT`]: `POST /reload` answers once the
/// reload is done.
pub fn http(addr: &str, method: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the admin endpoint");
    stream.set_read_timeout(Some(RELOAD_WAIT)).unwrap();
    let auth = bearer.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("the admin endpoint answers in time");
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP head");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (code, body)
}

/// The payload of a chunked HTTP body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// `POST path` on the admin endpoint `addr`, with `bearer` if given; returns (status code, the
/// JSON body or `null`, the body as text).
pub fn post(addr: &str, path: &str, bearer: Option<&str>) -> (u16, Value, String) {
    let (code, body) = http(addr, "POST", path, bearer);
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    (code, json, body)
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn dechunk_joins_the_chunks_and_stops_at_the_last() {
        assert_eq!(
            dechunk("3\r\n{\"a\r\n2\r\n\":\r\n2\r\n1}\r\n0\r\n\r\n"),
            "{\"a\":1}"
        );
        assert_eq!(dechunk("5\r\nab"), "", "a chunk cut short is dropped");
    }
}
