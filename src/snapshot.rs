//! Consistent copies of a data directory, also while a server writes to it:
//! `checkpoint-dump --snapshot` and `checkpoint-dump backup`.
//!
//! A file copy taken while sled writes is not a crash image: the `db` file
//! changes under the copier, and a blob file can be created or removed
//! between listing the directory and reading it. So a running server listens
//! on a local control socket in its data directory ([`SOCKET_NAME`], mode
//! 0600: only the directory's owner, or root, can connect). A copier first
//! copies the directory as it is, then asks for a pause; the server stops
//! writes at the store's gate, flushes and fsyncs everything applied
//! ([`Backend::pause_writes`]) and answers; the copier brings its copy up to
//! date (every file again but the blob files it already has whole, which
//! sled never rewrites) and says `resume`. Writers wait meanwhile;
//! readers and subscribers do not. The pause ends when the copier resumes,
//! disconnects, or after [`MAX_WRITE_PAUSE`]; in the last case the copier is
//! told, and its copy is refused. With no server running, the copy is taken
//! under the directory's lock instead, as `checkpoint-dump` always did.
//!
//! The protocol is JSON lines, one request at a time:
//!
//! ```text
//! -> {"op":"pause"}
//! <- {"paused":true,"global_sequence":7,"event_sequence":11,"checkpoints":3,"sessions":2}
//! -> {"op":"resume"}
//! <- {"resumed":true,"paused_ms":412}
//! ```
//!
//! or `{"error":"..."}` in place of either answer.

use crate::error::{Error, Result};
use crate::storage::datadir::{self, Access};
use crate::storage::{Backend, SharedBackend, WritePause, dircopy};
use serde::{Deserialize, Serialize};
use std::fs::{File, TryLockError};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, broadcast};

/// The control socket, inside the data directory.
pub const SOCKET_NAME: &str = "control.sock";
/// The longest a copier may hold writes. A copy of 1 GB takes a few
/// seconds (BENCHMARKS.md); a copier that is stuck must not stop writers
/// for good.
pub const MAX_WRITE_PAUSE: Duration = Duration::from_secs(120);
/// Control connections served at once; more wait in the kernel's backlog.
const MAX_CONTROL_CONNECTIONS: usize = 4;
/// Longest request line.
const MAX_LINE_BYTES: u64 = 1024;
/// How long a copier waits for the server to pause (in-flight writes to
/// finish and one flush).
const PAUSE_REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a connection may stay silent before its first request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A line a copier sends on the control socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum ControlRequest {
    Pause,
    Resume,
}

/// The server's answer, one line.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ControlReply {
    #[serde(skip_serializing_if = "Option::is_none")]
    paused: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resumed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    paused_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    global_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoints: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sessions: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl ControlReply {
    fn error(message: impl Into<String>) -> ControlReply {
        ControlReply { error: Some(message.into()), ..ControlReply::default() }
    }
}

// ----- the server's end ------------------------------------------------------

/// The control socket of a running server; removed when dropped.
pub struct ControlSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `<data_dir>/control.sock`, replacing one a killed server left
    /// (whoever holds the store holds the directory's lock, so no live
    /// server owns it).
    pub fn bind(data_dir: &Path) -> std::io::Result<ControlSocket> {
        let path = data_dir.join(SOCKET_NAME);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = with_short_path(&path, |p| tokio::net::UnixListener::bind(p))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ControlSocket { listener, path })
    }

    /// Serves pause requests until `shutdown` fires.
    pub async fn serve(self, store: SharedBackend, mut shutdown: broadcast::Receiver<()>) {
        let slots = Arc::new(Semaphore::new(MAX_CONTROL_CONNECTIONS));
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
            let stream = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        continue;
                    }
                },
                _ = shutdown.recv() => return,
            };
            let store = Arc::clone(&store);
            let shutdown = shutdown.resubscribe();
            tokio::spawn(async move {
                if let Err(e) = control_connection(stream, &*store, shutdown).await {
                    tracing::debug!(error = %e, "control connection ended");
                }
                drop(permit);
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn control_connection(
    stream: tokio::net::UnixStream,
    store: &dyn Backend,
    mut shutdown: broadcast::Receiver<()>,
) -> std::io::Result<()> {
    enum State {
        Idle,
        Paused(WritePause, Instant),
        /// The pause ended without the copier: its copy must be refused.
        Expired,
    }
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read);
    let mut state = State::Idle;
    let mut stopping = false;
    loop {
        let deadline = match &state {
            State::Paused(_, since) => *since + MAX_WRITE_PAUSE,
            State::Idle | State::Expired => Instant::now() + REQUEST_TIMEOUT,
        };
        let mut line = String::new();
        let mut limited = (&mut lines).take(MAX_LINE_BYTES);
        let read = tokio::select! {
            read = limited.read_line(&mut line) => Some(read?),
            () = tokio::time::sleep_until(deadline.into()) => None,
            _ = shutdown.recv(), if !stopping => { stopping = true; None }
        };
        let Some(n) = read else {
            match state {
                State::Paused(held, since) => {
                    drop(held);
                    tracing::warn!(
                        paused_ms = since.elapsed().as_millis() as u64,
                        "a snapshot pause ended without the copier resuming it; writes resume"
                    );
                    // The copier is told when it next asks.
                    state = State::Expired;
                    continue;
                }
                State::Idle | State::Expired => return Ok(()),
            }
        };
        if n == 0 {
            // The copier went away: a pause it held ends here.
            return Ok(());
        }
        let request = serde_json::from_str::<ControlRequest>(line.trim());
        let reply = match (request, &state) {
            (Err(e), _) => ControlReply::error(format!("bad request: {e}")),
            (Ok(_), State::Expired) => ControlReply::error(format!(
                "the pause ended before the copy did (it lasts at most {} s, and ends when the server shuts down); the copy is not consistent",
                MAX_WRITE_PAUSE.as_secs()
            )),
            (Ok(ControlRequest::Pause), State::Paused(..)) => ControlReply::error("already paused"),
            (Ok(ControlRequest::Pause), State::Idle) if stopping => ControlReply::error("the server is shutting down"),
            (Ok(ControlRequest::Pause), State::Idle) => match store.pause_writes().await {
                Ok(held) => {
                    let m = held.metrics;
                    state = State::Paused(held, Instant::now());
                    tracing::info!("writes paused for a snapshot");
                    ControlReply {
                        paused: Some(true),
                        global_sequence: Some(m.global_sequence),
                        event_sequence: Some(m.event_sequence),
                        checkpoints: Some(m.total_checkpoints),
                        sessions: Some(m.active_sessions),
                        ..ControlReply::default()
                    }
                }
                Err(e) => ControlReply::error(e.to_string()),
            },
            (Ok(ControlRequest::Resume), State::Idle) => ControlReply::error("not paused"),
            (Ok(ControlRequest::Resume), State::Paused(_, since)) => {
                let paused_ms = since.elapsed().as_millis() as u64;
                state = State::Idle;
                tracing::info!(paused_ms, "writes resumed after a snapshot");
                ControlReply { resumed: Some(true), paused_ms: Some(paused_ms), ..ControlReply::default() }
            }
        };
        let mut text = serde_json::to_string(&reply).map_err(std::io::Error::other)?;
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
    }
}

// ----- the copier's end ------------------------------------------------------

/// How a copy was made consistent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consistency {
    /// A running server paused its writes for this long.
    Paused { paused: Duration },
    /// No server was running: the directory's lock was held while copying.
    Locked,
}

/// A consistent copy of a data directory.
#[derive(Debug, Clone)]
pub struct Copied {
    pub bytes: u64,
    pub consistency: Consistency,
}

/// Refuses what is not a data directory, so nothing is ever created or
/// copied from a wrong path; what is wrong with it is said in one line.
pub fn check_data_dir(dir: &Path) -> Result<()> {
    let survey = datadir::survey(dir, dir, Access::Inspect)?;
    if !survey.had_db || !dir.join("conf").is_file() {
        return Err(Error::NotFound(format!(
            "{} is not a checkpointd data directory (no sled database in it)",
            dir.display()
        )));
    }
    Ok(())
}

fn locked(dir: &Path) -> Error {
    Error::Unavailable(format!(
        "data directory {} is locked by a running checkpointd server; use --snapshot to read a copy of it",
        dir.display()
    ))
}

/// Copies `dir` into `dest` (created when missing) under the directory's
/// lock (the `flock` on `db` that sled takes): fails when a server holds it.
/// Files are not fsynced.
pub fn copy_locked(dir: &Path, dest: &Path) -> Result<u64> {
    check_data_dir(dir)?;
    // A read-only descriptor suffices for the lock and changes nothing.
    let file = File::open(dir.join("db"))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(locked(dir)),
        Err(TryLockError::Error(e)) => return Err(e.into()),
    }
    dircopy::copy_dir(dir, dest, false).map_err(|e| cannot_copy(dir, e))
}

fn cannot_copy(dir: &Path, e: std::io::Error) -> Error {
    Error::Unavailable(format!("cannot copy data directory {}: {e}", dir.display()))
}

/// Copies `dir` into `dest` consistently: through a pause of the server that
/// runs on it, or under its lock when none does. Files are not fsynced.
pub fn copy_consistent(dir: &Path, dest: &Path) -> Result<Copied> {
    check_data_dir(dir)?;
    let socket = dir.join(SOCKET_NAME);
    let stream = match with_short_path(&socket, |p| UnixStream::connect(p)) {
        Ok(stream) => stream,
        // No server is running (or it was killed and left its socket).
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            let bytes = copy_locked(dir, dest).map_err(|e| match e {
                Error::Unavailable(_) => Error::Unavailable(format!(
                    "data directory {} is locked by a checkpointd that does not answer on {}; is it an older version?",
                    dir.display(),
                    socket.display()
                )),
                other => other,
            })?;
            return Ok(Copied { bytes, consistency: Consistency::Locked });
        }
        Err(e) => return Err(Error::Unavailable(format!("cannot reach the server at {}: {e}", socket.display()))),
    };
    let mut control = Control::new(stream)?;
    // Most of the copy is taken while the server writes (blob files, which
    // sled never changes once written, are most of a large directory); the
    // pause only brings it up to date.
    dircopy::copy_dir(dir, dest, false).map_err(|e| cannot_copy(dir, e))?;
    control.call(&ControlRequest::Pause, PAUSE_REPLY_TIMEOUT)?;
    let bytes = dircopy::refresh_copy(dir, dest).map_err(|e| cannot_copy(dir, e))?;
    let resumed = control.call(&ControlRequest::Resume, REQUEST_TIMEOUT)?;
    let paused = Duration::from_millis(resumed.paused_ms.unwrap_or_default());
    Ok(Copied { bytes, consistency: Consistency::Paused { paused } })
}

/// The copier's connection.
struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    fn new(stream: UnixStream) -> Result<Control> {
        let writer = stream.try_clone()?;
        Ok(Control { reader: BufReader::new(stream), writer })
    }

    fn call(&mut self, request: &ControlRequest, timeout: Duration) -> Result<ControlReply> {
        let unreachable = |e: std::io::Error| Error::Unavailable(format!("the server's control socket: {e}"));
        let mut text = serde_json::to_string(request).map_err(|e| Error::Internal(e.to_string()))?;
        text.push('\n');
        self.writer.write_all(text.as_bytes()).map_err(unreachable)?;
        self.reader.get_ref().set_read_timeout(Some(timeout)).map_err(unreachable)?;
        let mut line = String::new();
        std::io::Read::take(&mut self.reader, 64 * 1024).read_line(&mut line).map_err(unreachable)?;
        if line.is_empty() {
            return Err(Error::Unavailable("the server closed its control socket (shutting down?)".into()));
        }
        let reply: ControlReply = serde_json::from_str(line.trim())
            .map_err(|e| Error::Internal(format!("the server's control socket answered {line:?}: {e}")))?;
        match reply.error {
            Some(e) => Err(Error::Unavailable(format!("the server refused the snapshot: {e}"))),
            None => Ok(reply),
        }
    }
}

/// Runs `f` on `path`, or, when `path` is too long for a Unix socket
/// address (108 bytes on Linux), on the same name reached through an open
/// descriptor of its directory (`/proc/self/fd/N/NAME`).
fn with_short_path<T>(path: &Path, f: impl FnOnce(&Path) -> std::io::Result<T>) -> std::io::Result<T> {
    use std::os::unix::ffi::OsStrExt;
    const MAX_SOCKET_PATH: usize = 100;
    if path.as_os_str().as_bytes().len() <= MAX_SOCKET_PATH {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return f(path) };
    let dir = File::open(dir)?;
    use std::os::fd::AsRawFd;
    let short = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name);
    f(&short)
}

// ----- backups -----------------------------------------------------------------

/// What [`backup`] made.
#[derive(Debug, Clone)]
pub struct Backup {
    pub dest: PathBuf,
    pub copied: Copied,
    /// The backup as a server will find it.
    pub summary: crate::storage::inspect::Summary,
}

/// Copies the data directory `dir` (served or not) into `dest`, which must
/// not exist or be empty: a consistent image ([`copy_consistent`]) that is
/// then opened in place, so that the last change is completed exactly as a
/// server would, and fsynced whole. `checkpointd --data-dir DEST` serves it.
/// On failure, nothing is left in `dest`.
pub fn backup(dir: &Path, dest: &Path) -> Result<Backup> {
    check_data_dir(dir)?;
    let existed = match std::fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::InvalidParams(format!(
                    "backup destination {} is not empty; name a new or empty directory",
                    dest.display()
                )));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::InvalidParams(format!("backup destination {}: {e}", dest.display()))),
    };
    let made = (|| -> Result<Backup> {
        std::fs::create_dir_all(dest)?;
        let copied = copy_consistent(dir, dest)?;
        let summary = {
            let inspector = crate::storage::inspect::Inspector::open_own_copy(dest)?;
            let mut summary = inspector.summary()?;
            summary.data_dir = dest.to_path_buf();
            summary
        };
        // Everything, including what opening it wrote, survives a power cut.
        dircopy::sync_tree(dest)?;
        if let Some(parent) = std::path::absolute(dest)?.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(Backup { dest: dest.to_path_buf(), copied, summary })
    })();
    if made.is_err() {
        let _ = std::fs::remove_dir_all(dest);
        if existed {
            let _ = std::fs::create_dir(dest);
        }
    }
    made
}
