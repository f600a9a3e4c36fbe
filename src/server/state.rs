//! What the server shares with every connection.

use super::settings::ServerConfig;
use crate::service::Service;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Semaphore;

/// The server's state, shared by every connection task: the service, the
/// settings, and the client slots.
pub(crate) struct ServerState {
    pub service: Service,
    pub config: ServerConfig,
    /// One permit per admitted client; taken before the handshake.
    pub slots: Arc<Semaphore>,
    /// Shutdown has begun: connections drain, `/readyz` answers 503, and
    /// new connections get only plain HTTP.
    pub draining: AtomicBool,
}

impl ServerState {
    /// Clients admitted now.
    pub fn connections(&self) -> usize {
        self.config.max_connections - self.slots.available_permits()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
