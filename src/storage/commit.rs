//! Group commit: makes acknowledged writes durable, sharing one fsync among
//! every writer that is waiting for it.
//!
//! Since format 4 a change is durable once its intent, appended to the
//! state segments, is (`change`): a group commit is one `fdatasync` of the
//! active segment. sled's log is flushed only by a *full* flush: every
//! [`SLED_FLUSH_INTERVAL`] while writes come in (which bounds what an open
//! re-applies), and whenever everything must be in sled itself (compaction
//! removing a segment, a backup's pause, shutdown, open).
//!
//! A full flush: the segments, then `Db::flush` (which the vendored sled
//! makes an `fdatasync` of its log; sled as published only calls
//! `sync_file_range`), an `fdatasync` of sled's `db`, and any new blob file
//! sled wrote beside it (sled writes large nodes there without syncing
//! them). The vendored sled (`vendor/README.md`) also syncs its log buffers
//! and blob files itself, so the blob syncs are a second line.
//!
//! Writers take a ticket after their change is applied in memory. In
//! `sync` mode the first writer to wait becomes the *leader*: on its own
//! thread (no hand-off to another thread and back, which cost more than
//! the fsync at one client) it syncs everything applied so far and
//! publishes the highest ticket (and event sequence) now durable; writers
//! that arrive meanwhile wait, and the next of them leads the next group,
//! so throughput grows with concurrency. The commit thread does the rest:
//! `async` windows and full flushes (`Tree::flush_async` can deadlock in
//! sled 0.34.7, sled #1308, so sled is flushed from a plain thread).

use super::datadir;
use super::error::{Result, StorageError};
use super::records::{Counters, Mark};
use super::segments::Segments;
use crate::config::{ASYNC_FLUSH_DELAY, ASYNC_FLUSH_INTERVAL, Durability, MARK_INTERVAL, SLED_FLUSH_INTERVAL};
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Told about every group commit that made writes durable (metrics): how
/// many writes it covered and how long its sync (or full flush) took. Called
/// on the syncing thread: it must be quick and must not block.
pub trait CommitObserver: Send + Sync + 'static {
    fn committed(&self, writes: u64, sync: Duration);
}

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
    /// Full flushes (`flush_now`) done, up to this request.
    pub full: u64,
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
    /// Counters as of the newest applied write.
    counters: Counters,
    /// `async`: when the oldest write not yet taken on was acknowledged.
    window_start: Option<Instant>,
    /// Tickets covered by the last full flush (sled itself is that far).
    sled_synced: u64,
    /// Full flushes asked for (`flush_now`), numbered; the thread takes
    /// them all on at once, with no `async` delay.
    full_asked: u64,
    /// The last of them the thread has taken on.
    full_taken: u64,
    closing: bool,
}

struct Shared {
    mode: Durability,
    /// Tickets whose change may already be visible in sled: taken under
    /// the store's write lock *before* the change's first key is written,
    /// so a reader that saw any part of a change finds its ticket here.
    reserved: AtomicU64,
    /// `async`: the longest any acknowledged write waited to be durable, µs.
    longest_window_us: AtomicU64,
    /// The newest blob file (by lsn) synced whole; 0 when none.
    synced_blob_lsn: AtomicU64,
    pending: Mutex<Pending>,
    wake: Condvar,
    synced: watch::Sender<Synced>,
    db: sled::Db,
    segments: Arc<Segments>,
    dir: PathBuf,
    data_file: File,
    /// `sync` mode: a writer is syncing for a group ([`Committer::wait`]).
    leading: AtomicBool,
    /// Told about each group commit ([`Committer::observe`]).
    observer: std::sync::OnceLock<Arc<dyn CommitObserver>>,
    /// Tests hold this to keep the commit thread and leaders from flushing.
    #[cfg(test)]
    hold: tokio::sync::RwLock<()>,
}

pub struct Committer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Committer {
    /// Starts the flushing thread for `db`, stored in `dir`, whose counters
    /// (all of it on disk) are `counters`.
    pub fn start(
        db: sled::Db,
        segments: Arc<Segments>,
        dir: &Path,
        mode: Durability,
        counters: Counters,
    ) -> Result<Committer> {
        let event_seq = counters.event_seq;
        let data_file = File::open(dir.join("db"))?;
        // Whatever sled recovered or wrote while opening (a crash may have
        // left unsynced writes in the page cache, which recovery reads as
        // if on disk) and the directory entries it created must survive a
        // power loss too, before anything is acknowledged.
        let mut blobs = BlobSync::default();
        flush_and_sync(&db, &segments, &data_file, dir, &mut blobs, Writes::Quiet)?;
        File::open(dir.join("conf"))?.sync_all()?;
        data_file.sync_all()?;
        File::open(dir)?.sync_all()?;
        // And the data directory's own entry, in case it was just created.
        if let Some(parent) = std::path::absolute(dir)?.parent() {
            File::open(parent)?.sync_all()?;
        }
        let (synced, _) = watch::channel(Synced { ticket: 0, event_seq, full: 0, failed: false, closed: false });
        let shared = Arc::new(Shared {
            mode,
            reserved: AtomicU64::new(0),
            longest_window_us: AtomicU64::new(0),
            synced_blob_lsn: AtomicU64::new(blobs.newest_settled().unwrap_or(0)),
            pending: Mutex::new(Pending {
                issued: 0,
                taken: 0,
                counters,
                window_start: None,
                sled_synced: 0,
                full_asked: 0,
                full_taken: 0,
                closing: false,
            }),
            wake: Condvar::new(),
            synced,
            db,
            segments,
            dir: dir.to_path_buf(),
            data_file,
            leading: AtomicBool::new(false),
            observer: std::sync::OnceLock::new(),
            #[cfg(test)]
            hold: tokio::sync::RwLock::new(()),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("checkpointd-commit".into())
            .spawn(move || thread_shared.run(blobs, counters))?;
        Ok(Committer { shared, thread: Mutex::new(Some(thread)) })
    }

    /// Announces that a change is about to be applied: readers from now on
    /// wait for it (see [`Committer::settled`]). Called with the store's
    /// write lock held, before the change touches sled; [`Committer::applied`]
    /// follows once it is applied. If it never is, the store has failed.
    pub fn reserve(&self) {
        self.shared.reserved.fetch_add(1, Ordering::SeqCst);
    }

    /// Records that a write leaving the store's counters at `counters` was
    /// applied. Called with the store's write lock held, after
    /// [`Committer::reserve`], so tickets and counters rise together.
    pub fn applied(&self, counters: Counters) -> Ticket {
        let event_seq = counters.event_seq;
        let mut p = self.shared.pending.lock().expect("commit lock");
        p.issued += 1;
        p.counters = counters;
        debug_assert_eq!(p.issued, self.shared.reserved.load(Ordering::SeqCst));
        match self.shared.mode {
            // Leaders sync it; the commit thread only needs to know that
            // sled is behind again (for its periodic full flush).
            Durability::Sync => {
                if p.issued == p.sled_synced + 1 {
                    self.shared.wake.notify_one();
                }
            }
            Durability::Async => {
                self.shared.synced.send_modify(|s| s.event_seq = s.event_seq.max(event_seq));
                // Only the first write of a window wakes the thread; the
                // window's deadline runs from its acknowledgement.
                if p.issued == p.taken + 1 {
                    p.window_start = Some(Instant::now());
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
        let mut may_lead = true;
        loop {
            let synced = *rx.borrow_and_update();
            if synced.ticket >= ticket.0 {
                return Ok(());
            } else if synced.failed {
                return Err(failed());
            } else if synced.closed {
                return Err(closed());
            }
            if may_lead && let Some(leader) = Leader::take(&self.shared) {
                // Not covered: the ticket is reserved but not applied yet (a
                // reader's, see `settled`); its writer, or the commit
                // thread's next full flush, publishes it.
                may_lead = leader.sync(ticket).await;
                continue;
            }
            may_lead = true;
            // The leader's group may not cover this ticket; its end
            // (publication, then release) wakes this waiter to look again.
            rx.changed().await.map_err(|_| closed())?;
        }
    }

    /// Flushes everything applied so far into sled itself (a full flush:
    /// see the module), in either mode, and returns once it is on disk.
    pub async fn flush_now(&self) -> Result<()> {
        let asked = {
            let mut p = self.shared.pending.lock().expect("commit lock");
            p.full_asked += 1;
            self.shared.wake.notify_one();
            p.full_asked
        };
        let mut rx = self.shared.synced.subscribe();
        let synced = rx.wait_for(|s| s.full >= asked || s.failed || s.closed).await.map_err(|_| closed())?;
        match *synced {
            s if s.full >= asked => Ok(()),
            s if s.failed => Err(failed()),
            _ => Err(closed()),
        }
    }

    /// Returns once every change a reader may have observed so far is as
    /// durable as an acknowledgement: call it *after* reading and before
    /// answering, so that no reply shows a change a crash could undo (in
    /// `sync` mode). A reader that ran alongside no write does not wait.
    pub async fn settled(&self) -> Result<()> {
        if self.shared.mode == Durability::Async {
            return Ok(());
        }
        let target = self.shared.reserved.load(Ordering::SeqCst);
        if self.shared.synced.borrow().ticket >= target {
            return Ok(());
        }
        self.wait(Ticket(target)).await
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

    /// `async` mode: the longest time an acknowledged write has waited to
    /// be durable since the store opened (the loss window a power cut
    /// could have hit).
    pub fn longest_async_window(&self) -> Duration {
        Duration::from_micros(self.shared.longest_window_us.load(Ordering::Relaxed))
    }

    /// Keeps the commit thread from completing a flush while the guard lives.
    #[cfg(test)]
    pub(crate) fn hold(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.shared.hold.try_write().expect("hold lock")
    }

    /// Reports every group commit from now on to `observer`; the first
    /// observer set stays (returns false for any later one).
    pub fn observe(&self, observer: Arc<dyn CommitObserver>) -> bool {
        self.shared.observer.set(observer).is_ok()
    }

    /// Watermarks for event delivery.
    pub fn subscribe(&self) -> watch::Receiver<Synced> {
        self.shared.synced.subscribe()
    }

    /// Records in the mark file that `counters` are on disk. Call only when
    /// they are: at open, and after `close` (which flushed everything).
    pub fn write_mark(&self, counters: Counters) -> std::io::Result<()> {
        self.shared.write_mark(counters)
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

/// The one writer syncing the segments for every write applied so far
/// (`sync` mode). Released on drop, also when its future is dropped midway,
/// and every waiter is woken to look again.
struct Leader<'a>(&'a Shared);

impl<'a> Leader<'a> {
    fn take(shared: &'a Shared) -> Option<Leader<'a>> {
        shared.leading.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| Leader(shared))
    }

    /// Syncs the segments on this thread and publishes what is durable;
    /// returns whether that covers `ticket` (false, without syncing, when
    /// it is not applied yet). It blocks the runtime thread for one
    /// fdatasync: cheaper than handing the sync to another thread and being
    /// woken back.
    async fn sync(self, ticket: Ticket) -> bool {
        #[cfg(test)]
        let _held = self.0.hold.read().await;
        let (target, event_seq) = {
            let p = self.0.pending.lock().expect("commit lock");
            (p.issued, p.counters.event_seq)
        };
        if target < ticket.0 {
            return false;
        }
        let before = self.0.synced.borrow().ticket;
        let started = Instant::now();
        match retrying_descriptors(|| self.0.segments.sync()) {
            Ok(()) => {
                self.0.report(target.saturating_sub(before), started.elapsed());
                self.0.synced.send_modify(|s| {
                    s.ticket = s.ticket.max(target);
                    s.event_seq = s.event_seq.max(event_seq);
                })
            }
            Err(e) => {
                tracing::error!(error = %e, "sync to disk failed; the store now refuses writes");
                self.0.synced.send_modify(|s| s.failed = true);
            }
        }
        true
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.0.leading.store(false, Ordering::Release);
        self.0.synced.send_modify(|_| {});
    }
}

/// How long the commit thread waits for a free descriptor before failing.
const DESCRIPTOR_RETRIES: u32 = 100;
const DESCRIPTOR_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn closed() -> StorageError {
    StorageError::Failed("the store is closed (shutting down)".into())
}

fn failed() -> StorageError {
    StorageError::Failed("storage failed to persist a write; refusing further writes until restart".into())
}

impl Shared {
    fn run(&self, mut blobs: BlobSync, mut marked: Counters) {
        let mut last_mark = Instant::now();
        let mut last_full = Instant::now();
        loop {
            let (target, counters, window_start, closing, urgent, full) = {
                let mut p = self.pending.lock().expect("commit lock");
                // Sleeps until there is work (an idle server uses no CPU):
                // a full flush asked for, closing, an `async` window, or
                // sled behind for SLED_FLUSH_INTERVAL.
                loop {
                    let behind = p.issued > p.sled_synced;
                    if p.closing
                        || p.full_asked != p.full_taken
                        || (behind && last_full.elapsed() >= SLED_FLUSH_INTERVAL)
                        || (self.mode == Durability::Async && p.issued > p.taken)
                    {
                        break;
                    }
                    p = match behind {
                        true => {
                            let left = SLED_FLUSH_INTERVAL.saturating_sub(last_full.elapsed());
                            self.wake.wait_timeout(p, left).expect("commit lock").0
                        }
                        false => self.wake.wait(p).expect("commit lock"),
                    };
                }
                // In async mode a whole window of writes shares one flush,
                // started ASYNC_FLUSH_DELAY after the window's first write
                // was acknowledged (at once if a flush already took that
                // long), which leaves the rest of ASYNC_FLUSH_INTERVAL for
                // the flush itself.
                if self.mode == Durability::Async {
                    let deadline = p.window_start.unwrap_or_else(Instant::now) + ASYNC_FLUSH_DELAY;
                    while !p.closing && p.full_asked == p.full_taken {
                        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
                        else {
                            break;
                        };
                        p = self.wake.wait_timeout(p, left).expect("commit lock").0;
                    }
                }
                p.taken = p.issued;
                let asked = p.full_asked;
                let urgent = std::mem::replace(&mut p.full_taken, asked) != asked;
                let full = urgent || p.closing || last_full.elapsed() >= SLED_FLUSH_INTERVAL;
                if full {
                    p.sled_synced = p.issued;
                }
                (p.issued, p.counters, p.window_start.take(), p.closing, urgent.then_some(asked), full)
            };
            #[cfg(test)]
            let _held = self.hold.blocking_read();
            let before = self.synced.borrow().ticket;
            let started = Instant::now();
            let flushed = match full {
                true => self.flush(&mut blobs, target),
                false => retrying_descriptors(|| self.segments.sync()),
            };
            if full {
                last_full = Instant::now();
            }
            if let Err(e) = flushed {
                tracing::error!(error = %e, "flush to disk failed; the store now refuses writes");
                self.synced.send_modify(|s| s.failed = true);
                return;
            }
            // In `sync` mode the group commits are the leaders' (this
            // flush only brings sled up to what they made durable).
            if self.mode == Durability::Async {
                self.report(target.saturating_sub(before), started.elapsed());
            }
            if let Some(start) = window_start {
                self.window_closed(start.elapsed());
            }
            if let Some(lsn) = blobs.newest_settled() {
                self.synced_blob_lsn.fetch_max(lsn, Ordering::SeqCst);
            }
            if last_mark.elapsed() >= MARK_INTERVAL && counters != marked {
                // A record of what is on disk now, for the next open to
                // check sled's recovery against; not needed to acknowledge.
                match self.write_mark(counters) {
                    Ok(()) => marked = counters,
                    Err(e) => tracing::warn!(error = %e, "could not record the counters beside the data"),
                }
                last_mark = Instant::now();
            }
            self.synced.send_modify(|s| {
                s.ticket = s.ticket.max(target);
                s.event_seq = s.event_seq.max(counters.event_seq);
                s.full = s.full.max(urgent.unwrap_or(0));
                // After the final flush, waiters for later tickets give up.
                s.closed |= closing;
            });
            if closing {
                return;
            }
        }
    }

    /// Tells the observer about a group commit of `writes` writes (none:
    /// a flush of what was durable already, not reported).
    fn report(&self, writes: u64, sync: Duration) {
        if writes > 0
            && let Some(observer) = self.observer.get()
        {
            observer.committed(writes, sync);
        }
    }

    /// Writes the mark file: `counters` and every blob synced so far are
    /// on disk.
    fn write_mark(&self, counters: Counters) -> std::io::Result<()> {
        let blob_lsn = Some(self.synced_blob_lsn.load(Ordering::SeqCst)).filter(|&lsn| lsn > 0);
        datadir::write_mark(&self.dir, &Mark { counters, blob_lsn })
    }

    /// Notes how long an `async` window's first write waited to be durable.
    fn window_closed(&self, waited: Duration) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        let before = self.longest_window_us.fetch_max(us, Ordering::Relaxed);
        if waited > ASYNC_FLUSH_INTERVAL && us > before {
            tracing::warn!(
                waited_ms = waited.as_millis() as u64,
                bound_ms = ASYNC_FLUSH_INTERVAL.as_millis() as u64,
                "an async write waited longer than the documented bound to be durable: the disk is slow"
            );
        }
    }

    /// Makes every write up to ticket `applied` durable in sled itself.
    fn flush(&self, blobs: &mut BlobSync, applied: u64) -> std::io::Result<()> {
        let writes = Writes::Running { applied, reserved: &self.reserved };
        flush_and_sync(&self.db, &self.segments, &self.data_file, &self.dir, blobs, writes)
    }
}

/// Makes everything sled has applied durable: first every state segment
/// appended to (so no durable pointer ever points to bytes that are not;
/// sled's log writes run the same sync first, see `segments`), then
/// `Db::flush` (which on Linux only calls `sync_file_range`), `fdatasync` of
/// the `db` file, then every blob file not yet synced at its current length.
///
/// Invariant: a blob file is complete before the insert that wrote it
/// returns (sled writes it in the inserting thread, in several `write`
/// calls), so when this runs for a write, that write's blobs are whole.
fn flush_and_sync(
    db: &sled::Db,
    segments: &Segments,
    data_file: &File,
    dir: &Path,
    blobs: &mut BlobSync,
    writes: Writes<'_>,
) -> std::io::Result<()> {
    retrying_descriptors(|| segments.sync())?;
    db.flush().map_err(std::io::Error::other)?;
    data_file.sync_data()?;
    retrying_descriptors(|| blobs.sync(dir, writes))
}

/// Runs `sync`, which may need a descriptor (listing the blobs, syncing the
/// directory of a new segment). Running out of them (clients holding the
/// rest) is not a disk failure: wait for one to be freed rather than fail
/// the store closed.
fn retrying_descriptors(mut sync: impl FnMut() -> std::io::Result<()>) -> std::io::Result<()> {
    let mut attempts = 0;
    loop {
        match sync() {
            Err(e) if is_out_of_descriptors(&e) && attempts < DESCRIPTOR_RETRIES => {
                attempts += 1;
                tracing::warn!(error = %e, "out of file descriptors while syncing; retrying");
                std::thread::sleep(DESCRIPTOR_RETRY_PAUSE);
            }
            other => return other,
        }
    }
}

/// Flushes and fsyncs a database opened outside the store (migrations):
/// the same steps as a group commit, with every blob file synced.
pub fn sync_database(db: &sled::Db, segments: &Segments, dir: &Path) -> Result<()> {
    let data_file = File::open(dir.join("db"))?;
    flush_and_sync(db, segments, &data_file, dir, &mut BlobSync::default(), Writes::Quiet)?;
    Ok(())
}

/// What writers may be doing while blob files are listed.
#[derive(Clone, Copy)]
enum Writes<'a> {
    /// None is (opening, migrating): every blob file is whole.
    Quiet,
    /// Every write up to ticket `applied` has returned from sled; later
    /// ones may be writing blob files now, and `reserved` counts them.
    Running { applied: u64, reserved: &'a AtomicU64 },
}

/// Which blob files are on disk, and up to what length.
///
/// A file's synced *length* is what counts, not its name: sled creates a
/// blob file and then writes it in several calls, so a listing can find a
/// file that holds only its first bytes. Syncing it then and remembering
/// only its name would leave the rest of it unsynced forever (a power cut
/// then truncates it, and sled stops its log there).
///
/// A file stops being looked at once it is *settled*: whole and synced.
/// sled writes a blob file inside the insert that needs it, so a file is
/// whole once that write has returned. Which write made a file is unknown,
/// but not its bound: a file found by a listing was created by a write that
/// had reserved its ticket before the listing ended (see
/// [`Committer::reserve`]). Once every ticket up to that bound has been
/// applied, the file's length is final; synced at it, it is settled. So a
/// flush stats only new and recent files, not every blob in the directory
/// (sled leaves many behind, its issue #786).
#[derive(Default)]
struct BlobSync {
    files: HashMap<OsString, BlobFile>,
    /// Blob files sled deleted, noticed by the last listing: their kept
    /// links go at the next flush (see [`KEPT_BLOBS`]).
    vanished: Vec<OsString>,
}

/// A second hard link to every blob file, in `<data-dir>/blobs.keep/`.
///
/// sled deletes a blob file once the log that replaces it counts as stable
/// in its own terms (written and `sync_file_range`d), which can be before
/// checkpointd's `fdatasync` of that log; the deletion itself may reach the
/// disk first (a journaling file system commits it with the next fsync of
/// anything). A power cut then brings back the old log entry without its
/// blob: sled passes over it, and the page reverts to an older version
/// (counters going back, an older change's intent re-applied). The kept link
/// holds the blob's data until the log that replaced it is durable: a link
/// is made, and its directory synced, in the flush that first syncs the blob
/// (before anything it holds is acknowledged), and removed only in the flush
/// after the one that found the blob gone, whose `fdatasync` covers the log
/// written before sled deleted it. Opening a directory first restores every
/// kept blob that is missing (`datadir`); sled's recovery ignores those its
/// log does not reach.
pub const KEPT_BLOBS: &str = "blobs.keep";

#[derive(Clone, Copy)]
struct BlobFile {
    /// Synced up to here.
    len: u64,
    /// Tickets reserved when a listing first found it: its writer is one of them.
    made_by: u64,
    settled: bool,
}

impl BlobSync {
    /// The newest blob file synced whole.
    fn newest_settled(&self) -> Option<u64> {
        self.files.iter().filter(|(_, f)| f.settled).filter_map(|(name, _)| name.to_str()?.parse::<u64>().ok()).max()
    }

    /// fsyncs every blob file that is new or has grown since it was last
    /// synced, then, if a file was new, their directory.
    fn sync(&mut self, dir: &Path, writes: Writes<'_>) -> std::io::Result<()> {
        let blobs = dir.join("blobs");
        let kept = dir.join(KEPT_BLOBS);
        // The log written before sled deleted these is durable now (this
        // flush's fdatasync of `db` came after the listing that found them
        // gone): their data is no longer needed.
        for name in self.vanished.drain(..) {
            match std::fs::remove_file(kept.join(&name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let names = match std::fs::read_dir(&blobs) {
            Ok(entries) => entries.map(|e| e.map(|e| e.file_name())).collect::<std::io::Result<Vec<_>>>()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        std::fs::create_dir_all(&kept)?;
        // Read after the listing: every file it found was begun by one of
        // these tickets.
        let (applied, reserved) = match writes {
            Writes::Quiet => (u64::MAX, 0),
            Writes::Running { applied, reserved } => (applied, reserved.load(Ordering::SeqCst)),
        };
        let mut present = HashMap::with_capacity(self.files.len());
        let mut new_entry = false;
        let mut new_link = false;
        for name in names {
            let previous = self.files.get(&name).copied();
            if let Some(settled) = previous.filter(|f| f.settled) {
                present.insert(name, settled);
                continue;
            }
            let path = blobs.join(&name);
            // The length is read before the sync, so the sync covers at
            // least that much; a file still growing differs next time.
            let len = match std::fs::metadata(&path) {
                Ok(m) => m.len(),
                // sled removes obsolete blobs while we list.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if previous.map(|f| f.len) != Some(len) {
                match File::open(&path) {
                    Ok(f) => f.sync_data()?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new_entry |= previous.is_none();
            }
            if previous.is_none() {
                // A link left by an earlier run under the same name (sled
                // reuses the numbers of blobs it discarded in recovery) is
                // replaced.
                let link = kept.join(&name);
                match std::fs::hard_link(&path, &link) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        std::fs::remove_file(&link)?;
                        std::fs::hard_link(&path, &link)?;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    other => other?,
                }
                new_link = true;
            }
            let made_by = previous.map_or(reserved, |f| f.made_by);
            // Its writer had returned before `len` was read: it is whole.
            present.insert(name, BlobFile { len, made_by, settled: made_by <= applied });
        }
        if new_entry {
            File::open(&blobs)?.sync_all()?;
        }
        if new_link {
            File::open(&kept)?.sync_all()?;
        }
        self.vanished = self.files.keys().filter(|name| !present.contains_key(*name)).cloned().collect();
        // A blob sled replaced before it was synced whole may still be what
        // an acknowledged write's page points to on disk (if the log that
        // replaced it is lost): its kept link has all of it (its writer
        // had returned before it could be replaced), so sync that.
        for name in &self.vanished {
            if self.files.get(name).is_some_and(|f| !f.settled) {
                match File::open(kept.join(name)) {
                    Ok(f) => f.sync_data()?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if matches!(writes, Writes::Quiet) {
            // Links whose blob is gone after a recovery: sled discarded or
            // never needed them. They go at the next flush.
            for entry in std::fs::read_dir(&kept)? {
                let name = entry?.file_name();
                if !present.contains_key(&name) {
                    self.vanished.push(name);
                }
            }
        }
        self.files = present;
        Ok(())
    }
}
