//! Events: each reaches exactly the subscribers of its session, once, in
//! order, and only once its change is durable; closing the store ends every
//! subscription after the acknowledged writes' events; writers never wait
//! for event dispatch.

mod common;

use checkpointd::config::{Durability, SUBSCRIBER_QUEUE_EVENTS};
use checkpointd::model::{EventKind, JournalEvent, RetentionPolicy};
use checkpointd::service::hub::{Delivery, Subscription};
use common::inproc::{TestServer, close, open, open_with};
use common::svc::*;
use common::wire::*;
use common::{svc, wire};
use serde_json::json;
use std::time::Duration;
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_fan_out_to_subscribers_of_that_session_only() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let a = wire::session(&mut c, "a").await;
    let b = wire::session(&mut c, "b").await;
    let mut subs_a = Vec::new();
    for _ in 0..3 {
        let mut s = server.connect().await;
        ok(&mut s, "subscribe", json!({"session_id": a})).await;
        subs_a.push(s);
    }
    let mut sub_b = server.connect().await;
    ok(&mut sub_b, "subscribe", json!({"session_id": b})).await;
    // The writer itself subscribes too: events arrive between its replies.
    ok(&mut c, "subscribe", json!({"session_id": a})).await;

    let mut ids_a = Vec::new();
    for i in 0..5 {
        ids_a.push(checkpoint(&mut c, &a, &format!("a{i}")).await);
    }
    for sub in subs_a.iter_mut().chain([&mut c]) {
        let mut seen = Vec::new();
        let mut last_seq = 0;
        for _ in 0..5 {
            let ev = wire::next_event(sub).await;
            assert_eq!(ev["event_type"], "checkpoint_created");
            assert_eq!(ev["data"]["session_id"], a.as_str());
            assert!(u(&ev["seq"]) > last_seq, "events out of order");
            last_seq = u(&ev["seq"]);
            seen.push(s(&ev["data"]["checkpoint_id"]).to_string());
        }
        assert_eq!(seen, ids_a);
    }
    // Events are dispatched in seq order, so a leaked event of session a would
    // arrive at b's subscriber before b's own.
    let id_b = checkpoint(&mut c, &b, "b0").await;
    let ev = wire::next_event(&mut sub_b).await;
    assert_eq!(ev["data"]["checkpoint_id"], id_b.as_str(), "subscriber of b got {ev}");
    no_event(&mut sub_b).await;
    for sub in &mut subs_a {
        no_event(sub).await;
    }
    // A subscriber that disconnects does not disturb the others.
    drop(subs_a.pop());
    let id = checkpoint(&mut c, &a, "after a disconnect").await;
    for sub in &mut subs_a {
        assert_eq!(wire::next_event(sub).await["data"]["checkpoint_id"], id.as_str());
    }
}

/// Property 1: an event reaches a subscriber only once its change is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_delivered_only_once_durable() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path()).await;
    assert_eq!(service.store().durability(), Durability::Sync);
    let s = svc::session(&service, "s").await;
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
        let e = svc::next_event(&mut sub).await;
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
    let service = open(dir.path()).await;
    let s = svc::session(&service, "s").await;
    let mut live = service.subscribe(s, None).await.unwrap();
    let mut idle = service.subscribe(s, None).await.unwrap();
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(cp(&service, s, &format!("{i}"), &[]).await);
    }
    assert_eq!(svc::next_event(&mut live).await.seq, 1);
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
    let service = open(dir.path()).await;
    let s = svc::session(&service, "watched").await;
    let noise = svc::session(&service, "noise").await;
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
                    got.push(svc::next_event(&mut sub).await);
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
        noise_got.push((*svc::next_event(&mut noise_sub).await).clone());
    }
    assert_eq!(noise_got, noise_expected);
    drop(noise_sub);
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
    let service = rt.block_on(open_with(dir.path(), |c| c.durability = Durability::Async));
    let s = rt.block_on(svc::session(&service, "s"));
    let total = 3 * SUBSCRIBER_QUEUE_EVENTS;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let writer = service.clone();
    rt.spawn(async move {
        for i in 0..total {
            writer.checkpoint(new_cp(s, &format!("{i}"), &[])).await.unwrap();
        }
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(svc::STEP).is_err() {
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
        let e = svc::next_event(&mut sub).await;
        assert_eq!(e.kind, EventKind::CheckpointCreated { checkpoint_id: c.id, sequence_number: c.sequence_number });
    });
    close(service);
}

/// On one connection, the reply to a write comes before every event that
/// write caused, so a client that reads one reply per request never meets
/// its own write's event first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writes_reply_precedes_its_events_on_the_same_connection() {
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = wire::session(&mut c, "s").await;
    ok(&mut c, "subscribe", json!({"session_id": sid})).await;
    let writes = 60;
    for i in 0..writes {
        let req = json!({"id": format!("w{i}"), "method": "checkpoint",
            "params": {"session_id": sid, "message": format!("{i}"), "state": {"i": i}}});
        bounded("send", c.send_text(req.to_string())).await.unwrap();
    }
    let mut replied = std::collections::HashSet::new();
    let (mut replies, mut events) = (0, 0);
    while replies < writes || events < writes {
        let Message::Text(text) = bounded("message", c.next_message()).await.unwrap() else { continue };
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        if v.get("event_type").is_some() {
            let id = s(&v["data"]["checkpoint_id"]).to_string();
            assert!(replied.contains(&id), "event for checkpoint {id} before its reply: {v}");
            events += 1;
        } else {
            assert_eq!(v["success"], true, "{v}");
            replied.insert(s(&v["result"]).to_string());
            replies += 1;
        }
    }
    assert_eq!((replies, events), (writes, writes));
}
