//! The WebSocket server, in the shape of tokio's mini-redis: an accept loop
//! that takes a permit before `accept`, one connection task per client with
//! one handler applying its commands, and a broadcast shutdown that waits
//! for every handler before flushing the store.
//!
//! Each module uses only those below it:
//!
//! - this file: the listener ([`run`]), socket budget, exposure check;
//! - `connection`: one client's socket — handshake, reader loop, writer
//!   task, keepalive, Close;
//! - `handler`: one client's protocol state (authentication,
//!   subscriptions) and the one `match` from [`Command`](crate::protocol::Command)
//!   to the service;
//! - `outbound`: what a handler hands its connection (the outgoing queue,
//!   Close frames, the outcome of a request);
//! - `state`: what every connection shares; `settings`: [`ServerConfig`] and
//!   the server's limits and timeouts.

mod connection;
mod handler;
pub mod http;
mod outbound;
mod settings;
mod state;
pub mod tls;

pub use settings::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MESSAGE_BYTES, HANDSHAKE_TIMEOUT, HEAD_DRAIN_GRACE, KEEPALIVE, LINGER,
    MAX_AUTH_FAILURES, MAX_SUBSCRIPTIONS_PER_CONNECTION, MESSAGE_CAP_FACTOR, OUTBOUND_QUEUE, REJECT_SLOTS,
    RESERVED_FDS, SHUTDOWN_GRACE, ServerConfig,
};

use crate::error::{Error, Result};
use crate::service::Service;
use crate::snapshot::ControlSocket;
use state::ServerState;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast, mpsc};

/// Refuses to expose an unauthenticated server beyond loopback.
pub fn check_exposure(addr: SocketAddr, token: Option<&str>, allow_unauthenticated: bool) -> Result<()> {
    if token.is_none() && !addr.ip().is_loopback() && !allow_unauthenticated {
        return Err(Error::InvalidParams(format!(
            "refusing to listen on non-loopback address {addr} without a token; set --token-file or CHECKPOINTD_TOKEN, or pass --allow-unauthenticated"
        )));
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit, as servers do:
/// the usual soft limit (1024) would admit fewer clients than the default
/// `--max-connections`. Returns the new soft limit.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// The soft limit on open files, where the platform tells (Linux).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Caps client sockets so they never take the descriptors the store needs:
/// returns the connections admitted and the extra sockets that may be in
/// their handshake to be told "Server at capacity".
fn socket_budget(max_connections: usize, open_files: Option<usize>) -> (usize, usize) {
    let Some(budget) = open_files.map(|limit| limit.saturating_sub(RESERVED_FDS).max(2)) else {
        return (max_connections, REJECT_SLOTS);
    };
    let reject = REJECT_SLOTS.min(budget / 2);
    (max_connections.min(budget - reject), reject)
}

/// Serves `listener` until `shutdown` completes, then closes every client
/// with a Close frame, waits for in-flight commands, and flushes the store.
pub async fn run(listener: TcpListener, service: Service, config: ServerConfig, shutdown: impl Future) -> Result<()> {
    run_with(listener, None, service, config, shutdown).await
}

/// [`run`], also serving `/metrics`, `/healthz` and `/readyz` (plain HTTP)
/// on `metrics_listener`.
///
/// When `shutdown` completes, `/readyz` answers 503 from then on, every
/// client is sent a Close frame, and the listeners keep answering plain
/// HTTP (WebSocket upgrades get 503) until every connection has drained.
pub async fn run_with(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    service: Service,
    mut config: ServerConfig,
    shutdown: impl Future,
) -> Result<()> {
    let open_files = open_files_limit();
    let (admitted, reject_slots) = socket_budget(config.max_connections, open_files);
    if admitted < config.max_connections {
        tracing::warn!(
            open_files = open_files.unwrap_or_default(),
            "the open-files limit allows {admitted} clients, not {}; raise it (ulimit -n) to serve more",
            config.max_connections
        );
        config.max_connections = admitted;
    }
    if let Ok(addr) = listener.local_addr()
        && config.tls.is_none()
        && !addr.ip().is_loopback()
    {
        tracing::warn!(
            %addr,
            "serving without TLS on a non-loopback address: the token and all data travel in clear text; use --tls-cert and --tls-key"
        );
    }
    service.store().observe_commits(Arc::clone(&config.metrics) as Arc<dyn crate::storage::commit::CommitObserver>);
    let state = Arc::new(ServerState {
        slots: Arc::new(Semaphore::new(config.max_connections)),
        service: service.clone(),
        config,
        draining: AtomicBool::new(false),
    });
    let (notify_shutdown, shutdown_rx) = broadcast::channel::<()>(1);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    // The local control socket, for consistent snapshots of the live data.
    let control = match service.store().data_dir().map(ControlSocket::bind) {
        None => None,
        Some(Ok(socket)) => Some(tokio::spawn(socket.serve(Arc::clone(service.store()), notify_shutdown.subscribe()))),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "no control socket: `checkpoint-dump --snapshot` and `backup` cannot pause this server");
            None
        }
    };
    let metrics_task = metrics_listener.map(|l| tokio::spawn(http::serve_metrics(l, Arc::clone(&state))));
    let mut accept = Box::pin(accept_loop(&listener, &state, reject_slots, shutdown_rx, done_tx.downgrade()));
    tokio::select! {
        () = &mut accept => {}
        _ = shutdown => tracing::info!("shutting down"),
    }
    // Not ready from now on (`/readyz`), before any client hears of it.
    state.draining.store(true, Ordering::SeqCst);
    // Closing the broadcast tells every handler (and ends any snapshot
    // pause, so writes in flight can finish); each holds a `done_tx`
    // clone, so `recv` returns once the last one has finished. Meanwhile
    // the listener still answers plain HTTP (readiness: 503).
    drop(notify_shutdown);
    drop(done_tx);
    let drained = async {
        if let Some(control) = control {
            // Removes the socket file.
            let _ = control.await;
        }
        let _ = done_rx.recv().await;
    };
    tokio::pin!(drained);
    tokio::select! {
        biased;
        () = &mut drained => {}
        () = &mut accept => drained.await,
    }
    drop(accept);
    drop(listener);
    if let Some(task) = metrics_task {
        task.abort();
    }
    service.close();
    tracing::info!("stopped; data flushed");
    Ok(())
}

async fn accept_loop(
    listener: &TcpListener,
    state: &Arc<ServerState>,
    reject_slots: usize,
    shutdown: broadcast::Receiver<()>,
    done: mpsc::WeakSender<()>,
) {
    // Bounds open sockets (admitted + being rejected) before `accept`.
    let sockets = Arc::new(Semaphore::new(state.config.max_connections + reject_slots));
    let mut backoff = Duration::from_millis(5);
    loop {
        let Ok(socket_permit) = Arc::clone(&sockets).acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, never give up.
                tracing::warn!(error = %e, "accept failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let slot = Arc::clone(&state.slots).try_acquire_owned().ok();
        let state = Arc::clone(state);
        let shutdown = shutdown.resubscribe();
        // A connection accepted once shutdown has begun is not waited for
        // (it is answered while the others drain, within HEAD_DRAIN_GRACE),
        // so that probes cannot keep the server from stopping.
        let done = match state.is_draining() {
            true => None,
            false => done.upgrade(),
        };
        tokio::spawn(async move {
            connection::serve(stream, peer, slot, state, shutdown).await;
            drop(socket_permit);
            drop(done);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_leave_descriptors_for_the_store() {
        assert_eq!(socket_budget(1024, None), (1024, REJECT_SLOTS));
        assert_eq!(socket_budget(1024, Some(1_000_000)), (1024, REJECT_SLOTS));
        // ulimit -n 1024: 960 sockets at most, 64 of them for rejections.
        assert_eq!(socket_budget(1024, Some(1024)), (896, 64));
        assert_eq!(socket_budget(10, Some(1024)), (10, 64));
        assert_eq!(socket_budget(1024, Some(128)), (32, 32));
        assert_eq!(socket_budget(1024, Some(10)), (1, 1));
        assert!(open_files_limit().is_none_or(|n| n > 0));
    }
}
