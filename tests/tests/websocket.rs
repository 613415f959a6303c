//! The WebSocket front against the real daemon and mock workers, over loopback, with a Rust
//! WebSocket client: what `codex --remote ws://…` relies on (../shared/reference/codex-remote.md)
//! and how connections are bound to sessions.

use std::time::{Duration, Instant};

use codex_bus_tests::{http_get, run_bus, sha256_hex, status, Bus, BusConfig, Mode, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const ALICE: &str = "alice-token-6c1f0e9a2b7d";
const BOB: &str = "bob-token-93e5d1a7c04b";

/// Mock workers with tokens for alice (tenant a) and bob (tenant b), alice's in a Codex token
/// file and bob's by digest.
fn with_tokens(instances: u32, dir: &std::path::Path) -> BusConfig {
    let file = dir.join("alice.token");
    std::fs::write(&file, format!("{ALICE}\n")).unwrap();
    BusConfig::mock(instances).section(
        "auth",
        json!({"tokens": [
            {"tenant": "a", "token_file": file, "subject": "alice"},
            {"tenant": "b", "sha256": sha256_hex(BOB), "subject": "bob"},
        ]}),
    )
}

/// Opens a WebSocket to `path` on `addr` with `headers`.
async fn open(addr: &str, path: &str, headers: &[(&'static str, &str)]) -> Result<Ws, WsError> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("the upgrade is answered in time")?;
    // Nothing is echoed back but the upgrade itself (Codex's TUI would switch to zstd frames).
    assert!(response
        .headers()
        .get("x-codex-app-server-compression")
        .is_none());
    assert!(response.headers().get("sec-websocket-extensions").is_none());
    Ok(ws)
}

/// A connection of the holder of `token`, bound by `path`.
async fn login(addr: &str, path: &str, token: &str) -> Ws {
    let bearer = format!("Bearer {token}");
    open(
        addr,
        path,
        &[
            ("authorization", &bearer),
            ("x-codex-app-server-compression", "zstd-stream-v1"),
        ],
    )
    .await
    .expect("upgrade")
}

/// The next text frame, as JSON.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the connection is open")
            .expect("a frame");
        match message {
            Message::Text(text) => {
                assert!(!text.contains('\n'), "one message per frame: {text}");
                return serde_json::from_str(&text).expect("JSON text");
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Sends `message` and returns the reply with its id.
async fn call(ws: &mut Ws, message: Value) -> Value {
    let id = message["id"].clone();
    ws.send(Message::text(message.to_string())).await.unwrap();
    loop {
        let reply = next_json(ws).await;
        if reply["id"] == id {
            return reply;
        }
    }
}

/// The worker (pool, slot, pid) that answered `reply`.
fn worker(reply: &Value) -> (Value, Value, Value) {
    let result = &reply["result"];
    assert!(result["pid"].is_u64(), "{reply}");
    (
        result["pool"].clone(),
        result["slot"].clone(),
        result["pid"].clone(),
    )
}

/// The status of a refused upgrade and its body.
fn refusal(result: Result<Ws, WsError>) -> (u16, String) {
    match result {
        Err(WsError::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

/// Waits until `/readyz` on `addr` says 200.
fn wait_ready(addr: &str) {
    let start = Instant::now();
    while http_get(addr, "/readyz").0 != 200 {
        assert!(start.elapsed() < WAIT, "not ready in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_token_holder_gets_codex_shaped_replies_from_one_worker_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(&with_tokens(4, dir.path()), Mode::WebSocket);
    let addr = bus.tcp_addr().to_owned();
    wait_ready(&addr);

    let mut first = login(&addr, "/", ALICE).await;
    let reply = call(
        &mut first,
        json!({"id": "initialize", "method": "initialize"}),
    )
    .await;
    assert!(reply["result"]["userAgent"].is_string(), "{reply}");
    let reply = call(&mut first, json!({"id": 1, "method": "test/where"})).await;
    let object = reply.as_object().unwrap();
    assert!(
        !object.contains_key("jsonrpc") && !object.contains_key("sessionId"),
        "the client gets no member it did not send: {reply}"
    );
    let home = worker(&reply);

    // Codex's resume opens a second connection: the same user lands on the same worker.
    let mut second = login(&addr, "/", ALICE).await;
    let again = call(&mut second, json!({"id": 7, "method": "test/where"})).await;
    assert_eq!(worker(&again), home, "{again}");

    // A client that sends `jsonrpc` gets it back; its bound session still stays out of sight.
    let with = call(
        &mut second,
        json!({"jsonrpc": "2.0", "id": 8, "method": "test/where"}),
    )
    .await;
    assert_eq!(with["jsonrpc"], "2.0", "{with}");
    assert!(with.get("sessionId").is_none(), "{with}");

    // A JSON message spread over lines is one message to the worker.
    let text = "{\n  \"id\": 9,\n  \"method\": \"test/where\"\n}";
    second.send(Message::text(text)).await.unwrap();
    let reply = next_json(&mut second).await;
    assert_eq!(
        (reply["id"].clone(), worker(&reply)),
        (json!(9), home.clone())
    );
}

#[tokio::test]
async fn a_bad_or_missing_token_gets_codex_s_401_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(&with_tokens(1, dir.path()), Mode::WebSocket);
    let addr = bus.tcp_addr().to_owned();
    let cases: [(&[(&'static str, &str)], &str); 4] = [
        (&[], "missing websocket bearer token"),
        (
            &[("authorization", "Bearer not-a-token")],
            "invalid websocket bearer token",
        ),
        (
            &[("authorization", "Basic YWxpY2U6eA==")],
            "invalid authorization header",
        ),
        (
            &[("authorization", "Bearer a.b.c")],
            "invalid websocket bearer token",
        ),
    ];
    for (headers, body) in cases {
        assert_eq!(
            refusal(open(&addr, "/", headers).await),
            (401, body.to_owned()),
            "{headers:?}"
        );
    }
    // The scheme is case-insensitive, as Codex reads it.
    let lower = format!("bearer {BOB}");
    assert!(open(&addr, "/", &[("authorization", &lower)]).await.is_ok());
    // An Origin is refused before the credential is looked at.
    let bearer = format!("Bearer {BOB}");
    let origin = [
        ("authorization", bearer.as_str()),
        ("origin", "https://evil.example"),
    ];
    assert_eq!(
        refusal(open(&addr, "/", &origin).await),
        (403, String::new())
    );
}

#[tokio::test]
async fn a_connection_is_bound_by_path_query_header_or_user_and_tenants_never_share() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start_with(
        &with_tokens(4, dir.path()),
        Mode::WebSocket,
        &["--metrics", "127.0.0.1:0"],
    );
    let addr = bus.tcp_addr().to_owned();
    let admin = bus.metrics_addr();
    wait_ready(&addr);
    let bearer = format!("Bearer {ALICE}");
    let mut by_path = login(&addr, "/sessions/s%201", ALICE).await;
    let mut by_query = login(&addr, "/rpc?x=1&session=s%201", ALICE).await;
    let mut by_header = open(
        &addr,
        "/",
        &[("authorization", &bearer), ("x-codex-session", "s 1")],
    )
    .await
    .unwrap();
    let home = worker(&ask(&mut by_path).await);
    assert_eq!(worker(&ask(&mut by_query).await), home);
    assert_eq!(worker(&ask(&mut by_header).await), home);
    let sessions = || status(&admin)["totals"]["sessions"].as_u64().unwrap();
    assert_eq!(sessions(), 1, "one session, named three ways");

    // Bob names the same session id: his own session, under his tenant.
    let mut bob = login(&addr, "/sessions/s%201", BOB).await;
    let reply = ask(&mut bob).await;
    assert!(reply.get("sessionId").is_none(), "{reply}");
    assert_eq!(sessions(), 2, "tenants a and b each hold one");
    // Without a session in the URL or a header, each user has one: alice's is a third.
    let mut derived = login(&addr, "/", ALICE).await;
    ask(&mut derived).await;
    assert_eq!(sessions(), 3);
    let mut again = login(&addr, "/", ALICE).await;
    ask(&mut again).await;
    assert_eq!(sessions(), 3, "the same user's second connection joins it");
}

#[tokio::test]
async fn frames_limits_pings_probes_and_the_drain() {
    let config = BusConfig::mock(1).section(
        "websocket",
        json!([{"listen": "127.0.0.1:0", "max_frame_bytes": 1024, "max_message_bytes": 2048}]),
    );
    let bus = Bus::start(&config, Mode::WebSocket);
    // The configured listener is bound first, so it is the one the harness read.
    let addr = bus.tcp_addr().to_owned();
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok\n".to_owned()));
    wait_ready(&addr);
    assert_eq!(
        http_get(&addr, "/readyz"),
        (200, "{\"ready\":true}\n".to_owned())
    );

    // Without auth, on loopback: no token needed.
    let mut ws = open(&addr, "/", &[]).await.unwrap();
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(b"are you there".to_vec().into()));

    // A binary frame gets an error reply; the connection stays open.
    ws.send(Message::binary(b"{}".to_vec())).await.unwrap();
    let error = next_json(&mut ws).await;
    assert_eq!(error["id"], Value::Null, "{error}");
    assert_eq!(
        error["error"]["data"]["reason"], "invalid_request",
        "{error}"
    );
    assert_eq!(
        error["error"]["data"]["detail"], "binary frames are not accepted",
        "{error}"
    );
    assert!(error.get("jsonrpc").is_none(), "{error}");
    let reply = call(&mut ws, json!({"id": 1, "method": "test/where"})).await;
    worker(&reply);

    // A message over the limit closes the connection with 1009.
    let padding = "x".repeat(4096);
    let mut big = open(&addr, "/", &[]).await.unwrap();
    let _ = big
        .send(Message::text(
            json!({"id": 2, "method": "m", "params": padding}).to_string(),
        ))
        .await;
    assert_eq!(close_code(&mut big).await, Some(CloseCode::Size));

    // SIGTERM: the drain ends with 1001 for the connections still open.
    bus.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Away));
}

/// Asks `ws`'s worker where it runs.
async fn ask(ws: &mut Ws) -> Value {
    call(ws, json!({"id": "where", "method": "test/where"})).await
}

/// The code of the close frame the server sends next (frames before it are skipped).
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a close in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(error)) => panic!("no close frame: {error}"),
            None => return None,
        }
    }
}

#[tokio::test]
async fn secure_by_default_and_beside_an_ndjson_listener() {
    let dir = tempfile::tempdir().unwrap();
    let plain = BusConfig::mock(1).write(dir.path());
    let plain = plain.to_str().unwrap();
    // Beyond loopback without auth: refused, as Codex refuses `--listen ws://0.0.0.0:P`.
    let (status, _, err) = run_bus(&["--config", plain, "--ws", "0.0.0.0:0"]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(
        err.contains("refusing to start a WebSocket listener on the non-loopback address 0.0.0.0:"),
        "{err}"
    );
    // `check` says the same of a listener the config names.
    let named = BusConfig::mock(1).section("websocket", json!([{"listen": "0.0.0.0:4500"}]));
    let path = named.write(dir.path());
    let (status, _, err) = run_bus(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(err.contains("non-loopback address 0.0.0.0:4500"), "{err}");

    // --ws is no endpoint of its own: it serves beside --tcp.
    let mut bus = Bus::start_with(&BusConfig::mock(1), Mode::Tcp, &["--ws", "127.0.0.1:0"]);
    let addr = bus.listen_addr("websocket");
    wait_ready(&addr);
    let mut ws = open(&addr, "/sessions/shared", &[]).await.unwrap();
    let over_ws = ask(&mut ws).await;
    let mut tcp = bus.connect();
    tcp.request(json!(1), "test/where", Value::Null, Some("shared"));
    let over_tcp = tcp.recv();
    assert_eq!(
        worker(&over_ws),
        worker(&over_tcp),
        "one session, whichever way it is reached"
    );
}
