//! Running out of file descriptors is not a disk failure: a flush that
//! cannot list sled's blob directory waits for a free descriptor instead of
//! failing the store closed. Runs in a child process (this test binary,
//! re-executed), because it lowers the open-files limit of its process.

mod common;

use checkpointd::config::StoreConfig;
use checkpointd::model::{NewCheckpoint, json_empty_object};
use checkpointd::storage::{Backend, Store};
use common::child::this_test_binary;
use std::time::Duration;

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
        let writer = std::sync::Arc::clone(&store);
        let mut write = tokio::spawn(async move { writer.put_checkpoint(new()).await });
        // While none is free the write cannot be made durable, so it waits.
        assert!(tokio::time::timeout(Duration::from_millis(200), &mut write).await.is_err(), "acknowledged unsynced");
        drop(hog);
        let done = tokio::time::timeout(Duration::from_secs(10), write).await.expect("write never completed");
        done.unwrap().expect("the store failed closed on EMFILE");
        assert!(store.healthy());
        store.put_checkpoint(new()).await.expect("later writes work");
        println!("fd_child: done");
    });
}
