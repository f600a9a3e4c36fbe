//! The sled store: the [`Backend`] on a local data directory.
//!
//! **Writes.** Every write runs one operation of `writes` under the
//! store's write lock to build a `Change`, applies it atomically
//! (`change`), and returns a ticket; the group commit (`commit`) makes it
//! durable and only then is the write acknowledged. A refused write changes
//! nothing and consumes no sequence number. After an I/O error the store
//! fails closed: every later write is refused.
//!
//! **Reads.** Reads go straight to sled through a [`Reader`], without the
//! write lock, so they may observe a change before it is durable. Each read
//! therefore settles ([`Store::settled`]) before it answers: it returns once
//! everything it could have seen is durable. Journal events are likewise
//! released to subscribers only once durable (`durable_marks`).

use super::backend::{Backend, EventFeed, WritePause};
use super::change::{self, Change};
use super::commit::{Committer, Synced, Ticket};
use super::compaction::{self, Compactor};
use super::datadir::{self, Access};
use super::error::{Result, StorageError};
use super::import::{self, ImportBatch, ImportCounts};
use super::journal::{self, EventWatch};
use super::keys::{TreeId, Trees};
use super::reads::Reader;
use super::records::{Counters, nanos};
use super::segments::Segments;
use super::{migrate, verify, writes};
use crate::config::{Durability, StoreConfig};
use crate::model::{
    Annotation, Checkpoint, CheckpointId, CheckpointSummary, Compaction, JournalEvent, ListQuery, MetadataFilter,
    Metrics, NewCheckpoint, NewWrites, Page, RetentionPolicy, SearchQuery, Session, SessionId, Severity, Validation,
};
use chrono::{DurationRound, TimeDelta, Utc};
use serde_json::value::RawValue;
use std::sync::{Arc, Mutex};

/// The durable checkpoint store on sled. Cheap to share behind an `Arc`.
pub struct Store {
    core: Arc<Core>,
    /// Rewrites segments more than half dead, in the background.
    compactor: Compactor,
    _pre_log_sync: sled::PreLogSync,
}

impl std::ops::Deref for Store {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

/// The write pipeline and what it writes to, shared with the compactor.
pub struct Core {
    db: sled::Db,
    /// Large values; synced by the group commit, and by sled before its log.
    pub(crate) segments: Arc<Segments>,
    trees: Trees,
    read: Reader,
    /// Every write passes it shared; [`Backend::pause_writes`] takes it
    /// whole, so that nothing changes the files while they are copied.
    gate: Arc<tokio::sync::RwLock<()>>,
    /// Serialises writers; holds the counters as last committed.
    writer: Mutex<Counters>,
    committer: Committer,
    config: StoreConfig,
    /// One compaction pass at a time (the background one, or one asked
    /// for): two would both move a segment's values and remove its file.
    pub(crate) compacting: tokio::sync::Mutex<()>,
}

impl Store {
    /// Opens (creating if needed) a data directory, refusing a damaged one
    /// ([`datadir`]). Reads a constant number of keys: counters live in the
    /// meta tree, no tree is scanned.
    pub fn open(config: StoreConfig) -> Result<Store> {
        let (opened, counters) = datadir::open(
            &config.data_dir,
            &config.data_dir,
            Access::Serve,
            config.cache_bytes,
            config.segment_bytes,
            |db, trees, segs| {
                migrate::prepare(db, trees.get(TreeId::Meta), &config)?;
                Ok(Reader::new(trees.clone(), Arc::clone(segs)).counters()?.unwrap_or_default())
            },
        )?;
        let datadir::Opened { db, trees, segments, pre_log_sync } = opened;
        let committer =
            Committer::start(db.clone(), Arc::clone(&segments), &config.data_dir, config.durability, counters)?;
        let gate = Arc::new(tokio::sync::RwLock::new(()));
        let read = Reader::new(trees.clone(), Arc::clone(&segments));
        let core = Arc::new(Core {
            db,
            segments,
            trees,
            read,
            gate,
            writer: Mutex::new(counters),
            committer,
            config,
            compacting: tokio::sync::Mutex::new(()),
        });
        let compactor = Compactor::start(Arc::clone(&core))?;
        let store = Store { core, compactor, _pre_log_sync: pre_log_sync };
        // The journal after its retention was lowered.
        if let Some(keep_from) = store.event_sequence().checked_sub(store.config.event_retention) {
            journal::trim(&store.trees, keep_from + 1)?;
        }
        store.write_mark()?;
        Ok(store)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Compacts every sealed segment more than half dead now, as the
    /// background compactor would (tests, and `checkpoint-dump`-free
    /// maintenance): returns how many segments were removed.
    pub async fn compact_segments(&self) -> Result<usize> {
        compaction::pass(&self.core, &|| false).await
    }
}

impl Core {
    /// Reads of this store, unsettled: for the store's own operations and
    /// tests. Answers to clients go through [`Backend`]'s reads.
    pub fn reader(&self) -> &Reader {
        &self.read
    }

    pub(crate) fn trees_ref(&self) -> &Trees {
        &self.trees
    }

    /// Waits until everything applied so far is durable, in either mode.
    pub(crate) async fn flush_now(&self) -> Result<()> {
        self.committer.flush_now().await
    }

    /// Takes the write gate shared: no pause for a copy is in progress.
    pub(crate) async fn gate_open(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// As last committed: a writer that panicked left them unchanged.
    fn counters(&self) -> Counters {
        *self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the counters beside sled's files once all they count is
    /// durable (see [`datadir::MARK_FILE`]): the next open checks that sled
    /// recovered at least this much.
    fn write_mark(&self) -> Result<()> {
        self.committer.write_mark(self.counters())?;
        Ok(())
    }

    /// Builds one change with `op`, applies it, and waits until it is
    /// durable. The single path by which anything is written.
    pub(crate) async fn write<T>(&self, op: impl FnOnce(&mut Change, &Reader) -> Result<T>) -> Result<T> {
        let (out, ticket) = {
            let _open = self.gate.read().await;
            self.write_now(op)?
        };
        self.committer.wait(ticket).await?;
        Ok(out)
    }

    fn write_now<T>(&self, op: impl FnOnce(&mut Change, &Reader) -> Result<T>) -> Result<(T, Ticket)> {
        let mut committed = self.writer.lock().map_err(|_| StorageError::poisoned())?;
        self.committer.check()?;
        if committed.exhausted() {
            return Err(StorageError::sequences_exhausted(&*committed));
        }
        let mut change = Change::new(
            *committed,
            // Live times are stamped to the microsecond (the wire's
            // documented precision); imported ones keep their nanoseconds.
            nanos(Utc::now().duration_trunc(TimeDelta::microseconds(1)).unwrap_or_else(|_| Utc::now()))
                .unwrap_or(i64::MAX),
            self.config.event_retention,
            Arc::clone(&self.segments),
        );
        let out = op(&mut change, &self.read)?;
        let counters = change.counters;
        let mut ops = change.into_ops(&committed);
        // Refused (with nothing applied) if the intent cannot be written.
        let intent = change::log_intent(&mut ops, &self.segments)?;
        self.committer.reserve();
        if let Some(Err(e)) = intent.map(|intent| change::apply(&self.trees, &ops, intent, &self.segments)) {
            // Part of the change may be applied; the intent completes it at
            // the next open. Until then, fail closed.
            self.committer.fail();
            return Err(e);
        }
        *committed = counters;
        Ok((out, self.committer.applied(counters)))
    }
}

impl Store {
    /// Answers a read (value or error) only once everything it may have
    /// observed is durable: in `sync` mode no reply shows a change, or the
    /// absence of a deleted one, that a crash could still undo. In `async`
    /// mode at once: see [`Committer::settled`].
    pub async fn settled<T>(&self, read: Result<T>) -> Result<T> {
        self.committer.settled().await?;
        read
    }

    /// `async` mode: the longest an acknowledged write has waited to be
    /// durable since the store opened.
    pub fn longest_async_window(&self) -> std::time::Duration {
        self.committer.longest_async_window()
    }

    /// Journals `value` as the next event, whatever it holds: tests use it
    /// to put an undecodable record where dispatch will meet it.
    #[cfg(test)]
    pub(crate) async fn append_raw_event(&self, value: &[u8]) -> Result<u64> {
        self.write(|c, _| {
            c.counters.event_seq += 1;
            c.put(TreeId::Events, super::keys::event_key(c.counters.event_seq), value);
            Ok(c.counters.event_seq)
        })
        .await
    }

    /// Test support: holds the commit thread while the guard lives.
    #[cfg(test)]
    pub(crate) fn hold_commits(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.committer.hold()
    }

    #[cfg(test)]
    pub(crate) fn trees(&self) -> &Trees {
        &self.trees
    }
}

#[async_trait::async_trait]
impl Backend for Store {
    fn durability(&self) -> Durability {
        self.config.durability
    }

    fn format_version(&self) -> u32 {
        migrate::CURRENT_FORMAT
    }

    fn space(&self) -> super::segments::SpaceUsage {
        self.segments.space()
    }

    fn healthy(&self) -> bool {
        self.committer.check().is_ok()
    }

    fn observe_commits(&self, observer: Arc<dyn super::commit::CommitObserver>) {
        self.committer.observe(observer);
    }

    /// Flushes and syncs everything, and stops the commit thread.
    fn close(&self) {
        // The compactor's last batch completes (or fails) first.
        self.compactor.stop();
        self.committer.close();
        // Only when every write applied is on disk: no flush failed.
        if !self.committer.subscribe().borrow().failed {
            if let Err(e) = self.segments.trim_active() {
                tracing::warn!(error = %e, "could not cut the active state segment's preallocated zeros");
            }
            if let Err(e) = self.write_mark() {
                tracing::warn!(error = %e, "could not record the counters beside the data");
            }
        }
    }

    fn data_dir(&self) -> Option<&std::path::Path> {
        Some(&self.config.data_dir)
    }

    async fn pause_writes(&self) -> Result<WritePause> {
        let guard = Arc::clone(&self.gate).write_owned().await;
        self.committer.flush_now().await?;
        Ok(WritePause { _guard: Box::new(guard), metrics: self.metrics_now()? })
    }

    // ----- writes -------------------------------------------------------------

    async fn create_session(&self, name: String, metadata: Box<RawValue>) -> Result<Session> {
        self.write(|c, _| writes::create_session(c, name, &metadata)).await
    }

    async fn open_session(&self, key: String, name: String, metadata: Box<RawValue>) -> Result<(Session, bool)> {
        self.write(|c, r| writes::open_session(c, r, key, name, &metadata)).await
    }

    async fn delete_session(&self, id: SessionId) -> Result<u64> {
        // In several changes when the session is large (see
        // `writes::delete_session_step`); acknowledged with the last.
        let mut removed = 0;
        loop {
            let _open = self.gate.read().await;
            let ((chunk, done), ticket) = self.write_now(|c, r| writes::delete_session_step(c, r, id, removed))?;
            removed += chunk;
            if done {
                self.committer.wait(ticket).await?;
                return Ok(removed);
            }
        }
    }

    async fn set_retention(&self, id: SessionId, policy: Option<RetentionPolicy>) -> Result<Option<RetentionPolicy>> {
        self.write(|c, r| writes::set_retention(c, r, id, policy)).await
    }

    async fn put_checkpoint(&self, new: NewCheckpoint) -> Result<(CheckpointSummary, Option<Compaction>)> {
        self.write(|c, r| writes::put_checkpoint(c, r, new)).await
    }

    async fn restore(&self, session: SessionId, id: CheckpointId) -> Result<Checkpoint> {
        self.write(|c, r| writes::restore(c, r, session, id)).await
    }

    async fn delete_checkpoint(&self, id: CheckpointId, session: Option<SessionId>) -> Result<SessionId> {
        self.write(|c, r| writes::delete_checkpoint(c, r, id, session)).await
    }

    async fn annotate(&self, id: CheckpointId, note: String, severity: Severity, max: u32) -> Result<Annotation> {
        self.write(|c, r| writes::annotate(c, r, id, note, severity, max)).await
    }

    async fn compact(&self, session: SessionId, policy: &RetentionPolicy, per_namespace: bool) -> Result<Compaction> {
        self.write(|c, r| writes::compact(c, r, session, policy, per_namespace)).await
    }

    async fn put_writes(&self, new: NewWrites) -> Result<u64> {
        self.write(|c, r| writes::put_writes(c, r, new)).await
    }

    async fn copy_session(
        &self,
        source: SessionId,
        key: Option<String>,
        name: String,
        metadata: Box<RawValue>,
    ) -> Result<(Session, u64)> {
        self.write(|c, r| writes::copy_session(c, r, source, key, name, &metadata)).await
    }

    async fn delete_checkpoints(
        &self,
        session: Option<SessionId>,
        namespace: Option<&str>,
        filter: &MetadataFilter,
    ) -> Result<(u64, bool)> {
        self.write(|c, r| writes::delete_checkpoints(c, r, session, namespace, filter)).await
    }

    async fn import(&self, batch: ImportBatch) -> Result<ImportCounts> {
        self.write(|c, r| import::import(c, r, batch)).await
    }

    // ----- reads --------------------------------------------------------------

    async fn session(&self, id: SessionId) -> Result<Session> {
        self.settled(self.read.session(id)).await
    }

    async fn session_by_key(&self, key: &str) -> Result<Session> {
        let found = self.read.session_by_key(key).and_then(|id| match id {
            Some(id) => self.read.session(id),
            None => Err(StorageError::no_session_with_key(key)),
        });
        self.settled(found).await
    }

    async fn list_sessions(
        &self,
        after: Option<SessionId>,
        key_prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Session>> {
        self.settled(self.read.list_sessions(after, key_prefix, limit)).await
    }

    async fn checkpoint(&self, id: CheckpointId) -> Result<Checkpoint> {
        self.settled(self.read.checkpoint(id)).await
    }

    async fn checkpoint_in(&self, session: SessionId, namespace: &str, external: Option<&str>) -> Result<Checkpoint> {
        let found = match external {
            Some(external) => self.read.checkpoint_by_external_id(session, namespace, external),
            None => self.read.latest_in(session, namespace),
        };
        let found = found.and_then(|summary| match summary {
            Some(summary) => self.read.checkpoint(summary.id),
            None => Err(StorageError::none_in_namespace(session, namespace, external)),
        });
        self.settled(found).await
    }

    async fn list_checkpoints(&self, session: SessionId, q: &ListQuery, max: usize) -> Result<Page> {
        self.settled(self.read.list_page(session, q, max)).await
    }

    async fn search_checkpoints(&self, q: &SearchQuery, max: usize) -> Result<Page> {
        self.settled(self.read.search(q, max)).await
    }

    async fn list_by_sequence(&self, after: u64, limit: usize) -> Result<Vec<CheckpointSummary>> {
        self.settled(self.read.list_by_sequence(after, limit)).await
    }

    /// Reads the whole store, so it runs on a blocking thread.
    async fn validate(&self, session: Option<SessionId>) -> Result<Validation> {
        let read = self.read.clone();
        let result = tokio::task::spawn_blocking(move || verify::validate(&read, session))
            .await
            .map_err(|e| StorageError::Internal(format!("validation task failed: {e}")))?;
        self.settled(result).await
    }

    async fn metrics(&self) -> Result<Metrics> {
        self.settled(self.metrics_now()).await
    }

    async fn is_pristine(&self) -> Result<bool> {
        let c = self.counters();
        let trees_empty =
            [TreeId::Sessions, TreeId::Checkpoints, TreeId::Events].iter().all(|&t| self.trees.get(t).is_empty());
        self.settled(Ok(trees_empty && c.global_seq == 0 && c.event_seq == 0 && c.sessions_created == 0)).await
    }

    // ----- the journal --------------------------------------------------------

    async fn events(
        &self,
        after: u64,
        through: u64,
        session: Option<SessionId>,
        limit: usize,
    ) -> Result<Vec<JournalEvent>> {
        self.read.events(after, through, session, limit)
    }

    async fn oldest_event(&self) -> Result<Option<u64>> {
        self.read.oldest_event()
    }

    fn event_sequence(&self) -> u64 {
        self.counters().event_seq
    }

    fn watch_events(&self) -> Box<dyn EventFeed> {
        Box::new(EventWatch::new(&self.trees))
    }

    fn durable_marks(&self) -> tokio::sync::watch::Receiver<Synced> {
        self.committer.subscribe()
    }
}

impl Store {
    fn metrics_now(&self) -> Result<Metrics> {
        let c = self.counters();
        let space = self.segments.space();
        Ok(Metrics {
            total_checkpoints: c.checkpoints,
            active_sessions: c.active_sessions,
            total_sessions_created: c.sessions_created,
            global_sequence: c.global_seq,
            event_sequence: c.event_seq,
            oldest_event: self.read.oldest_event()?,
            bytes_on_disk: self.db.size_on_disk()? + space.bytes_on_disk,
            state_live_bytes: space.live_bytes,
            state_dead_bytes: space.dead_bytes,
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}
