//! What flows from a connection's handler to its socket: the queue of
//! outgoing messages and what the connection does after each request.

use crate::service::hub::Subscription;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The bounded queue of one client's outgoing messages (replies, events,
/// pings, the Close frame), drained by the connection's writer task.
pub(crate) type Outbound = mpsc::Sender<Message>;

/// Holds a connection's events back while a reply is on its way: the
/// handler takes it whole for a write, until the write's reply is queued;
/// each event is queued under it shared. So on one connection the reply to
/// a write precedes every event the write caused.
pub(crate) type ReplyGate = std::sync::Arc<tokio::sync::RwLock<()>>;

/// The gate held for one write (see [`ReplyGate`]).
pub(crate) type ReplyHold = tokio::sync::OwnedRwLockWriteGuard<()>;

/// A Close frame.
pub(crate) fn close(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

/// What the connection should do after a request.
pub(crate) enum Outcome {
    Reply(String),
    /// The reply to `subscribe`; once it is queued, the handler's `forward`
    /// starts the events, so the reply precedes every one of them.
    Subscribed(String, Subscription),
    Close(Message),
}
