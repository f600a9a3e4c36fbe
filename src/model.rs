//! The domain: sessions, checkpoints, annotations, retention policies and
//! journal events, as the service hands them out. Storage encodes these; the
//! protocol renders them; neither leaks into the other.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new() -> Self {
                $name(Uuid::new_v4())
            }
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($name)
            }
        }
    };
}

id_type!(
    /// A session: one program's line of checkpoints.
    SessionId
);
id_type!(
    /// One checkpoint.
    CheckpointId
);

/// Why a checkpoint was taken. On the wire: `manual`, `scheduled`, `auto`,
/// or `auto:<kind>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Trigger {
    #[default]
    Manual,
    Scheduled,
    Auto(Option<String>),
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Manual => f.write_str("manual"),
            Trigger::Scheduled => f.write_str("scheduled"),
            Trigger::Auto(None) => f.write_str("auto"),
            Trigger::Auto(Some(kind)) => write!(f, "auto:{kind}"),
        }
    }
}

impl FromStr for Trigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "manual" => Ok(Trigger::Manual),
            "scheduled" => Ok(Trigger::Scheduled),
            "auto" => Ok(Trigger::Auto(None)),
            _ => match s.strip_prefix("auto:") {
                Some(kind) if !kind.is_empty() && kind.len() <= crate::config::MAX_TAG_BYTES => {
                    Ok(Trigger::Auto(Some(kind.to_string())))
                }
                _ => Err(format!("trigger must be \"manual\", \"scheduled\", \"auto\" or \"auto:<kind>\", not {s:?}")),
            },
        }
    }
}

/// How important an annotation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Severity {
    #[default]
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "critical" => Ok(Severity::Critical),
            other => Err(format!("severity must be \"info\", \"warning\" or \"critical\", not {other:?}")),
        }
    }
}

/// Which checkpoints a compaction keeps: the `keep_recent` newest, plus every
/// checkpoint carrying one of `preserve_tags`. A policy with neither keeps
/// everything and is refused by `compact`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RetentionPolicy {
    pub keep_recent: Option<u64>,
    pub preserve_tags: Vec<String>,
}

impl RetentionPolicy {
    pub fn is_empty(&self) -> bool {
        self.keep_recent.is_none() && self.preserve_tags.is_empty()
    }

    /// Whether the checkpoint that is `rank`-th newest (0 = newest) survives.
    pub fn keeps(&self, rank: u64, tags: &[String]) -> bool {
        let recent = match self.keep_recent {
            Some(n) => rank < n,
            // Only tags protect when no count is given.
            None => false,
        };
        recent || tags.iter().any(|t| self.preserve_tags.contains(t))
    }
}

/// A session as stored.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: SessionId,
    /// The client's key for it, unique among sessions (see `open_session`).
    pub key: Option<String>,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// A JSON object, as JSON text.
    pub metadata: Box<RawValue>,
    pub retention: Option<RetentionPolicy>,
    pub checkpoint_count: u64,
    /// Sequence number of the newest stored checkpoint.
    pub last_sequence: Option<u64>,
}

/// One row of `list_checkpoints`: everything but state and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointSummary {
    pub id: CheckpointId,
    pub session_id: SessionId,
    /// `""` unless the client named one (a subgraph's checkpoints).
    pub namespace: String,
    /// The client's id for it, unique within (session, namespace).
    pub external_id: Option<String>,
    pub sequence_number: u64,
    pub timestamp: DateTime<Utc>,
    pub message: String,
    pub tags: Vec<String>,
    pub trigger: Trigger,
    pub parent_id: Option<CheckpointId>,
    /// The parent's external id, when it has one.
    pub parent_external_id: Option<String>,
    pub has_notes: bool,
}

/// A checkpoint with its state, metadata and annotations.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub summary: CheckpointSummary,
    /// The client's JSON, exactly as sent.
    pub state: Box<RawValue>,
    pub metadata: Box<RawValue>,
    pub annotations: Vec<Annotation>,
    /// CRC-32 (IEEE) over the stored record and state, as stored.
    pub checksum: u32,
    /// Its pending writes, ordered by (task path, task id, idx).
    pub writes: Vec<PendingWrite>,
}

/// A write a task made for a checkpoint (LangGraph's pending writes), kept
/// under (session, namespace, checkpoint external id, task id, idx).
#[derive(Debug, Clone)]
pub struct PendingWrite {
    pub task_id: String,
    pub task_path: String,
    /// The write's place in its task; negative for LangGraph's special
    /// channels, whose last stored write wins (others: the first).
    pub idx: i32,
    pub channel: String,
    /// The client's JSON, exactly as sent.
    pub value: Box<RawValue>,
}

/// A batch of pending writes of one task for one checkpoint.
#[derive(Debug, Clone)]
pub struct NewWrites {
    pub session_id: SessionId,
    pub namespace: String,
    /// The external id of the checkpoint they belong to (it need not be
    /// stored yet).
    pub external_id: String,
    pub task_id: String,
    pub task_path: String,
    /// (idx, channel, value), in the order sent.
    pub writes: Vec<(i32, String, Box<RawValue>)>,
}

/// An exact-match filter on top-level metadata keys: a checkpoint matches
/// when its metadata has every key with an equal JSON value.
pub type MetadataFilter = serde_json::Map<String, serde_json::Value>;

/// Whether the metadata JSON text `metadata` matches `filter`.
pub fn metadata_matches(filter: &MetadataFilter, metadata: &[u8]) -> bool {
    if filter.is_empty() {
        return true;
    }
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(metadata) {
        Ok(m) => filter.iter().all(|(k, v)| m.get(k) == Some(v)),
        Err(_) => false,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    pub note: String,
    pub severity: Severity,
    pub timestamp: DateTime<Utc>,
}

/// What a client asks to store.
#[derive(Debug, Clone)]
pub struct NewCheckpoint {
    pub session_id: SessionId,
    /// `""` for the root (the default).
    pub namespace: String,
    /// The client's id for it: a repeated put of one id in (session,
    /// namespace) stores nothing new and answers what the first stored.
    pub external_id: Option<String>,
    pub message: String,
    pub tags: Vec<String>,
    pub trigger: Trigger,
    pub state: Option<StateJson>,
    pub metadata: Option<Box<RawValue>>,
    pub parent_id: Option<CheckpointId>,
    /// The parent by its external id, in the same (session, namespace).
    pub parent_external_id: Option<String>,
}

/// A checkpoint's state as the client sent it: JSON text, owned, or shared
/// with the WebSocket frame it arrived in, so that a large state reaches
/// storage without being copied (`From<Box<RawValue>>` makes an owned one).
#[derive(Clone)]
pub struct StateJson(StateRepr);

#[derive(Clone)]
enum StateRepr {
    Owned(Box<RawValue>),
    /// Exactly the bytes of a `&RawValue` (so UTF-8 and JSON) in a frame.
    Shared(tokio_tungstenite::tungstenite::Bytes),
}

impl StateJson {
    /// `raw`, which must lie within `frame`, shared with it; a copy if it
    /// does not (never the case for a value parsed from the frame).
    pub fn shared(frame: &tokio_tungstenite::tungstenite::Bytes, raw: &RawValue) -> StateJson {
        let (start, len) = (frame.as_ptr() as usize, frame.len());
        let at = raw.get().as_ptr() as usize;
        match at.checked_sub(start) {
            Some(offset) if offset.checked_add(raw.get().len()).is_some_and(|end| end <= len) => {
                StateJson(StateRepr::Shared(frame.slice_ref(raw.get().as_bytes())))
            }
            _ => StateJson(StateRepr::Owned(raw.to_owned())),
        }
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        match &self.0 {
            StateRepr::Owned(raw) => raw.get(),
            // SAFETY: `Shared` holds exactly the bytes of a `str` (a
            // `RawValue`'s text, see `shared`), and `Bytes` never change.
            StateRepr::Shared(bytes) => unsafe { std::str::from_utf8_unchecked(bytes) },
        }
    }
}

impl From<Box<RawValue>> for StateJson {
    fn from(raw: Box<RawValue>) -> StateJson {
        StateJson(StateRepr::Owned(raw))
    }
}

impl fmt::Debug for StateJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StateJson").field(&self.get()).finish()
    }
}

impl NewCheckpoint {
    /// A checkpoint with a message and nothing else: no tags, state `null`,
    /// metadata `{}`, no parent, a manual trigger.
    pub fn new(session_id: SessionId, message: impl Into<String>) -> NewCheckpoint {
        NewCheckpoint {
            session_id,
            namespace: String::new(),
            external_id: None,
            message: message.into(),
            tags: Vec::new(),
            trigger: Trigger::Manual,
            state: None,
            metadata: None,
            parent_id: None,
            parent_external_id: None,
        }
    }
}

/// Which page of one session's checkpoints to list. Bounds are exclusive.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only the checkpoints of this namespace.
    pub namespace: Option<String>,
    pub limit: Option<usize>,
    pub after: Option<u64>,
    pub before: Option<u64>,
    pub tag: Option<String>,
    pub newest_first: bool,
    /// `after`, given as an external id in (session, `namespace` or `""`).
    pub after_external: Option<String>,
    /// `before`, given as an external id.
    pub before_external: Option<String>,
    /// Only checkpoints whose metadata matches.
    pub metadata: Option<MetadataFilter>,
    /// Full records (state, metadata, annotations, writes), not summaries.
    pub full: bool,
}

/// A search across every session, newest first.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub namespace: Option<String>,
    pub metadata: Option<MetadataFilter>,
    pub limit: Option<usize>,
    /// A global sequence number, exclusive.
    pub before: Option<u64>,
    pub full: bool,
}

/// A page of checkpoints: summaries, or full records when asked for.
#[derive(Debug, Clone)]
pub enum Page {
    Summaries(Vec<CheckpointSummary>),
    Records(Vec<Checkpoint>),
}

impl Page {
    pub fn len(&self) -> usize {
        match self {
            Page::Summaries(s) => s.len(),
            Page::Records(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The summaries, whichever the page holds.
    pub fn summaries(&self) -> Vec<&CheckpointSummary> {
        match self {
            Page::Summaries(s) => s.iter().collect(),
            Page::Records(r) => r.iter().map(|c| &c.summary).collect(),
        }
    }
}

/// The pending-write rule, for every store: under one (session, namespace,
/// external id, task id, idx), for idx >= 0 the first stored write is kept;
/// for idx < 0 (LangGraph's special channels) the last replaces it. Whether
/// a new write with `idx` is stored when one is already there.
pub fn write_replaces(idx: i32) -> bool {
    idx < 0
}

/// The inclusive range of sequence numbers strictly between `after` and
/// `before` (each absent: unbounded); `None` when it is empty. A list
/// cursor's rule, for every store.
pub fn exclusive_range(after: Option<u64>, before: Option<u64>) -> Option<(u64, u64)> {
    let low = after.map_or(Some(0), |a| a.checked_add(1))?;
    let high = before.map_or(Some(u64::MAX), |b| b.checked_sub(1))?;
    (low <= high).then_some((low, high))
}

/// A page being filled: summaries or full records, up to `limit` rows and
/// about [`MAX_PAGE_BYTES`](crate::config::MAX_PAGE_BYTES) (always at least
/// one row). Every store fills its pages with it, so pages end alike.
pub struct PageFill {
    page: Page,
    limit: usize,
    bytes: usize,
}

impl PageFill {
    pub fn new(full: bool, limit: usize) -> PageFill {
        let page = if full { Page::Records(Vec::new()) } else { Page::Summaries(Vec::new()) };
        PageFill { page, limit, bytes: 0 }
    }

    /// Whether it takes full records.
    pub fn wants_records(&self) -> bool {
        matches!(self.page, Page::Records(_))
    }

    pub fn is_full(&self) -> bool {
        self.page.len() >= self.limit || self.bytes >= crate::config::MAX_PAGE_BYTES
    }

    /// Rows it still takes at most (ignoring the byte budget).
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.page.len())
    }

    /// Adds a summary; counts its message and tags.
    pub fn push_summary(&mut self, s: CheckpointSummary) {
        self.bytes += s.message.len() + s.tags.iter().map(String::len).sum::<usize>();
        match &mut self.page {
            Page::Summaries(rows) => rows.push(s),
            Page::Records(_) => unreachable_page(),
        }
    }

    /// Adds a full record; counts its state, metadata and writes.
    pub fn push_record(&mut self, c: Checkpoint) {
        self.bytes += c.state.get().len()
            + c.metadata.get().len()
            + c.writes.iter().map(|w| w.value.get().len() + w.channel.len()).sum::<usize>();
        match &mut self.page {
            Page::Records(rows) => rows.push(c),
            Page::Summaries(rows) => rows.push(c.summary),
        }
    }

    pub fn done(self) -> Page {
        self.page
    }
}

/// A summary offered to a page of records: callers check
/// [`PageFill::wants_records`] first, so this is never reached; it is
/// logged rather than a panic.
fn unreachable_page() {
    tracing::error!("a summary was offered to a page of full records; skipped");
}

/// Result of a compaction (manual or by retention).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    pub removed: u64,
    pub remaining: u64,
}

/// Result of `validate`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Validation {
    pub valid: u64,
    pub invalid: u64,
    pub invalid_ids: Vec<CheckpointId>,
}

/// Totals kept incrementally and persisted in the meta tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Metrics {
    pub total_checkpoints: u64,
    pub active_sessions: u64,
    pub total_sessions_created: u64,
    pub global_sequence: u64,
    pub event_sequence: u64,
    pub oldest_event: Option<u64>,
    /// sled's files and the state segments.
    pub bytes_on_disk: u64,
    /// Bytes of the state segments that records point to.
    pub state_live_bytes: u64,
    /// Bytes of the state segments nothing points to, until compaction
    /// reclaims them.
    pub state_dead_bytes: u64,
}

/// The last numbers a store handed out; none is ever handed out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sequences {
    /// Global checkpoint sequence.
    pub checkpoint: u64,
    /// Journal event sequence.
    pub event: u64,
    /// Session creation ordinal.
    pub sessions_created: u64,
}

/// One change, as recorded in the durable event journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEvent {
    /// Event sequence: 1-based, consecutive, never reused.
    pub seq: u64,
    pub session_id: SessionId,
    pub timestamp: DateTime<Utc>,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    CheckpointCreated {
        checkpoint_id: CheckpointId,
        sequence_number: u64,
    },
    CheckpointRestored {
        checkpoint_id: CheckpointId,
        sequence_number: u64,
    },
    CheckpointDeleted {
        checkpoint_id: CheckpointId,
        sequence_number: u64,
    },
    CheckpointsCompacted {
        removed: u64,
        remaining: u64,
    },
    SessionDeleted {
        removed: u64,
    },
    /// Since format 2.
    WritesStored {
        namespace: String,
        external_id: String,
        task_id: String,
        stored: u64,
    },
    /// Since format 2: the session received a copy of another.
    SessionCopied {
        source_session_id: SessionId,
        copied: u64,
    },
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::CheckpointCreated { .. } => "checkpoint_created",
            EventKind::CheckpointRestored { .. } => "checkpoint_restored",
            EventKind::CheckpointDeleted { .. } => "checkpoint_deleted",
            EventKind::CheckpointsCompacted { .. } => "checkpoints_compacted",
            EventKind::SessionDeleted { .. } => "session_deleted",
            EventKind::WritesStored { .. } => "writes_stored",
            EventKind::SessionCopied { .. } => "session_copied",
        }
    }
}

/// `null` as a RawValue, for checkpoints stored without state.
pub fn json_null() -> Box<RawValue> {
    RawValue::from_string("null".to_string()).expect("null is JSON")
}

/// `{}` as a RawValue, for absent metadata.
pub fn json_empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_string()).expect("{} is JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Bytes;

    #[test]
    fn a_state_outside_the_frame_is_copied() {
        let frame = Bytes::from_static(b"[1,2]");
        let raw = RawValue::from_string("[1,2]".to_string()).unwrap();
        let state = StateJson::shared(&frame, &raw);
        assert_eq!(state.get(), "[1,2]");
        assert!(!frame.as_ptr_range().contains(&state.get().as_ptr()));
        let inside: &RawValue = serde_json::from_slice(&frame).unwrap();
        let state = StateJson::shared(&frame, inside);
        assert_eq!(state.get(), "[1,2]");
        assert_eq!(state.get().as_ptr(), frame.as_ptr());
    }
}
