//! The server's settings: [`ServerConfig`] and every number the server
//! is built around (limits, timeouts, queue lengths).

use std::time::Duration;

/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default `--max-message-bytes`: the largest message a request may be. A
/// larger one, up to [`MESSAGE_CAP_FACTOR`] times the limit, is read and
/// refused with `too_large` (the connection and the requests after it carry
/// on); a larger one still closes the connection with code 1009.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// See [`DEFAULT_MAX_MESSAGE_BYTES`]: the hard cap on a message is this
/// many times the limit (so a connection's read buffer stays bounded).
pub const MESSAGE_CAP_FACTOR: usize = 2;
/// A client must finish the WebSocket handshake within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed `authenticate` attempts before the connection is closed (1008).
pub const MAX_AUTH_FAILURES: u32 = 5;
/// Messages (replies and events) queued for one client's socket. When it is
/// full, replies wait and subscriptions fall behind until they lag.
pub const OUTBOUND_QUEUE: usize = 256;
/// Connections over capacity that may be in their handshake at once, to be
/// told "Server at capacity". Beyond this, extra sockets wait in the kernel's
/// backlog.
pub const REJECT_SLOTS: usize = 64;
/// How long shutdown waits for clients to receive their Close frame.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// After the server sends a Close frame (capacity, failed authentication,
/// shutdown, ...), how long it keeps reading for the client's Close before it
/// drops the socket: dropping it with unread data would reset the connection
/// and could destroy what was sent just before.
pub const LINGER: Duration = Duration::from_secs(1);
/// Default [`ServerConfig::keepalive`]: a client silent this long is pinged;
/// silent twice this long, closed (1001).
pub const KEEPALIVE: Duration = Duration::from_secs(60);
/// Sessions one connection may be subscribed to at once.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 1024;
/// File descriptors never used for client sockets: the store needs a few
/// more than it holds (fsync of new blob files and directories), and running
/// out there fails it closed. Client sockets (admitted plus being rejected)
/// are capped at the open-files limit minus this.
pub const RESERVED_FDS: usize = 64;

/// When shutdown begins, a connection still sending its request head (or
/// its TLS handshake) has this long to finish it: a health probe in flight
/// is answered (`/readyz`: 503), and an idle socket cannot hold shutdown up.
pub const HEAD_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Settings of the WebSocket front.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Clients must `authenticate` with this token first.
    pub token: Option<String>,
    pub max_connections: usize,
    pub max_message_bytes: usize,
    /// Silence before a client is pinged, and again before it is closed.
    pub keepalive: Duration,
    /// The server's metrics (`GET /metrics`).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Serve `wss://` with this certificate (reloadable).
    pub tls: Option<std::sync::Arc<super::tls::Tls>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            token: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            keepalive: KEEPALIVE,
            metrics: Default::default(),
            tls: None,
        }
    }
}
