//! Helpers for tests that speak the protocol over a real WebSocket with the
//! crate's client, to an in-process server or a child process alike: every
//! call and every frame awaited is bounded.

use checkpointd::client::{Client, ClientError};
use serde_json::{Value, json};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

/// Upper bound for one request, reply or frame; tests finish far sooner.
pub const STEP: Duration = Duration::from_secs(10);
/// How long to wait for something that must not arrive.
pub const QUIET: Duration = Duration::from_millis(300);

pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(STEP, fut).await.unwrap_or_else(|_| panic!("{what}: timed out"))
}

pub async fn call(c: &mut Client, method: &str, params: Value) -> Result<Value, ClientError> {
    bounded(method, c.call(method, params)).await
}

pub async fn ok(c: &mut Client, method: &str, params: Value) -> Value {
    call(c, method, params).await.unwrap_or_else(|e| panic!("{method}: {e}"))
}

/// Calls `method`, expecting an error reply; returns (error, code).
pub async fn err(c: &mut Client, method: &str, params: Value) -> (String, String) {
    match call(c, method, params.clone()).await {
        Err(ClientError::Remote { message, code }) => (message, code),
        other => panic!("{method} {params}: expected an error reply, got {other:?}"),
    }
}

/// Sends raw text and returns the reply (events are buffered by the client).
pub async fn raw(c: &mut Client, text: &str) -> Value {
    bounded("send", c.send_text(text)).await.unwrap();
    bounded("reply", c.next_reply()).await.expect("reply")
}

pub async fn session(c: &mut Client, name: &str) -> String {
    bounded("create_session", c.create_session(name)).await.unwrap()
}

pub async fn checkpoint(c: &mut Client, sid: &str, message: &str) -> String {
    bounded("checkpoint", c.checkpoint(sid, message, json!({"m": message}), json!({}))).await.unwrap()
}

pub async fn next_event(c: &mut Client) -> Value {
    bounded("event", c.next_event(STEP)).await.unwrap().expect("no event arrived")
}

pub async fn no_event(c: &mut Client) {
    if let Some(e) = c.next_event(QUIET).await.unwrap() {
        panic!("unexpected event {e}");
    }
}

/// Reads frames until the server's Close frame; returns its code.
pub async fn expect_close(c: &mut Client) -> u16 {
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
pub async fn stored(c: &mut Client) -> Value {
    let m = ok(c, "metrics", json!({})).await;
    json!({
        "total_checkpoints": m["total_checkpoints"],
        "active_sessions": m["active_sessions"],
        "total_sessions_created": m["total_sessions_created"],
        "global_sequence": m["global_sequence"],
        "event_sequence": m["event_sequence"],
    })
}

pub fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

pub fn is_uuid(v: &Value) -> bool {
    v.as_str().is_some_and(|t| uuid::Uuid::parse_str(t).is_ok())
}

pub fn is_timestamp(v: &Value) -> bool {
    v.as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
}

/// Acknowledged (id, n) pairs, their count as it grows, and the writer tasks.
pub type Writers =
    (Arc<Mutex<Vec<(String, u64)>>>, tokio::sync::watch::Receiver<usize>, Vec<tokio::task::JoinHandle<ClientError>>);

/// `n` clients writing checkpoints `{"n": ...}` into `sid` until a call
/// fails; each task returns the error that stopped it.
pub fn spawn_writers(url: &str, sid: &str, n: u64) -> Writers {
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let (count_tx, count_rx) = tokio::sync::watch::channel(0usize);
    let count_tx = Arc::new(count_tx);
    let writers = (0..n)
        .map(|w| {
            let (url, sid, acked, count_tx) =
                (url.to_string(), sid.to_string(), Arc::clone(&acked), Arc::clone(&count_tx));
            tokio::spawn(async move {
                let mut c = match Client::connect(&url).await {
                    Ok(c) => c,
                    Err(e) => return e,
                };
                for i in 0..100_000u64 {
                    let n = w * 1_000_000 + i;
                    match c.checkpoint(&sid, &format!("w{w}-{i}"), json!({"n": n}), json!({})).await {
                        Ok(id) => {
                            let mut a = acked.lock().unwrap();
                            a.push((id, n));
                            count_tx.send_replace(a.len());
                        }
                        Err(e) => return e,
                    }
                }
                panic!("writer {w} was never stopped")
            })
        })
        .collect();
    (acked, count_rx, writers)
}
