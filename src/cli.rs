//! `checkpointd call` and `checkpointd watch`: a client for scripts and
//! debugging, on [`crate::client`].
//!
//! ```console
//! $ checkpointd call create_session '{"name":"agent-7"}'
//! "6f0c1f5e-0d3f-4c55-9a43-2b1f3d1e8a11"
//! $ checkpointd call get_session '{"session_id":"nope"}'; echo $?
//! checkpointd call: invalid_params: ...
//! 1
//! $ checkpointd watch 6f0c1f5e-0d3f-4c55-9a43-2b1f3d1e8a11 --since 0
//! {"event_type":"checkpoint_created","data":{...},"seq":1}
//! ```
//!
//! Exit codes: 0 success (`watch`: interrupted, or stdout closed); 1 an
//! error reply (its code is printed), or the connection failed or closed;
//! 2 usage (clap's message, or JSON-PARAMS that is not JSON).

use crate::client::{Client, ClientError};
use clap::Args;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The URL `call` and `watch` connect to by default (the server's default
/// listen address).
pub const DEFAULT_URL: &str = "ws://127.0.0.1:7700";
/// Connecting (TCP, TLS, WebSocket handshake, `authenticate`) must finish
/// within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to connect.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Server URL: ws://HOST:PORT, or wss://HOST:PORT for a server with --tls-cert.
    #[arg(long, env = "CHECKPOINTD_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// File holding the server's token (a trailing newline is ignored); or
    /// set CHECKPOINTD_TOKEN. Without either, no `authenticate` is sent.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the certificate authority to trust for wss:// (default:
    /// the system's roots).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// `checkpointd call`.
#[derive(Args, Debug, Clone)]
pub struct CallArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// The protocol method (docs/protocol.md), e.g. create_session.
    pub method: String,
    /// Its params as JSON (an object); `-` reads them from stdin. Default `{}`.
    #[arg(value_name = "JSON-PARAMS")]
    pub params: Option<String>,
}

/// `checkpointd watch`.
#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// The session whose events to print.
    pub session: String,
    /// Replay the journal's events of the session after this sequence first.
    #[arg(long)]
    pub since: Option<u64>,
}

/// The serving options for operators: TLS and a separate metrics listener.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeOps {
    /// PEM certificate chain: serve wss:// (TLS) instead of ws://. Needs
    /// --tls-key. Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE", env = "CHECKPOINTD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert. Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE", env = "CHECKPOINTD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also serve /metrics, /healthz and /readyz (plain HTTP, nothing else)
    /// on this address; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", env = "CHECKPOINTD_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

impl ServeOps {
    /// Loads the certificate and key, when given.
    pub fn tls(&self) -> crate::Result<Option<std::sync::Arc<crate::server::tls::Tls>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(std::sync::Arc::new(crate::server::tls::Tls::load(cert, key)?))),
            _ => Ok(None),
        }
    }
}

/// How a client command ended.
#[derive(Debug)]
pub enum Failure {
    /// Exit 1: the server's error reply, or a connection problem.
    Failed(String),
    /// Exit 2: the command line is wrong.
    Usage(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Failed(_) => 1,
            Failure::Usage(_) => 2,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Failed(m) | Failure::Usage(m) => f.write_str(m),
        }
    }
}

fn failed(e: ClientError) -> Failure {
    Failure::Failed(e.to_string())
}

fn read_token(path: Option<&Path>) -> Result<Option<String>, Failure> {
    let token = match path {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("cannot read token file {}: {e}", path.display())))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        ),
        None => std::env::var("CHECKPOINTD_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    Ok(token)
}

/// Connects and authenticates (when there is a token), within
/// [`CONNECT_TIMEOUT`].
async fn connect(c: &Connection) -> Result<Client, Failure> {
    let token = read_token(c.token_file.as_deref())?;
    let tls = match c.url.starts_with("wss://") {
        true => {
            Some(crate::server::tls::client_config(c.ca_file.as_deref()).map_err(|e| Failure::Usage(e.to_string()))?)
        }
        false => None,
    };
    let connecting = async {
        let mut client = Client::connect_with(&c.url, tls).await.map_err(failed)?;
        if let Some(token) = token {
            client.authenticate(&token).await.map_err(failed)?;
        }
        Ok(client)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| Failure::Failed(format!("connection: no answer from {} within {CONNECT_TIMEOUT:?}", c.url)))?
}

/// Parses JSON-PARAMS (`-`: stdin; none: `{}`).
fn params(text: Option<&str>) -> Result<Value, Failure> {
    let text = match text {
        None => return Ok(Value::Object(Default::default())),
        Some("-") => {
            let mut all = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut all)
                .map_err(|e| Failure::Usage(format!("cannot read JSON-PARAMS from stdin: {e}")))?;
            all
        }
        Some(text) => text.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| Failure::Usage(format!("JSON-PARAMS is not JSON: {e}")))
}

/// `checkpointd call`: prints the result as one line of JSON on stdout.
pub async fn call(args: &CallArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let params = params(args.params.as_deref())?;
    let mut client = connect(&args.connection).await?;
    let result = client.call(&args.method, params).await.map_err(failed)?;
    let _ = client.close().await;
    writeln!(out, "{result}").and_then(|()| out.flush()).map_err(|e| Failure::Failed(format!("stdout: {e}")))
}

/// `checkpointd watch`: prints each event as a line of JSON until
/// interrupted (SIGINT, SIGTERM) or stdout is closed. A subscription that
/// lags (the client read too slowly) is resumed from its last event, after
/// printing the `subscription_lagged` notice.
pub async fn watch(args: &WatchArgs, out: &mut dyn Write) -> Result<(), Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| Failure::Failed(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Failure::Failed(e.to_string()))?;
    let mut client = connect(&args.connection).await?;
    let session: Value = args.session.clone().into();
    let subscribe = |since: Option<u64>| serde_json::json!({"session_id": session, "since": since});
    client.call("subscribe", subscribe(args.since)).await.map_err(failed)?;
    loop {
        let event = tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            event = client.next_event(Duration::from_secs(3600)) => event.map_err(failed)?,
        };
        let Some(event) = event else { continue };
        if writeln!(out, "{event}").and_then(|()| out.flush()).is_err() {
            // stdout closed (`| head`): done.
            return Ok(());
        }
        if event.get("event_type").and_then(Value::as_str) == Some("subscription_lagged") {
            let last = event.pointer("/data/last_seq").and_then(Value::as_u64);
            client.call("subscribe", subscribe(last)).await.map_err(failed)?;
        }
    }
}

/// A client command of the `checkpointd` binary.
pub enum ClientCommand {
    Call(CallArgs),
    Watch(WatchArgs),
}

/// Runs a client command on stdout; errors go to stderr as one line.
/// Returns the exit code.
pub fn run(command: ClientCommand) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("checkpointd: {e}");
            return 1;
        }
    };
    let mut out = std::io::stdout().lock();
    let (name, result) = match &command {
        ClientCommand::Call(args) => ("call", runtime.block_on(call(args, &mut out))),
        ClientCommand::Watch(args) => ("watch", runtime.block_on(watch(args, &mut out))),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("checkpointd {name}: {e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_default_to_an_empty_object_and_must_be_json() {
        assert_eq!(params(None).unwrap(), serde_json::json!({}));
        assert_eq!(params(Some(r#"{"a":1}"#)).unwrap(), serde_json::json!({"a": 1}));
        let e = params(Some("{nope")).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("not JSON"), "{e}");
    }
}
