//! Group commit: makes acknowledged writes durable, sharing one fsync among
//! every writer that is waiting for it.
//!
//! sled 0.34's `flush()` only calls `sync_file_range` on Linux: the pages
//! reach the device but neither the file's metadata nor the drive's cache is
//! flushed, so a power loss can still take them. After each flush this thread
//! therefore calls `fdatasync` on sled's data file, and on any new blob files
//! sled wrote beside it (sled writes large nodes there without syncing them).
//!
//! Writers take a ticket after their transaction is applied in memory; one
//! thread flushes everything applied so far and publishes the highest ticket
//! (and event sequence) that is now durable. Writers that arrive while a flush
//! runs are covered by the next one, so throughput grows with concurrency.
//! The flush runs on its own OS thread: `Tree::flush_async` can deadlock in
//! sled 0.34.7 (sled #1308).

use crate::config::{ASYNC_FLUSH_INTERVAL, Durability};
use crate::error::{Error, Result};
use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use tokio::sync::watch;

/// Proof that a write was applied; wait on it to know it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// What is safe to acknowledge and to show subscribers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    /// Every ticket up to this one is on disk.
    pub ticket: u64,
    /// Journal events up to this sequence may be delivered: in `sync` mode
    /// they are durable; in `async` mode they are acknowledged.
    pub event_seq: u64,
    /// A flush or fsync failed: nothing more will be acknowledged.
    pub failed: bool,
    /// The store was closed: nothing more will be acknowledged.
    pub closed: bool,
}

struct Pending {
    /// Last ticket handed out.
    issued: u64,
    /// Last ticket the flushing thread has taken on.
    taken: u64,
    /// Event sequence of the newest applied write.
    event_seq: u64,
    closing: bool,
}

struct Shared {
    mode: Durability,
    pending: Mutex<Pending>,
    wake: Condvar,
    synced: watch::Sender<Synced>,
    db: sled::Db,
    dir: PathBuf,
    data_file: File,
}

pub struct Committer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Committer {
    /// Starts the flushing thread for `db`, stored in `dir`, whose journal
    /// currently ends at `event_seq` (all of it on disk).
    pub fn start(db: sled::Db, dir: &Path, mode: Durability, event_seq: u64) -> Result<Committer> {
        let data_file = File::open(dir.join("db"))?;
        // The directory entries sled created must survive a power loss too.
        File::open(dir.join("conf"))?.sync_all()?;
        data_file.sync_all()?;
        File::open(dir)?.sync_all()?;
        let (synced, _) = watch::channel(Synced { ticket: 0, event_seq, failed: false, closed: false });
        let shared = Arc::new(Shared {
            mode,
            pending: Mutex::new(Pending { issued: 0, taken: 0, event_seq, closing: false }),
            wake: Condvar::new(),
            synced,
            db,
            dir: dir.to_path_buf(),
            data_file,
        });
        let thread_shared = Arc::clone(&shared);
        let thread =
            std::thread::Builder::new().name("checkpointd-commit".into()).spawn(move || thread_shared.run())?;
        Ok(Committer { shared, thread: Mutex::new(Some(thread)) })
    }

    /// Records that a write ending the journal at `event_seq` was applied.
    /// Called with the store's write lock held, so tickets and event
    /// sequences rise together.
    pub fn applied(&self, event_seq: u64) -> Ticket {
        let mut p = self.shared.pending.lock().expect("commit lock");
        p.issued += 1;
        p.event_seq = event_seq;
        match self.shared.mode {
            Durability::Sync => self.shared.wake.notify_one(),
            Durability::Async => {
                self.shared.synced.send_modify(|s| s.event_seq = s.event_seq.max(event_seq));
                // Only the first write of a window wakes the thread.
                if p.issued == p.taken + 1 {
                    self.shared.wake.notify_one();
                }
            }
        }
        Ticket(p.issued)
    }

    /// Returns once the write behind `ticket` is as durable as the mode
    /// promises: on disk (`sync`) or applied (`async`).
    pub async fn wait(&self, ticket: Ticket) -> Result<()> {
        if self.shared.mode == Durability::Async {
            return self.check();
        }
        let mut rx = self.shared.synced.subscribe();
        let synced = rx.wait_for(|s| s.ticket >= ticket.0 || s.failed || s.closed).await.map_err(|_| closed())?;
        if synced.ticket >= ticket.0 {
            Ok(())
        } else if synced.failed {
            Err(failed())
        } else {
            // Applied after the final flush of `close`: never acknowledged.
            Err(closed())
        }
    }

    /// Fails when an earlier flush failed (fail-closed) or the store is closed.
    pub fn check(&self) -> Result<()> {
        let synced = self.shared.synced.borrow();
        if synced.failed {
            Err(failed())
        } else if synced.closed {
            Err(closed())
        } else {
            Ok(())
        }
    }

    /// Marks the store failed: a write reached sled but may not be on disk.
    pub fn fail(&self) {
        self.shared.synced.send_modify(|s| s.failed = true);
    }

    /// Watermarks for event delivery.
    pub fn subscribe(&self) -> watch::Receiver<Synced> {
        self.shared.synced.subscribe()
    }

    /// Flushes what is pending and stops the thread. Idempotent.
    pub fn close(&self) {
        self.shared.pending.lock().expect("commit lock").closing = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.lock().expect("thread lock").take() {
            let _ = t.join();
        }
        // Also when the thread had already stopped on a failure.
        self.shared.synced.send_modify(|s| s.closed = true);
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.close();
    }
}

/// How long the commit thread waits for a free descriptor before failing.
const DESCRIPTOR_RETRIES: u32 = 100;
const DESCRIPTOR_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn closed() -> Error {
    Error::Unavailable("the store is closed (shutting down)".into())
}

fn failed() -> Error {
    Error::Unavailable("storage failed to persist a write; refusing further writes until restart".into())
}

impl Shared {
    fn run(&self) {
        let mut synced_blobs = HashSet::new();
        loop {
            let (target, event_seq, closing) = {
                let mut p = self.pending.lock().expect("commit lock");
                // Sleeps until there is work: an idle server uses no CPU.
                while p.issued == p.taken && !p.closing {
                    p = self.wake.wait(p).expect("commit lock");
                }
                // In async mode a whole window of writes shares one flush.
                if self.mode == Durability::Async && !p.closing {
                    p = self.wake.wait_timeout(p, ASYNC_FLUSH_INTERVAL).expect("commit lock").0;
                }
                p.taken = p.issued;
                (p.issued, p.event_seq, p.closing)
            };
            if let Err(e) = self.flush(&mut synced_blobs) {
                tracing::error!(error = %e, "flush to disk failed; the store now refuses writes");
                self.synced.send_modify(|s| s.failed = true);
                return;
            }
            self.synced.send_modify(|s| {
                s.ticket = s.ticket.max(target);
                s.event_seq = s.event_seq.max(event_seq);
                // After the final flush, waiters for later tickets give up.
                s.closed |= closing;
            });
            if closing {
                return;
            }
        }
    }

    fn flush(&self, synced_blobs: &mut HashSet<OsString>) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::other)?;
        self.data_file.sync_data()?;
        // Listing the blobs needs a descriptor. Running out of them (clients
        // holding the rest) is not a disk failure: wait for one to be freed
        // rather than fail the store closed.
        let mut attempts = 0;
        loop {
            match self.sync_blobs(synced_blobs) {
                Err(e) if is_out_of_descriptors(&e) && attempts < DESCRIPTOR_RETRIES => {
                    attempts += 1;
                    tracing::warn!(error = %e, "out of file descriptors while syncing blobs; retrying");
                    std::thread::sleep(DESCRIPTOR_RETRY_PAUSE);
                }
                other => return other,
            }
        }
    }

    /// fsyncs blob files sled created since the last flush, then their
    /// directory. Usually the directory is empty and this is one readdir.
    fn sync_blobs(&self, synced: &mut HashSet<OsString>) -> std::io::Result<()> {
        let blobs = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = HashSet::new();
        let mut new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    // sled may remove an obsolete blob while we list.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new = true;
            }
            present.insert(name);
        }
        if new {
            File::open(&blobs)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }
}
