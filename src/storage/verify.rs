//! `verify`: every check a data directory's contents can be put to, and
//! `validate`, the checksum pass a running server offers.

use super::codec;
use super::error::{Result, StorageError};
use super::keys::{self, TreeId};
use super::migrate;
use super::reads::{Reader, decode_checkpoint, decode_event};
use super::records::{AnnotationRecord, SessionRecord, WriteRecord, raw_json};
use super::{change, segments};
use crate::config::MAX_REPORTED_INVALID;
use crate::model::{CheckpointId, SessionId, Validation};
use std::collections::{HashMap, HashSet};

/// Most problems `verify` describes one by one (it counts all of them).
pub const MAX_REPORTED_PROBLEMS: usize = 1_000;

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// The first [`MAX_REPORTED_PROBLEMS`] problems, one line each.
    pub problems: Vec<String>,
    /// Every problem found, reported or not.
    pub total_problems: u64,
    pub sessions: u64,
    pub checkpoints: u64,
    pub tags: u64,
    pub annotations: u64,
    /// Pending writes checked.
    pub writes: u64,
    pub events: u64,
    /// State segment files (format 3), and the bytes of their entries that
    /// a record points to (live) or none does (dead, awaiting compaction).
    pub segments: u64,
    pub segment_live_bytes: u64,
    pub segment_dead_bytes: u64,
    /// Segments no record points into, other than the newest: dead appends
    /// a crash left (or a compaction's source whose removal it cut short).
    /// Not damage: checkpointd removes them when it next opens the directory.
    pub unreferenced_segments: u64,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.total_problems == 0
    }

    pub(crate) fn problem(&mut self, what: String) {
        self.total_problems += 1;
        if self.problems.len() < MAX_REPORTED_PROBLEMS {
            self.problems.push(what);
        }
    }
}

/// Checks every checksum, every index entry against its record, every
/// record against the indexes, and the counters against the data.
pub fn verify(read: &Reader) -> Result<Verification> {
    Verify { read }.run()
}

struct Verify<'a> {
    read: &'a Reader,
}

impl Verify<'_> {
    fn tree(&self, id: TreeId) -> &sled::Tree {
        self.read.tree(id)
    }

    fn run(&self) -> Result<Verification> {
        let mut v = Verification::default();
        self.verify_meta(&mut v)?;
        let sessions = self.verify_sessions(&mut v)?;
        let found = self.verify_checkpoints(&mut v, &sessions)?;
        self.verify_indexes(&mut v, &found)?;
        self.verify_writes(&mut v, &sessions)?;
        self.verify_segments(&mut v)?;
        self.verify_segment_index(&mut v)?;
        let last_event = self.verify_events(&mut v)?;
        self.verify_counters(&mut v, &sessions, &found, last_event)?;
        Ok(v)
    }

    /// Walks every state segment, and checks every pointer sled holds
    /// against the entries found: it must be where an entry of that key
    /// starts its value (its bytes and checksum were checked with the
    /// record). A segment no record points into, other than the newest
    /// (where appends go), is counted, not a problem: a crash leaves one when
    /// appends were made whose change never became durable, and opening
    /// removes it.
    fn verify_segments(&self, v: &mut Verification) -> Result<()> {
        let segments = self.read.segments();
        let ids = segments.ids();
        let mut entries = HashMap::new();
        let mut sizes = HashMap::new();
        for &id in &ids {
            let (found, _tail) = segments.entries(id)?;
            sizes.insert(id, segments.usage().get(&id).map_or(0, |u| u.size));
            for e in found {
                entries.insert((id, e.pointer.offset), e);
            }
        }
        let mut live: HashMap<u32, u64> = HashMap::new();
        for tree in [TreeId::States, TreeId::Writes] {
            for entry in self.tree(tree).iter() {
                let (k, value) = entry?;
                let Some(p) = change::pointer_in(tree as u8, &value) else { continue };
                let what = || format!("{}: the value of key {k:?}", keys::TREE_NAMES[tree as usize]);
                match entries.get(&(p.segment, p.offset)) {
                    Some(e) if e.owner == segments::owner(tree as u8, &k) && e.pointer == p => {
                        *live.entry(p.segment).or_default() += u64::from(p.len);
                    }
                    Some(_) => v.problem(format!(
                        "{}: points to an entry of segment {} that another key (or another length) owns",
                        what(),
                        segments::file_name(p.segment)
                    )),
                    // A pointer past the end or into a missing segment was
                    // reported with its record.
                    None if p.end() > sizes.get(&p.segment).copied().unwrap_or(0) => {}
                    None => v.problem(format!(
                        "{}: points to byte {} of segment {}, where no entry starts",
                        what(),
                        p.offset,
                        segments::file_name(p.segment)
                    )),
                }
            }
        }
        let newest = ids.iter().copied().max();
        for &id in &ids {
            let size = sizes.get(&id).copied().unwrap_or(0);
            let used = live.get(&id).copied().unwrap_or(0);
            v.segments += 1;
            v.segment_live_bytes += used;
            v.segment_dead_bytes += size.saturating_sub(used);
            if used == 0 && Some(id) != newest {
                v.unreferenced_segments += 1;
            }
        }
        Ok(())
    }

    /// Checks `segment_pointers` (format 4) against `states` and `writes`:
    /// every value that lives in a segment has its entry, holding the same
    /// pointer, and every entry names such a value. Opening counts each
    /// segment's live bytes from this index alone, and removes a segment
    /// none of its entries points into. A directory of another format (read
    /// unmigrated) has none to check.
    fn verify_segment_index(&self, v: &mut Verification) -> Result<()> {
        if !matches!(migrate::read_version(self.tree(TreeId::Meta)), Ok(Some(f)) if f == migrate::CURRENT_FORMAT) {
            return Ok(());
        }
        let index = self.tree(TreeId::SegmentPointers);
        let held = |stored: &[u8]| match segments::Pointer::decode(stored) {
            Some(p) => describe(&p),
            None => format!("{} bytes that are not a pointer", stored.len()),
        };
        for tree in [TreeId::States, TreeId::Writes] {
            let name = keys::TREE_NAMES[tree as usize];
            for entry in self.tree(tree).iter() {
                let (k, value) = entry?;
                let Some(p) = change::pointer_in(tree as u8, &value) else { continue };
                match index.get(segments::owner(tree as u8, &k))? {
                    Some(e) if e[..] == p.encode()[..] => {}
                    Some(e) => v.problem(format!(
                        "segment_pointers: the entry of {name} key {k:?} holds {}, but the key points to {}",
                        held(&e),
                        describe(&p)
                    )),
                    None => v.problem(format!(
                        "segment_pointers: {name} key {k:?} points to {} but has no entry",
                        describe(&p)
                    )),
                }
            }
        }
        for entry in index.iter() {
            let (owner, stored) = entry?;
            let tree = match owner.split_first() {
                Some((&t, _)) if t == TreeId::States as u8 || t == TreeId::Writes as u8 => t,
                _ => {
                    v.problem(format!("segment_pointers: entry {owner:?} names no states or writes key"));
                    continue;
                }
            };
            let (name, key) = (keys::TREE_NAMES[usize::from(tree)], &owner[1..]);
            match self.read.tree(if tree == TreeId::States as u8 { TreeId::States } else { TreeId::Writes }).get(key)? {
                // Compared with the entry above.
                Some(value) if change::pointer_in(tree, &value).is_some() => {}
                Some(_) => v.problem(format!(
                    "segment_pointers: the entry of {name} key {key:?} holds {}, but the key's value is not in a segment",
                    held(&stored)
                )),
                None => v.problem(format!(
                    "segment_pointers: the entry of {name} key {key:?} holds {}, but there is no such key",
                    held(&stored)
                )),
            }
        }
        Ok(())
    }

    fn verify_meta(&self, v: &mut Verification) -> Result<()> {
        let has_data = self.read.has_data()?;
        match migrate::read_version(self.tree(TreeId::Meta)) {
            Ok(None) if has_data => v.problem("the directory holds data but no format version".into()),
            Ok(None) => {}
            Ok(Some(f)) if f > migrate::CURRENT_FORMAT => v.problem(format!(
                "format version {f} is newer than version {} that this tool reads",
                migrate::CURRENT_FORMAT
            )),
            // `checkpoint-dump` reads an older directory through a migrated
            // copy: this is one whose migration failed (it says why).
            Ok(Some(f)) if f < migrate::CURRENT_FORMAT => v.problem(format!(
                "format version {f} is older than version {} and was read unmigrated: its records may not decode",
                migrate::CURRENT_FORMAT
            )),
            Ok(Some(_)) => {}
            Err(e) => v.problem(format!("meta: {e}")),
        }
        match self.read.counters() {
            Ok(None) if has_data => v.problem("meta: the directory holds data but no counters record".into()),
            Ok(_) => {}
            Err(e) => v.problem(format!("meta: {e}")),
        }
        Ok(())
    }

    fn verify_sessions(&self, v: &mut Verification) -> Result<HashMap<SessionId, SessionRecord>> {
        let mut sessions = HashMap::new();
        for entry in self.tree(TreeId::Sessions).iter() {
            let (k, bytes) = entry?;
            let key = keys::decode_session_key(&k).map_or_else(|| format!("{k:?}"), |id| id.to_string());
            match codec::decode::<SessionRecord>(&bytes, "session record") {
                Ok(rec) if keys::decode_session_key(&k) != Some(rec.id) => {
                    v.problem(format!("session {key}: its record says it is session {}", rec.id))
                }
                Ok(rec) => {
                    sessions.insert(rec.id, rec);
                }
                Err(e) => v.problem(format!("session {key}: {e}")),
            }
        }
        v.sessions = sessions.len() as u64;
        let mut ordered = HashSet::new();
        for entry in self.tree(TreeId::SessionOrder).iter() {
            let (k, id) = entry?;
            let (Some(ordinal), Some(id)) = (keys::decode_ordinal_key(&k), keys::decode_session_key(&id)) else {
                v.problem(format!("session_order: undecodable entry {k:?}"));
                continue;
            };
            match sessions.get(&id) {
                None => v.problem(format!("session_order {ordinal} names session {id}, which does not exist")),
                Some(rec) if rec.ordinal != ordinal => v.problem(format!(
                    "session_order {ordinal} names session {id}, whose record says ordinal {}",
                    rec.ordinal
                )),
                Some(_) => {
                    ordered.insert(id);
                }
            }
        }
        for id in sessions.keys().filter(|id| !ordered.contains(id)) {
            v.problem(format!("session {id} is missing from session_order"));
        }
        for (id, rec) in &sessions {
            if let Some(key) = &rec.key
                && self.read.session_by_key(key)? != Some(*id)
            {
                v.problem(format!("session_keys: key {key:?} of session {id} does not name it"));
            }
        }
        for entry in self.tree(TreeId::SessionKeys).iter() {
            let (k, id) = entry?;
            let Some(id) = keys::decode_session_key(&id) else {
                v.problem(format!("session_keys: undecodable entry {k:?}"));
                continue;
            };
            if sessions.get(&id).and_then(|rec| rec.key.as_deref()).map(str::as_bytes) != Some(&k[..]) {
                v.problem(format!(
                    "session_keys: {:?} names session {id}, whose key it is not",
                    String::from_utf8_lossy(&k)
                ));
            }
        }
        Ok(sessions)
    }

    /// Checks each checkpoint record against its session, state and indexes.
    fn verify_checkpoints(&self, v: &mut Verification, sessions: &HashMap<SessionId, SessionRecord>) -> Result<Found> {
        let mut found = Found::default();
        for entry in self.tree(TreeId::Checkpoints).iter() {
            let (k, bytes) = entry?;
            let Some((session, seq)) = keys::decode_checkpoint_key(&k) else {
                v.problem(format!("checkpoints: undecodable key {k:?}"));
                continue;
            };
            v.checkpoints += 1;
            let per = found.per_session.entry(session).or_default();
            per.0 += 1;
            per.1 = per.1.max(Some(seq));
            found.max_seq = found.max_seq.max(seq);
            let rec = match decode_checkpoint(&bytes) {
                Ok(rec) => rec,
                Err(e) => {
                    v.problem(format!("checkpoint at session {session} sequence {seq}: {e}"));
                    continue;
                }
            };
            let id = rec.id;
            if rec.session_id != session || rec.sequence_number != seq {
                v.problem(format!(
                    "checkpoint {id}: stored at session {session} sequence {seq} but its record says session {} sequence {}",
                    rec.session_id, rec.sequence_number
                ));
            }
            if !sessions.contains_key(&session) {
                v.problem(format!("checkpoint {id} belongs to session {session}, which does not exist"));
            }
            let state = self.tree(TreeId::States).get(&k).map_err(StorageError::from).and_then(|s| match s {
                Some(s) => self.read.resolve(&s, &format!("checkpoint {id}: stored state")).map(Some),
                None => Ok(None),
            });
            match state {
                Err(e) => v.problem(format!("checkpoint {id}: stored state unreadable: {e}")),
                Ok(None) => v.problem(format!("checkpoint {id}: no stored state")),
                Ok(Some(s)) if crc32fast::hash(&s) != rec.state_crc => {
                    v.problem(format!("checkpoint {id}: stored state failed its checksum"))
                }
                Ok(Some(s)) => {
                    if serde_json::from_slice::<serde::de::IgnoredAny>(&s).is_err() {
                        v.problem(format!("checkpoint {id}: stored state is not JSON"));
                    }
                }
            }
            if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&rec.metadata).is_err() {
                v.problem(format!("checkpoint {id}: metadata is not a JSON object"));
            }
            match self.tree(TreeId::CheckpointIds).get(keys::checkpoint_id_key(id))? {
                Some(at) if at[..] == k[..] => {}
                Some(_) => v.problem(format!("checkpoint_ids: {id} points at another record")),
                None => v.problem(format!("checkpoint_ids: {id} is missing")),
            }
            match self.tree(TreeId::Sequences).get(keys::sequence_key(seq))? {
                Some(owner) if owner[..] == keys::sequence_value(session, id)[..] => {}
                Some(_) => v.problem(format!("sequences: {seq} names another checkpoint than {id}")),
                None => v.problem(format!("sequences: {seq} (checkpoint {id}) is missing")),
            }
            for tag in &rec.tags {
                if tag.is_empty() || tag.len() > crate::config::MAX_TAG_BYTES {
                    v.problem(format!("checkpoint {id}: tag {tag:?} is empty or too long"));
                } else if !self.tree(TreeId::Tags).contains_key(keys::tag_key(session, tag, seq))? {
                    v.problem(format!("tags: {tag:?} of checkpoint {id} is missing"));
                }
            }
            if !self.tree(TreeId::Namespaces).contains_key(keys::namespace_key(session, &rec.namespace, seq))? {
                v.problem(format!("namespaces: checkpoint {id} (namespace {:?}) is missing", rec.namespace));
            }
            if let Some(external) = &rec.external_id {
                match self.read.checkpoint_by_external_id(session, &rec.namespace, external) {
                    Ok(Some(at)) if at.id == id => {}
                    _ => v.problem(format!("external_ids: {external:?} of checkpoint {id} does not name it")),
                }
            }
            if let Some(parent) = rec.parent_id {
                found.parents.push((id, parent, session));
            }
            if found.ids.insert(id, (session, seq)).is_some() {
                v.problem(format!("checkpoint id {id} is stored twice"));
            }
        }
        // A parent may have been deleted since; one in another session is wrong.
        for (child, parent, session) in &found.parents {
            if let Some((owner, _)) = found.ids.get(parent).filter(|(owner, _)| owner != session) {
                v.problem(format!("checkpoint {child}: parent {parent} belongs to another session ({owner})"));
            }
        }
        for (id, rec) in sessions {
            let (count, last) = found.per_session.get(id).copied().unwrap_or_default();
            if rec.checkpoint_count != count {
                v.problem(format!("session {id}: record says {} checkpoints, {count} stored", rec.checkpoint_count));
            }
            if rec.last_sequence != last {
                v.problem(format!(
                    "session {id}: record says last sequence {:?}, newest stored is {last:?}",
                    rec.last_sequence
                ));
            }
        }
        Ok(found)
    }

    /// Checks every index entry against the record it points at.
    fn verify_indexes(&self, v: &mut Verification, found: &Found) -> Result<()> {
        let checkpoints = self.tree(TreeId::Checkpoints);
        for k in self.tree(TreeId::States).iter().keys() {
            let k = k?;
            if !checkpoints.contains_key(&k)? {
                let at = keys::decode_checkpoint_key(&k);
                v.problem(format!("states: a state without its checkpoint (session, sequence) {at:?}"));
            }
        }
        for entry in self.tree(TreeId::CheckpointIds).iter() {
            let (k, at) = entry?;
            let (Some(id), Some(at)) = (keys::decode_checkpoint_id_key(&k), keys::decode_checkpoint_key(&at)) else {
                v.problem(format!("checkpoint_ids: undecodable entry {k:?}"));
                continue;
            };
            if found.ids.get(&id) != Some(&at) {
                v.problem(format!(
                    "checkpoint_ids: {id} points at session {} sequence {}, which is not it",
                    at.0, at.1
                ));
            }
        }
        for entry in self.tree(TreeId::Sequences).iter() {
            let (k, owner) = entry?;
            let (Some(seq), Some((session, id))) = (keys::decode_sequence_key(&k), keys::decode_sequence_value(&owner))
            else {
                v.problem(format!("sequences: undecodable entry {k:?}"));
                continue;
            };
            if found.ids.get(&id) != Some(&(session, seq)) {
                v.problem(format!("sequences: {seq} names checkpoint {id}, which is not stored there"));
            }
        }
        for k in self.tree(TreeId::Namespaces).iter().keys() {
            let k = k?;
            let Some((session, namespace, seq)) = keys::decode_namespace_key(&k) else {
                v.problem(format!("namespaces: undecodable key {k:?}"));
                continue;
            };
            let named = match checkpoints.get(keys::checkpoint_key(session, seq))? {
                Some(bytes) => decode_checkpoint(&bytes).map(|r| r.namespace == namespace).unwrap_or(true),
                None => false,
            };
            if !named {
                v.problem(format!(
                    "namespaces: {namespace:?} at session {session} sequence {seq} has no such checkpoint"
                ));
            }
        }
        for entry in self.tree(TreeId::ExternalIds).iter() {
            let (k, at) = entry?;
            let (Some((session, namespace, external)), Some(seq)) =
                (keys::decode_external_id_key(&k), keys::decode_external_id_value(&at))
            else {
                v.problem(format!("external_ids: undecodable entry {k:?}"));
                continue;
            };
            let named = match checkpoints.get(keys::checkpoint_key(session, seq))? {
                Some(bytes) => decode_checkpoint(&bytes)
                    .map(|r| r.namespace == namespace && r.external_id.as_deref() == Some(external.as_str()))
                    .unwrap_or(true),
                None => false,
            };
            if !named {
                v.problem(format!(
                    "external_ids: {external:?} in namespace {namespace:?} of session {session} names sequence {seq}, which is not it"
                ));
            }
        }
        for k in self.tree(TreeId::Tags).iter().keys() {
            let k = k?;
            let Some((session, tag, seq)) = keys::decode_tag_key(&k) else {
                v.problem(format!("tags: undecodable key {k:?}"));
                continue;
            };
            v.tags += 1;
            let tagged = match checkpoints.get(keys::checkpoint_key(session, seq))? {
                Some(bytes) => decode_checkpoint(&bytes).map(|r| r.tags.contains(&tag)).unwrap_or(true),
                None => false,
            };
            if !tagged {
                v.problem(format!("tags: {tag:?} at session {session} sequence {seq} has no checkpoint with that tag"));
            }
        }
        for entry in self.tree(TreeId::Annotations).iter() {
            let (k, bytes) = entry?;
            let Some((id, index)) = keys::decode_annotation_key(&k) else {
                v.problem(format!("annotations: undecodable key {k:?}"));
                continue;
            };
            v.annotations += 1;
            if !found.ids.contains_key(&id) {
                v.problem(format!("annotations: annotation {index} of checkpoint {id}, which does not exist"));
            }
            if let Err(e) = codec::decode::<AnnotationRecord>(&bytes, "annotation") {
                v.problem(format!("annotation {index} of checkpoint {id}: {e}"));
            }
        }
        Ok(())
    }

    /// Checks every pending write: its key decodes, its record decodes and
    /// holds JSON, and its session exists. Its checkpoint need not be
    /// stored: writes may come before their checkpoint, or stay after it was
    /// never stored (until their session is deleted).
    fn verify_writes(&self, v: &mut Verification, sessions: &HashMap<SessionId, SessionRecord>) -> Result<()> {
        for entry in self.tree(TreeId::Writes).iter() {
            let (k, bytes) = entry?;
            v.writes += 1;
            let Some(key) = keys::decode_write_key(&k) else {
                v.problem(format!("writes: undecodable key {k:?}"));
                continue;
            };
            let what = format!(
                "pending write {} of task {:?} for {:?} in namespace {:?} of session {}",
                key.idx, key.task_id, key.external_id, key.namespace, key.session
            );
            match codec::decode::<WriteRecord>(&bytes, "pending write") {
                Ok(rec) => {
                    if let Err(e) = self.read.resolve(&rec.value, "value").and_then(|value| raw_json(value, "value")) {
                        v.problem(format!("{what}: {e}"));
                    }
                }
                Err(e) => v.problem(format!("{what}: {e}")),
            }
            if !sessions.contains_key(&key.session) {
                v.problem(format!("{what}: the session does not exist"));
            }
        }
        Ok(())
    }

    /// Checks every journal event; returns the newest event sequence.
    fn verify_events(&self, v: &mut Verification) -> Result<u64> {
        let mut last = 0;
        for entry in self.tree(TreeId::Events).iter() {
            let (k, bytes) = entry?;
            v.events += 1;
            match decode_event(&k, &bytes) {
                Ok(e) => last = e.seq,
                Err(e) => v.problem(format!("event {:?}: {e}", keys::decode_event_key(&k))),
            }
        }
        Ok(last)
    }

    fn verify_counters(
        &self,
        v: &mut Verification,
        sessions: &HashMap<SessionId, SessionRecord>,
        found: &Found,
        last_event: u64,
    ) -> Result<()> {
        let Ok(Some(c)) = self.read.counters() else { return Ok(()) };
        if c.checkpoints != v.checkpoints {
            v.problem(format!("counters: {} checkpoints counted, {} stored", c.checkpoints, v.checkpoints));
        }
        if c.active_sessions != sessions.len() as u64 {
            v.problem(format!("counters: {} active sessions counted, {} stored", c.active_sessions, sessions.len()));
        }
        let max_ordinal = sessions.values().map(|s| s.ordinal).max().unwrap_or(0);
        if c.sessions_created < max_ordinal || c.sessions_created < c.active_sessions {
            v.problem(format!(
                "counters: {} sessions created, but a session has ordinal {max_ordinal}",
                c.sessions_created
            ));
        }
        if c.global_seq < found.max_seq {
            v.problem(format!("counters: global sequence {} is below stored sequence {}", c.global_seq, found.max_seq));
        }
        if c.event_seq < last_event {
            v.problem(format!("counters: event sequence {} is below journal event {last_event}", c.event_seq));
        }
        Ok(())
    }
}

/// What the checkpoint scan found, for the index checks.
#[derive(Default)]
struct Found {
    ids: HashMap<CheckpointId, (SessionId, u64)>,
    /// Per session: how many checkpoints, newest sequence.
    per_session: HashMap<SessionId, (u64, Option<u64>)>,
    parents: Vec<(CheckpointId, CheckpointId, SessionId)>,
    max_seq: u64,
}

/// Checks the checksum of every checkpoint (of one session, or all), as a
/// running store offers it: a checkpoint deleted during the scan is not
/// damage.
pub fn validate(read: &Reader, session: Option<SessionId>) -> Result<Validation> {
    let checkpoints = read.tree(TreeId::Checkpoints);
    let iter = match session {
        Some(s) => {
            read.session(s)?;
            checkpoints.range(keys::session_checkpoints(s, 0..=u64::MAX))
        }
        None => checkpoints.iter(),
    };
    let mut v = Validation::default();
    for entry in iter {
        let (k, bytes) = entry?;
        let ok = match decode_checkpoint(&bytes) {
            Ok(rec) => match read.tree(TreeId::States).get(&k)? {
                // Deleted since the scan read its record (a delete
                // removes the record, then the state): not damage.
                None if checkpoints.get(&k)?.is_none() => continue,
                state => read.check_state(&rec, state).is_ok(),
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
            let owner = read.tree(TreeId::Sequences).get(keys::sequence_key(seq))?;
            if let Some((_, id)) = owner.as_deref().and_then(keys::decode_sequence_value) {
                v.invalid_ids.push(id);
            }
        }
    }
    Ok(v)
}

/// Where a pointer points, for a report.
fn describe(p: &segments::Pointer) -> String {
    format!("bytes {}..{} of segment {}", p.offset, p.end(), segments::file_name(p.segment))
}
