//! The WebSocket server in-process on a loopback port: every seed method and
//! error string, the extensions, auth, capacity, events and the bad-input
//! catalogue, all over real TCP with the typed client.

use checkpointd::client::{Client, ClientError};
use checkpointd::config::{Durability, StoreConfig};
use checkpointd::server::{self, ServerConfig};
use checkpointd::service::Service;
use futures_util::SinkExt;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

/// Upper bound for any single step; tests finish far sooner.
const STEP: Duration = Duration::from_secs(10);
/// How long to wait for something that must not arrive.
const QUIET: Duration = Duration::from_millis(300);

struct TestServer {
    url: String,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<checkpointd::Result<()>>>,
    _dir: TempDir,
}

impl TestServer {
    async fn start() -> TestServer {
        Self::with(ServerConfig::default(), |_| {}).await
    }

    async fn with(config: ServerConfig, store: impl FnOnce(&mut StoreConfig)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut store_config = StoreConfig::new(dir.path().join("data"));
        store(&mut store_config);
        let service = Service::open(store_config).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::run(listener, service, config, async move {
            let _ = rx.await;
        }));
        TestServer { url: format!("ws://{addr}"), addr, shutdown: Some(tx), handle: Some(handle), _dir: dir }
    }

    async fn connect(&self) -> Client {
        timeout(STEP, Client::connect(&self.url)).await.expect("connect timed out").expect("connect")
    }

    /// Triggers shutdown and waits (bounded) for `run` to return.
    async fn stop(&mut self) -> Result<checkpointd::Result<()>, tokio::time::error::Elapsed> {
        let _ = self.shutdown.take().expect("stopped twice").send(());
        let handle = self.handle.take().unwrap();
        timeout(STEP, async { handle.await.expect("server task panicked") }).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(STEP, fut).await.unwrap_or_else(|_| panic!("{what}: timed out"))
}

async fn call(c: &mut Client, method: &str, params: Value) -> Result<Value, ClientError> {
    bounded(method, c.call(method, params)).await
}

async fn ok(c: &mut Client, method: &str, params: Value) -> Value {
    call(c, method, params).await.unwrap_or_else(|e| panic!("{method}: {e}"))
}

/// Calls `method`, expecting an error reply; returns (error, code).
async fn err(c: &mut Client, method: &str, params: Value) -> (String, String) {
    match call(c, method, params.clone()).await {
        Err(ClientError::Remote { message, code }) => (message, code),
        other => panic!("{method} {params}: expected an error reply, got {other:?}"),
    }
}

/// Sends raw text and returns the reply (events are buffered by the client).
async fn raw(c: &mut Client, text: &str) -> Value {
    bounded("send", c.send_text(text)).await.unwrap();
    bounded("reply", c.next_reply()).await.expect("reply")
}

async fn session(c: &mut Client, name: &str) -> String {
    bounded("create_session", c.create_session(name)).await.unwrap()
}

async fn checkpoint(c: &mut Client, sid: &str, message: &str) -> String {
    bounded("checkpoint", c.checkpoint(sid, message, json!({"m": message}), json!({}))).await.unwrap()
}

async fn next_event(c: &mut Client) -> Value {
    bounded("event", c.next_event(STEP)).await.unwrap().expect("no event arrived")
}

async fn no_event(c: &mut Client) {
    if let Some(e) = c.next_event(QUIET).await.unwrap() {
        panic!("unexpected event {e}");
    }
}

/// Reads frames until the server's Close frame; returns its code.
async fn expect_close(c: &mut Client) -> u16 {
    let deadline = Instant::now() + STEP;
    for _ in 0..10_000 {
        match tokio::time::timeout_at(deadline, c.next_message()).await.expect("no Close frame") {
            Ok(Message::Close(Some(frame))) => return frame.code.into(),
            Ok(Message::Close(None)) => panic!("Close frame without a code"),
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a Close frame: {e}"),
        }
    }
    panic!("too many frames before Close");
}

/// The stored-state fields of `metrics`.
async fn stored(c: &mut Client) -> Value {
    let m = ok(c, "metrics", json!({})).await;
    json!({
        "total_checkpoints": m["total_checkpoints"],
        "active_sessions": m["active_sessions"],
        "total_sessions_created": m["total_sessions_created"],
        "global_sequence": m["global_sequence"],
        "event_sequence": m["event_sequence"],
    })
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

fn is_uuid(v: &Value) -> bool {
    v.as_str().is_some_and(|t| uuid::Uuid::parse_str(t).is_ok())
}

fn is_timestamp(v: &Value) -> bool {
    v.as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
}

// ---------------------------------------------------------------- seed methods

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
async fn missing_sessions_and_checkpoints_are_not_found() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let ghost = uuid::Uuid::new_v4().to_string();
    let a = session(&mut c, "a").await;
    let b = session(&mut c, "b").await;
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

// ---------------------------------------------------------------- extensions

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
async fn compact_and_retention() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let mut watcher = server.connect().await;
    let sid = session(&mut c, "s").await;
    ok(&mut watcher, "subscribe", json!({"session_id": sid})).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let tags = if i == 1 { json!(["milestone"]) } else { json!([]) };
        ids.push(
            bounded("checkpoint", c.checkpoint(&sid, &format!("c{i}"), json!(i), json!({"tags": tags}))).await.unwrap(),
        );
    }
    for _ in 0..6 {
        assert_eq!(next_event(&mut watcher).await["event_type"], "checkpoint_created");
    }

    for bad in [json!({"session_id": sid}), json!({"session_id": sid, "keep_recent": null, "preserve_tags": null})] {
        assert_eq!(err(&mut c, "compact", bad).await.1, "invalid_params");
    }
    for bad in [
        json!({"session_id": sid, "keep_recent": "2"}),
        json!({"session_id": sid, "keep_recent": -1}),
        json!({"session_id": sid, "keep_recent": 1.5}),
        json!({"session_id": sid, "preserve_tags": "milestone"}),
        json!({"session_id": sid, "preserve_tags": [1]}),
    ] {
        assert_eq!(err(&mut c, "compact", bad.clone()).await.1, "invalid_params", "{bad}");
        assert_eq!(err(&mut c, "set_retention", bad.clone()).await.1, "invalid_params", "{bad}");
    }

    let result =
        ok(&mut c, "compact", json!({"session_id": sid, "keep_recent": 2, "preserve_tags": ["milestone"]})).await;
    assert_eq!(result, json!({"removed": 3, "remaining": 3}));
    let ev = next_event(&mut watcher).await;
    assert_eq!(ev["event_type"], "checkpoints_compacted");
    assert_eq!(ev["data"]["session_id"], sid.as_str());
    assert_eq!(ev["data"]["removed"], 3);
    assert_eq!(ev["data"]["remaining"], 3);
    assert!(is_timestamp(&ev["data"]["timestamp"]));
    let left: Vec<Value> = bounded("list", c.list_checkpoints(&sid, json!({}))).await.unwrap();
    let left: Vec<&str> = left.iter().map(|x| s(&x["id"])).collect();
    assert_eq!(left, vec![ids[1].as_str(), ids[4].as_str(), ids[5].as_str()]);

    // keep_recent 0 keeps only the preserved ones.
    let result =
        ok(&mut c, "compact", json!({"session_id": sid, "keep_recent": 0, "preserve_tags": ["milestone"]})).await;
    assert_eq!(result, json!({"removed": 2, "remaining": 1}));
    let ev = next_event(&mut watcher).await;
    assert_eq!((ev["data"]["removed"].clone(), ev["data"]["remaining"].clone()), (json!(2), json!(1)));

    // set_retention returns the policy; get_session shows it; null clears it.
    let policy = ok(&mut c, "set_retention", json!({"session_id": sid, "keep_recent": 2})).await;
    assert_eq!(policy, json!({"keep_recent": 2, "preserve_tags": []}));
    assert_eq!(ok(&mut c, "get_session", json!({"session_id": sid})).await["retention"], policy);
    for i in 0..3 {
        checkpoint(&mut c, &sid, &format!("r{i}")).await;
    }
    let count = ok(&mut c, "get_session", json!({"session_id": sid})).await["checkpoint_count"].clone();
    assert_eq!(count, 2, "retention keeps the 2 most recent");
    let mut compactions = 0;
    for _ in 0..16 {
        let Some(ev) = bounded("event", watcher.next_event(QUIET)).await.unwrap() else { break };
        if ev["event_type"] == "checkpoints_compacted" {
            compactions += 1;
            assert_eq!(ev["data"]["remaining"], 2, "{ev}");
        }
    }
    assert!(compactions >= 1, "retention emitted no checkpoints_compacted");
    assert_eq!(
        ok(&mut c, "set_retention", json!({"session_id": sid, "keep_recent": null, "preserve_tags": null})).await,
        Value::Null
    );
    assert_eq!(ok(&mut c, "set_retention", json!({"session_id": sid})).await, Value::Null);
    assert_eq!(ok(&mut c, "get_session", json!({"session_id": sid})).await["retention"], Value::Null);
    let tags_only = ok(&mut c, "set_retention", json!({"session_id": sid, "preserve_tags": ["keep"]})).await;
    assert_eq!(tags_only, json!({"keep_recent": null, "preserve_tags": ["keep"]}));
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
async fn list_checkpoints_bounds_are_exclusive() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
    let noise = session(&mut c, "noise").await;
    let mut seqs = Vec::new();
    for i in 0..8 {
        let tags = if i % 2 == 0 { json!(["even"]) } else { json!([]) };
        let id =
            bounded("checkpoint", c.checkpoint(&sid, &format!("c{i}"), json!(i), json!({"tags": tags}))).await.unwrap();
        seqs.push(u(&ok(&mut c, "get_checkpoint", json!({"checkpoint_id": id})).await["sequence_number"]));
        checkpoint(&mut c, &noise, "noise").await;
    }
    async fn seqs_of(c: &mut Client, sid: &str, extra: Value) -> Vec<u64> {
        let list = bounded("list", c.list_checkpoints(sid, extra)).await.unwrap();
        list.iter().map(|x| u(&x["sequence_number"])).collect()
    }
    assert_eq!(seqs_of(&mut c, &sid, json!({})).await, seqs);
    assert_eq!(seqs_of(&mut c, &sid, json!({"after": seqs[2]})).await, seqs[3..]);
    assert_eq!(seqs_of(&mut c, &sid, json!({"before": seqs[2]})).await, seqs[..2]);
    assert_eq!(seqs_of(&mut c, &sid, json!({"after": seqs[1], "before": seqs[5]})).await, seqs[2..5]);
    assert_eq!(seqs_of(&mut c, &sid, json!({"after": seqs[1], "limit": 2})).await, seqs[2..4]);
    assert_eq!(seqs_of(&mut c, &sid, json!({"after": seqs[7]})).await, Vec::<u64>::new());
    assert_eq!(seqs_of(&mut c, &sid, json!({"after": 0})).await, seqs);
    let mut rev = seqs.clone();
    rev.reverse();
    assert_eq!(seqs_of(&mut c, &sid, json!({"order": "desc"})).await, rev);
    assert_eq!(seqs_of(&mut c, &sid, json!({"order": "desc", "limit": 3})).await, rev[..3]);
    assert_eq!(
        seqs_of(&mut c, &sid, json!({"order": "desc", "before": seqs[6], "limit": 2})).await,
        vec![seqs[5], seqs[4]]
    );
    assert_eq!(seqs_of(&mut c, &sid, json!({"order": "asc"})).await, seqs);
    assert_eq!(seqs_of(&mut c, &sid, json!({"tag": "even"})).await, vec![seqs[0], seqs[2], seqs[4], seqs[6]]);
    assert_eq!(seqs_of(&mut c, &sid, json!({"tag": "even", "after": seqs[2]})).await, vec![seqs[4], seqs[6]]);
    assert_eq!(seqs_of(&mut c, &sid, json!({"tag": "none"})).await, Vec::<u64>::new());

    // Paging with `after` walks everything exactly once.
    let mut paged = Vec::new();
    let mut after = 0;
    for _ in 0..10 {
        let page = seqs_of(&mut c, &sid, json!({"after": after, "limit": 3})).await;
        let Some(&last) = page.last() else { break };
        after = last;
        paged.extend(page);
    }
    assert_eq!(paged, seqs);

    for bad in [
        json!({"limit": "ten"}),
        json!({"limit": -1}),
        json!({"after": "3"}),
        json!({"before": 1.5}),
        json!({"tag": 7}),
        json!({"order": "sideways"}),
        json!({"order": 1}),
    ] {
        let mut params = bad.clone();
        params["session_id"] = json!(sid);
        assert_eq!(err(&mut c, "list_checkpoints", params).await.1, "invalid_params", "{bad}");
    }
}

// ---------------------------------------------------------------- events

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_fan_out_to_subscribers_of_that_session_only() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let a = session(&mut c, "a").await;
    let b = session(&mut c, "b").await;
    let mut subs_a = Vec::new();
    for _ in 0..3 {
        let mut s = server.connect().await;
        ok(&mut s, "subscribe", json!({"session_id": a})).await;
        subs_a.push(s);
    }
    let mut sub_b = server.connect().await;
    ok(&mut sub_b, "subscribe", json!({"session_id": b})).await;
    // The writer itself subscribes too: events arrive between its replies.
    ok(&mut c, "subscribe", json!({"session_id": a})).await;

    let mut ids_a = Vec::new();
    for i in 0..5 {
        ids_a.push(checkpoint(&mut c, &a, &format!("a{i}")).await);
    }
    for sub in subs_a.iter_mut().chain([&mut c]) {
        let mut seen = Vec::new();
        let mut last_seq = 0;
        for _ in 0..5 {
            let ev = next_event(sub).await;
            assert_eq!(ev["event_type"], "checkpoint_created");
            assert_eq!(ev["data"]["session_id"], a.as_str());
            assert!(u(&ev["seq"]) > last_seq, "events out of order");
            last_seq = u(&ev["seq"]);
            seen.push(s(&ev["data"]["checkpoint_id"]).to_string());
        }
        assert_eq!(seen, ids_a);
    }
    // Events are dispatched in seq order, so a leaked event of session a would
    // arrive at b's subscriber before b's own.
    let id_b = checkpoint(&mut c, &b, "b0").await;
    let ev = next_event(&mut sub_b).await;
    assert_eq!(ev["data"]["checkpoint_id"], id_b.as_str(), "subscriber of b got {ev}");
    no_event(&mut sub_b).await;
    for sub in &mut subs_a {
        no_event(sub).await;
    }
    // A subscriber that disconnects does not disturb the others.
    drop(subs_a.pop());
    let id = checkpoint(&mut c, &a, "after a disconnect").await;
    for sub in &mut subs_a {
        assert_eq!(next_event(sub).await["data"]["checkpoint_id"], id.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_since_replays_exclusively_and_reply_comes_first() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
    let other = session(&mut c, "other").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(checkpoint(&mut c, &sid, &format!("c{i}")).await);
        checkpoint(&mut c, &other, "noise").await;
    }
    // Full replay from 0 gives every event of the session, in order.
    let mut w = server.connect().await;
    bounded(
        "send",
        w.send_text(json!({"id": "s1", "method": "subscribe", "params": {"session_id": sid, "since": 0}}).to_string()),
    )
    .await
    .unwrap();
    let first = bounded("frame", w.next_message()).await.unwrap();
    let first: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(first["id"], "s1", "the subscribe reply must precede replayed events: {first}");
    assert_eq!(first["result"], json!({"subscribed": true, "session_id": sid}));
    let mut seqs = Vec::new();
    for id in &ids {
        let ev = next_event(&mut w).await;
        assert_eq!(ev["data"]["checkpoint_id"], id.as_str());
        seqs.push(u(&ev["seq"]));
    }
    no_event(&mut w).await;

    // since N replays the events with seq > N only.
    let mut w2 = server.connect().await;
    ok(&mut w2, "subscribe", json!({"session_id": sid, "since": seqs[2]})).await;
    assert_eq!(u(&next_event(&mut w2).await["seq"]), seqs[3]);
    assert_eq!(u(&next_event(&mut w2).await["seq"]), seqs[4]);
    no_event(&mut w2).await;
    // Then live events follow, once.
    let live = checkpoint(&mut c, &sid, "live").await;
    for sub in [&mut w, &mut w2] {
        assert_eq!(next_event(sub).await["data"]["checkpoint_id"], live.as_str());
        no_event(sub).await;
    }
    // since at the present: nothing to replay.
    let now = u(&ok(&mut c, "metrics", json!({})).await["event_sequence"]);
    let mut w3 = server.connect().await;
    // Beyond the present it names events this server never delivered:
    // skipping ahead would drop the events that take those numbers.
    let (message, code) = err(&mut w3, "subscribe", json!({"session_id": sid, "since": now + 5})).await;
    assert_eq!(code, "conflict", "{message}");
    assert!(message.contains(&now.to_string()), "{message}");
    ok(&mut w3, "subscribe", json!({"session_id": sid, "since": now})).await;
    no_event(&mut w3).await;
    for bad in [json!("3"), json!(-1), json!(1.5), json!([])] {
        assert_eq!(err(&mut w3, "subscribe", json!({"session_id": sid, "since": bad})).await.1, "invalid_params");
    }
    // Subscribing again replaces the earlier subscription: no duplicates.
    ok(&mut w3, "subscribe", json!({"session_id": sid})).await;
    let again = checkpoint(&mut c, &sid, "again").await;
    assert_eq!(next_event(&mut w3).await["data"]["checkpoint_id"], again.as_str());
    no_event(&mut w3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_reconnect_misses_nothing() {
    let server = TestServer::with(ServerConfig::default(), |s| s.durability = Durability::Async).await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
    const TOTAL: usize = 300;

    let url = server.url.clone();
    let sid2 = sid.clone();
    let writer = tokio::spawn(async move {
        let mut w = Client::connect(&url).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..TOTAL {
            ids.push(w.checkpoint(&sid2, &format!("c{i}"), json!(i), json!({})).await.unwrap());
        }
        ids
    });

    let mut seen: Vec<(u64, String)> = Vec::new();
    let mut last: Option<u64> = Some(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 0..100 {
        assert!(Instant::now() < deadline, "resume did not finish in time");
        let mut sub = server.connect().await;
        ok(&mut sub, "subscribe", json!({"session_id": sid, "since": last})).await;
        // Read a few events, then drop the connection mid-stream.
        for _ in 0..(17 + round % 13) {
            if seen.len() == TOTAL {
                break;
            }
            let ev = next_event(&mut sub).await;
            let seq = u(&ev["seq"]);
            seen.push((seq, s(&ev["data"]["checkpoint_id"]).to_string()));
            last = Some(seq);
        }
        drop(sub);
        if seen.len() == TOTAL {
            break;
        }
    }
    let ids = bounded("writer", writer).await.unwrap();
    assert_eq!(seen.len(), TOTAL);
    assert_eq!(seen.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>(), ids, "gap, duplicate or reordering");
    for pair in seen.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "event seqs are consecutive");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_older_than_the_journal_is_compacted() {
    let server = TestServer::with(ServerConfig::default(), |s| s.event_retention = 5).await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
    for i in 0..12 {
        checkpoint(&mut c, &sid, &format!("c{i}")).await;
    }
    let m = ok(&mut c, "metrics", json!({})).await;
    let oldest = u(&m["oldest_event"]);
    let newest = u(&m["event_sequence"]);
    assert!(oldest > 1 && newest - oldest < 12, "journal was not trimmed: {m}");

    let (message, code) = err(&mut c, "subscribe", json!({"session_id": sid, "since": 0})).await;
    assert_eq!(code, "compacted");
    assert!(message.contains(&oldest.to_string()), "{message} does not name the oldest seq {oldest}");
    assert_eq!(err(&mut c, "subscribe", json!({"session_id": sid, "since": oldest - 2})).await.1, "compacted");
    // The oldest retained event is still replayable.
    ok(&mut c, "subscribe", json!({"session_id": sid, "since": oldest - 1})).await;
    let mut got = Vec::new();
    for _ in oldest..=newest {
        got.push(u(&next_event(&mut c).await["seq"]));
    }
    assert_eq!(got, (oldest..=newest).collect::<Vec<_>>());
    no_event(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_lags_and_resumes() {
    let server = TestServer::with(ServerConfig::default(), |s| s.durability = Durability::Async).await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
    let mut slow = server.connect().await;
    ok(&mut slow, "subscribe", json!({"session_id": sid})).await;

    // Write until the hub has dropped the slow subscription (it never reads).
    const BATCH: usize = 500;
    let mut written = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..200 {
        assert!(Instant::now() < deadline, "the slow subscriber never lagged");
        for i in 0..BATCH {
            let req = json!({"id": format!("w{i}"), "method": "checkpoint", "params": {"session_id": sid, "state": i}});
            bounded("send", c.send_text(req.to_string())).await.unwrap();
        }
        for _ in 0..BATCH {
            let reply = bounded("reply", c.next_reply()).await.unwrap();
            assert_eq!(reply["success"], true, "{reply}");
        }
        written += BATCH;
        if ok(&mut c, "metrics", json!({})).await["subscriptions"] == 0 {
            break;
        }
    }
    let m = ok(&mut c, "metrics", json!({})).await;
    assert_eq!(m["subscriptions"], 0, "the slow subscription never lagged");
    let newest = u(&m["event_sequence"]);

    // The slow client now reads: consecutive events, then the lag notice.
    let mut last = None;
    let lagged_at = loop {
        let ev = next_event(&mut slow).await;
        if ev["event_type"] == "subscription_lagged" {
            assert_eq!(ev["data"]["session_id"], sid.as_str());
            break u(&ev["data"]["last_seq"]);
        }
        assert_eq!(ev["event_type"], "checkpoint_created");
        let seq = u(&ev["seq"]);
        if let Some(prev) = last {
            assert_eq!(seq, prev + 1, "gap before the lag notice");
        }
        last = Some(seq);
        assert!(seq <= newest);
    };
    assert_eq!(Some(lagged_at), last, "last_seq names the last event delivered");
    // Resubscribing with since: last_seq delivers the rest.
    ok(&mut slow, "subscribe", json!({"session_id": sid, "since": lagged_at})).await;
    for expect in lagged_at + 1..=newest {
        assert_eq!(u(&next_event(&mut slow).await["seq"]), expect);
    }
    no_event(&mut slow).await;
    assert!(written > 1024);
}

// ---------------------------------------------------------------- auth

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

// ---------------------------------------------------------------- capacity

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

// ---------------------------------------------------------------- bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_leaves_connection_and_store_intact() {
    let config = ServerConfig { max_message_bytes: 4 * 1024 * 1024, ..ServerConfig::default() };
    let server = TestServer::with(config, |_| {}).await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
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
        invalid(&raw(&mut c, text).await);
        assert_eq!(stored(&mut c).await, before, "{text:?}");
    }
    // A lone surrogate is valid JSON grammar but no string: a bad param.
    let reply = raw(&mut c, r#"{"id":"sur","method":"checkpoint","params":{"session_id":"\ud800"}}"#).await;
    assert_eq!(reply["code"], "invalid_params", "{reply}");
    let reply = raw(&mut c, r#"{"id":"sur","method":"create_session","params":{"name":"\udc00x"}}"#).await;
    assert_eq!(reply["code"], "invalid_params", "{reply}");
    // params that are not an object.
    for params in ["[]", "5", "\"x\"", "true"] {
        let reply = raw(&mut c, &format!(r#"{{"id":"p","method":"metrics","params":{params}}}"#)).await;
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
    invalid(&raw(&mut c, &deep).await);
    let deep_obj = format!("{}{}", "{\"a\":".repeat(50_000), "1");
    invalid(&raw(&mut c, &deep_obj).await);
    let deep_params = format!(r#"{{"id":"deep","method":"create_session","params":{deep}}}"#);
    let reply = raw(&mut c, &deep_params).await;
    assert_eq!(reply["success"], false, "{}", &reply.to_string()[..200.min(reply.to_string().len())]);
    let deep_state =
        format!(r#"{{"id":"deep","method":"checkpoint","params":{{"session_id":"{sid}","state":{deep}}}}}"#);
    let reply = raw(&mut c, &deep_state).await;
    assert_eq!(reply["success"], false, "{reply}");
    let closed = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_state =
        format!(r#"{{"id":"deep","method":"checkpoint","params":{{"session_id":"{sid}","state":{closed}}}}}"#);
    let reply = raw(&mut c, &deep_state).await;
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

// ---------------------------------------------------------------- shutdown

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
async fn extreme_numbers_are_answered() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = session(&mut c, "s").await;
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
    let reply = raw(&mut c, &format!(r#"{{"id":"n","method":"list_checkpoints","params":{{"session_id":"{sid}","limit":123456789012345678901234567890}}}}"#)).await;
    assert_eq!(reply["code"], "invalid_params", "{reply}");
    // keep_recent 0 on the retention policy keeps nothing unpreserved, but
    // always the checkpoint being added.
    let newest = checkpoint(&mut c, &sid, "two").await;
    let list = bounded("list", c.list_checkpoints(&sid, json!({}))).await.unwrap();
    assert_eq!(list.iter().map(|x| s(&x["id"])).collect::<Vec<_>>(), vec![newest.as_str()]);
    assert_eq!(err(&mut c, "get_checkpoint", json!({"checkpoint_id": cid})).await.1, "not_found");
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
