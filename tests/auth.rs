//! Authentication: with a token, nothing but `authenticate` is served until
//! it succeeds, per connection; five failures close the connection (1008);
//! the token comes from a file or the environment and is never logged; a
//! non-loopback address needs a token or an explicit opt-in.

mod common;

use checkpointd::client::ClientError;
use checkpointd::server::{self, ServerConfig};
use common::child::{Daemon, run_server};
use common::fs::{data, tempdir};
use common::inproc::TestServer;
use common::wire::*;
use serde_json::{Value, json};
use std::net::SocketAddr;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_required_before_anything_else() {
    let config = ServerConfig { token: Some("s3cret".into()), ..ServerConfig::default() };
    let server = TestServer::with(config, |_| {}).await;
    let mut c = server.connect().await;
    let sid = uuid::Uuid::new_v4().to_string();
    let required = ("Authentication required".to_string(), "unauthorized".to_string());
    for (method, params) in [
        ("create_session", json!({})),
        ("list_checkpoints", json!({"session_id": sid})),
        ("checkpoint", json!({"session_id": sid})),
        ("subscribe", json!({"session_id": sid})),
        ("metrics", json!({})),
        ("get_checkpoint", json!({"checkpoint_id": sid})),
        ("restore", json!({"session_id": sid, "checkpoint_id": sid})),
        ("delete_checkpoint", json!({"checkpoint_id": sid})),
        ("compact", json!({"session_id": sid, "keep_recent": 1})),
        ("set_retention", json!({"session_id": sid})),
        ("list_sessions", json!({})),
        ("get_session", json!({"session_id": sid})),
        ("delete_session", json!({"session_id": sid})),
        ("annotate", json!({"checkpoint_id": sid, "note": "n"})),
        ("validate", json!({})),
        ("unsubscribe", json!({"session_id": sid})),
        ("health", json!({})),
        ("no_such_method", json!({})),
        ("checkpoint", json!({})),
    ] {
        assert_eq!(err(&mut c, method, params).await, required, "{method}");
    }
    assert_eq!(
        err(&mut c, "authenticate", json!({"token": "wrong"})).await,
        ("Invalid authentication token".into(), "unauthorized".into())
    );
    assert_eq!(
        err(&mut c, "authenticate", json!({})).await,
        ("Invalid authentication token".into(), "unauthorized".into())
    );
    assert_eq!(ok(&mut c, "authenticate", json!({"token": "s3cret"})).await, json!({"authenticated": true}));
    let sid = session(&mut c, "after auth").await;
    checkpoint(&mut c, &sid, "works").await;
    assert_eq!(ok(&mut c, "metrics", json!({})).await["total_checkpoints"], 1);

    // Authentication is per connection.
    let mut other = server.connect().await;
    assert_eq!(err(&mut other, "metrics", json!({})).await, required);
    // Near misses are refused.
    for wrong in ["s3cre", "s3cret ", "s3cret\n", "S3CRET", "", "s3crets3cret"] {
        let mut c = server.connect().await;
        assert_eq!(err(&mut c, "authenticate", json!({"token": wrong})).await.0, "Invalid authentication token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failed_attempts_close_the_connection_with_1008() {
    let config = ServerConfig { token: Some("s3cret".into()), ..ServerConfig::default() };
    let server = TestServer::with(config, |_| {}).await;
    let mut c = server.connect().await;
    for _ in 0..4 {
        assert_eq!(err(&mut c, "authenticate", json!({"token": "guess"})).await.0, "Invalid authentication token");
    }
    bounded("send", c.send_text(r#"{"id":"5","method":"authenticate","params":{"token":"guess"}}"#)).await.unwrap();
    let reply = bounded("reply", c.next_message()).await.unwrap();
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply["error"], "Invalid authentication token");
    assert_eq!(expect_close(&mut c).await, 1008);
    // The right token on a fresh connection still works.
    let mut fresh = server.connect().await;
    ok(&mut fresh, "authenticate", json!({"token": "s3cret"})).await;
}

#[test]
fn non_loopback_needs_a_token_or_an_explicit_opt_in() {
    let any: SocketAddr = "0.0.0.0:7700".parse().unwrap();
    let lan: SocketAddr = "192.168.1.10:7700".parse().unwrap();
    let v6: SocketAddr = "[::]:7700".parse().unwrap();
    for addr in [any, lan, v6] {
        let e = server::check_exposure(addr, None, false).unwrap_err();
        assert!(e.to_string().contains("--allow-unauthenticated"), "{e}");
        server::check_exposure(addr, Some("t"), false).unwrap();
        server::check_exposure(addr, None, true).unwrap();
    }
    for addr in ["127.0.0.1:0", "[::1]:0", "127.0.0.2:1"] {
        server::check_exposure(addr.parse().unwrap(), None, false).unwrap();
    }
}

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
        let (status, _, stderr) = run_server(
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

#[test]
fn a_non_loopback_address_needs_a_token_or_an_opt_in() {
    let dir = tempdir();
    let d = data(&dir);
    let (status, stdout, stderr) = run_server(&["--listen", "0.0.0.0:0", "--data-dir", d.to_str().unwrap()], &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(!stdout.contains("listening"));
    let line = stderr.lines().find(|l| l.starts_with("checkpointd: ")).unwrap_or_else(|| panic!("{stderr}"));
    // It names the requested address: port 0 was never bound.
    assert!(line.contains("--allow-unauthenticated") && line.contains("0.0.0.0:0 "), "{line}");
    // Refused before anything was created on disk.
    assert!(!d.exists(), "the data directory was created although the server refused to start");
}
