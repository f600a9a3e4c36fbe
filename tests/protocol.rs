//! The protocol: every seed method keeps its reply shape and its exact
//! error strings, the extension methods theirs, and requests on one
//! connection are answered in order while connections run in parallel. Over
//! real TCP with the typed client, against the in-process server.

mod common;

use checkpointd::client::Client;
use common::inproc::TestServer;
use common::wire::*;
use serde_json::{Value, json};
use std::collections::HashSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_methods_keep_their_shapes() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;

    // authenticate without a configured token succeeds.
    assert_eq!(ok(&mut c, "authenticate", json!({"token": "anything"})).await, json!({"authenticated": true}));
    assert_eq!(ok(&mut c, "authenticate", json!({})).await, json!({"authenticated": true}));

    // create_session: a bare id; name defaults to "unnamed".
    let unnamed = ok(&mut c, "create_session", json!({})).await;
    assert!(is_uuid(&unnamed), "{unnamed}");
    let got = ok(&mut c, "get_session", json!({"session_id": unnamed})).await;
    assert_eq!(got["name"], "unnamed");
    let sid = ok(&mut c, "create_session", json!({"name": "agent-7", "metadata": {"model": "x"}})).await;
    let sid = s(&sid).to_string();

    // checkpoint: a bare id; message defaults to "Checkpoint", trigger to manual.
    let c1 = ok(&mut c, "checkpoint", json!({"session_id": sid})).await;
    assert!(is_uuid(&c1), "{c1}");
    let c2 = ok(
        &mut c,
        "checkpoint",
        json!({"session_id": sid, "message": "step 2", "tags": ["plan", "plan", "x"], "state": {"step": 2},
               "metadata": {"k": 1}, "parent_id": c1, "trigger": "auto:tool_call"}),
    )
    .await;

    // list_checkpoints: summaries in sequence order.
    let list = ok(&mut c, "list_checkpoints", json!({"session_id": sid})).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let first = &list[0];
    for field in ["id", "timestamp", "sequence_number", "message", "trigger", "tags", "has_notes"] {
        assert!(first.get(field).is_some(), "summary lacks {field}: {first}");
    }
    assert_eq!(first["id"], c1);
    assert_eq!(first["message"], "Checkpoint");
    assert_eq!(first["trigger"], "manual");
    assert_eq!(first["tags"], json!([]));
    assert_eq!(first["has_notes"], false);
    assert!(is_timestamp(&first["timestamp"]));
    let second = &list[1];
    assert_eq!(second["id"], c2);
    assert_eq!(second["message"], "step 2");
    assert_eq!(second["trigger"], "auto:tool_call");
    assert_eq!(second["tags"], json!(["plan", "x"]));
    assert!(u(&second["sequence_number"]) > u(&first["sequence_number"]));

    // An empty message is allowed and kept empty.
    let empty = ok(&mut c, "checkpoint", json!({"session_id": sid, "message": ""})).await;
    assert_eq!(ok(&mut c, "get_checkpoint", json!({"checkpoint_id": empty})).await["message"], "");
    ok(&mut c, "delete_checkpoint", json!({"checkpoint_id": empty})).await;

    // subscribe.
    assert_eq!(
        ok(&mut c, "subscribe", json!({"session_id": sid})).await,
        json!({"subscribed": true, "session_id": sid})
    );

    // metrics.
    let m = ok(&mut c, "metrics", json!(null)).await;
    assert_eq!(m["total_checkpoints"], 2);
    assert_eq!(m["active_sessions"], 2);
    assert_eq!(m["total_sessions_created"], 2);
    assert_eq!(m["connections"], 1);
    assert_eq!(m["subscriptions"], 1);

    // A missing `params` is `{}`.
    let reply = raw(&mut c, r#"{"id":"no-params","method":"metrics"}"#).await;
    assert_eq!(reply["id"], "no-params");
    assert_eq!(reply["success"], true);
    let reply = raw(&mut c, r#"{"id":"null-params","method":"create_session","params":null}"#).await;
    assert_eq!(reply["success"], true);
    assert!(is_uuid(&reply["result"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_error_strings_are_exact() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "a").await;
    let before = stored(&mut c).await;

    for method in ["list_checkpoints", "checkpoint", "subscribe"] {
        for params in [
            json!({}),
            json!({"session_id": null}),
            json!({"session_id": 42}),
            json!({"session_id": true}),
            json!({"session_id": {"id": sid}}),
            json!({"session_id": [sid]}),
        ] {
            assert_eq!(
                err(&mut c, method, params.clone()).await,
                ("Missing session_id parameter".into(), "invalid_params".into()),
                "{method} {params}"
            );
        }
        for bad in ["", "nope", "6f0c1f5e-0d3f-4c55-9a43-2b1f3d1e8a1", "6f0c1f5e-0d3f-4c55-9a43-2b1f3d1e8a11x", " "] {
            assert_eq!(
                err(&mut c, method, json!({"session_id": bad})).await,
                ("Invalid session_id format".into(), "invalid_params".into()),
                "{method} {bad:?}"
            );
        }
    }
    // A missing `params` behaves as `{}`.
    let reply = raw(&mut c, r#"{"id":"x","method":"checkpoint"}"#).await;
    assert_eq!(reply, json!({"id":"x","success":false,"error":"Missing session_id parameter","code":"invalid_params"}));

    assert_eq!(
        err(&mut c, "frobnicate", json!({})).await,
        ("Unknown method: frobnicate".into(), "unknown_method".into())
    );
    assert_eq!(err(&mut c, "", json!({})).await, ("Unknown method: ".into(), "unknown_method".into()));
    // Whatever the params: the seed never looked at them for an unknown method.
    let reply = raw(&mut c, r#"{"id":"u","method":"frobnicate","params":[1,2]}"#).await;
    assert_eq!(reply, json!({"id":"u","success":false,"error":"Unknown method: frobnicate","code":"unknown_method"}));

    for text in ["{not json", "", "null", "[]", "42", r#"{"id":1,"method":"metrics"}"#, r#"{"method":"metrics"}"#] {
        let reply = raw(&mut c, text).await;
        assert_eq!(reply["id"], "unknown", "{text:?}: {reply}");
        assert_eq!(reply["success"], false);
        assert!(s(&reply["error"]).starts_with("Invalid JSON: "), "{text:?}: {reply}");
        assert_eq!(reply["code"], "invalid_json");
        assert!(reply.get("result").is_none());
    }
    assert_eq!(stored(&mut c).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_restore_delete_with_events() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let mut watcher = server.connect().await;
    let sid = session(&mut c, "s").await;
    ok(&mut watcher, "subscribe", json!({"session_id": sid})).await;

    let state = json!({"n": 1.5, "nested": {"list": [1, "two", null, true]}, "text": "ünïcødé \u{0} \"q\""});
    let cid =
        bounded("checkpoint", c.checkpoint(&sid, "with state", state.clone(), json!({"tags": ["t"]}))).await.unwrap();
    let created = next_event(&mut watcher).await;
    assert_eq!(created["event_type"], "checkpoint_created");
    assert_eq!(created["data"]["checkpoint_id"], cid.as_str());
    assert_eq!(created["data"]["session_id"], sid.as_str());
    assert!(is_timestamp(&created["data"]["timestamp"]));
    let seq = u(&created["data"]["sequence_number"]);
    let ev1 = u(&created["seq"]);

    let full = ok(&mut c, "get_checkpoint", json!({"checkpoint_id": cid})).await;
    for field in [
        "id",
        "session_id",
        "sequence_number",
        "timestamp",
        "message",
        "tags",
        "trigger",
        "state",
        "metadata",
        "parent_id",
        "annotations",
    ] {
        assert!(full.get(field).is_some(), "get_checkpoint lacks {field}: {full}");
    }
    assert_eq!(full["id"], cid.as_str());
    assert_eq!(full["session_id"], sid.as_str());
    assert_eq!(u(&full["sequence_number"]), seq);
    assert_eq!(full["state"], state);
    assert_eq!(full["metadata"], json!({}));
    assert_eq!(full["parent_id"], Value::Null);
    assert_eq!(full["annotations"], json!([]));
    assert_eq!(full["tags"], json!(["t"]));

    let restored = ok(&mut c, "restore", json!({"session_id": sid, "checkpoint_id": cid})).await;
    assert_eq!(restored, json!({"checkpoint_id": cid, "session_id": sid, "sequence_number": seq, "state": state}));
    let ev = next_event(&mut watcher).await;
    assert_eq!(ev["event_type"], "checkpoint_restored");
    assert_eq!(ev["data"]["checkpoint_id"], cid.as_str());
    assert_eq!(ev["data"]["session_id"], sid.as_str());
    assert_eq!(u(&ev["data"]["sequence_number"]), seq);
    assert!(u(&ev["seq"]) > ev1);

    // Deleted without naming the session: the event names the real one.
    assert_eq!(ok(&mut c, "delete_checkpoint", json!({"checkpoint_id": cid})).await, json!({"deleted": true}));
    let ev = next_event(&mut watcher).await;
    assert_eq!(ev["event_type"], "checkpoint_deleted");
    assert_eq!(ev["data"]["checkpoint_id"], cid.as_str());
    assert_eq!(ev["data"]["session_id"], sid.as_str());
    assert_eq!(u(&ev["data"]["sequence_number"]), seq);
    assert_eq!(err(&mut c, "get_checkpoint", json!({"checkpoint_id": cid})).await.1, "not_found");
    assert_eq!(err(&mut c, "delete_checkpoint", json!({"checkpoint_id": cid})).await.1, "not_found");

    // Deleted through its own session works too.
    let c2 = checkpoint(&mut c, &sid, "second").await;
    assert_eq!(
        ok(&mut c, "delete_checkpoint", json!({"checkpoint_id": c2, "session_id": sid})).await,
        json!({"deleted": true})
    );
    assert_eq!(ok(&mut c, "metrics", json!({})).await["total_checkpoints"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_list_get_delete() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let mut watcher = server.connect().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(session(&mut c, &format!("s{i}")).await);
    }
    let all = ok(&mut c, "list_sessions", json!({})).await;
    let all = all.as_array().unwrap();
    assert_eq!(all.iter().map(|x| s(&x["id"])).collect::<Vec<_>>(), ids.iter().map(String::as_str).collect::<Vec<_>>());
    let row = &all[0];
    assert_eq!(row["name"], "s0");
    assert!(is_timestamp(&row["created_at"]));
    assert_eq!(row["checkpoint_count"], 0);
    assert_eq!(row["last_sequence"], Value::Null);
    assert!(row.get("metadata").is_none(), "list rows have no metadata: {row}");

    let page = ok(&mut c, "list_sessions", json!({"limit": 2, "after": ids[1]})).await;
    assert_eq!(page.as_array().unwrap().iter().map(|x| s(&x["id"])).collect::<Vec<_>>(), vec![&ids[2], &ids[3]]);
    assert_eq!(ok(&mut c, "list_sessions", json!({"after": ids[4]})).await, json!([]));
    assert_eq!(err(&mut c, "list_sessions", json!({"limit": "2"})).await.1, "invalid_params");
    assert_eq!(err(&mut c, "list_sessions", json!({"after": "nope"})).await.1, "invalid_params");

    let c1 = checkpoint(&mut c, &ids[2], "one").await;
    let c2 = checkpoint(&mut c, &ids[2], "two").await;
    let seq2 = u(&ok(&mut c, "get_checkpoint", json!({"checkpoint_id": c2})).await["sequence_number"]);
    let got = ok(&mut c, "get_session", json!({"session_id": ids[2]})).await;
    assert_eq!(got["id"], ids[2].as_str());
    assert_eq!(got["name"], "s2");
    assert_eq!(got["checkpoint_count"], 2);
    assert_eq!(u(&got["last_sequence"]), seq2);
    assert_eq!(got["metadata"], json!({}));
    assert_eq!(got["retention"], Value::Null);

    // Deleting the newest moves last_sequence back.
    ok(&mut c, "delete_checkpoint", json!({"checkpoint_id": c2})).await;
    let got = ok(&mut c, "get_session", json!({"session_id": ids[2]})).await;
    let seq1 = u(&ok(&mut c, "get_checkpoint", json!({"checkpoint_id": c1})).await["sequence_number"]);
    assert_eq!((got["checkpoint_count"].clone(), u(&got["last_sequence"])), (json!(1), seq1));

    let now = ok(&mut c, "metrics", json!({})).await["event_sequence"].clone();
    ok(&mut watcher, "subscribe", json!({"session_id": ids[2], "since": now})).await;
    assert_eq!(ok(&mut c, "delete_session", json!({"session_id": ids[2]})).await, json!({"deleted": true}));
    let ev = next_event(&mut watcher).await;
    assert_eq!(ev["event_type"], "session_deleted");
    assert_eq!(ev["data"]["session_id"], ids[2].as_str());
    assert_eq!(ev["data"]["removed"], 1);
    assert!(is_timestamp(&ev["data"]["timestamp"]));
    assert_eq!(err(&mut c, "get_session", json!({"session_id": ids[2]})).await.1, "not_found");
    assert_eq!(err(&mut c, "get_checkpoint", json!({"checkpoint_id": c1})).await.1, "not_found");
    assert_eq!(err(&mut c, "list_checkpoints", json!({"session_id": ids[2]})).await.1, "not_found");
    let m = ok(&mut c, "metrics", json!({})).await;
    assert_eq!((m["active_sessions"].clone(), m["total_sessions_created"].clone()), (json!(4), json!(5)));
    assert_eq!(m["total_checkpoints"], 0);
    assert_eq!(ok(&mut c, "list_sessions", json!({})).await.as_array().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotate_validate_unsubscribe_health() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
    let cid = checkpoint(&mut c, &sid, "one").await;

    let a = ok(&mut c, "annotate", json!({"checkpoint_id": cid, "note": "looks wrong", "severity": "warning"})).await;
    assert_eq!(a["checkpoint_id"], cid.as_str());
    assert_eq!(a["note"], "looks wrong");
    assert_eq!(a["severity"], "warning");
    assert!(is_timestamp(&a["timestamp"]));
    let a2 = ok(&mut c, "annotate", json!({"checkpoint_id": cid, "note": "fine"})).await;
    assert_eq!(a2["severity"], "info");
    for bad in [
        json!({"checkpoint_id": cid}),
        json!({"checkpoint_id": cid, "note": ""}),
        json!({"checkpoint_id": cid, "note": 5}),
        json!({"checkpoint_id": cid, "note": "n", "severity": "dire"}),
        json!({"note": "n"}),
        json!({"checkpoint_id": "nope", "note": "n"}),
    ] {
        assert_eq!(err(&mut c, "annotate", bad.clone()).await.1, "invalid_params", "{bad}");
    }
    let list = bounded("list", c.list_checkpoints(&sid, json!({}))).await.unwrap();
    assert_eq!(list[0]["has_notes"], true);
    let full = ok(&mut c, "get_checkpoint", json!({"checkpoint_id": cid})).await;
    let notes = full["annotations"].as_array().unwrap();
    assert_eq!(notes.len(), 2);
    assert_eq!((notes[0]["note"].clone(), notes[0]["severity"].clone()), (json!("looks wrong"), json!("warning")));

    let other = session(&mut c, "other").await;
    checkpoint(&mut c, &other, "x").await;
    checkpoint(&mut c, &other, "y").await;
    let v = ok(&mut c, "validate", json!({})).await;
    assert_eq!(v, json!({"valid": 3, "invalid": 0, "invalid_ids": []}));
    let v = ok(&mut c, "validate", json!({"session_id": sid})).await;
    assert_eq!(v, json!({"valid": 1, "invalid": 0, "invalid_ids": []}));
    assert_eq!(err(&mut c, "validate", json!({"session_id": "nope"})).await.1, "invalid_params");

    // unsubscribe stops the events of that session only. (`since` = now: a
    // subscription without it may still get the events of writes that were
    // acknowledged but not yet dispatched.)
    let mut w = server.connect().await;
    let now = ok(&mut w, "metrics", json!({})).await["event_sequence"].clone();
    ok(&mut w, "subscribe", json!({"session_id": sid, "since": now})).await;
    ok(&mut w, "subscribe", json!({"session_id": other, "since": now})).await;
    assert_eq!(ok(&mut w, "metrics", json!({})).await["subscriptions"], 2);
    assert_eq!(
        ok(&mut w, "unsubscribe", json!({"session_id": sid})).await,
        json!({"subscribed": false, "session_id": sid})
    );
    checkpoint(&mut c, &sid, "unwatched").await;
    let watched = checkpoint(&mut c, &other, "watched").await;
    let ev = next_event(&mut w).await;
    assert_eq!(ev["data"]["checkpoint_id"], watched.as_str(), "event of an unsubscribed session: {ev}");
    assert_eq!(ok(&mut w, "metrics", json!({})).await["subscriptions"], 1);
    // Unsubscribing from something never subscribed is harmless.
    ok(&mut w, "unsubscribe", json!({"session_id": uuid::Uuid::new_v4().to_string()})).await;
    assert_eq!(err(&mut w, "unsubscribe", json!({})).await.0, "Missing session_id parameter");

    let h = ok(&mut c, "health", json!({})).await;
    assert_eq!(h["healthy"], true);
    assert_eq!(h["durability"], "sync");
    assert!(u(&h["format_version"]) >= 1);
    assert_eq!(h["connections"], 2);
    // The default, unless the open-files limit caps it.
    let max = u(&h["max_connections"]) as usize;
    assert!(max > 2 && max <= checkpointd::server::DEFAULT_MAX_CONNECTIONS, "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_in_order() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
    let methods = ["checkpoint", "metrics", "list_checkpoints", "nope", "health", "get_session"];
    for i in 0..120 {
        let method = methods[i % methods.len()];
        let req = json!({"id": format!("r{i}"), "method": method, "params": {"session_id": sid}});
        bounded("send", c.send_text(req.to_string())).await.unwrap();
    }
    bounded("send", c.send_text("garbage")).await.unwrap();
    for i in 0..120 {
        let reply = bounded("reply", c.next_reply()).await.unwrap();
        assert_eq!(reply["id"], format!("r{i}"));
        assert_eq!(reply["success"], methods[i % methods.len()] != "nope", "{reply}");
    }
    assert_eq!(bounded("reply", c.next_reply()).await.unwrap()["id"], "unknown");
    assert_eq!(ok(&mut c, "metrics", json!({})).await["total_checkpoints"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_run_in_parallel() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "shared").await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let url = server.url.clone();
        let sid = sid.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = Client::connect(&url).await.unwrap();
            let mut ids = Vec::new();
            for i in 0..25 {
                ids.push(w.checkpoint(&sid, &format!("{t}-{i}"), json!([t, i]), json!({})).await.unwrap());
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for task in tasks {
        for id in bounded("writer", task).await.unwrap() {
            assert!(all.insert(id));
        }
    }
    let list = bounded("list", c.list_checkpoints(&sid, json!({}))).await.unwrap();
    assert_eq!(list.len(), 200);
    let seqs: Vec<u64> = list.iter().map(|x| u(&x["sequence_number"])).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(list.iter().map(|x| s(&x["id"]).to_string()).collect::<HashSet<_>>(), all);
}
