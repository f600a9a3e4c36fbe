//! One client: the handshake, then a loop that answers requests in order
//! while subscription tasks push events through the same bounded queue.

use super::handler::Handler;
use super::http::{self, Head, Io, Rewind};
use super::outbound::{Outcome, close};
use super::settings::{
    HANDSHAKE_TIMEOUT, HEAD_DRAIN_GRACE, LINGER, MESSAGE_CAP_FACTOR, OUTBOUND_QUEUE, SHUTDOWN_GRACE,
};
use super::state::ServerState;
use crate::error::Error;
use crate::protocol::{render_error, request_id};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

/// Initial read buffer of a connection.
const READ_BUFFER_BYTES: usize = 8 * 1024;
type WebSocket = tokio_tungstenite::WebSocketStream<Rewind>;

/// The TLS handshake (with `--tls-cert`) and the request head.
async fn open(stream: TcpStream, state: &ServerState) -> std::io::Result<(Box<dyn Io>, Head, Vec<u8>)> {
    let mut io: Box<dyn Io> = match &state.config.tls {
        Some(tls) => Box::new(tls.acceptor().accept(stream).await?),
        None => Box::new(stream),
    };
    let mut buf = Vec::new();
    let head = http::read_head(&mut io, &mut buf).await?;
    Ok((io, head, buf))
}

pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Option<OwnedSemaphorePermit>,
    state: Arc<ServerState>,
    mut shutdown: broadcast::Receiver<()>,
) {
    // TLS, the request head and the WebSocket handshake all complete within
    // HANDSHAKE_TIMEOUT of the accept; once shutdown begins, within
    // HEAD_DRAIN_GRACE of it.
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let opening = open(stream, &state);
    tokio::pin!(opening);
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    let mut cut = false;
    let opened = loop {
        tokio::select! {
            opened = &mut opening => break opened,
            _ = shutdown.recv(), if !cut => {
                cut = true;
                timer.as_mut().reset(deadline.min(Instant::now() + HEAD_DRAIN_GRACE));
            }
            () = &mut timer => return tracing::debug!(%peer, "no request within the handshake timeout"),
        }
    };
    let (mut io, head, buf) = match opened {
        Ok(opened) => opened,
        Err(e) => return tracing::debug!(%peer, error = %e, "TLS handshake or request failed"),
    };
    // An answer is written within SHUTDOWN_GRACE of being ready.
    let reply_by = || Instant::now() + SHUTDOWN_GRACE;
    match head {
        Head::WebSocket if !state.is_draining() => {}
        Head::WebSocket => {
            let refusal = http::refusal(503, "server shutting down");
            return http::send(&mut io, &refusal, false, reply_by()).await;
        }
        Head::Http(request) => {
            // Plain HTTP takes no client slot.
            drop(slot);
            let response = http::respond(&state, &request).await;
            return http::send(&mut io, &response, request.method == "HEAD", reply_by()).await;
        }
        Head::Bad => return http::send(&mut io, &http::refusal(400, "bad request"), false, reply_by()).await,
        Head::Closed => return tracing::debug!(%peer, "closed before a request"),
    }
    let stream = Rewind::new(buf, io);
    let limit = state.config.max_message_bytes;
    // tungstenite's write buffer keeps its default (no cap): with a cap, a
    // frame larger than it is refused outright, and a reply may well be
    // larger than any request (a record with many notes, a page of long
    // messages). Memory stays bounded by the outbound queue: `write_loop`
    // waits for each flush before it takes more.
    // The read buffer is allocated (and zeroed) per connection: tungstenite's
    // 128 KiB default made 1,000 idle clients cost 145 MiB; 8 KiB makes it
    // 24 MiB (benches/scale.rs). Larger messages grow it as they arrive.
    // Up to the hard cap a message is read whole, so that one over the limit
    // is refused with `too_large` and the connection carries on.
    let cap = limit.saturating_mul(MESSAGE_CAP_FACTOR);
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(cap))
        .max_frame_size(Some(cap));
    // A socket that never finishes its handshake must not hold up shutdown.
    let handshake =
        tokio::time::timeout_at(deadline, tokio_tungstenite::accept_async_with_config(stream, Some(ws_config)));
    let ws = tokio::select! {
        _ = shutdown.recv() => return tracing::debug!(%peer, "shutdown during the handshake"),
        result = handshake => match result {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "handshake failed"),
            Err(_) => return tracing::debug!(%peer, "handshake timed out"),
        },
    };
    let (mut sink, mut incoming) = ws.split();
    let Some(_slot) = slot else {
        tracing::warn!(%peer, "refused: server at capacity");
        let text = render_error("init", &Error::Capacity("Server at capacity".into()));
        let sent = tokio::time::timeout(SHUTDOWN_GRACE, async {
            sink.send(Message::text(text)).await?;
            sink.send(close(CloseCode::Again, "server at capacity")).await
        })
        .await;
        if matches!(sent, Ok(Ok(()))) {
            linger(&mut incoming, Instant::now() + LINGER).await;
        }
        return;
    };
    tracing::debug!(%peer, "connected");
    let (out, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let mut writer = tokio::spawn(write_loop(sink, out_rx));
    let mut handler = Handler::new(Arc::clone(&state), out.clone());
    // Every wait below also watches for shutdown: a client that stops
    // reading fills its queue, and must not keep the server from stopping.
    let mut shutting_down = false;
    // Keepalive: after `keepalive` of silence the client is pinged; after
    // another `keepalive` without any frame (a pong counts) it is closed, so a
    // half-open connection does not keep its slot forever.
    let mut quiet_until = Instant::now() + state.config.keepalive;
    let mut pinged = false;
    // One timer, armed once per silence rather than once per frame (each
    // new timer could wake the runtime's I/O driver): a frame only moves
    // `quiet_until`, and the timer, when it fires early, re-arms for it.
    let quiet = tokio::time::sleep_until(quiet_until);
    tokio::pin!(quiet);
    loop {
        let frame = tokio::select! {
            // Once shutdown begins, no new command is read.
            biased;
            _ = shutdown.recv() => {
                shutting_down = true;
                break;
            }
            frame = incoming.next() => {
                quiet_until = Instant::now() + state.config.keepalive;
                pinged = false;
                frame
            }
            () = &mut quiet => {
                if quiet_until > quiet.deadline() {
                    quiet.as_mut().reset(quiet_until);
                    continue;
                }
                if pinged {
                    tracing::debug!(%peer, "no answer to a keepalive ping; closing");
                    let _ = out.try_send(close(CloseCode::Away, "keepalive timeout"));
                    break;
                }
                pinged = true;
                quiet_until = Instant::now() + state.config.keepalive;
                quiet.as_mut().reset(quiet_until);
                let _ = out.try_send(Message::Ping(Default::default()));
                continue;
            }
        };
        let mut hold = None;
        let outcome = match frame {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Text(text))) if text.len() > limit => {
                let e = Error::TooLarge(format!(
                    "the message is {} bytes, over the limit of {limit} (--max-message-bytes)",
                    text.len()
                ));
                Outcome::Reply(render_error(&request_id(text.as_str()), &e))
            }
            Some(Ok(Message::Text(text))) => {
                let (outcome, held) = handler.handle_text(&text).await;
                hold = held;
                outcome
            }
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
            Some(Err(tungstenite::Error::Utf8(e))) => {
                // RFC 6455 §8.1: invalid UTF-8 in a text frame fails the connection.
                tracing::debug!(%peer, error = %e, "text frame is not UTF-8");
                Outcome::Close(close(CloseCode::Invalid, "text frame is not valid UTF-8"))
            }
            Some(Err(tungstenite::Error::Protocol(e))) => {
                tracing::debug!(%peer, error = %e, "WebSocket protocol violation");
                Outcome::Close(close(CloseCode::Protocol, "WebSocket protocol violation"))
            }
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "read failed");
                break;
            }
        };
        let (message, subscription, last) = match outcome {
            Outcome::Reply(text) => (Message::text(text), None, false),
            Outcome::Subscribed(text, sub) => (Message::text(text), Some(sub), false),
            Outcome::Close(frame) => (frame, None, true),
        };
        tokio::select! {
            // The reply of a command that ran is sent whenever the queue has
            // room; shutdown only cuts short a wait for a client that does
            // not read.
            biased;
            sent = out.send(message) => if sent.is_err() { break },
            _ = shutdown.recv() => {
                shutting_down = true;
                break;
            }
        }
        // The reply is queued: the events a write caused may follow it.
        drop(hold);
        if let Some(sub) = subscription {
            // After its reply, so the reply precedes every event.
            handler.forward(sub);
        }
        if last {
            break;
        }
    }
    // Stop subscriptions, queue the Close frame after what is queued, and let
    // the writer drain it all — within the grace period, then drop the socket.
    drop(handler);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    if shutting_down {
        let _ = tokio::time::timeout_at(deadline, out.send(close(CloseCode::Away, "server shutting down"))).await;
    }
    drop(out);
    match tokio::time::timeout_at(deadline, &mut writer).await {
        Ok(Ok(true)) => linger(&mut incoming, deadline.min(Instant::now() + LINGER)).await,
        Ok(_) => {}
        Err(_) => {
            writer.abort();
            tracing::debug!(%peer, "client did not take its last messages in time");
        }
    }
    tracing::debug!(%peer, "disconnected");
}

/// After sending our Close frame, reads (and drops) whatever the client still
/// sends until its Close or EOF, at most until `deadline`. Closing a socket
/// with unread data resets the connection, and a reset can destroy the
/// replies and the Close frame still on their way to the client.
async fn linger(incoming: &mut SplitStream<WebSocket>, deadline: Instant) {
    let _ = tokio::time::timeout_at(deadline, async {
        while let Some(Ok(msg)) = incoming.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
}

/// Owns the socket's sending half; batches whatever is queued into one flush.
/// Returns whether it sent a Close frame of ours.
async fn write_loop(mut sink: SplitSink<WebSocket, Message>, mut rx: mpsc::Receiver<Message>) -> bool {
    while let Some(msg) = rx.recv().await {
        let mut closing = matches!(msg, Message::Close(_));
        if sink.feed(msg).await.is_err() {
            return false;
        }
        while !closing {
            let Ok(msg) = rx.try_recv() else { break };
            closing = matches!(msg, Message::Close(_));
            if sink.feed(msg).await.is_err() {
                return false;
            }
        }
        match sink.flush().await {
            Err(_) => return false,
            Ok(()) if closing => return true,
            Ok(()) => {}
        }
    }
    let _ = sink.close().await;
    false
}
