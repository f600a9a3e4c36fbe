//! Shutdown: in process and on SIGTERM or SIGINT, the server finishes the
//! commands it read, sends every client a Close frame (1001) and returns
//! promptly, whatever the clients do; what is stored is exactly what was
//! acknowledged.

mod common;

use checkpointd::client::{Client, ClientError};
use common::child::{self, Daemon};
use common::fs::{data, tempdir};
use common::inproc::TestServer;
use common::wire::*;
use futures_util::SinkExt;
use serde_json::json;
use std::time::Duration;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_close_frames_and_returns() {
    let mut server = TestServer::start().await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    let sid = session(&mut a, "s").await;
    ok(&mut b, "subscribe", json!({"session_id": sid})).await;
    checkpoint(&mut a, &sid, "before shutdown").await;
    // A socket that never completes its handshake must not hold shutdown up.
    let _idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();

    let started = Instant::now();
    let result = server.stop().await.expect("run did not return after shutdown");
    result.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    assert_eq!(expect_close(&mut a).await, 1001);
    assert_eq!(expect_close(&mut b).await, 1001);
    // Nothing listens any more.
    assert!(Client::connect(&server.url).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_client_that_never_reads() {
    let mut server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
    let big = "b".repeat(256 * 1024);
    let cid = bounded("checkpoint", c.checkpoint(&sid, "big", json!(big), json!({}))).await.unwrap();
    // A client with a tiny receive window asks for far more than socket
    // buffers and the outgoing queue hold, and never reads the replies.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut stuck, _) =
        bounded("handshake", tokio_tungstenite::client_async(server.url.as_str(), stream)).await.unwrap();
    // Each request is padded so that, once the server stops reading (its
    // queue for this client is full), our sends stall too.
    let req =
        json!({"id": "g", "method": "get_checkpoint", "params": {"checkpoint_id": cid, "pad": "p".repeat(64 * 1024)}})
            .to_string();
    let mut stalled = false;
    for _ in 0..5_000 {
        if timeout(Duration::from_millis(500), stuck.send(Message::text(req.clone()))).await.is_err() {
            stalled = true;
            break;
        }
    }
    assert!(stalled, "the server kept reading from a client that does not read");
    // The server is still serving others.
    ok(&mut c, "metrics", json!({})).await;

    let started = Instant::now();
    server.stop().await.expect("shutdown hung on a client that does not read").unwrap();
    assert!(started.elapsed() < Duration::from_secs(8), "shutdown took {:?}", started.elapsed());
    assert_eq!(expect_close(&mut c).await, 1001);
    drop(stuck);
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
        let deadline = Instant::now() + child::STEP;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_under_load_finishes_in_flight_writes_and_exits_zero() {
    let dir = tempdir();
    let mut server = Daemon::serve(&data(&dir), &[]);
    let mut c = server.connect().await;
    let sid = bounded("s", c.create_session("load")).await.unwrap();
    let (acked, mut count_rx, writers) = spawn_writers(server.url(), &sid, 4);
    bounded("writes", count_rx.wait_for(|&n| n >= 100)).await.unwrap();
    server.signal("INT");
    let status = server.wait_exit(child::STOP).expect("no exit within the deadline after SIGINT");
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
    let mut server = server.respawn();
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
