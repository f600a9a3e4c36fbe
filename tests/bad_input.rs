//! Bad input gets a typed error and changes nothing: unknown ids, wrong
//! types, invalid JSON and UTF-8, oversized fields, extreme numbers. Stored
//! data, counters and the journal stay as they were, and the connection goes
//! on (except where RFC 6455 says it must close).

mod common;

use checkpointd::model::{CheckpointId, ListQuery, NewCheckpoint, RetentionPolicy, SessionId};
use checkpointd::server::ServerConfig;
use common::inproc::{TestServer, close, open};
use common::svc::*;
use common::wire::*;
use common::{svc, wire};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path()).await;
    let a = svc::session(&service, "a").await;
    let b = svc::session(&service, "b").await;
    let a1 = cp(&service, a, "a1", &["t"]).await;
    let b1 = cp(&service, b, "b1", &[]).await;
    let metrics_before = metrics(&service).await;
    let journal_before = journal(service.store()).await;
    let sessions_before: Vec<_> = service.list_sessions(None, None).await.unwrap().iter().map(session_view).collect();
    let unknown_session = SessionId::new();
    let unknown_cp = CheckpointId::new();
    let big = "x".repeat(64 * 1024 + 1);
    let tags65: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();

    // Unknown ids.
    assert_eq!(code(service.get_session(unknown_session).await), "not_found");
    assert_eq!(code(service.get_checkpoint(unknown_cp).await), "not_found");
    assert_eq!(code(service.checkpoint(new_cp(unknown_session, "m", &[])).await), "not_found");
    let unknown_parent = NewCheckpoint { parent_id: Some(unknown_cp), ..new_cp(a, "m", &[]) };
    assert_eq!(code(service.checkpoint(unknown_parent).await), "not_found");
    assert_eq!(code(service.delete_checkpoint(unknown_cp, None).await), "not_found");
    assert_eq!(code(service.delete_checkpoint(a1.id, Some(b)).await), "not_found", "wrong session");
    assert_eq!(code(service.delete_session(unknown_session).await), "not_found");
    assert_eq!(code(service.restore(a, unknown_cp).await), "not_found");
    assert_eq!(code(service.restore(b, a1.id).await), "not_found", "wrong session");
    assert_eq!(code(service.annotate(unknown_cp, "n".into(), None).await), "not_found");
    let keep1 = RetentionPolicy { keep_recent: Some(1), preserve_tags: vec![] };
    assert_eq!(code(service.compact(unknown_session, keep1.clone()).await), "not_found");
    assert_eq!(code(service.set_retention(unknown_session, Some(keep1)).await), "not_found");
    assert_eq!(code(service.list_checkpoints(unknown_session, &ListQuery::default()).await), "not_found");
    assert_eq!(code(service.validate(Some(unknown_session)).await), "not_found");
    assert_eq!(code(service.subscribe(unknown_session, None).await), "not_found");
    assert_eq!(code(service.list_sessions(Some(unknown_session), None).await), "not_found");
    // A parent from another session.
    let cross = NewCheckpoint { parent_id: Some(b1.id), ..new_cp(a, "m", &[]) };
    assert_eq!(code(service.checkpoint(cross).await), "conflict");
    // Empty or oversized fields.
    assert_eq!(code(service.create_session(Some(String::new()), None).await), "invalid_params");
    assert_eq!(code(service.create_session(Some(big.clone()), None).await), "too_large");
    assert_eq!(code(service.checkpoint(new_cp(a, &big, &[])).await), "too_large");
    let many_tags = NewCheckpoint { tags: tags65, ..new_cp(a, "m", &[]) };
    assert_eq!(code(service.checkpoint(many_tags).await), "too_large");
    assert_eq!(code(service.checkpoint(new_cp(a, "m", &[""])).await), "invalid_params");
    assert_eq!(code(service.checkpoint(new_cp(a, "m", &["x".repeat(257).as_str()])).await), "too_large");
    for not_object in ["[1,2]", "42", "\"text\"", "null", "true"] {
        let bad = NewCheckpoint { metadata: Some(svc::raw(not_object)), ..new_cp(a, "m", &[]) };
        assert_eq!(code(service.checkpoint(bad).await), "invalid_params", "checkpoint metadata {not_object}");
        assert_eq!(
            code(service.create_session(Some("s".into()), Some(svc::raw(not_object))).await),
            "invalid_params",
            "session metadata {not_object}"
        );
    }
    let huge_meta = svc::raw(&format!(r#"{{"k":"{big}"}}"#));
    let bad = NewCheckpoint { metadata: Some(huge_meta.clone()), ..new_cp(a, "m", &[]) };
    assert_eq!(code(service.checkpoint(bad).await), "too_large");
    assert_eq!(code(service.create_session(Some("s".into()), Some(huge_meta)).await), "too_large");
    assert_eq!(code(service.annotate(a1.id, String::new(), None).await), "invalid_params");
    assert_eq!(code(service.annotate(a1.id, big.clone(), None).await), "too_large");
    assert_eq!(code(service.compact(a, RetentionPolicy::default()).await), "invalid_params");
    let bad_policy = RetentionPolicy { keep_recent: Some(1), preserve_tags: vec![String::new()] };
    assert_eq!(code(service.compact(a, bad_policy.clone()).await), "invalid_params");
    assert_eq!(code(service.set_retention(a, Some(bad_policy)).await), "invalid_params");
    let q = ListQuery { tag: Some(String::new()), ..Default::default() };
    assert_eq!(code(service.list_checkpoints(a, &q).await), "invalid_params");

    // Nothing stored changed.
    assert_eq!(metrics(&service).await, metrics_before);
    assert_eq!(journal(service.store()).await, journal_before);
    let sessions_after: Vec<_> = service.list_sessions(None, None).await.unwrap().iter().map(session_view).collect();
    assert_eq!(sessions_after, sessions_before);
    assert_eq!(ids(&all_checkpoints(&service, a).await), vec![a1.id]);
    assert!(!service.get_checkpoint(a1.id).await.unwrap().summary.has_notes);
    assert_eq!(service.validate(None).await.unwrap().valid, 2);
    assert!(service.health().healthy);
    // The limits themselves are accepted, and the next sequence is the next one.
    let max_tags: Vec<String> = (0..64).map(|i| format!("t{i}")).collect();
    let at_limit = NewCheckpoint { tags: max_tags, ..new_cp(a, &"y".repeat(64 * 1024), &[]) };
    assert_eq!(service.checkpoint(at_limit).await.unwrap().sequence_number, 3);
    close(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_sessions_and_checkpoints_are_not_found() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let ghost = uuid::Uuid::new_v4().to_string();
    let a = wire::session(&mut c, "a").await;
    let b = wire::session(&mut c, "b").await;
    let ca = checkpoint(&mut c, &a, "in a").await;
    let before = stored(&mut c).await;

    for (method, params) in [
        ("checkpoint", json!({"session_id": ghost})),
        ("list_checkpoints", json!({"session_id": ghost})),
        ("subscribe", json!({"session_id": ghost})),
        ("get_session", json!({"session_id": ghost})),
        ("delete_session", json!({"session_id": ghost})),
        ("compact", json!({"session_id": ghost, "keep_recent": 1})),
        ("set_retention", json!({"session_id": ghost, "keep_recent": 1})),
        ("get_checkpoint", json!({"checkpoint_id": ghost})),
        ("delete_checkpoint", json!({"checkpoint_id": ghost})),
        ("annotate", json!({"checkpoint_id": ghost, "note": "n"})),
        ("restore", json!({"session_id": a, "checkpoint_id": ghost})),
        // Through a session the checkpoint does not belong to.
        ("restore", json!({"session_id": b, "checkpoint_id": ca})),
        ("delete_checkpoint", json!({"session_id": b, "checkpoint_id": ca})),
        ("restore", json!({"session_id": ghost, "checkpoint_id": ca})),
        ("checkpoint", json!({"session_id": b, "parent_id": ghost})),
    ] {
        let (message, code) = err(&mut c, method, params.clone()).await;
        assert_eq!(code, "not_found", "{method} {params}: {message}");
    }
    // A parent from another session is a conflict.
    let (_, code) = err(&mut c, "checkpoint", json!({"session_id": b, "parent_id": ca})).await;
    assert_eq!(code, "conflict");
    assert_eq!(stored(&mut c).await, before);
    // Nothing was deleted by the refused requests.
    assert_eq!(ok(&mut c, "get_checkpoint", json!({"checkpoint_id": ca})).await["session_id"], a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_leaves_connection_and_store_intact() {
    let config = ServerConfig { max_message_bytes: 4 * 1024 * 1024, ..ServerConfig::default() };
    let server = TestServer::with(config, |_| {}).await;
    let mut c = server.connect().await;
    let sid = wire::session(&mut c, "s").await;
    let cid = checkpoint(&mut c, &sid, "one").await;
    let before = stored(&mut c).await;

    let invalid = |reply: &Value| {
        assert_eq!(reply["id"], "unknown", "{reply}");
        assert_eq!(reply["code"], "invalid_json", "{reply}");
        assert!(s(&reply["error"]).starts_with("Invalid JSON: "), "{reply}");
    };

    // Invalid JSON of many kinds.
    for text in [
        "{not json",
        "{\"id\":\"1\",\"method\":\"metrics\"",
        "\u{feff}{}",
        "{\"id\":\"1\",\"method\":\"metrics\"} trailing",
        "{\"id\":\"1\",\"id\":\"2\",\"method\":\"metrics\"}",
        "{\"id\":null,\"method\":\"metrics\"}",
        "{\"id\":\"1\",\"method\":null}",
        "{\"id\":\"1\",\"method\":[\"metrics\"]}",
        "\"just a string\"",
    ] {
        invalid(&wire::raw(&mut c, text).await);
        assert_eq!(stored(&mut c).await, before, "{text:?}");
    }
    // A lone surrogate is valid JSON grammar but no string: a bad param.
    let reply = wire::raw(&mut c, r#"{"id":"sur","method":"checkpoint","params":{"session_id":"\ud800"}}"#).await;
    assert_eq!(reply["code"], "invalid_params", "{reply}");
    let reply = wire::raw(&mut c, r#"{"id":"sur","method":"create_session","params":{"name":"\udc00x"}}"#).await;
    assert_eq!(reply["code"], "invalid_params", "{reply}");
    // params that are not an object.
    for params in ["[]", "5", "\"x\"", "true"] {
        let reply = wire::raw(&mut c, &format!(r#"{{"id":"p","method":"metrics","params":{params}}}"#)).await;
        assert_eq!(reply["id"], "p");
        assert_eq!(reply["success"], false);
        assert_eq!(reply["code"], "invalid_params", "{reply}");
        assert_eq!(stored(&mut c).await, before, "{params}");
    }

    // Wrong types.
    for (method, params) in [
        ("create_session", json!({"name": 5})),
        ("create_session", json!({"name": ""})),
        ("create_session", json!({"metadata": "x"})),
        ("create_session", json!({"metadata": [1]})),
        ("checkpoint", json!({"session_id": sid, "message": 5})),
        ("checkpoint", json!({"session_id": sid, "tags": "x"})),
        ("checkpoint", json!({"session_id": sid, "tags": [1]})),
        ("checkpoint", json!({"session_id": sid, "tags": [""]})),
        ("checkpoint", json!({"session_id": sid, "metadata": 5})),
        ("checkpoint", json!({"session_id": sid, "parent_id": 5})),
        ("checkpoint", json!({"session_id": sid, "parent_id": "nope"})),
        ("checkpoint", json!({"session_id": sid, "trigger": "sometimes"})),
        ("checkpoint", json!({"session_id": sid, "trigger": "auto:"})),
        ("checkpoint", json!({"session_id": sid, "trigger": 1})),
        ("get_checkpoint", json!({})),
        ("get_checkpoint", json!({"checkpoint_id": 5})),
        ("restore", json!({"session_id": sid})),
        ("restore", json!({"session_id": sid, "checkpoint_id": [cid]})),
        ("delete_checkpoint", json!({"checkpoint_id": cid, "session_id": 5})),
        ("delete_checkpoint", json!({"checkpoint_id": cid, "session_id": "nope"})),
        ("delete_checkpoint", json!({"checkpoint_id": {}})),
        ("get_session", json!({"session_id": 5})),
        ("delete_session", json!({})),
        ("validate", json!({"session_id": 5})),
    ] {
        let (message, code) = err(&mut c, method, params.clone()).await;
        assert_eq!(code, "invalid_params", "{method} {params}: {message}");
        assert_eq!(stored(&mut c).await, before, "{method} {params}");
    }

    // Invalid UUIDs in every id param.
    for bad in ["", "nope", "00000000-0000-0000-0000-00000000000g", "{6f0c1f5e-0d3f-4c55-9a43", "🦀"] {
        for (method, params) in [
            ("checkpoint", json!({"session_id": bad})),
            ("get_checkpoint", json!({"checkpoint_id": bad})),
            ("restore", json!({"session_id": sid, "checkpoint_id": bad})),
            ("delete_checkpoint", json!({"checkpoint_id": bad})),
            ("annotate", json!({"checkpoint_id": bad, "note": "n"})),
            ("get_session", json!({"session_id": bad})),
            ("list_sessions", json!({"after": bad})),
        ] {
            let (message, code) = err(&mut c, method, params.clone()).await;
            assert_eq!(code, "invalid_params", "{method} {params}");
            assert!(message.starts_with("Invalid ") || message.starts_with("Missing "), "{message}");
            assert_eq!(stored(&mut c).await, before, "{method} {params}");
        }
    }

    // Unknown methods, including a 10 KB name.
    let long = "m".repeat(10 * 1024);
    for name in ["Checkpoint", "metrics ", "__proto__", long.as_str()] {
        let (message, code) = err(&mut c, name, json!({})).await;
        assert_eq!(message, format!("Unknown method: {name}"));
        assert_eq!(code, "unknown_method");
        assert_eq!(stored(&mut c).await, before);
    }

    // Over the field limits.
    let big = "x".repeat(64 * 1024 + 1);
    for (method, params) in [
        ("checkpoint", json!({"session_id": sid, "message": big})),
        ("create_session", json!({"name": big})),
        ("annotate", json!({"checkpoint_id": cid, "note": big})),
        ("checkpoint", json!({"session_id": sid, "tags": ["t".repeat(257)]})),
        ("checkpoint", json!({"session_id": sid, "tags": (0..65).map(|i| i.to_string()).collect::<Vec<_>>()})),
        ("checkpoint", json!({"session_id": sid, "metadata": {"k": big}})),
    ] {
        assert_eq!(err(&mut c, method, params).await.1, "too_large", "{method}");
        assert_eq!(stored(&mut c).await, before, "{method}");
    }
    // The notes refused above left nothing behind.
    assert_eq!(ok(&mut c, "get_checkpoint", json!({"checkpoint_id": cid})).await["annotations"], json!([]));

    // Binary frames get an error reply; the connection stays open.
    for payload in [b"{\"id\":\"1\",\"method\":\"metrics\"}".to_vec(), vec![0xff, 0x00, 0x13], vec![]] {
        bounded("send", c.send_message(Message::binary(payload))).await.unwrap();
        let reply = bounded("reply", c.next_reply()).await.unwrap();
        invalid(&reply);
        assert_eq!(stored(&mut c).await, before);
    }

    // Deeply nested JSON, as the whole frame and inside params.
    let deep = "[".repeat(100_000);
    invalid(&wire::raw(&mut c, &deep).await);
    let deep_obj = format!("{}{}", "{\"a\":".repeat(50_000), "1");
    invalid(&wire::raw(&mut c, &deep_obj).await);
    let deep_params = format!(r#"{{"id":"deep","method":"create_session","params":{deep}}}"#);
    let reply = wire::raw(&mut c, &deep_params).await;
    assert_eq!(reply["success"], false, "{}", &reply.to_string()[..200.min(reply.to_string().len())]);
    let deep_state =
        format!(r#"{{"id":"deep","method":"checkpoint","params":{{"session_id":"{sid}","state":{deep}}}}}"#);
    let reply = wire::raw(&mut c, &deep_state).await;
    assert_eq!(reply["success"], false, "{reply}");
    let closed = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_state =
        format!(r#"{{"id":"deep","method":"checkpoint","params":{{"session_id":"{sid}","state":{closed}}}}}"#);
    let reply = wire::raw(&mut c, &deep_state).await;
    assert_eq!(reply["code"], "too_large", "{reply}");
    assert_eq!(stored(&mut c).await, before);
    // Just within the nesting limit is fine (and readable back).
    let limit = checkpointd::protocol::request::MAX_JSON_DEPTH;
    let ok_state: Value = serde_json::from_str(&format!("{}{}", "[".repeat(limit), "]".repeat(limit))).unwrap();
    let deep_cid = bounded("checkpoint", c.checkpoint(&sid, "deep", ok_state.clone(), json!({}))).await.unwrap();
    assert_eq!(ok(&mut c, "get_checkpoint", json!({"checkpoint_id": deep_cid})).await["state"], ok_state);
    ok(&mut c, "delete_checkpoint", json!({"checkpoint_id": deep_cid})).await;
    let deep_meta: Value =
        serde_json::from_str(&format!("{{\"a\":{}{}}}", "[".repeat(limit), "]".repeat(limit))).unwrap();
    assert_eq!(err(&mut c, "create_session", json!({"metadata": deep_meta})).await.1, "too_large");
    let before = {
        let now = stored(&mut c).await;
        assert_eq!(now["total_checkpoints"], before["total_checkpoints"]);
        now
    };

    // A ping is answered with a pong carrying the same payload.
    bounded("ping", c.send_message(Message::Ping(b"hello"[..].into()))).await.unwrap();
    let pong = bounded("pong", c.next_message()).await.unwrap();
    assert_eq!(pong, Message::Pong(b"hello"[..].into()));

    // Still the same connection, still the same data.
    assert_eq!(stored(&mut c).await, before);
    let list = bounded("list", c.list_checkpoints(&sid, json!({}))).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], cid.as_str());
    ok(&mut c, "validate", json!({})).await;
    checkpoint(&mut c, &sid, "still works").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_fails_the_connection_with_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let before = stored(&mut c).await;
    let frame = Frame::message(b"{\"id\":\"\xff\xfe\"}".to_vec(), OpCode::Data(Data::Text), true);
    bounded("send", c.send_message(Message::Frame(frame))).await.unwrap();
    // RFC 6455 §8.1: not UTF-8 in a text frame fails the connection.
    assert_eq!(expect_close(&mut c).await, 1007);
    let mut fresh = server.connect().await;
    assert_eq!(stored(&mut fresh).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_numbers_are_answered() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = wire::session(&mut c, "s").await;
    let cid = checkpoint(&mut c, &sid, "one").await;
    let max = u64::MAX;
    for (method, params) in [
        ("list_checkpoints", json!({"session_id": sid, "after": max})),
        ("list_checkpoints", json!({"session_id": sid, "before": 0})),
        ("list_checkpoints", json!({"session_id": sid, "before": max, "order": "desc"})),
        ("list_checkpoints", json!({"session_id": sid, "after": max, "before": 0})),
        ("list_checkpoints", json!({"session_id": sid, "limit": 0})),
        ("list_checkpoints", json!({"session_id": sid, "limit": max})),
        ("list_sessions", json!({"limit": 0})),
        ("list_sessions", json!({"limit": max})),
        ("compact", json!({"session_id": sid, "keep_recent": max})),
        ("set_retention", json!({"session_id": sid, "keep_recent": max})),
        ("set_retention", json!({"session_id": sid, "keep_recent": 0})),
        ("subscribe", json!({"session_id": sid, "since": max})),
        ("subscribe", json!({"session_id": sid, "since": 0})),
        ("list_checkpoints", json!({"session_id": sid, "limit": 1e300})),
        ("list_checkpoints", json!({"session_id": sid, "after": -0})),
        ("list_checkpoints", json!({"session_id": sid, "limit": 18446744073709551615u64})),
    ] {
        // An answer, success or error, and the connection goes on.
        let reply = call(&mut c, method, params.clone()).await;
        if let Err(e) = &reply {
            assert!(e.code().is_some(), "{method} {params}: {e}");
        }
    }
    let reply = wire::raw(&mut c, &format!(r#"{{"id":"n","method":"list_checkpoints","params":{{"session_id":"{sid}","limit":123456789012345678901234567890}}}}"#)).await;
    assert_eq!(reply["code"], "invalid_params", "{reply}");
    // keep_recent 0 on the retention policy keeps nothing unpreserved, but
    // always the checkpoint being added.
    let newest = checkpoint(&mut c, &sid, "two").await;
    let list = bounded("list", c.list_checkpoints(&sid, json!({}))).await.unwrap();
    assert_eq!(list.iter().map(|x| s(&x["id"])).collect::<Vec<_>>(), vec![newest.as_str()]);
    assert_eq!(err(&mut c, "get_checkpoint", json!({"checkpoint_id": cid})).await.1, "not_found");
}
