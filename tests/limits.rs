//! Limits hold, and what is over them is refused cleanly: connections
//! (exact capacity, slots freed, a Close frame delivered), message size
//! (1009), replies larger than the message limit, list pages bounded in
//! bytes, subscriptions per connection, keepalive.

mod common;

use checkpointd::client::ClientError;
use checkpointd::config::Durability;
use checkpointd::server::{self, ServerConfig};
use common::inproc::TestServer;
use common::wire::*;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_exact_and_slots_are_freed() {
    let config = ServerConfig { max_connections: 2, ..ServerConfig::default() };
    let server = TestServer::with(config, |_| {}).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    ok(&mut a, "metrics", json!({})).await;
    ok(&mut b, "metrics", json!({})).await;

    let mut third = server.connect().await;
    let msg = bounded("init", third.next_message()).await.unwrap();
    let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(v["id"], "init");
    assert_eq!(v["success"], false);
    assert_eq!(v["error"], "Server at capacity");
    assert_eq!(v["code"], "capacity");
    expect_close(&mut third).await;
    assert_eq!(ok(&mut a, "metrics", json!({})).await["connections"], 2);

    // After one client leaves, a new one is admitted (the slot is freed
    // asynchronously, so poll with a deadline).
    bounded("close", a.close()).await.unwrap();
    let deadline = Instant::now() + STEP;
    let mut admitted = None;
    for _ in 0..200 {
        assert!(Instant::now() < deadline, "slot was never freed");
        let mut c = server.connect().await;
        match call(&mut c, "metrics", json!({})).await {
            Ok(m) => {
                admitted = Some((c, m));
                break;
            }
            Err(e) => assert!(matches!(e, ClientError::Connection(_) | ClientError::Protocol(_)), "{e}"),
        }
        tokio::task::yield_now().await;
    }
    let (mut c, m) = admitted.expect("no connection admitted");
    assert_eq!(m["connections"], 2);
    // And the server is full again.
    let mut over = server.connect().await;
    let msg = bounded("init", over.next_message()).await.unwrap();
    assert!(msg.to_text().unwrap().contains("Server at capacity"));
    ok(&mut c, "metrics", json!({})).await;
    ok(&mut b, "metrics", json!({})).await;

    // Abrupt disconnects (no Close frame) free their slots too.
    drop(b);
    drop(c);
    let deadline = Instant::now() + STEP;
    let mut freed = false;
    for _ in 0..400 {
        assert!(Instant::now() < deadline, "slots of dropped clients were never freed");
        let mut probe = server.connect().await;
        if let Ok(m) = call(&mut probe, "metrics", json!({})).await
            && m["connections"] == 1
        {
            freed = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(freed, "slots of dropped clients were never freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_are_delivered_even_when_the_client_has_sent_more() {
    // A seed client sends its first request right after connecting. Closing
    // the socket with that request unread would reset the connection, and
    // the client could lose the reply and Close frame sent before.
    let config = ServerConfig { max_connections: 1, token: Some("t".into()), ..ServerConfig::default() };
    let server = TestServer::with(config, |_| {}).await;
    let _holder = server.connect().await;
    for round in 0..20 {
        let mut c = server.connect().await;
        for i in 0..50 {
            // The server may close first; what it sent must still arrive.
            let _ = bounded("send", c.send_text(format!(r#"{{"id":"{i}","method":"metrics"}}"#))).await;
        }
        let msg = bounded("init", c.next_message()).await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(msg.to_text().unwrap().contains("Server at capacity"), "{msg:?}");
        expect_close(&mut c).await;
    }
    drop(_holder);
    // Five failed attempts with more requests behind them.
    for round in 0..20 {
        let deadline = Instant::now() + STEP;
        let mut c = loop {
            assert!(Instant::now() < deadline, "slot never freed");
            let mut c = server.connect().await;
            match call(&mut c, "authenticate", json!({"token": "wrong"})).await {
                Err(ClientError::Remote { code, .. }) if code == "unauthorized" => break c,
                _ => tokio::task::yield_now().await,
            }
        };
        for i in 0..4 {
            let req = format!(r#"{{"id":"{i}","method":"authenticate","params":{{"token":"x"}}}}"#);
            bounded("send", c.send_text(req)).await.unwrap();
        }
        for i in 0..50 {
            let _ = bounded("send", c.send_text(format!(r#"{{"id":"m{i}","method":"metrics"}}"#))).await;
        }
        let mut replies = 0;
        let code = loop {
            match bounded("frame", c.next_message()).await.unwrap_or_else(|e| panic!("round {round}: {e}")) {
                Message::Close(frame) => break frame.map(|f| u16::from(f.code)),
                Message::Text(_) => replies += 1,
                _ => {}
            }
        };
        assert_eq!(code, Some(1008), "round {round}");
        assert_eq!(replies, 4, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_close_with_1009_and_store_nothing() {
    let limit = 64 * 1024;
    let config = ServerConfig { max_message_bytes: limit, ..ServerConfig::default() };
    let server = TestServer::with(config, |_| {}).await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
    let before = stored(&mut c).await;

    // Just under the limit is fine (state is bounded only by the limit).
    let state = "y".repeat(limit - 200);
    bounded("checkpoint", c.checkpoint(&sid, "big", json!(state), json!({}))).await.unwrap();
    let mut before = before;
    before = {
        let now = stored(&mut c).await;
        assert_eq!(now["total_checkpoints"], u(&before["total_checkpoints"]) + 1);
        now
    };

    // Over the limit as a text message.
    let over = json!({"id": "big", "method": "checkpoint", "params": {"session_id": sid, "state": "z".repeat(limit)}});
    bounded("send", c.send_text(over.to_string())).await.unwrap();
    let deadline = Instant::now() + STEP;
    let mut outcome = None;
    for _ in 0..100 {
        match tokio::time::timeout_at(deadline, c.next_message()).await.expect("no answer to an oversized message") {
            Ok(Message::Close(Some(frame))) => {
                outcome = Some(u16::from(frame.code));
                break;
            }
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["success"], false, "{v}");
                assert_eq!(v["code"], "too_large", "{v}");
                outcome = Some(0);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("connection dropped without Close or error: {e}"),
        }
    }
    let outcome = outcome.expect("no outcome");
    assert!(outcome == 1009 || outcome == 0, "close code {outcome}");

    // Over the limit as a binary message, on a fresh connection.
    let mut c2 = server.connect().await;
    bounded("send", c2.send_message(Message::binary(vec![b'['; limit + 1]))).await.unwrap();
    let msg = bounded("answer", c2.next_message()).await.unwrap();
    match msg {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1009),
        Message::Text(t) => assert!(t.as_str().contains("\"success\":false"), "{t}"),
        other => panic!("unexpected {other:?}"),
    }

    let mut fresh = server.connect().await;
    assert_eq!(stored(&mut fresh).await, before);
    assert_eq!(ok(&mut fresh, "validate", json!({})).await["valid"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_larger_than_the_message_limit_are_delivered() {
    // Each request fits the limit, but a record with many notes, or a page
    // of long messages, renders to a reply many times larger.
    let limit = 80 * 1024;
    let config = ServerConfig { max_message_bytes: limit, ..ServerConfig::default() };
    let server = TestServer::with(config, |_| {}).await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
    let text = "n".repeat(60 * 1024);
    let cid = bounded("c", c.checkpoint(&sid, "first", json!(text), json!({}))).await.unwrap();
    for _ in 0..40 {
        ok(&mut c, "annotate", json!({"checkpoint_id": cid, "note": text})).await;
    }
    for _ in 0..39 {
        bounded("c", c.checkpoint(&sid, &text, json!(null), json!({}))).await.unwrap();
    }
    let full = ok(&mut c, "get_checkpoint", json!({"checkpoint_id": cid})).await;
    assert_eq!(full["annotations"].as_array().unwrap().len(), 40);
    assert!(full.to_string().len() > 2 * 1024 * 1024);
    let list = bounded("list", c.list_checkpoints(&sid, json!({}))).await.unwrap();
    assert_eq!(list.len(), 40);
    assert!(list[1..].iter().all(|x| x["message"] == text.as_str()));
    ok(&mut c, "metrics", json!({})).await;
}

/// A page of long messages ends early (bounded reply); paging on with
/// `after` yields the rest, none twice.
#[tokio::test]
async fn list_pages_are_bounded_in_bytes() {
    let server = TestServer::with(ServerConfig::default(), |s| s.durability = Durability::Async).await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "long").await;
    let message = "m".repeat(60 * 1024);
    for _ in 0..80 {
        checkpoint(&mut c, &sid, &message).await;
    }
    let first = bounded("list", c.list_checkpoints(&sid, json!({}))).await.unwrap();
    assert!(!first.is_empty() && first.len() < 80, "first page has {} rows", first.len());
    let mut seen: Vec<u64> = first.iter().map(|r| r["sequence_number"].as_u64().unwrap()).collect();
    for _ in 0..80 {
        let after = *seen.last().unwrap();
        let page = bounded("list", c.list_checkpoints(&sid, json!({"after": after}))).await.unwrap();
        if page.is_empty() {
            break;
        }
        seen.extend(page.iter().map(|r| r["sequence_number"].as_u64().unwrap()));
    }
    assert_eq!(seen.len(), 80);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

/// One connection holds at most MAX_SUBSCRIPTIONS_PER_CONNECTION subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_connection_are_capped() {
    let server = TestServer::with(ServerConfig::default(), |s| s.durability = Durability::Async).await;
    let mut c = server.connect().await;
    let cap = server::MAX_SUBSCRIPTIONS_PER_CONNECTION;
    let mut sessions = Vec::new();
    for i in 0..=cap {
        sessions.push(session(&mut c, &format!("s{i}")).await);
    }
    for sid in &sessions[..cap] {
        ok(&mut c, "subscribe", json!({"session_id": sid})).await;
    }
    let (_, code) = err(&mut c, "subscribe", json!({"session_id": sessions[cap]})).await;
    assert_eq!(code, "capacity");
    // Resubscribing to a held session is still allowed; freeing one makes room.
    ok(&mut c, "subscribe", json!({"session_id": sessions[0]})).await;
    ok(&mut c, "unsubscribe", json!({"session_id": sessions[0]})).await;
    ok(&mut c, "subscribe", json!({"session_id": sessions[cap]})).await;
}

/// A client that never answers pings is closed after two keepalive periods;
/// one that reads (and so answers them) stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_closes_silent_clients_only() {
    let config = ServerConfig { keepalive: Duration::from_millis(500), ..ServerConfig::default() };
    let server = TestServer::with(config, |_| {}).await;
    let (silent, _) = bounded("connect", tokio_tungstenite::connect_async(&server.url)).await.unwrap();
    let mut reader = server.connect().await;
    let connections = |m: &Value| m["connections"].as_u64().unwrap();
    assert_eq!(connections(&ok(&mut reader, "metrics", json!({})).await), 2);
    // The reader reads (answering pings) for three keepalive periods.
    assert_eq!(bounded("read", reader.next_event(Duration::from_millis(1500))).await.unwrap(), None);
    let deadline = Instant::now() + STEP;
    loop {
        let n = connections(&ok(&mut reader, "metrics", json!({})).await);
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the silent client was never closed ({n} connections)");
        bounded("read", reader.next_event(Duration::from_millis(50))).await.unwrap();
    }
    ok(&mut reader, "health", json!({})).await;
    drop(silent);
}

/// A request over `--max-message-bytes` (and under twice it) is refused with
/// `too_large`, answered under its own id; the connection carries on, and so
/// do the requests sent after it on it. `health` says the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_limit_is_refused_and_the_connection_carries_on() {
    let limit = 64 * 1024;
    let config = ServerConfig { max_message_bytes: limit, ..ServerConfig::default() };
    let server = TestServer::with(config, |_| {}).await;
    let mut c = server.connect().await;
    assert_eq!(u(&ok(&mut c, "health", json!({})).await["max_message_bytes"]), limit as u64);
    let sid = session(&mut c, "s").await;
    let before = stored(&mut c).await;
    let over = json!({"id": "big", "method": "checkpoint",
        "params": {"session_id": sid, "state": "z".repeat(limit + limit / 2)}});
    let after = json!({"id": "after", "method": "checkpoint", "params": {"session_id": sid, "state": 1}});
    bounded("send", c.send_text(over.to_string())).await.unwrap();
    bounded("send", c.send_text(after.to_string())).await.unwrap();
    let refused = bounded("reply", c.next_reply()).await.unwrap();
    assert_eq!((refused["id"].as_str(), refused["code"].as_str()), (Some("big"), Some("too_large")), "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("--max-message-bytes"), "{refused}");
    let next = bounded("reply", c.next_reply()).await.unwrap();
    assert_eq!((next["id"].as_str(), next["success"].as_bool()), (Some("after"), Some(true)), "{next}");
    assert_eq!(u(&stored(&mut c).await["total_checkpoints"]), u(&before["total_checkpoints"]) + 1);

    // Over the hard cap (twice the limit) the connection closes with 1009.
    let mut c2 = server.connect().await;
    let huge = json!({"id": "huge", "method": "checkpoint",
        "params": {"session_id": sid, "state": "z".repeat(2 * limit)}});
    bounded("send", c2.send_text(huge.to_string())).await.unwrap();
    assert_eq!(expect_close(&mut c2).await, 1009);
}
