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
use super::records::{AnnotationRecord, CheckpointRecord, SessionRecord, WriteRecord, stored_time};
use super::writes;
use crate::model::{Annotation, CheckpointId, RetentionPolicy, SessionId, Trigger};
use chrono::{DateTime, Utc};
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

/// Writes a batch of records as they were: ids, sequence numbers,
/// ordinals and timestamps are kept. An id, sequence number, ordinal,
/// annotation index or pending write's key that is already taken refuses
/// the whole batch (nothing is written). Sessions' checkpoint counts and
/// last sequences follow from the checkpoints actually stored.
pub(crate) fn import(c: &mut Change, r: &Reader, batch: ImportBatch) -> Result<ImportCounts> {
    let mut counts = ImportCounts::default();
    let mut touched: HashMap<SessionId, SessionRecord> = HashMap::new();
    let mut new_ordinals = HashSet::new();
    let mut new_keys = HashSet::new();
    for s in batch.sessions {
        if r.contains_session(s.id)? || touched.contains_key(&s.id) {
            return Err(StorageError::session_exists(s.id));
        }
        let ordinal = s.ordinal.unwrap_or(c.counters.sessions_created.saturating_add(1));
        if ordinal == 0 || !new_ordinals.insert(ordinal) || r.ordinal_in_use(ordinal)? {
            return Err(StorageError::ordinal_taken(s.id, ordinal));
        }
        if let Some(key) = &s.key
            && (!new_keys.insert(key.clone()) || r.session_by_key(key)?.is_some())
        {
            return Err(StorageError::key_taken(s.id, key));
        }
        c.counters.sessions_created = c.counters.sessions_created.max(ordinal);
        c.counters.active_sessions += 1;
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
        writes::store_session(c, &rec);
        touched.insert(rec.id, rec);
        counts.sessions += 1;
    }
    let mut new_ids: HashMap<CheckpointId, SessionId> = HashMap::new();
    let mut new_seqs = HashSet::new();
    let mut new_externals = HashSet::new();
    for cp in batch.checkpoints {
        let id = cp.id;
        let seq = cp.sequence_number;
        if new_ids.contains_key(&id) || r.contains_checkpoint(id)? {
            return Err(StorageError::checkpoint_exists(id));
        }
        if !new_seqs.insert(seq) || r.sequence_in_use(seq)? {
            return Err(StorageError::sequence_taken(id, seq));
        }
        if let Some(external) = &cp.external_id
            && (!new_externals.insert((cp.session_id, cp.namespace.clone(), external.clone()))
                || r.checkpoint_by_external_id(cp.session_id, &cp.namespace, external)?.is_some())
        {
            return Err(StorageError::external_taken(id, &cp.namespace, external));
        }
        if let Some(parent) = cp.parent_id {
            let owner = match new_ids.get(&parent) {
                Some(&s) => Some(s),
                None if r.contains_checkpoint(parent)? => Some(r.locate(parent)?.0),
                None => None,
            };
            if owner.is_some_and(|s| s != cp.session_id) {
                return Err(StorageError::imported_parent_elsewhere(id, parent));
            }
        }
        if !touched.contains_key(&cp.session_id) {
            let rec = r.session_record(cp.session_id)?;
            touched.insert(rec.id, rec);
        }
        let session = touched.get_mut(&cp.session_id).expect("inserted above");
        session.checkpoint_count += 1;
        session.last_sequence = session.last_sequence.max(Some(seq));
        let rec = CheckpointRecord {
            id,
            session_id: cp.session_id,
            sequence_number: seq,
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
        writes::store_checkpoint(c, &rec, &cp.state)?;
        new_ids.insert(id, rec.session_id);
        c.counters.checkpoints += 1;
        c.counters.global_seq = c.counters.global_seq.max(seq);
        counts.checkpoints += 1;
    }
    let mut next_index: HashMap<CheckpointId, u32> = HashMap::new();
    let mut new_notes = HashSet::new();
    for a in batch.annotations {
        let id = a.checkpoint_id;
        if !new_ids.contains_key(&id) && !r.contains_checkpoint(id)? {
            return Err(StorageError::annotated_missing(id));
        }
        let next = match next_index.get(&id) {
            Some(&n) => n,
            None => r.next_annotation_index(id)?,
        };
        let index = a.index.unwrap_or(next);
        if !new_notes.insert((id, index)) || r.annotation_exists(id, index)? {
            return Err(StorageError::annotation_exists(id, index));
        }
        next_index.insert(id, next.max(index.saturating_add(1)));
        let rec = AnnotationRecord {
            note: a.annotation.note,
            severity: a.annotation.severity,
            timestamp: stored_time(a.annotation.timestamp, "annotation")?,
        };
        writes::store_annotation(c, id, index, &rec);
        counts.annotations += 1;
    }
    let mut new_writes = HashSet::new();
    for w in batch.writes {
        let session = w.session_id;
        if !touched.contains_key(&session) && !r.contains_session(session)? {
            return Err(StorageError::write_session_missing(session));
        }
        let key = keys::write_key(session, &w.namespace, &w.external_id, &w.task_id, w.idx);
        if r.has_write_key(&key)? || !new_writes.insert(key.clone()) {
            return Err(StorageError::write_exists(&w));
        }
        let rec = WriteRecord { task_path: w.task_path, channel: w.channel, value: w.value.get().as_bytes().to_vec() };
        writes::store_write(c, &key, &rec)?;
        counts.writes += 1;
    }
    for rec in touched.values() {
        writes::put_session(c, rec);
    }
    let counters = &mut c.counters;
    counters.global_seq = counters.global_seq.max(batch.global_seq_floor);
    counters.event_seq = counters.event_seq.max(batch.event_seq_floor);
    counters.sessions_created = counters.sessions_created.max(batch.sessions_created_floor);
    Ok(counts)
}
