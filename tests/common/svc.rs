//! Helpers for tests written against the service (and through it the
//! storage interface): building checkpoints, reading everything back, and
//! bounded waits for subscription deliveries.

use checkpointd::Result;
use checkpointd::model::{
    Annotation, Checkpoint, CheckpointId, CheckpointSummary, JournalEvent, ListQuery, Metrics, NewCheckpoint,
    RetentionPolicy, Session, SessionId, Trigger,
};
use checkpointd::service::Service;
use checkpointd::service::hub::{Delivery, Subscription};
use checkpointd::storage::SharedBackend;
use serde_json::value::RawValue;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Longest any single awaited step of the service may take before the test
/// fails (several writers' tasks included).
pub const STEP: Duration = Duration::from_secs(20);

pub fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_string()).expect("test JSON is valid")
}

pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

pub fn new_cp(session: SessionId, message: &str, tags: &[&str]) -> NewCheckpoint {
    NewCheckpoint {
        session_id: session,
        message: message.to_string(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        trigger: Trigger::Manual,
        state: Some(raw(&format!(r#"{{"message":{}}}"#, serde_json::to_string(message).unwrap())).into()),
        metadata: None,
        parent_id: None,
        namespace: String::new(),
        external_id: None,
        parent_external_id: None,
    }
}

pub async fn session(service: &Service, name: &str) -> SessionId {
    service.create_session(Some(name.to_string()), None).await.expect("create session").id
}

pub async fn cp(service: &Service, session: SessionId, message: &str, tags: &[&str]) -> CheckpointSummary {
    service.checkpoint(new_cp(session, message, tags)).await.expect("checkpoint")
}

/// Every checkpoint of a session, ascending, paged through with `after`.
pub async fn all_checkpoints(service: &Service, session: SessionId) -> Vec<CheckpointSummary> {
    let mut out: Vec<CheckpointSummary> = Vec::new();
    for _ in 0..10_000 {
        let q = ListQuery { limit: Some(97), after: out.last().map(|c| c.sequence_number), ..Default::default() };
        let page = service.list_checkpoints(session, &q).await.expect("list");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
    panic!("paging did not end");
}

pub fn ids(list: &[CheckpointSummary]) -> Vec<CheckpointId> {
    list.iter().map(|c| c.id).collect()
}

pub fn seqs(list: &[CheckpointSummary]) -> Vec<u64> {
    list.iter().map(|c| c.sequence_number).collect()
}

/// Metrics without the one figure that changes by itself (file size).
pub async fn metrics(service: &Service) -> Metrics {
    Metrics { bytes_on_disk: 0, state_dead_bytes: 0, ..service.metrics().await.expect("metrics") }
}

pub async fn journal(store: &SharedBackend) -> Vec<JournalEvent> {
    store.events(0, u64::MAX, None, usize::MAX).await.expect("journal")
}

pub type SessionView = (SessionId, String, i64, String, Option<RetentionPolicy>, u64, Option<u64>);

pub fn session_view(s: &Session) -> SessionView {
    (
        s.id,
        s.name.clone(),
        s.created_at.timestamp_micros(),
        s.metadata.get().to_string(),
        s.retention.clone(),
        s.checkpoint_count,
        s.last_sequence,
    )
}

pub type CheckpointView = (CheckpointSummary, String, String, Vec<Annotation>, u32);

pub fn checkpoint_view(c: &Checkpoint) -> CheckpointView {
    (c.summary.clone(), c.state.get().to_string(), c.metadata.get().to_string(), c.annotations.clone(), c.checksum)
}

#[track_caller]
pub fn code<T>(r: Result<T>) -> &'static str {
    match r {
        Ok(_) => panic!("expected an error, got a success"),
        Err(e) => e.code(),
    }
}

pub async fn next_delivery(sub: &mut Subscription) -> Option<Delivery> {
    within("a subscription delivery", sub.next()).await
}

pub async fn next_event(sub: &mut Subscription) -> Arc<JournalEvent> {
    match next_delivery(sub).await {
        Some(Delivery::Event(e)) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Reads events until one with `seq >= through` arrives.
pub async fn collect_until(sub: &mut Subscription, through: u64) -> Vec<Arc<JournalEvent>> {
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        let e = next_event(sub).await;
        let seq = e.seq;
        out.push(e);
        if seq >= through {
            return out;
        }
    }
    panic!("no end to the events");
}

pub fn assert_strictly_increasing(events: &[Arc<JournalEvent>]) {
    for w in events.windows(2) {
        assert!(w[0].seq < w[1].seq, "events out of order or duplicated: {} then {}", w[0].seq, w[1].seq);
    }
}

pub fn event_seqs(events: &[Arc<JournalEvent>]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}
