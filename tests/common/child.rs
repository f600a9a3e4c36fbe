//! The child-process harness: the real binaries, `checkpointd` (serving, or
//! any other command) and `checkpoint-dump`, and this test binary re-run as
//! a child. The caller's environment is cleared of every variable the
//! binaries read, so it cannot change a test; every wait is bounded, and a
//! server still running when its [`Daemon`] is dropped is killed and reaped,
//! also when the test panics.

use checkpointd::client::Client;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const CHECKPOINTD: &str = env!("CARGO_BIN_EXE_checkpointd");
pub const DUMP: &str = env!("CARGO_BIN_EXE_checkpoint-dump");

/// The longest a child may take to come up, or to run to completion.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// Upper bound for a child's exit once it was told to exit (or SIGKILLed),
/// and for connecting to it.
pub const STEP: Duration = Duration::from_secs(15);
/// SIGTERM must stop the server within this.
pub const STOP: Duration = Duration::from_secs(8);

/// Environment variables the binaries read; cleared so the caller's
/// environment cannot change a test.
pub const ENV: [&str; 10] = [
    "CHECKPOINTD_DATA_DIR",
    "CHECKPOINTD_DATABASE_URL",
    "CHECKPOINTD_LISTEN",
    "CHECKPOINTD_TOKEN",
    "CHECKPOINTD_MAX_CONNECTIONS",
    "CHECKPOINTD_MAX_MESSAGE_BYTES",
    "CHECKPOINTD_DURABILITY",
    "CHECKPOINTD_EVENT_RETENTION",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

/// `bin args` with stdin closed, stdout and stderr piped, and [`ENV`]
/// cleared.
pub fn command(bin: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for var in ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Waits for a child with a deadline, killing it if it overruns.
pub fn wait_output(child: Child) -> Output {
    let id = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.expect("wait for child"),
        Err(_) => {
            if let Ok(pid) = libc::pid_t::try_from(id) {
                // SAFETY: kill only sends a signal to the child we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            panic!("child process {id} ran past {DEADLINE:?}");
        }
    }
}

/// Runs `cmd` to completion (bounded), feeding it `stdin` if given.
pub fn run_command(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("spawn");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    wait_output(child)
}

/// Runs a binary with `args`, logging at `warn`, to completion (bounded).
pub fn run(bin: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = command(bin, args);
    cmd.env("RUST_LOG", "warn");
    run_command(cmd, stdin)
}

/// Runs `checkpointd` with `args` and exactly the environment `env` to
/// completion (bounded): (status, stdout, stderr).
pub fn run_server(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut cmd = command(CHECKPOINTD, args);
    cmd.envs(env.iter().copied());
    let out = run_command(cmd, None);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status, text(&out.stdout), text(&out.stderr))
}

pub fn dump(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--data-dir", dir.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    run(DUMP, &all, None)
}

/// Runs checkpoint-dump and requires exit 0; returns stdout.
pub fn dump_ok(dir: &Path, args: &[&str]) -> String {
    let out = dump(dir, args);
    assert!(
        out.status.success(),
        "checkpoint-dump {args:?} failed: {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect()
}

/// This test binary, to be run as a child that runs only the (ignored)
/// test `name`.
pub fn this_test_binary(name: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args(["--exact", name, "--include-ignored", "--nocapture", "--test-threads=1"]);
    cmd
}

/// `checkpointd` as a child process, running or finished; killed (SIGKILL)
/// and reaped on drop.
pub struct Daemon {
    pid: u32,
    /// stdout lines after the `listening on` line.
    pub stdout: mpsc::Receiver<String>,
    exited: mpsc::Receiver<ExitStatus>,
    status: Option<ExitStatus>,
    stderr: Option<JoinHandle<String>>,
    url: Option<String>,
    /// How to start it again ([`Daemon::respawn`]).
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Spawns `checkpointd args` with `env`; the caller decides whether it
    /// should come up.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = command(CHECKPOINTD, args);
        cmd.envs(env.iter().copied());
        let mut d = Daemon::spawn_command(cmd);
        d.args = args.iter().map(|a| a.to_string()).collect();
        d.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        d
    }

    /// Spawns a prepared command (see [`command`]), such as the server
    /// behind a shell that sets limits first.
    pub fn spawn_command(mut cmd: Command) -> Daemon {
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
        Daemon { pid, stdout, exited, status: None, stderr: Some(stderr), url: None, args: vec![], env: vec![] }
    }

    /// Spawns the server and waits for its `listening on ws://` line.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::wait_ready(Daemon::spawn(args, env))
    }

    /// Waits (bounded) for the `listening on ws://127.0.0.1:PORT` line
    /// (on PostgreSQL followed by ` serving ...`).
    pub fn wait_ready(mut d: Daemon) -> Daemon {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match d.stdout.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("listening on ws://") {
                        let addr = rest.split(' ').next().unwrap_or(rest);
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

    /// Starts serving `dir` on a free loopback port: the data directory, or
    /// with `CHECKPOINTD_TEST_BACKEND=postgres` the database standing for
    /// it (see `inproc::open_backend`), so a restart serves the same data.
    pub fn serve(dir: &Path, extra: &[&str]) -> Daemon {
        let url;
        let mut args = vec!["--listen", "127.0.0.1:0"];
        match super::inproc::backend_kind() {
            super::inproc::BackendKind::Sled => args.extend(["--data-dir", dir.to_str().unwrap()]),
            super::inproc::BackendKind::Postgres => {
                url = super::pg::database_for_blocking(dir);
                args.extend(["--database-url", url.as_str()]);
            }
        }
        args.extend_from_slice(extra);
        Daemon::start(&args, &[])
    }

    /// The same server again (same arguments and environment), once this
    /// one has exited; waits until it listens.
    pub fn respawn(&mut self) -> Daemon {
        assert!(self.wait_exit(STEP).is_some(), "respawn while the server still runs");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Daemon::start(&args, &env)
    }

    pub fn url(&self) -> &str {
        self.url.as_deref().expect("not listening")
    }

    pub async fn connect(&self) -> Client {
        tokio::time::timeout(STEP, Client::connect(self.url())).await.expect("connect timed out").expect("connect")
    }

    pub fn signal(&self, name: &str) {
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
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.exited.recv_timeout(within).ok();
        }
        self.status
    }

    /// Everything the process wrote to stderr (waits for it to exit).
    pub fn stderr(&mut self) -> String {
        self.stderr.take().map(|h| h.join().unwrap()).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (must come within [`STOP`]).
    pub fn terminate(&mut self) -> ExitStatus {
        let started = Instant::now();
        self.signal("TERM");
        let status = self.wait_exit(STOP).unwrap_or_else(|| panic!("no exit within {STOP:?} of SIGTERM"));
        eprintln!("checkpointd stopped {:?} after SIGTERM", started.elapsed());
        status
    }

    /// SIGKILL, then the exit status (bounded).
    pub fn kill(&mut self) -> ExitStatus {
        self.signal("KILL");
        self.wait_exit(STEP).expect("no exit after SIGKILL")
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
