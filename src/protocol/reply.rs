//! Rendering: the seed's reply envelope (plus `code`), result shapes and
//! pushed events. Results are serialised straight to text; client state
//! passes through as the raw JSON it arrived as.

use crate::error::Error;
use crate::model::{Annotation, Checkpoint, CheckpointSummary, EventKind, JournalEvent, RetentionPolicy, Session};
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

pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
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
}

pub fn checkpoint(c: &Checkpoint) -> CheckpointView<'_> {
    CheckpointView {
        summary: SummaryView::from(&c.summary),
        state: &c.state,
        metadata: &c.metadata,
        annotations: c.annotations.iter().map(|a| annotation(a, None)).collect(),
        checksum: format!("{:08x}", c.checksum),
    }
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
    }
}

#[derive(Serialize)]
struct EventView<'a, D: Serialize> {
    event_type: &'a str,
    data: D,
    seq: u64,
}

#[derive(Serialize)]
struct EventData {
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
}
