//! The test harness's private PostgreSQL cluster (`tests/common/pg.rs`):
//! databases are fresh and separate, "the same directory" maps to the same
//! database, and the cluster is stopped and removed when the test process
//! ends, however it ends.

mod common;

use common::child::this_test_binary;
use common::pg;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio::time::timeout(pg::STEP, tokio_postgres::connect(url, tokio_postgres::NoTls))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(connection);
    client
}

async fn query_one_string(client: &tokio_postgres::Client, sql: &str) -> String {
    let row = tokio::time::timeout(pg::STEP, client.query_one(sql, &[])).await.expect("query timed out").expect(sql);
    row.get(0)
}

#[tokio::test]
async fn each_database_is_fresh_and_separate() {
    let a = pg::database().await;
    let b = pg::database().await;
    assert_ne!(a, b);
    let (ca, cb) = (connect(&a).await, connect(&b).await);
    ca.batch_execute("CREATE TABLE only_in_a (x int); INSERT INTO only_in_a VALUES (1)").await.unwrap();
    let in_b = query_one_string(&cb, "SELECT count(*)::text FROM pg_tables WHERE tablename = 'only_in_a'").await;
    assert_eq!(in_b, "0");
    assert_eq!(query_one_string(&cb, "SHOW server_encoding").await, "UTF8");
    assert_eq!(query_one_string(&cb, "SELECT current_setting('server_version_num')").await[..2], *"15");
    // Only the unix socket: no TCP port is listened on.
    assert_eq!(query_one_string(&cb, "SHOW listen_addresses").await, "");
}

#[tokio::test]
async fn the_same_key_is_the_same_database() {
    let dir = common::fs::tempdir();
    let first = pg::database_for(&dir.path().join("data")).await;
    let again = pg::database_for(&dir.path().join("data")).await;
    let other = pg::database_for(&dir.path().join("other")).await;
    assert_eq!(first, again);
    assert_ne!(first, other);
    connect(&first).await.batch_execute("CREATE TABLE kept (x int)").await.unwrap();
    let seen =
        query_one_string(&connect(&again).await, "SELECT count(*)::text FROM pg_tables WHERE tablename = 'kept'").await;
    assert_eq!(seen, "1");
}

/// The postmaster's pid, from `postmaster.pid` in the cluster's data.
fn postmaster_pid(dir: &Path) -> Option<libc::pid_t> {
    let text = std::fs::read_to_string(dir.join("data/postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Whether `pid` runs (a zombie waiting for its reaper does not).
fn alive(pid: libc::pid_t) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
}

/// Waits (polling, bounded) until `dir` is gone and `pid` has exited.
fn wait_removed(dir: &Path, pid: libc::pid_t) {
    let deadline = Instant::now() + pg::STEP;
    for _ in 0..100_000 {
        if !dir.exists() && !alive(pid) {
            return;
        }
        assert!(Instant::now() < deadline, "{} or postgres {pid} still there after {:?}", dir.display(), pg::STEP);
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no end to waiting for {}", dir.display());
}

/// Run as a child by the test below: starts the shared cluster, prints
/// where, and dies at once (no unwinding, no destructors, no atexit).
#[test]
#[ignore = "run as a child by a_killed_test_process_leaves_no_cluster_behind"]
fn child_starts_the_cluster_and_dies() {
    let cluster = pg::shared();
    let pid = postmaster_pid(cluster.dir()).expect("postmaster.pid");
    println!("\ncluster-dir {} {pid}", cluster.dir().display());
    // SAFETY: raising SIGKILL on ourselves ends the process at once.
    unsafe { libc::raise(libc::SIGKILL) };
}

#[test]
fn a_killed_test_process_leaves_no_cluster_behind() {
    let mut cmd = this_test_binary("child_starts_the_cluster_and_dies");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = common::child::wait_output(cmd.spawn().expect("spawn the test binary"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.split_once("cluster-dir ").map(|(_, rest)| rest)).unwrap_or_else(|| {
        panic!("the child did not start a cluster: {stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    let (dir, pid) = line.rsplit_once(' ').expect("dir and pid");
    let (dir, pid) = (PathBuf::from(dir), pid.parse::<libc::pid_t>().expect("pid"));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{:?}", out.status);
    wait_removed(&dir, pid);
}

#[test]
fn a_private_cluster_is_gone_once_dropped() {
    let cluster = pg::Cluster::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = cluster.dir().to_path_buf();
    let pid = postmaster_pid(&dir).expect("postmaster.pid");
    assert!(alive(pid));
    drop(cluster);
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(!alive(pid), "postgres {pid} still runs");
}

#[tokio::test]
async fn a_private_cluster_stops_and_restarts_with_its_data() {
    let cluster = tokio::task::spawn_blocking(|| pg::Cluster::start().unwrap_or_else(|e| panic!("{e}"))).await.unwrap();
    let url = cluster.create_database().await;
    connect(&url).await.batch_execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)").await.unwrap();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop_immediate();
        cluster.restart();
        cluster
    })
    .await
    .unwrap();
    assert_eq!(query_one_string(&connect(&url).await, "SELECT x::text FROM kept").await, "7");
    tokio::task::spawn_blocking(move || drop(cluster)).await.unwrap();
}
