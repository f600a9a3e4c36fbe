//! Durable storage on sled: the only module that knows trees and key bytes.
//!
//! **Durability rule.** Every mutating method gathers all of its changes —
//! record, indexes, counters and journal event — under the store's write
//! lock and applies them atomically (see `Store::apply`), then returns only
//! once the change is as durable as [`Durability`] promises (see [`commit`]).
//! A refused write changes nothing and consumes no sequence number. After an
//! I/O error the store fails closed: every later write is refused with
//! `unavailable`.
//!
//! **Atomicity.** A change is first written whole as one *intent* record (a
//! single sled insert, atomic by itself), then key by key. sled recovers a
//! prefix of its log, so after a crash either the intent is missing (and so
//! is every later key) or it is present and [`Store::open`] re-applies it;
//! re-applying is idempotent. This costs one extra insert where a sled
//! transaction or batch would roll sled's I/O buffer twice (two extra
//! `pwrite` + `sync_file_range` per write, measured as 2x the whole write).
//! Keys are applied in an order that keeps every index entry pointing at a
//! record for concurrent readers too: new records before their indexes,
//! removed indexes before their records.
//!
//! **Reads.** Reads go straight to sled, without the write lock, so they may
//! observe a change before it is durable. A reader therefore calls
//! [`Store::settled`] after reading and before answering: it returns once
//! every change the read could have seen is durable, so no client is ever
//! shown a checkpoint, sequence number or deletion that a crash could undo.
//! Journal events are likewise released to subscribers only once durable.

pub mod codec;
pub mod commit;
pub mod datadir;
pub mod dircopy;
pub mod import;
pub mod inspect;
pub mod keys;
pub mod migrate;
pub mod records;

use crate::config::{Durability, MAX_CHANGE_CHECKPOINTS, MAX_PAGE_BYTES, MAX_REPORTED_INVALID, StoreConfig};
use crate::error::{Error, Result};
use crate::model::{
    Annotation, Checkpoint, CheckpointId, CheckpointSummary, Compaction, EventKind, JournalEvent, ListQuery, Metrics,
    NewCheckpoint, RetentionPolicy, Session, SessionId, Severity, Validation, json_null,
};
use chrono::Utc;
use commit::{Committer, Synced, Ticket};
use datadir::Access;
use keys::{TREE_COUNT, TreeId};
use records::{AnnotationRecord, CheckpointRecord, Counters, EventRecord, SessionRecord, micros, raw_json};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sled::{Batch, Tree};
use std::sync::{Arc, Mutex};

pub use commit::Synced as DurableMark;

/// The durable checkpoint store. Cheap to share behind an `Arc`.
pub struct Store {
    db: sled::Db,
    trees: Vec<Tree>,
    /// Every write passes it shared; [`Store::pause_writes`] takes it
    /// whole, so that nothing changes the files while they are copied.
    gate: Arc<tokio::sync::RwLock<()>>,
    /// Serialises writers; holds the counters as last committed.
    writer: Mutex<Counters>,
    committer: Committer,
    config: StoreConfig,
}

/// Writes are held while this lives (see [`Store::pause_writes`]).
pub struct WritePause {
    _guard: tokio::sync::OwnedRwLockWriteGuard<()>,
    /// As of the pause: what a copy taken now holds.
    pub metrics: Metrics,
}

/// One key of a change: a put, or a removal when `value` is `None`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Op {
    tree: u8,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

impl Op {
    /// Application phase: index removals, then puts (records before
    /// indexes, by tree order), then record removals. A checkpoint's state
    /// is put just before its record (and removed after it), so a reader
    /// that finds the record also finds the state (`validate` checks both).
    fn phase(&self) -> (u8, u8) {
        let put_order =
            |tree: u8| if tree == TreeId::States as u8 { TreeId::Checkpoints as u8 * 2 - 1 } else { tree * 2 };
        match (&self.value, TreeId::is_record(self.tree)) {
            (None, false) => (0, self.tree),
            (Some(_), _) => (1, put_order(self.tree)),
            (None, true) => (2, self.tree),
        }
    }
}

/// The changes of one write, gathered before they are applied atomically.
struct Write<'a> {
    store: &'a Store,
    counters: Counters,
    ops: Vec<Op>,
    now: i64,
}

impl Write<'_> {
    fn put(&mut self, tree: TreeId, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops.push(Op { tree: tree as u8, key: key.as_ref().to_vec(), value: Some(value.as_ref().to_vec()) });
    }

    fn del(&mut self, tree: TreeId, key: impl AsRef<[u8]>) {
        self.ops.push(Op { tree: tree as u8, key: key.as_ref().to_vec(), value: None });
    }

    /// Appends a journal event and trims the event that falls out of retention.
    fn event(&mut self, session_id: SessionId, kind: EventKind) {
        self.counters.event_seq += 1;
        let seq = self.counters.event_seq;
        let record = EventRecord { session_id, timestamp: self.now, kind };
        self.put(TreeId::Events, keys::u64_key(seq), codec::encode(&record));
        if let Some(old) = seq.checked_sub(self.store.config.event_retention).filter(|&s| s > 0) {
            self.del(TreeId::Events, keys::u64_key(old));
        }
    }

    /// Removes a checkpoint with every index entry and annotation it has.
    fn remove_checkpoint(&mut self, rec: &CheckpointRecord) -> Result<()> {
        let key = keys::checkpoint_key(rec.session_id, rec.sequence_number);
        self.del(TreeId::Checkpoints, key);
        self.del(TreeId::States, key);
        self.del(TreeId::CheckpointIds, keys::checkpoint_id_key(rec.id));
        self.del(TreeId::Sequences, keys::u64_key(rec.sequence_number));
        for tag in &rec.tags {
            self.del(TreeId::Tags, keys::tag_key(rec.session_id, tag, rec.sequence_number));
        }
        for entry in self.store.tree(TreeId::Annotations).scan_prefix(rec.id.as_bytes()) {
            let (k, _) = entry?;
            self.del(TreeId::Annotations, k);
        }
        // Counts read from disk may be low (damage): never below zero.
        self.counters.checkpoints = self.counters.checkpoints.saturating_sub(1);
        Ok(())
    }

    fn put_session(&mut self, rec: &SessionRecord) {
        self.put(TreeId::Sessions, keys::session_key(rec.id), codec::encode(rec));
    }
}

impl Store {
    /// Opens (creating if needed) a data directory, refusing a damaged one
    /// ([`datadir`]). Reads a constant number of keys: counters live in the
    /// meta tree, no tree is scanned.
    pub fn open(config: StoreConfig) -> Result<Store> {
        // A damaged directory is refused, whatever sled makes of it (`datadir`).
        let (opened, counters) =
            datadir::open(&config.data_dir, &config.data_dir, Access::Serve, config.cache_bytes, |db, trees| {
                migrate::prepare(db, &trees[TreeId::Meta as usize], &config)?;
                match trees[TreeId::Meta as usize].get(keys::META_COUNTERS)? {
                    Some(bytes) => codec::decode(&bytes, "counters"),
                    None => Ok(Counters::default()),
                }
            })?;
        let datadir::Opened { db, trees } = opened;
        let committer = Committer::start(db.clone(), &config.data_dir, config.durability, counters)?;
        let gate = Arc::new(tokio::sync::RwLock::new(()));
        let store = Store { db, trees, gate, writer: Mutex::new(counters), committer, config };
        store.trim_journal()?;
        store.write_mark()?;
        Ok(store)
    }

    /// Records the counters beside sled's files once all they count is
    /// durable (see [`datadir::MARK_FILE`]): the next open checks that sled
    /// recovered at least this much.
    fn write_mark(&self) -> Result<()> {
        let counters = *self.writer.lock().map_err(|_| Error::Internal("write lock poisoned".into()))?;
        self.committer.write_mark(counters)?;
        Ok(())
    }

    pub fn durability(&self) -> Durability {
        self.config.durability
    }

    pub fn format_version(&self) -> u32 {
        migrate::CURRENT_FORMAT
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn tree(&self, id: TreeId) -> &Tree {
        &self.trees[id as usize]
    }

    /// Runs `f` to gather one atomic write, applies it, and waits until it is
    /// durable. The single path by which anything is written.
    async fn write<T>(&self, f: impl FnOnce(&mut Write<'_>) -> Result<T>) -> Result<T> {
        let (out, ticket) = {
            let _open = self.gate.read().await;
            self.write_now(f)?
        };
        self.committer.wait(ticket).await?;
        Ok(out)
    }

    fn write_now<T>(&self, f: impl FnOnce(&mut Write<'_>) -> Result<T>) -> Result<(T, Ticket)> {
        let mut committed = self.writer.lock().map_err(|_| Error::Internal("write lock poisoned".into()))?;
        self.committer.check()?;
        if committed.exhausted() {
            return Err(Error::Unavailable(format!("sequence numbers are exhausted: {:?}", *committed)));
        }
        let mut w = Write { store: self, counters: *committed, ops: Vec::with_capacity(16), now: micros(Utc::now()) };
        let out = f(&mut w)?;
        if w.counters != *committed {
            w.put(TreeId::Meta, keys::META_COUNTERS, codec::encode(&w.counters));
        }
        self.committer.reserve();
        if let Err(e) = self.apply(w.ops) {
            // Part of the change may be applied; the intent completes it at
            // the next open. Until then, fail closed.
            self.committer.fail();
            return Err(e.into());
        }
        *committed = w.counters;
        Ok((out, self.committer.applied(*committed)))
    }

    /// Applies one change atomically with respect to crashes: the intent
    /// record first, then each key in phase order.
    fn apply(&self, mut ops: Vec<Op>) -> sled::Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        ops.sort_by_key(Op::phase);
        self.tree(TreeId::Meta).insert(keys::META_INTENT, codec::encode(&ops))?;
        apply_ops(&self.trees, &ops)
    }

    /// Trims the journal to the configured retention (after it was lowered).
    fn trim_journal(&self) -> Result<()> {
        let last = self.event_sequence();
        let Some(keep_from) = last.checked_sub(self.config.event_retention).map(|s| s + 1) else {
            return Ok(());
        };
        let events = self.tree(TreeId::Events);
        loop {
            let mut batch = Batch::default();
            let mut n = 0;
            for entry in events.range(..keys::u64_key(keep_from)).keys().take(10_000) {
                batch.remove(entry?);
                n += 1;
            }
            if n == 0 {
                return Ok(());
            }
            events.apply_batch(batch)?;
        }
    }

    // ----- sessions -------------------------------------------------------

    pub async fn create_session(&self, name: String, metadata: Box<RawValue>) -> Result<Session> {
        self.write(|w| {
            w.counters.sessions_created += 1;
            w.counters.active_sessions += 1;
            let rec = SessionRecord {
                id: SessionId::new(),
                ordinal: w.counters.sessions_created,
                name,
                created_at: w.now,
                metadata: metadata.get().as_bytes().to_vec(),
                retention: None,
                checkpoint_count: 0,
                last_sequence: None,
            };
            w.put_session(&rec);
            w.put(TreeId::SessionOrder, keys::u64_key(rec.ordinal), &keys::session_key(rec.id)[..]);
            rec.to_model()
        })
        .await
    }

    fn session_record(&self, id: SessionId) -> Result<SessionRecord> {
        match self.tree(TreeId::Sessions).get(keys::session_key(id))? {
            Some(bytes) => codec::decode(&bytes, "session"),
            None => Err(Error::NotFound(format!("session {id} not found"))),
        }
    }

    pub fn session(&self, id: SessionId) -> Result<Session> {
        self.session_record(id)?.to_model()
    }

    /// Sessions in creation order, starting after session `after`.
    pub fn list_sessions(&self, after: Option<SessionId>, limit: usize) -> Result<Vec<Session>> {
        let start = match after {
            Some(id) => match self.session_record(id)?.ordinal.checked_add(1) {
                Some(next) => next,
                None => return Ok(Vec::new()),
            },
            None => 0,
        };
        let mut out = Vec::new();
        for entry in self.tree(TreeId::SessionOrder).range(keys::u64_key(start)..) {
            if out.len() >= limit {
                break;
            }
            let (_, id) = entry?;
            let id = uuid::Uuid::from_slice(&id).map_err(|_| Error::Internal("bad session_order entry".into()))?;
            // A session deleted between the two reads is simply skipped.
            if let Some(bytes) = self.tree(TreeId::Sessions).get(id.as_bytes())? {
                out.push(codec::decode::<SessionRecord>(&bytes, "session")?.to_model()?);
            }
        }
        Ok(out)
    }

    /// Deletes a session with all its checkpoints; returns how many.
    pub async fn delete_session(&self, id: SessionId) -> Result<u64> {
        // In changes of at most MAX_CHANGE_CHECKPOINTS checkpoints, so that
        // no intent record grows with the session. Each change leaves the
        // session consistent (fewer checkpoints, counts updated); the last
        // one removes the session and journals the event. A crash between
        // them leaves a smaller session, never a dangling index entry.
        let mut removed = 0;
        loop {
            let _open = self.gate.read().await;
            let (done, ticket) = self.write_now(|w| {
                let mut rec = w.store.session_record(id)?;
                let range = w.store.tree(TreeId::Checkpoints).range(keys::session_checkpoints(id, 0..=u64::MAX));
                let mut chunk = 0;
                for entry in range.take(MAX_CHANGE_CHECKPOINTS) {
                    w.remove_checkpoint(&decode_checkpoint(&entry?.1)?)?;
                    chunk += 1;
                }
                removed += chunk;
                if chunk == MAX_CHANGE_CHECKPOINTS as u64 {
                    rec.checkpoint_count = rec.checkpoint_count.saturating_sub(chunk);
                    w.put_session(&rec);
                    return Ok(false);
                }
                w.del(TreeId::Sessions, keys::session_key(id));
                w.del(TreeId::SessionOrder, keys::u64_key(rec.ordinal));
                w.counters.active_sessions = w.counters.active_sessions.saturating_sub(1);
                w.event(id, EventKind::SessionDeleted { removed });
                Ok(true)
            })?;
            if done {
                self.committer.wait(ticket).await?;
                return Ok(removed);
            }
        }
    }

    /// Sets (or with `None` clears) the policy applied as checkpoints are added.
    pub async fn set_retention(
        &self,
        id: SessionId,
        policy: Option<RetentionPolicy>,
    ) -> Result<Option<RetentionPolicy>> {
        self.write(|w| {
            let mut rec = w.store.session_record(id)?;
            rec.retention = policy.filter(|p| !p.is_empty());
            w.put_session(&rec);
            Ok(rec.retention)
        })
        .await
    }

    // ----- checkpoints ----------------------------------------------------

    /// Stores a checkpoint with the next global sequence number, then applies
    /// the session's retention policy (never to the new checkpoint itself).
    pub async fn put_checkpoint(&self, new: NewCheckpoint) -> Result<(CheckpointSummary, Option<Compaction>)> {
        self.write(|w| {
            let mut session = w.store.session_record(new.session_id)?;
            if let Some(parent) = new.parent_id {
                let (owner, _) = w.store.locate(parent)?;
                if owner != new.session_id {
                    return Err(Error::Conflict(format!("parent checkpoint {parent} belongs to another session")));
                }
            }
            w.counters.global_seq += 1;
            w.counters.checkpoints += 1;
            let seq = w.counters.global_seq;
            let state = new.state.unwrap_or_else(json_null);
            let rec = CheckpointRecord {
                id: CheckpointId::new(),
                session_id: new.session_id,
                sequence_number: seq,
                timestamp: w.now,
                message: new.message,
                tags: new.tags,
                trigger: new.trigger,
                metadata: new.metadata.map_or_else(|| b"{}".to_vec(), |m| m.get().as_bytes().to_vec()),
                parent_id: new.parent_id,
                state_crc: crc32fast::hash(state.get().as_bytes()),
            };
            let key = keys::checkpoint_key(rec.session_id, seq);
            w.put(TreeId::Checkpoints, key, codec::encode(&rec));
            w.put(TreeId::States, key, state.get().as_bytes());
            w.put(TreeId::CheckpointIds, keys::checkpoint_id_key(rec.id), &key[..]);
            w.put(TreeId::Sequences, keys::u64_key(seq), &keys::sequence_value(rec.session_id, rec.id)[..]);
            for tag in &rec.tags {
                w.put(TreeId::Tags, keys::tag_key(rec.session_id, tag, seq), &[][..]);
            }
            session.checkpoint_count += 1;
            session.last_sequence = Some(seq);
            w.event(rec.session_id, EventKind::CheckpointCreated { checkpoint_id: rec.id, sequence_number: seq });
            let compaction = match session.retention.clone() {
                Some(policy) => apply_policy(w, &mut session, &policy, 1)?,
                None => None,
            };
            w.put_session(&session);
            Ok((rec.summary(false), compaction))
        })
        .await
    }

    /// Where a checkpoint lives: its session and sequence number.
    fn locate(&self, id: CheckpointId) -> Result<(SessionId, u64)> {
        let not_found = || Error::NotFound(format!("checkpoint {id} not found"));
        let value = self.tree(TreeId::CheckpointIds).get(keys::checkpoint_id_key(id))?.ok_or_else(not_found)?;
        keys::decode_checkpoint_key(&value).ok_or_else(|| Error::Internal(format!("bad index entry for {id}")))
    }

    fn checkpoint_record(&self, id: CheckpointId) -> Result<CheckpointRecord> {
        let (session, seq) = self.locate(id)?;
        match self.tree(TreeId::Checkpoints).get(keys::checkpoint_key(session, seq))? {
            Some(bytes) => decode_checkpoint(&bytes),
            None => Err(Error::NotFound(format!("checkpoint {id} not found"))),
        }
    }

    fn has_notes(&self, id: CheckpointId) -> Result<bool> {
        Ok(self.tree(TreeId::Annotations).scan_prefix(id.as_bytes()).next().transpose()?.is_some())
    }

    /// The full record: state, metadata and annotations.
    pub fn checkpoint(&self, id: CheckpointId) -> Result<Checkpoint> {
        let (session, seq) = self.locate(id)?;
        let key = keys::checkpoint_key(session, seq);
        let not_found = || Error::NotFound(format!("checkpoint {id} not found"));
        let bytes = self.tree(TreeId::Checkpoints).get(key)?.ok_or_else(not_found)?;
        let rec = decode_checkpoint(&bytes)?;
        let state = self.tree(TreeId::States).get(key)?.ok_or_else(not_found)?;
        if crc32fast::hash(&state) != rec.state_crc {
            return Err(Error::Internal(format!("checkpoint {id}: stored state failed its checksum")));
        }
        let annotations = self.annotations(id)?;
        Ok(Checkpoint {
            summary: rec.summary(!annotations.is_empty()),
            state: raw_json(state.to_vec(), "state")?,
            metadata: raw_json(rec.metadata, "checkpoint metadata")?,
            annotations,
            checksum: codec::stored_checksum(&bytes).unwrap_or_default(),
        })
    }

    fn annotations(&self, id: CheckpointId) -> Result<Vec<Annotation>> {
        self.tree(TreeId::Annotations)
            .scan_prefix(id.as_bytes())
            .map(|entry| {
                let (_, bytes) = entry?;
                Ok(codec::decode::<AnnotationRecord>(&bytes, "annotation")?.to_model())
            })
            .collect()
    }

    /// One page of a session's checkpoints. Costs O(page), not O(session).
    /// A page ends early once it holds [`MAX_PAGE_BYTES`] of messages and
    /// tags, so a reply stays bounded; the client pages on with `after`.
    pub fn list_checkpoints(&self, session: SessionId, q: &ListQuery, max: usize) -> Result<Vec<CheckpointSummary>> {
        self.session_record(session)?;
        let limit = q.limit.unwrap_or(max).min(max);
        let low = q.after.map_or(Some(0), |a| a.checked_add(1));
        let high = q.before.map_or(Some(u64::MAX), |b| b.checked_sub(1));
        let (Some(low), Some(high)) = (low, high) else { return Ok(Vec::new()) };
        if low > high || limit == 0 {
            return Ok(Vec::new());
        }
        let checkpoints = self.tree(TreeId::Checkpoints);
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut text_bytes = 0;
        // Adds a row; false once the page holds MAX_PAGE_BYTES of text.
        let mut push = |bytes: &[u8]| -> Result<bool> {
            let rec = decode_checkpoint(bytes)?;
            let notes = self.has_notes(rec.id)?;
            text_bytes += rec.message.len() + rec.tags.iter().map(String::len).sum::<usize>();
            out.push(rec.summary(notes));
            Ok(text_bytes < MAX_PAGE_BYTES)
        };
        match &q.tag {
            None => {
                let range = checkpoints.range(keys::session_checkpoints(session, low..=high));
                let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
                    if q.newest_first { Box::new(range.rev()) } else { Box::new(range) };
                for entry in iter.take(limit) {
                    if !push(&entry?.1)? {
                        break;
                    }
                }
            }
            Some(tag) => {
                let prefix = keys::tag_prefix(session, tag);
                let range =
                    self.tree(TreeId::Tags).range(keys::tag_key(session, tag, low)..=keys::tag_key(session, tag, high));
                let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
                    if q.newest_first { Box::new(range.rev()) } else { Box::new(range) };
                for entry in iter.take(limit) {
                    let (k, _) = entry?;
                    debug_assert!(k.starts_with(&prefix));
                    let seq =
                        keys::tag_key_sequence(&k).ok_or_else(|| Error::Internal("bad tag index entry".into()))?;
                    // An index entry without its record would be corruption;
                    // `verify` reports it, listing skips it.
                    let record = checkpoints.get(keys::checkpoint_key(session, seq))?;
                    if let Some(bytes) = record
                        && !push(&bytes)?
                    {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Checkpoints of every session by global sequence, after `after`.
    pub fn list_by_sequence(&self, after: u64, limit: usize) -> Result<Vec<CheckpointSummary>> {
        let Some(start) = after.checked_add(1) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for entry in self.tree(TreeId::Sequences).range(keys::u64_key(start)..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry?;
            let seq = keys::decode_u64(&k).ok_or_else(|| Error::Internal("bad sequence key".into()))?;
            let (session, _) =
                keys::decode_sequence_value(&v).ok_or_else(|| Error::Internal("bad sequence entry".into()))?;
            if let Some(bytes) = self.tree(TreeId::Checkpoints).get(keys::checkpoint_key(session, seq))? {
                let rec = decode_checkpoint(&bytes)?;
                let notes = self.has_notes(rec.id)?;
                out.push(rec.summary(notes));
            }
        }
        Ok(out)
    }

    /// Returns a checkpoint's state and journals that it was restored.
    pub async fn restore(&self, session: SessionId, id: CheckpointId) -> Result<Checkpoint> {
        self.write(|w| {
            let cp = w.store.checkpoint(id)?;
            if cp.summary.session_id != session {
                return Err(Error::NotFound(format!("checkpoint {id} not found in session {session}")));
            }
            let sequence_number = cp.summary.sequence_number;
            w.event(session, EventKind::CheckpointRestored { checkpoint_id: id, sequence_number });
            Ok(cp)
        })
        .await
    }

    /// Deletes one checkpoint; with `session`, only if it belongs there.
    /// Returns the session it belonged to.
    pub async fn delete_checkpoint(&self, id: CheckpointId, session: Option<SessionId>) -> Result<SessionId> {
        self.write(|w| {
            let rec = w.store.checkpoint_record(id)?;
            if session.is_some_and(|s| s != rec.session_id) {
                return Err(Error::NotFound(format!("checkpoint {id} not found in this session")));
            }
            let mut sess = w.store.session_record(rec.session_id)?;
            w.remove_checkpoint(&rec)?;
            sess.checkpoint_count = sess.checkpoint_count.saturating_sub(1);
            if sess.last_sequence == Some(rec.sequence_number) {
                sess.last_sequence = w.store.newest_before(rec.session_id, rec.sequence_number)?;
            }
            w.put_session(&sess);
            w.event(
                rec.session_id,
                EventKind::CheckpointDeleted { checkpoint_id: id, sequence_number: rec.sequence_number },
            );
            Ok(rec.session_id)
        })
        .await
    }

    /// Sequence of the newest checkpoint of `session` below `seq`.
    fn newest_before(&self, session: SessionId, seq: u64) -> Result<Option<u64>> {
        let Some(high) = seq.checked_sub(1) else { return Ok(None) };
        match self.tree(TreeId::Checkpoints).range(keys::session_checkpoints(session, 0..=high)).keys().next_back() {
            Some(k) => Ok(keys::decode_checkpoint_key(&k?).map(|(_, s)| s)),
            None => Ok(None),
        }
    }

    pub async fn annotate(&self, id: CheckpointId, note: String, severity: Severity) -> Result<Annotation> {
        self.write(|w| {
            w.store.locate(id)?;
            let tree = w.store.tree(TreeId::Annotations);
            let next = match tree.scan_prefix(id.as_bytes()).keys().next_back() {
                Some(k) => keys::annotation_index(&k?)
                    .ok_or_else(|| Error::Internal("bad annotation key".into()))?
                    .saturating_add(1),
                None => 0,
            };
            if next >= crate::config::MAX_ANNOTATIONS {
                return Err(Error::TooLarge(format!(
                    "checkpoint {id} already has {} annotations",
                    crate::config::MAX_ANNOTATIONS
                )));
            }
            let rec = AnnotationRecord { note, severity, timestamp: w.now };
            w.put(TreeId::Annotations, keys::annotation_key(id, next), codec::encode(&rec));
            Ok(rec.to_model())
        })
        .await
    }

    /// Removes the checkpoints of `session` that `policy` does not keep.
    pub async fn compact(&self, session: SessionId, policy: &RetentionPolicy) -> Result<Compaction> {
        self.write(|w| {
            let mut rec = w.store.session_record(session)?;
            let result = apply_policy(w, &mut rec, policy, 0)?
                .unwrap_or(Compaction { removed: 0, remaining: rec.checkpoint_count });
            w.put_session(&rec);
            if result.removed == 0 {
                w.event(session, EventKind::CheckpointsCompacted { removed: 0, remaining: result.remaining });
            }
            Ok(result)
        })
        .await
    }

    // ----- integrity, metrics, journal --------------------------------------

    /// Checks the checksum of every checkpoint (of one session, or all).
    pub fn validate(&self, session: Option<SessionId>) -> Result<Validation> {
        let checkpoints = self.tree(TreeId::Checkpoints);
        let iter = match session {
            Some(s) => {
                self.session_record(s)?;
                checkpoints.range(keys::session_checkpoints(s, 0..=u64::MAX))
            }
            None => checkpoints.iter(),
        };
        let mut v = Validation::default();
        for entry in iter {
            let (k, bytes) = entry?;
            let ok = match decode_checkpoint(&bytes) {
                Ok(rec) => match self.tree(TreeId::States).get(&k)? {
                    Some(state) => crc32fast::hash(&state) == rec.state_crc,
                    // Deleted since the scan read its record (a delete
                    // removes the record, then the state): not damage.
                    None if checkpoints.get(&k)?.is_none() => continue,
                    None => false,
                },
                Err(_) => false,
            };
            if ok {
                v.valid += 1;
                continue;
            }
            v.invalid += 1;
            if v.invalid_ids.len() < MAX_REPORTED_INVALID {
                // The id comes from the sequence index: the record itself
                // may be too damaged to say.
                let seq = keys::decode_checkpoint_key(&k).map(|(_, s)| s).unwrap_or_default();
                let owner = self.tree(TreeId::Sequences).get(keys::u64_key(seq))?;
                if let Some((_, id)) = owner.as_deref().and_then(keys::decode_sequence_value) {
                    v.invalid_ids.push(id);
                }
            }
        }
        Ok(v)
    }

    pub fn metrics(&self) -> Result<Metrics> {
        let c = *self.writer.lock().map_err(|_| Error::Internal("write lock poisoned".into()))?;
        Ok(Metrics {
            total_checkpoints: c.checkpoints,
            active_sessions: c.active_sessions,
            total_sessions_created: c.sessions_created,
            global_sequence: c.global_seq,
            event_sequence: c.event_seq,
            oldest_event: self.oldest_event()?,
            bytes_on_disk: self.db.size_on_disk()?,
        })
    }

    /// The last journal event sequence handed out (durable or not yet).
    pub fn event_sequence(&self) -> u64 {
        self.writer.lock().expect("write lock").event_seq
    }

    /// Returns once everything a read may have observed so far is durable
    /// (in `sync` mode; in `async` mode at once). Readers call it after
    /// reading, before they answer: see [`commit::Committer::settled`].
    pub async fn settled(&self) -> Result<()> {
        self.committer.settled().await
    }

    /// Journals `value` as the next event, whatever it holds: tests use it
    /// to put an undecodable record where dispatch will meet it.
    #[cfg(test)]
    pub(crate) async fn append_raw_event(&self, value: &[u8]) -> Result<u64> {
        self.write(|w| {
            w.counters.event_seq += 1;
            w.put(TreeId::Events, keys::u64_key(w.counters.event_seq), value);
            Ok(w.counters.event_seq)
        })
        .await
    }

    /// `async` mode: the longest an acknowledged write has waited to be
    /// durable since the store opened.
    pub fn longest_async_window(&self) -> std::time::Duration {
        self.committer.longest_async_window()
    }

    /// Stops every write at the gate (waiting for those in progress), then
    /// makes everything applied durable, in either mode. Until the returned
    /// pause is dropped, nothing changes the data directory's files: a copy
    /// taken meanwhile is a consistent image that holds every acknowledged
    /// write. Reads go on; writers wait.
    pub async fn pause_writes(&self) -> Result<WritePause> {
        let guard = Arc::clone(&self.gate).write_owned().await;
        self.committer.flush_now().await?;
        Ok(WritePause { _guard: guard, metrics: self.metrics()? })
    }

    /// Whether the store still accepts writes.
    pub fn healthy(&self) -> bool {
        self.committer.check().is_ok()
    }

    /// The oldest event the journal still holds.
    pub fn oldest_event(&self) -> Result<Option<u64>> {
        Ok(self.tree(TreeId::Events).first()?.and_then(|(k, _)| keys::decode_u64(&k)))
    }

    /// Journal events with `after < seq <= through`, at most `limit`,
    /// optionally of one session.
    pub fn events(
        &self,
        after: u64,
        through: u64,
        session: Option<SessionId>,
        limit: usize,
    ) -> Result<Vec<JournalEvent>> {
        let Some(start) = after.checked_add(1) else { return Ok(Vec::new()) };
        if start > through {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for entry in self.tree(TreeId::Events).range(keys::u64_key(start)..=keys::u64_key(through)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry?;
            let event = decode_event(&k, &v)?;
            if session.is_none_or(|s| s == event.session_id) {
                out.push(event);
            }
        }
        Ok(out)
    }

    /// Refuses a replay from before the oldest retained event.
    /// Also refuses one from beyond the newest event (durable or not):
    /// skipping to a seq this journal has not reached would silently drop
    /// the events that will take those numbers (the client saw them on a
    /// directory since restored from a backup, or lost in an async crash).
    pub fn check_replay(&self, since: u64) -> Result<()> {
        let last = self.event_sequence();
        if since > last {
            return Err(Error::Conflict(format!(
                "since {since} is after the newest event, {last}: this server never delivered it; subscribe with since at most {last}"
            )));
        }
        match self.oldest_event()? {
            Some(oldest) if since.saturating_add(1) < oldest => Err(Error::Compacted { requested: since, oldest }),
            None if since < last => Err(Error::Compacted { requested: since, oldest: last.saturating_add(1) }),
            _ => Ok(()),
        }
    }

    /// A live feed of journal appends (sled `watch_prefix`). Appends show up
    /// here before they are durable; pair with [`Store::durable_marks`].
    pub fn watch_events(&self) -> EventWatch {
        EventWatch { sub: self.tree(TreeId::Events).watch_prefix(b"") }
    }

    /// Watermarks of what is durable (and so may be shown to subscribers).
    pub fn durable_marks(&self) -> tokio::sync::watch::Receiver<Synced> {
        self.committer.subscribe()
    }

    /// Flushes and syncs everything, and stops the commit thread.
    pub fn close(&self) {
        self.committer.close();
        // Only when every write applied is on disk: no flush failed.
        if !self.committer.subscribe().borrow().failed
            && let Err(e) = self.write_mark()
        {
            tracing::warn!(error = %e, "could not record the counters beside the data");
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// Applies `policy` to `session`, the `skip` newest checkpoints exempt (the one
/// being added). Returns `None` when nothing was removed.
fn apply_policy(
    w: &mut Write<'_>,
    session: &mut SessionRecord,
    policy: &RetentionPolicy,
    skip: u64,
) -> Result<Option<Compaction>> {
    let id = session.id;
    // Checkpoints already in the tree; `skip` new ones are in the batch only.
    let stored = w.store.tree(TreeId::Checkpoints).range(keys::session_checkpoints(id, 0..=u64::MAX));
    let mut doomed = Vec::new();
    let mut newest_kept = None;
    if policy.preserve_tags.is_empty() {
        // Count-only policy: the oldest go, found without a full scan.
        let keep = policy.keep_recent.unwrap_or(0).saturating_sub(skip);
        let existing = session.checkpoint_count.saturating_sub(skip);
        for entry in stored.take(existing.saturating_sub(keep) as usize) {
            doomed.push(decode_checkpoint(&entry?.1)?);
        }
    } else {
        for (rank, entry) in (skip..).zip(stored.rev()) {
            let rec = decode_checkpoint(&entry?.1)?;
            if policy.keeps(rank, &rec.tags) {
                newest_kept.get_or_insert(rec.sequence_number);
            } else {
                doomed.push(rec);
            }
        }
    }
    if doomed.is_empty() {
        return Ok(None);
    }
    for rec in &doomed {
        w.remove_checkpoint(rec)?;
    }
    let removed = doomed.len() as u64;
    session.checkpoint_count = session.checkpoint_count.saturating_sub(removed);
    if skip == 0 {
        session.last_sequence = if policy.preserve_tags.is_empty() {
            if session.checkpoint_count == 0 { None } else { session.last_sequence }
        } else {
            newest_kept
        };
    }
    let result = Compaction { removed, remaining: session.checkpoint_count };
    w.event(id, EventKind::CheckpointsCompacted { removed, remaining: result.remaining });
    Ok(Some(result))
}

fn apply_ops(trees: &[Tree], ops: &[Op]) -> sled::Result<()> {
    for op in ops {
        let tree = &trees[usize::from(op.tree)];
        match &op.value {
            Some(value) => tree.insert(&op.key, value.as_slice())?,
            None => tree.remove(&op.key)?,
        };
    }
    Ok(())
}

/// Re-applies the last change's intent: completes it if a crash cut it
/// short, and is a no-op otherwise. Then drops the intent, so that later
/// direct writes (journal trimming, migrations) are never undone.
fn replay_intent(db: &sled::Db, trees: &[Tree]) -> Result<()> {
    let meta = &trees[TreeId::Meta as usize];
    let Some(bytes) = meta.get(keys::META_INTENT)? else { return Ok(()) };
    let ops: Vec<Op> = codec::decode(&bytes, "intent")?;
    if ops.iter().any(|op| usize::from(op.tree) >= TREE_COUNT) {
        return Err(Error::Internal("intent names an unknown tree".into()));
    }
    apply_ops(trees, &ops)?;
    meta.remove(keys::META_INTENT)?;
    db.flush()?;
    Ok(())
}

fn decode_checkpoint(bytes: &[u8]) -> Result<CheckpointRecord> {
    codec::decode(bytes, "checkpoint")
}

fn decode_event(k: &[u8], v: &[u8]) -> Result<JournalEvent> {
    let seq = keys::decode_u64(k).ok_or_else(|| Error::Internal("bad event key".into()))?;
    Ok(codec::decode::<EventRecord>(v, "event")?.to_model(seq))
}

/// Journal appends as sled reports them: before they are durable, and in
/// sequence order (writers are serialised by the write lock, and sled's
/// watch delivers one subscriber's events in the order they were written).
pub struct EventWatch {
    sub: sled::Subscriber,
}

/// One journal append seen by [`EventWatch`].
#[derive(Debug)]
pub enum Appended {
    Event(JournalEvent),
    /// An event whose record cannot be decoded (`verify` reports it): its
    /// sequence, so that dispatch passes over it instead of waiting.
    Undecodable {
        seq: u64,
    },
}

impl EventWatch {
    /// The next append, waiting on the calling thread; `None` when the
    /// store is gone. For a thread that drains the watch continuously.
    pub fn next_blocking(&mut self) -> Option<Appended> {
        loop {
            match Iterator::next(&mut self.sub)? {
                sled::Event::Insert { key, value } => match decode_event(&key, &value) {
                    Ok(event) => return Some(Appended::Event(event)),
                    Err(e) => {
                        tracing::error!(error = %e, "undecodable journal event");
                        if let Some(seq) = keys::decode_u64(&key) {
                            return Some(Appended::Undecodable { seq });
                        }
                    }
                },
                // Retention trims show up as removals.
                sled::Event::Remove { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NewCheckpoint, Trigger, json_empty_object};

    /// sled releases a directory's lock a moment after its last handle is
    /// dropped (its threads let go of the file): open with a deadline.
    fn open_when_released(config: StoreConfig) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(config.clone()) {
                Ok(store) => return store,
                Err(e) if e.code() == "unavailable" && std::time::Instant::now() < deadline => std::thread::yield_now(),
                Err(e) => panic!("open {}: {e}", config.data_dir.display()),
            }
        }
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// A crash after the intent and any prefix of a change's keys: opening
    /// the directory completes the change.
    #[tokio::test]
    async fn open_completes_a_change_cut_short() {
        let root = tempfile::tempdir().unwrap();
        let (live, pristine) = (root.path().join("live"), root.path().join("pristine"));
        let store = Store::open(StoreConfig::new(&live)).unwrap();
        let session = store.create_session("s".into(), json_empty_object()).await.unwrap().id;
        drop(store);
        copy_dir(&live, &pristine);

        let store = open_when_released(StoreConfig::new(&live));
        let state = RawValue::from_string("{\"k\":[1,2,3]}".into()).unwrap();
        let new = NewCheckpoint {
            session_id: session,
            message: "m".into(),
            tags: vec!["t".into()],
            trigger: Trigger::Manual,
            state: Some(state),
            metadata: None,
            parent_id: None,
        };
        let (created, _) = store.put_checkpoint(new).await.unwrap();
        let intent = store.tree(TreeId::Meta).get(keys::META_INTENT).unwrap().unwrap();
        let expected = store.metrics().unwrap();
        drop(store);
        let ops: Vec<Op> = codec::decode(&intent, "intent").unwrap();
        assert!(ops.len() >= 8, "record, state, indexes, tag, session, counters, event");

        for applied in 0..=ops.len() {
            let torn = root.path().join(format!("torn-{applied}"));
            copy_dir(&pristine, &torn);
            {
                let db = sled::open(&torn).unwrap();
                let trees: Vec<Tree> = keys::TREE_NAMES.iter().map(|n| db.open_tree(n).unwrap()).collect();
                trees[TreeId::Meta as usize].insert(keys::META_INTENT, &intent).unwrap();
                apply_ops(&trees, &ops[..applied]).unwrap();
                db.flush().unwrap();
            }
            let store = open_when_released(StoreConfig::new(&torn));
            let got = store.metrics().unwrap();
            assert_eq!(
                (got.total_checkpoints, got.global_sequence, got.event_sequence),
                (expected.total_checkpoints, expected.global_sequence, expected.event_sequence),
                "after {applied} of {} keys",
                ops.len()
            );
            let cp = store.checkpoint(created.id).unwrap();
            assert_eq!(cp.state.get(), "{\"k\":[1,2,3]}");
            assert_eq!(store.session(session).unwrap().checkpoint_count, 1);
            let tagged = ListQuery { tag: Some("t".into()), ..ListQuery::default() };
            assert_eq!(store.list_checkpoints(session, &tagged, 10).unwrap().len(), 1);
            assert_eq!(store.events(0, u64::MAX, Some(session), 10).unwrap().len(), 1);
            assert!(store.tree(TreeId::Meta).get(keys::META_INTENT).unwrap().is_none());
        }
    }

    /// A read that observed a change not yet durable answers only once it
    /// is: `settled` waits for the flush that covers everything applied
    /// before it was called, and a write applied after does not hold it up.
    #[tokio::test]
    // The guard is held across awaits on purpose: it stalls the commit
    // thread, and nothing on this task's thread takes it.
    #[allow(clippy::await_holding_lock)]
    async fn reads_settle_only_once_what_they_saw_is_durable() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(StoreConfig::new(dir.path())).unwrap());
        let session = store.create_session("s".into(), json_empty_object()).await.unwrap().id;
        // Nothing in flight: a read settles at once.
        assert!(store.settled().now_or_never().expect("nothing to wait for").is_ok());

        let held = store.committer.hold();
        let writer = {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move { store.put_checkpoint(NewCheckpoint::new(session, "m")).await })
        };
        // The change is applied (visible to a raw read) but not durable.
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            seen = store.list_checkpoints(session, &ListQuery::default(), 10).unwrap();
            if !seen.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(seen.len(), 1, "the write was applied");
        let mut settle = Box::pin(store.settled());
        assert!((&mut settle).now_or_never().is_none(), "a read must not answer before the flush");
        assert!(!writer.is_finished(), "nor is the write acknowledged");
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(10), settle).await.unwrap().unwrap();
        let (created, _) = writer.await.unwrap().unwrap();
        assert_eq!(created.id, seen[0].id);
    }

    /// A blob file sled deleted before the log that replaced it was durable
    /// (what a power cut can leave) is restored from its kept link when the
    /// directory is opened, so the data it held is not lost.
    #[tokio::test]
    async fn a_blob_deleted_ahead_of_its_replacement_is_restored_at_open() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path())).unwrap();
        let session = store.create_session("s".into(), json_empty_object()).await.unwrap().id;
        let text = format!("{{\"x\":\"{}\"}}", "b".repeat(300 * 1024));
        let state = RawValue::from_string(text.clone()).unwrap();
        let new = NewCheckpoint { state: Some(state), ..NewCheckpoint::new(session, "big") };
        let (cp, _) = store.put_checkpoint(new).await.unwrap();
        drop(store);
        let (blobs, kept) = (dir.path().join("blobs"), dir.path().join(commit::KEPT_BLOBS));
        let names: Vec<_> = std::fs::read_dir(&blobs).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!names.is_empty(), "a 300 KiB state is a blob file");
        for name in &names {
            let ino = |d: &std::path::Path| std::fs::metadata(d.join(name)).unwrap().ino();
            assert_eq!(ino(&blobs), ino(&kept), "{name:?} has a kept link");
            std::fs::remove_file(blobs.join(name)).unwrap();
        }
        let store = open_when_released(StoreConfig::new(dir.path()));
        assert_eq!(store.checkpoint(cp.id).unwrap().state.get(), text);
        assert_eq!(store.metrics().unwrap().global_sequence, 1);
    }

    /// A session larger than one change is deleted in several; the result is
    /// the same as one change: nothing of it left, one event, exact counts.
    #[tokio::test]
    async fn deleting_a_large_session_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig { durability: Durability::Async, ..StoreConfig::new(dir.path()) }).unwrap();
        let big = store.create_session("big".into(), json_empty_object()).await.unwrap().id;
        let other = store.create_session("other".into(), json_empty_object()).await.unwrap().id;
        let n = 2 * MAX_CHANGE_CHECKPOINTS + 7;
        let new = |session_id| NewCheckpoint {
            session_id,
            message: "m".into(),
            tags: vec!["t".into()],
            trigger: Trigger::Manual,
            state: None,
            metadata: None,
            parent_id: None,
        };
        for _ in 0..n {
            store.put_checkpoint(new(big)).await.unwrap();
        }
        let kept = store.put_checkpoint(new(other)).await.unwrap().0;
        assert_eq!(store.delete_session(big).await.unwrap(), n as u64);
        assert_eq!(store.session(big).unwrap_err().code(), "not_found");
        let m = store.metrics().unwrap();
        assert_eq!((m.total_checkpoints, m.active_sessions), (1, 1));
        for tree in [TreeId::Checkpoints, TreeId::States, TreeId::CheckpointIds, TreeId::Sequences, TreeId::Tags] {
            assert_eq!(store.tree(tree).len(), 1, "{tree:?} keeps keys of the deleted session");
        }
        let deleted: Vec<_> = store
            .events(0, u64::MAX, Some(big), usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|e| matches!(e.kind, EventKind::SessionDeleted { .. }))
            .collect();
        assert_eq!(deleted.len(), 1);
        assert_eq!(deleted[0].kind, EventKind::SessionDeleted { removed: n as u64 });
        assert_eq!(store.checkpoint(kept.id).unwrap().summary.session_id, other);
    }
}
