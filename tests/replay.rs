//! Replay: `subscribe` with `since` replays the journal after `since`, then
//! continues live with no gap and no duplicate: across reconnects, after a
//! subscriber lagged, and as a clear `compacted` error once the journal has
//! moved past it.

mod common;

use checkpointd::Error;
use checkpointd::client::Client;
use checkpointd::config::{Durability, SUBSCRIBER_QUEUE_EVENTS};
use checkpointd::model::{EventKind, JournalEvent};
use checkpointd::server::ServerConfig;
use checkpointd::service::Service;
use checkpointd::service::hub::Delivery;
use common::inproc::{TestServer, close, open, open_with};
use common::svc::*;
use common::wire::*;
use common::{svc, wire};
use serde_json::{Value, json};
use std::time::Duration;
use tempfile::TempDir;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_since_replays_exclusively_and_reply_comes_first() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let sid = wire::session(&mut c, "s").await;
    let other = wire::session(&mut c, "other").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(checkpoint(&mut c, &sid, &format!("c{i}")).await);
        checkpoint(&mut c, &other, "noise").await;
    }
    // Full replay from 0 gives every event of the session, in order.
    let mut w = server.connect().await;
    bounded(
        "send",
        w.send_text(json!({"id": "s1", "method": "subscribe", "params": {"session_id": sid, "since": 0}}).to_string()),
    )
    .await
    .unwrap();
    let first = bounded("frame", w.next_message()).await.unwrap();
    let first: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(first["id"], "s1", "the subscribe reply must precede replayed events: {first}");
    assert_eq!(first["result"], json!({"subscribed": true, "session_id": sid}));
    let mut seqs = Vec::new();
    for id in &ids {
        let ev = wire::next_event(&mut w).await;
        assert_eq!(ev["data"]["checkpoint_id"], id.as_str());
        seqs.push(u(&ev["seq"]));
    }
    no_event(&mut w).await;

    // since N replays the events with seq > N only.
    let mut w2 = server.connect().await;
    ok(&mut w2, "subscribe", json!({"session_id": sid, "since": seqs[2]})).await;
    assert_eq!(u(&wire::next_event(&mut w2).await["seq"]), seqs[3]);
    assert_eq!(u(&wire::next_event(&mut w2).await["seq"]), seqs[4]);
    no_event(&mut w2).await;
    // Then live events follow, once.
    let live = checkpoint(&mut c, &sid, "live").await;
    for sub in [&mut w, &mut w2] {
        assert_eq!(wire::next_event(sub).await["data"]["checkpoint_id"], live.as_str());
        no_event(sub).await;
    }
    // since at the present: nothing to replay.
    let now = u(&ok(&mut c, "metrics", json!({})).await["event_sequence"]);
    let mut w3 = server.connect().await;
    // Beyond the present it names events this server never delivered:
    // skipping ahead would drop the events that take those numbers.
    let (message, code) = err(&mut w3, "subscribe", json!({"session_id": sid, "since": now + 5})).await;
    assert_eq!(code, "conflict", "{message}");
    assert!(message.contains(&now.to_string()), "{message}");
    ok(&mut w3, "subscribe", json!({"session_id": sid, "since": now})).await;
    no_event(&mut w3).await;
    for bad in [json!("3"), json!(-1), json!(1.5), json!([])] {
        assert_eq!(err(&mut w3, "subscribe", json!({"session_id": sid, "since": bad})).await.1, "invalid_params");
    }
    // Subscribing again replaces the earlier subscription: no duplicates.
    ok(&mut w3, "subscribe", json!({"session_id": sid})).await;
    let again = checkpoint(&mut c, &sid, "again").await;
    assert_eq!(wire::next_event(&mut w3).await["data"]["checkpoint_id"], again.as_str());
    no_event(&mut w3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_reconnect_misses_nothing() {
    let server = TestServer::with(ServerConfig::default(), |s| s.durability = Durability::Async).await;
    let mut c = server.connect().await;
    let sid = wire::session(&mut c, "s").await;
    const TOTAL: usize = 300;

    let url = server.url.clone();
    let sid2 = sid.clone();
    let writer = tokio::spawn(async move {
        let mut w = Client::connect(&url).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..TOTAL {
            ids.push(w.checkpoint(&sid2, &format!("c{i}"), json!(i), json!({})).await.unwrap());
        }
        ids
    });

    let mut seen: Vec<(u64, String)> = Vec::new();
    let mut last: Option<u64> = Some(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 0..100 {
        assert!(Instant::now() < deadline, "resume did not finish in time");
        let mut sub = server.connect().await;
        ok(&mut sub, "subscribe", json!({"session_id": sid, "since": last})).await;
        // Read a few events, then drop the connection mid-stream.
        for _ in 0..(17 + round % 13) {
            if seen.len() == TOTAL {
                break;
            }
            let ev = wire::next_event(&mut sub).await;
            let seq = u(&ev["seq"]);
            seen.push((seq, s(&ev["data"]["checkpoint_id"]).to_string()));
            last = Some(seq);
        }
        drop(sub);
        if seen.len() == TOTAL {
            break;
        }
    }
    let ids = bounded("writer", writer).await.unwrap();
    assert_eq!(seen.len(), TOTAL);
    assert_eq!(seen.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>(), ids, "gap, duplicate or reordering");
    for pair in seen.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "event seqs are consecutive");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_older_than_the_journal_is_compacted() {
    let server = TestServer::with(ServerConfig::default(), |s| s.event_retention = 5).await;
    let mut c = server.connect().await;
    let sid = wire::session(&mut c, "s").await;
    for i in 0..12 {
        checkpoint(&mut c, &sid, &format!("c{i}")).await;
    }
    let m = ok(&mut c, "metrics", json!({})).await;
    let oldest = u(&m["oldest_event"]);
    let newest = u(&m["event_sequence"]);
    assert!(oldest > 1 && newest - oldest < 12, "journal was not trimmed: {m}");

    let (message, code) = err(&mut c, "subscribe", json!({"session_id": sid, "since": 0})).await;
    assert_eq!(code, "compacted");
    assert!(message.contains(&oldest.to_string()), "{message} does not name the oldest seq {oldest}");
    assert_eq!(err(&mut c, "subscribe", json!({"session_id": sid, "since": oldest - 2})).await.1, "compacted");
    // The oldest retained event is still replayable.
    ok(&mut c, "subscribe", json!({"session_id": sid, "since": oldest - 1})).await;
    let mut got = Vec::new();
    for _ in oldest..=newest {
        got.push(u(&wire::next_event(&mut c).await["seq"]));
    }
    assert_eq!(got, (oldest..=newest).collect::<Vec<_>>());
    no_event(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_lags_and_resumes() {
    let server = TestServer::with(ServerConfig::default(), |s| s.durability = Durability::Async).await;
    let mut c = server.connect().await;
    let sid = wire::session(&mut c, "s").await;
    let mut slow = server.connect().await;
    ok(&mut slow, "subscribe", json!({"session_id": sid})).await;

    // Write until the hub has dropped the slow subscription (it never reads).
    const BATCH: usize = 500;
    let mut written = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..200 {
        assert!(Instant::now() < deadline, "the slow subscriber never lagged");
        for i in 0..BATCH {
            let req = json!({"id": format!("w{i}"), "method": "checkpoint", "params": {"session_id": sid, "state": i}});
            bounded("send", c.send_text(req.to_string())).await.unwrap();
        }
        for _ in 0..BATCH {
            let reply = bounded("reply", c.next_reply()).await.unwrap();
            assert_eq!(reply["success"], true, "{reply}");
        }
        written += BATCH;
        if ok(&mut c, "metrics", json!({})).await["subscriptions"] == 0 {
            break;
        }
    }
    let m = ok(&mut c, "metrics", json!({})).await;
    assert_eq!(m["subscriptions"], 0, "the slow subscription never lagged");
    let newest = u(&m["event_sequence"]);

    // The slow client now reads: consecutive events, then the lag notice.
    let mut last = None;
    let lagged_at = loop {
        let ev = wire::next_event(&mut slow).await;
        if ev["event_type"] == "subscription_lagged" {
            assert_eq!(ev["data"]["session_id"], sid.as_str());
            break u(&ev["data"]["last_seq"]);
        }
        assert_eq!(ev["event_type"], "checkpoint_created");
        let seq = u(&ev["seq"]);
        if let Some(prev) = last {
            assert_eq!(seq, prev + 1, "gap before the lag notice");
        }
        last = Some(seq);
        assert!(seq <= newest);
    };
    assert_eq!(Some(lagged_at), last, "last_seq names the last event delivered");
    // Resubscribing with since: last_seq delivers the rest.
    ok(&mut slow, "subscribe", json!({"session_id": sid, "since": lagged_at})).await;
    for expect in lagged_at + 1..=newest {
        assert_eq!(u(&wire::next_event(&mut slow).await["seq"]), expect);
    }
    no_event(&mut slow).await;
    assert!(written > 1024);
}

/// Property 3: `since` replays the journal, then continues live with no gap;
/// also across a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_since_replays_then_continues_live() {
    let dir = TempDir::new().unwrap();
    let service = open_with(dir.path(), |c| c.durability = Durability::Async).await;
    let s = svc::session(&service, "s").await;
    let other = svc::session(&service, "other").await;
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
        first.push(svc::next_event(&mut sub).await);
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
    let e = svc::next_event(&mut sub).await;
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
    })
    .await;
    let s = svc::session(&service, "s").await;
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
    })
    .await;
    let s = svc::session(&service, "s").await;
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
    let service = open(dir.path()).await;
    let s = svc::session(&service, "s").await;
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
            got.push(svc::next_event(&mut active).await);
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
