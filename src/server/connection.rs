//! One client: the handshake, then a loop that answers requests in order
//! while subscription tasks push events through the same bounded queue.

use super::handler::{Outcome, Session};
use super::{HANDSHAKE_TIMEOUT, OUTBOUND_QUEUE, SHUTDOWN_GRACE, Shared};
use crate::error::Error;
use crate::protocol::render_error;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

pub(crate) type Outbound = mpsc::Sender<Message>;

pub(crate) fn close(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
    mut shutdown: broadcast::Receiver<()>,
) {
    let limit = shared.config.max_message_bytes;
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        // Back-pressure instead of unbounded buffering of replies.
        .max_write_buffer_size(limit.saturating_mul(2).max(1 << 20));
    let ws = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_async_with_config(stream, Some(ws_config)),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "handshake failed"),
        Err(_) => return tracing::debug!(%peer, "handshake timed out"),
    };
    let (mut sink, mut incoming) = ws.split();
    let Some(_slot) = slot else {
        tracing::warn!(%peer, "refused: server at capacity");
        let text = render_error("init", &Error::Capacity("Server at capacity".into()));
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            sink.send(Message::text(text)).await?;
            sink.send(close(CloseCode::Again, "server at capacity")).await
        })
        .await;
        return;
    };
    tracing::debug!(%peer, "connected");
    let (out, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let writer = tokio::spawn(write_loop(sink, out_rx));
    let mut session = Session::new(Arc::clone(&shared), out.clone());
    loop {
        let frame = tokio::select! {
            _ = shutdown.recv() => {
                let _ = out.send(close(CloseCode::Away, "server shutting down")).await;
                break;
            }
            frame = incoming.next() => frame,
        };
        let outcome = match frame {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Text(text))) => session.handle_text(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                let e = Error::InvalidJson("Invalid JSON: binary frames are not supported; send JSON text".into());
                Outcome::Reply(render_error("unknown", &e))
            }
            // tungstenite answers pings itself.
            Some(Ok(_)) => continue,
            Some(Err(tungstenite::Error::Capacity(e))) => {
                tracing::debug!(%peer, error = %e, "message over the limit");
                Outcome::Close(close(CloseCode::Size, "message too large"))
            }
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "read failed");
                break;
            }
        };
        match outcome {
            Outcome::Reply(text) => {
                if out.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            Outcome::Sent => {}
            Outcome::Close(frame) => {
                let _ = out.send(frame).await;
                break;
            }
        }
    }
    // Stop subscriptions, then let the writer drain what is queued.
    drop(session);
    drop(out);
    if tokio::time::timeout(SHUTDOWN_GRACE, writer).await.is_err() {
        tracing::debug!(%peer, "client did not take its last messages in time");
    }
    tracing::debug!(%peer, "disconnected");
}

/// Owns the socket's sending half; batches whatever is queued into one flush.
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<tokio_tungstenite::WebSocketStream<TcpStream>, Message>,
    mut rx: mpsc::Receiver<Message>,
) {
    while let Some(msg) = rx.recv().await {
        let mut closing = matches!(msg, Message::Close(_));
        if sink.feed(msg).await.is_err() {
            return;
        }
        while !closing {
            let Ok(msg) = rx.try_recv() else { break };
            closing = matches!(msg, Message::Close(_));
            if sink.feed(msg).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() || closing {
            return;
        }
    }
    let _ = sink.close().await;
}
