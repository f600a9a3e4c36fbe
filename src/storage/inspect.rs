//! Read-only access to a data directory, for `checkpoint-dump`.
//!
//! sled 0.34 has no read-only open: opening a directory takes its lock,
//! creates missing files, and recovery writes a fresh snapshot file. So the
//! inspector never opens the directory it is given. It copies it into a
//! private temporary directory and opens the copy, which it may change
//! freely; the original is only read.
//!
//! - By default it first takes the directory's lock (the `flock` on `db` that
//!   sled takes), so no server writes while it copies; when a server holds
//!   it, opening fails with one line that suggests `--snapshot`.
//! - With `snapshot` the copy is taken while a server may run on the
//!   directory: the server pauses its writes and syncs them while the files
//!   are copied (see [`crate::snapshot`]), so the copy holds every write
//!   acknowledged before the snapshot began and is a consistent image. With
//!   no server running it is taken under the lock, as above.

use super::datadir::{self, Access};
use super::keys::{self, TREE_COUNT, TreeId};
use super::records::{AnnotationRecord, CheckpointRecord, Counters, SessionRecord, raw_json};
use super::{codec, dircopy, migrate};
use crate::error::{Error, Result};
use crate::model::{Checkpoint, CheckpointId, JournalEvent, SessionId};
use serde_json::value::RawValue;
use sled::Tree;
use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};

/// Most problems `verify` describes one by one (it counts all of them).
pub const MAX_REPORTED_PROBLEMS: usize = 1_000;

/// sled page cache for the copy: inspection scans, it does not need more.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// A private, readable copy of a data directory.
pub struct Inspector {
    // Field order is drop order: sled closes before its files are removed.
    trees: Vec<Tree>,
    _db: sled::Db,
    /// The private copy, when the inspector made one.
    copy: Option<tempfile::TempDir>,
    source: PathBuf,
    source_bytes: u64,
}

/// `checkpoint-dump summary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub data_dir: PathBuf,
    pub format_version: Option<u32>,
    pub sessions: u64,
    pub checkpoints: u64,
    pub annotations: u64,
    /// Journal events retained.
    pub events: u64,
    pub oldest_event: Option<u64>,
    pub newest_event: Option<u64>,
    /// As persisted; `None` for a directory never written to.
    pub counters: Option<Counters>,
    pub bytes_on_disk: u64,
}

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
    pub events: u64,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.total_problems == 0
    }

    fn problem(&mut self, what: String) {
        self.total_problems += 1;
        if self.problems.len() < MAX_REPORTED_PROBLEMS {
            self.problems.push(what);
        }
    }
}

/// Opens a copy of a data directory (`source` names the original in
/// errors) and completes a change a crash or the copy cut short, as the
/// server would when it opens the directory; a damaged copy is refused
/// (`datadir`).
fn open_sled(path: &Path, source: &Path) -> Result<(sled::Db, Vec<Tree>)> {
    let (opened, ()) = datadir::open(path, source, Access::Inspect, CACHE_BYTES, |_, _| Ok(()))?;
    let datadir::Opened { db, trees } = opened;
    debug_assert_eq!(trees.len(), TREE_COUNT);
    Ok((db, trees))
}

impl Inspector {
    /// Copies `dir` to a temporary directory and opens the copy. Without
    /// `snapshot`, holds the directory's lock while copying (and fails when
    /// a server holds it); with it, a running server pauses its writes while
    /// the copy is taken ([`crate::snapshot`]). Refuses a path that is not a
    /// sled directory, so nothing is ever created.
    pub fn open(dir: &Path, snapshot: bool) -> Result<Inspector> {
        let copy = tempfile::Builder::new().prefix("checkpoint-dump-").tempdir()?;
        let source_bytes = if snapshot {
            crate::snapshot::copy_consistent(dir, copy.path())?.bytes
        } else {
            crate::snapshot::copy_locked(dir, copy.path())?
        };
        let (db, trees) = open_sled(copy.path(), dir)?;
        Ok(Inspector { trees, _db: db, copy: Some(copy), source: dir.to_path_buf(), source_bytes })
    }

    /// Opens a directory that is this process's own copy (a backup being
    /// made) in place: sled recovers it and the last change is completed,
    /// exactly as when a server opens it.
    pub fn open_own_copy(dir: &Path) -> Result<Inspector> {
        let source_bytes = dircopy::dir_size(dir)?;
        let (db, trees) = open_sled(dir, dir)?;
        Ok(Inspector { trees, _db: db, copy: None, source: dir.to_path_buf(), source_bytes })
    }

    fn tree(&self, id: TreeId) -> &Tree {
        &self.trees[id as usize]
    }

    /// Where the private copy lives (removed when the inspector is dropped).
    pub fn copy_path(&self) -> &Path {
        self.copy.as_ref().map_or(&self.source, |c| c.path())
    }

    pub fn format_version(&self) -> Result<Option<u32>> {
        migrate::read_version(self.tree(TreeId::Meta))
    }

    pub fn counters(&self) -> Result<Option<Counters>> {
        match self.tree(TreeId::Meta).get(keys::META_COUNTERS)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes, "counters")?)),
            None => Ok(None),
        }
    }

    pub fn summary(&self) -> Result<Summary> {
        let events = self.tree(TreeId::Events);
        let first = |e: Option<(sled::IVec, sled::IVec)>| e.and_then(|(k, _)| keys::decode_u64(&k));
        Ok(Summary {
            data_dir: self.source.clone(),
            format_version: self.format_version()?,
            sessions: self.tree(TreeId::Sessions).len() as u64,
            checkpoints: self.tree(TreeId::Checkpoints).len() as u64,
            annotations: self.tree(TreeId::Annotations).len() as u64,
            events: events.len() as u64,
            oldest_event: first(events.first()?),
            newest_event: first(events.last()?),
            counters: self.counters()?,
            bytes_on_disk: self.source_bytes,
        })
    }

    /// Sessions in creation order.
    pub fn sessions(&self) -> impl Iterator<Item = Result<SessionRecord>> + '_ {
        self.tree(TreeId::SessionOrder).iter().filter_map(move |entry| {
            let lookup = || -> Result<Option<SessionRecord>> {
                let (_, id) = entry?;
                let id = uuid::Uuid::from_slice(&id).map_err(|_| Error::Internal("bad session_order entry".into()))?;
                // A dangling entry is `verify`'s business; listing skips it.
                self.tree(TreeId::Sessions)
                    .get(id.as_bytes())?
                    .map(|bytes| codec::decode::<SessionRecord>(&bytes, "session"))
                    .transpose()
            };
            lookup().transpose()
        })
    }

    pub fn session(&self, id: SessionId) -> Result<SessionRecord> {
        match self.tree(TreeId::Sessions).get(keys::session_key(id))? {
            Some(bytes) => codec::decode(&bytes, "session"),
            None => Err(Error::NotFound(format!("session {id} not found"))),
        }
    }

    /// A session's checkpoints in sequence order.
    pub fn checkpoints(&self, session: SessionId) -> impl Iterator<Item = Result<CheckpointRecord>> + '_ {
        self.tree(TreeId::Checkpoints)
            .range(keys::session_checkpoints(session, 0..=u64::MAX))
            .map(|entry| super::decode_checkpoint(&entry?.1))
    }

    /// A checkpoint's state, checked against the CRC its record carries.
    pub fn state(&self, rec: &CheckpointRecord) -> Result<Box<RawValue>> {
        let key = keys::checkpoint_key(rec.session_id, rec.sequence_number);
        let state = self
            .tree(TreeId::States)
            .get(key)?
            .ok_or_else(|| Error::Internal(format!("checkpoint {}: no stored state", rec.id)))?;
        if crc32fast::hash(&state) != rec.state_crc {
            return Err(Error::Internal(format!("checkpoint {}: stored state failed its checksum", rec.id)));
        }
        raw_json(state.to_vec(), "state")
    }

    pub fn has_notes(&self, id: CheckpointId) -> Result<bool> {
        Ok(self.tree(TreeId::Annotations).scan_prefix(id.as_bytes()).next().transpose()?.is_some())
    }

    /// A checkpoint's annotations with their indexes, in order.
    pub fn annotations(&self, id: CheckpointId) -> Result<Vec<(u32, AnnotationRecord)>> {
        self.tree(TreeId::Annotations)
            .scan_prefix(id.as_bytes())
            .map(|entry| {
                let (k, v) = entry?;
                let index = keys::annotation_index(&k).ok_or_else(|| Error::Internal("bad annotation key".into()))?;
                Ok((index, codec::decode::<AnnotationRecord>(&v, "annotation")?))
            })
            .collect()
    }

    /// The stored record of one checkpoint and the checksum it carries.
    pub fn checkpoint_record(&self, id: CheckpointId) -> Result<(CheckpointRecord, u32)> {
        let not_found = || Error::NotFound(format!("checkpoint {id} not found"));
        let at = self.tree(TreeId::CheckpointIds).get(keys::checkpoint_id_key(id))?.ok_or_else(not_found)?;
        let bytes = self.tree(TreeId::Checkpoints).get(&at)?.ok_or_else(not_found)?;
        Ok((super::decode_checkpoint(&bytes)?, codec::stored_checksum(&bytes).unwrap_or_default()))
    }

    /// The full checkpoint: state, metadata and annotations.
    pub fn checkpoint(&self, id: CheckpointId) -> Result<Checkpoint> {
        let (rec, checksum) = self.checkpoint_record(id)?;
        let state = self.state(&rec)?;
        let annotations: Vec<_> = self.annotations(id)?.into_iter().map(|(_, a)| a.to_model()).collect();
        Ok(Checkpoint {
            summary: rec.summary(!annotations.is_empty()),
            state,
            metadata: raw_json(rec.metadata, "checkpoint metadata")?,
            annotations,
            checksum,
        })
    }

    /// Journal events with seq > `since`.
    pub fn events(&self, since: u64) -> impl Iterator<Item = Result<JournalEvent>> + '_ {
        let after = (Bound::Excluded(keys::u64_key(since)), Bound::Unbounded);
        self.tree(TreeId::Events).range(after).map(|entry| {
            let (k, v) = entry?;
            super::decode_event(&k, &v)
        })
    }

    /// Checks every checksum, every index entry against its record, every
    /// record against the indexes, and the counters against the data.
    pub fn verify(&self) -> Result<Verification> {
        let mut v = Verification::default();
        self.verify_meta(&mut v)?;
        let sessions = self.verify_sessions(&mut v)?;
        let found = self.verify_checkpoints(&mut v, &sessions)?;
        self.verify_indexes(&mut v, &found)?;
        let last_event = self.verify_events(&mut v)?;
        self.verify_counters(&mut v, &sessions, &found, last_event)?;
        Ok(v)
    }

    fn verify_meta(&self, v: &mut Verification) -> Result<()> {
        let has_data = self.trees[1..].iter().any(|t| !t.is_empty());
        match self.format_version() {
            Ok(None) if has_data => v.problem("the directory holds data but no format version".into()),
            Ok(None) => {}
            Ok(Some(f)) if f > migrate::CURRENT_FORMAT => v.problem(format!(
                "format version {f} is newer than version {} that this tool reads",
                migrate::CURRENT_FORMAT
            )),
            Ok(Some(f)) if f < migrate::CURRENT_FORMAT => v.problem(format!(
                "format version {f} is older than version {}: start checkpointd on it to migrate it, then verify",
                migrate::CURRENT_FORMAT
            )),
            Ok(Some(_)) => {}
            Err(e) => v.problem(format!("meta: {e}")),
        }
        match self.counters() {
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
            let key = uuid::Uuid::from_slice(&k).map(|u| u.to_string()).unwrap_or_else(|_| format!("{k:?}"));
            match codec::decode::<SessionRecord>(&bytes, "session record") {
                Ok(rec) if rec.id.as_bytes()[..] != k[..] => {
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
            let (Some(ordinal), Ok(id)) = (keys::decode_u64(&k), uuid::Uuid::from_slice(&id)) else {
                v.problem(format!("session_order: undecodable entry {k:?}"));
                continue;
            };
            let id = SessionId(id);
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
            let rec = match super::decode_checkpoint(&bytes) {
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
            match self.tree(TreeId::States).get(&k).map_err(Error::from) {
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
            match self.tree(TreeId::Sequences).get(keys::u64_key(seq))? {
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
            let (Ok(id), Some(at)) = (uuid::Uuid::from_slice(&k), keys::decode_checkpoint_key(&at)) else {
                v.problem(format!("checkpoint_ids: undecodable entry {k:?}"));
                continue;
            };
            let id = CheckpointId(id);
            if found.ids.get(&id) != Some(&at) {
                v.problem(format!(
                    "checkpoint_ids: {id} points at session {} sequence {}, which is not it",
                    at.0, at.1
                ));
            }
        }
        for entry in self.tree(TreeId::Sequences).iter() {
            let (k, owner) = entry?;
            let (Some(seq), Some((session, id))) = (keys::decode_u64(&k), keys::decode_sequence_value(&owner)) else {
                v.problem(format!("sequences: undecodable entry {k:?}"));
                continue;
            };
            if found.ids.get(&id) != Some(&(session, seq)) {
                v.problem(format!("sequences: {seq} names checkpoint {id}, which is not stored there"));
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
                Some(bytes) => super::decode_checkpoint(&bytes).map(|r| r.tags.contains(&tag)).unwrap_or(true),
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

    /// Checks every journal event; returns the newest event sequence.
    fn verify_events(&self, v: &mut Verification) -> Result<u64> {
        let mut last = 0;
        for entry in self.tree(TreeId::Events).iter() {
            let (k, bytes) = entry?;
            v.events += 1;
            match super::decode_event(&k, &bytes) {
                Ok(e) => last = e.seq,
                Err(e) => v.problem(format!("event {:?}: {e}", keys::decode_u64(&k))),
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
        let Ok(Some(c)) = self.counters() else { return Ok(()) };
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
