//! One client's [`Handler`]: it turns each text frame into a [`Command`] and
//! applies it to the service — the single `match` that maps the wire onto
//! the core — and forwards its subscriptions' events. It answers with an
//! [`Outcome`]; the connection owns the socket.

use super::outbound::{Outbound, Outcome, ReplyGate, ReplyHold, close};
use super::settings::{MAX_AUTH_FAILURES, MAX_SUBSCRIPTIONS_PER_CONNECTION};
use super::state::ServerState;
use crate::error::{Error, Result};
use crate::model::SessionId;
use crate::protocol::{Command, render_error, render_event, render_lagged, render_ok, reply};
use crate::service::hub::{Delivery, Subscription};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// One client's protocol state: whether it has authenticated, and its
/// subscriptions (stopped when the handler is dropped).
pub(crate) struct Handler {
    state: Arc<ServerState>,
    out: Outbound,
    authenticated: bool,
    auth_failures: u32,
    subscriptions: HashMap<SessionId, JoinHandle<()>>,
    gate: ReplyGate,
}

impl Drop for Handler {
    fn drop(&mut self) {
        for task in self.subscriptions.values() {
            task.abort();
        }
    }
}

impl Handler {
    pub fn new(state: Arc<ServerState>, out: Outbound) -> Handler {
        let authenticated = state.config.token.is_none();
        let gate = ReplyGate::default();
        Handler { state, out, authenticated, auth_failures: 0, subscriptions: HashMap::new(), gate }
    }

    /// Answers one text frame. For a write, also the hold on this
    /// connection's events, to be dropped once the reply is queued.
    pub async fn handle_text(&mut self, text: &Utf8Bytes) -> (Outcome, Option<ReplyHold>) {
        let started = std::time::Instant::now();
        let (outcome, hold, method, code) = self.answer(text).await;
        self.state.config.metrics.request(method, code, started.elapsed());
        (outcome, hold)
    }

    /// [`Handler::handle_text`], with the method (as a metrics label) and
    /// the result code.
    async fn answer(&mut self, text: &Utf8Bytes) -> (Outcome, Option<ReplyHold>, &'static str, &'static str) {
        let request = match crate::protocol::parse_frame(text) {
            Ok(request) => request,
            Err(e) => return (Outcome::Reply(render_error("unknown", &e)), None, "unknown", e.code()),
        };
        let method = crate::protocol::known_method(&request.method).unwrap_or("unknown");
        let id = request.id;
        if !self.authenticated && request.method != "authenticate" {
            let e = Error::Unauthorized("Authentication required".into());
            return (Outcome::Reply(render_error(&id, &e)), None, method, e.code());
        }
        let command = match request.command {
            Ok(command) => command,
            Err(e) => return (Outcome::Reply(render_error(&id, &e)), None, method, e.code()),
        };
        let authenticating = matches!(command, Command::Authenticate { .. });
        let hold = match command.journals_events() {
            true => Some(std::sync::Arc::clone(&self.gate).write_owned().await),
            false => None,
        };
        let (outcome, code) = match self.apply(&id, command).await {
            Ok(outcome) if authenticating && !self.authenticated => (outcome, "unauthorized"),
            Ok(outcome) => (outcome, "ok"),
            Err(e) => (Outcome::Reply(render_error(&id, &e)), e.code()),
        };
        (outcome, hold, method, code)
    }

    fn authenticate(&mut self, id: &str, token: Option<String>) -> Outcome {
        let ok = match (&self.state.config.token, token) {
            (None, _) => true,
            (Some(expected), Some(given)) => constant_time_eq(expected.as_bytes(), given.as_bytes()),
            (Some(_), None) => false,
        };
        if ok {
            self.authenticated = true;
            return Outcome::Reply(render_ok(id, reply::authenticated()));
        }
        self.auth_failures += 1;
        let reply = render_error(id, &Error::Unauthorized("Invalid authentication token".into()));
        if self.auth_failures >= MAX_AUTH_FAILURES {
            // Best effort: the reply first, then the close.
            let _ = self.out.try_send(Message::text(reply));
            return Outcome::Close(close(CloseCode::Policy, "too many failed authentication attempts"));
        }
        Outcome::Reply(reply)
    }

    /// Starts pushing a subscription's events; it replaces any earlier
    /// subscription of this connection to the same session.
    pub fn forward(&mut self, sub: Subscription) {
        let session_id = sub.session_id();
        let metrics = std::sync::Arc::clone(&self.state.config.metrics);
        let task = tokio::spawn(forward(sub, self.out.clone(), std::sync::Arc::clone(&self.gate), metrics));
        if let Some(old) = self.subscriptions.insert(session_id, task) {
            old.abort();
        }
    }

    /// The one `match` from wire commands to service calls.
    async fn apply(&mut self, id: &str, command: Command) -> Result<Outcome> {
        let service = self.state.service.clone();
        Ok(Outcome::Reply(match command {
            Command::Authenticate { token } => return Ok(self.authenticate(id, token)),
            Command::Subscribe { session_id, since } => {
                self.subscriptions.retain(|_, task| !task.is_finished());
                if !self.subscriptions.contains_key(&session_id)
                    && self.subscriptions.len() >= MAX_SUBSCRIPTIONS_PER_CONNECTION
                {
                    return Err(Error::Capacity(format!(
                        "at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions per connection"
                    )));
                }
                let sub = service.subscribe(session_id, since).await?;
                // The earlier subscription stops now; the new one starts after its reply.
                if let Some(old) = self.subscriptions.remove(&session_id) {
                    old.abort();
                }
                return Ok(Outcome::Subscribed(render_ok(id, reply::subscribed(session_id)), sub));
            }
            Command::Unsubscribe { session_id } => {
                if let Some(task) = self.subscriptions.remove(&session_id) {
                    task.abort();
                }
                render_ok(id, reply::unsubscribed(session_id))
            }
            Command::CreateSession { name, metadata } => {
                render_ok(id, reply::created(service.create_session(name, metadata).await?.id))
            }
            Command::ListCheckpoints { session_id, query } => {
                render_ok(id, reply::page(&service.list_page(session_id, &query).await?))
            }
            Command::SearchCheckpoints { query } => {
                render_ok(id, reply::page(&service.search_checkpoints(&query).await?))
            }
            Command::PutWrites(writes) => render_ok(id, reply::writes_stored(service.put_writes(writes).await?)),
            Command::CopySession { session_id, key, name, metadata } => {
                let (session, copied) = service.copy_session(session_id, key, name, metadata).await?;
                render_ok(id, reply::copied(&session, copied))
            }
            Command::DeleteCheckpoints { session_id, namespace, metadata } => {
                let (deleted, more) = service.delete_checkpoints(session_id, namespace.as_deref(), &metadata).await?;
                render_ok(id, reply::deleted_many(deleted, more))
            }
            Command::Checkpoint(new) => render_ok(id, reply::created(service.checkpoint(new).await?.id)),
            Command::Metrics => {
                let m = service.metrics().await?;
                render_ok(id, reply::metrics(&m, self.state.connections(), service.health().subscriptions))
            }
            Command::Health => {
                let h = service.health();
                let config = &self.state.config;
                render_ok(
                    id,
                    reply::health(&h, self.state.connections(), config.max_connections, config.max_message_bytes),
                )
            }
            Command::GetCheckpoint { checkpoint_id } => {
                render_ok(id, reply::checkpoint(&service.get_checkpoint(checkpoint_id).await?))
            }
            Command::GetCheckpointIn { session_id, namespace, external_id } => {
                let found = service.get_checkpoint_in(session_id, &namespace, external_id.as_deref()).await?;
                render_ok(id, reply::checkpoint(&found))
            }
            Command::Restore { session_id, checkpoint_id } => {
                render_ok(id, reply::restored(&service.restore(session_id, checkpoint_id).await?))
            }
            Command::DeleteCheckpoint { checkpoint_id, session_id } => {
                service.delete_checkpoint(checkpoint_id, session_id).await?;
                render_ok(id, reply::deleted())
            }
            Command::Compact { session_id, policy, per_namespace } => {
                render_ok(id, reply::compacted(&service.compact_by(session_id, policy, per_namespace).await?))
            }
            Command::SetRetention { session_id, policy } => {
                render_ok(id, reply::retention(service.set_retention(session_id, policy).await?.as_ref()))
            }
            Command::ListSessions { limit, after, key_prefix } => {
                let sessions = match key_prefix {
                    Some(prefix) => service.list_sessions_by_key(&prefix, after, limit).await?,
                    None => service.list_sessions(after, limit).await?,
                };
                render_ok(id, reply::sessions(&sessions))
            }
            Command::GetSession { session_id } => {
                render_ok(id, reply::session(&service.get_session(session_id).await?, true))
            }
            Command::GetSessionByKey { key } => {
                render_ok(id, reply::session(&service.get_session_by_key(&key).await?, true))
            }
            Command::OpenSession { key, name, metadata } => {
                let (session, created) = service.open_session(key, name, metadata).await?;
                render_ok(id, reply::opened(&session, created))
            }
            Command::DeleteSession { session_id } => {
                service.delete_session(session_id).await?;
                render_ok(id, reply::deleted())
            }
            Command::Annotate { checkpoint_id, note, severity } => {
                let a = service.annotate(checkpoint_id, note, severity).await?;
                render_ok(id, reply::annotation(&a, Some(checkpoint_id.to_string())))
            }
            Command::Validate { session_id } => render_ok(id, reply::validation(&service.validate(session_id).await?)),
        }))
    }
}

/// Pushes one subscription's events into the client's queue until it ends.
async fn forward(mut sub: Subscription, out: Outbound, gate: ReplyGate, metrics: Arc<crate::metrics::Metrics>) {
    let session_id = sub.session_id().to_string();
    while let Some(delivery) = sub.next().await {
        let (text, lagged) = match delivery {
            Delivery::Event(event) => (render_event(&event), false),
            Delivery::Lagged { last_seq } => (render_lagged(&session_id, last_seq), true),
        };
        // Not while a write's reply is on its way (see `ReplyGate`).
        let _open = gate.read().await;
        if out.send(Message::text(text)).await.is_err() {
            return;
        }
        match lagged {
            true => metrics.subscription_lagged(),
            false => metrics.event_delivered(),
        }
    }
}

/// Compares without an early exit, so timing does not reveal how much of a
/// guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}
