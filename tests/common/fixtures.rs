//! Data to test with: the fixtures under `tests/fixtures/`, and sled data
//! directories with one of everything for the tests of the binaries that
//! read one: [`populate`] (the generator of `tests/fixtures/v1`),
//! [`populate_format2`] (format 2's data, imported from
//! [`format2_export`]) and [`populate_v2`] (both, and format 2's
//! operations: the generator of `tests/fixtures/v2`).

use super::fs::wait_unlocked;
use super::inproc::open_store;
use checkpointd::config::StoreConfig;
use checkpointd::model::{CheckpointId, NewCheckpoint, RetentionPolicy, SessionId, Severity, Trigger};
use checkpointd::service::Service;
use serde_json::value::RawValue;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn fixture(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("v{version}"))
}

pub fn fixture_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_string()).expect("valid JSON")
}

/// What [`populate`] made.
#[derive(Debug, Clone)]
pub struct Populated {
    pub agent: SessionId,
    pub batch: SessionId,
    pub plan: CheckpointId,
    pub step: CheckpointId,
    pub deleted: CheckpointId,
    pub batch_kept: CheckpointId,
}

/// Fills `dir` through the service, as a server would: sessions with names
/// and metadata, checkpoints with tags, state, metadata, parent and every
/// trigger, annotations, a restore, a delete, a compaction, a deleted
/// session and a retention policy.
pub fn populate(dir: &Path) -> Populated {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let made = rt.block_on(async {
        let svc = Service::new(Arc::new(open_store(&StoreConfig::new(dir))));
        let new = |session_id, message: &str, tags: &[&str], trigger, state: Option<&str>, parent_id| NewCheckpoint {
            session_id,
            message: message.to_string(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            trigger,
            state: state.map(|s| raw(s).into()),
            metadata: Some(raw(r#"{"host":"fixture","attempt":1}"#)),
            parent_id,
            namespace: String::new(),
            external_id: None,
            parent_external_id: None,
        };
        let agent = svc.create_session(Some("agent-a".into()), Some(raw(r#"{"owner":"ops","n":1}"#))).await.unwrap();
        let batch = svc.create_session(Some("batch-b".into()), None).await.unwrap();
        let doomed = svc.create_session(Some("doomed".into()), None).await.unwrap();
        let plan = svc
            .checkpoint(new(
                agent.id,
                "plan",
                &["plan", "keep"],
                Trigger::Manual,
                Some(r#"{"step": 1, "nested": {"z": 1, "a": [1, 2.50, "x"]}}"#),
                None,
            ))
            .await
            .unwrap();
        let step = svc
            .checkpoint(new(
                agent.id,
                "step two\nsecond line",
                &["wip"],
                Trigger::Auto(Some("tool_call".into())),
                Some(r#"{"step":2}"#),
                Some(plan.id),
            ))
            .await
            .unwrap();
        let deleted =
            svc.checkpoint(new(agent.id, "scratch", &[], Trigger::Scheduled, None, Some(step.id))).await.unwrap();
        let mut batch_ids = Vec::new();
        for i in 0..3 {
            let state = format!(r#"{{"i":{i}}}"#);
            let cp = svc
                .checkpoint(new(batch.id, &format!("batch {i}"), &["b"], Trigger::Auto(None), Some(&state), None))
                .await
                .unwrap();
            batch_ids.push(cp.id);
        }
        svc.checkpoint(new(doomed.id, "gone", &["x"], Trigger::Manual, Some("[1,2,3]"), None)).await.unwrap();
        svc.annotate(plan.id, "looks good".into(), None).await.unwrap();
        svc.annotate(step.id, "regressed\there".into(), Some(Severity::Critical)).await.unwrap();
        svc.annotate(step.id, "second note".into(), Some(Severity::Warning)).await.unwrap();
        svc.restore(agent.id, plan.id).await.unwrap();
        svc.delete_checkpoint(deleted.id, None).await.unwrap();
        let compacted = svc.compact(batch.id, RetentionPolicy { keep_recent: Some(1), preserve_tags: vec![] }).await;
        assert_eq!(compacted.unwrap().removed, 2);
        svc.delete_session(doomed.id).await.unwrap();
        svc.set_retention(
            agent.id,
            Some(RetentionPolicy { keep_recent: Some(50), preserve_tags: vec!["keep".into()] }),
        )
        .await
        .unwrap();
        svc.close();
        Populated {
            agent: agent.id,
            batch: batch.id,
            plan: plan.id,
            step: step.id,
            deleted: deleted.id,
            batch_kept: batch_ids[2],
        }
    });
    drop(rt);
    wait_unlocked(dir);
    made
}

/// Sessions and checkpoints of [`format2_export`].
pub const F2_THREAD: &str = "5a4e0c39-93b1-4c1e-8d11-0b0a3c5e7f01";
pub const F2_PLAIN: &str = "b6f3d2aa-1c2d-4e5f-9a0b-1c2d3e4f5a02";
pub const F2_CK1: &str = "0c1f2e3d-4b5a-4697-8877-665544332201";
pub const F2_CK2: &str = "0c1f2e3d-4b5a-4697-8877-665544332202";
pub const F2_CHILD: &str = "0c1f2e3d-4b5a-4697-8877-665544332203";
pub const F2_PLAIN_CP: &str = "0c1f2e3d-4b5a-4697-8877-665544332204";

/// An export (version 2) of a directory using everything format 2 added: a
/// session with a client key and one without; checkpoints in the root
/// namespace and in another, with external ids (one repeated across
/// namespaces) and a parent named by both ids; and pending writes: of a
/// stored checkpoint (ordered by task path apart from key order, a
/// negative idx), of a checkpoint not stored (with a value that spans
/// lines), and in the other namespace. Lines are in export order, so an
/// export of the imported directory gives them back.
pub fn format2_export() -> String {
    use serde_json::json;
    let t = |n: u32| format!("2026-11-30T15:{n:02}:00.123456Z");
    let lines = [
        json!({"type": "header", "export_version": 2, "format_version": checkpointd::storage::migrate::CURRENT_FORMAT, "global_sequence": 10, "event_sequence": 4,
               "sessions_created": 2, "sessions": 2, "checkpoints": 4, "annotations": 1, "writes": 5,
               "exported_at": t(59)}),
        json!({"type": "session", "id": F2_THREAD, "ordinal": 1, "name": "thread one", "created_at": t(0),
               "metadata": {}, "retention": null, "key": "thread-1"}),
        json!({"type": "checkpoint", "id": F2_CK1, "session_id": F2_THREAD, "sequence_number": 3, "timestamp": t(1),
               "message": "", "tags": [], "trigger": "manual", "parent_id": null,
               "metadata": {"source": "input", "step": -1}, "state": {"v": 1}, "external_id": "ck-1"}),
        json!({"type": "checkpoint", "id": F2_CK2, "session_id": F2_THREAD, "sequence_number": 5, "timestamp": t(2),
               "message": "loop", "tags": ["t"], "trigger": "auto:step", "parent_id": F2_CK1,
               "metadata": {"source": "loop", "step": 0}, "state": {"v": 2}, "external_id": "ck-2",
               "parent_external_id": "ck-1"}),
        json!({"type": "annotation", "checkpoint_id": F2_CK2, "index": 0, "note": "seen", "severity": "info",
               "timestamp": t(3)}),
        json!({"type": "checkpoint", "id": F2_CHILD, "session_id": F2_THREAD, "sequence_number": 6, "timestamp": t(4),
               "message": "", "tags": [], "trigger": "manual", "parent_id": null, "metadata": {},
               "state": null, "namespace": "child:1", "external_id": "ck-1"}),
        json!({"type": "write", "session_id": F2_THREAD, "namespace": "", "external_id": "ck-2", "task_id": "t-a",
               "task_path": "z-path", "idx": -1, "channel": "__error__", "value": {"type": "json", "v": "boom"}}),
        json!({"type": "write", "session_id": F2_THREAD, "namespace": "", "external_id": "ck-2", "task_id": "t-b",
               "task_path": "a-path", "idx": 0, "channel": "messages", "value": [1, 2.50]}),
        json!({"type": "write", "session_id": F2_THREAD, "namespace": "", "external_id": "ck-2", "task_id": "t-b",
               "task_path": "a-path", "idx": 1, "channel": "tools", "value": "x"}),
        json!({"type": "write", "session_id": F2_THREAD, "namespace": "", "external_id": "ck-3", "task_id": "t-c",
               "task_path": "", "idx": 0, "channel": "messages", "value": null, "value_text": "{\n  \"later\": true\n}"}),
        json!({"type": "write", "session_id": F2_THREAD, "namespace": "child:1", "external_id": "ck-1",
               "task_id": "t-d", "task_path": "p", "idx": 2, "channel": "c", "value": {}}),
        json!({"type": "session", "id": F2_PLAIN, "ordinal": 2, "name": "plain", "created_at": t(5),
               "metadata": {"n": 1}, "retention": null}),
        json!({"type": "checkpoint", "id": F2_PLAIN_CP, "session_id": F2_PLAIN, "sequence_number": 10,
               "timestamp": t(6), "message": "m", "tags": [], "trigger": "scheduled", "parent_id": null,
               "metadata": {}, "state": [1]}),
    ];
    let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    // serde_json's Value renders 2.50 as 2.5; keep the client's bytes.
    text = text.replace("[1,2.5]", "[1, 2.50]");
    text
}

/// Fills an empty `dir` with [`format2_export`] (imported in process).
pub fn populate_format2(dir: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let store = open_store(&StoreConfig::new(dir));
        let counts = checkpointd::transfer::import(&store, format2_export().as_bytes()).await.expect("import");
        assert_eq!((counts.sessions, counts.checkpoints, counts.writes), (2, 4, 5));
        checkpointd::storage::Backend::close(&store);
    });
    drop(rt);
    wait_unlocked(dir);
}

/// Fills an empty `dir` with one of everything format 2 stores, as the
/// generator of `tests/fixtures/v2`: [`format2_export`] imported (client
/// keys, namespaces, external ids, a parent by external id, pending writes,
/// some of a checkpoint never stored), then [`populate`]'s activity (every
/// format-1 record and event kind), then through the service a session
/// opened by its key (twice: one session), checkpoints in two namespaces
/// with external ids and a parent named by its external id, a retried
/// checkpoint stored once, a restore of an imported checkpoint, and a keyed
/// session deleted (its key freed). Returns what [`populate`] made.
///
/// When the service has `put_writes` and `copy_session`, add them here so
/// that the fixture journals `writes_stored` and `session_copied`, and cut
/// the fixture again (format 2 is not released yet).
pub fn populate_v2(dir: &Path) -> Populated {
    populate_format2(dir);
    let made = populate(dir);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let svc = Service::new(Arc::new(open_store(&StoreConfig::new(dir))));
        let meta = Some(raw(r#"{"user":"u-7"}"#));
        let (s, created) = svc.open_session("thread-2".into(), Some("second thread".into()), meta).await.unwrap();
        assert!(created);
        let (again, created) = svc.open_session("thread-2".into(), None, None).await.unwrap();
        assert!(!created && again.id == s.id);
        let new = |namespace: &str, external: &str, parent: Option<&str>, step: i64| NewCheckpoint {
            session_id: s.id,
            message: String::new(),
            tags: vec![],
            trigger: Trigger::Auto(Some("loop".into())),
            state: Some(raw(&format!(r#"{{"type":"msgpack","base64":"gqF2{step:02}"}}"#)).into()),
            metadata: Some(raw(&format!(r#"{{"source":"loop","step":{step},"run_id":"r-1"}}"#))),
            parent_id: None,
            namespace: namespace.to_string(),
            external_id: Some(external.to_string()),
            parent_external_id: parent.map(String::from),
        };
        let first = svc.checkpoint(new("", "1f0a-0001", None, -1)).await.unwrap();
        let second = svc.checkpoint(new("", "1f0a-0002", Some("1f0a-0001"), 0)).await.unwrap();
        assert_eq!(second.parent_id, Some(first.id));
        let retried = svc.checkpoint(new("", "1f0a-0002", Some("1f0a-0001"), 0)).await.unwrap();
        assert_eq!(retried.id, second.id, "a repeated external id stores nothing");
        svc.checkpoint(new("agent:7c1e", "1f0a-0001", None, 1)).await.unwrap();
        svc.restore(F2_THREAD.parse().unwrap(), F2_CK2.parse().unwrap()).await.unwrap();
        let (gone, _) = svc.open_session("thread-gone".into(), None, None).await.unwrap();
        svc.delete_session(gone.id).await.unwrap();
        svc.close();
    });
    drop(rt);
    wait_unlocked(dir);
    made
}

/// Fills an empty `dir` with one of everything format 3 stores, as the
/// generator of `tests/fixtures/v3`: [`populate_v2`], then pending writes
/// and a copied session through the service (journaling `writes_stored` and
/// `session_copied`), and values large enough for the state segments: two
/// states and a pending write over 8 KiB, one of the states then compacted
/// away (dead bytes in a segment). Returns what [`populate`] made.
pub fn populate_v3(dir: &Path) -> Populated {
    use checkpointd::model::{NewWrites, RetentionPolicy};
    let made = populate_v2(dir);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let svc = Service::new(Arc::new(open_store(&StoreConfig::new(dir))));
        let (s, _) = svc.open_session("thread-3".into(), Some("large states".into()), None).await.unwrap();
        let big = |n: u32| raw(&format!(r#"{{"step":{n},"scratch":"{}"}}"#, "ab".repeat(6000 + n as usize)));
        for (n, external) in [(1, "big-1"), (2, "big-2")] {
            let new = NewCheckpoint {
                session_id: s.id,
                message: format!("large {n}"),
                tags: vec![],
                trigger: Trigger::Auto(Some("loop".into())),
                state: Some(big(n).into()),
                metadata: Some(raw(&format!(r#"{{"step":{n}}}"#))),
                parent_id: None,
                namespace: String::new(),
                external_id: Some(external.into()),
                parent_external_id: None,
            };
            svc.checkpoint(new).await.unwrap();
        }
        let writes = NewWrites {
            session_id: s.id,
            namespace: String::new(),
            external_id: "big-2".into(),
            task_id: "t-big".into(),
            task_path: "p".into(),
            writes: vec![(0, "messages".into(), big(3)), (1, "small".into(), raw("[1]"))],
        };
        assert_eq!(svc.put_writes(writes).await.unwrap(), 2);
        let policy = RetentionPolicy { keep_recent: Some(1), preserve_tags: vec![] };
        assert_eq!(svc.compact(s.id, policy).await.unwrap().removed, 1);
        let (copy, copied) = svc.copy_session(s.id, Some("thread-3-copy".into()), None, None).await.unwrap();
        assert_eq!((copied, copy.key.as_deref()), (1, Some("thread-3-copy")));
        svc.close();
    });
    drop(rt);
    wait_unlocked(dir);
    made
}
