//! Every read of the sled layout, written once: the server's store, the
//! operations that build changes, `verify` and `checkpoint-dump`'s
//! inspector all read through a [`Reader`]. Public reads return model
//! types; the record-level ones are for the storage layer only.
//!
//! A reader takes no lock: it may observe a change before it is durable
//! (the store settles a read before answering, see `store`), and a change
//! applied key by key in `change`'s order, so an index entry may briefly
//! lack its record (a listing skips it).

use super::codec;
use super::error::{Result, StorageError};
use super::keys::{self, TreeId, Trees};
use super::records::{AnnotationRecord, CheckpointRecord, Counters, EventRecord, SessionRecord, raw_json};
use super::segments::{Pointer, ReadError, Segments};
use crate::model::{
    Annotation, Checkpoint, CheckpointId, CheckpointSummary, JournalEvent, ListQuery, Page, PageFill, SearchQuery,
    Session, SessionId, exclusive_range, metadata_matches,
};
use serde_json::value::RawValue;
use sled::IVec;
use std::sync::Arc;

/// The highest numbers stored (see [`Reader::newest_numbers`]).
pub(crate) struct NewestNumbers {
    pub checkpoint_sequence: Option<u64>,
    pub event_sequence: Option<u64>,
    pub session_ordinal: Option<u64>,
}

/// Reads of one open database and its state segments.
#[derive(Clone)]
pub struct Reader {
    trees: Trees,
    segments: Arc<Segments>,
}

type Entry = sled::Result<(IVec, IVec)>;

pub(crate) fn decode_checkpoint(bytes: &[u8]) -> Result<CheckpointRecord> {
    codec::decode(bytes, "checkpoint")
}

pub(crate) fn decode_event(k: &[u8], v: &[u8]) -> Result<JournalEvent> {
    let seq = keys::decode_event_key(k).ok_or_else(|| StorageError::corrupt("bad event key"))?;
    Ok(codec::decode::<EventRecord>(v, "event")?.to_model(seq))
}

/// A page being filled (the shared [`PageFill`]), reading what a row needs.
struct PageBuilder(PageFill);

impl PageBuilder {
    fn new(full: bool, limit: usize) -> PageBuilder {
        PageBuilder(PageFill::new(full, limit))
    }

    fn is_full(&self) -> bool {
        self.0.is_full()
    }

    fn push(&mut self, r: &Reader, rec: CheckpointRecord, stored: &[u8]) -> Result<()> {
        if self.0.wants_records() {
            self.0.push_record(r.full(rec, codec::stored_checksum(stored).unwrap_or_default())?);
        } else {
            self.0.push_summary(r.summary(&rec)?);
        }
        Ok(())
    }

    fn done(self) -> Page {
        self.0.done()
    }
}

impl Reader {
    pub(crate) fn new(trees: Trees, segments: Arc<Segments>) -> Reader {
        Reader { trees, segments }
    }

    /// A tree by the number a change's op or a segment entry's owner
    /// carries; `None` for a number no tree has.
    pub(crate) fn tree_by_number(&self, n: u8) -> Option<&sled::Tree> {
        self.trees.by_number(n)
    }

    pub(crate) fn segments(&self) -> &Arc<Segments> {
        &self.segments
    }

    /// A value as stored: inline, or read through its segment pointer
    /// (checked against the pointer's CRC).
    pub(crate) fn resolve(&self, stored: &[u8], what: &str) -> Result<Vec<u8>> {
        match Pointer::decode(stored) {
            Some(p) => self.segments.read(&p).map_err(|e| match e {
                ReadError::Io(e) => StorageError::from(e),
                e => StorageError::corrupt(format!("{what}: {e}")),
            }),
            None if Pointer::is_pointer(stored) => Err(StorageError::corrupt(format!("{what}: a damaged pointer"))),
            None => Ok(stored.to_vec()),
        }
    }

    /// A state as stored, checked against the CRC its record carries.
    pub(crate) fn check_state(&self, rec: &CheckpointRecord, stored: Option<IVec>) -> Result<Vec<u8>> {
        let stored = stored.ok_or_else(|| StorageError::corrupt(format!("checkpoint {}: no stored state", rec.id)))?;
        let state = self.resolve(&stored, &format!("checkpoint {}: stored state", rec.id))?;
        if crc32fast::hash(&state) != rec.state_crc {
            return Err(StorageError::corrupt(format!("checkpoint {}: stored state failed its checksum", rec.id)));
        }
        Ok(state)
    }

    pub(crate) fn tree(&self, id: TreeId) -> &sled::Tree {
        self.trees.get(id)
    }

    // ----- counters -----------------------------------------------------------

    /// The counters as last written; `None` for a directory never written to.
    pub(crate) fn counters(&self) -> Result<Option<Counters>> {
        self.tree(TreeId::Meta).get(keys::META_COUNTERS)?.map(|b| codec::decode(&b, "counters")).transpose()
    }

    /// The highest number of each kind stored, whatever the counters say.
    pub(crate) fn newest_numbers(&self) -> Result<NewestNumbers> {
        let last = |id: TreeId| -> Result<Option<IVec>> { Ok(self.tree(id).last()?.map(|(k, _)| k)) };
        Ok(NewestNumbers {
            checkpoint_sequence: last(TreeId::Sequences)?.and_then(|k| keys::decode_sequence_key(&k)),
            event_sequence: last(TreeId::Events)?.and_then(|k| keys::decode_event_key(&k)),
            session_ordinal: last(TreeId::SessionOrder)?.and_then(|k| keys::decode_ordinal_key(&k)),
        })
    }

    /// Whether any tree but `meta` holds anything.
    pub(crate) fn has_data(&self) -> Result<bool> {
        Ok(self.trees.data().iter().any(|t| !t.is_empty()))
    }

    // ----- sessions -----------------------------------------------------------

    pub(crate) fn session_record(&self, id: SessionId) -> Result<SessionRecord> {
        match self.tree(TreeId::Sessions).get(keys::session_key(id))? {
            Some(bytes) => codec::decode(&bytes, "session"),
            None => Err(StorageError::session_not_found(id)),
        }
    }

    pub fn session(&self, id: SessionId) -> Result<Session> {
        self.session_record(id)?.to_model()
    }

    pub fn contains_session(&self, id: SessionId) -> Result<bool> {
        Ok(self.tree(TreeId::Sessions).contains_key(keys::session_key(id))?)
    }

    /// The session with client key `key`.
    pub fn session_by_key(&self, key: &str) -> Result<Option<SessionId>> {
        let Some(id) = self.tree(TreeId::SessionKeys).get(keys::session_key_key(key))? else { return Ok(None) };
        keys::decode_session_key(&id).map(Some).ok_or_else(|| StorageError::corrupt("bad session_keys entry"))
    }

    /// Whether a session has creation ordinal `ordinal`.
    pub(crate) fn ordinal_in_use(&self, ordinal: u64) -> Result<bool> {
        Ok(self.tree(TreeId::SessionOrder).contains_key(keys::ordinal_key(ordinal))?)
    }

    /// Sessions in creation order with ordinal at least `from`; a session
    /// deleted between the two reads of an entry is skipped, as is an order
    /// entry without its session (`verify` reports that).
    pub(crate) fn session_records(&self, from: u64) -> impl Iterator<Item = Result<SessionRecord>> + '_ {
        self.tree(TreeId::SessionOrder).range(keys::ordinal_key(from)..).filter_map(move |entry| {
            let lookup = || -> Result<Option<SessionRecord>> {
                let (_, id) = entry?;
                let id =
                    keys::decode_session_key(&id).ok_or_else(|| StorageError::corrupt("bad session_order entry"))?;
                self.tree(TreeId::Sessions)
                    .get(keys::session_key(id))?
                    .map(|bytes| codec::decode::<SessionRecord>(&bytes, "session"))
                    .transpose()
            };
            lookup().transpose()
        })
    }

    /// Sessions in creation order, with their ordinals, from the first.
    pub fn sessions(&self) -> impl Iterator<Item = Result<(u64, Session)>> + '_ {
        self.session_records(0).map(|rec| {
            let rec = rec?;
            Ok((rec.ordinal, rec.to_model()?))
        })
    }

    /// One page of sessions in creation order, starting after session
    /// `after`. With `key_prefix`, only the sessions whose key starts with
    /// it, in key order, after the key of `after`.
    pub fn list_sessions(
        &self,
        after: Option<SessionId>,
        key_prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Session>> {
        if let Some(prefix) = key_prefix {
            return self.sessions_by_key_prefix(prefix, after, limit);
        }
        let from = match after {
            Some(id) => match self.session_record(id)?.ordinal.checked_add(1) {
                Some(next) => next,
                None => return Ok(Vec::new()),
            },
            None => 0,
        };
        self.session_records(from).take(limit).map(|rec| rec?.to_model()).collect()
    }

    fn sessions_by_key_prefix(&self, prefix: &str, after: Option<SessionId>, limit: usize) -> Result<Vec<Session>> {
        let keys = self.tree(TreeId::SessionKeys);
        let entries = match after {
            Some(id) => {
                let rec = self.session_record(id)?;
                let Some(key) = rec.key.filter(|k| k.starts_with(prefix)) else { return Ok(Vec::new()) };
                let from =
                    (std::ops::Bound::Excluded(keys::session_key_key(&key).to_vec()), std::ops::Bound::Unbounded);
                keys.range(from)
            }
            None => keys.range(keys::session_key_key(prefix).to_vec()..),
        };
        let mut out = Vec::new();
        for entry in entries {
            let (k, id) = entry?;
            if out.len() >= limit || !k.starts_with(prefix.as_bytes()) {
                break;
            }
            let id = keys::decode_session_key(&id).ok_or_else(|| StorageError::corrupt("bad session_keys entry"))?;
            // Deleted between the two reads: skipped.
            if let Some(bytes) = self.tree(TreeId::Sessions).get(keys::session_key(id))? {
                out.push(codec::decode::<SessionRecord>(&bytes, "session")?.to_model()?);
            }
        }
        Ok(out)
    }

    // ----- checkpoints --------------------------------------------------------

    /// Where a checkpoint lives: its session and sequence number.
    pub(crate) fn locate(&self, id: CheckpointId) -> Result<(SessionId, u64)> {
        let value = self
            .tree(TreeId::CheckpointIds)
            .get(keys::checkpoint_id_key(id))?
            .ok_or_else(|| StorageError::checkpoint_not_found(id))?;
        keys::decode_checkpoint_key(&value).ok_or_else(|| StorageError::corrupt(format!("bad index entry for {id}")))
    }

    pub fn contains_checkpoint(&self, id: CheckpointId) -> Result<bool> {
        Ok(self.tree(TreeId::CheckpointIds).contains_key(keys::checkpoint_id_key(id))?)
    }

    /// Whether a stored checkpoint has global sequence `seq`.
    pub fn sequence_in_use(&self, seq: u64) -> Result<bool> {
        Ok(self.tree(TreeId::Sequences).contains_key(keys::sequence_key(seq))?)
    }

    /// A checkpoint's record and the checksum its stored bytes carry.
    pub(crate) fn checkpoint_record(&self, id: CheckpointId) -> Result<(CheckpointRecord, u32)> {
        let (session, seq) = self.locate(id)?;
        let bytes = self
            .tree(TreeId::Checkpoints)
            .get(keys::checkpoint_key(session, seq))?
            .ok_or_else(|| StorageError::checkpoint_not_found(id))?;
        Ok((decode_checkpoint(&bytes)?, codec::stored_checksum(&bytes).unwrap_or_default()))
    }

    /// A session's checkpoint records with sequence in `seqs`, oldest first.
    pub(crate) fn checkpoint_records(
        &self,
        session: SessionId,
        seqs: std::ops::RangeInclusive<u64>,
    ) -> impl DoubleEndedIterator<Item = Result<CheckpointRecord>> + '_ {
        self.tree(TreeId::Checkpoints)
            .range(keys::session_checkpoints(session, seqs))
            .map(|entry| decode_checkpoint(&entry?.1))
    }

    /// The record of a session's checkpoint with sequence `seq`, if stored.
    pub(crate) fn checkpoint_record_at(&self, session: SessionId, seq: u64) -> Result<Option<CheckpointRecord>> {
        self.tree(TreeId::Checkpoints)
            .get(keys::checkpoint_key(session, seq))?
            .map(|b| decode_checkpoint(&b))
            .transpose()
    }

    /// Every checkpoint record of every session, in key order.
    pub(crate) fn all_checkpoint_records(&self) -> impl Iterator<Item = Result<CheckpointRecord>> + '_ {
        self.tree(TreeId::Checkpoints).iter().map(|entry| decode_checkpoint(&entry?.1))
    }

    /// A session's checkpoints in sequence order.
    pub fn checkpoints(&self, session: SessionId) -> impl Iterator<Item = Result<CheckpointSummary>> + '_ {
        self.checkpoint_records(session, 0..=u64::MAX).map(|rec| self.summary(&rec?))
    }

    fn summary(&self, rec: &CheckpointRecord) -> Result<CheckpointSummary> {
        Ok(rec.summary(self.has_notes(rec.id)?))
    }

    /// The checkpoint with the client's id `external` in (session, namespace).
    pub fn checkpoint_by_external_id(
        &self,
        session: SessionId,
        namespace: &str,
        external: &str,
    ) -> Result<Option<CheckpointSummary>> {
        let key = keys::external_id_key(session, namespace, external);
        let Some(seq) = self.tree(TreeId::ExternalIds).get(key)? else { return Ok(None) };
        let seq =
            keys::decode_external_id_value(&seq).ok_or_else(|| StorageError::corrupt("bad external_ids entry"))?;
        self.summary_at(session, seq)
    }

    /// The newest checkpoint of (session, namespace).
    pub fn latest_in(&self, session: SessionId, namespace: &str) -> Result<Option<CheckpointSummary>> {
        self.session_record(session)?;
        let range = keys::namespace_key(session, namespace, 0)..=keys::namespace_key(session, namespace, u64::MAX);
        for k in self.tree(TreeId::Namespaces).range(range).keys().rev() {
            let seq = keys::namespace_key_sequence(&k?).ok_or_else(|| StorageError::corrupt("bad namespaces key"))?;
            // An index entry without its record is `verify`'s business.
            if let Some(summary) = self.summary_at(session, seq)? {
                return Ok(Some(summary));
            }
        }
        Ok(None)
    }

    fn summary_at(&self, session: SessionId, seq: u64) -> Result<Option<CheckpointSummary>> {
        match self.tree(TreeId::Checkpoints).get(keys::checkpoint_key(session, seq))? {
            Some(bytes) => Ok(Some(self.summary(&decode_checkpoint(&bytes)?)?)),
            None => Ok(None),
        }
    }

    /// A checkpoint's state, checked against the CRC its record carries.
    pub(crate) fn state(&self, rec: &CheckpointRecord) -> Result<Box<RawValue>> {
        let key = keys::checkpoint_key(rec.session_id, rec.sequence_number);
        let state = self.check_state(rec, self.tree(TreeId::States).get(key)?)?;
        raw_json(state, "state")
    }

    /// Sequence of the newest checkpoint of `session` below `seq`.
    pub(crate) fn newest_before(&self, session: SessionId, seq: u64) -> Result<Option<u64>> {
        let Some(high) = seq.checked_sub(1) else { return Ok(None) };
        match self.tree(TreeId::Checkpoints).range(keys::session_checkpoints(session, 0..=high)).keys().next_back() {
            Some(k) => Ok(keys::decode_checkpoint_key(&k?).map(|(_, s)| s)),
            None => Ok(None),
        }
    }

    /// The full checkpoint: state, metadata, annotations and writes.
    pub fn checkpoint(&self, id: CheckpointId) -> Result<Checkpoint> {
        let (rec, checksum) = self.checkpoint_record(id)?;
        self.full(rec, checksum)
    }

    fn full(&self, rec: CheckpointRecord, checksum: u32) -> Result<Checkpoint> {
        let id = rec.id;
        let state = self.state(&rec).map_err(|e| match e {
            // Deleted since its record was read.
            StorageError::Corrupt(_) if !self.contains_checkpoint(id).unwrap_or(true) => {
                StorageError::checkpoint_not_found(id)
            }
            e => e,
        })?;
        let annotations: Vec<_> = self.annotations(id)?.into_iter().map(|(_, a)| a).collect();
        let writes = match &rec.external_id {
            Some(external) => {
                self.checkpoint_writes(rec.session_id, &rec.namespace, external)?.into_iter().map(Into::into).collect()
            }
            None => Vec::new(),
        };
        Ok(Checkpoint {
            summary: rec.summary(!annotations.is_empty()),
            metadata: raw_json(rec.metadata, "checkpoint metadata")?,
            state,
            annotations,
            checksum,
            writes,
        })
    }

    /// The sequence of the checkpoint with external id `external` in
    /// (session, namespace), for a list bound.
    fn external_bound(&self, session: SessionId, namespace: &str, external: &str) -> Result<u64> {
        let found = self.checkpoint_by_external_id(session, namespace, external)?;
        found.map(|s| s.sequence_number).ok_or_else(|| StorageError::bound_not_found(namespace, external))
    }

    /// One page of a session's checkpoints. Costs O(page), not O(session)
    /// (a metadata filter adds the rows it passes over). A page ends early
    /// once it holds [`MAX_PAGE_BYTES`] (of messages and tags; with `full`,
    /// of whole records), so a reply stays bounded; the client pages on.
    pub fn list_page(&self, session: SessionId, q: &ListQuery, max: usize) -> Result<Page> {
        self.session_record(session)?;
        let limit = q.limit.unwrap_or(max).min(max);
        let namespace = q.namespace.as_deref().unwrap_or("");
        let after = match &q.after_external {
            Some(external) => Some(self.external_bound(session, namespace, external)?),
            None => q.after,
        };
        let before = match &q.before_external {
            Some(external) => Some(self.external_bound(session, namespace, external)?),
            None => q.before,
        };
        let mut page = PageBuilder::new(q.full, limit);
        let Some((low, high)) = exclusive_range(after, before) else { return Ok(page.done()) };
        if limit == 0 {
            return Ok(page.done());
        }
        let checkpoints = self.tree(TreeId::Checkpoints);
        let ordered = |range: sled::Iter| -> Box<dyn Iterator<Item = Entry>> {
            if q.newest_first { Box::new(range.rev()) } else { Box::new(range) }
        };
        // The records in order, from the narrowest index: a namespace's
        // (a tag then filters), a tag's, or the session's range itself.
        let record_at = |k: &[u8], seq: Option<u64>| -> Result<Option<IVec>> {
            let seq = seq.ok_or_else(|| StorageError::corrupt(format!("bad index key {k:?}")))?;
            Ok(checkpoints.get(keys::checkpoint_key(session, seq))?)
        };
        let records: Box<dyn Iterator<Item = Result<Option<IVec>>>> = match (&q.namespace, &q.tag) {
            (Some(namespace), _) => {
                let range =
                    keys::namespace_key(session, namespace, low)..=keys::namespace_key(session, namespace, high);
                Box::new(ordered(self.tree(TreeId::Namespaces).range(range)).map(move |entry| {
                    let (k, _) = entry?;
                    record_at(&k, keys::namespace_key_sequence(&k))
                }))
            }
            (None, Some(tag)) => {
                let range = keys::tag_key(session, tag, low)..=keys::tag_key(session, tag, high);
                Box::new(ordered(self.tree(TreeId::Tags).range(range)).map(move |entry| {
                    let (k, _) = entry?;
                    record_at(&k, keys::tag_key_sequence(&k))
                }))
            }
            (None, None) => Box::new(
                ordered(checkpoints.range(keys::session_checkpoints(session, low..=high))).map(|e| Ok(Some(e?.1))),
            ),
        };
        for record in records {
            if page.is_full() {
                break;
            }
            // An index entry without its record would be corruption;
            // `verify` reports it, listing skips it.
            let Some(bytes) = record? else { continue };
            let rec = decode_checkpoint(&bytes)?;
            if q.tag.as_ref().is_some_and(|t| !rec.tags.contains(t))
                || q.metadata.as_ref().is_some_and(|m| !metadata_matches(m, &rec.metadata))
            {
                continue;
            }
            page.push(self, rec, &bytes)?;
        }
        Ok(page.done())
    }

    /// A page of summaries (`q.full` ignored).
    pub fn list_checkpoints(&self, session: SessionId, q: &ListQuery, max: usize) -> Result<Vec<CheckpointSummary>> {
        let q = ListQuery { full: false, ..q.clone() };
        Ok(match self.list_page(session, &q, max)? {
            Page::Summaries(rows) => rows,
            Page::Records(rows) => rows.into_iter().map(|c| c.summary).collect(),
        })
    }

    /// Checkpoints of every session, newest first by global sequence,
    /// below `before`, filtered as `list_checkpoints` filters. Costs the
    /// rows it passes over.
    pub fn search(&self, q: &SearchQuery, max: usize) -> Result<Page> {
        let limit = q.limit.unwrap_or(max).min(max);
        let mut page = PageBuilder::new(q.full, limit);
        let Some(high) = q.before.map_or(Some(u64::MAX), |b| b.checked_sub(1)) else { return Ok(page.done()) };
        for entry in self.tree(TreeId::Sequences).range(..=keys::sequence_key(high)).rev() {
            if page.is_full() {
                break;
            }
            let (k, v) = entry?;
            let seq = keys::decode_sequence_key(&k).ok_or_else(|| StorageError::corrupt("bad sequence key"))?;
            let (session, _) =
                keys::decode_sequence_value(&v).ok_or_else(|| StorageError::corrupt("bad sequence entry"))?;
            let Some(bytes) = self.tree(TreeId::Checkpoints).get(keys::checkpoint_key(session, seq))? else {
                continue;
            };
            let rec = decode_checkpoint(&bytes)?;
            if q.namespace.as_ref().is_some_and(|ns| *ns != rec.namespace)
                || q.metadata.as_ref().is_some_and(|m| !metadata_matches(m, &rec.metadata))
            {
                continue;
            }
            page.push(self, rec, &bytes)?;
        }
        Ok(page.done())
    }

    /// Checkpoints of every session by global sequence, after `after`.
    pub fn list_by_sequence(&self, after: u64, limit: usize) -> Result<Vec<CheckpointSummary>> {
        let Some(start) = after.checked_add(1) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for entry in self.tree(TreeId::Sequences).range(keys::sequence_key(start)..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry?;
            let seq = keys::decode_sequence_key(&k).ok_or_else(|| StorageError::corrupt("bad sequence key"))?;
            let (session, _) =
                keys::decode_sequence_value(&v).ok_or_else(|| StorageError::corrupt("bad sequence entry"))?;
            if let Some(bytes) = self.tree(TreeId::Checkpoints).get(keys::checkpoint_key(session, seq))? {
                out.push(self.summary(&decode_checkpoint(&bytes)?)?);
            }
        }
        Ok(out)
    }

    // ----- annotations --------------------------------------------------------

    pub(crate) fn has_notes(&self, id: CheckpointId) -> Result<bool> {
        Ok(self.tree(TreeId::Annotations).scan_prefix(keys::annotations_prefix(id)).next().transpose()?.is_some())
    }

    /// A checkpoint's annotations with their indexes, in order.
    pub fn annotations(&self, id: CheckpointId) -> Result<Vec<(u32, Annotation)>> {
        self.annotation_keys(id)
            .map(|entry| {
                let (index, bytes) = entry?;
                Ok((index, codec::decode::<AnnotationRecord>(&bytes, "annotation")?.to_model()))
            })
            .collect()
    }

    fn annotation_keys(&self, id: CheckpointId) -> impl DoubleEndedIterator<Item = Result<(u32, IVec)>> + '_ {
        self.tree(TreeId::Annotations).scan_prefix(keys::annotations_prefix(id)).map(|entry| {
            let (k, v) = entry?;
            let (_, index) =
                keys::decode_annotation_key(&k).ok_or_else(|| StorageError::corrupt("bad annotation key"))?;
            Ok((index, v))
        })
    }

    /// The indexes of a checkpoint's annotations (their records unread).
    pub(crate) fn annotation_indexes(&self, id: CheckpointId) -> Result<Vec<u32>> {
        self.annotation_keys(id).map(|entry| Ok(entry?.0)).collect()
    }

    /// The index the next annotation of `id` takes: one past the last.
    pub(crate) fn next_annotation_index(&self, id: CheckpointId) -> Result<u32> {
        Ok(match self.annotation_keys(id).next_back().transpose()? {
            Some((index, _)) => index.saturating_add(1),
            None => 0,
        })
    }

    pub(crate) fn annotation_exists(&self, id: CheckpointId, index: u32) -> Result<bool> {
        Ok(self.tree(TreeId::Annotations).contains_key(keys::annotation_key(id, index))?)
    }

    // ----- the journal --------------------------------------------------------

    /// The oldest event the journal still holds.
    pub fn oldest_event(&self) -> Result<Option<u64>> {
        Ok(self.tree(TreeId::Events).first()?.and_then(|(k, _)| keys::decode_event_key(&k)))
    }

    /// The newest event the journal holds.
    pub fn newest_event(&self) -> Result<Option<u64>> {
        Ok(self.tree(TreeId::Events).last()?.and_then(|(k, _)| keys::decode_event_key(&k)))
    }

    /// Journal events with seq > `after`, in order.
    pub fn events_after(&self, after: u64) -> impl Iterator<Item = Result<JournalEvent>> + '_ {
        let from = after.checked_add(1);
        let range = from.map(|from| self.tree(TreeId::Events).range(keys::event_key(from)..));
        range.into_iter().flatten().map(|entry| {
            let (k, v) = entry?;
            decode_event(&k, &v)
        })
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
        let mut out = Vec::new();
        for event in self.events_after(after) {
            if out.len() >= limit {
                break;
            }
            let event = event?;
            if event.seq > through {
                break;
            }
            if session.is_none_or(|s| s == event.session_id) {
                out.push(event);
            }
        }
        Ok(out)
    }
}
