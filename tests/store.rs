//! Integration tests of the durable core (issue 2): real sled on disk in
//! temporary directories, no mocks. Every wait is bounded by a deadline.

use checkpointd::config::{Durability, SUBSCRIBER_QUEUE_EVENTS, StoreConfig};
use checkpointd::model::{
    Annotation, Checkpoint, CheckpointId, CheckpointSummary, Compaction, EventKind, JournalEvent, ListQuery, Metrics,
    NewCheckpoint, RetentionPolicy, Session, SessionId, Severity, Trigger,
};
use checkpointd::service::Service;
use checkpointd::service::hub::{Delivery, Subscription};
use checkpointd::storage::{Backend, SharedBackend, Store};
use checkpointd::{Error, Result};
use serde_json::value::RawValue;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Longest any single awaited step may take before the test fails.
const STEP: Duration = Duration::from_secs(20);

// ----- helpers ---------------------------------------------------------------

fn config(dir: &Path) -> StoreConfig {
    StoreConfig::new(dir.join("data"))
}

/// Opens `config`, waiting (bounded) while the directory is still locked:
/// sled releases the lock of a dropped database from its background threads,
/// a moment after the last handle is gone.
fn open_when_unlocked<T>(what: &str, mut open: impl FnMut() -> std::result::Result<T, String>) -> T {
    let deadline = Instant::now() + STEP;
    loop {
        match open() {
            Ok(v) => return v,
            Err(e) if e.contains("lock") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

fn open_config(c: StoreConfig) -> Service {
    open_when_unlocked("open service", || Service::open(c.clone()).map_err(|e| e.to_string()))
}

fn open(dir: &Path) -> Service {
    open_config(config(dir))
}

fn open_with(dir: &Path, f: impl FnOnce(&mut StoreConfig)) -> Service {
    let mut c = config(dir);
    f(&mut c);
    open_config(c)
}

/// Closes a service and drops it, so its directory can be opened again.
fn close(service: Service) {
    service.close();
    drop(service);
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_string()).expect("test JSON is valid")
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

fn new_cp(session: SessionId, message: &str, tags: &[&str]) -> NewCheckpoint {
    NewCheckpoint {
        session_id: session,
        message: message.to_string(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        trigger: Trigger::Manual,
        state: Some(raw(&format!(r#"{{"message":{}}}"#, serde_json::to_string(message).unwrap()))),
        metadata: None,
        parent_id: None,
    }
}

async fn session(service: &Service, name: &str) -> SessionId {
    service.create_session(Some(name.to_string()), None).await.expect("create session").id
}

async fn cp(service: &Service, session: SessionId, message: &str, tags: &[&str]) -> CheckpointSummary {
    service.checkpoint(new_cp(session, message, tags)).await.expect("checkpoint")
}

/// Every checkpoint of a session, ascending, paged through with `after`.
async fn all_checkpoints(service: &Service, session: SessionId) -> Vec<CheckpointSummary> {
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

fn ids(list: &[CheckpointSummary]) -> Vec<CheckpointId> {
    list.iter().map(|c| c.id).collect()
}

fn seqs(list: &[CheckpointSummary]) -> Vec<u64> {
    list.iter().map(|c| c.sequence_number).collect()
}

/// Metrics without the one figure that changes by itself (file size).
async fn metrics(service: &Service) -> Metrics {
    Metrics { bytes_on_disk: 0, ..service.metrics().await.expect("metrics") }
}

async fn journal(store: &SharedBackend) -> Vec<JournalEvent> {
    store.events(0, u64::MAX, None, usize::MAX).await.expect("journal")
}

type SessionView = (SessionId, String, i64, String, Option<RetentionPolicy>, u64, Option<u64>);

fn session_view(s: &Session) -> SessionView {
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

type CheckpointView = (CheckpointSummary, String, String, Vec<Annotation>, u32);

fn checkpoint_view(c: &Checkpoint) -> CheckpointView {
    (c.summary.clone(), c.state.get().to_string(), c.metadata.get().to_string(), c.annotations.clone(), c.checksum)
}

#[track_caller]
fn code<T>(r: Result<T>) -> &'static str {
    match r {
        Ok(_) => panic!("expected an error, got a success"),
        Err(e) => e.code(),
    }
}

async fn next_delivery(sub: &mut Subscription) -> Option<Delivery> {
    within("a subscription delivery", sub.next()).await
}

async fn next_event(sub: &mut Subscription) -> Arc<JournalEvent> {
    match next_delivery(sub).await {
        Some(Delivery::Event(e)) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Reads events until one with `seq >= through` arrives.
async fn collect_until(sub: &mut Subscription, through: u64) -> Vec<Arc<JournalEvent>> {
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

fn assert_strictly_increasing(events: &[Arc<JournalEvent>]) {
    for w in events.windows(2) {
        assert!(w[0].seq < w[1].seq, "events out of order or duplicated: {} then {}", w[0].seq, w[1].seq);
    }
}

fn event_seqs(events: &[Arc<JournalEvent>]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

// ----- restart ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_everything() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path());
    let a = service
        .create_session(
            Some("alpha ✓ 日本語".to_string()),
            Some(raw(r#"{"owner":"ann","nested":{"list":[1,2,{"x":null}]},"big":18446744073709551615}"#)),
        )
        .await
        .unwrap();
    let b = service.create_session(None, None).await.unwrap();
    assert_eq!(b.name, "unnamed");
    assert_eq!(b.metadata.get(), "{}");

    let state1 = r#"{"big":123456789012345678901234567890,"neg":-9223372036854775808,"f":1.5e300,"u":"é 😀 \u00e9 \"q\"","deep":[[[[{"a":[true,false,null]}]]]]}"#;
    let c1 = service
        .checkpoint(NewCheckpoint {
            session_id: a.id,
            message: "first ✓".into(),
            tags: vec!["alpha".into(), "milestone".into()],
            trigger: Trigger::Auto(Some("timer".into())),
            state: Some(raw(state1)),
            metadata: Some(raw(r#"{"step": 1, "host": null}"#)),
            parent_id: None,
        })
        .await
        .unwrap();
    let c2 = service
        .checkpoint(NewCheckpoint {
            session_id: a.id,
            message: "".into(),
            tags: vec![],
            trigger: Trigger::Scheduled,
            state: Some(raw(r#""just a string with \n newline""#)),
            metadata: None,
            parent_id: Some(c1.id),
        })
        .await
        .unwrap();
    let c3 = service
        .checkpoint(NewCheckpoint {
            session_id: b.id,
            message: "no state".into(),
            tags: vec!["b".into()],
            trigger: Trigger::Auto(None),
            state: None,
            metadata: None,
            parent_id: None,
        })
        .await
        .unwrap();
    let doomed: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(cp(&service, a.id, &format!("a{i}"), &[]).await);
        }
        v
    };
    let c8 = cp(&service, a.id, "kept", &["alpha"]).await;
    let newest = cp(&service, a.id, "newest, deleted", &[]).await;
    service.annotate(c1.id, "looks fine".into(), None).await.unwrap();
    service.annotate(c1.id, "actually ⚠".into(), Some(Severity::Critical)).await.unwrap();
    service.annotate(c2.id, "warned".into(), Some(Severity::Warning)).await.unwrap();
    service.restore(a.id, c1.id).await.unwrap();
    // Delete the newest and one in the middle; compact away all untagged
    // checkpoints but the 2 newest (c2 is the only one with a child link).
    service.delete_checkpoint(newest.id, Some(a.id)).await.unwrap();
    service.delete_checkpoint(doomed[0].id, None).await.unwrap();
    let compaction = service
        .compact(a.id, RetentionPolicy { keep_recent: Some(2), preserve_tags: vec!["milestone".into()] })
        .await
        .unwrap();
    // Left: c1 (milestone), doomed[3] and c8 (the 2 newest).
    assert_eq!(compaction, Compaction { removed: 3, remaining: 3 });
    let retention = RetentionPolicy { keep_recent: Some(3), preserve_tags: vec!["pin".into()] };
    service.set_retention(b.id, Some(retention.clone())).await.unwrap();
    // A third session, deleted: must stay deleted.
    let gone = session(&service, "gone").await;
    let gone_cp = cp(&service, gone, "gone", &[]).await;
    service.delete_session(gone).await.unwrap();

    let kept_a = vec![c1.id, doomed[3].id, c8.id];
    assert_eq!(ids(&all_checkpoints(&service, a.id).await), kept_a);

    // Everything observable, before the restart.
    let view = async |service: &Service| {
        let sessions: Vec<_> = service.list_sessions(None, None).await.unwrap().iter().map(session_view).collect();
        let mut checkpoints = Vec::new();
        for s in [a.id, b.id] {
            for c in all_checkpoints(service, s).await {
                checkpoints.push(checkpoint_view(&service.get_checkpoint(c.id).await.unwrap()));
            }
        }
        let by_seq = service.list_by_sequence(0, None).await.unwrap();
        let tagged = service
            .list_checkpoints(a.id, &ListQuery { tag: Some("alpha".into()), ..Default::default() })
            .await
            .unwrap();
        (sessions, checkpoints, by_seq, tagged, metrics(service).await, journal(service.store()).await)
    };
    let before = view(&service).await;
    let metrics_before = metrics(&service).await;
    assert_eq!(metrics_before.active_sessions, 2);
    assert_eq!(metrics_before.total_sessions_created, 3);
    assert_eq!(metrics_before.total_checkpoints, 4);
    assert_eq!(metrics_before.global_sequence, 10);
    close(service);

    let service = open(dir.path());
    let after = view(&service).await;
    assert_eq!(before.0, after.0, "sessions");
    assert_eq!(before.1, after.1, "checkpoints");
    assert_eq!(before.2, after.2, "list_by_sequence");
    assert_eq!(before.3, after.3, "tag index");
    assert_eq!(before.4, after.4, "metrics");
    assert_eq!(before.5, after.5, "journal");

    // Field by field, the things the issue names.
    let sa = service.get_session(a.id).await.unwrap();
    assert_eq!(sa.name, "alpha ✓ 日本語");
    let meta: serde_json::Value = serde_json::from_str(sa.metadata.get()).unwrap();
    assert_eq!(meta["nested"]["list"][2], serde_json::json!({"x": null}));
    assert_eq!(meta["big"], serde_json::json!(18446744073709551615u64));
    assert_eq!(sa.checkpoint_count, 3);
    assert_eq!(sa.last_sequence, Some(c8.sequence_number));
    assert_eq!(service.get_session(b.id).await.unwrap().retention, Some(retention));
    let g1 = service.get_checkpoint(c1.id).await.unwrap();
    assert_eq!(g1.state.get(), state1, "state is returned byte for byte");
    let v1: serde_json::Value = serde_json::from_str(g1.state.get()).unwrap();
    assert_eq!(v1, serde_json::from_str::<serde_json::Value>(state1).unwrap());
    assert_eq!(g1.summary.tags, vec!["alpha".to_string(), "milestone".to_string()]);
    assert_eq!(g1.summary.trigger, Trigger::Auto(Some("timer".into())));
    assert_eq!(g1.metadata.get(), r#"{"step": 1, "host": null}"#);
    assert!(g1.summary.has_notes);
    let notes: Vec<_> = g1.annotations.iter().map(|n| (n.note.as_str(), n.severity)).collect();
    assert_eq!(notes, vec![("looks fine", Severity::Info), ("actually ⚠", Severity::Critical)]);
    assert_eq!(code(service.get_checkpoint(c2.id).await), "not_found", "compacted away");
    let g3 = service.get_checkpoint(c3.id).await.unwrap();
    assert_eq!(g3.state.get(), "null");
    assert_eq!(g3.summary.trigger, Trigger::Auto(None));
    for id in doomed[..3].iter().map(|c| c.id).chain([newest.id, gone_cp.id, c2.id]) {
        assert_eq!(code(service.get_checkpoint(id).await), "not_found", "{id} must stay deleted");
    }
    assert_eq!(code(service.get_session(gone).await), "not_found");
    assert_eq!(
        service.validate(None).await.unwrap(),
        checkpointd::model::Validation { valid: 4, ..Default::default() }
    );

    // Parent links survive too.
    let child =
        service.checkpoint(NewCheckpoint { parent_id: Some(c8.id), ..new_cp(a.id, "child", &[]) }).await.unwrap();
    assert_eq!(child.sequence_number, 11, "the sequence continues after the restart");
    assert_eq!(service.get_checkpoint(child.id).await.unwrap().summary.parent_id, Some(c8.id));

    // The retention policy still applies after the restart.
    for i in 0..4 {
        cp(&service, b.id, &format!("b{i}"), &[]).await;
    }
    assert_eq!(service.get_session(b.id).await.unwrap().checkpoint_count, 3);
    close(service);

    // And a third time, after the post-restart writes.
    let service = open(dir.path());
    assert_eq!(service.metrics().await.unwrap().global_sequence, 15);
    assert_eq!(service.get_checkpoint(child.id).await.unwrap().summary.parent_id, Some(c8.id));
    close(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_of_a_directory_is_refused_while_in_use() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path());
    let err = match Store::open(config(dir.path())) {
        Ok(_) => panic!("a second open of a directory in use must fail"),
        Err(e) => e,
    };
    assert_eq!(checkpointd::Error::from(err.clone()).code(), "unavailable");
    assert!(err.to_string().contains("lock"), "the error names the lock: {err}");
    // The first one is unharmed.
    let s = session(&service, "still fine").await;
    cp(&service, s, "ok", &[]).await;
    close(service);
    // After closing, the directory opens again.
    let store = open_when_unlocked("reopen after close", || Store::open(config(dir.path())).map_err(|e| e.to_string()));
    assert_eq!(store.metrics().await.unwrap().global_sequence, 1);
}

/// Writes after `close` are refused instead of waiting forever for a flush
/// that will never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_close_are_refused() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path());
    let s = session(&service, "s").await;
    service.close();
    let r = within("a write after close", service.checkpoint(new_cp(s, "late", &[]))).await;
    assert_eq!(code(r), "unavailable");
    assert!(!service.health().healthy, "a closed store does not report healthy");
    drop(service);
    let service = open(dir.path());
    assert_eq!(service.metrics().await.unwrap().global_sequence, 0, "the refused write was not kept");
    assert_eq!(service.get_session(s).await.unwrap().checkpoint_count, 0);
    close(service);
}

// ----- sequences -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_is_never_reused_after_deleting_the_newest_and_restarting() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path());
    let a = session(&service, "a").await;
    let b = session(&service, "b").await;
    let mut all = Vec::new();
    for i in 0..6 {
        all.push(cp(&service, if i % 2 == 0 { a } else { b }, &format!("{i}"), &[]).await);
    }
    // Delete the newest of both sessions, and compact one away entirely.
    service.delete_checkpoint(all[5].id, None).await.unwrap();
    service.delete_checkpoint(all[4].id, None).await.unwrap();
    service.compact(b, RetentionPolicy { keep_recent: Some(0), preserve_tags: vec![] }).await.unwrap();
    let highest = all.iter().map(|c| c.sequence_number).max().unwrap();
    assert_eq!(highest, 6);
    close(service);

    let service = open(dir.path());
    assert_eq!(service.metrics().await.unwrap().global_sequence, highest);
    let n = cp(&service, a, "after restart", &[]).await;
    assert!(n.sequence_number > highest, "sequence {} reused (highest earlier {highest})", n.sequence_number);
    assert_eq!(n.sequence_number, highest + 1);
    let m = cp(&service, b, "in the emptied session", &[]).await;
    assert_eq!(m.sequence_number, highest + 2);
    // Deleting a whole session does not free its numbers either.
    service.delete_session(b).await.unwrap();
    close(service);
    let service = open(dir.path());
    assert_eq!(cp(&service, a, "again", &[]).await.sequence_number, highest + 3);
    close(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_sequence_is_one_based_consecutive_and_failed_writes_consume_none() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path());
    let a = session(&service, "a").await;
    let b = session(&service, "b").await;
    let a1 = cp(&service, a, "a1", &[]).await;
    assert_eq!(a1.sequence_number, 1);
    let b1 = cp(&service, b, "b1", &[]).await;
    assert_eq!(b1.sequence_number, 2);
    // Failed writes in between.
    assert_eq!(code(service.checkpoint(new_cp(SessionId::new(), "x", &[])).await), "not_found");
    let cross = NewCheckpoint { parent_id: Some(a1.id), ..new_cp(b, "cross", &[]) };
    assert_eq!(code(service.checkpoint(cross).await), "conflict");
    let unknown_parent = NewCheckpoint { parent_id: Some(CheckpointId::new()), ..new_cp(b, "x", &[]) };
    assert_eq!(code(service.checkpoint(unknown_parent).await), "not_found");
    assert_eq!(code(service.checkpoint(new_cp(a, &"x".repeat(64 * 1024 + 1), &[])).await), "too_large");
    assert_eq!(cp(&service, a, "a2", &[]).await.sequence_number, 3);

    // Concurrent writers over several sessions: 1..=N with no hole.
    let sessions = [a, b, session(&service, "c").await];
    let mut tasks = Vec::new();
    for w in 0..6 {
        let service = service.clone();
        let s = sessions[w % 3];
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..25 {
                got.push(service.checkpoint(new_cp(s, &format!("{w}-{i}"), &[])).await.unwrap().sequence_number);
            }
            got
        }));
    }
    let mut numbers = vec![1, 2, 3];
    for t in tasks {
        numbers.extend(within("writers", t).await.unwrap());
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=153).collect::<Vec<u64>>());
    assert_eq!(seqs(&service.list_by_sequence(0, None).await.unwrap()), numbers);
    assert_eq!(service.metrics().await.unwrap().global_sequence, 153);
    close(service);
}

// ----- bad input ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path());
    let a = session(&service, "a").await;
    let b = session(&service, "b").await;
    let a1 = cp(&service, a, "a1", &["t"]).await;
    let b1 = cp(&service, b, "b1", &[]).await;
    let metrics_before = metrics(&service).await;
    let journal_before = journal(service.store()).await;
    let sessions_before: Vec<_> = service.list_sessions(None, None).await.unwrap().iter().map(session_view).collect();
    let unknown_session = SessionId::new();
    let unknown_cp = CheckpointId::new();
    let big = "x".repeat(64 * 1024 + 1);
    let tags65: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();

    // Unknown ids.
    assert_eq!(code(service.get_session(unknown_session).await), "not_found");
    assert_eq!(code(service.get_checkpoint(unknown_cp).await), "not_found");
    assert_eq!(code(service.checkpoint(new_cp(unknown_session, "m", &[])).await), "not_found");
    let unknown_parent = NewCheckpoint { parent_id: Some(unknown_cp), ..new_cp(a, "m", &[]) };
    assert_eq!(code(service.checkpoint(unknown_parent).await), "not_found");
    assert_eq!(code(service.delete_checkpoint(unknown_cp, None).await), "not_found");
    assert_eq!(code(service.delete_checkpoint(a1.id, Some(b)).await), "not_found", "wrong session");
    assert_eq!(code(service.delete_session(unknown_session).await), "not_found");
    assert_eq!(code(service.restore(a, unknown_cp).await), "not_found");
    assert_eq!(code(service.restore(b, a1.id).await), "not_found", "wrong session");
    assert_eq!(code(service.annotate(unknown_cp, "n".into(), None).await), "not_found");
    let keep1 = RetentionPolicy { keep_recent: Some(1), preserve_tags: vec![] };
    assert_eq!(code(service.compact(unknown_session, keep1.clone()).await), "not_found");
    assert_eq!(code(service.set_retention(unknown_session, Some(keep1)).await), "not_found");
    assert_eq!(code(service.list_checkpoints(unknown_session, &ListQuery::default()).await), "not_found");
    assert_eq!(code(service.validate(Some(unknown_session)).await), "not_found");
    assert_eq!(code(service.subscribe(unknown_session, None).await), "not_found");
    assert_eq!(code(service.list_sessions(Some(unknown_session), None).await), "not_found");
    // A parent from another session.
    let cross = NewCheckpoint { parent_id: Some(b1.id), ..new_cp(a, "m", &[]) };
    assert_eq!(code(service.checkpoint(cross).await), "conflict");
    // Empty or oversized fields.
    assert_eq!(code(service.create_session(Some(String::new()), None).await), "invalid_params");
    assert_eq!(code(service.create_session(Some(big.clone()), None).await), "too_large");
    assert_eq!(code(service.checkpoint(new_cp(a, &big, &[])).await), "too_large");
    let many_tags = NewCheckpoint { tags: tags65, ..new_cp(a, "m", &[]) };
    assert_eq!(code(service.checkpoint(many_tags).await), "too_large");
    assert_eq!(code(service.checkpoint(new_cp(a, "m", &[""])).await), "invalid_params");
    assert_eq!(code(service.checkpoint(new_cp(a, "m", &["x".repeat(257).as_str()])).await), "too_large");
    for not_object in ["[1,2]", "42", "\"text\"", "null", "true"] {
        let bad = NewCheckpoint { metadata: Some(raw(not_object)), ..new_cp(a, "m", &[]) };
        assert_eq!(code(service.checkpoint(bad).await), "invalid_params", "checkpoint metadata {not_object}");
        assert_eq!(
            code(service.create_session(Some("s".into()), Some(raw(not_object))).await),
            "invalid_params",
            "session metadata {not_object}"
        );
    }
    let huge_meta = raw(&format!(r#"{{"k":"{big}"}}"#));
    let bad = NewCheckpoint { metadata: Some(huge_meta.clone()), ..new_cp(a, "m", &[]) };
    assert_eq!(code(service.checkpoint(bad).await), "too_large");
    assert_eq!(code(service.create_session(Some("s".into()), Some(huge_meta)).await), "too_large");
    assert_eq!(code(service.annotate(a1.id, String::new(), None).await), "invalid_params");
    assert_eq!(code(service.annotate(a1.id, big.clone(), None).await), "too_large");
    assert_eq!(code(service.compact(a, RetentionPolicy::default()).await), "invalid_params");
    let bad_policy = RetentionPolicy { keep_recent: Some(1), preserve_tags: vec![String::new()] };
    assert_eq!(code(service.compact(a, bad_policy.clone()).await), "invalid_params");
    assert_eq!(code(service.set_retention(a, Some(bad_policy)).await), "invalid_params");
    let q = ListQuery { tag: Some(String::new()), ..Default::default() };
    assert_eq!(code(service.list_checkpoints(a, &q).await), "invalid_params");

    // Nothing stored changed.
    assert_eq!(metrics(&service).await, metrics_before);
    assert_eq!(journal(service.store()).await, journal_before);
    let sessions_after: Vec<_> = service.list_sessions(None, None).await.unwrap().iter().map(session_view).collect();
    assert_eq!(sessions_after, sessions_before);
    assert_eq!(ids(&all_checkpoints(&service, a).await), vec![a1.id]);
    assert!(!service.get_checkpoint(a1.id).await.unwrap().summary.has_notes);
    assert_eq!(service.validate(None).await.unwrap().valid, 2);
    assert!(service.health().healthy);
    // The limits themselves are accepted, and the next sequence is the next one.
    let max_tags: Vec<String> = (0..64).map(|i| format!("t{i}")).collect();
    let at_limit = NewCheckpoint { tags: max_tags, ..new_cp(a, &"y".repeat(64 * 1024), &[]) };
    assert_eq!(service.checkpoint(at_limit).await.unwrap().sequence_number, 3);
    close(service);
}

// ----- compaction ------------------------------------------------------------

/// A session of 10 checkpoints (index 0..10, oldest first): every third one
/// (0, 3, 6, 9) tagged `keep`, index 4 tagged `milestone`; plus another
/// session interleaved. Applies `policy` and checks that exactly `kept`
/// survive, everywhere the store indexes them.
async fn check_compaction(policy: RetentionPolicy, kept: &[usize]) {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path());
    let s = session(&service, "s").await;
    let other = session(&service, "other").await;
    let mut all = Vec::new();
    let mut others = Vec::new();
    for i in 0..10 {
        let mut tags = vec![];
        if i % 3 == 0 {
            tags.push("keep");
        }
        if i == 4 {
            tags.push("milestone");
        }
        tags.push("every");
        all.push(cp(&service, s, &format!("{i}"), &tags).await);
        // Same tags in the other session: compaction must not look there.
        others.push(cp(&service, other, &format!("o{i}"), &tags).await);
    }
    service.annotate(all[1].id, "note on a doomed one".into(), None).await.unwrap();
    let mut other_before = Vec::new();
    for c in all_checkpoints(&service, other).await {
        other_before.push(checkpoint_view(&service.get_checkpoint(c.id).await.unwrap()));
    }
    let before = metrics(&service).await;

    let result = service.compact(s, policy.clone()).await.unwrap();
    let expect_kept: Vec<CheckpointId> = kept.iter().map(|&i| all[i].id).collect();
    let removed = (10 - kept.len()) as u64;
    assert_eq!(result, Compaction { removed, remaining: kept.len() as u64 }, "policy {policy:?}");
    let check = async |service: &Service| {
        assert_eq!(ids(&all_checkpoints(service, s).await), expect_kept, "policy {policy:?}");
        for (i, c) in all.iter().enumerate() {
            let got = service.get_checkpoint(c.id).await;
            if kept.contains(&i) {
                assert!(got.is_ok(), "kept {i} is readable");
            } else {
                assert_eq!(code(got), "not_found", "removed {i} is gone");
            }
        }
        // Indexes agree: tag lists and the global sequence list.
        for tag in ["keep", "milestone", "every"] {
            let listed =
                service.list_checkpoints(s, &ListQuery { tag: Some(tag.into()), ..Default::default() }).await.unwrap();
            let expect: Vec<_> =
                all_checkpoints(service, s).await.into_iter().filter(|c| c.tags.iter().any(|t| t == tag)).collect();
            assert_eq!(ids(&listed), ids(&expect), "tag {tag}");
        }
        let by_seq: Vec<_> =
            service.list_by_sequence(0, None).await.unwrap().into_iter().filter(|c| c.session_id == s).collect();
        assert_eq!(ids(&by_seq), expect_kept);
        let sess = service.get_session(s).await.unwrap();
        assert_eq!(sess.checkpoint_count, kept.len() as u64);
        assert_eq!(sess.last_sequence, kept.last().map(|&i| all[i].sequence_number), "last_sequence");
        let m = metrics(service).await;
        assert_eq!(m.total_checkpoints, before.total_checkpoints - removed);
        assert_eq!(m.global_sequence, before.global_sequence);
        // The other session is untouched.
        let mut other_after = Vec::new();
        for c in all_checkpoints(service, other).await {
            other_after.push(checkpoint_view(&service.get_checkpoint(c.id).await.unwrap()));
        }
        assert_eq!(other_after, other_before);
        assert_eq!(service.get_session(other).await.unwrap().checkpoint_count, 10);
        let v = service.validate(None).await.unwrap();
        assert_eq!((v.valid, v.invalid), (10 + kept.len() as u64, 0));
    };
    check(&service).await;
    let last = journal(service.store()).await.pop().unwrap();
    assert_eq!(last.session_id, s);
    assert_eq!(last.kind, EventKind::CheckpointsCompacted { removed, remaining: kept.len() as u64 });
    // A compaction that finds nothing to remove removes nothing.
    let again = service.compact(s, policy.clone()).await.unwrap();
    assert_eq!(again, Compaction { removed: 0, remaining: kept.len() as u64 });
    close(service);
    let service = open(dir.path());
    check(&service).await;
    close(service);
    // Below the API: no index entry or annotation of a removed checkpoint
    // is left behind in sled.
    let db = open_when_unlocked("raw sled open", || sled::open(config(dir.path()).data_dir).map_err(|e| e.to_string()));
    let count = |tree: &str| db.open_tree(tree).unwrap().len();
    let tag_entries: usize =
        kept.iter().map(|&i| all[i].tags.len()).sum::<usize>() + others.iter().map(|c| c.tags.len()).sum::<usize>();
    assert_eq!(count("tags"), tag_entries, "tag index entries");
    assert_eq!(count("annotations"), usize::from(kept.contains(&1)), "annotations");
    for tree in ["checkpoints", "states", "checkpoint_ids", "sequences"] {
        assert_eq!(count(tree), kept.len() + 10, "tree {tree}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keep_recent() {
    check_compaction(RetentionPolicy { keep_recent: Some(3), preserve_tags: vec![] }, &[7, 8, 9]).await;
    check_compaction(RetentionPolicy { keep_recent: Some(0), preserve_tags: vec![] }, &[]).await;
    check_compaction(RetentionPolicy { keep_recent: Some(10), preserve_tags: vec![] }, &(0..10).collect::<Vec<_>>())
        .await;
    check_compaction(RetentionPolicy { keep_recent: Some(1000), preserve_tags: vec![] }, &(0..10).collect::<Vec<_>>())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_preserve_tags() {
    check_compaction(RetentionPolicy { keep_recent: None, preserve_tags: vec!["keep".into()] }, &[0, 3, 6, 9]).await;
    check_compaction(
        RetentionPolicy { keep_recent: None, preserve_tags: vec!["milestone".into(), "keep".into()] },
        &[0, 3, 4, 6, 9],
    )
    .await;
    check_compaction(RetentionPolicy { keep_recent: None, preserve_tags: vec!["nobody-has-this".into()] }, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keep_recent_and_preserve_tags_combined() {
    check_compaction(RetentionPolicy { keep_recent: Some(2), preserve_tags: vec!["keep".into()] }, &[0, 3, 6, 8, 9])
        .await;
    check_compaction(
        RetentionPolicy { keep_recent: Some(5), preserve_tags: vec!["milestone".into(), "keep".into()] },
        &[0, 3, 4, 5, 6, 7, 8, 9],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keep_zero_recent_with_tags() {
    check_compaction(RetentionPolicy { keep_recent: Some(0), preserve_tags: vec!["milestone".into()] }, &[4]).await;
    // The newest is untagged: last_sequence falls back to the newest kept.
    check_compaction(RetentionPolicy { keep_recent: Some(0), preserve_tags: vec!["keep".into()] }, &[0, 3, 6, 9]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_concurrent_with_creation_loses_nothing_created_after_it_started() {
    let dir = TempDir::new().unwrap();
    let service = Arc::new(open_with(dir.path(), |c| c.durability = Durability::Async));
    let s = session(&service, "s").await;
    for i in 0..50 {
        cp(&service, s, &format!("pre{i}"), &[]).await;
    }
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let progress_tx = Arc::new(progress_tx);
    let mut writers = Vec::new();
    for w in 0..3 {
        let service = Arc::clone(&service);
        let progress_tx = Arc::clone(&progress_tx);
        writers.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for i in 0..100 {
                made.push(service.checkpoint(new_cp(s, &format!("w{w}-{i}"), &[])).await.unwrap());
                progress_tx.send_modify(|n| *n += 1);
            }
            made
        }));
    }
    // Compact several times while the writers are running.
    let compactor = {
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            let mut results = Vec::new();
            for round in 1..=4 {
                progress.wait_for(|&n| n >= round * 40).await.unwrap();
                let r = service.compact(s, RetentionPolicy { keep_recent: Some(5), preserve_tags: vec![] }).await;
                results.push(r.unwrap());
            }
            results
        })
    };
    let mut created = Vec::new();
    for w in writers {
        created.extend(within("writers", w).await.unwrap());
    }
    let results = within("compactor", compactor).await.unwrap();
    let surviving: BTreeSet<u64> = all_checkpoints(&service, s).await.iter().map(|c| c.sequence_number).collect();
    let removed: u64 = results.iter().map(|r| r.removed).sum();
    assert_eq!(surviving.len() as u64 + removed, 50 + 300, "every checkpoint is either kept or counted removed");
    assert_eq!(created.len(), 300);
    // Replay the journal: each compaction, at the moment it happened, must
    // have removed exactly the checkpoints older than the 5 newest, and
    // everything created after it must still be there.
    let mut alive = BTreeSet::new();
    let mut compactions = Vec::new();
    for e in service.store().events(0, u64::MAX, Some(s), usize::MAX).await.unwrap() {
        match e.kind {
            EventKind::CheckpointCreated { sequence_number, .. } => {
                alive.insert(sequence_number);
            }
            EventKind::CheckpointsCompacted { removed, remaining } => {
                assert_eq!((removed, remaining), (alive.len() as u64 - 5, 5), "compaction at event {}", e.seq);
                alive = alive.iter().rev().take(5).copied().collect();
                compactions.push(Compaction { removed, remaining });
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(compactions, results, "the journal records each compaction");
    assert_eq!(surviving, alive, "survivors are exactly those the compactions kept, plus all created after");
    let sess = service.get_session(s).await.unwrap();
    assert_eq!(sess.checkpoint_count, surviving.len() as u64);
    assert_eq!(sess.last_sequence, surviving.last().copied());
    assert_eq!(service.metrics().await.unwrap().total_checkpoints, surviving.len() as u64);
    assert_eq!(service.validate(Some(s)).await.unwrap().valid, surviving.len() as u64);
    Arc::try_unwrap(service).ok().expect("no other handle").close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_policy_applies_as_checkpoints_are_added() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path());
    let s = session(&service, "s").await;
    let other = session(&service, "other").await;
    let o = cp(&service, other, "other", &[]).await;
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(cp(&service, s, &format!("{i}"), &[]).await);
    }
    let policy = RetentionPolicy { keep_recent: Some(3), preserve_tags: vec![] };
    assert_eq!(service.set_retention(s, Some(policy.clone())).await.unwrap(), Some(policy.clone()));
    // Setting the policy alone removes nothing: it applies on the next add.
    assert_eq!(all_checkpoints(&service, s).await.len(), 5);
    for i in 5..9 {
        made.push(cp(&service, s, &format!("{i}"), &[]).await);
        let list = all_checkpoints(&service, s).await;
        assert_eq!(ids(&list), ids(&made[made.len() - 3..]), "after adding {i}");
        let sess = service.get_session(s).await.unwrap();
        assert_eq!((sess.checkpoint_count, sess.last_sequence), (3, Some(made.last().unwrap().sequence_number)));
    }
    let events = service.store().events(0, u64::MAX, Some(s), usize::MAX).await.unwrap();
    let compactions: Vec<_> =
        events.iter().filter(|e| matches!(e.kind, EventKind::CheckpointsCompacted { .. })).map(|e| &e.kind).collect();
    assert_eq!(compactions.first(), Some(&&EventKind::CheckpointsCompacted { removed: 3, remaining: 3 }));
    assert_eq!(compactions.len(), 4);

    // keep_recent 0 with tags: the new checkpoint itself is always kept,
    // everything older goes unless pinned.
    let policy = RetentionPolicy { keep_recent: Some(0), preserve_tags: vec!["pin".into()] };
    service.set_retention(s, Some(policy)).await.unwrap();
    let pinned = cp(&service, s, "pinned", &["pin"]).await;
    assert_eq!(ids(&all_checkpoints(&service, s).await), vec![pinned.id]);
    let plain = cp(&service, s, "plain", &[]).await;
    assert_eq!(ids(&all_checkpoints(&service, s).await), vec![pinned.id, plain.id], "the newest is always kept");
    let plain2 = cp(&service, s, "plain2", &[]).await;
    assert_eq!(ids(&all_checkpoints(&service, s).await), vec![pinned.id, plain2.id]);
    let sess = service.get_session(s).await.unwrap();
    assert_eq!((sess.checkpoint_count, sess.last_sequence), (2, Some(plain2.sequence_number)));

    // Tags only, no count.
    service
        .set_retention(s, Some(RetentionPolicy { keep_recent: None, preserve_tags: vec!["pin".into()] }))
        .await
        .unwrap();
    let plain3 = cp(&service, s, "plain3", &[]).await;
    assert_eq!(ids(&all_checkpoints(&service, s).await), vec![pinned.id, plain3.id]);

    // Cleared: nothing more is removed.
    assert_eq!(service.set_retention(s, None).await.unwrap(), None);
    let more = [cp(&service, s, "x", &[]).await, cp(&service, s, "y", &[]).await];
    assert_eq!(ids(&all_checkpoints(&service, s).await), vec![pinned.id, plain3.id, more[0].id, more[1].id]);
    // An empty policy is the same as none.
    assert_eq!(service.set_retention(s, Some(RetentionPolicy::default())).await.unwrap(), None);

    // Never another session.
    assert_eq!(ids(&all_checkpoints(&service, other).await), vec![o.id]);
    let m = metrics(&service).await;
    assert_eq!(m.total_checkpoints, 5);
    assert_eq!(service.validate(None).await.unwrap().valid, 5);
    close(service);
}

// ----- listing and counters -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_checkpoints_pages_by_sequence() {
    let dir = TempDir::new().unwrap();
    let service = open_with(dir.path(), |c| c.durability = Durability::Async);
    let s = session(&service, "s").await;
    let other = session(&service, "other").await;
    let mut made = Vec::new();
    for i in 0..12 {
        let tags: &[&str] = if i % 2 == 0 { &["even"] } else { &["odd"] };
        made.push(cp(&service, s, &format!("{i}"), tags).await);
        // Interleave so the session's sequence numbers have holes.
        cp(&service, other, &format!("o{i}"), &["even", "odd"]).await;
    }
    let sq: Vec<u64> = seqs(&made);
    assert_eq!(sq[..3], [1, 3, 5]);
    let list = async |q: ListQuery| seqs(&service.list_checkpoints(s, &q).await.unwrap());

    assert_eq!(list(ListQuery::default()).await, sq);
    assert_eq!(list(ListQuery { limit: Some(3), ..Default::default() }).await, sq[..3]);
    assert_eq!(list(ListQuery { limit: Some(0), ..Default::default() }).await, Vec::<u64>::new());
    // after / before are exclusive.
    assert_eq!(list(ListQuery { after: Some(sq[2]), limit: Some(3), ..Default::default() }).await, sq[3..6]);
    assert_eq!(list(ListQuery { after: Some(sq[2] + 1), limit: Some(3), ..Default::default() }).await, sq[3..6]);
    assert_eq!(list(ListQuery { before: Some(sq[5]), ..Default::default() }).await, sq[..5]);
    assert_eq!(list(ListQuery { after: Some(sq[2]), before: Some(sq[5]), ..Default::default() }).await, sq[3..5]);
    assert_eq!(
        list(ListQuery { after: Some(sq[5]), before: Some(sq[5]), ..Default::default() }).await,
        Vec::<u64>::new()
    );
    assert_eq!(list(ListQuery { after: Some(sq[11]), ..Default::default() }).await, Vec::<u64>::new());
    assert_eq!(list(ListQuery { after: Some(u64::MAX), ..Default::default() }).await, Vec::<u64>::new());
    assert_eq!(list(ListQuery { before: Some(0), ..Default::default() }).await, Vec::<u64>::new());
    assert_eq!(list(ListQuery { before: Some(1), ..Default::default() }).await, Vec::<u64>::new());
    // Newest first.
    let rev: Vec<u64> = sq.iter().rev().copied().collect();
    assert_eq!(list(ListQuery { newest_first: true, ..Default::default() }).await, rev);
    assert_eq!(list(ListQuery { newest_first: true, limit: Some(2), ..Default::default() }).await, rev[..2]);
    assert_eq!(
        list(ListQuery { newest_first: true, before: Some(sq[6]), limit: Some(2), ..Default::default() }).await,
        [sq[5], sq[4]]
    );
    assert_eq!(
        list(ListQuery { newest_first: true, after: Some(sq[9]), ..Default::default() }).await,
        [sq[11], sq[10]]
    );
    // Tag filter, alone and with the others.
    let even: Vec<u64> = sq.iter().step_by(2).copied().collect();
    let tag = |t: &str| Some(t.to_string());
    assert_eq!(list(ListQuery { tag: tag("even"), ..Default::default() }).await, even);
    assert_eq!(list(ListQuery { tag: tag("even"), limit: Some(2), ..Default::default() }).await, even[..2]);
    assert_eq!(list(ListQuery { tag: tag("even"), after: Some(sq[4]), ..Default::default() }).await, even[3..]);
    assert_eq!(list(ListQuery { tag: tag("even"), before: Some(sq[4]), ..Default::default() }).await, even[..2]);
    assert_eq!(
        list(ListQuery { tag: tag("odd"), newest_first: true, limit: Some(2), ..Default::default() }).await,
        [sq[11], sq[9]]
    );
    assert_eq!(list(ListQuery { tag: tag("nope"), ..Default::default() }).await, Vec::<u64>::new());
    // Paging with `after` visits each exactly once.
    let mut paged = Vec::new();
    for _ in 0..20 {
        let page = list(ListQuery { after: paged.last().copied(), limit: Some(5), ..Default::default() }).await;
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, sq);
    // Paging backwards with `before`.
    let mut back: Vec<u64> = Vec::new();
    for _ in 0..20 {
        let page =
            list(ListQuery { before: back.last().copied(), limit: Some(5), newest_first: true, ..Default::default() })
                .await;
        if page.is_empty() {
            break;
        }
        back.extend(page);
    }
    assert_eq!(back, rev);
    // The global list spans both sessions, consecutively.
    assert_eq!(seqs(&service.list_by_sequence(0, None).await.unwrap()), (1..=24).collect::<Vec<_>>());
    assert_eq!(seqs(&service.list_by_sequence(20, Some(2)).await.unwrap()), [21, 22]);
    assert_eq!(seqs(&service.list_by_sequence(u64::MAX, None).await.unwrap()), Vec::<u64>::new());
    // Sessions page in creation order.
    let all_sessions: Vec<_> = service.list_sessions(None, None).await.unwrap().iter().map(|x| x.id).collect();
    assert_eq!(all_sessions, [s, other]);
    assert_eq!(service.list_sessions(None, Some(1)).await.unwrap().iter().map(|x| x.id).collect::<Vec<_>>(), [s]);
    assert_eq!(service.list_sessions(Some(s), None).await.unwrap().iter().map(|x| x.id).collect::<Vec<_>>(), [other]);
    close(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_counters_follow_deletes() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path());
    let s = session(&service, "s").await;
    let other = session(&service, "other").await;
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(cp(&service, s, &format!("{i}"), &["t"]).await);
    }
    let o = cp(&service, other, "o", &[]).await;
    let state = async |service: &Service| {
        let x = service.get_session(s).await.unwrap();
        (x.checkpoint_count, x.last_sequence)
    };
    assert_eq!(state(&service).await, (5, Some(made[4].sequence_number)));
    // Newest: last_sequence moves back (not to the other session's).
    assert_eq!(service.delete_checkpoint(made[4].id, Some(s)).await.unwrap(), s);
    assert_eq!(state(&service).await, (4, Some(made[3].sequence_number)));
    // Middle: last_sequence stays.
    service.delete_checkpoint(made[1].id, None).await.unwrap();
    assert_eq!(state(&service).await, (3, Some(made[3].sequence_number)));
    // Oldest.
    service.delete_checkpoint(made[0].id, None).await.unwrap();
    assert_eq!(state(&service).await, (2, Some(made[3].sequence_number)));
    service.delete_checkpoint(made[3].id, None).await.unwrap();
    assert_eq!(state(&service).await, (1, Some(made[2].sequence_number)));
    service.delete_checkpoint(made[2].id, None).await.unwrap();
    assert_eq!(state(&service).await, (0, None));
    assert_eq!(code(service.delete_checkpoint(made[2].id, None).await), "not_found", "already deleted");
    assert_eq!(
        service.list_checkpoints(s, &ListQuery { tag: Some("t".into()), ..Default::default() }).await.unwrap().len(),
        0
    );
    assert_eq!(metrics(&service).await.total_checkpoints, 1);
    let n = cp(&service, s, "again", &[]).await;
    assert_eq!(state(&service).await, (1, Some(n.sequence_number)));
    // Deleting a session removes its checkpoints and updates the totals.
    let mut third = Vec::new();
    let t = session(&service, "third").await;
    for i in 0..3 {
        third.push(cp(&service, t, &format!("{i}"), &["x"]).await);
    }
    service.annotate(third[0].id, "n".into(), None).await.unwrap();
    assert_eq!(service.delete_session(t).await.unwrap(), 3);
    for c in &third {
        assert_eq!(code(service.get_checkpoint(c.id).await), "not_found");
    }
    let m = metrics(&service).await;
    assert_eq!((m.active_sessions, m.total_sessions_created, m.total_checkpoints), (2, 3, 2));
    assert!(service.list_by_sequence(0, None).await.unwrap().iter().all(|c| c.session_id != t));
    assert_eq!(service.list_sessions(None, None).await.unwrap().len(), 2);
    let last = journal(service.store()).await.pop().unwrap();
    assert_eq!((last.session_id, last.kind), (t, EventKind::SessionDeleted { removed: 3 }));
    assert_eq!(service.get_session(other).await.unwrap().last_sequence, Some(o.sequence_number));
    close(service);
    let service = open(dir.path());
    assert_eq!(state(&service).await, (1, Some(n.sequence_number)));
    assert_eq!(metrics(&service).await.total_checkpoints, 2);
    close(service);
}

// ----- event journal -----------------------------------------------------------

/// Property 1: an event reaches a subscriber only once its change is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_delivered_only_once_durable() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path());
    assert_eq!(service.store().durability(), Durability::Sync);
    let s = session(&service, "s").await;
    let mut sub = service.subscribe(s, None).await.unwrap();
    let marks = service.store().durable_marks();
    let writer = {
        let service = service.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for w in 0..40 {
                let c = service.checkpoint(new_cp(s, &format!("{w}"), &[])).await.unwrap();
                if w % 10 == 9 {
                    service.restore(s, c.id).await.unwrap();
                }
                last = c.sequence_number;
            }
            last
        })
    };
    let mut seen = Vec::new();
    for _ in 0..44 {
        let e = next_event(&mut sub).await;
        let durable = marks.borrow().event_seq;
        assert!(durable >= e.seq, "event {} delivered while only {durable} is durable", e.seq);
        seen.push(e);
    }
    within("writer", writer).await.unwrap();
    assert_strictly_increasing(&seen);
    assert_eq!(seen.iter().filter(|e| matches!(e.kind, EventKind::CheckpointRestored { .. })).count(), 4);
    drop(sub);
    close(service);
}

/// Closing the store ends every subscription, after the events of the
/// writes that were acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_subscriptions_after_the_acknowledged_events() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path());
    let s = session(&service, "s").await;
    let mut live = service.subscribe(s, None).await.unwrap();
    let mut idle = service.subscribe(s, None).await.unwrap();
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(cp(&service, s, &format!("{i}"), &[]).await);
    }
    assert_eq!(next_event(&mut live).await.seq, 1);
    service.close();
    for sub in [&mut live, &mut idle] {
        let mut seen = Vec::new();
        loop {
            match next_delivery(sub).await {
                Some(Delivery::Event(e)) => seen.push(e.seq),
                Some(Delivery::Lagged { .. }) => panic!("not a lag"),
                None => break,
            }
            assert!(seen.len() <= 5);
        }
        assert_eq!(*seen.last().unwrap(), 5, "every acknowledged write's event came first");
    }
    drop((live, idle));
    drop(service);
}

/// Property 2: per subscriber ordered, no duplicates, no gaps, with several
/// concurrent writers and subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_subscriber_gets_every_event_in_order_once() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path());
    let s = session(&service, "watched").await;
    let noise = session(&service, "noise").await;
    let start = service.metrics().await.unwrap().event_sequence;
    let mut subs: Vec<Subscription> = Vec::new();
    for _ in 0..3 {
        subs.push(service.subscribe(s, None).await.unwrap());
    }
    let mut noise_sub = service.subscribe(noise, None).await.unwrap();
    let mut writers = Vec::new();
    for w in 0..4 {
        let service = service.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..60 {
                let target = if w == 3 { noise } else { s };
                let c = service.checkpoint(new_cp(target, &format!("{w}-{i}"), &[])).await.unwrap();
                match i % 15 {
                    7 => {
                        service.restore(target, c.id).await.unwrap();
                    }
                    11 => {
                        service.delete_checkpoint(c.id, None).await.unwrap();
                    }
                    _ => {}
                }
            }
        }));
    }
    // Subscribers read concurrently with the writers.
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut sub| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                // 3 writers x (60 created + 4 restored + 4 deleted + 1 compacted)
                for _ in 0..3 * 69 {
                    got.push(next_event(&mut sub).await);
                }
                (got, sub)
            })
        })
        .collect();
    for w in writers {
        within("writers", w).await.unwrap();
    }
    // One compaction event per writer of `s`, the first removing some.
    for _ in 0..3 {
        service.compact(s, RetentionPolicy { keep_recent: Some(10), preserve_tags: vec![] }).await.unwrap();
    }
    service.compact(noise, RetentionPolicy { keep_recent: Some(10), preserve_tags: vec![] }).await.unwrap();
    let expected = service.store().events(start, u64::MAX, Some(s), usize::MAX).await.unwrap();
    assert_eq!(expected.len(), 3 * 69);
    for r in readers {
        let (got, mut sub) = within("reader", r).await.unwrap();
        let got: Vec<JournalEvent> = got.iter().map(|e| (**e).clone()).collect();
        assert_eq!(got, expected, "a subscriber's events equal the journal's, in order");
        // And nothing more arrives (no duplicate at the end).
        assert!(tokio::time::timeout(Duration::from_millis(50), sub.next()).await.is_err());
    }
    let noise_expected = service.store().events(start, u64::MAX, Some(noise), usize::MAX).await.unwrap();
    let mut noise_got = Vec::new();
    for _ in 0..noise_expected.len() {
        noise_got.push((*next_event(&mut noise_sub).await).clone());
    }
    assert_eq!(noise_got, noise_expected);
    drop(noise_sub);
    close(service);
}

/// Property 3: `since` replays the journal, then continues live with no gap;
/// also across a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_since_replays_then_continues_live() {
    let dir = TempDir::new().unwrap();
    let service = open_with(dir.path(), |c| c.durability = Durability::Async);
    let s = session(&service, "s").await;
    let other = session(&service, "other").await;
    for i in 0..600 {
        cp(&service, if i % 3 == 0 { other } else { s }, &format!("{i}"), &[]).await;
    }
    let since = 37;
    let mut sub = service.subscribe(s, Some(since)).await.unwrap();
    // Writers keep going while the replay is read.
    let writer = {
        let service = service.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                cp(&service, if i % 3 == 0 { other } else { s }, &format!("live{i}"), &[]).await;
            }
            service.metrics().await.unwrap().event_sequence
        })
    };
    let expected_all =
        async |service: &Service, from: u64| service.store().events(from, u64::MAX, Some(s), usize::MAX).await.unwrap();
    let last = within("writer", writer).await.unwrap();
    let last_of_s = expected_all(&service, 0).await.last().unwrap().seq;
    let got = collect_until(&mut sub, last_of_s).await;
    let got: Vec<JournalEvent> = got.iter().map(|e| (**e).clone()).collect();
    assert_eq!(got, expected_all(&service, since).await);
    assert!(last >= last_of_s);

    // Reconnect: read a few, drop, write more, resume from the last seen.
    let mut sub = service.subscribe(s, None).await.unwrap();
    for i in 0..10 {
        cp(&service, s, &format!("r{i}"), &[]).await;
    }
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(next_event(&mut sub).await);
    }
    let resume_from = first.last().unwrap().seq;
    drop(sub);
    for i in 0..20 {
        cp(&service, s, &format!("r2-{i}"), &[]).await;
    }
    let mut sub = service.subscribe(s, Some(resume_from)).await.unwrap();
    let end = service.metrics().await.unwrap().event_sequence;
    let rest = collect_until(&mut sub, end).await;
    assert_strictly_increasing(&rest);
    let rest: Vec<JournalEvent> = rest.iter().map(|e| (**e).clone()).collect();
    assert_eq!(rest, expected_all(&service, resume_from).await);
    assert_eq!(rest.len(), 26);
    // Resuming from the very end replays nothing and continues live.
    drop(sub);
    let mut sub = service.subscribe(s, Some(end)).await.unwrap();
    let c = cp(&service, s, "live", &[]).await;
    let e = next_event(&mut sub).await;
    assert_eq!(e.seq, end + 1);
    assert_eq!(e.kind, EventKind::CheckpointCreated { checkpoint_id: c.id, sequence_number: c.sequence_number });
    drop(sub);
    close(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_since_older_than_retention_is_compacted() {
    let dir = TempDir::new().unwrap();
    let service = open_with(dir.path(), |c| {
        c.event_retention = 10;
        c.durability = Durability::Async;
    });
    let s = session(&service, "s").await;
    for i in 0..30 {
        cp(&service, s, &format!("{i}"), &[]).await;
    }
    assert_eq!(service.store().oldest_event().await.unwrap(), Some(21));
    for since in [0, 5, 19] {
        match service.subscribe(s, Some(since)).await {
            Err(Error::Compacted { requested, oldest }) => {
                assert_eq!((requested, oldest), (since, 21));
                let e = Error::Compacted { requested, oldest };
                assert_eq!(e.code(), "compacted");
                assert!(e.to_string().contains("21"), "names the oldest retained: {e}");
            }
            Err(e) => panic!("expected compacted, got {e}"),
            Ok(_) => panic!("since {since} is older than the journal"),
        }
    }
    // From just before the oldest retained: the whole retained journal.
    let mut sub = service.subscribe(s, Some(20)).await.unwrap();
    let got = collect_until(&mut sub, 30).await;
    assert_eq!(event_seqs(&got), (21..=30).collect::<Vec<_>>());
    drop(sub);
    close(service);
}

/// A replay that starts within retention but whose events are trimmed before
/// the subscriber reads them must not skip them silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_overtaken_by_retention_is_not_a_silent_gap() {
    let dir = TempDir::new().unwrap();
    let service = open_with(dir.path(), |c| {
        c.event_retention = 10;
        c.durability = Durability::Async;
    });
    let s = session(&service, "s").await;
    for i in 0..15 {
        cp(&service, s, &format!("{i}"), &[]).await;
    }
    assert_eq!(service.store().oldest_event().await.unwrap(), Some(6));
    let mut sub = service.subscribe(s, Some(5)).await.unwrap();
    // Before the subscriber reads anything, the journal moves on past it.
    for i in 0..20 {
        cp(&service, s, &format!("more{i}"), &[]).await;
    }
    let mut expect = 6;
    for _ in 0..100 {
        match next_delivery(&mut sub).await {
            Some(Delivery::Event(e)) => {
                assert_eq!(e.seq, expect, "gap in the subscription");
                if e.seq == 35 {
                    break;
                }
                expect += 1;
            }
            Some(Delivery::Lagged { last_seq }) => {
                assert_eq!(last_seq, expect - 1);
                // Resuming tells the client clearly what is gone.
                assert_eq!(code(service.subscribe(s, Some(last_seq)).await), "compacted");
                break;
            }
            None => panic!("subscription ended without a lag notice"),
        }
    }
    drop(sub);
    close(service);
}

/// Property 4: a stalled subscriber slows neither writers nor others; it is
/// told it lagged, after its queued events, and can resume without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_subscriber_blocks_nobody_and_resumes_without_gap() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path());
    let s = session(&service, "s").await;
    let start = service.metrics().await.unwrap().event_sequence;
    let mut stalled = service.subscribe(s, None).await.unwrap();
    let mut active = service.subscribe(s, None).await.unwrap();
    let total = SUBSCRIBER_QUEUE_EVENTS + 300;
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let service = service.clone();
            tokio::spawn(async move {
                let mut i = w;
                while i < total {
                    service.checkpoint(new_cp(s, &format!("{i}"), &[])).await.unwrap();
                    i += 16;
                }
            })
        })
        .collect();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..total {
            got.push(next_event(&mut active).await);
        }
        got
    });
    // Writers finish although one subscriber never reads.
    for w in writers {
        within("writers with a stalled subscriber", w).await.unwrap();
    }
    let got = within("the active subscriber", reader).await.unwrap();
    let journal = service.store().events(start, u64::MAX, Some(s), usize::MAX).await.unwrap();
    assert_eq!(journal.len(), total);
    assert_eq!(got.iter().map(|e| (**e).clone()).collect::<Vec<_>>(), journal);

    // The stalled one: its queue, in order, then the lag notice.
    let mut queued = Vec::new();
    let last_seq = loop {
        match next_delivery(&mut stalled).await {
            Some(Delivery::Event(e)) => {
                queued.push(e);
                assert!(queued.len() <= total, "more events than were written");
            }
            Some(Delivery::Lagged { last_seq }) => break last_seq,
            None => panic!("the stalled subscription ended without a lag notice"),
        }
    };
    assert_eq!(queued.len(), SUBSCRIBER_QUEUE_EVENTS, "the queue holds exactly its capacity");
    assert_eq!(event_seqs(&queued), journal[..queued.len()].iter().map(|e| e.seq).collect::<Vec<_>>());
    assert_eq!(last_seq, queued.last().unwrap().seq);
    assert_eq!(next_delivery(&mut stalled).await, None, "a lagged subscription has ended");
    // Resubscribing from the lag point yields the rest, no gap.
    let mut resumed = service.subscribe(s, Some(last_seq)).await.unwrap();
    let rest = collect_until(&mut resumed, journal.last().unwrap().seq).await;
    let mut all = queued;
    all.extend(rest);
    assert_eq!(all.iter().map(|e| (**e).clone()).collect::<Vec<_>>(), journal);
    drop((stalled, resumed));
    close(service);
}

/// Writers never wait for event dispatch, even when the runtime cannot run
/// it: here the only worker is taken by a writer that never yields (in async
/// mode a write completes without waiting). sled blocks a writer once its
/// watch holds 1024 undrained events, so the watch must be drained
/// independently of the runtime.
#[test]
fn writers_never_wait_for_a_starved_event_dispatcher() {
    let dir = TempDir::new().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _guard = rt.enter();
    let service = open_with(dir.path(), |c| c.durability = Durability::Async);
    let s = rt.block_on(session(&service, "s"));
    let total = 3 * SUBSCRIBER_QUEUE_EVENTS;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let writer = service.clone();
    rt.spawn(async move {
        for i in 0..total {
            writer.checkpoint(new_cp(s, &format!("{i}"), &[])).await.unwrap();
        }
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(STEP).is_err() {
        // The worker is stuck: do not wait for it.
        drop(_guard);
        rt.shutdown_background();
        panic!("a writer blocked: nobody drained the journal watch while the runtime was busy");
    }
    // Dispatch catches up once the runtime is free.
    rt.block_on(async {
        let last = service.metrics().await.unwrap().event_sequence;
        assert_eq!(last, total as u64);
        let mut sub = service.subscribe(s, Some(last - 10)).await.unwrap();
        assert_eq!(event_seqs(&collect_until(&mut sub, last).await), (last - 9..=last).collect::<Vec<_>>());
        let c = cp(&service, s, "one more", &[]).await;
        let e = next_event(&mut sub).await;
        assert_eq!(e.kind, EventKind::CheckpointCreated { checkpoint_id: c.id, sequence_number: c.sequence_number });
    });
    close(service);
}

/// Property 5: the journal keeps at most `event_retention` events; lowering
/// the retention on reopen trims it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_retention_is_bounded_and_lowering_it_trims() {
    let dir = TempDir::new().unwrap();
    let async_retention = |r: u64| {
        move |c: &mut StoreConfig| {
            c.event_retention = r;
            c.durability = Durability::Async;
        }
    };
    let service = open_with(dir.path(), async_retention(10));
    let s = session(&service, "s").await;
    for i in 0..57 {
        let c = cp(&service, s, &format!("{i}"), &[]).await;
        if i % 5 == 0 {
            service.restore(s, c.id).await.unwrap();
        }
        let m = service.metrics().await.unwrap();
        let held = journal(service.store()).await;
        assert!(held.len() <= 10, "journal holds {} events", held.len());
        assert_eq!(held.len() as u64, m.event_sequence.min(10));
        assert_eq!(m.oldest_event, held.first().map(|e| e.seq));
    }
    let m = service.metrics().await.unwrap();
    assert_eq!(m.event_sequence, 57 + 12);
    assert_eq!(m.oldest_event, Some(60));
    assert_eq!(journal(service.store()).await.iter().map(|e| e.seq).collect::<Vec<_>>(), (60..=69).collect::<Vec<_>>());
    close(service);

    let service = open_with(dir.path(), async_retention(4));
    assert_eq!(journal(service.store()).await.iter().map(|e| e.seq).collect::<Vec<_>>(), [66, 67, 68, 69]);
    assert_eq!(service.metrics().await.unwrap().oldest_event, Some(66));
    assert_eq!(code(service.subscribe(s, Some(64)).await), "compacted");
    cp(&service, s, "one more", &[]).await;
    assert_eq!(journal(service.store()).await.iter().map(|e| e.seq).collect::<Vec<_>>(), [67, 68, 69, 70]);
    close(service);

    // Raising it again keeps what is there and grows up to the new bound.
    let service = open_with(dir.path(), async_retention(6));
    for i in 0..3 {
        cp(&service, s, &format!("x{i}"), &[]).await;
    }
    assert_eq!(journal(service.store()).await.iter().map(|e| e.seq).collect::<Vec<_>>(), (68..=73).collect::<Vec<_>>());
    close(service);
}

// ----- integrity -------------------------------------------------------------

/// Reads concurrent with writes never see a half-written checkpoint as
/// damaged, nor a listed checkpoint as missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validate_and_reads_concurrent_with_writes_see_no_damage() {
    let dir = TempDir::new().unwrap();
    let service = open_with(dir.path(), |c| c.durability = Durability::Async);
    let s = session(&service, "s").await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let service = service.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    let state = format!(r#"{{"w":{w},"i":{i},"pad":"{}"}}"#, "p".repeat(200));
                    let new = NewCheckpoint { state: Some(raw(&state)), ..new_cp(s, &format!("{w}-{i}"), &["t"]) };
                    let c = service.checkpoint(new).await.unwrap();
                    if i % 4 == 3 {
                        service.delete_checkpoint(c.id, None).await.unwrap();
                    }
                }
            })
        })
        .collect();
    let reader = {
        let service = service.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut rounds = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) && rounds < 100_000 {
                rounds += 1;
                let v = service.validate(None).await.unwrap();
                assert_eq!(v.invalid, 0, "validate during writes reported {:?} as damaged", v.invalid_ids);
                // What an index lists can be read.
                let newest = service.metrics().await.unwrap().global_sequence.saturating_sub(5);
                for c in service.list_by_sequence(newest, Some(5)).await.unwrap() {
                    match service.get_checkpoint(c.id).await {
                        Ok(full) => assert_eq!(full.summary.sequence_number, c.sequence_number),
                        // Deleted since it was listed.
                        Err(e) if e.code() == "not_found" => {
                            let i: u32 = c.message.split('-').nth(1).unwrap().parse().unwrap();
                            assert_eq!(i % 4, 3, "listed {} then not found", c.message);
                        }
                        Err(e) => panic!("reading a listed checkpoint: {e}"),
                    }
                }
            }
            rounds
        })
    };
    for w in writers {
        within("writers", w).await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let rounds = within("reader", reader).await.unwrap();
    assert!(rounds > 0);
    assert_eq!(service.validate(None).await.unwrap().invalid, 0);
    close(service);
}

/// Flips one byte in the middle of the value at `key` in `tree`, through sled.
fn flip_byte(data_dir: &Path, tree: &str, key: &[u8]) {
    let db = open_when_unlocked("raw sled open", || sled::open(data_dir).map_err(|e| e.to_string()));
    let t = db.open_tree(tree).unwrap();
    let mut value = t.get(key).unwrap().expect("record present").to_vec();
    let mid = value.len() / 2;
    value[mid] ^= 0x20;
    t.insert(key, value).unwrap();
    t.flush().unwrap();
    db.flush().unwrap();
}

fn checkpoint_key(session: SessionId, seq: u64) -> Vec<u8> {
    let mut k = session.as_bytes().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reports_a_flipped_byte() {
    for tree in ["checkpoints", "states"] {
        let dir = TempDir::new().unwrap();
        let service = open(dir.path());
        let s = session(&service, "s").await;
        let other = session(&service, "other").await;
        let mut made = Vec::new();
        for i in 0..6 {
            let state = format!(r#"{{"i":{i},"payload":"{}"}}"#, "z".repeat(100));
            let new = NewCheckpoint {
                state: Some(raw(&state)),
                metadata: Some(raw(r#"{"some":"metadata to make the record longer"}"#)),
                ..new_cp(if i % 2 == 0 { s } else { other }, &format!("message number {i}"), &["a", "b"])
            };
            made.push(service.checkpoint(new).await.unwrap());
        }
        assert_eq!(
            service.validate(None).await.unwrap(),
            checkpointd::model::Validation { valid: 6, ..Default::default() }
        );
        close(service);

        let victim = &made[2];
        flip_byte(&config(dir.path()).data_dir, tree, &checkpoint_key(s, victim.sequence_number));

        let service = open(dir.path());
        let v = service.validate(None).await.unwrap();
        assert_eq!((v.valid, v.invalid, v.invalid_ids.clone()), (5, 1, vec![victim.id]), "tree {tree}");
        let v = service.validate(Some(s)).await.unwrap();
        assert_eq!((v.valid, v.invalid, v.invalid_ids.clone()), (2, 1, vec![victim.id]), "tree {tree}");
        let v = service.validate(Some(other)).await.unwrap();
        assert_eq!((v.valid, v.invalid), (3, 0), "tree {tree}");
        // Reading it is an error, not a panic and not wrong data.
        assert_eq!(code(service.get_checkpoint(victim.id).await), "internal", "tree {tree}");
        // Its neighbours are fine.
        assert!(service.get_checkpoint(made[0].id).await.is_ok());
        assert!(service.get_checkpoint(made[4].id).await.is_ok());
        close(service);
    }
}

/// Rewrites the counters record through sled, with nothing pending to
/// re-apply over it (a damaged or absurdly imported directory).
fn set_counters(dir: &Path, edit: impl Fn(&mut checkpointd::storage::records::Counters)) {
    use checkpointd::storage::{codec, keys};
    let dir = &config(dir).data_dir;
    let db = open_when_unlocked("raw sled open", || sled::open(dir).map_err(|e| e.to_string()));
    let meta = db.open_tree("meta").unwrap();
    let mut c = codec::decode(&meta.get(keys::META_COUNTERS).unwrap().unwrap(), "counters").unwrap();
    edit(&mut c);
    meta.insert(keys::META_COUNTERS, codec::encode(&c)).unwrap();
    meta.remove(keys::META_INTENT).unwrap();
    db.flush().unwrap();
    // The mark beside the data would (rightly) refuse counters that went down.
    let _ = std::fs::remove_file(dir.join(checkpointd::storage::datadir::MARK_FILE));
}

/// Counters read from disk are not trusted to stay in range: sequences at
/// the end of u64 refuse writes instead of wrapping around to reuse numbers,
/// and counts lower than what is stored never go below zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_from_disk_never_overflow() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path());
    let s = session(&service, "s").await;
    let a = service.checkpoint(new_cp(s, "a", &[])).await.unwrap();
    let b = service.checkpoint(new_cp(s, "b", &[])).await.unwrap();
    close(service);

    // Counts below what is stored: deleting everything ends at zero.
    set_counters(dir.path(), |c| c.checkpoints = 1);
    let service = open(dir.path());
    service.delete_checkpoint(a.id, None).await.unwrap();
    service.delete_checkpoint(b.id, None).await.unwrap();
    assert_eq!(service.metrics().await.unwrap().total_checkpoints, 0);
    assert_eq!(service.store().session(s).await.unwrap().checkpoint_count, 0);
    service.delete_session(s).await.unwrap();
    close(service);

    // Sequences at the end of u64: reads work, writes are refused.
    set_counters(dir.path(), |c| c.global_seq = u64::MAX);
    let service = open(dir.path());
    assert!(service.list_sessions(None, None).await.unwrap().is_empty());
    let err = service.create_session(Some("t".into()), None).await.unwrap_err();
    assert!(err.to_string().contains("exhausted"), "{err}");
    close(service);
    set_counters(dir.path(), |c| {
        c.global_seq = 1;
        c.event_seq = u64::MAX - 1;
    });
    let service = open(dir.path());
    assert!(service.create_session(Some("t".into()), None).await.unwrap_err().to_string().contains("exhausted"));
    close(service);
}
