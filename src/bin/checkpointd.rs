//! `checkpointd`: serve the WebSocket protocol on a data directory or a
//! PostgreSQL database.

use checkpointd::cli::{CallArgs, ClientCommand, ServeOps, WatchArgs};
use checkpointd::config::{DEFAULT_EVENT_RETENTION, Durability, StoreConfig};
use checkpointd::server::{self, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MESSAGE_BYTES, ServerConfig};
use checkpointd::service::Service;
use checkpointd::telemetry::LogFormat;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// A durable checkpoint server: programs save snapshots of their state over
/// WebSocket, list and restore them after a crash, and watch new ones live.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Mode>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Log lines on stderr: text (coloured only on a terminal, never with
    /// NO_COLOR set) or json (one object per line).
    #[arg(long, global = true, value_enum, env = "CHECKPOINTD_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// No progress bar or progress lines (import, migrations).
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Load a `checkpoint-dump export` into an empty data directory or
    /// PostgreSQL database, or a forge-reasoning export (`--forge-export`)
    /// into any data directory.
    Import(ImportArgs),
    /// Call one method on a running server and print its result as JSON
    /// (exit 1 with the error code on an error reply).
    Call(CallArgs),
    /// Print a session's events as JSON lines until interrupted.
    Watch(WatchArgs),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["file", "forge_export"])))]
struct ImportArgs {
    /// Data directory to load into (created when missing).
    #[arg(long, env = "CHECKPOINTD_DATA_DIR", default_value = "./checkpoint-data")]
    data_dir: PathBuf,
    /// PostgreSQL database to load into instead of a data directory (its
    /// schema is created when missing; it must hold no data).
    #[arg(long, env = "CHECKPOINTD_DATABASE_URL", value_name = "URL", conflicts_with_all = ["data_dir", "forge_export", "no_backup"])]
    database_url: Option<String>,
    /// A `checkpoint-dump export` file, or - for stdin. The data directory
    /// must be empty.
    file: Option<PathBuf>,
    /// A forge-reasoning `export_all_checkpoints` JSON file. Checkpoints whose
    /// id already exists are skipped.
    #[arg(long, value_name = "FILE")]
    forge_export: Option<PathBuf>,
    /// Keep forge checkpoints' `state` (it holds the forge host's environment
    /// variables); by default it is replaced by null.
    #[arg(long, requires = "forge_export", conflicts_with = "file")]
    keep_forge_state: bool,
    /// Do not copy the data directory before migrating an older format.
    #[arg(long)]
    no_backup: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// Data directory (created when missing).
    #[arg(long, env = "CHECKPOINTD_DATA_DIR", default_value = "./checkpoint-data")]
    data_dir: PathBuf,
    /// Serve a PostgreSQL database instead of a data directory, e.g.
    /// postgresql://user@host/db or postgresql:///db?host=/run/postgresql
    /// (the schema is created on first start). Any number of servers may
    /// serve one database. Give a password in the environment variable or a
    /// ~/.pgpass file, not on the command line, where `ps` shows it.
    #[arg(long, env = "CHECKPOINTD_DATABASE_URL", value_name = "URL", conflicts_with_all = ["data_dir", "no_backup"])]
    database_url: Option<String>,
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
    /// Bytes after which a state segment is sealed (and may be compacted).
    #[arg(long, env = "CHECKPOINTD_SEGMENT_BYTES", default_value_t = checkpointd::storage::segments::SEGMENT_BYTES, hide = true)]
    segment_bytes: u64,
    /// Allow listening on a non-loopback address without a token.
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Do not copy the data directory to `<DIR>.backup-v<old>` before
    /// migrating an older on-disk format.
    #[arg(long)]
    no_backup: bool,
    #[command(flatten)]
    ops: ServeOps,
}

fn main() -> ExitCode {
    checkpointd::panics::one_line("checkpointd");
    let cli = parse();
    checkpointd::telemetry::init_logging(cli.log_format);
    checkpointd::progress::set_quiet(cli.quiet);
    let result = match cli.command {
        Some(Mode::Serve(args)) => serve(args),
        Some(Mode::Import(args)) => import(args),
        Some(Mode::Call(args)) => return ExitCode::from(checkpointd::cli::run(ClientCommand::Call(args))),
        Some(Mode::Watch(args)) => return ExitCode::from(checkpointd::cli::run(ClientCommand::Watch(args))),
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

/// The command line. Serving options given before a subcommand would be
/// ignored by it, so they are refused; the global ones (`--log-format`,
/// `--quiet`) go before or after it.
fn parse() -> Cli {
    let mut command = Cli::command();
    let matches = command.get_matches_mut();
    if let Some(sub) = matches.subcommand_name() {
        let misplaced = command.get_arguments().find(|a| {
            !a.is_global_set() && matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine)
        });
        if let Some(arg) = misplaced {
            let flag = arg.get_long().map_or_else(|| arg.get_id().to_string(), |l| format!("--{l}"));
            command
                .error(ErrorKind::ArgumentConflict, format!("{flag} is a serving option: it cannot go before `{sub}`"))
                .exit();
        }
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
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
    if let Err(e) = server::raise_open_files_limit() {
        tracing::warn!(error = %e, "could not raise the open-files limit");
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
        let tls = args.ops.tls().map_err(|e| e.to_string())?;
        let metrics_listener = match &args.ops.metrics_listen {
            Some(at) => Some(
                tokio::net::TcpListener::bind(at)
                    .await
                    .map_err(|e| format!("cannot listen on {at} for metrics: {e}"))?,
            ),
            None => None,
        };
        // Before `listening on`: a SIGTERM right after it must stop the
        // server cleanly, not kill it.
        let shutdown = shutdown_signal();
        let store = StoreConfig {
            durability: args.durability,
            event_retention: args.event_retention,
            backup_before_migrate: !args.no_backup,
            segment_bytes: args.segment_bytes.max(4096),
            ..StoreConfig::new(&args.data_dir)
        };
        let (service, serving) = match &args.database_url {
            Some(url) => {
                let described = checkpointd::storage::postgres::describe_url(url).map_err(|e| e.to_string())?;
                let pg = checkpointd::storage::PgStore::open(url, &store)
                    .await
                    .map_err(|e| format!("cannot serve PostgreSQL database {described}: {e}"))?;
                (Service::new(std::sync::Arc::new(pg)), format!("PostgreSQL database {described}"))
            }
            None => (
                Service::open(store).map_err(|e| e.to_string())?,
                format!("data directory {}", args.data_dir.display()),
            ),
        };
        if let Some(tls) = &tls {
            tls.reload_on_sighup().map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
        }
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        let config = ServerConfig {
            token,
            max_connections: args.max_connections,
            max_message_bytes: args.max_message_bytes,
            tls,
            ..ServerConfig::default()
        };
        tracing::info!(serving = %serving, durability = args.durability.as_str(), "serving");
        if args.database_url.is_some() {
            // The address first, whole: parsers take what follows the
            // prefix up to the first space.
            println!("listening on {scheme}://{addr} serving {serving}");
        } else {
            println!("listening on {scheme}://{addr}");
        }
        if let Some(at) = metrics_listener.as_ref().and_then(|l| l.local_addr().ok()) {
            println!("metrics on http://{at}/metrics");
        }
        let _ = std::io::stdout().flush();
        server::run_with(listener, metrics_listener, service, config, shutdown).await.map_err(|e| e.to_string())
    })
}

fn import(args: ImportArgs) -> Result<(), String> {
    use checkpointd::storage::{Backend, Store};
    enum Input {
        Forge(String),
        Export(Box<dyn std::io::BufRead>),
    }
    let cannot_read = |path: &std::path::Path, e: std::io::Error| format!("cannot read {}: {e}", path.display());
    // The input is opened first, so a wrong path creates no data directory.
    let input = match (&args.forge_export, &args.file) {
        (Some(path), _) => Input::Forge(std::fs::read_to_string(path).map_err(|e| cannot_read(path, e))?),
        (None, Some(path)) if path.as_os_str() == "-" => Input::Export(Box::new(std::io::stdin().lock())),
        (None, Some(path)) => {
            let file = std::fs::File::open(path).map_err(|e| cannot_read(path, e))?;
            Input::Export(Box::new(std::io::BufReader::new(file)))
        }
        (None, None) => unreachable!("clap requires a file or --forge-export"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    if let Some(url) = &args.database_url {
        let Input::Export(reader) = input else { unreachable!("clap: --forge-export conflicts with --database-url") };
        return runtime.block_on(import_into_database(url, reader));
    }
    runtime.block_on(async {
        let config = StoreConfig { backup_before_migrate: !args.no_backup, ..StoreConfig::new(&args.data_dir) };
        let dir = args.data_dir.display();
        let store = Store::open(config).map_err(|e| e.to_string())?;
        let result = match input {
            Input::Forge(text) => {
                checkpointd::transfer::import_forge(&store, &text, args.keep_forge_state).await.map(|r| {
                    format!(
                        "imported {} forge checkpoints into {dir}: {} skipped (id already present), {} sessions created, {} existing sessions extended; global sequence {}",
                        r.imported, r.skipped, r.sessions_created, r.sessions_reused, r.global_sequence
                    )
                })
            }
            Input::Export(reader) => checkpointd::transfer::import(&store, reader).await.map(|c| {
                format!(
                    "imported {} sessions, {} checkpoints, {} annotations, {} pending writes into {dir}",
                    c.sessions, c.checkpoints, c.annotations, c.writes
                )
            }),
        };
        store.close();
        let report = result.map_err(|e| e.to_string())?;
        println!("{report}");
        Ok(())
    })
}

/// `import --database-url`: an export into an empty PostgreSQL database.
async fn import_into_database(url: &str, reader: Box<dyn std::io::BufRead>) -> Result<(), String> {
    use checkpointd::storage::Backend;
    let described = checkpointd::storage::postgres::describe_url(url).map_err(|e| e.to_string())?;
    let store = checkpointd::storage::PgStore::open(url, &StoreConfig::new("."))
        .await
        .map_err(|e| format!("cannot open PostgreSQL database {described}: {e}"))?;
    let result = checkpointd::transfer::import(&store, reader).await;
    store.close();
    let c = result.map_err(|e| e.to_string())?;
    println!(
        "imported {} sessions, {} checkpoints, {} annotations, {} pending writes into PostgreSQL database {described}",
        c.sessions, c.checkpoints, c.annotations, c.writes
    );
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now; the future ends at either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks the definition (names, conflicts, globals) only when asked.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
