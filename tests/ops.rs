//! Operating checkpointd, against the real binary: `/metrics` scraped over
//! TCP and parsed as Prometheus text, `/healthz` and `/readyz` (503 once
//! shutdown begins), JSON and plain-text logs (`NO_COLOR`, no escape codes
//! in pipes, colour on a terminal), the `call` and `watch` client commands
//! and their exit codes, TLS with a certificate made here (reloaded on
//! SIGHUP), and progress lines of import, export and migrations.

mod common;

use checkpointd::client::Client;
use common::child::{self, CHECKPOINTD, DUMP, Daemon, STEP, command, run_command};
use common::fixtures::fixture;
use common::fs::{copy_dir, data, tempdir};
use common::http::{addr, get, http, response};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Scrapes `/metrics` and parses it as Prometheus text.
fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let (status, head, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text")
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value as V;
    scrape.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(
        |s| match &s.value {
            V::Counter(v) | V::Gauge(v) | V::Untyped(v) => *v,
            V::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            V::Summary(_) => f64::NAN,
        },
    )
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.unwrap_or_else(|_| panic!("{what}: timed out"))
}

/// (On either backend: `CHECKPOINTD_TEST_BACKEND=postgres` serves a database.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_and_parsed() {
    let dir = tempdir();
    let mut d = Daemon::serve(&data(&dir), &["--metrics-listen", "127.0.0.1:0"]);
    let metrics_line = d.stdout.recv_timeout(STEP).expect("the metrics line");
    let metrics_addr = metrics_line
        .strip_prefix("metrics on http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("{metrics_line}"))
        .to_string();
    let mut c = d.connect().await;
    let mut watcher = d.connect().await;
    let sid = bounded("session", c.create_session("m")).await.unwrap();
    bounded("subscribe", watcher.subscribe(&sid, None)).await.unwrap();
    for i in 0..3 {
        bounded("checkpoint", c.checkpoint(&sid, &format!("{i}"), json!({"i": i}), json!({}))).await.unwrap();
    }
    for _ in 0..3 {
        bounded("event", watcher.next_event(STEP)).await.unwrap().expect("an event");
    }
    // An unknown method and a bad session id: labels stay bounded.
    assert!(bounded("nope", c.call("no_such_method_123", json!({}))).await.is_err());
    assert!(bounded("bad", c.call("get_session", json!({"session_id": "x"}))).await.is_err());

    for at in [addr(&d), metrics_addr.clone()] {
        let s = scrape(&at);
        let v = |name: &str, labels: &[(&str, &str)]| {
            sample(&s, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} at {at}"))
        };
        assert_eq!(v("checkpointd_requests_total", &[("method", "checkpoint"), ("code", "ok")]), 3.0);
        assert_eq!(v("checkpointd_requests_total", &[("method", "unknown"), ("code", "unknown_method")]), 1.0);
        assert_eq!(v("checkpointd_requests_total", &[("method", "get_session"), ("code", "invalid_params")]), 1.0);
        assert!(!s.samples.iter().any(|x| x.labels.values().any(|l| l.contains("no_such_method") || l == &sid)));
        assert_eq!(v("checkpointd_request_duration_seconds", &[("method", "checkpoint")]), 3.0);
        assert_eq!(v("checkpointd_connections", &[]), 2.0);
        assert_eq!(v("checkpointd_subscriptions", &[]), 1.0);
        assert_eq!(v("checkpointd_events_delivered_total", &[]), 3.0);
        assert_eq!(v("checkpointd_events_lagged_total", &[]), 0.0);
        assert_eq!(v("checkpointd_checkpoints", &[]), 3.0);
        assert_eq!(v("checkpointd_sessions", &[]), 1.0);
        // (A PostgreSQL store reports no bytes of its own.)
        let on_postgres = std::env::var("CHECKPOINTD_TEST_BACKEND").is_ok_and(|b| b == "postgres");
        assert!(on_postgres || v("checkpointd_storage_bytes", &[("kind", "on_disk")]) > 0.0);
        assert!(v("checkpointd_storage_bytes", &[("kind", "live")]) >= 0.0);
        assert!(v("checkpointd_storage_bytes", &[("kind", "dead")]) >= 0.0);
        // Four writes, each made durable by a group commit of at least one.
        let commits = v("checkpointd_group_commit_writes", &[]);
        assert!((1.0..=4.0).contains(&commits), "{commits}");
        assert_eq!(v("checkpointd_fsync_duration_seconds", &[]), commits);
        assert_eq!(v("checkpointd_store_failed", &[]), 0.0);
        assert_eq!(v("checkpointd_ready", &[]), 1.0);
        assert_eq!(v("checkpointd_build_info", &[("version", env!("CARGO_PKG_VERSION")), ("durability", "sync")]), 1.0);
    }
    // The metrics listener serves nothing else.
    assert_eq!(get(&metrics_addr, "/healthz").0, 200);
    assert_eq!(get(&metrics_addr, "/readyz").0, 200);
    assert_eq!(get(&metrics_addr, "/").0, 404);
    assert!(bounded("ws on metrics", Client::connect(&format!("ws://{metrics_addr}"))).await.is_err());
    // OpenMetrics for a client that asks for it.
    let (status, head, body) =
        http(&addr(&d), "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n");
    assert_eq!(status, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"));
    drop((c, watcher));
    assert!(d.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_flip_to_503_when_shutdown_begins() {
    let dir = tempdir();
    let mut d = Daemon::serve(&data(&dir), &[]);
    let at = addr(&d);
    assert_eq!(get(&at, "/healthz"), (200, get(&at, "/healthz").1, "ok\n".into()));
    let (status, _, body) = get(&at, "/readyz");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(get(&at, "/no-such-path").0, 404);
    assert_eq!(http(&at, "POST /readyz HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0, 405);
    assert_eq!(http(&at, "HEAD /healthz HTTP/1.1\r\n\r\n").2, "");
    assert_eq!(http(&at, "\x16\x03\x01 not http\r\n\r\n").0, 400);
    // WebSocket upgrades work on any path.
    let mut on_path = bounded("ws on a path", Client::connect(&format!("ws://{at}/some/path"))).await.unwrap();
    bounded("health", on_path.call("health", json!({}))).await.unwrap();

    // A probe whose request is still arriving when shutdown begins; then a
    // client that is told of the shutdown (so it has begun) by its Close.
    let mut probe = TcpStream::connect(&at).unwrap();
    probe.set_read_timeout(Some(STEP)).unwrap();
    probe.write_all(b"GET /readyz HTTP/1.1\r\nHost: test\r\n").unwrap();
    // Accepted after the probe: the probe was accepted too.
    let mut told = bounded("connect", Client::connect(d.url())).await.unwrap();
    bounded("health", told.call("health", json!({}))).await.unwrap();
    d.signal("TERM");
    let close = bounded("close", told.next_message()).await.expect("a Close frame");
    assert!(close.is_close(), "{close:?}");
    // Draining now (the probe holds it open): not ready, still alive.
    let (status, _, body) = get(&at, "/readyz");
    assert_eq!((status, body.as_str()), (503, "not ready: shutting down\n"));
    assert_eq!(get(&at, "/healthz").0, 200);
    assert!(bounded("ws while draining", Client::connect(d.url())).await.is_err());
    probe.write_all(b"\r\n").unwrap();
    let (status, _, body) = response(&mut probe);
    assert_eq!((status, body.as_str()), (503, "not ready: shutting down\n"));
    let status = d.wait_exit(child::STOP).expect("exit after the drain");
    assert!(status.success(), "{status:?}");
}

/// Runs `checkpointd` with `args` and exactly `env` to completion.
fn checkpointd(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = command(CHECKPOINTD, args);
    cmd.envs(env.iter().copied());
    run_command(cmd, None)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    for (args, env) in [(&["--log-format", "json"][..], &[][..]), (&[][..], &[("CHECKPOINTD_LOG_FORMAT", "json")][..])]
    {
        let dir = tempdir();
        let path = data(&dir);
        let mut all = vec!["--listen", "127.0.0.1:0", "--data-dir", path.to_str().unwrap()];
        all.extend_from_slice(args);
        let mut d = Daemon::start(&all, env);
        let mut c = d.connect().await;
        bounded("health", c.call("health", json!({}))).await.unwrap();
        drop(c);
        assert!(d.terminate().success());
        let stderr = d.stderr();
        let lines: Vec<Value> = stderr
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l:?}: {e}")))
            .collect();
        assert!(lines.len() >= 3, "{stderr}");
        for line in &lines {
            for key in ["timestamp", "level", "target", "message", "fields"] {
                assert!(line.get(key).is_some(), "{key} missing: {line}");
            }
            let ts = line["timestamp"].as_str().unwrap();
            assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
        }
        let serving = lines.iter().find(|l| l["message"] == "serving").unwrap_or_else(|| panic!("{stderr}"));
        assert_eq!(serving["level"], "INFO");
        assert_eq!(serving["fields"]["serving"], format!("data directory {}", path.display()));
        assert_eq!(serving["fields"]["durability"], "sync");
        assert!(lines.iter().any(|l| l["message"] == "stopped; data flushed"), "{stderr}");
    }
}

#[test]
fn text_logs_have_no_escape_codes_in_a_pipe() {
    let dir = tempdir();
    let path = data(&dir);
    for env in [&[][..], &[("NO_COLOR", "1")][..]] {
        let mut d = Daemon::start(&["--listen", "127.0.0.1:0", "--data-dir", path.to_str().unwrap()], env);
        assert!(d.terminate().success());
        let stderr = d.stderr();
        assert!(stderr.contains("INFO") && stderr.contains("serving"), "{stderr}");
        assert!(!stderr.contains('\x1b'), "escape codes in a pipe: {stderr:?}");
    }
}

/// A pseudo-terminal: (master, slave).
fn pty() -> (std::fs::File, std::os::fd::OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes the two descriptors it opens.
    let opened =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
    use std::os::fd::FromRawFd;
    assert!(master >= 0 && slave >= 0);
    // SAFETY: both descriptors were just opened and are owned here only.
    unsafe { (std::fs::File::from_raw_fd(master), std::os::fd::OwnedFd::from_raw_fd(slave)) }
}

/// Everything written to a pty's slave end, once every holder of it has
/// closed it (reads then fail with EIO).
fn read_terminal(mut master: std::fs::File) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    })
}

/// Runs the server with stderr on a pseudo-terminal; returns what it wrote.
fn stderr_on_a_terminal(dir: &Path, env: &[(&str, &str)]) -> String {
    let (master, slave) = pty();
    let mut cmd = command(CHECKPOINTD, &["--listen", "127.0.0.1:0", "--data-dir", dir.to_str().unwrap()]);
    cmd.envs(env.iter().copied()).stderr(Stdio::from(slave));
    // The command (and with it our copy of the slave end) is dropped here.
    let mut server = Lines::spawn(cmd);
    let reader = read_terminal(master);
    assert!(server.next().starts_with("listening on ws://"));
    server.signal(libc::SIGTERM);
    assert!(server.wait().success());
    reader.join().unwrap()
}

#[test]
fn text_logs_are_coloured_on_a_terminal_unless_no_color() {
    let dir = tempdir();
    let coloured = stderr_on_a_terminal(&data(&dir), &[]);
    assert!(coloured.contains("serving") && coloured.contains("\x1b["), "{coloured:?}");
    let plain = stderr_on_a_terminal(&data(&dir), &[("NO_COLOR", "1")]);
    assert!(plain.contains("serving") && !plain.contains('\x1b'), "{plain:?}");
    // An empty NO_COLOR is not set (no-color.org).
    let empty = stderr_on_a_terminal(&data(&dir), &[("NO_COLOR", "")]);
    assert!(empty.contains("\x1b["), "{empty:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_prints_results_and_exits_1_on_error_replies() {
    let dir = tempdir();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let token = token.to_str().unwrap();
    let mut d = Daemon::serve(&data(&dir), &["--token-file", token]);
    let url = d.url().to_string();
    let call = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["call", "--url", url.as_str()];
        all.extend_from_slice(args);
        checkpointd(&all, env)
    };
    let out = call(&["--token-file", token, "create_session", r#"{"name":"from the cli"}"#], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sid: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sid = sid.as_str().expect("a session id").to_string();
    // The token may come from the environment too.
    let out = call(&["get_session", &format!(r#"{{"session_id":"{sid}"}}"#)], &[("CHECKPOINTD_TOKEN", "s3cret")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let session: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(session["name"], "from the cli");
    // Params from stdin.
    let mut cmd = command(CHECKPOINTD, &["call", "--url", &url, "--token-file", token, "checkpoint", "-"]);
    cmd.env_remove("CHECKPOINTD_TOKEN");
    let params = json!({"session_id": sid, "message": "m", "state": {"a": 1}}).to_string();
    let out = run_command(cmd, Some(params.as_bytes()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(serde_json::from_slice::<Value>(&out.stdout).unwrap().is_string());

    // Error replies: exit 1, the code on stderr, nothing on stdout.
    for (args, code) in [
        (
            vec!["--token-file", token, "get_session", r#"{"session_id":"00000000-0000-4000-8000-000000000001"}"#],
            "not_found",
        ),
        (vec!["--token-file", token, "no_such_method"], "unknown_method"),
        (vec!["get_session", r#"{"session_id":"x"}"#], "unauthorized"),
    ] {
        let out = call(&args, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty());
        let err = text(&out.stderr);
        assert!(err.starts_with("checkpointd call: ") && err.contains(code), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // Usage: params that are not JSON.
    let out = call(&["--token-file", token, "health", "{nope"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not JSON"), "{}", text(&out.stderr));
    assert!(d.terminate().success());
    // No server: exit 1, one line.
    let out = call(&["health"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("connection"), "{}", text(&out.stderr));
}

/// A child whose stdout lines arrive on a channel; killed on drop.
struct Lines {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(mut cmd: std::process::Command) -> Lines {
        let mut child = cmd.spawn().expect("spawn");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { child, lines }
    }

    fn next(&self) -> String {
        self.lines.recv_timeout(STEP).expect("a line within the step")
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill only sends a signal to the child we started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits (bounded) for the exit.
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit");
            // The stdout thread ends with the child: wait on it rather than spin.
            let _ = self.lines.recv_timeout(Duration::from_millis(50));
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_events_as_json_lines_until_interrupted() {
    let dir = tempdir();
    let mut d = Daemon::serve(&data(&dir), &[]);
    let mut c = d.connect().await;
    let sid = bounded("session", c.create_session("w")).await.unwrap();
    let first = bounded("checkpoint", c.checkpoint(&sid, "before", json!(1), json!({}))).await.unwrap();
    let watch = Lines::spawn(command(CHECKPOINTD, &["watch", &sid, "--since", "0", "--url", d.url()]));
    // The replay first: the checkpoint stored before.
    let replayed: Value = serde_json::from_str(&watch.next()).unwrap();
    assert_eq!(
        (&replayed["event_type"], &replayed["data"]["checkpoint_id"]),
        (&json!("checkpoint_created"), &json!(first))
    );
    // Then live events.
    let second = bounded("checkpoint", c.checkpoint(&sid, "after", json!(2), json!({}))).await.unwrap();
    let live: Value = serde_json::from_str(&watch.next()).unwrap();
    assert_eq!(live["data"]["checkpoint_id"], second);
    assert!(live["seq"].as_u64().unwrap() > replayed["seq"].as_u64().unwrap());
    let mut watch = watch;
    watch.signal(libc::SIGINT);
    assert!(watch.wait().success());
    drop(c);
    assert!(d.terminate().success());
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by
/// it, as PEM: (ca, cert, key).
fn certificates(name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// The certificate the server presents to a new TLS connection, and the
/// answer to `GET /healthz` over it.
async fn presented(addr: &str, ca: &Path) -> (Vec<u8>, u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = checkpointd::server::tls::client_config(Some(ca)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = bounded("tcp", tokio::net::TcpStream::connect(addr)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = bounded("tls", connector.connect(name, tcp)).await.expect("a TLS handshake");
    let cert = tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec();
    bounded("write", tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")).await.unwrap();
    let mut all = Vec::new();
    let _ = bounded("read", tls.read_to_end(&mut all)).await;
    let (status, _, _) = response(&mut all.as_slice());
    (cert, status)
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_wss_and_reloads_its_certificate_on_sighup() {
    let dir = tempdir();
    let (ca1, cert1, key1) = certificates("first");
    let (ca2, cert2, key2) = certificates("second");
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (ca1_file, ca2_file) = (file("ca1.pem", &ca1), file("ca2.pem", &ca2));
    let (cert, key) = (file("cert.pem", &cert1), file("key.pem", &key1));
    let data = data(&dir);
    let mut cmd = command(
        CHECKPOINTD,
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--log-format",
            "json",
        ],
    );
    // stderr as lines too, to see the reload logged.
    cmd.stderr(Stdio::piped());
    let mut server = Lines::spawn(cmd);
    let ready = server.next();
    let at = ready.strip_prefix("listening on wss://").unwrap_or_else(|| panic!("the ready line: {ready}")).to_string();
    let url = format!("wss://{at}");
    let (tx, logs) = mpsc::channel();
    let stderr = server.child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    // A client of the crate, and the CLI, with the CA file.
    let tls1 = checkpointd::server::tls::client_config(Some(&ca1_file)).unwrap();
    let mut before = bounded("wss", Client::connect_with(&url, Some(tls1))).await.expect("wss connect");
    bounded("health", before.call("health", json!({}))).await.unwrap();
    let out = checkpointd(&["call", "--url", &url, "--ca-file", ca1_file.to_str().unwrap(), "health"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["healthy"], true);
    // Plain ws:// is refused; another CA is not trusted.
    assert!(bounded("ws", Client::connect(&format!("ws://{at}"))).await.is_err());
    let out = checkpointd(&["call", "--url", &url, "--ca-file", ca2_file.to_str().unwrap(), "health"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // Health over HTTPS on the same listener.
    assert_eq!(presented(&at, &ca1_file).await, (pem_der(&cert1), 200));

    // SIGHUP with a new pair: new connections get it; open ones go on.
    std::fs::write(&cert, &cert2).unwrap();
    std::fs::write(&key, &key2).unwrap();
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + STEP;
    loop {
        let line = logs.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("the reload logged");
        let line: Value = serde_json::from_str(&line).unwrap();
        if line["message"] == "SIGHUP: certificate reloaded" {
            break;
        }
    }
    assert_eq!(presented(&at, &ca2_file).await, (pem_der(&cert2), 200));
    bounded("health", before.call("health", json!({}))).await.unwrap();
    // A broken pair is refused and the current one stays.
    std::fs::write(&key, "not a key").unwrap();
    server.signal(libc::SIGHUP);
    loop {
        let line = logs.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("the failure logged");
        let line: Value = serde_json::from_str(&line).unwrap();
        if line["message"] == "SIGHUP: certificate not reloaded; keeping the old one" {
            assert_eq!(line["level"], "ERROR");
            break;
        }
    }
    assert_eq!(presented(&at, &ca2_file).await, (pem_der(&cert2), 200));
    drop(before);
    server.signal(libc::SIGTERM);
    assert!(server.wait().success());
}

#[test]
fn tls_flags_are_checked_at_start() {
    let dir = tempdir();
    let path = data(&dir);
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "nothing here").unwrap();
    let base = ["--listen", "127.0.0.1:0", "--data-dir", path.to_str().unwrap()];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        checkpointd(&args, &[])
    };
    // Both or neither (usage), and files that hold a certificate and key.
    assert_eq!(with(&["--tls-cert", bad.to_str().unwrap()]).status.code(), Some(2));
    let out = with(&["--tls-cert", bad.to_str().unwrap(), "--tls-key", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("bad.pem") && err.lines().count() == 1, "{err}");
    assert!(text(&out.stdout).is_empty(), "no ready line");
}

#[test]
fn import_export_and_migrations_report_progress_unless_quiet() {
    let dir = tempdir();
    let source = dir.path().join("v3");
    copy_dir(&fixture(3), &source);
    // A migration (format 3 to the current one) when the server opens it
    // (a sled data directory, whatever the tests' backend).
    let mut d = Daemon::start(&["--listen", "127.0.0.1:0", "--data-dir", source.to_str().unwrap()], &[]);
    assert!(d.terminate().success());
    let log = d.stderr();
    assert!(log.contains("migration 3 to 4 (") && log.contains("done:") && log.contains("items/s"), "{log}");

    let export = run_command(command(DUMP, &["--data-dir", source.to_str().unwrap(), "export"]), None);
    assert!(export.status.success(), "{}", text(&export.stderr));
    let err = text(&export.stderr);
    assert!(err.contains("export done: ") && err.contains(" of ") && err.contains("items/s"), "{err}");
    let quiet = run_command(command(DUMP, &["--data-dir", source.to_str().unwrap(), "--quiet", "export"]), None);
    assert!(quiet.status.success());
    assert!(text(&quiet.stdout).starts_with(r#"{"type":"header""#), "{}", text(&quiet.stdout));
    assert!(quiet.stderr.is_empty(), "{}", text(&quiet.stderr));

    let file = dir.path().join("all.jsonl");
    std::fs::write(&file, &export.stdout).unwrap();
    // --quiet after the subcommand or before it.
    for (name, quiet, before) in [("loud", false, false), ("quiet", true, false), ("quiet-first", true, true)] {
        let target = dir.path().join(name);
        let mut args = vec!["import", "--data-dir", target.to_str().unwrap(), file.to_str().unwrap()];
        if quiet {
            args.insert(if before { 0 } else { args.len() }, "--quiet");
        }
        let out = checkpointd(&args, &[]);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert_eq!(err.contains("import done: "), !quiet, "{args:?}: {err}");
        assert!(text(&out.stdout).starts_with("imported "), "{}", text(&out.stdout));
    }
    // A serving option before a subcommand would be ignored by it: refused.
    let target = dir.path().join("misplaced");
    let out = checkpointd(&["--data-dir", target.to_str().unwrap(), "import", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--data-dir is a serving option: it cannot go before `import`"));
    assert!(!target.exists());
    // On a terminal: a bar with items, bytes, rate and ETA; none with --quiet.
    for quiet in [false, true] {
        let target = dir.path().join(format!("on-a-terminal-{quiet}"));
        let mut args = vec!["import", "--data-dir", target.to_str().unwrap(), file.to_str().unwrap()];
        if quiet {
            args.push("--quiet");
        }
        let (master, slave) = pty();
        let mut cmd = command(CHECKPOINTD, &args);
        cmd.stderr(Stdio::from(slave));
        let mut import = Lines::spawn(cmd);
        let shown = read_terminal(master);
        assert!(import.next().starts_with("imported "));
        assert!(import.wait().success());
        let shown = shown.join().unwrap();
        if quiet {
            assert!(!shown.contains("items"), "{shown:?}");
        } else {
            assert!(shown.contains("import [") && shown.contains(" items, ") && shown.contains("ETA"), "{shown:?}");
            assert!(!shown.contains("import done"), "a bar, not log lines: {shown:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_answered_at_capacity_without_taking_a_slot() {
    let dir = tempdir();
    let mut d = Daemon::serve(&data(&dir), &["--max-connections", "1"]);
    let mut only = d.connect().await;
    bounded("health", only.call("health", json!({}))).await.unwrap();
    for _ in 0..3 {
        assert_eq!(get(&addr(&d), "/readyz").0, 200);
    }
    assert_eq!(sample(&scrape(&addr(&d)), "checkpointd_connections", &[]), Some(1.0));
    // WebSocket clients are still limited: the next one is refused.
    let mut second = bounded("connect", Client::connect(d.url())).await.unwrap();
    let refused = bounded("reply", second.next_reply()).await.unwrap();
    assert_eq!(refused["code"], "capacity", "{refused}");
    // And the slot of the first is still usable.
    bounded("health", only.call("health", json!({}))).await.unwrap();
    drop((only, second));
    assert!(d.terminate().success());
}
