//! Options: `--help` documents every option and its environment variable,
//! bad options are refused with a message and exit 1 or 2, and the
//! environment configures the server as the options do. The real binary as
//! a child process.

mod common;

use common::child::{Daemon, run_server};
use common::fs::{data, tempdir};
use common::wire::*;
use serde_json::json;

#[test]
fn help_documents_every_option() {
    for args in [&["--help"][..], &["serve", "--help"][..]] {
        let (status, stdout, _) = run_server(args, &[]);
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
    let (status, stdout, _) = run_server(&["--version"], &[]);
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
        let (status, _, stderr) = run_server(&args, &[]);
        assert!(!status.success(), "{args:?} was accepted");
        assert!(!stderr.is_empty(), "{args:?}: no message");
    }
    for args in [
        vec!["--listen", "127.0.0.1:0", "--data-dir", d, "--max-connections", "0"],
        vec!["--listen", "127.0.0.1:0", "--data-dir", d, "--max-message-bytes", "10"],
        vec!["--listen", "127.0.0.1:0", "--data-dir", d, "--event-retention", "0"],
        vec!["--listen", "not an address", "--data-dir", d],
    ] {
        let (status, stdout, stderr) = run_server(&args, &[]);
        assert_eq!(status.code(), Some(1), "{args:?}: {status}; {stderr}");
        assert!(!stdout.contains("listening"), "{args:?}");
        assert!(stderr.lines().any(|l| l.starts_with("checkpointd: ")), "{args:?}: {stderr}");
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
