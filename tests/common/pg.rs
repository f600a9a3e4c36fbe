//! A private PostgreSQL cluster for the tests: started once per test process
//! (the first test that asks for a database starts it), in a temporary
//! directory, listening on a unix socket there and on no TCP port; each test
//! gets a database of its own (`CREATE DATABASE tN TEMPLATE template0`).
//!
//! The cluster runs under a small `sh` wrapper whose stdin is a pipe only
//! this process holds. When the process exits — normally, on a panic, on
//! SIGKILL, with Rust statics never dropped — the kernel closes the pipe, and
//! the wrapper stops PostgreSQL (`pg_ctl stop -m immediate`) and removes the
//! directory. The wrapper is in a process group of its own, so a Ctrl-C
//! aimed at the test run does not kill it before it has cleaned up.
//!
//! Tests run as root (CI does), and `initdb` refuses root: as root the
//! PostgreSQL programs run as the `postgres` user through `runuser`, which
//! then owns the directory; otherwise they run as the caller.
//!
//! PostgreSQL 15 is expected in `/usr/lib/postgresql/15/bin` (the Debian
//! package `postgresql-15`), or in `CHECKPOINTD_PG_BIN`. A test that needs
//! PostgreSQL and finds none fails, saying what to install: it does not
//! skip.
//!
//! [`Cluster::start`] starts a cluster of a test's own, for tests that stop
//! and restart PostgreSQL under load; it is stopped and removed when dropped
//! (or, failing that, when the process exits).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

/// Where the PostgreSQL 15 binaries are, unless `CHECKPOINTD_PG_BIN` says.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The longest starting a cluster (initdb + start) may take.
pub const START: Duration = Duration::from_secs(120);
/// The longest one admin statement (`CREATE DATABASE`) or a stop/start may
/// take.
pub const STEP: Duration = Duration::from_secs(60);

/// Starts and watches the cluster: `$1` the directory, `$2` the binaries,
/// `$3` `root` to run them as `postgres`. Prints `ready` once the server
/// accepts connections (or `failed: ...` and exits), then waits for its
/// stdin to close, and stops and removes everything.
const WRAPPER: &str = r#"
dir=$1; bin=$2
if [ "$3" = root ]; then
  as="runuser -u postgres --"
  if ! chown postgres "$dir" 2>"$dir/chown.log"; then
    echo "failed: chown postgres $dir (is there a postgres user?): $(cat "$dir/chown.log")"; rm -rf "$dir"; exit 1
  fi
else
  as=""
fi
stop() {
  $as "$bin/pg_ctl" -D "$dir/data" -m immediate stop </dev/null >/dev/null 2>&1
  rm -rf "$dir"
}
if ! $as "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale --no-sync </dev/null >"$dir/initdb.log" 2>&1; then
  echo "failed: initdb: $(tail -n 5 "$dir/initdb.log" | tr '\n' ' ')"; rm -rf "$dir"; exit 1
fi
if ! $as "$bin/pg_ctl" -D "$dir/data" -w -t 60 -l "$dir/server.log" -o "$4" start </dev/null >"$dir/start.log" 2>&1; then
  echo "failed: pg_ctl start: $(tail -n 5 "$dir/start.log" "$dir/server.log" 2>/dev/null | tr '\n' ' ')"; stop; exit 1
fi
echo ready
cat >/dev/null
stop
"#;

/// The server's options: the socket in the cluster's directory and no TCP
/// port; room for many tests' connection pools at once. `fsync=off`: the
/// tests stop PostgreSQL (even `-m immediate`) but never cut the machine's
/// power, and what PostgreSQL wrote survives a process crash in the page
/// cache, so fsync would only make the tests slower on a shared machine.
fn server_options(dir: &Path, fsync: bool) -> String {
    let fsync = if fsync { "on" } else { "off" };
    format!("-c listen_addresses='' -k '{}' -c max_connections=500 -c fsync={fsync}", dir.display())
}

/// A running private cluster; stopped and removed on drop.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    /// Whether PostgreSQL fsyncs (see [`server_options`]).
    fsync: bool,
    /// Held open while the cluster should run: closing it (on drop or when
    /// the process dies) makes the wrapper stop and remove it.
    keepalive: Mutex<Option<ChildStdin>>,
    exited: Mutex<mpsc::Receiver<ExitStatus>>,
    next: AtomicU64,
    /// Databases keyed by what they stand for (a test's data directory).
    by_key: tokio::sync::Mutex<HashMap<PathBuf, String>>,
}

impl Cluster {
    /// Starts a private cluster (blocking, up to [`START`]), without fsync.
    pub fn start() -> Result<Cluster, String> {
        Cluster::start_with(false)
    }

    /// A private cluster that fsyncs, as a production one does (benchmarks).
    pub fn start_durable() -> Result<Cluster, String> {
        Cluster::start_with(true)
    }

    fn start_with(fsync: bool) -> Result<Cluster, String> {
        let bin = std::env::var_os("CHECKPOINTD_PG_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(PG_BIN));
        for program in ["postgres", "initdb", "pg_ctl"] {
            if !bin.join(program).is_file() {
                return Err(format!(
                    "PostgreSQL 15 is not installed: {} is missing; install the Debian package postgresql-15 \
                     (apt-get install postgresql-15), or set CHECKPOINTD_PG_BIN to its bin directory",
                    bin.join(program).display()
                ));
            }
        }
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("cpd-pg-")
            .tempdir()
            .map_err(|e| format!("temporary directory for PostgreSQL: {e}"))?
            .keep();
        let mut wrapper = Command::new("sh");
        wrapper
            .arg("-c")
            .arg(WRAPPER)
            .arg("checkpointd-test-postgres")
            .arg(&dir)
            .arg(&bin)
            .arg(if as_postgres { "root" } else { "user" })
            .arg(server_options(&dir, fsync))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = wrapper.spawn().map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            format!("cannot run sh to start PostgreSQL: {e}")
        })?;
        let keepalive = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (line_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (exit_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        let cluster = Cluster {
            dir,
            bin,
            as_postgres,
            fsync,
            keepalive: Mutex::new(Some(keepalive)),
            exited: Mutex::new(exited),
            next: AtomicU64::new(1),
            by_key: tokio::sync::Mutex::new(HashMap::new()),
        };
        match lines.recv_timeout(START) {
            Ok(line) if line == "ready" => Ok(cluster),
            Ok(line) => Err(format!("cannot start PostgreSQL in {}: {line}", cluster.dir.display())),
            Err(_) => Err(format!("PostgreSQL did not start within {START:?} in {}", cluster.dir.display())),
        }
    }

    /// The directory holding the cluster (its data in `data/`, its socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of database `name`, over the unix socket.
    pub fn url(&self, name: &str) -> String {
        format!("postgresql://postgres@/{name}?host={}", self.dir.display())
    }

    /// A new empty database; its URL.
    pub async fn create_database(&self) -> String {
        let name = format!("t{}", self.next.fetch_add(1, Ordering::Relaxed));
        self.admin(&format!("CREATE DATABASE {name} TEMPLATE template0")).await;
        self.url(&name)
    }

    /// The database standing for `key` (a data directory): created on the
    /// first call, the same one on every later call.
    pub async fn database_for(&self, key: &Path) -> String {
        let mut map = self.by_key.lock().await;
        if let Some(url) = map.get(key) {
            return url.clone();
        }
        let url = self.create_database().await;
        map.insert(key.to_path_buf(), url.clone());
        url
    }

    /// Runs one statement on the `postgres` database (bounded).
    pub async fn admin(&self, sql: &str) {
        let url = self.url("postgres");
        let work = async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            let conn = tokio::spawn(connection);
            let result = client.batch_execute(sql).await;
            drop(client);
            let _ = conn.await;
            result
        };
        match tokio::time::timeout(STEP, work).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("PostgreSQL in {}: {sql}: {e}", self.dir.display()),
            Err(_) => panic!("PostgreSQL in {}: {sql}: no answer within {STEP:?}", self.dir.display()),
        }
    }

    /// A command running PostgreSQL's `program` (`psql`, `pgbench`) as the
    /// cluster's owner.
    pub fn tool(&self, program: &str) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(program));
            c
        } else {
            Command::new(self.bin.join(program))
        }
    }

    /// Runs `pg_ctl ARGS` on the cluster (as `postgres` when root), bounded
    /// by its own `-t`.
    fn pg_ctl(&self, args: &[&str]) {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut cmd = self.tool("pg_ctl");
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        cmd.arg("-D").arg(&data).arg("-l").arg(&log).args(["-w", "-t", "60"]).args(args);
        cmd.stdin(Stdio::null());
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", pg_ctl.display()));
        assert!(
            out.status.success(),
            "pg_ctl {args:?} in {} failed: {}{}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops PostgreSQL at once, as a crash would (`pg_ctl stop -m
    /// immediate`): connections break, nothing is flushed first.
    pub fn stop_immediate(&self) {
        self.pg_ctl(&["-m", "immediate", "stop"]);
    }

    /// Starts PostgreSQL again after [`Cluster::stop_immediate`] (crash
    /// recovery included); returns once it accepts connections.
    pub fn restart(&self) {
        self.pg_ctl(&["-o", &server_options(&self.dir, self.fsync), "start"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Closing the pipe tells the wrapper to stop and remove the cluster;
        // wait (bounded) for it, so that clusters do not pile up.
        if let Ok(keepalive) = self.keepalive.get_mut() {
            keepalive.take();
        }
        if let Ok(exited) = self.exited.get_mut() {
            let _ = exited.recv_timeout(STEP);
        }
    }
}

/// The cluster shared by every test of this process, started on first use;
/// a test fails (does not skip) when it cannot start.
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match SHARED.get_or_init(Cluster::start) {
        Ok(cluster) => cluster,
        Err(e) => panic!("{e}"),
    }
}

/// [`shared`], started off the async runtime's threads.
pub async fn shared_async() -> &'static Cluster {
    match tokio::task::spawn_blocking(shared).await {
        Ok(cluster) => cluster,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A fresh empty database on the shared cluster; its URL
/// (`postgresql://postgres@/tN?host=DIR`).
pub async fn database() -> String {
    shared_async().await.create_database().await
}

/// The database on the shared cluster that stands for `key` (a test's data
/// directory): reopening "the same directory" reopens the same database.
pub async fn database_for(key: &Path) -> String {
    shared_async().await.database_for(key).await
}

/// [`database_for`] from synchronous code, also inside a test's runtime
/// (on a thread of its own).
pub fn database_for_blocking(key: &Path) -> String {
    let key = key.to_path_buf();
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(database_for(&key))
    });
    match worker.join() {
        Ok(url) => url,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
