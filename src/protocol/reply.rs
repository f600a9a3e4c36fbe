//! Rendering: the seed's reply envelope (plus `code`), the result of every
//! method and pushed events. Every shape the server sends is here: the
//! server picks one and [`render_ok`] serialises it straight to text; client
//! state passes through as the raw JSON it arrived as.
//!
//! The keys of the small results (`authenticated`, `subscribed`, `deleted`,
//! `compact`, `validate`, `metrics`, `health`) are in alphabetical order, the
//! order clients have always received (they began as `serde_json` maps, which
//! sort their keys); keep new fields of these in that order.

use crate::error::Error;
use crate::model::{
    Annotation, Checkpoint, CheckpointSummary, Compaction, EventKind, JournalEvent, Metrics, Page, RetentionPolicy,
    Session, SessionId, Validation,
};
use crate::service::Health;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

#[derive(Serialize)]
struct Ok<'a, T: Serialize> {
    id: &'a str,
    success: bool,
    result: T,
}

#[derive(Serialize)]
struct Err<'a> {
    id: &'a str,
    success: bool,
    error: String,
    code: &'static str,
}

pub fn render_ok<T: Serialize>(id: &str, result: T) -> String {
    serde_json::to_string(&Ok { id, success: true, result })
        .unwrap_or_else(|e| render_error(id, &Error::Internal(format!("could not render the result: {e}"))))
}

pub fn render_error(id: &str, error: &Error) -> String {
    serde_json::to_string(&Err { id, success: false, error: error.to_string(), code: error.code() })
        .expect("strings always serialise")
}

/// RFC 3339 with microseconds, as the seed's protocol wrote them, or with
/// nanoseconds when the time has them (an imported one: format 3 keeps them).
pub fn timestamp(t: DateTime<Utc>) -> String {
    let digits =
        if t.timestamp_subsec_nanos().is_multiple_of(1000) { SecondsFormat::Micros } else { SecondsFormat::Nanos };
    t.to_rfc3339_opts(digits, true)
}

/// One row of `list_checkpoints`.
#[derive(Serialize)]
pub struct SummaryView<'a> {
    id: String,
    session_id: String,
    sequence_number: u64,
    timestamp: String,
    message: &'a str,
    trigger: String,
    tags: &'a [String],
    has_notes: bool,
    parent_id: Option<String>,
    /// Only when not the root `""` (so the seed's replies keep their bytes).
    #[serde(skip_serializing_if = "str::is_empty")]
    namespace: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_external_id: Option<&'a str>,
}

impl<'a> From<&'a CheckpointSummary> for SummaryView<'a> {
    fn from(s: &'a CheckpointSummary) -> Self {
        SummaryView {
            id: s.id.to_string(),
            session_id: s.session_id.to_string(),
            sequence_number: s.sequence_number,
            timestamp: timestamp(s.timestamp),
            message: &s.message,
            trigger: s.trigger.to_string(),
            tags: &s.tags,
            has_notes: s.has_notes,
            parent_id: s.parent_id.map(|p| p.to_string()),
            namespace: &s.namespace,
            external_id: s.external_id.as_deref(),
            parent_external_id: s.parent_external_id.as_deref(),
        }
    }
}

pub fn summaries(list: &[CheckpointSummary]) -> Vec<SummaryView<'_>> {
    list.iter().map(SummaryView::from).collect()
}

#[derive(Serialize)]
pub struct AnnotationView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint_id: Option<String>,
    note: &'a str,
    severity: &'static str,
    timestamp: String,
}

pub fn annotation(a: &Annotation, checkpoint_id: Option<String>) -> AnnotationView<'_> {
    AnnotationView { checkpoint_id, note: &a.note, severity: a.severity.as_str(), timestamp: timestamp(a.timestamp) }
}

/// `get_checkpoint`: the full record.
#[derive(Serialize)]
pub struct CheckpointView<'a> {
    #[serde(flatten)]
    summary: SummaryView<'a>,
    state: &'a RawValue,
    metadata: &'a RawValue,
    annotations: Vec<AnnotationView<'a>>,
    checksum: String,
    /// Only when it has pending writes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    writes: Vec<WriteView<'a>>,
}

/// One pending write of a checkpoint.
#[derive(Serialize)]
pub struct WriteView<'a> {
    task_id: &'a str,
    task_path: &'a str,
    idx: i32,
    channel: &'a str,
    value: &'a RawValue,
}

pub fn checkpoint(c: &Checkpoint) -> CheckpointView<'_> {
    CheckpointView {
        summary: SummaryView::from(&c.summary),
        state: &c.state,
        metadata: &c.metadata,
        annotations: c.annotations.iter().map(|a| annotation(a, None)).collect(),
        checksum: format!("{:08x}", c.checksum),
        writes: c
            .writes
            .iter()
            .map(|w| WriteView {
                task_id: &w.task_id,
                task_path: &w.task_path,
                idx: w.idx,
                channel: &w.channel,
                value: &w.value,
            })
            .collect(),
    }
}

/// `list_checkpoints` / `search_checkpoints`: summaries or full records.
#[derive(Serialize)]
#[serde(untagged)]
pub enum PageView<'a> {
    Summaries(Vec<SummaryView<'a>>),
    Records(Vec<CheckpointView<'a>>),
}

pub fn page(p: &Page) -> PageView<'_> {
    match p {
        Page::Summaries(rows) => PageView::Summaries(summaries(rows)),
        Page::Records(rows) => PageView::Records(rows.iter().map(checkpoint).collect()),
    }
}

/// `put_writes`.
#[derive(Serialize)]
pub struct WritesStoredView {
    stored: u64,
}

pub fn writes_stored(stored: u64) -> WritesStoredView {
    WritesStoredView { stored }
}

/// `copy_session`: how many checkpoints were copied, and the target.
#[derive(Serialize)]
pub struct CopiedView<'a> {
    copied: u64,
    session: SessionView<'a>,
}

pub fn copied(s: &Session, copied: u64) -> CopiedView<'_> {
    CopiedView { copied, session: session(s, true) }
}

/// `delete_checkpoints`.
#[derive(Serialize)]
pub struct DeletedManyView {
    deleted: u64,
    more: bool,
}

pub fn deleted_many(deleted: u64, more: bool) -> DeletedManyView {
    DeletedManyView { deleted, more }
}

/// `restore`.
#[derive(Serialize)]
pub struct RestoreView<'a> {
    checkpoint_id: String,
    session_id: String,
    sequence_number: u64,
    state: &'a RawValue,
}

pub fn restored(c: &Checkpoint) -> RestoreView<'_> {
    RestoreView {
        checkpoint_id: c.summary.id.to_string(),
        session_id: c.summary.session_id.to_string(),
        sequence_number: c.summary.sequence_number,
        state: &c.state,
    }
}

#[derive(Serialize)]
pub struct PolicyView<'a> {
    keep_recent: Option<u64>,
    preserve_tags: &'a [String],
}

pub fn policy(p: &RetentionPolicy) -> PolicyView<'_> {
    PolicyView { keep_recent: p.keep_recent, preserve_tags: &p.preserve_tags }
}

/// `list_sessions` row; `get_session` adds metadata and retention.
#[derive(Serialize)]
pub struct SessionView<'a> {
    id: String,
    name: &'a str,
    created_at: String,
    checkpoint_count: u64,
    last_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retention: Option<Option<PolicyView<'a>>>,
    /// Only when the session has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
}

pub fn session(s: &Session, detailed: bool) -> SessionView<'_> {
    SessionView {
        id: s.id.to_string(),
        name: &s.name,
        created_at: timestamp(s.created_at),
        checkpoint_count: s.checkpoint_count,
        last_sequence: s.last_sequence,
        metadata: detailed.then_some(&*s.metadata),
        retention: detailed.then(|| s.retention.as_ref().map(policy)),
        key: s.key.as_deref(),
    }
}

/// `open_session`: the session (as `get_session` shows it) and whether this
/// call created it.
#[derive(Serialize)]
pub struct OpenedView<'a> {
    created: bool,
    session: SessionView<'a>,
}

pub fn opened(s: &Session, created: bool) -> OpenedView<'_> {
    OpenedView { created, session: session(s, true) }
}

/// `list_sessions`.
pub fn sessions(list: &[Session]) -> Vec<SessionView<'_>> {
    list.iter().map(|s| session(s, false)).collect()
}

/// `set_retention`: the policy now in force, or null.
pub fn retention(p: Option<&RetentionPolicy>) -> Option<PolicyView<'_>> {
    p.map(policy)
}

/// `create_session` and `checkpoint`: the new id, as a bare string.
pub fn created(id: impl std::fmt::Display) -> String {
    id.to_string()
}

/// `authenticate`, when the token is right (or none is configured).
#[derive(Serialize)]
pub struct Authenticated {
    authenticated: bool,
}

pub fn authenticated() -> Authenticated {
    Authenticated { authenticated: true }
}

/// `subscribe` and `unsubscribe`.
#[derive(Serialize)]
pub struct SubscriptionView {
    session_id: String,
    subscribed: bool,
}

/// `subscribe`: sent before any of the subscription's events.
pub fn subscribed(session_id: SessionId) -> SubscriptionView {
    SubscriptionView { session_id: session_id.to_string(), subscribed: true }
}

pub fn unsubscribed(session_id: SessionId) -> SubscriptionView {
    SubscriptionView { session_id: session_id.to_string(), subscribed: false }
}

/// `delete_checkpoint` and `delete_session`.
#[derive(Serialize)]
pub struct Deleted {
    deleted: bool,
}

pub fn deleted() -> Deleted {
    Deleted { deleted: true }
}

/// `compact`.
#[derive(Serialize)]
pub struct CompactionView {
    remaining: u64,
    removed: u64,
}

pub fn compacted(c: &Compaction) -> CompactionView {
    CompactionView { remaining: c.remaining, removed: c.removed }
}

/// `validate`.
#[derive(Serialize)]
pub struct ValidationView {
    invalid: u64,
    invalid_ids: Vec<String>,
    valid: u64,
}

pub fn validation(v: &Validation) -> ValidationView {
    ValidationView {
        invalid: v.invalid,
        invalid_ids: v.invalid_ids.iter().map(ToString::to_string).collect(),
        valid: v.valid,
    }
}

/// `metrics`: the store's totals, and the server's connections and
/// subscriptions.
#[derive(Serialize)]
pub struct MetricsView {
    active_sessions: u64,
    bytes_on_disk: u64,
    state_dead_bytes: u64,
    state_live_bytes: u64,
    connections: usize,
    event_sequence: u64,
    global_sequence: u64,
    oldest_event: Option<u64>,
    subscriptions: usize,
    total_checkpoints: u64,
    total_sessions_created: u64,
}

pub fn metrics(m: &Metrics, connections: usize, subscriptions: usize) -> MetricsView {
    MetricsView {
        active_sessions: m.active_sessions,
        bytes_on_disk: m.bytes_on_disk,
        state_dead_bytes: m.state_dead_bytes,
        state_live_bytes: m.state_live_bytes,
        connections,
        event_sequence: m.event_sequence,
        global_sequence: m.global_sequence,
        oldest_event: m.oldest_event,
        subscriptions,
        total_checkpoints: m.total_checkpoints,
        total_sessions_created: m.total_sessions_created,
    }
}

/// `health`: the service's state, the server's connections, this build's
/// version.
#[derive(Serialize)]
pub struct HealthView {
    connections: usize,
    durability: &'static str,
    format_version: u32,
    healthy: bool,
    max_connections: usize,
    max_message_bytes: usize,
    space: SpaceView,
    subscriptions: usize,
    version: &'static str,
}

/// The state segments' bytes: pointed to, awaiting compaction, on disk.
#[derive(Serialize)]
pub struct SpaceView {
    bytes_on_disk: u64,
    dead_bytes: u64,
    live_bytes: u64,
}

pub fn health(h: &Health, connections: usize, max_connections: usize, max_message_bytes: usize) -> HealthView {
    HealthView {
        connections,
        durability: h.durability.as_str(),
        format_version: h.format_version,
        healthy: h.healthy,
        max_connections,
        max_message_bytes,
        space: SpaceView {
            bytes_on_disk: h.space.bytes_on_disk,
            dead_bytes: h.space.dead_bytes,
            live_bytes: h.space.live_bytes,
        },
        subscriptions: h.subscriptions,
        version: env!("CARGO_PKG_VERSION"),
    }
}

#[derive(Serialize)]
struct EventView<'a, D: Serialize> {
    event_type: &'a str,
    data: D,
    seq: u64,
}

#[derive(Serialize)]
struct EventData<'a> {
    session_id: String,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence_number: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    removed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stored: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    copied: Option<u64>,
}

/// A journal event as pushed to subscribers.
pub fn render_event(e: &JournalEvent) -> String {
    let mut data = EventData {
        session_id: e.session_id.to_string(),
        timestamp: timestamp(e.timestamp),
        checkpoint_id: None,
        sequence_number: None,
        removed: None,
        remaining: None,
        namespace: None,
        external_id: None,
        task_id: None,
        stored: None,
        source_session_id: None,
        copied: None,
    };
    match &e.kind {
        EventKind::CheckpointCreated { checkpoint_id, sequence_number }
        | EventKind::CheckpointRestored { checkpoint_id, sequence_number }
        | EventKind::CheckpointDeleted { checkpoint_id, sequence_number } => {
            data.checkpoint_id = Some(checkpoint_id.to_string());
            data.sequence_number = Some(*sequence_number);
        }
        EventKind::CheckpointsCompacted { removed, remaining } => {
            data.removed = Some(*removed);
            data.remaining = Some(*remaining);
        }
        EventKind::SessionDeleted { removed } => data.removed = Some(*removed),
        EventKind::WritesStored { namespace, external_id, task_id, stored } => {
            data.namespace = Some(namespace);
            data.external_id = Some(external_id);
            data.task_id = Some(task_id);
            data.stored = Some(*stored);
        }
        EventKind::SessionCopied { source_session_id, copied } => {
            data.source_session_id = Some(source_session_id.to_string());
            data.copied = Some(*copied);
        }
    }
    serde_json::to_string(&EventView { event_type: e.kind.name(), data, seq: e.seq }).expect("events serialise")
}

#[derive(Serialize)]
struct LaggedData {
    session_id: String,
    last_seq: u64,
}

/// Sent when a subscriber's queue overflowed; its subscription has ended.
pub fn render_lagged(session_id: &str, last_seq: u64) -> String {
    #[derive(Serialize)]
    struct Lagged {
        event_type: &'static str,
        data: LaggedData,
    }
    serde_json::to_string(&Lagged {
        event_type: "subscription_lagged",
        data: LaggedData { session_id: session_id.to_string(), last_seq },
    })
    .expect("events serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_match_the_seed() {
        assert_eq!(render_ok("7", "abc"), r#"{"id":"7","success":true,"result":"abc"}"#);
        assert_eq!(
            render_error("init", &Error::Capacity("Server at capacity".into())),
            r#"{"id":"init","success":false,"error":"Server at capacity","code":"capacity"}"#
        );
    }

    /// The bytes of the small results, as clients have always received them.
    #[test]
    fn small_results_keep_their_bytes() {
        use crate::config::Durability;
        use crate::model::CheckpointId;
        use uuid::Uuid;
        let sid = SessionId(Uuid::from_u128(1));
        let s = "00000000-0000-0000-0000-000000000001";
        let r = |result: String| format!(r#"{{"id":"1","success":true,"result":{result}}}"#);
        assert_eq!(render_ok("1", authenticated()), r(r#"{"authenticated":true}"#.into()));
        assert_eq!(render_ok("1", subscribed(sid)), r(format!(r#"{{"session_id":"{s}","subscribed":true}}"#)));
        assert_eq!(render_ok("1", unsubscribed(sid)), r(format!(r#"{{"session_id":"{s}","subscribed":false}}"#)));
        assert_eq!(render_ok("1", created(sid)), r(format!(r#""{s}""#)));
        assert_eq!(render_ok("1", deleted()), r(r#"{"deleted":true}"#.into()));
        assert_eq!(
            render_ok("1", compacted(&Compaction { removed: 32, remaining: 12 })),
            r(r#"{"remaining":12,"removed":32}"#.into())
        );
        let v = Validation { valid: 41, invalid: 1, invalid_ids: vec![CheckpointId(Uuid::from_u128(2))] };
        assert_eq!(
            render_ok("1", validation(&v)),
            r(r#"{"invalid":1,"invalid_ids":["00000000-0000-0000-0000-000000000002"],"valid":41}"#.into())
        );
        let m = Metrics {
            total_checkpoints: 1,
            active_sessions: 2,
            total_sessions_created: 3,
            global_sequence: 4,
            event_sequence: 5,
            oldest_event: None,
            bytes_on_disk: 6,
            state_live_bytes: 9,
            state_dead_bytes: 10,
        };
        assert_eq!(
            render_ok("1", metrics(&m, 7, 8)),
            r(r#"{"active_sessions":2,"bytes_on_disk":6,"state_dead_bytes":10,"state_live_bytes":9,"connections":7,"event_sequence":5,"global_sequence":4,"oldest_event":null,"subscriptions":8,"total_checkpoints":1,"total_sessions_created":3}"#.into())
        );
        let space =
            crate::storage::segments::SpaceUsage { segments: 1, live_bytes: 2, dead_bytes: 3, bytes_on_disk: 5 };
        let us = DateTime::from_timestamp_nanos(1_740_000_000_123_456_000);
        assert_eq!(timestamp(us), "2025-02-19T21:20:00.123456Z", "microseconds as the seed wrote them");
        let ns = DateTime::from_timestamp_nanos(1_740_000_000_123_456_789);
        assert_eq!(timestamp(ns), "2025-02-19T21:20:00.123456789Z", "nanoseconds kept");
        let h = Health { healthy: true, durability: Durability::Sync, format_version: 1, subscriptions: 3, space };
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            render_ok("1", health(&h, 1, 1024, 4096)),
            r(format!(
                r#"{{"connections":1,"durability":"sync","format_version":1,"healthy":true,"max_connections":1024,"max_message_bytes":4096,"space":{{"bytes_on_disk":5,"dead_bytes":3,"live_bytes":2}},"subscriptions":3,"version":"{version}"}}"#
            ))
        );
        assert_eq!(render_ok("1", retention(None)), r("null".into()));
        assert_eq!(render_ok("1", sessions(&[])), r("[]".into()));
    }
}
