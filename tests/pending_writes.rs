//! Pending writes (LangGraph's `put_writes`) and the operations that move
//! whole histories: writes keep the first (idx >= 0) or the last (idx < 0)
//! stored, may arrive before their checkpoint, come back ordered with it,
//! and go where it goes (delete, compaction, copy, deletion by metadata).
//! Over a real WebSocket; the restart test on the real binary.

mod common;

use checkpointd::client::Client;
use common::child::Daemon;
use common::inproc::TestServer;
use common::wire::*;
use serde_json::{Value, json};

async fn put_writes(c: &mut Client, sid: &str, ext: &str, task: &str, path: &str, writes: Value) -> u64 {
    let params = json!({"session_id": sid, "external_id": ext, "task_id": task, "task_path": path, "writes": writes});
    u(&ok(c, "put_writes", params).await["stored"])
}

async fn writes_of(c: &mut Client, sid: &str, ns: &str, ext: &str) -> Vec<Value> {
    let got = ok(c, "get_checkpoint", json!({"session_id": sid, "namespace": ns, "external_id": ext})).await;
    got.get("writes").and_then(Value::as_array).cloned().unwrap_or_default()
}

async fn put(c: &mut Client, sid: &str, ns: &str, ext: &str, parent: Option<&str>, md: Value) -> String {
    let mut params =
        json!({"session_id": sid, "namespace": ns, "external_id": ext, "state": {"at": ext}, "metadata": md});
    if let Some(parent) = parent {
        params["parent_external_id"] = json!(parent);
    }
    s(&ok(c, "checkpoint", params).await).to_string()
}

fn ext_ids(rows: &Value) -> Vec<String> {
    rows.as_array().unwrap().iter().map(|r| s(&r["external_id"]).to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_keep_first_or_last_and_come_back_ordered() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
    // Before the checkpoint exists (LangGraph sends both concurrently).
    let w = json!([{"idx": 0, "channel": "a", "value": {"n": 1}}, {"idx": 1, "channel": "b", "value": [1, 2]}]);
    assert_eq!(put_writes(&mut c, &sid, "c1", "t2", "p1", w).await, 2);
    put(&mut c, &sid, "", "c1", None, json!({})).await;
    // idx >= 0: the first stored stays; idx < 0: the last replaces it.
    let again =
        json!([{"idx": 0, "channel": "a", "value": "changed"}, {"idx": -1, "channel": "__error__", "value": "e1"}]);
    assert_eq!(put_writes(&mut c, &sid, "c1", "t2", "p1", again).await, 1);
    let last =
        json!([{"idx": -1, "channel": "__error__", "value": "e2"}, {"idx": -1, "channel": "__error__", "value": "e3"}]);
    assert_eq!(put_writes(&mut c, &sid, "c1", "t2", "p1", last).await, 2);
    assert_eq!(put_writes(&mut c, &sid, "c1", "t1", "p1", json!([{"idx": 0, "channel": "a", "value": 0}])).await, 1);
    assert_eq!(put_writes(&mut c, &sid, "c1", "t9", "p0", json!([{"idx": 5, "channel": "z", "value": null}])).await, 1);
    assert_eq!(put_writes(&mut c, &sid, "c1", "t9", "p0", json!([])).await, 0);

    let got = writes_of(&mut c, &sid, "", "c1").await;
    let order: Vec<(String, String, i64)> = got
        .iter()
        .map(|w| (s(&w["task_path"]).to_string(), s(&w["task_id"]).to_string(), w["idx"].as_i64().unwrap()))
        .collect();
    let expected = [("p0", "t9", 5), ("p1", "t1", 0), ("p1", "t2", -1), ("p1", "t2", 0), ("p1", "t2", 1)];
    assert_eq!(order, expected.map(|(p, t, i)| (p.to_string(), t.to_string(), i)));
    assert_eq!(got[2]["value"], json!("e3"));
    assert_eq!(got[3]["value"], json!({"n": 1}));
    assert_eq!(got[3]["channel"], json!("a"));

    // Namespaces keep their writes apart; a new checkpoint starts empty.
    put(&mut c, &sid, "child:1", "c1", None, json!({})).await;
    assert!(writes_of(&mut c, &sid, "child:1", "c1").await.is_empty());
    put(&mut c, &sid, "", "c2", Some("c1"), json!({})).await;
    assert!(writes_of(&mut c, &sid, "", "c2").await.is_empty());

    // Bad requests change nothing.
    let before = stored(&mut c).await;
    let bad = [
        json!({"session_id": sid, "task_id": "t", "writes": []}),
        json!({"session_id": sid, "external_id": "c1", "writes": []}),
        json!({"session_id": sid, "external_id": "c1", "task_id": "t"}),
        json!({"session_id": sid, "external_id": "c1", "task_id": "t", "writes": [{"idx": "0", "channel": "a", "value": 1}]}),
        json!({"session_id": sid, "external_id": "c1", "task_id": "t", "writes": [{"idx": 0, "channel": "", "value": 1}]}),
    ];
    for params in bad {
        assert_eq!(err(&mut c, "put_writes", params.clone()).await.1, "invalid_params", "{params}");
    }
    let many: Vec<Value> = (0..10_001).map(|i| json!({"idx": i, "channel": "c", "value": 0})).collect();
    let params = json!({"session_id": sid, "external_id": "c1", "task_id": "t", "writes": many});
    assert_eq!(err(&mut c, "put_writes", params).await.1, "too_large");
    let unknown = uuid::Uuid::new_v4().to_string();
    let params = json!({"session_id": unknown, "external_id": "c1", "task_id": "t", "writes": []});
    assert_eq!(err(&mut c, "put_writes", params).await.1, "not_found");
    assert_eq!(stored(&mut c).await, before);
    assert_eq!(writes_of(&mut c, &sid, "", "c1").await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_with_their_checkpoint() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
    let mut last = None;
    for i in 0..3 {
        let ext = format!("c{i}");
        put(&mut c, &sid, "", &ext, last.as_deref(), json!({"run_id": format!("run-{}", i % 2)})).await;
        put_writes(&mut c, &sid, &ext, "t", "", json!([{"idx": 0, "channel": "ch", "value": i}])).await;
        last = Some(ext);
    }
    put(&mut c, &sid, "child:1", "k0", None, json!({"run_id": "run-0"})).await;
    put(&mut c, &sid, "child:1", "k1", Some("k0"), json!({"run_id": "run-1"})).await;
    put_writes(&mut c, &sid, "never-stored", "t", "", json!([{"idx": 0, "channel": "ch", "value": 0}])).await;

    // Copy: every namespace, checkpoint and write; the source unchanged.
    let copy = ok(&mut c, "copy_session", json!({"session_id": sid, "key": "fork"})).await;
    assert_eq!(copy["copied"], json!(5));
    assert_eq!(copy["session"]["key"], json!("fork"));
    let fork = s(&copy["session"]["id"]).to_string();
    let src = ok(&mut c, "list_checkpoints", json!({"session_id": sid, "order": "desc", "full": true})).await;
    let dst = ok(&mut c, "list_checkpoints", json!({"session_id": fork, "order": "desc", "full": true})).await;
    assert_eq!(ext_ids(&src), ext_ids(&dst));
    for (a, b) in src.as_array().unwrap().iter().zip(dst.as_array().unwrap()) {
        for field in ["state", "metadata", "writes", "namespace", "parent_external_id", "timestamp", "message"] {
            assert_eq!(a.get(field), b.get(field), "{field}");
        }
        assert_ne!(a["id"], b["id"]);
    }
    let c1 = ok(&mut c, "get_checkpoint", json!({"session_id": fork, "external_id": "c1"})).await;
    let c0 = ok(&mut c, "get_checkpoint", json!({"session_id": fork, "external_id": "c0"})).await;
    assert_eq!(c1["parent_id"], c0["id"], "parents point at the copies");
    // A second copy into the same key adds nothing.
    let again = ok(&mut c, "copy_session", json!({"session_id": sid, "key": "fork"})).await;
    assert_eq!((&again["copied"], &again["session"]["checkpoint_count"]), (&json!(0), &json!(5)));
    assert_eq!(
        err(&mut c, "copy_session", json!({"session_id": sid, "key": "fork", "name": ""})).await.1,
        "invalid_params"
    );
    let missing = uuid::Uuid::new_v4().to_string();
    assert_eq!(err(&mut c, "copy_session", json!({"session_id": missing, "key": "x"})).await.1, "not_found");
    assert_eq!(err(&mut c, "get_session", json!({"key": "x"})).await.1, "not_found");

    // Per-namespace compaction keeps each namespace's newest, with writes.
    let compacted = ok(&mut c, "compact", json!({"session_id": sid, "keep_recent": 1, "per_namespace": true})).await;
    assert_eq!(compacted, json!({"removed": 3, "remaining": 2}));
    let left = ok(&mut c, "list_checkpoints", json!({"session_id": sid})).await;
    assert_eq!(ext_ids(&left), ["c2", "k1"]);
    assert_eq!(writes_of(&mut c, &sid, "", "c2").await.len(), 1);
    let session = ok(&mut c, "get_session", json!({"session_id": sid})).await;
    assert_eq!(session["checkpoint_count"], json!(2));

    // Deletion by metadata, across sessions, with the writes.
    let deleted = ok(&mut c, "delete_checkpoints", json!({"metadata": {"run_id": "run-0"}})).await;
    assert_eq!(deleted, json!({"deleted": 4, "more": false}), "c2 of the source; c0, c2 and k0 of the fork");
    let fork_left = ok(&mut c, "list_checkpoints", json!({"session_id": fork})).await;
    assert_eq!(ext_ids(&fork_left), ["c1", "k1"]);
    let source_left = ok(&mut c, "list_checkpoints", json!({"session_id": sid})).await;
    assert_eq!(ext_ids(&source_left), ["k1"]);
    let session = ok(&mut c, "get_session", json!({"session_id": sid})).await;
    assert_eq!((&session["checkpoint_count"], &session["last_sequence"]), (&json!(1), &left[1]["sequence_number"]));
    let deleted =
        ok(&mut c, "delete_checkpoints", json!({"metadata": {"run_id": "run-1"}, "session_id": fork, "namespace": ""}))
            .await;
    assert_eq!(deleted["deleted"], json!(1));
    let (_, code) = err(&mut c, "get_checkpoint", json!({"session_id": fork, "external_id": "c1"})).await;
    assert_eq!(code, "not_found");
    // The write of a deleted checkpoint is gone: a new one with its id starts empty.
    put(&mut c, &fork, "", "c1", None, json!({})).await;
    assert!(writes_of(&mut c, &fork, "", "c1").await.is_empty());
    assert_eq!(err(&mut c, "delete_checkpoints", json!({"metadata": {}})).await.1, "invalid_params");
    let fork_session = ok(&mut c, "get_session", json!({"session_id": fork})).await;
    assert_eq!(fork_session["checkpoint_count"], json!(2));

    // Deleting a session removes its writes, those never claimed too.
    ok(&mut c, "delete_session", json!({"session_id": sid})).await;
    let again = ok(&mut c, "open_session", json!({"key": "fresh"})).await;
    let fresh = s(&again["session"]["id"]).to_string();
    put(&mut c, &fresh, "", "never-stored", None, json!({})).await;
    assert!(writes_of(&mut c, &fresh, "", "never-stored").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_copies_are_journaled() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
    ok(&mut c, "subscribe", json!({"session_id": sid})).await;
    put_writes(&mut c, &sid, "c1", "t1", "", json!([{"idx": 0, "channel": "a", "value": 1}])).await;
    let e = next_event(&mut c).await;
    assert_eq!(e["event_type"], json!("writes_stored"));
    assert_eq!(
        (&e["data"]["external_id"], &e["data"]["task_id"], &e["data"]["stored"], &e["data"]["namespace"]),
        (&json!("c1"), &json!("t1"), &json!(1), &json!(""))
    );
    // Nothing stored, nothing journaled.
    put_writes(&mut c, &sid, "c1", "t1", "", json!([{"idx": 0, "channel": "a", "value": 2}])).await;
    no_event(&mut c).await;

    let target = ok(&mut c, "open_session", json!({"key": "target"})).await;
    let tid = s(&target["session"]["id"]).to_string();
    ok(&mut c, "subscribe", json!({"session_id": tid})).await;
    put(&mut c, &sid, "", "c1", None, json!({})).await;
    assert_eq!(next_event(&mut c).await["event_type"], json!("checkpoint_created"));
    ok(&mut c, "copy_session", json!({"session_id": sid, "key": "target"})).await;
    let e = next_event(&mut c).await;
    assert_eq!(e["event_type"], json!("session_copied"));
    assert_eq!((&e["data"]["session_id"], &e["data"]["source_session_id"]), (&json!(tid), &json!(sid)));
    assert_eq!(e["data"]["copied"], json!(1));
    no_event(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_sigkill() {
    let dir = common::fs::tempdir();
    let mut daemon = Daemon::serve(dir.path(), &[]);
    let mut c = daemon.connect().await;
    let opened = ok(&mut c, "open_session", json!({"key": "thread"})).await;
    let sid = s(&opened["session"]["id"]).to_string();
    put(&mut c, &sid, "", "c1", None, json!({})).await;
    put_writes(&mut c, &sid, "c1", "t", "", json!([{"idx": -3, "channel": "__interrupt__", "value": {"q": 1}}])).await;
    daemon.signal("KILL");
    let daemon = daemon.respawn();
    let mut c = daemon.connect().await;
    let found = ok(&mut c, "get_session", json!({"key": "thread"})).await;
    assert_eq!(found["id"], json!(sid));
    let w = writes_of(&mut c, &sid, "", "c1").await;
    assert_eq!(w.len(), 1);
    assert_eq!((&w[0]["idx"], &w[0]["value"]), (&json!(-3), &json!({"q": 1})));
}
