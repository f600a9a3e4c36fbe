//! Compaction of state segments: reclaims the space of dead values.
//!
//! A background thread (`checkpointd-segments`) looks every
//! [`COMPACTION_INTERVAL`] for sealed segments more than half dead
//! ([`Segments::compactable`]). For each, it walks the segment's entries and
//! moves the live ones (those whose owner key still points to them) to the
//! active segment, [`BATCH_BYTES`] at a time, each batch one ordinary atomic
//! change through the store's write pipeline: the old pointer is replaced
//! only if it is still the current value (checked under the write lock), so
//! a writer that replaced or removed the value meanwhile wins. Writers wait
//! for at most one batch (copying up to `BATCH_BYTES` in the page cache).
//!
//! The segment file is removed only once every repointing change is
//! durable (`flush_now`, also in `async` mode) and nothing points into it
//! any more: a crash at any moment leaves either the old pointers with the
//! old file, or the new pointers with the copies (synced before sled's log,
//! as every append is). The intent record replayed at open is the latest
//! change, whose pointers are current. A file a crash left behind after its
//! last pointer moved is removed at the next open (nothing points into it).

use super::change::pointer_in;
use super::codec;
use super::error::{Result, StorageError};
use super::keys::TreeId;
use super::records::WriteRecord;
use super::segments::Entry;
use super::store::Core;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the compactor looks for work.
pub const COMPACTION_INTERVAL: Duration = Duration::from_millis(200);
/// Bytes of values one repointing change copies at most.
pub const BATCH_BYTES: u64 = 1 << 20;
/// Entries one repointing change moves at most.
pub const BATCH_ENTRIES: usize = 64;

/// The background compaction thread of one store.
pub struct Compactor {
    stop: Arc<(Mutex<bool>, Condvar)>,
    stopping: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Compactor {
    pub(crate) fn start(core: Arc<Core>) -> Result<Compactor> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (thread_stop, thread_stopping) = (Arc::clone(&stop), Arc::clone(&stopping));
        let thread = std::thread::Builder::new().name("checkpointd-segments".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "segment compaction cannot start; dead space will not be reclaimed");
                    return;
                }
            };
            let (lock, wake) = &*thread_stop;
            loop {
                {
                    let stopped = lock.lock().expect("compactor lock");
                    let (stopped, _) = wake.wait_timeout(stopped, COMPACTION_INTERVAL).expect("compactor lock");
                    if *stopped {
                        return;
                    }
                }
                let stop_now = || thread_stopping.load(Ordering::SeqCst);
                if let Err(e) = runtime.block_on(pass(&core, &stop_now)) {
                    tracing::warn!(error = %e, "segment compaction failed; it will be tried again");
                }
            }
        })?;
        Ok(Compactor { stop, stopping, thread: Mutex::new(Some(thread)) })
    }

    /// Stops the thread after its current batch. Idempotent.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        *self.stop.0.lock().expect("compactor lock") = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.lock().expect("compactor lock").take() {
            let _ = t.join();
        }
    }
}

/// Compacts every sealed segment more than half dead; returns how many were
/// removed. `stop` is asked between batches.
pub(crate) async fn pass(core: &Core, stop: &dyn Fn() -> bool) -> Result<usize> {
    let _one = core.compacting.lock().await;
    let mut removed = 0;
    for id in core.segments.compactable() {
        if stop() {
            break;
        }
        if compact_segment(core, id, stop).await? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Moves segment `id`'s live values to the active segment, then removes it.
/// Returns whether it was removed.
async fn compact_segment(core: &Core, id: u32, stop: &dyn Fn() -> bool) -> Result<bool> {
    let (entries, _tail) = core.segments.entries(id)?;
    let mut batch: Vec<Entry> = Vec::new();
    let mut bytes = 0;
    for e in entries {
        if !is_live(core, &e)? {
            continue;
        }
        bytes += u64::from(e.pointer.len);
        batch.push(e);
        if bytes >= BATCH_BYTES || batch.len() >= BATCH_ENTRIES {
            move_batch(core, std::mem::take(&mut batch)).await?;
            bytes = 0;
            if stop() {
                return Ok(false);
            }
        }
    }
    if !batch.is_empty() {
        move_batch(core, batch).await?;
    }
    // Every repointing change durable before the file goes.
    core.flush_now().await?;
    let _open = core.gate_open().await;
    let live = core.segments.usage().get(&id).map_or(0, |u| u.live);
    if live != 0 {
        // Something still points here (a value written to it before it was
        // sealed, after the walk began): the next pass moves it.
        return Ok(false);
    }
    core.segments.remove(id)?;
    tracing::debug!(segment = id, "compacted a state segment");
    Ok(true)
}

/// Whether `e`'s owner key still points to it.
fn is_live(core: &Core, e: &Entry) -> Result<bool> {
    let Some((&tree, key)) = e.owner.split_first() else { return Ok(false) };
    let Some(t) = core.trees_ref().by_number(tree) else { return Ok(false) };
    Ok(t.get(key)?.is_some_and(|v| pointer_in(tree, &v) == Some(e.pointer)))
}

/// One change: each entry still current is copied to the active segment and
/// its key repointed there.
async fn move_batch(core: &Core, batch: Vec<Entry>) -> Result<()> {
    core.write(|c, r| {
        for e in &batch {
            let Some((&tree, key)) = e.owner.split_first() else { continue };
            let Some(t) = r.tree_by_number(tree) else { continue };
            let Some(current) = t.get(key)? else { continue };
            if pointer_in(tree, &current) != Some(e.pointer) {
                continue;
            }
            let value = r.resolve(&e.pointer.encode(), "a value being compacted")?;
            if tree == TreeId::States as u8 {
                c.put_value(TreeId::States, key, &value)?;
            } else if tree == TreeId::Writes as u8 {
                let mut rec: WriteRecord = codec::decode(&current, "pending write")?;
                rec.value = c.stored_value(TreeId::Writes, key, &value)?;
                c.put(TreeId::Writes, key, codec::encode(&rec));
            } else {
                return Err(StorageError::corrupt(format!("a segment entry owned by tree {tree}")));
            }
        }
        Ok(())
    })
    .await
}
