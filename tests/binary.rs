//! The real `checkpointd` binary as a child process: options, restart,
//! SIGTERM, SIGKILL, a second instance on the same directory, exposure rules
//! and tokens.

use checkpointd::client::{Client, ClientError};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_checkpointd");
/// Upper bound for startup, one request, or an exit.
const STEP: Duration = Duration::from_secs(15);
/// SIGTERM must stop the server within this.
const STOP: Duration = Duration::from_secs(8);

/// Environment variables the binary reads; cleared so the caller's
/// environment cannot change a test.
const ENV: [&str; 9] = [
    "CHECKPOINTD_DATA_DIR",
    "CHECKPOINTD_LISTEN",
    "CHECKPOINTD_TOKEN",
    "CHECKPOINTD_MAX_CONNECTIONS",
    "CHECKPOINTD_MAX_MESSAGE_BYTES",
    "CHECKPOINTD_DURABILITY",
    "CHECKPOINTD_EVENT_RETENTION",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

/// A running (or finished) child process, killed and reaped on drop.
struct Daemon {
    pid: u32,
    /// stdout lines after the `listening on` line.
    stdout: mpsc::Receiver<String>,
    exited: mpsc::Receiver<ExitStatus>,
    status: Option<ExitStatus>,
    stderr: Option<JoinHandle<String>>,
    url: Option<String>,
}

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for var in ENV {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd
}

impl Daemon {
    /// Spawns the binary; the caller decides whether it should come up.
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_command(command(args, env))
    }

    fn spawn_command(mut cmd: Command) -> Daemon {
        let mut child = cmd.spawn().expect("spawn checkpointd");
        let pid = child.id();
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (line_tx, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        // The child is waited for on its own thread: exits are observed
        // without polling.
        let (exit_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        Daemon { pid, stdout, exited, status: None, stderr: Some(stderr), url: None }
    }

    /// Spawns the server and waits for its `listening on ws://` line.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::wait_ready(Daemon::spawn(args, env))
    }

    fn wait_ready(mut d: Daemon) -> Daemon {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match d.stdout.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ws://") {
                        assert!(addr.starts_with("127.0.0.1:"), "{line}");
                        d.url = Some(format!("ws://{addr}"));
                        return d;
                    }
                }
                Err(_) => {
                    let status = d.wait_exit(Duration::from_secs(2));
                    panic!("checkpointd did not come up ({status:?}); stderr:\n{}", d.stderr());
                }
            }
        }
    }

    /// Starts serving `dir` on a free loopback port.
    fn serve(dir: &Path, extra: &[&str]) -> Daemon {
        let mut args = vec!["--listen", "127.0.0.1:0", "--data-dir", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        Daemon::start(&args, &[])
    }

    fn url(&self) -> &str {
        self.url.as_deref().expect("not listening")
    }

    async fn connect(&self) -> Client {
        tokio::time::timeout(STEP, Client::connect(self.url())).await.expect("connect timed out").expect("connect")
    }

    fn signal(&self, name: &str) {
        let signal = match name {
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            "KILL" => libc::SIGKILL,
            other => panic!("no signal {other}"),
        };
        let pid = libc::pid_t::try_from(self.pid).expect("a pid");
        // SAFETY: kill only sends a signal to the child we started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill -{name} {} failed", self.pid);
    }

    /// Waits for the process to exit; `None` if it is still running.
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.exited.recv_timeout(within).ok();
        }
        self.status
    }

    /// Everything the process wrote to stderr (waits for it to exit).
    fn stderr(&mut self) -> String {
        self.stderr.take().map(|h| h.join().unwrap()).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (must come within `STOP`).
    fn terminate(&mut self) -> ExitStatus {
        let started = Instant::now();
        self.signal("TERM");
        let status = self.wait_exit(STOP).unwrap_or_else(|| panic!("no exit within {STOP:?} of SIGTERM"));
        eprintln!("checkpointd stopped {:?} after SIGTERM", started.elapsed());
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none() && self.wait_exit(Duration::ZERO).is_none() {
            // Not `signal`: no assertion may panic inside a drop.
            if let Ok(pid) = libc::pid_t::try_from(self.pid) {
                // SAFETY: kill only sends a signal to the child we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = self.wait_exit(STEP);
        }
    }
}

/// Runs the binary to completion: (status, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut d = Daemon::spawn(args, env);
    let status = d.wait_exit(STEP).unwrap_or_else(|| panic!("{args:?} did not exit"));
    let mut stdout = String::new();
    while let Ok(line) = d.stdout.recv_timeout(Duration::from_secs(2)) {
        stdout.push_str(&line);
        stdout.push('\n');
    }
    (status, stdout, d.stderr())
}

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut).await.unwrap_or_else(|_| panic!("{what}: timed out"))
}

async fn ok(c: &mut Client, method: &str, params: Value) -> Value {
    bounded(method, c.call(method, params)).await.unwrap_or_else(|e| panic!("{method}: {e}"))
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn data(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("data")
}

// ---------------------------------------------------------------- options

#[test]
fn help_documents_every_option() {
    for args in [&["--help"][..], &["serve", "--help"][..]] {
        let (status, stdout, _) = run(args, &[]);
        assert!(status.success(), "{args:?}: {status}");
        for needle in [
            "--data-dir",
            "--listen",
            "--token-file",
            "--max-connections",
            "--max-message-bytes",
            "--durability",
            "--event-retention",
            "--allow-unauthenticated",
            "CHECKPOINTD_DATA_DIR",
            "CHECKPOINTD_LISTEN",
            "CHECKPOINTD_TOKEN",
            "CHECKPOINTD_MAX_CONNECTIONS",
            "127.0.0.1:7700",
            "./checkpoint-data",
            "1024",
            "sync",
        ] {
            assert!(stdout.contains(needle), "{args:?} --help does not mention {needle}:\n{stdout}");
        }
    }
    let (status, stdout, _) = run(&["--version"], &[]);
    assert!(status.success());
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
}

#[test]
fn bad_options_are_refused() {
    let dir = tempdir();
    let d = data(&dir);
    let d = d.to_str().unwrap();
    for args in [
        vec!["--listen", "127.0.0.1:0", "--data-dir", d, "--durability", "sometimes"],
        vec!["--listen", "127.0.0.1:0", "--data-dir", d, "--max-connections", "many"],
        vec!["--listen", "127.0.0.1:0", "--data-dir", d, "--token", "s3cret"],
        vec!["--listen", "127.0.0.1:0", "--data-dir", d, "--no-such-option"],
    ] {
        let (status, _, stderr) = run(&args, &[]);
        assert!(!status.success(), "{args:?} was accepted");
        assert!(!stderr.is_empty(), "{args:?}: no message");
    }
    for args in [
        vec!["--listen", "127.0.0.1:0", "--data-dir", d, "--max-connections", "0"],
        vec!["--listen", "127.0.0.1:0", "--data-dir", d, "--max-message-bytes", "10"],
        vec!["--listen", "127.0.0.1:0", "--data-dir", d, "--event-retention", "0"],
        vec!["--listen", "not an address", "--data-dir", d],
    ] {
        let (status, stdout, stderr) = run(&args, &[]);
        assert_eq!(status.code(), Some(1), "{args:?}: {status}; {stderr}");
        assert!(!stdout.contains("listening"), "{args:?}");
        assert!(stderr.lines().any(|l| l.starts_with("checkpointd: ")), "{args:?}: {stderr}");
    }
}

#[test]
fn a_non_loopback_address_needs_a_token_or_an_opt_in() {
    let dir = tempdir();
    let d = data(&dir);
    let (status, stdout, stderr) = run(&["--listen", "0.0.0.0:0", "--data-dir", d.to_str().unwrap()], &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(!stdout.contains("listening"));
    let line = stderr.lines().find(|l| l.starts_with("checkpointd: ")).unwrap_or_else(|| panic!("{stderr}"));
    // It names the requested address: port 0 was never bound.
    assert!(line.contains("--allow-unauthenticated") && line.contains("0.0.0.0:0 "), "{line}");
    // Refused before anything was created on disk.
    assert!(!d.exists(), "the data directory was created although the server refused to start");
}

// ---------------------------------------------------------------- tokens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_trailing_newline_is_ignored() {
    let dir = tempdir();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let server = Daemon::serve(&data(&dir), &["--token-file", token_file.to_str().unwrap()]);
    let mut c = server.connect().await;
    let e = bounded("metrics", c.call("metrics", json!({}))).await.unwrap_err();
    assert_eq!(e, ClientError::Remote { message: "Authentication required".into(), code: "unauthorized".into() });
    let e = bounded("auth", c.call("authenticate", json!({"token": "s3cret\n"}))).await.unwrap_err();
    assert_eq!(e.code(), Some("unauthorized"));
    ok(&mut c, "authenticate", json!({"token": "s3cret"})).await;
    ok(&mut c, "metrics", json!({})).await;
    drop(server);

    // The token is never logged, at any level.
    let args = ["--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()];
    let mut server = Daemon::start(&args, &[("CHECKPOINTD_TOKEN", "TopSecretToken"), ("RUST_LOG", "trace")]);
    let mut c = server.connect().await;
    assert!(bounded("a", c.call("authenticate", json!({"token": "TopSecretTokeN"}))).await.is_err());
    ok(&mut c, "authenticate", json!({"token": "TopSecretToken"})).await;
    assert_eq!(server.terminate().code(), Some(0));
    let log = server.stderr().to_lowercase();
    assert!(log.contains("trace"), "not logging at trace level");
    let hex: String = b"TopSecret".iter().map(|b| format!("{b:02x}")).collect();
    assert!(!log.contains("topsecret") && !log.contains(&hex), "the token appears in the log");

    // The token in the environment works the same way.
    let dir2 = tempdir();
    let args = ["--listen", "127.0.0.1:0", "--data-dir", dir2.path().to_str().unwrap()];
    let server = Daemon::start(&args, &[("CHECKPOINTD_TOKEN", "from-env")]);
    let mut c = server.connect().await;
    assert_eq!(bounded("m", c.call("metrics", json!({}))).await.unwrap_err().code(), Some("unauthorized"));
    ok(&mut c, "authenticate", json!({"token": "from-env"})).await;
    ok(&mut c, "metrics", json!({})).await;
    drop(server);

    // An empty or missing token file is refused.
    std::fs::write(&token_file, "\n").unwrap();
    let missing = dir.path().join("missing");
    for (file, why) in [(&token_file, "empty"), (&missing, "token file")] {
        let (status, _, stderr) = run(
            &[
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                dir2.path().to_str().unwrap(),
                "--token-file",
                file.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_configures_the_server() {
    let dir = tempdir();
    let d = data(&dir);
    let server = Daemon::start(
        &["serve"],
        &[
            ("CHECKPOINTD_DATA_DIR", d.to_str().unwrap()),
            ("CHECKPOINTD_LISTEN", "127.0.0.1:0"),
            ("CHECKPOINTD_MAX_CONNECTIONS", "1"),
            ("CHECKPOINTD_DURABILITY", "async"),
        ],
    );
    let mut c = server.connect().await;
    let h = ok(&mut c, "health", json!({})).await;
    assert_eq!(h["durability"], "async");
    assert_eq!(h["max_connections"], 1);
    let mut second = server.connect().await;
    let msg = bounded("init", second.next_message()).await.unwrap();
    assert!(msg.to_text().unwrap().contains("Server at capacity"), "{msg:?}");
    assert!(d.is_dir(), "data directory was not created");
}

// ---------------------------------------------------------------- lifecycle

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_everything() {
    let dir = tempdir();
    let mut server = Daemon::serve(&data(&dir), &[]);
    let mut c = server.connect().await;
    let sid = bounded("s", c.create_session("keep me")).await.unwrap();
    ok(&mut c, "set_retention", json!({"session_id": sid, "keep_recent": 50, "preserve_tags": ["m"]})).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let extra = json!({"tags": [format!("t{i}")], "metadata": {"i": i}, "trigger": "scheduled"});
        ids.push(
            bounded("c", c.checkpoint(&sid, &format!("c{i}"), json!({"step": i, "x": 2.5}), extra)).await.unwrap(),
        );
    }
    ok(&mut c, "annotate", json!({"checkpoint_id": ids[3], "note": "n", "severity": "critical"})).await;
    ok(&mut c, "delete_checkpoint", json!({"checkpoint_id": ids[9]})).await;
    let empty = bounded("s", c.create_session("empty")).await.unwrap();
    ok(&mut c, "delete_session", json!({"session_id": empty})).await;

    let before_metrics = ok(&mut c, "metrics", json!({})).await;
    let before_session = ok(&mut c, "get_session", json!({"session_id": sid})).await;
    let mut before_records = Vec::new();
    for id in &ids[..9] {
        before_records.push(ok(&mut c, "get_checkpoint", json!({"checkpoint_id": id})).await);
    }
    let before_sessions = ok(&mut c, "list_sessions", json!({})).await;

    assert_eq!(server.terminate().code(), Some(0));
    let mut server = Daemon::serve(&data(&dir), &[]);
    let mut c = server.connect().await;
    let m = ok(&mut c, "metrics", json!({})).await;
    for field in ["total_checkpoints", "active_sessions", "total_sessions_created", "global_sequence", "event_sequence"]
    {
        assert_eq!(m[field], before_metrics[field], "{field} changed across a restart");
    }
    assert_eq!(ok(&mut c, "get_session", json!({"session_id": sid})).await, before_session);
    for (id, before) in ids[..9].iter().zip(&before_records) {
        assert_eq!(&ok(&mut c, "get_checkpoint", json!({"checkpoint_id": id})).await, before);
    }
    assert_eq!(ok(&mut c, "list_sessions", json!({})).await, before_sessions);
    assert_eq!(ok(&mut c, "validate", json!({})).await["invalid"], 0);
    // Sequences continue; the deleted newest one is not reused.
    let deleted_seq = before_records[8]["sequence_number"].as_u64().unwrap() + 1;
    let next = bounded("c", c.checkpoint(&sid, "after restart", json!(1), json!({}))).await.unwrap();
    let seq = ok(&mut c, "get_checkpoint", json!({"checkpoint_id": next})).await["sequence_number"].as_u64().unwrap();
    assert!(seq > deleted_seq, "sequence {seq} reused after restart");
    // The journal survived: a subscriber resumes from before the restart.
    ok(&mut c, "subscribe", json!({"session_id": sid, "since": 0})).await;
    let first = bounded("event", c.next_event(STEP)).await.unwrap().expect("no replayed event");
    assert_eq!(first["event_type"], "checkpoint_created");
    assert_eq!(first["data"]["checkpoint_id"], ids[0].as_str());
    assert_eq!(server.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_close_frames_and_exits_zero() {
    let dir = tempdir();
    let mut server = Daemon::serve(&data(&dir), &[]);
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    let sid = bounded("s", a.create_session("s")).await.unwrap();
    ok(&mut b, "subscribe", json!({"session_id": sid})).await;
    // A half-open connection that never handshakes must not delay the exit.
    let _idle = std::net::TcpStream::connect(server.url().trim_start_matches("ws://")).unwrap();

    assert_eq!(server.terminate().code(), Some(0));
    for c in [&mut a, &mut b] {
        let deadline = Instant::now() + STEP;
        let mut code = None;
        for _ in 0..100 {
            assert!(Instant::now() < deadline);
            match bounded("close", c.next_message()).await {
                Ok(Message::Close(frame)) => {
                    code = frame.map(|f| u16::from(f.code));
                    break;
                }
                Ok(_) => continue,
                Err(e) => panic!("connection ended without a Close frame: {e}"),
            }
        }
        assert_eq!(code, Some(1001));
    }
    let mut stderr = server.stderr();
    stderr.retain(|c| c != '\r');
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Acknowledged (id, n) pairs, their count as it grows, and the writer tasks.
type Writers =
    (Arc<Mutex<Vec<(String, u64)>>>, tokio::sync::watch::Receiver<usize>, Vec<tokio::task::JoinHandle<ClientError>>);

/// `n` clients writing checkpoints `{"n": ...}` into `sid` until a call
/// fails; each task returns the error that stopped it.
fn spawn_writers(url: &str, sid: &str, n: u64) -> Writers {
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let (count_tx, count_rx) = tokio::sync::watch::channel(0usize);
    let count_tx = Arc::new(count_tx);
    let writers = (0..n)
        .map(|w| {
            let (url, sid, acked, count_tx) =
                (url.to_string(), sid.to_string(), Arc::clone(&acked), Arc::clone(&count_tx));
            tokio::spawn(async move {
                let mut c = match Client::connect(&url).await {
                    Ok(c) => c,
                    Err(e) => return e,
                };
                for i in 0..100_000u64 {
                    let n = w * 1_000_000 + i;
                    match c.checkpoint(&sid, &format!("w{w}-{i}"), json!({"n": n}), json!({})).await {
                        Ok(id) => {
                            let mut a = acked.lock().unwrap();
                            a.push((id, n));
                            count_tx.send_replace(a.len());
                        }
                        Err(e) => return e,
                    }
                }
                panic!("writer {w} was never stopped")
            })
        })
        .collect();
    (acked, count_rx, writers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_checkpoint() {
    let dir = tempdir();
    let mut server = Daemon::serve(&data(&dir), &[]);
    let mut c = server.connect().await;
    let sid = bounded("s", c.create_session("crash")).await.unwrap();
    let (acked, mut enough_rx, writers) = spawn_writers(server.url(), &sid, 4);
    bounded("writes", enough_rx.wait_for(|&n| n >= 200)).await.unwrap();
    server.signal("KILL");
    let status = server.wait_exit(STEP).expect("no exit after SIGKILL");
    assert!(!status.success());
    for w in writers {
        let _ended_by = bounded("writer", w).await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200);

    let mut server = Daemon::serve(&data(&dir), &[]);
    let mut c = server.connect().await;
    for (id, n) in &acked {
        let record = ok(&mut c, "get_checkpoint", json!({"checkpoint_id": id})).await;
        assert_eq!(record["state"], json!({"n": n}), "{id}");
        assert_eq!(record["session_id"], sid.as_str());
    }
    let v = ok(&mut c, "validate", json!({})).await;
    assert_eq!(v["invalid"], 0, "{v}");
    let count = ok(&mut c, "get_session", json!({"session_id": sid})).await["checkpoint_count"].as_u64().unwrap();
    assert!(count as usize >= acked.len());
    let list = bounded("list", c.list_checkpoints(&sid, json!({}))).await.unwrap();
    assert_eq!(list.len() as u64, count, "checkpoint_count disagrees with the list");
    assert_eq!(ok(&mut c, "metrics", json!({})).await["total_checkpoints"], count);
    assert_eq!(server.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_directory_is_refused() {
    let dir = tempdir();
    let d = data(&dir);
    let mut first = Daemon::serve(&d, &[]);
    let mut c = first.connect().await;
    let sid = bounded("s", c.create_session("mine")).await.unwrap();

    let (status, stdout, stderr) = run(&["--listen", "127.0.0.1:0", "--data-dir", d.to_str().unwrap()], &[]);
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got:\n{stderr}");
    let line = lines[0];
    assert!(line.starts_with("checkpointd: "), "{line}");
    assert!(line.contains("in use"), "{line}");
    assert!(line.contains(d.to_str().unwrap()), "the error does not name the directory: {line}");

    // The first server is unaffected.
    ok(&mut c, "get_session", json!({"session_id": sid})).await;
    bounded("c", c.checkpoint(&sid, "still mine", json!(1), json!({}))).await.unwrap();
    assert_eq!(first.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_never_breaks_the_store() {
    let dir = tempdir();
    let d = data(&dir);
    // The server runs with a soft limit of 128 open files.
    let mut cmd = command(&[], &[]);
    let sh = Command::new("sh");
    drop(std::mem::replace(&mut cmd, sh));
    cmd.args(["-c", "ulimit -n 128 && exec \"$0\" \"$@\"", BIN, "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&d)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in ENV {
        cmd.env_remove(var);
    }
    let mut server = Daemon::wait_ready(Daemon::spawn_command(cmd));
    let mut c = server.connect().await;
    let sid = bounded("s", c.create_session("fd")).await.unwrap();
    let max = ok(&mut c, "health", json!({})).await["max_connections"].as_u64().unwrap();
    assert!(max < 128, "max_connections {max} is not capped by the open-files limit");

    // More sockets than the server may hold (the rest wait in the listen
    // backlog, kept short of its length); they never handshake.
    let addr = server.url().trim_start_matches("ws://").to_string();
    let hogs: Vec<std::net::TcpStream> = (0..100).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    let deadline = Instant::now() + STEP;
    let mut full = false;
    for _ in 0..10_000 {
        assert!(Instant::now() < deadline, "the server never took its share of the sockets");
        if ok(&mut c, "health", json!({})).await["connections"].as_u64() == Some(max) {
            full = true;
            break;
        }
    }
    assert!(full);
    // The store still has the descriptors it needs to make writes durable.
    for i in 0..5 {
        bounded("c", c.checkpoint(&sid, &format!("while full {i}"), json!(i), json!({}))).await.unwrap();
    }
    assert_eq!(ok(&mut c, "health", json!({})).await["healthy"], true);

    // Once the sockets go, new clients are served again.
    drop(hogs);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut admitted = None;
    for _ in 0..1_000 {
        assert!(Instant::now() < deadline, "no client admitted after the sockets were closed");
        let Ok(Ok(mut fresh)) = tokio::time::timeout(STEP, Client::connect(server.url())).await else { continue };
        if let Ok(m) = bounded("metrics", fresh.call("metrics", json!({}))).await {
            admitted = Some(m);
            break;
        }
    }
    assert_eq!(admitted.expect("never admitted")["total_checkpoints"], 5);
    bounded("c", c.checkpoint(&sid, "after", json!(5), json!({}))).await.unwrap();
    assert_eq!(server.terminate().code(), Some(0));
    let stderr = server.stderr();
    assert!(stderr.contains("open-files limit"), "no warning about the capped connections:\n{stderr}");
    assert!(!stderr.contains("refuses writes"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_under_load_finishes_in_flight_writes_and_exits_zero() {
    let dir = tempdir();
    let mut server = Daemon::serve(&data(&dir), &[]);
    let mut c = server.connect().await;
    let sid = bounded("s", c.create_session("load")).await.unwrap();
    let (acked, mut count_rx, writers) = spawn_writers(server.url(), &sid, 4);
    bounded("writes", count_rx.wait_for(|&n| n >= 100)).await.unwrap();
    server.signal("INT");
    let status = server.wait_exit(STOP).expect("no exit within the deadline after SIGINT");
    assert_eq!(status.code(), Some(0));
    for w in writers {
        // Every request ends in a reply or in the server's Close frame.
        match bounded("writer", w).await.unwrap() {
            ClientError::Connection(ended) => {
                assert!(ended.contains("Away"), "writer ended without the Close frame: {ended:?}")
            }
            other => panic!("writer: {other}"),
        }
    }
    let acked = acked.lock().unwrap().clone();
    let mut server = Daemon::serve(&data(&dir), &[]);
    let mut c = server.connect().await;
    for (id, n) in &acked {
        assert_eq!(ok(&mut c, "get_checkpoint", json!({"checkpoint_id": id})).await["state"], json!({"n": n}));
    }
    // A command that was read ran to completion and was answered before the
    // Close frame; one that was not read did not run. So what is stored is
    // exactly what was acknowledged.
    let stored = ok(&mut c, "get_session", json!({"session_id": sid})).await["checkpoint_count"].clone();
    assert_eq!(stored, acked.len(), "stored checkpoints whose reply never came");
    assert_eq!(server.terminate().code(), Some(0));
}
