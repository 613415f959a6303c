//! The real-Codex tier, with the real Codex TUI (`codex --remote ws://…`, 0.169.0) in tmux:
//! a user's prompt is answered on screen, and in `codex resume --remote` user A finds her thread
//! (and opens it again, on a second connection) while user B, another token of another tenant,
//! does not, nor A B's (issue 13).
//!
//! Two tests with one harness. The baseline runs the TUI against Codex's own
//! `codex app-server --listen ws://` (one capability token, no tenants): it proves the harness
//! and shows what the screens look like when the server is Codex. The other runs it against the
//! bus (`--ws`, two capability tokens for tenants `alice` and `bob`) and a `codex-worker` pool
//! over the real `codex app-server`. Both are offline: the model is the loopback mock of
//! `codex_bus_tests::codex`, and each run happens in `unshare -n` where the machine allows it.
//! Every screen read is printed, so the runner's output shows them.
//!
//! Through the bus, as with Codex's own server, a prompt makes two model requests: the turn, and
//! the TUI's title-generating thread (`thread/start` with config overrides that only switch
//! things off, which codex-worker lets any tenant send).
//!
//! A tier like `codex_real.rs`: `#[ignore]`d with the reason; `CODEX_REAL=1 bash .ci/run`
//! installs Codex (and tmux) and runs it with `--ignored`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use codex_bus_tests::codex::{
    offline_env, require_codex, rerun_offline, worker_pool_config, ResponsesServer, ANSWER,
};
use codex_bus_tests::tmux::Tmux;
use codex_bus_tests::{alive, say, sha256_hex, Bus, Mode, WAIT};
use serde_json::json;

/// What every user's prompt ends with (it starts with the user's name); the resume picker
/// previews a thread by its first message, so this text on a picker means a thread is listed.
const PROMPT_END: &str = " says hello";

/// What the resume picker shows when it lists no thread (seen with Codex's own server).
const NO_THREADS: &str = "No sessions yet";

/// The resume picker's heading.
const PICKER: &str = "Resume a previous session";

/// How long a turn may take to appear on screen (it took under 1 s against Codex's server).
const TURN_LIMIT: Duration = Duration::from_secs(60);

/// How long the picker may take to list threads.
const PICKER_LIMIT: Duration = Duration::from_secs(30);

#[test]
#[ignore = "tier real-codex: needs a codex binary (CODEX_BIN or ~/.cache/codex-npm) and tmux; `CODEX_REAL=1 bash .ci/run` installs both and runs it"]
fn tui_baseline_against_codex_app_server() {
    let codex = require_codex();
    if rerun_offline("tui_baseline_against_codex_app_server", &codex) {
        return;
    }
    let started = Instant::now();
    let model = ResponsesServer::start();
    let dir = tempfile::tempdir().expect("scratch dir");
    let alice = User::new("alice", "alice-token-0123456789", &model, dir.path());
    let server = AppServer::start(&codex, &model, dir.path(), &alice.token);
    let remote = Remote {
        label: "codex app-server",
        url: format!("ws://{}", server.addr),
    };
    let mut tmux = Tmux::new();
    prompt_is_answered(&mut tmux, &codex, &remote, &alice);
    let (listed, _) = picker(&mut tmux, &codex, &remote, &alice, true);
    assert!(listed, "Codex's own server lists alice's thread to alice");
    say(&format!(
        "TUI baseline (codex app-server) PASSED in {} ms, {} model requests",
        started.elapsed().as_millis(),
        model.requests()
    ));
}

#[test]
#[ignore = "tier real-codex: needs a codex binary (CODEX_BIN or ~/.cache/codex-npm) and tmux; `CODEX_REAL=1 bash .ci/run` installs both and runs it"]
fn tui_through_the_bus_answers_and_keeps_tenants_apart() {
    let codex = require_codex();
    if rerun_offline(
        "tui_through_the_bus_answers_and_keeps_tenants_apart",
        &codex,
    ) {
        return;
    }
    let started = Instant::now();
    let model = ResponsesServer::start();
    let dir = tempfile::tempdir().expect("scratch dir");
    let alice = User::new("alice", "alice-token-0123456789", &model, dir.path());
    let bob = User::new("bob", "bob-token-9876543210", &model, dir.path());
    let tokens: Vec<_> = [&alice, &bob]
        .iter()
        .map(|user| json!({"tenant": user.name, "sha256": sha256_hex(&user.token)}))
        .collect();
    // The TUI's startup uses experimental methods and fields (`collaborationMode/list`,
    // `thread/start.historyMode`): the worker's child must be initialized with experimentalApi.
    let config = worker_pool_config(
        &codex,
        &model,
        &dir.path().join("pool"),
        &["--experimental-api"],
    )
    .section("auth", json!({ "tokens": tokens }));
    let bus = Bus::start_with(
        &config,
        Mode::WebSocket,
        &["--log-level", "codex_stdio_bus=debug"],
    );
    let remote = Remote {
        label: "bus",
        url: format!("ws://{}", bus.tcp_addr()),
    };
    let mut tmux = Tmux::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        prompt_is_answered(&mut tmux, &codex, &remote, &alice);
        let (_, screen) = picker(&mut tmux, &codex, &remote, &bob, false);
        assert!(
            !screen.contains(&alice.prompt()),
            "bob's picker shows alice's thread:\n{screen}"
        );
        assert!(
            screen.contains(NO_THREADS),
            "bob's picker is not the empty one:\n{screen}"
        );
        prompt_is_answered(&mut tmux, &codex, &remote, &bob);
        let (listed, screen) = picker(&mut tmux, &codex, &remote, &alice, true);
        assert!(listed, "alice's picker does not list her thread:\n{screen}");
        assert!(
            !screen.contains(&bob.prompt()) && screen.contains(" 1 / 1 "),
            "alice's picker lists more than her one thread:\n{screen}"
        );
    }));
    if let Err(panic) = outcome {
        say(&format!("bus log (tail):\n{}", tail(&bus.log(), 80)));
        std::panic::resume_unwind(panic);
    }
    assert!(
        model.requests() >= 4,
        "both prompts reached the model, each with its title request: {}",
        model.requests()
    );
    say(&format!(
        "TUI through the bus PASSED in {} ms, {} model requests",
        started.elapsed().as_millis(),
        model.requests()
    ));
}

/// The server the TUIs connect to: its `ws://` URL and a label for the printed screens (the two
/// tests run side by side, so their output interleaves).
struct Remote {
    label: &'static str,
    url: String,
}

/// One TUI user: a name (the tenant, through the bus), a capability token and a Codex home.
struct User {
    name: &'static str,
    token: String,
    home: PathBuf,
}

impl User {
    fn new(name: &'static str, token: &str, model: &ResponsesServer, dir: &Path) -> User {
        User {
            name,
            token: token.to_owned(),
            home: model.home(&dir.join(format!("home-{name}"))),
        }
    }

    /// The user's prompt, e.g. `alice says hello`.
    fn prompt(&self) -> String {
        format!("{}{PROMPT_END}", self.name)
    }

    /// A launcher script that runs `codex <args> --remote URL --remote-auth-token-env TOK` as
    /// this user, offline, in the user's home (so nothing the TUI writes lands in the repository).
    fn script(&self, codex: &Path, url: &str, args: &str) -> String {
        let mut script = String::new();
        for (name, value) in offline_env() {
            script.push_str(&format!("export {name}='{value}'\n"));
        }
        script.push_str(&format!(
            "cd '{home}'\nexport CODEX_HOME='{home}' TOK='{}' TERM=screen\nexec '{}' {args} --remote {url} --remote-auth-token-env TOK\n",
            self.token,
            codex.display(),
            home = self.home.display(),
        ));
        script
    }
}

/// `user` runs `codex --remote URL "<user> says hello"`; the mock model's answer must appear on
/// screen. Quits with C-c once it has.
fn prompt_is_answered(tmux: &mut Tmux, codex: &Path, remote: &Remote, user: &User) {
    let session = format!("{}-prompt", user.name);
    let prompt = user.prompt();
    tmux.start(
        &session,
        &user.script(codex, &remote.url, &format!("'{prompt}'")),
    );
    let reply = ANSWER.concat();
    let found = tmux.wait_for(&session, &[&reply], TURN_LIMIT);
    let screen = found.as_ref().map_or_else(Clone::clone, |(_, s)| s.clone());
    say(&format!(
        "--- [{}] screen: {} runs `codex --remote {} '{prompt}'`\n{screen}\n---",
        remote.label, user.name, remote.url
    ));
    assert!(found.is_ok(), "no {reply:?} on {}'s screen", user.name);
    quit(tmux, &session);
}

/// `user` runs `codex resume --remote URL`; once the picker lists threads or says it has none,
/// returns whether it lists the user's own thread, and the screen. With `open`, a listed thread is then opened (Enter: the
/// TUI closes its connection and resumes the thread on a second one) and must show its reply.
/// Quits with C-c.
fn picker(
    tmux: &mut Tmux,
    codex: &Path,
    remote: &Remote,
    user: &User,
    open: bool,
) -> (bool, String) {
    let session = format!("{}-resume", user.name);
    tmux.start(&session, &user.script(codex, &remote.url, "resume"));
    let found = tmux.wait_for(&session, &[PROMPT_END, NO_THREADS], PICKER_LIMIT);
    let (listed, screen) = match found {
        Ok((_, screen)) => (screen.contains(&user.prompt()), screen),
        Err(screen) => {
            say(&format!(
                "--- [{}] screen: {}'s picker, unsettled\n{screen}\n---",
                remote.label, user.name
            ));
            panic!(
                "{}'s picker neither listed threads nor said {NO_THREADS:?}",
                user.name
            );
        }
    };
    say(&format!(
        "--- [{}] screen: {} runs `codex resume --remote {}`\n{screen}\n---",
        remote.label, user.name, remote.url
    ));
    assert!(screen.contains(PICKER), "not the resume picker:\n{screen}");
    if listed && open {
        tmux.send_keys(&session, &["Enter"]);
        let reply = ANSWER.concat();
        let found = tmux.wait_for(&session, &[&reply], TURN_LIMIT);
        let resumed = found.as_ref().map_or_else(Clone::clone, |(_, s)| s.clone());
        say(&format!(
            "--- [{}] screen: {} opens the thread from the picker\n{resumed}\n---",
            remote.label, user.name
        ));
        assert!(found.is_ok(), "the resumed thread does not show {reply:?}");
    }
    quit(tmux, &session);
    (listed, screen)
}

/// C-c, and the TUI must exit with status 0 (a second C-c covers a turn still running).
fn quit(tmux: &Tmux, session: &str) {
    tmux.send_keys(session, &["C-c"]);
    let mut status = tmux.wait_exit(session, Duration::from_secs(5));
    if status.is_none() {
        tmux.send_keys(session, &["C-c"]);
        status = tmux.wait_exit(session, Duration::from_secs(5));
    }
    let screen = tmux.screen(session);
    assert_eq!(status, Some(0), "{session} did not quit cleanly:\n{screen}");
}

/// `codex app-server --listen ws://127.0.0.1:PORT --ws-auth capability-token`, killed by pid
/// when dropped.
struct AppServer {
    child: Child,
    addr: String,
}

impl AppServer {
    fn start(codex: &Path, model: &ResponsesServer, dir: &Path, token: &str) -> AppServer {
        let home = model.home(&dir.join("server-home"));
        let token_file = dir.join("server-token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        // Codex takes no port 0 here: take a free port and give it back.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = Command::new(codex)
            .args(["app-server", "--listen", &format!("ws://{addr}")])
            .args(["--ws-auth", "capability-token", "--ws-token-file"])
            .arg(&token_file)
            .env("CODEX_HOME", &home)
            .envs(offline_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn codex app-server");
        let server = AppServer { child, addr };
        let start = Instant::now();
        while !ready(&server.addr) {
            assert!(
                start.elapsed() < WAIT && alive(server.child.id()),
                "codex app-server is not ready on {}",
                server.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `GET /readyz` on `addr` answers 200.
fn ready(addr: &str) -> bool {
    std::net::TcpStream::connect(addr).is_ok()
        && codex_bus_tests::http_get(addr, "/readyz").0 == 200
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
