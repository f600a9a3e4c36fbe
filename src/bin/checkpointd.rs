//! `checkpointd`: serve the WebSocket protocol on a data directory.

use checkpointd::config::{DEFAULT_EVENT_RETENTION, Durability, StoreConfig};
use checkpointd::server::{self, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MESSAGE_BYTES, ServerConfig};
use checkpointd::service::Service;
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// A durable checkpoint server: programs save snapshots of their state over
/// WebSocket, list and restore them after a crash, and watch new ones live.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default when no subcommand is given).
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Data directory (created when missing).
    #[arg(long, env = "CHECKPOINTD_DATA_DIR", default_value = "./checkpoint-data")]
    data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "CHECKPOINTD_LISTEN", default_value = "127.0.0.1:7700")]
    listen: String,
    /// File holding the token clients must `authenticate` with (a trailing
    /// newline is ignored). The token may instead be given in
    /// CHECKPOINTD_TOKEN; never on the command line, where `ps` shows it.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Most simultaneous clients; more get "Server at capacity".
    #[arg(long, env = "CHECKPOINTD_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Largest WebSocket message in bytes; larger ones close the connection (1009).
    #[arg(long, env = "CHECKPOINTD_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// sync: acknowledged writes survive power loss (fsync, shared by
    /// concurrent writers). async: acknowledged when applied in memory,
    /// synced within 100 ms.
    #[arg(long, env = "CHECKPOINTD_DURABILITY", default_value = "sync")]
    durability: Durability,
    /// Journal events kept for `subscribe` with `since`.
    #[arg(long, env = "CHECKPOINTD_EVENT_RETENTION", default_value_t = DEFAULT_EVENT_RETENTION)]
    event_retention: u64,
    /// Allow listening on a non-loopback address without a token.
    #[arg(long)]
    allow_unauthenticated: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Serve(args)) => serve(args),
        None => serve(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("checkpointd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_token(args: &ServeArgs) -> Result<Option<String>, String> {
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        ),
        None => std::env::var("CHECKPOINTD_TOKEN").ok(),
    };
    match token {
        Some(t) if t.is_empty() => Err("the token is empty".into()),
        t => Ok(t),
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let token = read_token(&args)?;
    if args.max_connections == 0 || args.max_message_bytes < 1024 || args.event_retention == 0 {
        return Err(
            "--max-connections and --event-retention must be positive, --max-message-bytes at least 1024".into()
        );
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        // Checked before binding, so a refused address is never exposed.
        let addrs: Vec<_> = tokio::net::lookup_host(&args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?
            .collect();
        for addr in &addrs {
            server::check_exposure(*addr, token.as_deref(), args.allow_unauthenticated).map_err(|e| e.to_string())?;
        }
        let listener = tokio::net::TcpListener::bind(addrs.as_slice())
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let store = StoreConfig {
            durability: args.durability,
            event_retention: args.event_retention,
            ..StoreConfig::new(&args.data_dir)
        };
        let service = Service::open(store).map_err(|e| e.to_string())?;
        let config =
            ServerConfig { token, max_connections: args.max_connections, max_message_bytes: args.max_message_bytes };
        tracing::info!(data_dir = %args.data_dir.display(), durability = args.durability.as_str(), "serving");
        println!("listening on ws://{addr}");
        let _ = std::io::stdout().flush();
        server::run(listener, service, config, shutdown_signal()).await.map_err(|e| e.to_string())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
