//! The operations that build changes. Each gathers every key one write
//! touches (record, indexes, session, counters, journal event) into a
//! `Change`, reading what it needs through a `Reader`; the store
//! applies the change atomically under its write lock (`store`), so what an
//! operation read cannot change before its change is applied. An operation
//! that returns an error has applied nothing.
//!
//! Import builds its changes with the same functions (`store_checkpoint`,
//! `store_annotation`, `put_session`).

use super::change::Change;
use super::codec;
use super::error::{Result, StorageError};
use super::keys::{self, TreeId};
use super::reads::Reader;
use super::records::{AnnotationRecord, CheckpointRecord, SessionRecord, WriteRecord, stored_time};
use crate::config::{MAX_CHANGE_CHECKPOINTS, MAX_CHANGE_WRITES};
use crate::model::{
    Annotation, Checkpoint, CheckpointId, CheckpointSummary, Compaction, EventKind, MetadataFilter, NewCheckpoint,
    NewWrites, RetentionPolicy, Session, SessionId, Severity, StateJson, metadata_matches, write_replaces,
};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, HashSet};

pub(crate) fn put_session(c: &mut Change, rec: &SessionRecord) {
    c.put(TreeId::Sessions, keys::session_key(rec.id), codec::encode(rec));
}

/// Stores a session record, its place in creation order and its key.
pub(crate) fn store_session(c: &mut Change, rec: &SessionRecord) {
    put_session(c, rec);
    c.put(TreeId::SessionOrder, keys::ordinal_key(rec.ordinal), keys::session_key(rec.id));
    if let Some(key) = &rec.key {
        c.put(TreeId::SessionKeys, keys::session_key_key(key), keys::session_key(rec.id));
    }
}

/// Stores a checkpoint's record, state and every index entry of it.
/// A large state goes to a segment, and the `states` tree holds a pointer.
pub(crate) fn store_checkpoint(c: &mut Change, rec: &CheckpointRecord, state: &RawValue) -> Result<()> {
    store_checkpoint_text(c, rec, state.get())
}

/// [`store_checkpoint`], given the state's JSON text.
fn store_checkpoint_text(c: &mut Change, rec: &CheckpointRecord, state: &str) -> Result<()> {
    let key = keys::checkpoint_key(rec.session_id, rec.sequence_number);
    c.put(TreeId::Checkpoints, key, codec::encode(rec));
    c.put_value(TreeId::States, key, state.as_bytes())?;
    c.put(TreeId::CheckpointIds, keys::checkpoint_id_key(rec.id), key);
    c.put(TreeId::Sequences, keys::sequence_key(rec.sequence_number), keys::sequence_value(rec.session_id, rec.id));
    for tag in &rec.tags {
        c.put(TreeId::Tags, keys::tag_key(rec.session_id, tag, rec.sequence_number), []);
    }
    c.put(TreeId::Namespaces, keys::namespace_key(rec.session_id, &rec.namespace, rec.sequence_number), []);
    if let Some(external) = &rec.external_id {
        let key = keys::external_id_key(rec.session_id, &rec.namespace, external);
        c.put(TreeId::ExternalIds, key, keys::external_id_value(rec.sequence_number));
    }
    Ok(())
}

/// Stores one pending write under its `writes` key (see `keys::write_key`);
/// a large value goes to a segment and the record holds a pointer to it.
pub(crate) fn store_write(c: &mut Change, key: &[u8], rec: &WriteRecord) -> Result<()> {
    let value = c.stored_value(TreeId::Writes, key, &rec.value)?;
    let stored = WriteRecord { task_path: rec.task_path.clone(), channel: rec.channel.clone(), value };
    c.put(TreeId::Writes, key, codec::encode(&stored));
    Ok(())
}

pub(crate) fn store_annotation(c: &mut Change, id: CheckpointId, index: u32, rec: &AnnotationRecord) {
    c.put(TreeId::Annotations, keys::annotation_key(id, index), codec::encode(rec));
}

/// Removes a checkpoint with every index entry and annotation it has.
pub(crate) fn remove_checkpoint(c: &mut Change, r: &Reader, rec: &CheckpointRecord) -> Result<()> {
    let key = keys::checkpoint_key(rec.session_id, rec.sequence_number);
    c.del(TreeId::Checkpoints, key);
    c.del(TreeId::States, key);
    c.del(TreeId::CheckpointIds, keys::checkpoint_id_key(rec.id));
    c.del(TreeId::Sequences, keys::sequence_key(rec.sequence_number));
    for tag in &rec.tags {
        c.del(TreeId::Tags, keys::tag_key(rec.session_id, tag, rec.sequence_number));
    }
    c.del(TreeId::Namespaces, keys::namespace_key(rec.session_id, &rec.namespace, rec.sequence_number));
    if let Some(external) = &rec.external_id {
        c.del(TreeId::ExternalIds, keys::external_id_key(rec.session_id, &rec.namespace, external));
    }
    for index in r.annotation_indexes(rec.id)? {
        c.del(TreeId::Annotations, keys::annotation_key(rec.id, index));
    }
    if let Some(external) = &rec.external_id {
        let prefix = keys::writes_prefix(rec.session_id, &rec.namespace, external);
        for k in r.tree(TreeId::Writes).scan_prefix(prefix).keys() {
            c.del(TreeId::Writes, k?);
        }
    }
    // Counts read from disk may be low (damage): never below zero.
    c.counters.checkpoints = c.counters.checkpoints.saturating_sub(1);
    Ok(())
}

// ----- sessions ---------------------------------------------------------------

pub(crate) fn create_session(c: &mut Change, name: String, metadata: &RawValue) -> Result<Session> {
    new_session(c, None, name, metadata).to_model()
}

/// The session with client key `key`, created (with `name` and
/// `metadata`) when there is none; and whether it was created. Two clients
/// racing for one key get the same session: writes are serialised.
pub(crate) fn open_session(
    c: &mut Change,
    r: &Reader,
    key: String,
    name: String,
    metadata: &RawValue,
) -> Result<(Session, bool)> {
    if let Some(id) = r.session_by_key(&key)? {
        return Ok((r.session(id)?, false));
    }
    Ok((new_session(c, Some(key), name, metadata).to_model()?, true))
}

fn new_session(c: &mut Change, key: Option<String>, name: String, metadata: &RawValue) -> SessionRecord {
    c.counters.sessions_created += 1;
    c.counters.active_sessions += 1;
    let rec = SessionRecord {
        id: SessionId::new(),
        ordinal: c.counters.sessions_created,
        name,
        created_at: c.now,
        metadata: metadata.get().as_bytes().to_vec(),
        retention: None,
        checkpoint_count: 0,
        last_sequence: None,
        key,
    };
    store_session(c, &rec);
    rec
}

/// One step of deleting a session: removes up to
/// [`MAX_CHANGE_CHECKPOINTS`] of its checkpoints, so that no intent record
/// grows with the session, and the session itself once none is left. Each
/// step leaves the session consistent (fewer checkpoints, counts updated); a
/// crash between them leaves a smaller session, never a dangling index
/// entry. Returns how many checkpoints it removed and whether the session
/// is gone (its event journaled with `removed_before` + those).
pub(crate) fn delete_session_step(
    c: &mut Change,
    r: &Reader,
    id: SessionId,
    removed_before: u64,
) -> Result<(u64, bool)> {
    let mut rec = r.session_record(id)?;
    let mut chunk = 0;
    for cp in r.checkpoint_records(id, 0..=u64::MAX).take(MAX_CHANGE_CHECKPOINTS) {
        remove_checkpoint(c, r, &cp?)?;
        chunk += 1;
    }
    if chunk == MAX_CHANGE_CHECKPOINTS as u64 {
        rec.checkpoint_count = rec.checkpoint_count.saturating_sub(chunk);
        put_session(c, &rec);
        return Ok((chunk, false));
    }
    // Writes whose checkpoint was never stored, also in bounded steps
    // (those of the checkpoints just removed are in this change already).
    let mut orphans = 0;
    for entry in r.tree(TreeId::Writes).scan_prefix(keys::session_key(id)).keys() {
        c.del(TreeId::Writes, entry?);
        orphans += 1;
        if orphans == MAX_CHANGE_WRITES {
            rec.checkpoint_count = rec.checkpoint_count.saturating_sub(chunk);
            put_session(c, &rec);
            return Ok((chunk, false));
        }
    }
    c.del(TreeId::Sessions, keys::session_key(id));
    c.del(TreeId::SessionOrder, keys::ordinal_key(rec.ordinal));
    if let Some(key) = &rec.key {
        c.del(TreeId::SessionKeys, keys::session_key_key(key));
    }
    c.counters.active_sessions = c.counters.active_sessions.saturating_sub(1);
    c.event(id, EventKind::SessionDeleted { removed: removed_before + chunk });
    Ok((chunk, true))
}

pub(crate) fn set_retention(
    c: &mut Change,
    r: &Reader,
    id: SessionId,
    policy: Option<RetentionPolicy>,
) -> Result<Option<RetentionPolicy>> {
    let mut rec = r.session_record(id)?;
    rec.retention = policy.filter(|p| !p.is_empty());
    put_session(c, &rec);
    Ok(rec.retention)
}

// ----- checkpoints ------------------------------------------------------------

/// Stores a checkpoint with the next global sequence number, then applies
/// the session's retention policy (never to the new checkpoint itself). A
/// parent must belong to the same session. A checkpoint whose external id
/// is already stored in its (session, namespace) is not stored again: the
/// answer is the stored one, and nothing changes.
pub(crate) fn put_checkpoint(
    c: &mut Change,
    r: &Reader,
    new: NewCheckpoint,
) -> Result<(CheckpointSummary, Option<Compaction>)> {
    let mut session = r.session_record(new.session_id)?;
    if let Some(external) = &new.external_id
        && let Some(stored) = r.checkpoint_by_external_id(new.session_id, &new.namespace, external)?
    {
        return Ok((stored, None));
    }
    let parent = match (&new.parent_id, &new.parent_external_id) {
        (Some(parent), _) => {
            let (rec, _) = r.checkpoint_record(*parent)?;
            if rec.session_id != new.session_id {
                return Err(StorageError::parent_in_other_session(*parent));
            }
            Some((rec.id, rec.external_id))
        }
        (None, Some(external)) => {
            let parent = r.checkpoint_by_external_id(new.session_id, &new.namespace, external)?;
            let parent =
                parent.ok_or_else(|| StorageError::parent_not_found(new.session_id, &new.namespace, external))?;
            Some((parent.id, parent.external_id))
        }
        (None, None) => None,
    };
    let (parent_id, parent_external_id) = parent.unzip();
    c.counters.global_seq += 1;
    c.counters.checkpoints += 1;
    let seq = c.counters.global_seq;
    // The client's text as it arrived (possibly shared with its frame): not copied here.
    let state = new.state.as_ref().map_or("null", StateJson::get);
    let rec = CheckpointRecord {
        id: CheckpointId::new(),
        session_id: new.session_id,
        sequence_number: seq,
        timestamp: c.now,
        message: new.message,
        tags: new.tags,
        trigger: new.trigger,
        metadata: new.metadata.map_or_else(|| b"{}".to_vec(), |m| m.get().as_bytes().to_vec()),
        parent_id,
        state_crc: crc32fast::hash(state.as_bytes()),
        namespace: new.namespace,
        external_id: new.external_id,
        parent_external_id: parent_external_id.flatten(),
    };
    store_checkpoint_text(c, &rec, state)?;
    session.checkpoint_count += 1;
    session.last_sequence = Some(seq);
    c.event(rec.session_id, EventKind::CheckpointCreated { checkpoint_id: rec.id, sequence_number: seq });
    let compaction = match session.retention.clone() {
        Some(policy) => apply_policy(c, r, &mut session, &policy, 1)?,
        None => None,
    };
    put_session(c, &session);
    Ok((rec.summary(false), compaction))
}

/// Reads a checkpoint of `session` and journals that it was restored.
pub(crate) fn restore(c: &mut Change, r: &Reader, session: SessionId, id: CheckpointId) -> Result<Checkpoint> {
    let cp = r.checkpoint(id)?;
    if cp.summary.session_id != session {
        return Err(StorageError::not_in_session(id, session));
    }
    let sequence_number = cp.summary.sequence_number;
    c.event(session, EventKind::CheckpointRestored { checkpoint_id: id, sequence_number });
    Ok(cp)
}

/// Deletes one checkpoint; with `session`, only if it belongs there.
/// Returns the session it belonged to.
pub(crate) fn delete_checkpoint(
    c: &mut Change,
    r: &Reader,
    id: CheckpointId,
    session: Option<SessionId>,
) -> Result<SessionId> {
    let (rec, _) = r.checkpoint_record(id)?;
    if session.is_some_and(|s| s != rec.session_id) {
        return Err(StorageError::not_in_this_session(id));
    }
    let mut sess = r.session_record(rec.session_id)?;
    remove_checkpoint(c, r, &rec)?;
    sess.checkpoint_count = sess.checkpoint_count.saturating_sub(1);
    if sess.last_sequence == Some(rec.sequence_number) {
        sess.last_sequence = r.newest_before(rec.session_id, rec.sequence_number)?;
    }
    put_session(c, &sess);
    c.event(rec.session_id, EventKind::CheckpointDeleted { checkpoint_id: id, sequence_number: rec.sequence_number });
    Ok(rec.session_id)
}

/// Adds an annotation after a checkpoint's last; refused with
/// [`StorageError::Full`] once it has `max` of them.
pub(crate) fn annotate(
    c: &mut Change,
    r: &Reader,
    id: CheckpointId,
    note: String,
    severity: Severity,
    max: u32,
) -> Result<Annotation> {
    r.locate(id)?;
    let next = r.next_annotation_index(id)?;
    if next >= max {
        return Err(StorageError::annotations_full(id, max));
    }
    let rec = AnnotationRecord { note, severity, timestamp: c.now };
    store_annotation(c, id, next, &rec);
    Ok(rec.to_model())
}

/// Removes the checkpoints of `session` that `policy` does not keep (with
/// `per_namespace`, ranked within each namespace), and journals the
/// compaction (also when nothing was removed).
pub(crate) fn compact(
    c: &mut Change,
    r: &Reader,
    session: SessionId,
    policy: &RetentionPolicy,
    per_namespace: bool,
) -> Result<Compaction> {
    let mut rec = r.session_record(session)?;
    let applied = if per_namespace {
        apply_per_namespace(c, r, &mut rec, policy)?
    } else {
        apply_policy(c, r, &mut rec, policy, 0)?
    };
    let result = applied.unwrap_or(Compaction { removed: 0, remaining: rec.checkpoint_count });
    put_session(c, &rec);
    if result.removed == 0 {
        c.event(session, EventKind::CheckpointsCompacted { removed: 0, remaining: result.remaining });
    }
    Ok(result)
}

/// Applies `policy` to `session`, the `skip` newest checkpoints exempt (the one
/// being added). Returns `None` when nothing was removed.
fn apply_policy(
    c: &mut Change,
    r: &Reader,
    session: &mut SessionRecord,
    policy: &RetentionPolicy,
    skip: u64,
) -> Result<Option<Compaction>> {
    let id = session.id;
    // Checkpoints already stored; `skip` new ones are in the change only.
    let stored = r.checkpoint_records(id, 0..=u64::MAX);
    let mut doomed = Vec::new();
    let mut newest_kept = None;
    if policy.preserve_tags.is_empty() {
        // Count-only policy: the oldest go, found without a full scan.
        let keep = policy.keep_recent.unwrap_or(0).saturating_sub(skip);
        let existing = session.checkpoint_count.saturating_sub(skip);
        for rec in stored.take(existing.saturating_sub(keep) as usize) {
            doomed.push(rec?);
        }
    } else {
        for (rank, rec) in (skip..).zip(stored.rev()) {
            let rec = rec?;
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
        remove_checkpoint(c, r, rec)?;
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
    c.event(id, EventKind::CheckpointsCompacted { removed, remaining: result.remaining });
    Ok(Some(result))
}

// ----- pending writes -----------------------------------------------------------

/// Stores a task's pending writes for checkpoint (session, namespace,
/// external id), stored or not yet. Per (task id, idx): for idx >= 0 the
/// first stored is kept, for idx < 0 the last replaces it. Returns how many
/// were stored or replaced, and journals `writes_stored` when any were.
pub(crate) fn put_writes(c: &mut Change, r: &Reader, new: NewWrites) -> Result<u64> {
    r.session_record(new.session_id)?;
    let NewWrites { session_id, namespace, external_id, task_id, task_path, writes } = new;
    let mut merge = WriteMerge::default();
    let mut stored = 0;
    for (idx, channel, value) in writes {
        let key = keys::write_key(session_id, &namespace, &external_id, &task_id, idx);
        let rec = WriteRecord { task_path: task_path.clone(), channel, value: value.get().as_bytes().to_vec() };
        if merge.put(c, r, key, idx, &rec)? {
            stored += 1;
        }
    }
    if stored > 0 {
        c.event(session_id, EventKind::WritesStored { namespace, external_id, task_id, stored });
    }
    Ok(stored)
}

/// The pending-write rule, for the writes of one change: under one key, for
/// idx >= 0 the first stored is kept, for idx < 0 the last replaces it.
#[derive(Default)]
struct WriteMerge {
    /// Keys this change already put (reads show only what was stored before).
    put: HashSet<Vec<u8>>,
}

impl WriteMerge {
    /// Puts `rec` under `key` unless the rule keeps what is there; returns
    /// whether it was put.
    fn put(&mut self, c: &mut Change, r: &Reader, key: Vec<u8>, idx: i32, rec: &WriteRecord) -> Result<bool> {
        if !write_replaces(idx) && (self.put.contains(&key) || r.has_write_key(&key)?) {
            return Ok(false);
        }
        store_write(c, &key, rec)?;
        self.put.insert(key);
        Ok(true)
    }
}

// ----- copies and bulk removal ----------------------------------------------------

/// Copies every checkpoint (with state, annotations, and parents pointing
/// at the copies) and every pending write of `source` into the session with
/// client key `key` (created if none has it; without a key, a new session).
/// A checkpoint whose (namespace, external id) the target already has is
/// not copied; writes merge by `put_writes`'s rules. Returns the target and
/// how many checkpoints were copied.
pub(crate) fn copy_session(
    c: &mut Change,
    r: &Reader,
    source: SessionId,
    key: Option<String>,
    name: String,
    metadata: &RawValue,
) -> Result<(Session, u64)> {
    let src = r.session_record(source)?;
    if src.checkpoint_count > MAX_CHANGE_CHECKPOINTS as u64 {
        return Err(StorageError::copy_too_large(source, src.checkpoint_count));
    }
    let existing = match &key {
        Some(key) => r.session_by_key(key)?,
        None => None,
    };
    let mut target = match existing {
        Some(id) if id == source => {
            return Err(StorageError::copy_into_itself(source));
        }
        Some(id) => r.session_record(id)?,
        None => new_session(c, key, name, metadata),
    };
    // Source checkpoint id -> its copy (or the target's checkpoint it matched).
    let mut copies: HashMap<CheckpointId, CheckpointId> = HashMap::new();
    let mut copied = 0;
    for rec in r.checkpoint_records(source, 0..=u64::MAX) {
        let rec = rec?;
        if existing.is_some()
            && let Some(external) = &rec.external_id
            && let Some(there) = r.checkpoint_by_external_id(target.id, &rec.namespace, external)?
        {
            copies.insert(rec.id, there.id);
            continue;
        }
        let state = r.state(&rec)?;
        c.counters.global_seq += 1;
        c.counters.checkpoints += 1;
        let copy = CheckpointRecord {
            id: CheckpointId::new(),
            session_id: target.id,
            sequence_number: c.counters.global_seq,
            parent_id: rec.parent_id.and_then(|p| copies.get(&p).copied()),
            ..rec.clone()
        };
        store_checkpoint(c, &copy, &state)?;
        for (index, a) in r.annotations(rec.id)? {
            let note = AnnotationRecord {
                note: a.note,
                severity: a.severity,
                timestamp: stored_time(a.timestamp, "annotation")?,
            };
            store_annotation(c, copy.id, index, &note);
        }
        copies.insert(rec.id, copy.id);
        target.checkpoint_count += 1;
        target.last_sequence = Some(copy.sequence_number);
        copied += 1;
    }
    let mut merge = WriteMerge::default();
    for w in r.writes_of_session(source) {
        let w = w?;
        let key = keys::write_key(target.id, &w.namespace, &w.external_id, &w.task_id, w.idx);
        let rec = WriteRecord { task_path: w.task_path, channel: w.channel, value: w.value.get().as_bytes().to_vec() };
        merge.put(c, r, key, w.idx, &rec)?;
    }
    put_session(c, &target);
    c.event(target.id, EventKind::SessionCopied { source_session_id: source, copied });
    Ok((target.to_model()?, copied))
}

/// Deletes up to [`MAX_CHANGE_CHECKPOINTS`] checkpoints whose metadata
/// matches `filter` (of one session, or of all; of one namespace, or of
/// all), with their writes and annotations, journaling `checkpoint_deleted`
/// for each. Returns how many, and whether matches remain.
pub(crate) fn delete_checkpoints(
    c: &mut Change,
    r: &Reader,
    session: Option<SessionId>,
    namespace: Option<&str>,
    filter: &MetadataFilter,
) -> Result<(u64, bool)> {
    let records: Box<dyn Iterator<Item = Result<CheckpointRecord>>> = match session {
        Some(id) => {
            r.session_record(id)?;
            Box::new(r.checkpoint_records(id, 0..=u64::MAX))
        }
        None => Box::new(r.all_checkpoint_records()),
    };
    let mut doomed: Vec<CheckpointRecord> = Vec::new();
    let mut more = false;
    for rec in records {
        let rec = rec?;
        if namespace.is_some_and(|ns| ns != rec.namespace) || !metadata_matches(filter, &rec.metadata) {
            continue;
        }
        if doomed.len() == MAX_CHANGE_CHECKPOINTS {
            more = true;
            break;
        }
        doomed.push(rec);
    }
    let mut by_session: BTreeMap<SessionId, HashSet<u64>> = BTreeMap::new();
    for rec in &doomed {
        remove_checkpoint(c, r, rec)?;
        by_session.entry(rec.session_id).or_default().insert(rec.sequence_number);
        let (checkpoint_id, sequence_number) = (rec.id, rec.sequence_number);
        c.event(rec.session_id, EventKind::CheckpointDeleted { checkpoint_id, sequence_number });
    }
    for (id, gone) in by_session {
        let mut sess = r.session_record(id)?;
        sess.checkpoint_count = sess.checkpoint_count.saturating_sub(gone.len() as u64);
        sess.last_sequence = newest_left(r, id, &gone)?;
        put_session(c, &sess);
    }
    Ok((doomed.len() as u64, more))
}

/// The newest checkpoint of `session` not among `gone`.
fn newest_left(r: &Reader, session: SessionId, gone: &HashSet<u64>) -> Result<Option<u64>> {
    for k in r.tree(TreeId::Checkpoints).range(keys::session_checkpoints(session, 0..=u64::MAX)).keys().rev() {
        let k = k?;
        let (_, seq) = keys::decode_checkpoint_key(&k).ok_or_else(|| StorageError::corrupt("bad checkpoint key"))?;
        if !gone.contains(&seq) {
            return Ok(Some(seq));
        }
    }
    Ok(None)
}

/// [`apply_policy`] within each namespace of `session`: every namespace
/// keeps its own `keep_recent` newest (and its preserved tags).
fn apply_per_namespace(
    c: &mut Change,
    r: &Reader,
    session: &mut SessionRecord,
    policy: &RetentionPolicy,
) -> Result<Option<Compaction>> {
    let id = session.id;
    let mut by_namespace: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for k in r.tree(TreeId::Namespaces).scan_prefix(keys::session_key(id)).keys() {
        let k = k?;
        let (_, namespace, seq) =
            keys::decode_namespace_key(&k).ok_or_else(|| StorageError::corrupt("bad namespaces key"))?;
        by_namespace.entry(namespace).or_default().push(seq);
    }
    let mut gone = HashSet::new();
    for seqs in by_namespace.values() {
        // Keys are in sequence order: the newest last.
        for (rank, &seq) in (0..).zip(seqs.iter().rev()) {
            let Some(rec) = r.checkpoint_record_at(id, seq)? else { continue };
            if !policy.keeps(rank, &rec.tags) {
                remove_checkpoint(c, r, &rec)?;
                gone.insert(seq);
            }
        }
    }
    if gone.is_empty() {
        return Ok(None);
    }
    let removed = gone.len() as u64;
    session.checkpoint_count = session.checkpoint_count.saturating_sub(removed);
    session.last_sequence = newest_left(r, id, &gone)?;
    let result = Compaction { removed, remaining: session.checkpoint_count };
    c.event(id, EventKind::CheckpointsCompacted { removed, remaining: result.remaining });
    Ok(Some(result))
}
