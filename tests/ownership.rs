//! One owner per data directory: a second open in process, or a second
//! server, is refused naming the lock or the directory, and the first owner
//! is unharmed; once it closes, the directory opens again.

mod common;

use checkpointd::storage::{Backend, Store};
use common::child::{Daemon, run_server};
use common::fs::{data, tempdir};
use common::inproc::{close, config, open, open_store};
use common::svc::*;
use common::wire::{bounded, ok};
use serde_json::json;
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_of_a_directory_is_refused_while_in_use() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path()).await;
    let err = match Store::open(config(dir.path())) {
        Ok(_) => panic!("a second open of a directory in use must fail"),
        Err(e) => e,
    };
    assert_eq!(checkpointd::Error::from(err.clone()).code(), "unavailable");
    assert!(err.to_string().contains("lock"), "the error names the lock: {err}");
    // The first one is unharmed.
    let s = session(&service, "still fine").await;
    cp(&service, s, "ok", &[]).await;
    close(service);
    // After closing, the directory opens again.
    let store = open_store(&config(dir.path()));
    assert_eq!(store.metrics().await.unwrap().global_sequence, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_directory_is_refused() {
    let dir = tempdir();
    let d = data(&dir);
    let mut first = Daemon::serve(&d, &[]);
    let mut c = first.connect().await;
    let sid = bounded("s", c.create_session("mine")).await.unwrap();

    let (status, stdout, stderr) = run_server(&["--listen", "127.0.0.1:0", "--data-dir", d.to_str().unwrap()], &[]);
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
