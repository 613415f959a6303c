//! TLS on the TCP listener, on WebSocket listeners (`wss://`, issue 13) and on the admin
//! endpoint (`metrics.tls`: the dashboard's Basic login over HTTPS, issue 14): NDJSON with
//! `bus/authenticate` over TLS, a WebSocket round trip over TLS, plaintext and
//! silent clients closed without harm to the others, certificate files checked at start by `run`
//! and `check` alike (exit status 78 naming the file), a certificate reloaded on SIGHUP, and TLS
//! not taken for authentication. Certificates are made at test time (rcgen); nothing leaves
//! loopback.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codex_bus_tests::{metric, run_bus, sha256_hex, still_works, Bus, BusConfig, Conn, Mode, WAIT};
use nix::sys::signal::Signal;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::json;

/// Tenant `a`'s capability token.
const TOKEN: &str = "tls-cap-token-0f1e2d3c4b5a69788796a5b4";

/// A self-signed certificate for `localhost` and 127.0.0.1, and its key, as PEM files.
struct Cert {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// What a client trusts.
    der: CertificateDer<'static>,
    /// The key file's content, which must never reach a log.
    key_pem: String,
}

/// Makes a new certificate and key, written to `<name>.crt` and `<name>.key` in `dir`.
fn self_signed(dir: &Path, name: &str) -> Cert {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names).unwrap();
    let (cert_file, key_file) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let key_pem = signing_key.serialize_pem();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, &key_pem).unwrap();
    Cert {
        cert_file,
        key_file,
        der: cert.der().clone(),
        key_pem,
    }
}

/// A mock pool with `transport.tls` from these files, and tenant `a`'s token (2 s to shake hands).
fn config(cert_file: &Path, key_file: &Path) -> BusConfig {
    BusConfig::mock(1)
        .section(
            "transport",
            json!({"tls": {"cert_file": cert_file, "key_file": key_file}}),
        )
        .section(
            "auth",
            json!({"tokens": [{"tenant": "a", "sha256": sha256_hex(TOKEN)}], "handshake_timeout_sec": 2}),
        )
}

/// One TLS stream shared by a [`Conn`]'s two halves, which the tests use in turn (a read holds
/// the lock until data comes or the socket's read timeout).
#[derive(Clone)]
struct Shared(Arc<Mutex<StreamOwned<ClientConnection, TcpStream>>>);

impl Read for Shared {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().read(buf)
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap().flush()
    }
}

/// A client config that trusts only `trusted` and offers `alpn` if given.
fn client_config(trusted: &CertificateDer<'static>, alpn: Option<&[u8]>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
    Arc::new(client)
}

/// A TLS connection to `addr` that trusts only `trusted`, its handshake complete; `Err` if the
/// handshake fails.
fn connect_tls(addr: &str, trusted: &CertificateDer<'static>) -> std::io::Result<Conn> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = ClientConnection::new(client_config(trusted, None), name).unwrap();
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(WAIT))?;
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp)?;
    }
    let shared = Shared(Arc::new(Mutex::new(StreamOwned::new(tls, tcp))));
    Ok(Conn::from_halves(
        Box::new(shared.clone()),
        Box::new(shared),
    ))
}

/// Authenticates as tenant `a`, then a request is answered.
fn authenticate_and_ping(conn: &mut Conn, id: i64) {
    conn.request(json!(id), "bus/authenticate", json!({"token": TOKEN}), None);
    let reply = conn.recv();
    assert_eq!(reply["result"]["tenant"], json!("a"), "{reply}");
    still_works(conn, id + 1);
}

/// Reads a raw socket until the daemon closes it; returns what came (a TLS alert at most).
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => {}
        // Closing with the client's bytes unread may reset the connection: closed all the same.
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the daemon did not close the connection: {e}"),
    }
    got
}

#[test]
fn ndjson_over_tls_while_plaintext_and_silent_clients_are_closed() {
    let keys = tempfile::tempdir().unwrap();
    let cert = self_signed(keys.path(), "bus");
    let bus = Bus::start_with(
        &config(&cert.cert_file, &cert.key_file),
        Mode::Tcp,
        &["--metrics", "127.0.0.1:0"],
    );
    let addr = bus.tcp_addr().to_owned();
    let mut first = connect_tls(&addr, &cert.der).expect("TLS handshake");
    authenticate_and_ping(&mut first, 1);

    // A plaintext client gets no JSON back, only the end of the stream.
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain
        .write_all(
            &serde_json::to_vec(
                &json!({"jsonrpc": "2.0", "id": 1, "method": "bus/authenticate",
                "params": {"token": TOKEN}}),
            )
            .unwrap(),
        )
        .unwrap();
    plain.write_all(b"\n").unwrap();
    let got = read_until_closed(&mut plain);
    assert!(
        !String::from_utf8_lossy(&got).contains("jsonrpc"),
        "{got:?}"
    );

    // A client that never starts its handshake is closed after auth.handshake_timeout_sec.
    let mut silent = TcpStream::connect(&addr).unwrap();
    let start = Instant::now();
    read_until_closed(&mut silent);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );

    // Neither harmed the listener nor the connection already open.
    still_works(&mut first, 3);
    let mut second = connect_tls(&addr, &cert.der).expect("TLS handshake");
    authenticate_and_ping(&mut second, 10);

    let metrics = bus.metrics_addr();
    let failures = |reason| {
        metric(
            &metrics,
            "codex_bus_tls_handshake_failures_total",
            &[("reason", reason)],
        )
    };
    assert_eq!((failures("failed"), failures("timeout")), (1.0, 1.0));
    let log = bus.wait_log("TLS handshake failed");
    assert!(log.contains("INFO"), "{log}");
    let key_body = cert.key_pem.lines().nth(1).unwrap();
    assert!(!bus.log().contains(key_body), "the key reached the log");

    // A drain ends each TLS stream with close_notify: the client reads a clean end, not a
    // truncation (rustls reports an EOF without it as an error).
    let mut bus = bus;
    bus.signal(Signal::SIGTERM);
    assert_eq!(first.read_to_end(), "");
    assert!(bus.wait_exit().success());
}

#[test]
fn unusable_certificate_files_stop_run_and_check_with_status_78_naming_the_file() {
    let keys = tempfile::tempdir().unwrap();
    let a = self_signed(keys.path(), "a");
    let b = self_signed(keys.path(), "b");
    let missing = keys.path().join("missing.crt");
    let empty = keys.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let cases: [(&Path, &Path, String); 4] = [
        (
            &missing,
            &a.key_file,
            format!(
                "transport.tls.cert_file: cannot read {}: ",
                missing.display()
            ),
        ),
        (
            &empty,
            &a.key_file,
            format!(
                "transport.tls.cert_file: no certificate (a PEM 'BEGIN CERTIFICATE' block) in {}",
                empty.display()
            ),
        ),
        (
            &a.cert_file,
            &a.cert_file,
            format!(
                "transport.tls.key_file: no private key (a PEM 'BEGIN PRIVATE KEY', 'BEGIN RSA \
                 PRIVATE KEY' or 'BEGIN EC PRIVATE KEY' block) in {}",
                a.cert_file.display()
            ),
        ),
        (
            &a.cert_file,
            &b.key_file,
            format!(
                "transport.tls.key_file: the key in {} does not match the certificate in {}",
                b.key_file.display(),
                a.cert_file.display()
            ),
        ),
    ];
    for (cert_file, key_file, message) in cases {
        let path = config(cert_file, key_file).write(keys.path());
        let path = path.to_str().unwrap();
        let (status, _, err) = run_bus(&["--config", path, "--tcp", "127.0.0.1:0"]);
        assert_eq!(status.code(), Some(78), "{err}");
        assert!(err.contains(&message), "run: {message:?} not in {err}");
        let (status, _, err) = run_bus(&["check", "--config", path]);
        assert_eq!(status.code(), Some(78), "{err}");
        assert!(err.contains(&message), "check: {message:?} not in {err}");
        assert!(!err.contains(a.key_pem.lines().nth(1).unwrap()), "{err}");
    }
    let path = config(&a.cert_file, &a.key_file).write(keys.path());
    let (status, _, err) = run_bus(&["check", "--config", path.to_str().unwrap()]);
    assert!(status.success(), "{err}");
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_the_old_one_if_the_new_is_unusable() {
    let keys = tempfile::tempdir().unwrap();
    let old = self_signed(keys.path(), "old");
    let new = self_signed(keys.path(), "new");
    let live = (keys.path().join("live.crt"), keys.path().join("live.key"));
    std::fs::copy(&old.cert_file, &live.0).unwrap();
    std::fs::copy(&old.key_file, &live.1).unwrap();
    let bus = Bus::start(&config(&live.0, &live.1), Mode::Tcp);
    let addr = bus.tcp_addr().to_owned();
    let mut before = connect_tls(&addr, &old.der).expect("TLS handshake");
    authenticate_and_ping(&mut before, 1);

    std::fs::copy(&new.cert_file, &live.0).unwrap();
    std::fs::copy(&new.key_file, &live.1).unwrap();
    bus.signal(Signal::SIGHUP);
    bus.wait_log("TLS certificate and key reloaded");
    assert!(
        connect_tls(&addr, &old.der).is_err(),
        "new connections get the new certificate"
    );
    let mut after = connect_tls(&addr, &new.der).expect("TLS handshake");
    authenticate_and_ping(&mut after, 10);
    still_works(&mut before, 3);

    // A half-written renewal (the key of another certificate) is refused; the last pair serves on.
    std::fs::copy(&old.key_file, &live.1).unwrap();
    bus.signal(Signal::SIGHUP);
    let warning = bus.wait_log("cannot reload the TLS certificate");
    assert!(warning.contains("does not match"), "{warning}");
    let mut still = connect_tls(&addr, &new.der).expect("TLS handshake");
    authenticate_and_ping(&mut still, 20);
}

#[test]
fn tls_is_not_authentication_a_non_loopback_listener_still_needs_auth() {
    let keys = tempfile::tempdir().unwrap();
    let cert = self_signed(keys.path(), "bus");
    let mut cfg = config(&cert.cert_file, &cert.key_file);
    cfg.0.as_object_mut().unwrap().remove("auth");
    let path = cfg.write(keys.path());
    let (status, _, err) = run_bus(&["--config", path.to_str().unwrap(), "--tcp", "0.0.0.0:0"]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(
        err.contains("refusing to start a TCP listener on the non-loopback address 0.0.0.0:"),
        "{err}"
    );
}

/// `wss://`: a WebSocket listener with `websocket[].tls` serves a token holder over TLS (ALPN
/// `http/1.1`), and a plaintext `ws://` client to that port gets no upgrade.
#[tokio::test]
async fn a_websocket_listener_with_tls_serves_wss() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let keys = tempfile::tempdir().unwrap();
    let cert = self_signed(keys.path(), "bus");
    let config = BusConfig::mock(1)
        .section(
            "websocket",
            json!([{"listen": "127.0.0.1:0",
                    "tls": {"cert_file": cert.cert_file, "key_file": cert.key_file}}]),
        )
        .section(
            "auth",
            json!({"tokens": [{"tenant": "a", "sha256": sha256_hex(TOKEN)}], "handshake_timeout_sec": 2}),
        );
    // The config's listener is bound first, so it is the address the harness reads.
    let bus = Bus::start(&config, Mode::WebSocket);
    let addr = bus.tcp_addr().to_owned();

    let connector = tokio_rustls::TlsConnector::from(client_config(&cert.der, Some(b"http/1.1")));
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut request = format!("wss://{addr}/sessions/s1")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tls))
        .await
        .expect("upgrade in time")
        .expect("upgrade over TLS");
    ws.send(Message::text(r#"{"id":1,"method":"ping"}"#))
        .await
        .unwrap();
    let reply = loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("reply in time")
        {
            Some(Ok(Message::Text(text))) => {
                break serde_json::from_str::<serde_json::Value>(&text).unwrap()
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a reply, got {other:?}"),
        }
    };
    assert_eq!(reply["id"], json!(1), "{reply}");
    assert!(reply["result"]["pid"].is_u64(), "{reply}");

    // Plaintext to the TLS port: no upgrade.
    let plain = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/sessions/s1")),
    )
    .await
    .expect("refused in time");
    assert!(
        plain.is_err(),
        "a plaintext upgrade on a TLS port must fail"
    );
}

/// `GET path` over HTTPS from the admin endpoint at `addr`, trusting only `trusted`, with an
/// `Authorization` header when given; the whole response (the endpoint closes after one).
fn https_get(
    addr: &str,
    trusted: &CertificateDer<'static>,
    path: &str,
    authorization: Option<&str>,
) -> String {
    let name = ServerName::try_from("localhost").unwrap();
    let tls = ClientConnection::new(client_config(trusted, Some(b"http/1.1")), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut stream = StreamOwned::new(tls, tcp);
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{authorization}Connection: close\r\n\r\n"
    )
    .unwrap();
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN");
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        // A peer closing without close_notify still delivered the whole response.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("reading {path}: {e}"),
    }
    String::from_utf8(response).unwrap()
}

/// `metrics.tls`: the admin endpoint speaks HTTPS, so the dashboard's Basic login (the token as
/// password) and the bearer token never cross the network in clear; `status --cacert` reads it;
/// a plain-HTTP client to that port gets no answer; an unusable `metrics.tls` file stops the
/// daemon naming the field.
#[test]
fn the_admin_endpoint_with_tls_serves_the_dashboard_over_https() {
    const ADMIN_TOKEN: &str = "admin-tls-token-7c2e";
    /// Basic base64("operator:admin-tls-token-7c2e").
    const BASIC: &str = "Basic b3BlcmF0b3I6YWRtaW4tdGxzLXRva2VuLTdjMmU=";
    let keys = tempfile::tempdir().unwrap();
    let cert = self_signed(keys.path(), "admin");
    let config = BusConfig::mock(1).section(
        "metrics",
        json!({"bearer_sha256": sha256_hex(ADMIN_TOKEN),
               "tls": {"cert_file": cert.cert_file, "key_file": cert.key_file}}),
    );
    let bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let addr = bus.metrics_addr();

    let refused = https_get(&addr, &cert.der, "/ui", None);
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(refused.contains("www-authenticate: Basic"), "{refused}");
    let page = https_get(&addr, &cert.der, "/ui", Some(BASIC));
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>codex-stdio-bus</title>"), "{page}");
    let status = https_get(
        &addr,
        &cert.der,
        "/status",
        Some(&format!("Bearer {ADMIN_TOKEN}")),
    );
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(status.contains("\"pools\""), "{status}");
    let health = https_get(&addr, &cert.der, "/healthz", None);
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    // Plain HTTP to the HTTPS port: no HTTP answer, the connection closed.
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let got = read_until_closed(&mut plain);
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let again = https_get(&addr, &cert.der, "/healthz", None);
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");

    // `codex-stdio-bus status --cacert`: HTTPS, trusting that certificate, by IP and by name.
    let port = addr.rsplit_once(':').unwrap().1;
    for endpoint in [addr.clone(), format!("localhost:{port}")] {
        let status = std::process::Command::new(codex_bus_tests::bin("codex-stdio-bus"))
            .args(["status", "--metrics", &endpoint, "--cacert"])
            .arg(&cert.cert_file)
            .env("CODEX_BUS_METRICS_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr),
        );
        assert!(status.status.success(), "{endpoint}: {err}");
        assert!(out.contains("ready"), "{endpoint}: {out}");
        assert!(out.starts_with("POOL"), "the table: {endpoint}: {out}");
    }
    // Without --cacert it speaks plain HTTP, which this port does not answer: a clear failure.
    let plain = std::process::Command::new(codex_bus_tests::bin("codex-stdio-bus"))
        .args(["status", "--metrics", &addr])
        .env("CODEX_BUS_METRICS_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!plain.status.success());
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(err.contains("pass --cacert"), "{err}");

    // A key file that is not there: status 78, naming the field and the file.
    let broken = BusConfig::mock(1).section(
        "metrics",
        json!({"listen": "127.0.0.1:0",
               "tls": {"cert_file": cert.cert_file, "key_file": keys.path().join("missing.key")}}),
    );
    let path = broken.write(keys.path());
    let (status, _, err) = run_bus(&["--config", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(
        err.contains("metrics.tls") && err.contains("missing.key"),
        "{err}"
    );
}
