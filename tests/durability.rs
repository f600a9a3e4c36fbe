//! Acknowledged means durable: everything acknowledged survives a close and
//! restart (of the service, and of the binary after SIGTERM or SIGKILL),
//! writes after a close are refused, and sequence numbers are one-based,
//! consecutive and never reused, also after deleting the newest and
//! restarting.

mod common;

use checkpointd::model::{
    CheckpointId, Compaction, ListQuery, NewCheckpoint, RetentionPolicy, SessionId, Severity, Trigger,
};
use checkpointd::service::Service;
use common::child::{self, Daemon};
use common::fs::{data, tempdir};
use common::inproc::{close, open};
use common::svc::*;
use common::wire::{bounded, ok, spawn_writers};
use serde_json::json;
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_everything() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path()).await;
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
            state: Some(raw(state1).into()),
            metadata: Some(raw(r#"{"step": 1, "host": null}"#)),
            parent_id: None,
            namespace: String::new(),
            external_id: None,
            parent_external_id: None,
        })
        .await
        .unwrap();
    let c2 = service
        .checkpoint(NewCheckpoint {
            session_id: a.id,
            message: "".into(),
            tags: vec![],
            trigger: Trigger::Scheduled,
            state: Some(raw(r#""just a string with \n newline""#).into()),
            metadata: None,
            parent_id: Some(c1.id),
            namespace: String::new(),
            external_id: None,
            parent_external_id: None,
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
            namespace: String::new(),
            external_id: None,
            parent_external_id: None,
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

    let service = open(dir.path()).await;
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
    let service = open(dir.path()).await;
    assert_eq!(service.metrics().await.unwrap().global_sequence, 15);
    assert_eq!(service.get_checkpoint(child.id).await.unwrap().summary.parent_id, Some(c8.id));
    close(service);
}

/// Writes after `close` are refused instead of waiting forever for a flush
/// that will never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_close_are_refused() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path()).await;
    let s = session(&service, "s").await;
    service.close();
    let r = within("a write after close", service.checkpoint(new_cp(s, "late", &[]))).await;
    assert_eq!(code(r), "unavailable");
    assert!(!service.health().healthy, "a closed store does not report healthy");
    drop(service);
    let service = open(dir.path()).await;
    assert_eq!(service.metrics().await.unwrap().global_sequence, 0, "the refused write was not kept");
    assert_eq!(service.get_session(s).await.unwrap().checkpoint_count, 0);
    close(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_is_never_reused_after_deleting_the_newest_and_restarting() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path()).await;
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

    let service = open(dir.path()).await;
    assert_eq!(service.metrics().await.unwrap().global_sequence, highest);
    let n = cp(&service, a, "after restart", &[]).await;
    assert!(n.sequence_number > highest, "sequence {} reused (highest earlier {highest})", n.sequence_number);
    assert_eq!(n.sequence_number, highest + 1);
    let m = cp(&service, b, "in the emptied session", &[]).await;
    assert_eq!(m.sequence_number, highest + 2);
    // Deleting a whole session does not free its numbers either.
    service.delete_session(b).await.unwrap();
    close(service);
    let service = open(dir.path()).await;
    assert_eq!(cp(&service, a, "again", &[]).await.sequence_number, highest + 3);
    close(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_sequence_is_one_based_consecutive_and_failed_writes_consume_none() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_restarted_after_sigterm_keeps_everything() {
    let dir = tempdir();
    let mut server = Daemon::serve(&data(&dir), &[]);
    let mut c = server.connect().await;
    let sid = bounded("s", c.create_session("keep me")).await.unwrap();
    ok(&mut c, "set_retention", json!({"session_id": sid, "keep_recent": 50, "preserve_tags": ["m"]})).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let extra = json!({"tags": [format!("t{i}")], "metadata": {"i": i}, "trigger": "scheduled"});
        ids.push(
            bounded("c", c.checkpoint(&sid, &format!("c{i}"), json!({"step": i, "x": 2.5}), extra)).await.unwrap(),
        );
    }
    ok(&mut c, "annotate", json!({"checkpoint_id": ids[3], "note": "n", "severity": "critical"})).await;
    ok(&mut c, "delete_checkpoint", json!({"checkpoint_id": ids[9]})).await;
    let empty = bounded("s", c.create_session("empty")).await.unwrap();
    ok(&mut c, "delete_session", json!({"session_id": empty})).await;

    let before_metrics = ok(&mut c, "metrics", json!({})).await;
    let before_session = ok(&mut c, "get_session", json!({"session_id": sid})).await;
    let mut before_records = Vec::new();
    for id in &ids[..9] {
        before_records.push(ok(&mut c, "get_checkpoint", json!({"checkpoint_id": id})).await);
    }
    let before_sessions = ok(&mut c, "list_sessions", json!({})).await;

    assert_eq!(server.terminate().code(), Some(0));
    let mut server = server.respawn();
    let mut c = server.connect().await;
    let m = ok(&mut c, "metrics", json!({})).await;
    for field in ["total_checkpoints", "active_sessions", "total_sessions_created", "global_sequence", "event_sequence"]
    {
        assert_eq!(m[field], before_metrics[field], "{field} changed across a restart");
    }
    assert_eq!(ok(&mut c, "get_session", json!({"session_id": sid})).await, before_session);
    for (id, before) in ids[..9].iter().zip(&before_records) {
        assert_eq!(&ok(&mut c, "get_checkpoint", json!({"checkpoint_id": id})).await, before);
    }
    assert_eq!(ok(&mut c, "list_sessions", json!({})).await, before_sessions);
    assert_eq!(ok(&mut c, "validate", json!({})).await["invalid"], 0);
    // Sequences continue; the deleted newest one is not reused.
    let deleted_seq = before_records[8]["sequence_number"].as_u64().unwrap() + 1;
    let next = bounded("c", c.checkpoint(&sid, "after restart", json!(1), json!({}))).await.unwrap();
    let seq = ok(&mut c, "get_checkpoint", json!({"checkpoint_id": next})).await["sequence_number"].as_u64().unwrap();
    assert!(seq > deleted_seq, "sequence {seq} reused after restart");
    // The journal survived: a subscriber resumes from before the restart.
    ok(&mut c, "subscribe", json!({"session_id": sid, "since": 0})).await;
    let first = bounded("event", c.next_event(child::STEP)).await.unwrap().expect("no replayed event");
    assert_eq!(first["event_type"], "checkpoint_created");
    assert_eq!(first["data"]["checkpoint_id"], ids[0].as_str());
    assert_eq!(server.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_checkpoint() {
    let dir = tempdir();
    let mut server = Daemon::serve(&data(&dir), &[]);
    let mut c = server.connect().await;
    let sid = bounded("s", c.create_session("crash")).await.unwrap();
    let (acked, mut enough_rx, writers) = spawn_writers(server.url(), &sid, 4);
    bounded("writes", enough_rx.wait_for(|&n| n >= 200)).await.unwrap();
    server.signal("KILL");
    let status = server.wait_exit(child::STEP).expect("no exit after SIGKILL");
    assert!(!status.success());
    for w in writers {
        let _ended_by = bounded("writer", w).await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200);

    let mut server = server.respawn();
    let mut c = server.connect().await;
    for (id, n) in &acked {
        let record = ok(&mut c, "get_checkpoint", json!({"checkpoint_id": id})).await;
        assert_eq!(record["state"], json!({"n": n}), "{id}");
        assert_eq!(record["session_id"], sid.as_str());
    }
    let v = ok(&mut c, "validate", json!({})).await;
    assert_eq!(v["invalid"], 0, "{v}");
    let count = ok(&mut c, "get_session", json!({"session_id": sid})).await["checkpoint_count"].as_u64().unwrap();
    assert!(count as usize >= acked.len());
    let list = bounded("list", c.list_checkpoints(&sid, json!({}))).await.unwrap();
    assert_eq!(list.len() as u64, count, "checkpoint_count disagrees with the list");
    assert_eq!(ok(&mut c, "metrics", json!({})).await["total_checkpoints"], count);
    assert_eq!(server.terminate().code(), Some(0));
}
