//! The atomic change: how one write's keys reach sled together, and the
//! one file write that makes it durable.
//!
//! A write gathers its puts and removals into a `Change` (the operations
//! of `writes` build them), then `log_intent` appends the whole change as one
//! *intent* entry to the state segments (`segments::INTENT_OWNER`; its
//! large values were appended just before it), and `apply` applies it to
//! sled key by key, and last sets `META_APPLIED` to the end of that intent. The group
//! commit then makes the change durable with one `fdatasync` of the segment
//! file: sled's own log is flushed only every `SLED_FLUSH_INTERVAL` (and
//! when compaction, a backup or shutdown needs it), so the segments are a
//! write-ahead log for sled, as WiscKey's value log is for its LSM tree.
//!
//! Recovery (`recover`, at open): sled recovers a prefix of its log, and no
//! sled log reaches the disk before the segments it follows are synced (the
//! vendored sled's `pre_log_sync` hook), so every change sled holds in part
//! has its intent on disk, and `META_APPLIED` names the last change sled
//! holds whole. Every intent after it is re-applied in order; re-applying
//! is idempotent (each op sets or removes a whole key). The walk stops at a
//! segment's first torn entry: only the newest segment at a crash can have
//! one (a segment is synced before the next is created).
//!
//! Keys are applied in an order that keeps every index entry pointing at a
//! record for concurrent readers too: new records before their indexes,
//! removed indexes before their records (`Op::phase`).
//!
//! Every change also keeps `segment_pointers` (see `keys`) in step with
//! the values it puts and removes: `Change::put` and `Change::del` note
//! each `states` / `writes` key, and `Change::into_ops` adds its index
//! entry (the pointer the key holds after the change) or removes it. So the
//! index is in the change's intent and is applied, and replayed, with it;
//! no operation can forget it.

use super::codec;
use super::error::{Result, StorageError};
use super::keys::{self, TREE_COUNT, TreeId, Trees};
use super::records::{Counters, EventRecord, WriteRecord};
use super::segments::{self, Pointer, Segments};
use crate::model::{EventKind, SessionId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// When an op is applied within its change (see [`Op::phase`]).
type Phase = (u8, u8);

/// One key of a change: a put, or a removal when `value` is `None`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Op {
    tree: u8,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

impl Op {
    /// Application phase: index removals, then puts (records before
    /// indexes, by tree order), then record removals. A checkpoint's state
    /// is put just before its record (and removed after it), so a reader
    /// that finds the record also finds the state.
    fn phase(&self) -> Phase {
        let put_order =
            |tree: u8| if tree == TreeId::States as u8 { TreeId::Checkpoints as u8 * 2 - 1 } else { tree * 2 };
        match (&self.value, TreeId::is_record(self.tree)) {
            (None, false) => (0, self.tree),
            (Some(_), _) => (1, put_order(self.tree)),
            (None, true) => (2, self.tree),
        }
    }
}

/// The keys of one write and the counters as they will be after it,
/// gathered before anything is applied.
pub(crate) struct Change {
    pub counters: Counters,
    ops: Vec<Op>,
    /// The write's time, in nanoseconds: every record it stamps gets it.
    pub now: i64,
    /// Journal events kept (see `StoreConfig::event_retention`).
    event_retention: u64,
    /// Where values too large for sled go (see `segments`).
    segments: std::sync::Arc<Segments>,
    /// Per owner (tree number · key) of every `states` / `writes` key this
    /// change touches: the op applied last to it (the greatest phase, the
    /// latest among equals) and the segment pointer it leaves there, if
    /// any. `into_ops` turns it into the `segment_pointers` entries.
    pointers: BTreeMap<Vec<u8>, (Phase, Option<Pointer>)>,
}

impl Change {
    pub fn new(counters: Counters, now: i64, event_retention: u64, segments: std::sync::Arc<Segments>) -> Change {
        Change { counters, ops: Vec::with_capacity(16), now, event_retention, segments, pointers: BTreeMap::new() }
    }

    /// What to store for `value` under `tree`/`key`: the value itself when
    /// short, else a pointer to it appended to a segment (durable with the
    /// group commit that makes this change durable).
    pub fn stored_value(&mut self, tree: TreeId, key: &[u8], value: &[u8]) -> Result<Vec<u8>> {
        if value.len() <= segments::VALUE_THRESHOLD {
            return Ok(value.to_vec());
        }
        let p = self.segments.append(&segments::owner(tree as u8, key), value)?;
        Ok(p.encode().to_vec())
    }

    /// Puts a value that may be large (a state): see [`Change::stored_value`].
    pub fn put_value(&mut self, tree: TreeId, key: impl AsRef<[u8]>, value: &[u8]) -> Result<()> {
        let stored = self.stored_value(tree, key.as_ref(), value)?;
        self.put(tree, key, stored);
        Ok(())
    }

    /// Puts `value` under `tree`/`key`. A `states` or `writes` value also
    /// sets its `segment_pointers` entry (see [`Change::into_ops`]).
    pub fn put(&mut self, tree: TreeId, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.push(Op { tree: tree as u8, key: key.as_ref().to_vec(), value: Some(value.as_ref().to_vec()) });
    }

    /// Removes `tree`/`key`; a `states` or `writes` key also loses its
    /// `segment_pointers` entry.
    pub fn del(&mut self, tree: TreeId, key: impl AsRef<[u8]>) {
        self.push(Op { tree: tree as u8, key: key.as_ref().to_vec(), value: None });
    }

    fn push(&mut self, op: Op) {
        if holds_values(op.tree) {
            let phase = op.phase();
            let owner = segments::owner(op.tree, &op.key);
            // Ops apply sorted by phase (stably): the last one applied to a
            // key decides what it holds, and so its index entry.
            if self.pointers.get(&owner).is_none_or(|(applied, _)| phase >= *applied) {
                let pointer = op.value.as_deref().and_then(|v| pointer_in(op.tree, v));
                self.pointers.insert(owner, (phase, pointer));
            }
        }
        self.ops.push(op);
    }

    /// Appends a journal event and trims the event that falls out of retention.
    pub fn event(&mut self, session_id: SessionId, kind: EventKind) {
        self.counters.event_seq += 1;
        let seq = self.counters.event_seq;
        let record = EventRecord { session_id, timestamp: self.now, kind };
        self.put(TreeId::Events, keys::event_key(seq), codec::encode(&record));
        if let Some(old) = seq.checked_sub(self.event_retention).filter(|&s| s > 0) {
            self.del(TreeId::Events, keys::event_key(old));
        }
    }

    /// The ops to apply, with the counters record when they changed, and
    /// the `segment_pointers` entry of every `states` / `writes` key put or
    /// removed: the pointer it holds after the change, or a removal when
    /// it holds none (a blind one: the key may never have had an entry).
    pub fn into_ops(mut self, committed: &Counters) -> Vec<Op> {
        if self.counters != *committed {
            let counters = codec::encode(&self.counters);
            self.put(TreeId::Meta, keys::META_COUNTERS, counters);
        }
        let tree = TreeId::SegmentPointers as u8;
        for (owner, (_, pointer)) in std::mem::take(&mut self.pointers) {
            let value = pointer.map(|p| p.encode().to_vec());
            self.ops.push(Op { tree, key: owner, value });
        }
        self.ops
    }
}

/// Puts a change's ops in application order and appends them to the
/// segments as its intent (`None` when there is nothing to apply). Nothing
/// is applied yet: a failure here leaves the store as it was.
pub(crate) fn log_intent(ops: &mut [Op], segments: &Segments) -> Result<Option<Pointer>> {
    if ops.is_empty() {
        return Ok(None);
    }
    ops.sort_by_key(Op::phase);
    Ok(Some(segments.append(segments::INTENT_OWNER, &codec::encode(&ops))?))
}

/// Applies a change whose intent is logged, atomically with respect to
/// crashes: each key in phase order, then the applied mark. Every pointer
/// to a segment the change stores or replaces is counted in `segments`'
/// live bytes.
pub(crate) fn apply(trees: &Trees, ops: &[Op], intent: Pointer, segments: &Segments) -> Result<()> {
    apply_keys(trees, ops, Some(segments))?;
    trees.get(TreeId::Meta).insert(keys::META_APPLIED, &keys::applied_mark(intent.segment, intent.end()))?;
    Ok(())
}

/// The segment pointer a value of `tree` holds, if any: a state that is
/// one, or a pending write whose value is one.
pub(crate) fn pointer_in(tree: u8, value: &[u8]) -> Option<Pointer> {
    if tree == TreeId::States as u8 {
        Pointer::decode(value)
    } else if tree == TreeId::Writes as u8 {
        let rec: WriteRecord = codec::decode(value, "pending write").ok()?;
        Pointer::decode(&rec.value)
    } else {
        None
    }
}

fn holds_values(tree: u8) -> bool {
    tree == TreeId::States as u8 || tree == TreeId::Writes as u8
}

fn apply_keys(trees: &Trees, ops: &[Op], segments: Option<&Segments>) -> sled::Result<()> {
    for op in ops {
        // Recovery checked the tree numbers of a stored intent; a change
        // built here only names trees of the schema.
        let Some(tree) = trees.by_number(op.tree) else { continue };
        let old = match &op.value {
            Some(value) => tree.insert(&op.key, value.as_slice())?,
            None => tree.remove(&op.key)?,
        };
        if let Some(segments) = segments.filter(|_| holds_values(op.tree)) {
            if let Some(p) = op.value.as_deref().and_then(|v| pointer_in(op.tree, v)) {
                segments.acquire(&p);
            }
            if let Some(p) = old.as_deref().and_then(|v| pointer_in(op.tree, v)) {
                segments.release(&p);
            }
        }
    }
    Ok(())
}

/// Re-applies every intent after the last change sled holds whole (see the
/// module's recovery), makes the result durable, and returns how many.
pub(crate) fn recover(db: &sled::Db, trees: &Trees, segments: &Segments) -> Result<u64> {
    let meta = trees.get(TreeId::Meta);
    let from = match meta.get(keys::META_APPLIED)? {
        Some(v) => {
            Some(keys::decode_applied_mark(&v).ok_or_else(|| StorageError::corrupt("a malformed applied mark"))?)
        }
        // No change was ever applied in format 4: every intent is new.
        None => None,
    };
    let ids = segments.ids();
    // The mark's segment is never removed (`Segments::remove_unreferenced`
    // keeps it; compaction only takes segments older than the one the
    // newest change went to): without it, changes after the mark are lost.
    if let Some((segment, _)) = from
        && !ids.contains(&segment)
        && ids.last().is_some_and(|&newest| newest > segment)
    {
        return Err(StorageError::corrupt(format!(
            "state segment {} holding the newest changes is missing",
            segments::file_name(segment)
        )));
    }
    let mut replayed = 0;
    for id in ids {
        let start = match from {
            Some((segment, _)) if id < segment => continue,
            Some((segment, next)) if id == segment => next,
            _ => 0,
        };
        // What is replayed must be on disk before sled's copy of it is: a
        // crash may have left it only in the page cache.
        segments.sync_file(id)?;
        let (entries, _tail) = segments.entries_from(id, start)?;
        for e in entries.iter().filter(|e| e.owner == segments::INTENT_OWNER) {
            let bytes = match segments.read(&e.pointer) {
                Ok(bytes) => bytes,
                Err(segments::ReadError::Io(e)) => return Err(e.into()),
                // A torn value ends the segment's log like a torn header.
                Err(_) => break,
            };
            let ops: Vec<Op> = codec::decode(&bytes, "intent")?;
            if ops.iter().any(|op| usize::from(op.tree) >= TREE_COUNT) {
                return Err(StorageError::corrupt("intent names an unknown tree"));
            }
            apply_keys(trees, &ops, None)?;
            meta.insert(keys::META_APPLIED, &keys::applied_mark(id, e.pointer.end()))?;
            replayed += 1;
        }
    }
    if replayed > 0 {
        db.flush()?;
    }
    Ok(replayed)
}

/// Formats 1-3 kept the last change's intent in sled's meta tree, written
/// before its keys: re-applies it (completing a change a crash cut short,
/// a no-op otherwise), then drops it.
pub(crate) fn replay_legacy(db: &sled::Db, trees: &Trees) -> Result<()> {
    let meta = trees.get(TreeId::Meta);
    let Some(bytes) = meta.get(keys::META_INTENT)? else { return Ok(()) };
    let ops: Vec<Op> = codec::decode(&bytes, "intent")?;
    if ops.iter().any(|op| usize::from(op.tree) >= TREE_COUNT) {
        return Err(StorageError::corrupt("intent names an unknown tree"));
    }
    apply_keys(trees, &ops, None)?;
    meta.remove(keys::META_INTENT)?;
    db.flush()?;
    Ok(())
}

/// Test support: the newest change's intent, as stored in the segments.
#[cfg(test)]
pub(crate) fn last_intent(trees: &Trees, segments: &Segments) -> Vec<u8> {
    let mark = trees.get(TreeId::Meta).get(keys::META_APPLIED).unwrap().expect("an applied mark");
    let (segment, next) = keys::decode_applied_mark(&mark).unwrap();
    let (entries, _) = segments.entries(segment).unwrap();
    let e = entries.iter().find(|e| e.pointer.end() == next).expect("the intent");
    assert_eq!(e.owner, segments::INTENT_OWNER);
    segments.read(&e.pointer).unwrap()
}

/// Test support: `intent` appended to the segments and applied only up to
/// `applied` keys, without its applied mark, as a crash in the middle of
/// [`apply`] leaves it. Returns how many keys the intent has.
#[cfg(test)]
pub(crate) fn apply_prefix(trees: &Trees, segments: &Segments, intent: &[u8], applied: usize) -> usize {
    let ops: Vec<Op> = codec::decode(intent, "intent").expect("an intent");
    segments.append(segments::INTENT_OWNER, intent).expect("append the intent");
    segments.sync().expect("sync the segments");
    apply_keys(trees, &ops[..applied.min(ops.len())], None).expect("apply");
    ops.len()
}
