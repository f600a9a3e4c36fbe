//! Retention: `compact` and a session's retention policy remove exactly the
//! checkpoints the policy does not keep, everywhere they are indexed, never
//! the newest or another session's, also concurrently with writers; the
//! event journal keeps at most `event_retention` events.

mod common;

use checkpointd::config::{Durability, StoreConfig};
use checkpointd::model::{CheckpointId, Compaction, EventKind, ListQuery, RetentionPolicy};
use checkpointd::service::Service;
use common::fs::open_sled;
use common::inproc::{BackendKind, TestServer, backend_kind, close, config, open, open_with};
use common::svc::*;
use common::wire::*;
use common::{svc, wire};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_and_retention() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let mut watcher = server.connect().await;
    let sid = wire::session(&mut c, "s").await;
    ok(&mut watcher, "subscribe", json!({"session_id": sid})).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let tags = if i == 1 { json!(["milestone"]) } else { json!([]) };
        ids.push(
            bounded("checkpoint", c.checkpoint(&sid, &format!("c{i}"), json!(i), json!({"tags": tags}))).await.unwrap(),
        );
    }
    for _ in 0..6 {
        assert_eq!(wire::next_event(&mut watcher).await["event_type"], "checkpoint_created");
    }

    for bad in [json!({"session_id": sid}), json!({"session_id": sid, "keep_recent": null, "preserve_tags": null})] {
        assert_eq!(err(&mut c, "compact", bad).await.1, "invalid_params");
    }
    for bad in [
        json!({"session_id": sid, "keep_recent": "2"}),
        json!({"session_id": sid, "keep_recent": -1}),
        json!({"session_id": sid, "keep_recent": 1.5}),
        json!({"session_id": sid, "preserve_tags": "milestone"}),
        json!({"session_id": sid, "preserve_tags": [1]}),
    ] {
        assert_eq!(err(&mut c, "compact", bad.clone()).await.1, "invalid_params", "{bad}");
        assert_eq!(err(&mut c, "set_retention", bad.clone()).await.1, "invalid_params", "{bad}");
    }

    let result =
        ok(&mut c, "compact", json!({"session_id": sid, "keep_recent": 2, "preserve_tags": ["milestone"]})).await;
    assert_eq!(result, json!({"removed": 3, "remaining": 3}));
    let ev = wire::next_event(&mut watcher).await;
    assert_eq!(ev["event_type"], "checkpoints_compacted");
    assert_eq!(ev["data"]["session_id"], sid.as_str());
    assert_eq!(ev["data"]["removed"], 3);
    assert_eq!(ev["data"]["remaining"], 3);
    assert!(is_timestamp(&ev["data"]["timestamp"]));
    let left: Vec<Value> = bounded("list", c.list_checkpoints(&sid, json!({}))).await.unwrap();
    let left: Vec<&str> = left.iter().map(|x| s(&x["id"])).collect();
    assert_eq!(left, vec![ids[1].as_str(), ids[4].as_str(), ids[5].as_str()]);

    // keep_recent 0 keeps only the preserved ones.
    let result =
        ok(&mut c, "compact", json!({"session_id": sid, "keep_recent": 0, "preserve_tags": ["milestone"]})).await;
    assert_eq!(result, json!({"removed": 2, "remaining": 1}));
    let ev = wire::next_event(&mut watcher).await;
    assert_eq!((ev["data"]["removed"].clone(), ev["data"]["remaining"].clone()), (json!(2), json!(1)));

    // set_retention returns the policy; get_session shows it; null clears it.
    let policy = ok(&mut c, "set_retention", json!({"session_id": sid, "keep_recent": 2})).await;
    assert_eq!(policy, json!({"keep_recent": 2, "preserve_tags": []}));
    assert_eq!(ok(&mut c, "get_session", json!({"session_id": sid})).await["retention"], policy);
    for i in 0..3 {
        checkpoint(&mut c, &sid, &format!("r{i}")).await;
    }
    let count = ok(&mut c, "get_session", json!({"session_id": sid})).await["checkpoint_count"].clone();
    assert_eq!(count, 2, "retention keeps the 2 most recent");
    let mut compactions = 0;
    for _ in 0..16 {
        let Some(ev) = bounded("event", watcher.next_event(QUIET)).await.unwrap() else { break };
        if ev["event_type"] == "checkpoints_compacted" {
            compactions += 1;
            assert_eq!(ev["data"]["remaining"], 2, "{ev}");
        }
    }
    assert!(compactions >= 1, "retention emitted no checkpoints_compacted");
    assert_eq!(
        ok(&mut c, "set_retention", json!({"session_id": sid, "keep_recent": null, "preserve_tags": null})).await,
        Value::Null
    );
    assert_eq!(ok(&mut c, "set_retention", json!({"session_id": sid})).await, Value::Null);
    assert_eq!(ok(&mut c, "get_session", json!({"session_id": sid})).await["retention"], Value::Null);
    let tags_only = ok(&mut c, "set_retention", json!({"session_id": sid, "preserve_tags": ["keep"]})).await;
    assert_eq!(tags_only, json!({"keep_recent": null, "preserve_tags": ["keep"]}));
}

/// A session of 10 checkpoints (index 0..10, oldest first): every third one
/// (0, 3, 6, 9) tagged `keep`, index 4 tagged `milestone`; plus another
/// session interleaved. Applies `policy` and checks that exactly `kept`
/// survive, everywhere the store indexes them.
async fn check_compaction(policy: RetentionPolicy, kept: &[usize]) {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path()).await;
    let s = svc::session(&service, "s").await;
    let other = svc::session(&service, "other").await;
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
    let service = open(dir.path()).await;
    check(&service).await;
    close(service);
    // Below the API: no index entry or annotation of a removed checkpoint
    // is left behind in sled (this part reads sled's trees).
    if backend_kind() != BackendKind::Sled {
        return;
    }
    let db = open_sled(&config(dir.path()).data_dir);
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
    let service = Arc::new(open_with(dir.path(), |c| c.durability = Durability::Async).await);
    let s = svc::session(&service, "s").await;
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
    let service = open(dir.path()).await;
    let s = svc::session(&service, "s").await;
    let other = svc::session(&service, "other").await;
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
    let service = open_with(dir.path(), async_retention(10)).await;
    let s = svc::session(&service, "s").await;
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

    let service = open_with(dir.path(), async_retention(4)).await;
    assert_eq!(journal(service.store()).await.iter().map(|e| e.seq).collect::<Vec<_>>(), [66, 67, 68, 69]);
    assert_eq!(service.metrics().await.unwrap().oldest_event, Some(66));
    assert_eq!(code(service.subscribe(s, Some(64)).await), "compacted");
    cp(&service, s, "one more", &[]).await;
    assert_eq!(journal(service.store()).await.iter().map(|e| e.seq).collect::<Vec<_>>(), [67, 68, 69, 70]);
    close(service);

    // Raising it again keeps what is there and grows up to the new bound.
    let service = open_with(dir.path(), async_retention(6)).await;
    for i in 0..3 {
        cp(&service, s, &format!("x{i}"), &[]).await;
    }
    assert_eq!(journal(service.store()).await.iter().map(|e| e.seq).collect::<Vec<_>>(), (68..=73).collect::<Vec<_>>());
    close(service);
}
