//! Stored shapes of the records. They mirror `model` but hold JSON as bytes
//! (bincode cannot carry `serde_json` values) and times as nanoseconds since
//! the epoch (format 3; microseconds before).

use super::error::{Result, StorageError};
use crate::model::{
    Annotation, CheckpointId, CheckpointSummary, EventKind, JournalEvent, RetentionPolicy, Session, SessionId,
    Severity, Trigger,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A time as stored: nanoseconds since the epoch. `None` past the years
/// 1677–2262 that `i64` nanoseconds reach.
pub fn nanos(t: DateTime<Utc>) -> Option<i64> {
    t.timestamp_nanos_opt()
}

/// A time to store, refused when out of range (an imported record).
pub fn stored_time(t: DateTime<Utc>, what: &str) -> Result<i64> {
    nanos(t)
        .ok_or_else(|| StorageError::Refused(format!("{what}: time {t} is outside 1677-2262, which cannot be stored")))
}

pub fn from_nanos(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

pub fn raw_json(bytes: Vec<u8>, what: &str) -> Result<Box<RawValue>> {
    let text =
        String::from_utf8(bytes).map_err(|_| StorageError::corrupt(format!("{what}: stored JSON is not UTF-8")))?;
    RawValue::from_string(text).map_err(|e| StorageError::corrupt(format!("{what}: stored JSON is invalid: {e}")))
}

/// Persisted totals. Rewritten in every write transaction, so opening a data
/// directory reads one key instead of scanning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Last global checkpoint sequence handed out (never reused).
    pub global_seq: u64,
    /// Last journal event sequence handed out (never reused).
    pub event_seq: u64,
    pub sessions_created: u64,
    pub active_sessions: u64,
    pub checkpoints: u64,
}

impl Counters {
    /// Sequence numbers one write may hand out at most (a checkpoint, and
    /// its compaction's event); the write refuses when fewer are left.
    pub const WRITE_HEADROOM: u64 = 16;

    /// Whether a counter is too close to the end of `u64` for one more
    /// write (a directory damaged or imported with absurd sequences):
    /// refusing is better than wrapping around to reuse numbers.
    pub fn exhausted(&self) -> bool {
        [self.global_seq, self.event_seq, self.sessions_created].iter().any(|&n| n > u64::MAX - Self::WRITE_HEADROOM)
    }

    pub fn sequences(&self) -> crate::model::Sequences {
        crate::model::Sequences {
            checkpoint: self.global_seq,
            event: self.event_seq,
            sessions_created: self.sessions_created,
        }
    }
}

/// What was on disk when checkpointd last wrote its mark file
/// (`datadir::MARK_FILE`): at open, at close, and at most once a
/// `MARK_INTERVAL` after a group commit in between.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub counters: Counters,
    /// The newest blob file (by the lsn that names it) synced whole by then:
    /// a blob at or below it that fails its checksum is damage, not a write
    /// a crash cut short.
    pub blob_lsn: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    /// Position in creation order (`session_order` key).
    pub ordinal: u64,
    pub name: String,
    pub created_at: i64,
    pub metadata: Vec<u8>,
    pub retention: Option<RetentionPolicy>,
    pub checkpoint_count: u64,
    pub last_sequence: Option<u64>,
    /// Since format 2.
    pub key: Option<String>,
}

impl SessionRecord {
    pub fn to_model(&self) -> Result<Session> {
        Ok(Session {
            id: self.id,
            key: self.key.clone(),
            name: self.name.clone(),
            created_at: from_nanos(self.created_at),
            metadata: raw_json(self.metadata.clone(), "session metadata")?,
            retention: self.retention.clone(),
            checkpoint_count: self.checkpoint_count,
            last_sequence: self.last_sequence,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub id: CheckpointId,
    pub session_id: SessionId,
    pub sequence_number: u64,
    pub timestamp: i64,
    pub message: String,
    pub tags: Vec<String>,
    pub trigger: Trigger,
    pub metadata: Vec<u8>,
    pub parent_id: Option<CheckpointId>,
    /// CRC-32 of the state bytes in the `states` tree, so a flipped byte
    /// there is caught too.
    pub state_crc: u32,
    /// Since format 2.
    pub namespace: String,
    /// Since format 2.
    pub external_id: Option<String>,
    /// The parent's external id, when it has one. Since format 2.
    pub parent_external_id: Option<String>,
}

impl CheckpointRecord {
    pub fn summary(&self, has_notes: bool) -> CheckpointSummary {
        CheckpointSummary {
            id: self.id,
            session_id: self.session_id,
            namespace: self.namespace.clone(),
            external_id: self.external_id.clone(),
            sequence_number: self.sequence_number,
            timestamp: from_nanos(self.timestamp),
            message: self.message.clone(),
            tags: self.tags.clone(),
            trigger: self.trigger.clone(),
            parent_id: self.parent_id,
            parent_external_id: self.parent_external_id.clone(),
            has_notes,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnnotationRecord {
    pub note: String,
    pub severity: Severity,
    pub timestamp: i64,
}

impl AnnotationRecord {
    pub fn to_model(&self) -> Annotation {
        Annotation { note: self.note.clone(), severity: self.severity, timestamp: from_nanos(self.timestamp) }
    }
}

/// One pending write (`writes` tree); its key holds the session,
/// namespace, checkpoint external id, task id and idx. Since format 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteRecord {
    pub task_path: String,
    pub channel: String,
    /// The client's JSON, exactly as sent.
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRecord {
    pub session_id: SessionId,
    pub timestamp: i64,
    pub kind: EventKind,
}

impl EventRecord {
    pub fn to_model(&self, seq: u64) -> JournalEvent {
        JournalEvent {
            seq,
            session_id: self.session_id,
            timestamp: from_nanos(self.timestamp),
            kind: self.kind.clone(),
        }
    }
}
