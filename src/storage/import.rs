//! Loading records that were written elsewhere (a `checkpoint-dump export`,
//! a forge-reasoning export) with their own ids, sequence numbers and
//! timestamps. Each [`ImportBatch`] is one atomic write through
//! [`Store`]'s single write path; it journals no events.

use super::keys::{self, TreeId};
use super::records::{AnnotationRecord, CheckpointRecord, SessionRecord, micros};
use super::{Store, codec};
use crate::config::{MAX_METADATA_BYTES, MAX_TAG_BYTES, MAX_TAGS, MAX_TEXT_BYTES};
use crate::error::{Error, Result};
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
    pub global_seq_floor: u64,
    pub event_seq_floor: u64,
    pub sessions_created_floor: u64,
}

impl ImportBatch {
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.checkpoints.is_empty() && self.annotations.is_empty()
    }

    /// Rough size in bytes, to keep batches bounded.
    pub fn approx_bytes(&self) -> usize {
        let cp: usize =
            self.checkpoints.iter().map(|c| 128 + c.message.len() + c.state.get().len() + c.metadata.get().len()).sum();
        let notes: usize = self.annotations.iter().map(|a| 64 + a.annotation.note.len()).sum();
        let sessions: usize = self.sessions.iter().map(|s| 128 + s.name.len() + s.metadata.get().len()).sum();
        cp + notes + sessions
    }
}

/// What one import wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    pub sessions: u64,
    pub checkpoints: u64,
    pub annotations: u64,
}

impl std::ops::AddAssign for ImportCounts {
    fn add_assign(&mut self, o: ImportCounts) {
        self.sessions += o.sessions;
        self.checkpoints += o.checkpoints;
        self.annotations += o.annotations;
    }
}

fn check_len(what: &str, text: &str, max: usize) -> Result<()> {
    if text.len() > max {
        return Err(Error::TooLarge(format!("{what} is longer than {max} bytes")));
    }
    Ok(())
}

fn check_object(what: &str, json: &RawValue) -> Result<()> {
    check_len(what, json.get(), MAX_METADATA_BYTES)?;
    if !json.get().trim_start().starts_with('{') {
        return Err(Error::invalid(format!("{what} must be a JSON object")));
    }
    Ok(())
}

fn check_tags(id: CheckpointId, tags: &[String]) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(Error::TooLarge(format!("checkpoint {id}: more than {MAX_TAGS} tags")));
    }
    for (i, tag) in tags.iter().enumerate() {
        if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
            return Err(Error::invalid(format!("checkpoint {id}: tag {tag:?} is empty or over {MAX_TAG_BYTES} bytes")));
        }
        if tags[..i].contains(tag) {
            return Err(Error::invalid(format!("checkpoint {id}: tag {tag:?} is given twice")));
        }
    }
    Ok(())
}

impl Store {
    /// Whether nothing was ever written here: no session, checkpoint or
    /// event, and no sequence number handed out.
    pub fn is_pristine(&self) -> Result<bool> {
        let c = *self.writer.lock().map_err(|_| Error::Internal("write lock poisoned".into()))?;
        let trees_empty =
            [TreeId::Sessions, TreeId::Checkpoints, TreeId::Events].iter().all(|&t| self.tree(t).is_empty());
        Ok(trees_empty && c.global_seq == 0 && c.event_seq == 0 && c.sessions_created == 0)
    }

    pub fn contains_session(&self, id: SessionId) -> Result<bool> {
        Ok(self.tree(TreeId::Sessions).contains_key(keys::session_key(id))?)
    }

    pub fn contains_checkpoint(&self, id: CheckpointId) -> Result<bool> {
        Ok(self.tree(TreeId::CheckpointIds).contains_key(keys::checkpoint_id_key(id))?)
    }

    /// Whether a stored checkpoint has global sequence `seq`.
    pub fn sequence_in_use(&self, seq: u64) -> Result<bool> {
        Ok(self.tree(TreeId::Sequences).contains_key(keys::u64_key(seq))?)
    }

    /// Writes a batch of records as they were: ids, sequence numbers,
    /// ordinals and timestamps are kept. An id, sequence number, ordinal or
    /// annotation index that is already taken refuses the whole batch
    /// (nothing is written). Sessions' checkpoint counts and last sequences
    /// follow from the checkpoints actually stored.
    pub async fn import(&self, batch: ImportBatch) -> Result<ImportCounts> {
        self.write(|w| {
            let mut counts = ImportCounts::default();
            let mut touched: HashMap<SessionId, SessionRecord> = HashMap::new();
            let mut new_ordinals = HashSet::new();
            for s in batch.sessions {
                if w.store.contains_session(s.id)? || touched.contains_key(&s.id) {
                    return Err(Error::Conflict(format!("session {} already exists", s.id)));
                }
                if s.name.is_empty() {
                    return Err(Error::invalid(format!("session {}: the name must not be empty", s.id)));
                }
                check_len("session name", &s.name, MAX_TEXT_BYTES)?;
                check_object("session metadata", &s.metadata)?;
                let ordinal = s.ordinal.unwrap_or(w.counters.sessions_created.saturating_add(1));
                if ordinal == 0
                    || !new_ordinals.insert(ordinal)
                    || w.store.tree(TreeId::SessionOrder).contains_key(keys::u64_key(ordinal))?
                {
                    return Err(Error::Conflict(format!("session {}: ordinal {ordinal} is taken", s.id)));
                }
                w.counters.sessions_created = w.counters.sessions_created.max(ordinal);
                w.counters.active_sessions += 1;
                w.put(TreeId::SessionOrder, keys::u64_key(ordinal), &keys::session_key(s.id)[..]);
                let rec = SessionRecord {
                    id: s.id,
                    ordinal,
                    name: s.name,
                    created_at: micros(s.created_at),
                    metadata: s.metadata.get().as_bytes().to_vec(),
                    retention: s.retention.filter(|p| !p.is_empty()),
                    checkpoint_count: 0,
                    last_sequence: None,
                };
                touched.insert(rec.id, rec);
                counts.sessions += 1;
            }
            let mut new_ids: HashMap<CheckpointId, SessionId> = HashMap::new();
            let mut new_seqs = HashSet::new();
            for c in batch.checkpoints {
                let id = c.id;
                let seq = c.sequence_number;
                if seq == 0 {
                    return Err(Error::invalid(format!("checkpoint {id}: sequence numbers start at 1")));
                }
                if new_ids.contains_key(&id) || w.store.contains_checkpoint(id)? {
                    return Err(Error::Conflict(format!("checkpoint {id} already exists")));
                }
                if !new_seqs.insert(seq) || w.store.sequence_in_use(seq)? {
                    return Err(Error::Conflict(format!("checkpoint {id}: sequence {seq} is taken")));
                }
                check_len("message", &c.message, MAX_TEXT_BYTES)?;
                check_tags(id, &c.tags)?;
                check_object("checkpoint metadata", &c.metadata)?;
                if let Some(parent) = c.parent_id {
                    let owner = match new_ids.get(&parent) {
                        Some(&s) => Some(s),
                        None if w.store.contains_checkpoint(parent)? => Some(w.store.locate(parent)?.0),
                        None => None,
                    };
                    if owner.is_some_and(|s| s != c.session_id) {
                        return Err(Error::Conflict(format!("checkpoint {id}: parent {parent} is in another session")));
                    }
                }
                if !touched.contains_key(&c.session_id) {
                    let rec = w.store.session_record(c.session_id)?;
                    touched.insert(rec.id, rec);
                }
                let session = touched.get_mut(&c.session_id).expect("inserted above");
                session.checkpoint_count += 1;
                session.last_sequence = session.last_sequence.max(Some(seq));
                let rec = CheckpointRecord {
                    id,
                    session_id: c.session_id,
                    sequence_number: seq,
                    timestamp: micros(c.timestamp),
                    message: c.message,
                    tags: c.tags,
                    trigger: c.trigger,
                    metadata: c.metadata.get().as_bytes().to_vec(),
                    parent_id: c.parent_id,
                    state_crc: crc32fast::hash(c.state.get().as_bytes()),
                };
                let key = keys::checkpoint_key(rec.session_id, seq);
                w.put(TreeId::Checkpoints, key, codec::encode(&rec));
                w.put(TreeId::States, key, c.state.get().as_bytes());
                w.put(TreeId::CheckpointIds, keys::checkpoint_id_key(id), &key[..]);
                w.put(TreeId::Sequences, keys::u64_key(seq), &keys::sequence_value(rec.session_id, id)[..]);
                for tag in &rec.tags {
                    w.put(TreeId::Tags, keys::tag_key(rec.session_id, tag, seq), &[][..]);
                }
                new_ids.insert(id, rec.session_id);
                w.counters.checkpoints += 1;
                w.counters.global_seq = w.counters.global_seq.max(seq);
                counts.checkpoints += 1;
            }
            let mut next_index: HashMap<CheckpointId, u32> = HashMap::new();
            let mut new_notes = HashSet::new();
            for a in batch.annotations {
                let id = a.checkpoint_id;
                if !new_ids.contains_key(&id) && !w.store.contains_checkpoint(id)? {
                    return Err(Error::NotFound(format!("annotation of checkpoint {id}, which does not exist")));
                }
                check_len("annotation note", &a.annotation.note, MAX_TEXT_BYTES)?;
                let next = match next_index.get(&id) {
                    Some(&n) => n,
                    None => match w.store.tree(TreeId::Annotations).scan_prefix(id.as_bytes()).keys().next_back() {
                        Some(k) => keys::annotation_index(&k?).map_or(0, |i| i.saturating_add(1)),
                        None => 0,
                    },
                };
                let index = a.index.unwrap_or(next);
                let key = keys::annotation_key(id, index);
                if !new_notes.insert(key) || w.store.tree(TreeId::Annotations).contains_key(key)? {
                    return Err(Error::Conflict(format!("checkpoint {id}: annotation {index} already exists")));
                }
                next_index.insert(id, next.max(index.saturating_add(1)));
                let rec = AnnotationRecord {
                    note: a.annotation.note,
                    severity: a.annotation.severity,
                    timestamp: micros(a.annotation.timestamp),
                };
                w.put(TreeId::Annotations, key, codec::encode(&rec));
                counts.annotations += 1;
            }
            for rec in touched.values() {
                w.put_session(rec);
            }
            let c = &mut w.counters;
            c.global_seq = c.global_seq.max(batch.global_seq_floor);
            c.event_seq = c.event_seq.max(batch.event_seq_floor);
            c.sessions_created = c.sessions_created.max(batch.sessions_created_floor);
            Ok(counts)
        })
        .await
    }
}
