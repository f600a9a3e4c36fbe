//! Identities the client brings (format 2): a session found by its client
//! key, checkpoints named by external ids within namespaces, and lists that
//! filter on namespace and metadata, page by external id, return full
//! records, and search across sessions. Over a real WebSocket.

mod common;

use common::inproc::TestServer;
use common::wire::*;
use serde_json::{Value, json};

fn ids(rows: &Value) -> Vec<&str> {
    rows.as_array().unwrap().iter().map(|r| s(&r["external_id"])).collect()
}

/// Puts a checkpoint with an external id (and optional parent) and metadata.
async fn put(c: &mut checkpointd::client::Client, sid: &str, ns: &str, ext: &str, parent: Option<&str>, md: Value) {
    let mut params =
        json!({"session_id": sid, "namespace": ns, "external_id": ext, "state": {"at": ext}, "metadata": md});
    if let Some(parent) = parent {
        params["parent_external_id"] = json!(parent);
    }
    ok(c, "checkpoint", params).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_session_creates_once_and_finds_by_key() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let first = ok(&mut c, "open_session", json!({"key": "thread-1", "name": "bot", "metadata": {"m": 1}})).await;
    assert_eq!(first["created"], json!(true));
    assert_eq!(first["session"]["key"], json!("thread-1"));
    assert_eq!(first["session"]["metadata"], json!({"m": 1}));
    let again = ok(&mut c, "open_session", json!({"key": "thread-1", "name": "other"})).await;
    assert_eq!(again["created"], json!(false));
    assert_eq!(again["session"]["id"], first["session"]["id"]);
    assert_eq!(again["session"]["name"], json!("bot"));
    let found = ok(&mut c, "get_session", json!({"key": "thread-1"})).await;
    assert_eq!(found["id"], first["session"]["id"]);
    assert_eq!(err(&mut c, "get_session", json!({"key": "thread-2"})).await.1, "not_found");
    assert_eq!(err(&mut c, "open_session", json!({"key": ""})).await.1, "invalid_params");
    assert_eq!(err(&mut c, "open_session", json!({"key": "k".repeat(1025)})).await.1, "too_large");

    // Racing clients get one session per key.
    let mut racers = Vec::new();
    for _ in 0..8 {
        let url = server.url.clone();
        racers.push(tokio::spawn(async move {
            let mut c = checkpointd::client::Client::connect(&url).await.unwrap();
            let r = bounded("open", c.call("open_session", json!({"key": "raced"}))).await.unwrap();
            (r["created"].as_bool().unwrap(), r["session"]["id"].as_str().unwrap().to_string())
        }));
    }
    let mut results = Vec::new();
    for r in racers {
        results.push(bounded("racer", r).await.unwrap());
    }
    assert_eq!(results.iter().filter(|(created, _)| *created).count(), 1);
    assert!(results.iter().all(|(_, id)| *id == results[0].1));

    for key in ["a/1", "a/2", "b/1"] {
        ok(&mut c, "open_session", json!({"key": key})).await;
    }
    let listed = ok(&mut c, "list_sessions", json!({"key_prefix": "a/"})).await;
    let keys: Vec<&str> = listed.as_array().unwrap().iter().map(|r| s(&r["key"])).collect();
    assert_eq!(keys, ["a/1", "a/2"]);

    // A deleted session frees its key.
    let sid = s(&first["session"]["id"]).to_string();
    ok(&mut c, "delete_session", json!({"session_id": sid})).await;
    let reopened = ok(&mut c, "open_session", json!({"key": "thread-1"})).await;
    assert_eq!(reopened["created"], json!(true));
    assert_ne!(reopened["session"]["id"], first["session"]["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_ids_are_unique_per_namespace_and_idempotent() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
    let put_once = json!({"session_id": sid, "external_id": "c1", "state": {"v": 1}});
    let first = ok(&mut c, "checkpoint", put_once.clone()).await;
    let before = stored(&mut c).await;
    // A retried put stores nothing and answers the same id.
    let retried = ok(&mut c, "checkpoint", json!({"session_id": sid, "external_id": "c1", "state": {"v": 2}})).await;
    assert_eq!(retried, first);
    assert_eq!(stored(&mut c).await, before);
    // The same external id in another namespace is another checkpoint.
    let sub = ok(&mut c, "checkpoint", json!({"session_id": sid, "namespace": "child:1", "external_id": "c1"})).await;
    assert_ne!(sub, first);

    let got = ok(&mut c, "get_checkpoint", json!({"session_id": sid, "external_id": "c1"})).await;
    assert_eq!((&got["id"], &got["state"]), (&first, &json!({"v": 1})));
    let got =
        ok(&mut c, "get_checkpoint", json!({"session_id": sid, "namespace": "child:1", "external_id": "c1"})).await;
    assert_eq!((&got["id"], &got["namespace"]), (&sub, &json!("child:1")));
    let (msg, code) = err(&mut c, "get_checkpoint", json!({"session_id": sid, "external_id": "nope"})).await;
    assert_eq!(code, "not_found", "{msg}");

    // Parents by external id; the record names both ids.
    put(&mut c, &sid, "", "c2", Some("c1"), json!({})).await;
    let c2 = ok(&mut c, "get_checkpoint", json!({"session_id": sid, "external_id": "c2"})).await;
    assert_eq!((&c2["parent_id"], &c2["parent_external_id"]), (&first, &json!("c1")));
    let (_, code) =
        err(&mut c, "checkpoint", json!({"session_id": sid, "external_id": "c3", "parent_external_id": "zz"})).await;
    assert_eq!(code, "not_found");
    // The newest of a namespace, without an external id.
    let latest = ok(&mut c, "get_checkpoint", json!({"session_id": sid})).await;
    assert_eq!(latest["external_id"], json!("c2"));
    let latest = ok(&mut c, "get_checkpoint", json!({"session_id": sid, "namespace": "child:1"})).await;
    assert_eq!(latest["id"], sub);
    let (_, code) = err(&mut c, "get_checkpoint", json!({"session_id": sid, "namespace": "empty"})).await;
    assert_eq!(code, "not_found");

    // A seed client sees the seed's fields only.
    let plain = checkpoint(&mut c, &sid, "plain").await;
    let row = ok(&mut c, "get_checkpoint", json!({"checkpoint_id": plain})).await;
    for field in ["namespace", "external_id", "parent_external_id", "writes"] {
        assert!(row.get(field).is_none(), "{field} in {row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_by_namespace_and_metadata_and_page_by_external_id() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
    let mut parent: Option<String> = None;
    for i in 0..4 {
        let ext = format!("r{i}");
        let source = if i % 2 == 0 { "input" } else { "loop" };
        put(&mut c, &sid, "", &ext, parent.as_deref(), json!({"source": source, "step": i, "nested": {"a": [i]}}))
            .await;
        parent = Some(ext);
    }
    put(&mut c, &sid, "child:1", "k0", None, json!({"source": "input", "step": 0})).await;

    let list = |params: Value| {
        let mut p = json!({"session_id": sid, "order": "desc"});
        p.as_object_mut().unwrap().extend(params.as_object().unwrap().clone());
        p
    };
    let all = ok(&mut c, "list_checkpoints", list(json!({}))).await;
    assert_eq!(ids(&all), ["k0", "r3", "r2", "r1", "r0"]);
    let root = ok(&mut c, "list_checkpoints", list(json!({"namespace": ""}))).await;
    assert_eq!(ids(&root), ["r3", "r2", "r1", "r0"]);
    let inputs = ok(&mut c, "list_checkpoints", list(json!({"namespace": "", "metadata": {"source": "input"}}))).await;
    assert_eq!(ids(&inputs), ["r2", "r0"]);
    let both = ok(&mut c, "list_checkpoints", list(json!({"metadata": {"source": "input", "step": 0}}))).await;
    assert_eq!(ids(&both), ["k0", "r0"]);
    let nested = ok(&mut c, "list_checkpoints", list(json!({"metadata": {"nested": {"a": [1]}}}))).await;
    assert_eq!(ids(&nested), ["r1"]);
    let none = ok(&mut c, "list_checkpoints", list(json!({"metadata": {"source": "update", "step": 99}}))).await;
    assert_eq!(ids(&none), Vec::<&str>::new());
    let limited =
        ok(&mut c, "list_checkpoints", list(json!({"namespace": "", "metadata": {"source": "loop"}, "limit": 1})))
            .await;
    assert_eq!(ids(&limited), ["r3"]);

    // External ids as bounds, resolved in the namespace.
    let before = ok(&mut c, "list_checkpoints", list(json!({"namespace": "", "before": "r2"}))).await;
    assert_eq!(ids(&before), ["r1", "r0"]);
    let page = ok(&mut c, "list_checkpoints", list(json!({"namespace": "", "before": "r3", "limit": 1}))).await;
    assert_eq!(ids(&page), ["r2"]);
    let after = ok(&mut c, "list_checkpoints", json!({"session_id": sid, "namespace": "", "after": "r1"})).await;
    assert_eq!(ids(&after), ["r2", "r3"]);
    let (_, code) = err(&mut c, "list_checkpoints", list(json!({"before": "unknown"}))).await;
    assert_eq!(code, "not_found");
    let (_, code) = err(&mut c, "list_checkpoints", list(json!({"metadata": "source=input"}))).await;
    assert_eq!(code, "invalid_params");

    // Full records: state, metadata and writes in one page.
    ok(&mut c, "put_writes", json!({"session_id": sid, "external_id": "r3", "task_id": "t", "writes": [{"idx": 0, "channel": "ch", "value": "v"}]})).await;
    let full = ok(&mut c, "list_checkpoints", list(json!({"namespace": "", "full": true, "limit": 2}))).await;
    let rows = full.as_array().unwrap();
    assert_eq!(ids(&full), ["r3", "r2"]);
    assert_eq!(rows[0]["state"], json!({"at": "r3"}));
    assert_eq!(rows[0]["metadata"]["step"], json!(3));
    assert_eq!(rows[0]["writes"][0]["value"], json!("v"));
    assert_eq!(rows[1]["parent_external_id"], json!("r1"));
    assert!(rows[1].get("writes").is_none());

    // The same search across sessions, newest first, paged by sequence.
    let other = session(&mut c, "other").await;
    put(&mut c, &other, "", "x0", None, json!({"run_id": "run-a"})).await;
    put(&mut c, &sid, "", "r4", Some("r3"), json!({"run_id": "run-a"})).await;
    put(&mut c, &other, "", "x1", Some("x0"), json!({"run_id": "run-b"})).await;
    let found = ok(&mut c, "search_checkpoints", json!({"metadata": {"run_id": "run-a"}})).await;
    assert_eq!(ids(&found), ["r4", "x0"]);
    let next = ok(&mut c, "search_checkpoints", json!({"metadata": {"run_id": "run-a"}, "limit": 1})).await;
    assert_eq!(ids(&next), ["r4"]);
    let seq = u(&next[0]["sequence_number"]);
    let rest =
        ok(&mut c, "search_checkpoints", json!({"metadata": {"run_id": "run-a"}, "before": seq, "full": true})).await;
    assert_eq!(ids(&rest), ["x0"]);
    assert_eq!(rest[0]["state"], json!({"at": "x0"}));
    let children = ok(&mut c, "search_checkpoints", json!({"namespace": "child:1"})).await;
    assert_eq!(ids(&children), ["k0"]);
}
