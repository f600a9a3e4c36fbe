//! Loading records that were written elsewhere (a `checkpoint-dump export`,
//! a forge-reasoning export) with their own ids, sequence numbers and
//! timestamps. Each [`ImportBatch`] is one atomic write through the store's
//! single write path, built with the same functions as the live operations
//! (`writes`; a pending write is one record under its key); it journals no
//! events. Its input rules are checked before it reaches storage
//! (`crate::rules::check_import`, and `transfer` for pending writes);
//! storage refuses what contradicts what is stored.

use super::change::Change;
use super::error::{Result, StorageError};
use super::keys;
use super::pending::StoredWrite;
use super::reads::Reader;
use super::records::{AnnotationRecord, CheckpointRecord, Counters, SessionRecord, WriteRecord, stored_time};
use super::writes;
use crate::model::{Annotation, CheckpointId, RetentionPolicy, SessionId, Trigger};
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};

/// A session to create as it was.
#[derive(Debug, Clone)]
pub struct ImportSession {
    pub id: SessionId,
    /// Position in creation order; `None` appends it after every session.
    pub ordinal: Option<u64>,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// A JSON object.
    pub metadata: Box<RawValue>,
    pub retention: Option<RetentionPolicy>,
    /// The client's key for it (unique).
    pub key: Option<String>,
}

/// A checkpoint to store as it was, in a session that exists or is created
/// earlier in the same or an earlier batch.
#[derive(Debug, Clone)]
pub struct ImportCheckpoint {
    pub id: CheckpointId,
    pub session_id: SessionId,
    pub sequence_number: u64,
    pub timestamp: DateTime<Utc>,
    pub message: String,
    pub tags: Vec<String>,
    pub trigger: Trigger,
    /// A JSON object.
    pub metadata: Box<RawValue>,
    /// May name a checkpoint that no longer exists (deleted or compacted).
    pub parent_id: Option<CheckpointId>,
    pub state: Box<RawValue>,
    pub namespace: String,
    /// The client's id for it, unique within (session, namespace).
    pub external_id: Option<String>,
    /// The parent's external id, when it has one.
    pub parent_external_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ImportAnnotation {
    pub checkpoint_id: CheckpointId,
    /// Position among the checkpoint's annotations; `None` appends it.
    pub index: Option<u32>,
    pub annotation: Annotation,
}

/// One atomic import write. The counters end at least at the floors, so
/// numbers handed out later stay above every imported (and every exported)
/// one.
#[derive(Debug, Clone, Default)]
pub struct ImportBatch {
    pub sessions: Vec<ImportSession>,
    pub checkpoints: Vec<ImportCheckpoint>,
    pub annotations: Vec<ImportAnnotation>,
    /// Pending writes as they were stored, in sessions that exist or are
    /// created in this or an earlier batch; their checkpoints need not be
    /// stored (as for `put_writes`).
    pub writes: Vec<StoredWrite>,
    pub global_seq_floor: u64,
    pub event_seq_floor: u64,
    pub sessions_created_floor: u64,
}

impl ImportBatch {
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.checkpoints.is_empty() && self.annotations.is_empty() && self.writes.is_empty()
    }

    /// Rough size in bytes, to keep batches bounded.
    pub fn approx_bytes(&self) -> usize {
        let cp: usize =
            self.checkpoints.iter().map(|c| 128 + c.message.len() + c.state.get().len() + c.metadata.get().len()).sum();
        let notes: usize = self.annotations.iter().map(|a| 64 + a.annotation.note.len()).sum();
        let sessions: usize = self.sessions.iter().map(|s| 128 + s.name.len() + s.metadata.get().len()).sum();
        let writes: usize = self
            .writes
            .iter()
            .map(|w| {
                64 + w.namespace.len()
                    + w.external_id.len()
                    + w.task_id.len()
                    + w.task_path.len()
                    + w.channel.len()
                    + w.value.get().len()
            })
            .sum();
        cp + notes + sessions + writes
    }
}

/// What one import wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    pub sessions: u64,
    pub checkpoints: u64,
    pub annotations: u64,
    /// Pending writes.
    pub writes: u64,
}

impl std::ops::AddAssign for ImportCounts {
    fn add_assign(&mut self, o: ImportCounts) {
        self.sessions += o.sessions;
        self.checkpoints += o.checkpoints;
        self.annotations += o.annotations;
        self.writes += o.writes;
    }
}

/// What an import needs of a store, inside the write's own transaction or
/// change: what is already stored, and where new records go. The rules
/// (what refuses a batch, which ordinal or annotation index a record gets
/// when it names none) are [`apply`]'s, written once for both stores.
pub(crate) trait ImportTarget {
    fn counters(&mut self) -> &mut Counters;
    async fn session_exists(&mut self, id: SessionId) -> Result<bool>;
    async fn ordinal_in_use(&mut self, ordinal: u64) -> Result<bool>;
    async fn key_in_use(&mut self, key: &str) -> Result<bool>;
    /// The session of a stored checkpoint; `None` if it is not stored.
    async fn checkpoint_session(&mut self, id: CheckpointId) -> Result<Option<SessionId>>;
    async fn sequence_in_use(&mut self, seq: u64) -> Result<bool>;
    async fn external_in_use(&mut self, session: SessionId, namespace: &str, external: &str) -> Result<bool>;
    /// The index after the checkpoint's stored annotations (0 if none).
    async fn next_annotation_index(&mut self, id: CheckpointId) -> Result<u32>;
    async fn annotation_exists(&mut self, id: CheckpointId, index: u32) -> Result<bool>;
    async fn write_exists(&mut self, w: &StoredWrite) -> Result<bool>;
    /// A number the store can keep (PostgreSQL's columns end at `i64::MAX`).
    fn storable(&self, _value: u64, _what: &str) -> Result<()> {
        Ok(())
    }
    async fn add_session(&mut self, s: ImportSession, ordinal: u64) -> Result<()>;
    /// A checkpoint of a session that exists (stored, or added before).
    async fn add_checkpoint(&mut self, cp: ImportCheckpoint) -> Result<()>;
    async fn add_annotation(&mut self, id: CheckpointId, index: u32, annotation: Annotation) -> Result<()>;
    async fn add_write(&mut self, w: StoredWrite) -> Result<()>;
    /// Every record is in: the sessions' checkpoint counts and last
    /// sequences follow from the checkpoints stored.
    async fn finish(&mut self) -> Result<()>;
}

/// Writes a batch of records as they were: ids, sequence numbers,
/// ordinals and timestamps are kept. An id, sequence number, ordinal,
/// annotation index or pending write's key that is already taken (or
/// twice in the batch) refuses the whole batch: the caller's change or
/// transaction is then dropped, and nothing is written.
pub(crate) async fn apply(t: &mut impl ImportTarget, batch: ImportBatch) -> Result<ImportCounts> {
    let mut counts = ImportCounts::default();
    // Sessions known to exist: added by this batch or found stored.
    let mut sessions = HashSet::new();
    let mut new_sessions = HashSet::new();
    let mut new_ordinals = HashSet::new();
    let mut new_keys = HashSet::new();
    for s in batch.sessions {
        if new_sessions.contains(&s.id) || t.session_exists(s.id).await? {
            return Err(StorageError::session_exists(s.id));
        }
        let ordinal = s.ordinal.unwrap_or(t.counters().sessions_created.saturating_add(1));
        if ordinal == 0 || !new_ordinals.insert(ordinal) || t.ordinal_in_use(ordinal).await? {
            return Err(StorageError::ordinal_taken(s.id, ordinal));
        }
        if let Some(key) = &s.key
            && (!new_keys.insert(key.clone()) || t.key_in_use(key).await?)
        {
            return Err(StorageError::key_taken(s.id, key));
        }
        let counters = t.counters();
        counters.sessions_created = counters.sessions_created.max(ordinal);
        counters.active_sessions += 1;
        new_sessions.insert(s.id);
        sessions.insert(s.id);
        t.add_session(s, ordinal).await?;
        counts.sessions += 1;
    }
    let mut new_ids: HashMap<CheckpointId, SessionId> = HashMap::new();
    let mut new_seqs = HashSet::new();
    let mut new_externals = HashSet::new();
    for cp in batch.checkpoints {
        let id = cp.id;
        let seq = cp.sequence_number;
        if new_ids.contains_key(&id) || t.checkpoint_session(id).await?.is_some() {
            return Err(StorageError::checkpoint_exists(id));
        }
        if !new_seqs.insert(seq) || t.sequence_in_use(seq).await? {
            return Err(StorageError::sequence_taken(id, seq));
        }
        if let Some(external) = &cp.external_id
            && (!new_externals.insert((cp.session_id, cp.namespace.clone(), external.clone()))
                || t.external_in_use(cp.session_id, &cp.namespace, external).await?)
        {
            return Err(StorageError::external_taken(id, &cp.namespace, external));
        }
        if let Some(parent) = cp.parent_id {
            let owner = match new_ids.get(&parent) {
                Some(&s) => Some(s),
                None => t.checkpoint_session(parent).await?,
            };
            if owner.is_some_and(|s| s != cp.session_id) {
                return Err(StorageError::imported_parent_elsewhere(id, parent));
            }
        }
        if !sessions.contains(&cp.session_id) {
            if !t.session_exists(cp.session_id).await? {
                return Err(StorageError::session_not_found(cp.session_id));
            }
            sessions.insert(cp.session_id);
        }
        new_ids.insert(id, cp.session_id);
        t.add_checkpoint(cp).await?;
        let counters = t.counters();
        counters.checkpoints += 1;
        counters.global_seq = counters.global_seq.max(seq);
        counts.checkpoints += 1;
    }
    let mut next_index: HashMap<CheckpointId, u32> = HashMap::new();
    let mut new_notes = HashSet::new();
    for a in batch.annotations {
        let id = a.checkpoint_id;
        if !new_ids.contains_key(&id) && t.checkpoint_session(id).await?.is_none() {
            return Err(StorageError::annotated_missing(id));
        }
        let next = match next_index.get(&id) {
            Some(&n) => n,
            None => t.next_annotation_index(id).await?,
        };
        let index = a.index.unwrap_or(next);
        if !new_notes.insert((id, index)) || t.annotation_exists(id, index).await? {
            return Err(StorageError::annotation_exists(id, index));
        }
        next_index.insert(id, next.max(index.saturating_add(1)));
        t.add_annotation(id, index, a.annotation).await?;
        counts.annotations += 1;
    }
    let mut new_writes = HashSet::new();
    for w in batch.writes {
        if !sessions.contains(&w.session_id) {
            if !t.session_exists(w.session_id).await? {
                return Err(StorageError::write_session_missing(w.session_id));
            }
            sessions.insert(w.session_id);
        }
        let key = (w.session_id, w.namespace.clone(), w.external_id.clone(), w.task_id.clone(), w.idx);
        if !new_writes.insert(key) || t.write_exists(&w).await? {
            return Err(StorageError::write_exists(&w));
        }
        t.add_write(w).await?;
        counts.writes += 1;
    }
    t.finish().await?;
    let floors = [
        (batch.global_seq_floor, "global sequence floor"),
        (batch.event_seq_floor, "event sequence floor"),
        (batch.sessions_created_floor, "session ordinal floor"),
    ];
    for (floor, what) in floors {
        t.storable(floor, what)?;
    }
    let counters = t.counters();
    counters.global_seq = counters.global_seq.max(batch.global_seq_floor);
    counters.event_seq = counters.event_seq.max(batch.event_seq_floor);
    counters.sessions_created = counters.sessions_created.max(batch.sessions_created_floor);
    Ok(counts)
}

/// The sled store's import: one atomic change, built with the same
/// functions as the live operations (`writes`).
pub(crate) fn import(c: &mut Change, r: &Reader, batch: ImportBatch) -> Result<ImportCounts> {
    let mut target = SledImport { c, r, touched: HashMap::new() };
    // Nothing of the sled target waits: the shared rules finish in one poll.
    apply(&mut target, batch)
        .now_or_never()
        .unwrap_or_else(|| Err(StorageError::Internal("the sled import waited on something".into())))
}

struct SledImport<'a> {
    c: &'a mut Change,
    r: &'a Reader,
    /// Sessions whose records this batch changes, written at the end.
    touched: HashMap<SessionId, SessionRecord>,
}

impl ImportTarget for SledImport<'_> {
    fn counters(&mut self) -> &mut Counters {
        &mut self.c.counters
    }

    async fn session_exists(&mut self, id: SessionId) -> Result<bool> {
        Ok(self.touched.contains_key(&id) || self.r.contains_session(id)?)
    }

    async fn ordinal_in_use(&mut self, ordinal: u64) -> Result<bool> {
        self.r.ordinal_in_use(ordinal)
    }

    async fn key_in_use(&mut self, key: &str) -> Result<bool> {
        Ok(self.r.session_by_key(key)?.is_some())
    }

    async fn checkpoint_session(&mut self, id: CheckpointId) -> Result<Option<SessionId>> {
        Ok(if self.r.contains_checkpoint(id)? { Some(self.r.locate(id)?.0) } else { None })
    }

    async fn sequence_in_use(&mut self, seq: u64) -> Result<bool> {
        self.r.sequence_in_use(seq)
    }

    async fn external_in_use(&mut self, session: SessionId, namespace: &str, external: &str) -> Result<bool> {
        Ok(self.r.checkpoint_by_external_id(session, namespace, external)?.is_some())
    }

    async fn next_annotation_index(&mut self, id: CheckpointId) -> Result<u32> {
        self.r.next_annotation_index(id)
    }

    async fn annotation_exists(&mut self, id: CheckpointId, index: u32) -> Result<bool> {
        self.r.annotation_exists(id, index)
    }

    async fn write_exists(&mut self, w: &StoredWrite) -> Result<bool> {
        self.r.has_write_key(&keys::write_key(w.session_id, &w.namespace, &w.external_id, &w.task_id, w.idx))
    }

    async fn add_session(&mut self, s: ImportSession, ordinal: u64) -> Result<()> {
        let rec = SessionRecord {
            id: s.id,
            ordinal,
            name: s.name,
            created_at: stored_time(s.created_at, "session")?,
            metadata: s.metadata.get().as_bytes().to_vec(),
            retention: s.retention.filter(|p| !p.is_empty()),
            checkpoint_count: 0,
            last_sequence: None,
            key: s.key,
        };
        writes::store_session(self.c, &rec);
        self.touched.insert(rec.id, rec);
        Ok(())
    }

    async fn add_checkpoint(&mut self, cp: ImportCheckpoint) -> Result<()> {
        let session = match self.touched.entry(cp.session_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.r.session_record(cp.session_id)?),
        };
        session.checkpoint_count += 1;
        session.last_sequence = session.last_sequence.max(Some(cp.sequence_number));
        let rec = CheckpointRecord {
            id: cp.id,
            session_id: cp.session_id,
            sequence_number: cp.sequence_number,
            timestamp: stored_time(cp.timestamp, "checkpoint")?,
            message: cp.message,
            tags: cp.tags,
            trigger: cp.trigger,
            metadata: cp.metadata.get().as_bytes().to_vec(),
            parent_id: cp.parent_id,
            state_crc: crc32fast::hash(cp.state.get().as_bytes()),
            namespace: cp.namespace,
            external_id: cp.external_id,
            parent_external_id: cp.parent_external_id,
        };
        writes::store_checkpoint(self.c, &rec, &cp.state)
    }

    async fn add_annotation(&mut self, id: CheckpointId, index: u32, annotation: Annotation) -> Result<()> {
        let rec = AnnotationRecord {
            note: annotation.note,
            severity: annotation.severity,
            timestamp: stored_time(annotation.timestamp, "annotation")?,
        };
        writes::store_annotation(self.c, id, index, &rec);
        Ok(())
    }

    async fn add_write(&mut self, w: StoredWrite) -> Result<()> {
        let key = keys::write_key(w.session_id, &w.namespace, &w.external_id, &w.task_id, w.idx);
        let rec = WriteRecord { task_path: w.task_path, channel: w.channel, value: w.value.get().as_bytes().to_vec() };
        writes::store_write(self.c, &key, &rec)
    }

    async fn finish(&mut self) -> Result<()> {
        for rec in self.touched.values() {
            writes::put_session(self.c, rec);
        }
        Ok(())
    }
}
