//! Plain HTTP on the WebSocket listener (and on `--metrics-listen`): a
//! request without `Upgrade: websocket` is answered as HTTP/1.1 and the
//! connection closed.
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok`: the process serves |
//! | `GET /readyz` | 200 `ready` while the store accepts writes; 503 once it has failed or shutdown has begun |
//! | `GET /metrics` | 200, the Prometheus exposition ([`crate::metrics`]) |
//! | another path | 404 |
//! | another method on those paths | 405 |
//!
//! `HEAD` is answered like `GET` without the body. A WebSocket upgrade on any
//! path goes on to the WebSocket handshake (on the metrics listener: 404).
//! The request head is read within the handshake timeout, at most
//! [`MAX_HEAD_BYTES`]; a longer or malformed one gets 400.

use super::state::ServerState;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Longest request head (request line and headers) read, in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers in a request head (tungstenite's own limit).
pub const MAX_HEADERS: usize = 124;

/// A byte stream a connection can run on: TCP, or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A stream whose first bytes were already read (the request head): they
/// are read again first, so the WebSocket handshake sees the whole request.
pub(crate) struct Rewind {
    prefix: Vec<u8>,
    at: usize,
    inner: Box<dyn Io>,
}

impl Rewind {
    pub fn new(prefix: Vec<u8>, inner: Box<dyn Io>) -> Rewind {
        Rewind { prefix, at: 0, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What a connection's first bytes asked for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// A WebSocket upgrade: hand the stream (and the bytes read) to the
    /// WebSocket handshake.
    WebSocket,
    /// A plain HTTP request.
    Http(Request),
    /// Not HTTP, or a head over the limits.
    Bad,
    /// The client closed before a whole head arrived.
    Closed,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub method: String,
    pub path: String,
    /// The client accepts OpenMetrics.
    pub openmetrics: bool,
}

/// Reads until a whole request head is in `buf` (which keeps every byte
/// read) and says what it is.
pub(crate) async fn read_head(stream: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> io::Result<Head> {
    let mut chunk = [0u8; 4096];
    loop {
        match parse_head(buf) {
            Some(head) => return Ok(head),
            None if buf.len() >= MAX_HEAD_BYTES => return Ok(Head::Bad),
            None => {}
        }
        let want = chunk.len().min(MAX_HEAD_BYTES - buf.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `None` while the head is incomplete.
fn parse_head(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Head::Bad),
        Ok(httparse::Status::Complete(_)) => {
            let has_token =
                |name: &str, token: &str| {
                    request.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).any(|h| {
                        String::from_utf8_lossy(h.value).split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
                    })
                };
            if has_token("upgrade", "websocket") {
                return Some(Head::WebSocket);
            }
            let openmetrics = request
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("accept"))
                .any(|h| String::from_utf8_lossy(h.value).contains("application/openmetrics-text"));
            let path = request.path.unwrap_or("/");
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            Some(Head::Http(Request {
                method: request.method.unwrap_or("").to_string(),
                path: path.to_string(),
                openmetrics,
            }))
        }
    }
}

/// One HTTP response.
pub(crate) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// Sent as `Allow` (405).
    pub allow: Option<&'static str>,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into(), allow: None }
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            503 => "Service Unavailable",
            _ => "",
        }
    }

    /// The whole response, `Connection: close`; without the body for HEAD.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.reason(),
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            out.push_str(&format!("Allow: {allow}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// Whether the server is ready: the store accepts writes and shutdown has
/// not begun. Also what `/readyz` says, with the reason when not.
pub(crate) fn readiness(state: &ServerState) -> std::result::Result<(), &'static str> {
    if state.is_draining() {
        Err("shutting down")
    } else if !state.service.store().healthy() {
        Err("the store refuses writes (a write to disk failed, or its database is unreachable)")
    } else {
        Ok(())
    }
}

/// Renders the metrics, reading the store's gauges now.
pub(crate) async fn render_metrics(state: &ServerState) -> String {
    let metrics = &state.config.metrics;
    let service = &state.service;
    let store = service.store();
    metrics.set_live(state.connections(), service.health().subscriptions, !store.healthy(), readiness(state).is_ok());
    metrics.set_build(store.format_version(), store.durability());
    // Counts come from a read that waits for what it saw to be durable; a
    // failed store keeps the last counts.
    match tokio::time::timeout(super::settings::HANDSHAKE_TIMEOUT, service.metrics()).await {
        Ok(Ok(m)) => {
            let space = store.space();
            metrics.set_store(&crate::metrics::StoreGauges {
                checkpoints: m.total_checkpoints,
                sessions: m.active_sessions,
                sessions_created: m.total_sessions_created,
                global_sequence: m.global_sequence,
                event_sequence: m.event_sequence,
                bytes_on_disk: m.bytes_on_disk,
                live_bytes: space.live_bytes,
                dead_bytes: space.dead_bytes,
                segment_bytes: space.bytes_on_disk,
            });
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "metrics: the store's counts are not available"),
        Err(_) => tracing::debug!("metrics: the store's counts took too long"),
    }
    metrics.encode()
}

/// The answer to `request`.
pub(crate) async fn respond(state: &ServerState, request: &Request) -> Response {
    let get = matches!(request.method.as_str(), "GET" | "HEAD");
    let response = match request.path.as_str() {
        "/healthz" | "/readyz" | "/metrics" if !get => {
            Response { allow: Some("GET, HEAD"), ..Response::text(405, "method not allowed\n") }
        }
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => match readiness(state) {
            Ok(()) => Response::text(200, "ready\n"),
            Err(why) => Response::text(503, format!("not ready: {why}\n")),
        },
        "/metrics" => Response {
            status: 200,
            content_type: match request.openmetrics {
                true => crate::metrics::OPENMETRICS_CONTENT_TYPE,
                false => crate::metrics::TEXT_CONTENT_TYPE,
            },
            body: render_metrics(state).await,
            allow: None,
        },
        _ => Response::text(404, "not found: try /healthz, /readyz or /metrics\n"),
    };
    state.config.metrics.http_request(&request.path, response.status);
    response
}

/// A response to a request that is not served here.
pub(crate) fn refusal(status: u16, why: &str) -> Response {
    Response::text(status, format!("{why}\n"))
}

/// Writes `response` and closes the connection gracefully, within
/// `deadline`: after our half-close, whatever the client still sends is
/// read and dropped (at most until the deadline), so the response is not
/// destroyed by a reset.
pub(crate) async fn send(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    response: &Response,
    head_only: bool,
    deadline: tokio::time::Instant,
) {
    let bytes = response.to_bytes(head_only);
    let _ = tokio::time::timeout_at(deadline, async {
        stream.write_all(&bytes).await?;
        stream.flush().await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// Serves `--metrics-listen`: `/metrics`, `/healthz` and `/readyz` only,
/// plain HTTP, at most [`METRICS_CONNECTIONS`] at a time, each within the
/// handshake timeout. Runs until the task is aborted.
pub(crate) async fn serve_metrics(listener: tokio::net::TcpListener, state: Arc<ServerState>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + super::settings::HANDSHAKE_TIMEOUT;
            let mut buf = Vec::new();
            let head = tokio::time::timeout_at(deadline, read_head(&mut stream, &mut buf)).await;
            let response = match head {
                Ok(Ok(Head::Http(request))) => {
                    let response = respond(&state, &request).await;
                    let reply_by = tokio::time::Instant::now() + super::settings::SHUTDOWN_GRACE;
                    send(&mut stream, &response, request.method == "HEAD", reply_by).await;
                    return drop(permit);
                }
                Ok(Ok(Head::WebSocket)) => refusal(404, "no WebSocket here: this is the metrics listener"),
                Ok(Ok(Head::Bad)) => refusal(400, "bad request"),
                _ => return tracing::debug!(%peer, "metrics listener: no request"),
            };
            send(&mut stream, &response, false, deadline).await;
            drop(permit);
        });
    }
}

/// Connections `--metrics-listen` serves at once; more wait in the backlog.
pub const METRICS_CONNECTIONS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_told_apart() {
        assert_eq!(parse_head(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n"),
            Some(Head::Http(Request { method: "GET".into(), path: "/metrics".into(), openmetrics: true }))
        );
        assert_eq!(
            parse_head(b"GET /any HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\r\n"),
            Some(Head::WebSocket)
        );
        assert_eq!(parse_head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), Some(Head::Bad));
    }

    #[tokio::test]
    async fn rewind_replays_the_head_first() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut r = Rewind::new(b"hello".to_vec(), Box::new(b));
        let mut all = String::new();
        r.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }

    #[tokio::test]
    async fn a_head_over_the_limit_is_bad() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        while head.len() <= MAX_HEAD_BYTES {
            head.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        a.write_all(&head).await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_head(&mut b, &mut buf).await.unwrap(), Head::Bad);
        assert!(buf.len() <= MAX_HEAD_BYTES);
    }
}
