//! Lists and counters agree with what is stored: checkpoints page by
//! sequence with exclusive bounds, tag filters and newest first; sessions
//! page in creation order; a session's count and last sequence follow every
//! delete.

mod common;

use checkpointd::client::Client;
use checkpointd::config::Durability;
use checkpointd::model::{EventKind, ListQuery};
use checkpointd::service::Service;
use common::inproc::{TestServer, close, open, open_with};
use common::svc::*;
use common::wire::*;
use common::{svc, wire};
use serde_json::{Value, json};
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_checkpoints_pages_by_sequence() {
    let dir = TempDir::new().unwrap();
    let service = open_with(dir.path(), |c| c.durability = Durability::Async).await;
    let s = svc::session(&service, "s").await;
    let other = svc::session(&service, "other").await;
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
async fn list_checkpoints_bounds_are_exclusive() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = wire::session(&mut c, "s").await;
    let noise = wire::session(&mut c, "noise").await;
    let mut seqs = Vec::new();
    for i in 0..8 {
        let tags = if i % 2 == 0 { json!(["even"]) } else { json!([]) };
        let id =
            bounded("checkpoint", c.checkpoint(&sid, &format!("c{i}"), json!(i), json!({"tags": tags}))).await.unwrap();
        seqs.push(u(&ok(&mut c, "get_checkpoint", json!({"checkpoint_id": id})).await["sequence_number"]));
        checkpoint(&mut c, &noise, "noise").await;
    }
    async fn seqs_of(c: &mut Client, sid: &str, extra: Value) -> Vec<u64> {
        let list = bounded("list", c.list_checkpoints(sid, extra)).await.unwrap();
        list.iter().map(|x| u(&x["sequence_number"])).collect()
    }
    assert_eq!(seqs_of(&mut c, &sid, json!({})).await, seqs);
    assert_eq!(seqs_of(&mut c, &sid, json!({"after": seqs[2]})).await, seqs[3..]);
    assert_eq!(seqs_of(&mut c, &sid, json!({"before": seqs[2]})).await, seqs[..2]);
    assert_eq!(seqs_of(&mut c, &sid, json!({"after": seqs[1], "before": seqs[5]})).await, seqs[2..5]);
    assert_eq!(seqs_of(&mut c, &sid, json!({"after": seqs[1], "limit": 2})).await, seqs[2..4]);
    assert_eq!(seqs_of(&mut c, &sid, json!({"after": seqs[7]})).await, Vec::<u64>::new());
    assert_eq!(seqs_of(&mut c, &sid, json!({"after": 0})).await, seqs);
    let mut rev = seqs.clone();
    rev.reverse();
    assert_eq!(seqs_of(&mut c, &sid, json!({"order": "desc"})).await, rev);
    assert_eq!(seqs_of(&mut c, &sid, json!({"order": "desc", "limit": 3})).await, rev[..3]);
    assert_eq!(
        seqs_of(&mut c, &sid, json!({"order": "desc", "before": seqs[6], "limit": 2})).await,
        vec![seqs[5], seqs[4]]
    );
    assert_eq!(seqs_of(&mut c, &sid, json!({"order": "asc"})).await, seqs);
    assert_eq!(seqs_of(&mut c, &sid, json!({"tag": "even"})).await, vec![seqs[0], seqs[2], seqs[4], seqs[6]]);
    assert_eq!(seqs_of(&mut c, &sid, json!({"tag": "even", "after": seqs[2]})).await, vec![seqs[4], seqs[6]]);
    assert_eq!(seqs_of(&mut c, &sid, json!({"tag": "none"})).await, Vec::<u64>::new());

    // Paging with `after` walks everything exactly once.
    let mut paged = Vec::new();
    let mut after = 0;
    for _ in 0..10 {
        let page = seqs_of(&mut c, &sid, json!({"after": after, "limit": 3})).await;
        let Some(&last) = page.last() else { break };
        after = last;
        paged.extend(page);
    }
    assert_eq!(paged, seqs);

    for bad in [
        json!({"limit": "ten"}),
        json!({"limit": -1}),
        json!({"after": true}),
        json!({"before": 1.5}),
        json!({"tag": 7}),
        json!({"order": "sideways"}),
        json!({"order": 1}),
    ] {
        let mut params = bad.clone();
        params["session_id"] = json!(sid);
        assert_eq!(err(&mut c, "list_checkpoints", params).await.1, "invalid_params", "{bad}");
    }
    // A string bound is an external id (format 2): this session has none.
    let (_, code) = err(&mut c, "list_checkpoints", json!({"session_id": sid, "after": "3"})).await;
    assert_eq!(code, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_counters_follow_deletes() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path()).await;
    let s = svc::session(&service, "s").await;
    let other = svc::session(&service, "other").await;
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
    let t = svc::session(&service, "third").await;
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
    let service = open(dir.path()).await;
    assert_eq!(state(&service).await, (1, Some(n.sequence_number)));
    assert_eq!(metrics(&service).await.total_checkpoints, 2);
    close(service);
}
