//! A small async client for the wire protocol, used by the tests and
//! benchmarks and usable by Rust programs that checkpoint.
//!
//! Requests are answered in order on a connection; events pushed in between
//! are kept (up to [`MAX_BUFFERED_EVENTS`], oldest dropped first) for
//! [`Client::next_event`].

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Events kept while waiting for replies.
pub const MAX_BUFFERED_EVENTS: usize = 100_000;

/// What can go wrong for a client call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error reply.
    #[error("{code}: {message}")]
    Remote { message: String, code: String },
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Connection(String),
    /// The server sent something that is not the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The wire `code` of a remote error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Remote { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: VecDeque<Value>,
}

fn conn(e: impl std::fmt::Display) -> ClientError {
    ClientError::Connection(e.to_string())
}

impl Client {
    /// Connects to `url`, e.g. `ws://127.0.0.1:7700`. Replies of any size
    /// are accepted: a record with its notes, or a page of summaries, can be
    /// far larger than the server's `--max-message-bytes` (which bounds
    /// requests) and than tungstenite's default 16 MiB frame limit.
    pub async fn connect(url: &str) -> ClientResult<Client> {
        Client::connect_with(url, None).await
    }

    /// Connects to `url`, `ws://` or `wss://`; for `wss://`, with `tls`
    /// (e.g. [`crate::server::tls::client_config`] with a CA file), or
    /// without it trusting the system's roots.
    pub async fn connect_with(url: &str, tls: Option<std::sync::Arc<rustls::ClientConfig>>) -> ClientResult<Client> {
        let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        let tls = match (tls, url.starts_with("wss://")) {
            (Some(tls), _) => Some(tls),
            (None, true) => Some(crate::server::tls::client_config(None).map_err(conn)?),
            (None, false) => None,
        };
        let connector = tls.map(tokio_tungstenite::Connector::Rustls);
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, Some(config), true, connector).await.map_err(conn)?;
        Ok(Client { ws, next_id: 0, events: VecDeque::new() })
    }

    /// Sends one raw text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) -> ClientResult<()> {
        self.ws.send(Message::text(text.into())).await.map_err(conn)
    }

    /// Sends any WebSocket message (binary, ping, ...).
    pub async fn send_message(&mut self, msg: Message) -> ClientResult<()> {
        self.ws.send(msg).await.map_err(conn)
    }

    /// The next frame the server sends, as it is (events are not buffered).
    pub async fn next_message(&mut self) -> ClientResult<Message> {
        match self.ws.next().await {
            Some(Ok(msg)) => Ok(msg),
            Some(Err(e)) => Err(conn(e)),
            None => Err(conn("closed")),
        }
    }

    /// The next reply (not event), as JSON; events seen meanwhile are buffered.
    pub async fn next_reply(&mut self) -> ClientResult<Value> {
        loop {
            match self.next_message().await? {
                Message::Text(text) => {
                    let v: Value =
                        serde_json::from_str(text.as_str()).map_err(|e| ClientError::Protocol(e.to_string()))?;
                    if v.get("event_type").is_some() {
                        if self.events.len() >= MAX_BUFFERED_EVENTS {
                            self.events.pop_front();
                        }
                        self.events.push_back(v);
                    } else {
                        return Ok(v);
                    }
                }
                Message::Close(frame) => return Err(conn(format!("closed: {frame:?}"))),
                _ => {}
            }
        }
    }

    /// Calls `method` and returns its `result`, or the error reply.
    pub async fn call(&mut self, method: &str, params: Value) -> ClientResult<Value> {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let text = json!({"id": id, "method": method, "params": params}).to_string();
        self.send_text(text).await?;
        let reply = self.next_reply().await?;
        if reply.get("id").and_then(Value::as_str) != Some(id.as_str()) {
            return Err(ClientError::Protocol(format!("reply out of order: {reply}")));
        }
        if reply.get("success") == Some(&Value::Bool(true)) {
            Ok(reply.get("result").cloned().unwrap_or(Value::Null))
        } else {
            let field = |k: &str| reply.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            Err(ClientError::Remote { message: field("error"), code: field("code") })
        }
    }

    /// The next pushed event, waiting at most `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> ClientResult<Option<Value>> {
        if let Some(v) = self.events.pop_front() {
            return Ok(Some(v));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.next_message()).await {
                Ok(msg) => msg?,
                Err(_) => return Ok(None),
            };
            match msg {
                Message::Text(text) => {
                    let v: Value =
                        serde_json::from_str(text.as_str()).map_err(|e| ClientError::Protocol(e.to_string()))?;
                    if v.get("event_type").is_some() {
                        return Ok(Some(v));
                    }
                    return Err(ClientError::Protocol(format!("unexpected reply: {v}")));
                }
                Message::Close(frame) => return Err(conn(format!("closed: {frame:?}"))),
                _ => {}
            }
        }
    }

    pub async fn authenticate(&mut self, token: &str) -> ClientResult<()> {
        self.call("authenticate", json!({"token": token})).await.map(drop)
    }

    /// Creates a session; returns its id.
    pub async fn create_session(&mut self, name: &str) -> ClientResult<String> {
        id_of(self.call("create_session", json!({"name": name})).await?)
    }

    /// Stores a checkpoint; `extra` may add tags, metadata, parent_id, trigger.
    pub async fn checkpoint(
        &mut self,
        session_id: &str,
        message: &str,
        state: Value,
        extra: Value,
    ) -> ClientResult<String> {
        let mut params = json!({"session_id": session_id, "message": message, "state": state});
        if let (Some(p), Value::Object(extra)) = (params.as_object_mut(), extra) {
            p.extend(extra);
        }
        id_of(self.call("checkpoint", params).await?)
    }

    pub async fn get_checkpoint(&mut self, checkpoint_id: &str) -> ClientResult<Value> {
        self.call("get_checkpoint", json!({"checkpoint_id": checkpoint_id})).await
    }

    /// Lists checkpoints; `extra` may add limit, after, before, tag, order.
    pub async fn list_checkpoints(&mut self, session_id: &str, extra: Value) -> ClientResult<Vec<Value>> {
        let mut params = json!({"session_id": session_id});
        if let (Some(p), Value::Object(extra)) = (params.as_object_mut(), extra) {
            p.extend(extra);
        }
        match self.call("list_checkpoints", params).await? {
            Value::Array(items) => Ok(items),
            other => Err(ClientError::Protocol(format!("expected an array, got {other}"))),
        }
    }

    pub async fn restore(&mut self, session_id: &str, checkpoint_id: &str) -> ClientResult<Value> {
        self.call("restore", json!({"session_id": session_id, "checkpoint_id": checkpoint_id})).await
    }

    /// Subscribes to a session's events, replaying those after `since`.
    pub async fn subscribe(&mut self, session_id: &str, since: Option<u64>) -> ClientResult<Value> {
        self.call("subscribe", json!({"session_id": session_id, "since": since})).await
    }

    pub async fn metrics(&mut self) -> ClientResult<Value> {
        self.call("metrics", json!({})).await
    }

    /// Sends a Close frame and waits (briefly) for the server's.
    pub async fn close(mut self) -> ClientResult<()> {
        self.ws.close(None).await.map_err(conn)?;
        let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = self.ws.next().await {} })
            .await;
        Ok(())
    }
}

fn id_of(v: Value) -> ClientResult<String> {
    v.as_str().map(str::to_string).ok_or_else(|| ClientError::Protocol(format!("expected an id string, got {v}")))
}
