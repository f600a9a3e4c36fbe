//! The whole key schema. Every integer in a key is big-endian so that sled's
//! byte order is numeric order: a session's checkpoints scan in sequence order
//! and the journal scans in event order, without sorting.
//!
//! | tree            | key                                      | value                          |
//! |-----------------|------------------------------------------|--------------------------------|
//! | `meta`          | `format_version`, `counters`, `intent`   | u32 BE / [`Counters`] / last change |
//! | `sessions`      | session id (16)                          | session record                 |
//! | `session_order` | creation ordinal (8)                     | session id (16)                |
//! | `checkpoints`   | session id (16) · sequence (8)           | checkpoint record (no state)   |
//! | `states`        | session id (16) · sequence (8)           | state, as the client's JSON    |
//! | `checkpoint_ids`| checkpoint id (16)                       | session id (16) · sequence (8) |
//! | `sequences`     | sequence (8)                             | session id (16) · checkpoint id (16) |
//! | `tags`          | session id (16) · tag len (2) · tag · sequence (8) | empty                |
//! | `annotations`   | checkpoint id (16) · index (4)           | annotation record              |
//! | `events`        | event sequence (8)                       | journal event record           |
//! | `session_keys`  | client key                               | session id (16)                |
//! | `namespaces`    | session id (16) · namespace len (2) · namespace · sequence (8) | empty    |
//! | `external_ids`  | session id (16) · namespace len (2) · namespace · external id | sequence (8) |
//! | `writes`        | session id (16) · namespace len (2) · namespace · external id len (2) · external id · task id len (2) · task id · idx (4, sign bit flipped) | write record |
//! | `segment_pointers` | owner: tree number (1) · key (of `states` or `writes`) | segment pointer (22) |
//!
//! Format 2 added `session_keys`, `namespaces`, `external_ids` and `writes`
//! (format 1 directories are migrated: every checkpoint there is in
//! namespace `""`, without an external id). Format 4 added
//! `segment_pointers`: one entry per value that lives in a state segment (a
//! state, or a pending write whose value is a pointer), keyed by its owner
//! as `segments::owner` builds it, holding the same encoded
//! `segments::Pointer` as its tree. `change::Change` keeps it in step with
//! `states` and `writes` inside every change, so opening a directory counts
//! each segment's live bytes from this small tree alone.
//!
//! [`Counters`]: super::records::Counters

use crate::model::{CheckpointId, SessionId};
use std::ops::RangeInclusive;

/// The trees, in the order `Store` opens them and transactions address them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeId {
    Meta = 0,
    Sessions,
    SessionOrder,
    Checkpoints,
    States,
    CheckpointIds,
    Sequences,
    Tags,
    Annotations,
    Events,
    SessionKeys,
    Namespaces,
    ExternalIds,
    Writes,
    SegmentPointers,
}

pub const TREE_COUNT: usize = 15;

impl TreeId {
    /// Trees holding records that index entries point at.
    pub fn is_record(tree: u8) -> bool {
        [TreeId::Sessions, TreeId::Checkpoints, TreeId::States].iter().any(|&t| t as u8 == tree)
    }
}

pub const TREE_NAMES: [&str; TREE_COUNT] = [
    "meta",
    "sessions",
    "session_order",
    "checkpoints",
    "states",
    "checkpoint_ids",
    "sequences",
    "tags",
    "annotations",
    "events",
    "session_keys",
    "namespaces",
    "external_ids",
    "writes",
    "segment_pointers",
];

pub const META_FORMAT_VERSION: &[u8] = b"format_version";
pub const META_COUNTERS: &[u8] = b"counters";
/// Formats 1-3: the last write's changes, written before them (see
/// `change::replay_legacy`). Format 4 writes intents to the segments.
pub const META_INTENT: &[u8] = b"intent";
/// Format 4: where in the segments the intent after the newest change
/// whose keys are all applied starts ([`applied_mark`]); the last key of
/// every change.
pub const META_APPLIED: &[u8] = b"applied";

/// The value of [`META_APPLIED`]: segment id, then the offset after that
/// change's intent (big-endian).
pub fn applied_mark(segment: u32, next: u64) -> [u8; 12] {
    let mut out = [0; 12];
    out[..4].copy_from_slice(&segment.to_be_bytes());
    out[4..].copy_from_slice(&next.to_be_bytes());
    out
}

pub fn decode_applied_mark(value: &[u8]) -> Option<(u32, u64)> {
    let value: &[u8; 12] = value.try_into().ok()?;
    Some((
        u32::from_be_bytes(value[..4].try_into().expect("4 bytes")),
        u64::from_be_bytes(value[4..].try_into().expect("8 bytes")),
    ))
}

/// Every tree of one open database, addressed by [`TreeId`].
#[derive(Clone)]
pub struct Trees(Vec<sled::Tree>);

impl Trees {
    /// Opens (creating) every tree of the schema.
    pub fn open(db: &sled::Db) -> sled::Result<Trees> {
        TREE_NAMES.iter().map(|name| db.open_tree(name)).collect::<sled::Result<Vec<_>>>().map(Trees)
    }

    pub fn get(&self, id: TreeId) -> &sled::Tree {
        &self.0[id as usize]
    }

    /// By the number a change's op carries (see `change`); `None` for a
    /// number no tree has.
    pub fn by_number(&self, n: u8) -> Option<&sled::Tree> {
        self.0.get(usize::from(n))
    }

    /// Every tree but `meta`.
    pub fn data(&self) -> &[sled::Tree] {
        &self.0[1..]
    }
}

pub type CheckpointKey = [u8; 24];

fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// `events` key.
pub fn event_key(seq: u64) -> [u8; 8] {
    u64_key(seq)
}

pub fn decode_event_key(k: &[u8]) -> Option<u64> {
    decode_u64(k).filter(|_| k.len() == 8)
}

/// `sequences` key.
pub fn sequence_key(seq: u64) -> [u8; 8] {
    u64_key(seq)
}

pub fn decode_sequence_key(k: &[u8]) -> Option<u64> {
    decode_u64(k).filter(|_| k.len() == 8)
}

/// `session_order` key.
pub fn ordinal_key(ordinal: u64) -> [u8; 8] {
    u64_key(ordinal)
}

pub fn decode_ordinal_key(k: &[u8]) -> Option<u64> {
    decode_u64(k).filter(|_| k.len() == 8)
}

/// `sessions` key, also the `session_order` value.
pub fn session_key(id: SessionId) -> [u8; 16] {
    *id.as_bytes()
}

/// Reads a `sessions` key or a `session_order` value.
pub fn decode_session_key(k: &[u8]) -> Option<SessionId> {
    uuid::Uuid::from_slice(k).ok().map(SessionId)
}

pub fn checkpoint_key(session: SessionId, seq: u64) -> CheckpointKey {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(session.as_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Splits a `checkpoints` / `states` key (also a `checkpoint_ids` value).
pub fn decode_checkpoint_key(k: &[u8]) -> Option<(SessionId, u64)> {
    if k.len() != 24 {
        return None;
    }
    let session = uuid::Uuid::from_slice(&k[..16]).ok()?;
    Some((SessionId(session), decode_u64(&k[16..])?))
}

/// All checkpoint keys of one session with sequence in `seqs`.
pub fn session_checkpoints(session: SessionId, seqs: RangeInclusive<u64>) -> RangeInclusive<CheckpointKey> {
    checkpoint_key(session, *seqs.start())..=checkpoint_key(session, *seqs.end())
}

pub fn checkpoint_id_key(id: CheckpointId) -> [u8; 16] {
    *id.as_bytes()
}

pub fn decode_checkpoint_id_key(k: &[u8]) -> Option<CheckpointId> {
    uuid::Uuid::from_slice(k).ok().map(CheckpointId)
}

/// `sequences` value: the owner of a global sequence number.
pub fn sequence_value(session: SessionId, id: CheckpointId) -> [u8; 32] {
    let mut v = [0u8; 32];
    v[..16].copy_from_slice(session.as_bytes());
    v[16..].copy_from_slice(id.as_bytes());
    v
}

pub fn decode_sequence_value(v: &[u8]) -> Option<(SessionId, CheckpointId)> {
    if v.len() != 32 {
        return None;
    }
    let s = uuid::Uuid::from_slice(&v[..16]).ok()?;
    let c = uuid::Uuid::from_slice(&v[16..]).ok()?;
    Some((SessionId(s), CheckpointId(c)))
}

/// Session id · length (2) · text: the prefix of every `tags` key of one
/// (session, tag), and of `namespaces` and `external_ids` keys of one
/// (session, namespace).
fn session_text_prefix(session: SessionId, text: &str) -> Vec<u8> {
    let len = u16::try_from(text.len()).expect("tags and namespaces are shorter than 64 KiB");
    let mut k = Vec::with_capacity(16 + 2 + text.len() + 8);
    k.extend_from_slice(session.as_bytes());
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(text.as_bytes());
    k
}

/// Prefix of every `tags` key of one (session, tag).
pub fn tag_prefix(session: SessionId, tag: &str) -> Vec<u8> {
    session_text_prefix(session, tag)
}

/// `namespaces` key: a checkpoint's place in its (session, namespace).
pub fn namespace_key(session: SessionId, namespace: &str, seq: u64) -> Vec<u8> {
    let mut k = session_text_prefix(session, namespace);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence at the end of a `namespaces` key.
pub fn namespace_key_sequence(k: &[u8]) -> Option<u64> {
    tag_key_sequence(k)
}

/// Splits a `namespaces` key into session, namespace and sequence.
pub fn decode_namespace_key(k: &[u8]) -> Option<(SessionId, String, u64)> {
    decode_tag_key(k)
}

/// `external_ids` key: the client's id of a checkpoint in (session, namespace).
pub fn external_id_key(session: SessionId, namespace: &str, external_id: &str) -> Vec<u8> {
    let mut k = session_text_prefix(session, namespace);
    k.extend_from_slice(external_id.as_bytes());
    k
}

/// Splits an `external_ids` key into session, namespace and external id.
pub fn decode_external_id_key(k: &[u8]) -> Option<(SessionId, String, String)> {
    let session = uuid::Uuid::from_slice(k.get(..16)?).ok()?;
    let len = usize::from(u16::from_be_bytes(k.get(16..18)?.try_into().ok()?));
    let namespace = std::str::from_utf8(k.get(18..18 + len)?).ok()?.to_string();
    let external = std::str::from_utf8(&k[18 + len..]).ok()?.to_string();
    Some((SessionId(session), namespace, external))
}

/// `external_ids` value, also a `sequences` key.
pub fn external_id_value(seq: u64) -> [u8; 8] {
    u64_key(seq)
}

pub fn decode_external_id_value(v: &[u8]) -> Option<u64> {
    decode_u64(v).filter(|_| v.len() == 8)
}

/// `session_keys` key.
pub fn session_key_key(key: &str) -> &[u8] {
    key.as_bytes()
}

pub fn tag_key(session: SessionId, tag: &str, seq: u64) -> Vec<u8> {
    let mut k = tag_prefix(session, tag);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence at the end of a `tags` key.
pub fn tag_key_sequence(k: &[u8]) -> Option<u64> {
    decode_u64(k.get(k.len().checked_sub(8)?..)?)
}

/// Prefix of every `annotations` key of one checkpoint.
pub fn annotations_prefix(id: CheckpointId) -> [u8; 16] {
    *id.as_bytes()
}

pub fn annotation_key(id: CheckpointId, index: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(id.as_bytes());
    k[16..].copy_from_slice(&index.to_be_bytes());
    k
}

fn annotation_index(k: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(k.get(16..20)?.try_into().ok()?))
}

/// Splits a `tags` key into session, tag and sequence.
pub fn decode_tag_key(k: &[u8]) -> Option<(SessionId, String, u64)> {
    let session = uuid::Uuid::from_slice(k.get(..16)?).ok()?;
    let len = usize::from(u16::from_be_bytes(k.get(16..18)?.try_into().ok()?));
    if k.len() != 16 + 2 + len + 8 {
        return None;
    }
    let tag = std::str::from_utf8(&k[18..18 + len]).ok()?.to_string();
    Some((SessionId(session), tag, decode_u64(&k[18 + len..])?))
}

/// Splits an `annotations` key into checkpoint id and index.
pub fn decode_annotation_key(k: &[u8]) -> Option<(CheckpointId, u32)> {
    if k.len() != 20 {
        return None;
    }
    let id = uuid::Uuid::from_slice(&k[..16]).ok()?;
    Some((CheckpointId(id), annotation_index(k)?))
}

/// Prefix of every `writes` key of one checkpoint (session, namespace,
/// external id); the session id alone prefixes all of a session's.
pub fn writes_prefix(session: SessionId, namespace: &str, external_id: &str) -> Vec<u8> {
    let mut k = session_text_prefix(session, namespace);
    push_text(&mut k, external_id);
    k
}

/// `writes` key.
pub fn write_key(session: SessionId, namespace: &str, external_id: &str, task_id: &str, idx: i32) -> Vec<u8> {
    let mut k = writes_prefix(session, namespace, external_id);
    push_text(&mut k, task_id);
    // Sign bit flipped: byte order is numeric order, negatives first.
    k.extend_from_slice(&((idx as u32) ^ 0x8000_0000).to_be_bytes());
    k
}

fn push_text(k: &mut Vec<u8>, text: &str) {
    let len = u16::try_from(text.len()).expect("ids are shorter than 64 KiB");
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(text.as_bytes());
}

/// The parts of a `writes` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteKey {
    pub session: SessionId,
    pub namespace: String,
    pub external_id: String,
    pub task_id: String,
    pub idx: i32,
}

/// Splits a `writes` key.
pub fn decode_write_key(k: &[u8]) -> Option<WriteKey> {
    fn text<'a>(k: &'a [u8], at: &mut usize) -> Option<&'a str> {
        let len = usize::from(u16::from_be_bytes(k.get(*at..*at + 2)?.try_into().ok()?));
        let s = std::str::from_utf8(k.get(*at + 2..*at + 2 + len)?).ok()?;
        *at += 2 + len;
        Some(s)
    }
    let session = SessionId(uuid::Uuid::from_slice(k.get(..16)?).ok()?);
    let mut at = 16;
    let namespace = text(k, &mut at)?.to_string();
    let external_id = text(k, &mut at)?.to_string();
    let task_id = text(k, &mut at)?.to_string();
    if k.len() != at + 4 {
        return None;
    }
    let idx = (u32::from_be_bytes(k[at..].try_into().ok()?) ^ 0x8000_0000) as i32;
    Some(WriteKey { session, namespace, external_id, task_id, idx })
}
