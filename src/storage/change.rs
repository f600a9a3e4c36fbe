//! The atomic change: how one write's keys reach sled together.
//!
//! A write gathers its puts and removals into a `Change` (the operations
//! of `writes` build them), then `apply` writes the whole change first as
//! one *intent* record (a single sled insert, atomic by itself), then key by
//! key. sled recovers a prefix of its log, so after a crash either the intent
//! is missing (and so is every later key) or it is present and `replay`
//! re-applies it when the directory is opened; re-applying is idempotent.
//! This costs one extra insert where a sled transaction or batch would roll
//! sled's I/O buffer twice (two extra `pwrite` + `sync_file_range` per write,
//! measured as 2x the whole write).
//!
//! Keys are applied in an order that keeps every index entry pointing at a
//! record for concurrent readers too: new records before their indexes,
//! removed indexes before their records (`Op::phase`).

use super::codec;
use super::error::{Result, StorageError};
use super::keys::{self, TREE_COUNT, TreeId, Trees};
use super::records::{Counters, EventRecord, WriteRecord};
use super::segments::{self, Pointer, Segments};
use crate::model::{EventKind, SessionId};
use serde::{Deserialize, Serialize};

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
}

impl Change {
    pub fn new(counters: Counters, now: i64, event_retention: u64, segments: std::sync::Arc<Segments>) -> Change {
        Change { counters, ops: Vec::with_capacity(16), now, event_retention, segments }
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

    pub fn put(&mut self, tree: TreeId, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops.push(Op { tree: tree as u8, key: key.as_ref().to_vec(), value: Some(value.as_ref().to_vec()) });
    }

    pub fn del(&mut self, tree: TreeId, key: impl AsRef<[u8]>) {
        self.ops.push(Op { tree: tree as u8, key: key.as_ref().to_vec(), value: None });
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

    /// The ops to apply, with the counters record when they changed.
    pub fn into_ops(mut self, committed: &Counters) -> Vec<Op> {
        if self.counters != *committed {
            let counters = codec::encode(&self.counters);
            self.put(TreeId::Meta, keys::META_COUNTERS, counters);
        }
        self.ops
    }
}

/// Applies one change atomically with respect to crashes: the intent
/// record first, then each key in phase order. Every pointer to a segment
/// the change stores or replaces is counted in `segments`' live bytes.
pub(crate) fn apply(trees: &Trees, mut ops: Vec<Op>, segments: Option<&Segments>) -> sled::Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    ops.sort_by_key(Op::phase);
    trees.get(TreeId::Meta).insert(keys::META_INTENT, codec::encode(&ops))?;
    apply_keys(trees, &ops, segments)
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
        // `replay` checked the tree numbers of a stored intent; a change
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

/// Re-applies the last change's intent: completes it if a crash cut it
/// short, and is a no-op otherwise. Then drops the intent, so that later
/// direct writes (journal trimming, migrations) are never undone.
pub(crate) fn replay(db: &sled::Db, trees: &Trees) -> Result<()> {
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

/// Test support: the intent as stored, applied only up to `applied` keys
/// after it, as a crash in the middle of [`apply`] leaves it.
#[cfg(test)]
pub(crate) fn apply_prefix(trees: &Trees, intent: &[u8], applied: usize) -> usize {
    let ops: Vec<Op> = codec::decode(intent, "intent").expect("an intent");
    trees.get(TreeId::Meta).insert(keys::META_INTENT, intent).expect("insert the intent");
    apply_keys(trees, &ops[..applied.min(ops.len())], None).expect("apply");
    ops.len()
}
