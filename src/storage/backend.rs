//! The storage interface: what the service needs from a store, and the
//! rules every implementation keeps. The sled store (`store`) is one
//! implementation; a networked one (PostgreSQL) is meant to be another,
//! so every method that may need a round trip is async.
//!
//! # The contract
//!
//! - **Atomic.** Each write applies all of its changes (records, indexes,
//!   counters, journal event) or none: a crash at any moment leaves either
//!   the whole write or nothing of it. A refused write changes nothing and
//!   consumes no sequence number.
//! - **Durable when acknowledged.** A write returns once it is as durable
//!   as [`Durability`] promises: in `sync` mode it survives a crash or a
//!   power cut; in `async` mode it does within a bounded window.
//! - **Reads show only durable data** (in `sync` mode): a read answers
//!   only once everything it could have observed is durable, so no client
//!   is shown a checkpoint, sequence number or deletion that a crash could
//!   undo. In `async` mode reads show acknowledged writes.
//! - **Sequences.** Checkpoint sequence numbers are global, start at 1,
//!   increase with every checkpoint stored and are never reused, also
//!   across restarts and crashes; the same holds for journal event
//!   sequences and session ordinals.
//! - **The journal.** Every write that changes a session appends one event
//!   in the same atomic change. Events are kept up to the configured
//!   retention (the oldest are trimmed); [`Backend::watch_events`] feeds
//!   appends in sequence order, before they are durable, and
//!   [`Backend::durable_marks`] says up to which sequence they may be shown.
//! - **Failing closed.** After a write fails to reach the disk, every later
//!   write is refused (`Failed`) until the store is reopened. A networked
//!   store whose server is unreachable refuses requests (`Unavailable`) and
//!   serves again once it answers: a failed transaction applied nothing.

use super::commit::Synced;
use super::error::Result;
use super::import::{ImportBatch, ImportCounts};
use crate::config::Durability;
use crate::model::{
    Annotation, Checkpoint, CheckpointId, CheckpointSummary, Compaction, JournalEvent, ListQuery, MetadataFilter,
    Metrics, NewCheckpoint, NewWrites, Page, RetentionPolicy, SearchQuery, Session, SessionId, Severity, Validation,
};
use serde_json::value::RawValue;

/// What the durable mark says (see [`Backend::durable_marks`]).
pub type DurableMark = Synced;

/// A shared store behind the interface.
pub type SharedBackend = std::sync::Arc<dyn Backend>;

#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    // ----- the store --------------------------------------------------------

    fn durability(&self) -> Durability;
    /// The format (or schema) version this store reads and writes.
    fn format_version(&self) -> u32;
    /// Whether it still accepts writes.
    fn healthy(&self) -> bool;

    /// Bytes of large values kept outside the index (the sled store's state
    /// segments): live, dead, on disk. Zero for a store without them.
    fn space(&self) -> super::segments::SpaceUsage {
        super::segments::SpaceUsage::default()
    }
    /// Reports each group commit to `observer` from now on (metrics); a
    /// store without group commits never calls it.
    fn observe_commits(&self, _observer: std::sync::Arc<dyn super::commit::CommitObserver>) {}
    /// Flushes and syncs everything, and stops accepting writes.
    fn close(&self);
    /// The local directory holding the store's files, if it has one (the
    /// control socket that pauses writes for a consistent copy lives there).
    fn data_dir(&self) -> Option<&std::path::Path>;
    /// Stops every write at the gate (waiting for those in progress), then
    /// makes everything applied durable, in either mode. Until the returned
    /// pause is dropped nothing changes the store's files, so a copy taken
    /// meanwhile is a consistent image holding every acknowledged write.
    /// Reads go on; writers wait.
    async fn pause_writes(&self) -> Result<WritePause>;

    // ----- writes: atomic, acknowledged once durable ------------------------

    async fn create_session(&self, name: String, metadata: Box<RawValue>) -> Result<Session>;
    /// The session with client key `key`, created with `name` and
    /// `metadata` when there is none; and whether it was created. Atomic:
    /// two clients racing for one key get the same session.
    async fn open_session(&self, key: String, name: String, metadata: Box<RawValue>) -> Result<(Session, bool)>;
    /// Deletes a session with all its checkpoints; returns how many.
    async fn delete_session(&self, id: SessionId) -> Result<u64>;
    /// Sets (or with `None` clears) the policy applied as checkpoints are added.
    async fn set_retention(&self, id: SessionId, policy: Option<RetentionPolicy>) -> Result<Option<RetentionPolicy>>;
    /// Stores a checkpoint with the next global sequence number, then
    /// applies the session's retention policy (never to the new checkpoint
    /// itself). A parent in another session is a `Conflict`.
    async fn put_checkpoint(&self, new: NewCheckpoint) -> Result<(CheckpointSummary, Option<Compaction>)>;
    /// Returns a checkpoint of `session` and journals that it was restored.
    async fn restore(&self, session: SessionId, id: CheckpointId) -> Result<Checkpoint>;
    /// Deletes one checkpoint; with `session`, only if it belongs there.
    /// Returns the session it belonged to.
    async fn delete_checkpoint(&self, id: CheckpointId, session: Option<SessionId>) -> Result<SessionId>;
    /// Adds an annotation; `Full` once the checkpoint has `max`.
    async fn annotate(&self, id: CheckpointId, note: String, severity: Severity, max: u32) -> Result<Annotation>;
    /// Removes the checkpoints of `session` that `policy` does not keep
    /// (with `per_namespace`, ranked within each namespace).
    async fn compact(&self, session: SessionId, policy: &RetentionPolicy, per_namespace: bool) -> Result<Compaction>;
    /// Stores a task's pending writes for a checkpoint (which need not be
    /// stored yet): for idx >= 0 the first stored is kept, for idx < 0 the
    /// last. Returns how many were stored or replaced.
    async fn put_writes(&self, writes: NewWrites) -> Result<u64>;
    /// Copies a session's checkpoints and writes into the session with
    /// client key `key` (created if needed; a new one without a key).
    /// Atomic. Returns the target and how many checkpoints were copied.
    async fn copy_session(
        &self,
        source: SessionId,
        key: Option<String>,
        name: String,
        metadata: Box<RawValue>,
    ) -> Result<(Session, u64)>;
    /// Deletes a bounded batch of the checkpoints whose metadata matches
    /// (of one session or all, of one namespace or all); returns how many,
    /// and whether more match.
    async fn delete_checkpoints(
        &self,
        session: Option<SessionId>,
        namespace: Option<&str>,
        filter: &MetadataFilter,
    ) -> Result<(u64, bool)>;
    /// Stores records written elsewhere as they were (see `import`); no events.
    async fn import(&self, batch: ImportBatch) -> Result<ImportCounts>;

    // ----- reads: only what is durable --------------------------------------

    async fn session(&self, id: SessionId) -> Result<Session>;
    /// The session with client key `key` (`NotFound` if none).
    async fn session_by_key(&self, key: &str) -> Result<Session>;
    /// Sessions in creation order, starting after session `after`; with
    /// `key_prefix`, those whose key starts with it, in key order.
    async fn list_sessions(
        &self,
        after: Option<SessionId>,
        key_prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Session>>;
    /// The full checkpoint: state, metadata, annotations and writes.
    async fn checkpoint(&self, id: CheckpointId) -> Result<Checkpoint>;
    /// The checkpoint with the client's id `external` in (session,
    /// namespace), or with `None` the newest there (`NotFound` if none).
    async fn checkpoint_in(&self, session: SessionId, namespace: &str, external: Option<&str>) -> Result<Checkpoint>;
    /// One page of a session's checkpoints, at most `max` long: summaries,
    /// or full records with `q.full`.
    async fn list_checkpoints(&self, session: SessionId, q: &ListQuery, max: usize) -> Result<Page>;
    /// The same filters across every session, newest first.
    async fn search_checkpoints(&self, q: &SearchQuery, max: usize) -> Result<Page>;
    /// Checkpoints of every session by global sequence, after `after`.
    async fn list_by_sequence(&self, after: u64, limit: usize) -> Result<Vec<CheckpointSummary>>;
    /// Checks the checksum of every checkpoint (of one session, or all).
    async fn validate(&self, session: Option<SessionId>) -> Result<Validation>;
    async fn metrics(&self) -> Result<Metrics>;
    /// Whether nothing was ever written: no session, checkpoint or event,
    /// and no sequence number handed out.
    async fn is_pristine(&self) -> Result<bool>;

    // ----- the journal --------------------------------------------------------

    /// Journal events with `after < seq <= through`, at most `limit`,
    /// optionally of one session (durable or not: the caller bounds
    /// `through` by the durable mark).
    async fn events(
        &self,
        after: u64,
        through: u64,
        session: Option<SessionId>,
        limit: usize,
    ) -> Result<Vec<JournalEvent>>;
    /// The oldest event the journal still holds.
    async fn oldest_event(&self) -> Result<Option<u64>>;
    /// The last event sequence handed out (durable or not yet).
    fn event_sequence(&self) -> u64;
    /// The newest event sequence handed out by any writer of this store's
    /// data, durable or not: [`Backend::event_sequence`] for a store with
    /// one writer; a store that several servers share reads it (a client
    /// may resume from an event another server delivered).
    async fn newest_event_sequence(&self) -> Result<u64> {
        Ok(self.event_sequence())
    }
    /// A live feed of journal appends, in sequence order, before they are
    /// durable; to be drained continuously by one thread.
    fn watch_events(&self) -> Box<dyn EventFeed>;
    /// Watermarks of what is durable (and so may be shown to subscribers).
    fn durable_marks(&self) -> tokio::sync::watch::Receiver<DurableMark>;
}

/// Writes are held while this lives (see [`Backend::pause_writes`]).
pub struct WritePause {
    pub(crate) _guard: Box<dyn std::any::Any + Send + Sync>,
    /// As of the pause: what a copy taken now holds.
    pub metrics: Metrics,
}

/// Journal appends as the store reports them (see [`Backend::watch_events`]).
pub trait EventFeed: Send {
    /// The next append, waiting on the calling thread; `None` when the
    /// store is gone.
    fn next_blocking(&mut self) -> Option<Appended>;
}

/// One journal append seen by an [`EventFeed`].
#[derive(Debug, Clone)]
pub enum Appended {
    Event(JournalEvent),
    /// An event whose record cannot be decoded (`verify` reports it): its
    /// sequence, so that dispatch passes over it instead of waiting.
    Undecodable {
        seq: u64,
    },
    /// Events `from..=through` were removed by retention before the feed
    /// could read them (a feed that reads its journal: PostgreSQL's).
    /// Whoever needed them has lost them.
    Trimmed {
        from: u64,
        through: u64,
    },
}
