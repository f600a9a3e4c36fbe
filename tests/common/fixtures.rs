//! Data to test with: the fixtures under `tests/fixtures/`, and a sled data
//! directory with one of everything ([`populate`], also the generator of
//! `tests/fixtures/v1`) for the tests of the binaries that read one.

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
            state: state.map(raw),
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
