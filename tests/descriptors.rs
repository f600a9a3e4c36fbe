//! Running out of file descriptors never breaks the store: the server caps
//! its connections below the open-files limit and keeps writing durably
//! while sockets take every descriptor it may give them; a write is made
//! durable without a new descriptor; and a full flush that cannot list
//! sled's blob directory waits for a free descriptor instead of failing the
//! store closed (in a child process: this test binary, re-executed, because
//! it lowers the open-files limit of its process).

mod common;

use checkpointd::client::Client;
use checkpointd::config::StoreConfig;
use checkpointd::model::{NewCheckpoint, json_empty_object};
use checkpointd::storage::{Backend, Store};
use common::child::{self, CHECKPOINTD, Daemon, this_test_binary};
use common::fs::{data, tempdir};
use common::wire::*;
use serde_json::json;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "CHECKPOINTD_FD_CHILD_DIR";

#[test]
fn a_flush_out_of_descriptors_waits_instead_of_failing_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let out = this_test_binary("fd_child").env(CHILD_ENV, dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("fd_child: done"), "the child did not run its checks:\n{stdout}");
}

#[test]
#[ignore = "runs only as the child process of the test above"]
fn fd_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let limit = libc::rlimit { rlim_cur: 256, rlim_max: 256 };
    // SAFETY: setrlimit only reads the struct passed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let store = std::sync::Arc::new(Store::open(StoreConfig::new(dir)).unwrap());
        let session = store.create_session("s".into(), json_empty_object()).await.unwrap().id;
        let new = move || NewCheckpoint::new(session, "m");
        // Take every free descriptor.
        let mut hog = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            hog.push(f);
            assert!(hog.len() < 1024, "the limit did not hold");
        }
        // A group commit syncs the open segment file: no descriptor needed.
        let written = tokio::time::timeout(Duration::from_secs(10), store.put_checkpoint(new())).await;
        written.expect("a write waited for a descriptor").expect("the write failed");
        // A full flush (into sled, listing its blobs) cannot run while none
        // is free, so it waits.
        let flusher = std::sync::Arc::clone(&store);
        let mut full = tokio::spawn(async move { flusher.pause_writes().await.map(|_| ()) });
        assert!(tokio::time::timeout(Duration::from_millis(200), &mut full).await.is_err(), "flushed without listing");
        drop(hog);
        let done = tokio::time::timeout(Duration::from_secs(10), full).await.expect("the flush never completed");
        done.unwrap().expect("the store failed closed on EMFILE");
        assert!(store.healthy());
        store.put_checkpoint(new()).await.expect("later writes work");
        println!("fd_child: done");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_never_breaks_the_store() {
    let dir = tempdir();
    let d = data(&dir);
    // The server runs with a soft limit of 128 open files.
    let mut cmd = child::command(
        "sh",
        &["-c", "ulimit -n 128 && exec \"$0\" \"$@\"", CHECKPOINTD, "--listen", "127.0.0.1:0", "--data-dir"],
    );
    cmd.arg(&d);
    let mut server = Daemon::wait_ready(Daemon::spawn_command(cmd));
    let mut c = server.connect().await;
    let sid = bounded("s", c.create_session("fd")).await.unwrap();
    let max = ok(&mut c, "health", json!({})).await["max_connections"].as_u64().unwrap();
    assert!(max < 128, "max_connections {max} is not capped by the open-files limit");

    // More sockets than the server may hold (the rest wait in the listen
    // backlog, kept short of its length); they never handshake.
    let addr = server.url().trim_start_matches("ws://").to_string();
    let hogs: Vec<std::net::TcpStream> = (0..100).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    let deadline = Instant::now() + child::STEP;
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
        let Ok(Ok(mut fresh)) = tokio::time::timeout(child::STEP, Client::connect(server.url())).await else {
            continue;
        };
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
