//! `checkpoint-dump`: inspect a checkpointd data directory or PostgreSQL
//! database without changing it.
//!
//! Exit codes: 0 ok, 1 problems found or an error, 2 usage.

use checkpointd::dump::{self, Action, Options};
use checkpointd::model::{CheckpointId, SessionId};
use clap::{Parser, Subcommand};
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Inspect a checkpointd data directory or PostgreSQL database: it is never
/// changed (the tool reads a private copy of a directory, or a database
/// through a read-only snapshot). Human-readable tables by default, JSON
/// lines with --json.
#[derive(Parser)]
#[command(name = "checkpoint-dump", version)]
struct Cli {
    /// Data directory to inspect.
    #[arg(long, global = true, env = "CHECKPOINTD_DATA_DIR", default_value = "./checkpoint-data")]
    data_dir: PathBuf,
    /// Read this PostgreSQL database instead of a data directory, read-only,
    /// in one snapshot (servers may go on writing meanwhile).
    #[arg(long, global = true, env = "CHECKPOINTD_DATABASE_URL", value_name = "URL", conflicts_with_all = ["data_dir", "snapshot"])]
    database_url: Option<String>,
    /// Print JSON lines (one object per row), for jq.
    #[arg(long, global = true)]
    json: bool,
    /// Read a consistent copy of a directory a server is running on: the
    /// server pauses its writes while the files are copied (without a server,
    /// the directory's lock is taken as usual).
    #[arg(long, global = true)]
    snapshot: bool,
    /// No progress bar or progress lines (export, migrating a copy).
    #[arg(long, global = true)]
    quiet: bool,
    /// Progress lines on stderr (when it is not a terminal) as text or json.
    #[arg(long, global = true, value_enum, env = "CHECKPOINTD_LOG_FORMAT", default_value = "text")]
    log_format: checkpointd::telemetry::LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Format version, counts, sequences, oldest retained event, bytes on disk.
    Summary,
    /// One row per session, in creation order.
    Sessions,
    /// One session's checkpoints in sequence order.
    Checkpoints {
        #[arg(long)]
        session: SessionId,
        /// Add each checkpoint's state.
        #[arg(long)]
        with_state: bool,
    },
    /// One checkpoint with state, metadata, parent and annotations.
    Checkpoint { id: CheckpointId },
    /// The event journal.
    Events {
        /// Only events with a sequence above this one (exclusive).
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// At most this many events.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Check every checksum, index entry, record and counter; exit 1 on any problem.
    Verify,
    /// Everything as JSON lines, for `checkpointd import`.
    Export,
    /// Write a consistent, fsynced copy of the data directory (served or not)
    /// to DEST, which must not exist or be empty; `checkpointd --data-dir
    /// DEST` serves it. Prints one summary line.
    Backup { dest: PathBuf },
}

/// Stdout that treats a closed pipe (`| head`) as the end of the output.
struct Out<W: Write>(W, bool);

impl<W: Write> Write for Out<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.1 {
            return Ok(buf.len());
        }
        match self.0.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.1 = true;
                Ok(buf.len())
            }
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.1 {
            return Ok(());
        }
        match self.0.flush() {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.1 = true;
                Ok(())
            }
            other => other,
        }
    }
}

fn main() -> ExitCode {
    checkpointd::panics::one_line("checkpoint-dump");
    let cli = Cli::parse();
    checkpointd::telemetry::init_progress_logging(cli.log_format);
    checkpointd::progress::set_quiet(cli.quiet);
    let action = match cli.command {
        Cmd::Summary => Action::Summary,
        Cmd::Sessions => Action::Sessions,
        Cmd::Checkpoints { session, with_state } => Action::Checkpoints { session, with_state },
        Cmd::Checkpoint { id } => Action::Checkpoint { id },
        Cmd::Events { since, limit } => Action::Events { since, limit },
        Cmd::Verify => Action::Verify,
        Cmd::Export => Action::Export,
        Cmd::Backup { dest } => Action::Backup { dest },
    };
    let opts =
        Options { data_dir: cli.data_dir, database_url: cli.database_url, json: cli.json, snapshot: cli.snapshot };
    let mut out = Out(io::BufWriter::new(io::stdout().lock()), false);
    match dump::run(&opts, &action, &mut out) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            let _ = out.flush();
            eprintln!("checkpoint-dump: {e}");
            ExitCode::FAILURE
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
