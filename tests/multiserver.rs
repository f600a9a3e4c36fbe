//! Several servers on one PostgreSQL database: real `checkpointd` binaries
//! as child processes, each with `--database-url` on the same database.
//!
//! - Writes through both servers reach subscribers on both, every event in
//!   order without a gap; checkpoint and event sequences are consecutive
//!   across the servers.
//! - `since` resumes across servers: subscribed on A, reconnected to B.
//! - A server SIGKILLed mid-write leaves nothing half-done: the other
//!   serves every acknowledged write, whole, and numbers on without a hole.
//! - PostgreSQL stopped and restarted under load: requests get
//!   `unavailable` meanwhile (no hang, no crash), nothing acknowledged is
//!   lost, and the subscriptions resume without a gap.

mod common;

use checkpointd::client::{Client, ClientError};
use common::child::Daemon;
use common::http;
use common::pg;
use common::wire::{self, ok, s, u};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Longest a whole phase of a test (all writes, all deliveries) may take.
const PHASE: Duration = Duration::from_secs(120);

fn serve(url: &str) -> Daemon {
    Daemon::start(&["--listen", "127.0.0.1:0", "--database-url", url], &[])
}

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PHASE, fut).await.unwrap_or_else(|_| panic!("{what}: not done within {PHASE:?}"))
}

/// A writer's checkpoint: message `m`, state `{"m": m}`.
async fn write(c: &mut Client, sid: &str, m: &str) -> Result<String, ClientError> {
    wire::bounded("checkpoint", c.checkpoint(sid, m, json!({"m": m}), json!({}))).await
}

/// `n` checkpoints from each of `writers` clients of `url`, all
/// acknowledged; their (message, id).
fn spawn_fixed_writers(
    url: &str,
    sid: &str,
    tag: &str,
    writers: usize,
    n: usize,
) -> Vec<JoinHandle<Vec<(String, String)>>> {
    (0..writers)
        .map(|w| {
            let (url, sid, tag) = (url.to_string(), sid.to_string(), tag.to_string());
            tokio::spawn(async move {
                let mut c = wire::bounded("connect", Client::connect(&url)).await.expect("connect");
                let mut out = Vec::new();
                for i in 0..n {
                    let m = format!("{tag}{w}-{i}");
                    let id = write(&mut c, &sid, &m).await.unwrap_or_else(|e| panic!("{m}: {e}"));
                    out.push((m, id));
                }
                out
            })
        })
        .collect()
}

/// Reads `count` events from a subscribed client; fails on anything else.
async fn events(c: &mut Client, count: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let e = wire::next_event(c).await;
        assert_ne!(e["event_type"], "subscription_lagged", "{e}");
        out.push(e);
    }
    out
}

/// Every checkpoint of a session through `c`, ascending: (sequence, id, message).
async fn listed(c: &mut Client, sid: &str) -> Vec<(u64, String, String)> {
    let mut out: Vec<(u64, String, String)> = Vec::new();
    for _ in 0..10_000 {
        let mut params = json!({"session_id": sid, "limit": 500});
        if let Some((after, _, _)) = out.last() {
            params["after"] = json!(after);
        }
        let page = ok(c, "list_checkpoints", params).await;
        let page = page.as_array().expect("a list");
        if page.is_empty() {
            return out;
        }
        out.extend(
            page.iter().map(|r| (u(&r["sequence_number"]), s(&r["id"]).to_string(), s(&r["message"]).to_string())),
        );
    }
    panic!("paging did not end");
}

fn assert_consecutive(seqs: &[u64], from: u64, what: &str) {
    let expect: Vec<u64> = (from..from + seqs.len() as u64).collect();
    assert_eq!(seqs, expect.as_slice(), "{what}: not consecutive from {from}");
}

fn event_seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| u(&e["seq"])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_both_servers_reach_subscribers_on_both_in_order() {
    let url = pg::database().await;
    let (a, b) = (serve(&url), serve(&url));
    let mut ca = a.connect().await;
    let mut cb = b.connect().await;
    let sid = wire::session(&mut ca, "shared").await;
    // Each server serves what the other wrote.
    assert_eq!(ok(&mut cb, "get_session", json!({"session_id": sid})).await["name"], "shared");
    let (mut sub_a, mut sub_b) = (a.connect().await, b.connect().await);
    ok(&mut sub_a, "subscribe", json!({"session_id": sid})).await;
    ok(&mut sub_b, "subscribe", json!({"session_id": sid})).await;

    let (writers, n) = (3, 40);
    let mut tasks = spawn_fixed_writers(a.url(), &sid, "a", writers, n);
    tasks.extend(spawn_fixed_writers(b.url(), &sid, "b", writers, n));
    let total = 2 * writers * n;
    // Subscribers read while the writers write.
    let reader_a = tokio::spawn(async move { events(&mut sub_a, total).await });
    let reader_b = tokio::spawn(async move { events(&mut sub_b, total).await });
    let mut acked = BTreeMap::new();
    for t in tasks {
        acked.extend(bounded("writers", t).await.expect("writer task").into_iter().map(|(m, id)| (id, m)));
    }
    assert_eq!(acked.len(), total);
    let (got_a, got_b) =
        (bounded("events on A", reader_a).await.unwrap(), bounded("events on B", reader_b).await.unwrap());

    for (server, got) in [("A", &got_a), ("B", &got_b)] {
        // One session, only checkpoints: the journal is 1..=total, and each
        // subscriber saw all of it in order, once.
        assert_consecutive(&event_seqs(got), 1, &format!("events on {server}"));
        let ids: BTreeSet<&str> = got.iter().map(|e| s(&e["data"]["checkpoint_id"])).collect();
        assert_eq!(ids.len(), total, "events on {server} name every checkpoint once");
        assert!(ids.iter().all(|id| acked.contains_key(*id)), "events on {server} name only acknowledged writes");
        let cp_seqs: Vec<u64> = got.iter().map(|e| u(&e["data"]["sequence_number"])).collect();
        assert_consecutive(&cp_seqs, 1, &format!("checkpoint sequences in events on {server}"));
    }
    assert_eq!(got_a, got_b, "both servers deliver the same events");
    // Both servers list the same checkpoints, sequences 1..=total.
    let (list_a, list_b) = (listed(&mut ca, &sid).await, listed(&mut cb, &sid).await);
    assert_eq!(list_a, list_b);
    assert_consecutive(&list_a.iter().map(|c| c.0).collect::<Vec<_>>(), 1, "listed sequences");
    for (_, id, m) in &list_a {
        assert_eq!(acked.get(id), Some(m), "checkpoint {id}");
    }
    for c in [&mut ca, &mut cb] {
        let m = ok(c, "metrics", json!({})).await;
        assert_eq!((u(&m["global_sequence"]), u(&m["event_sequence"])), (total as u64, total as u64), "{m}");
    }
    // The next write, through either server, takes the next number.
    let next = write(&mut cb, &sid, "after").await.unwrap();
    assert_eq!(
        u(&ok(&mut ca, "get_checkpoint", json!({"checkpoint_id": next})).await["sequence_number"]),
        total as u64 + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_resumes_on_the_other_server() {
    let url = pg::database().await;
    let (a, b) = (serve(&url), serve(&url));
    let mut ca = a.connect().await;
    let sid = wire::session(&mut ca, "resume").await;
    let mut sub = a.connect().await;
    ok(&mut sub, "subscribe", json!({"session_id": sid})).await;
    for i in 0..20 {
        write(&mut ca, &sid, &format!("first-{i}")).await.unwrap();
    }
    let seen = events(&mut sub, 10).await;
    assert_consecutive(&event_seqs(&seen), 1, "first events on A");
    let last = u(&seen.last().unwrap()["seq"]);
    drop(sub);
    // More writes, through B, while nobody is subscribed.
    let mut cb = b.connect().await;
    for i in 0..20 {
        write(&mut cb, &sid, &format!("second-{i}")).await.unwrap();
    }
    // Reconnect to B with `since` = the last seq seen on A: the rest, in
    // order, without a gap or a repeat, then live events.
    let mut sub = b.connect().await;
    ok(&mut sub, "subscribe", json!({"session_id": sid, "since": last})).await;
    let rest = events(&mut sub, 30).await;
    assert_consecutive(&event_seqs(&rest), last + 1, "resumed events on B");
    let messages: Vec<String> = {
        let mut out = Vec::new();
        for e in &rest {
            let id = s(&e["data"]["checkpoint_id"]);
            out.push(s(&ok(&mut cb, "get_checkpoint", json!({"checkpoint_id": id})).await["message"]).to_string());
        }
        out
    };
    let expect: Vec<String> =
        (10..20).map(|i| format!("first-{i}")).chain((0..20).map(|i| format!("second-{i}"))).collect();
    assert_eq!(messages, expect);
    write(&mut ca, &sid, "live").await.unwrap();
    assert_eq!(u(&wire::next_event(&mut sub).await["seq"]), 41);
    // A `since` beyond what any server handed out is a conflict on both.
    for d in [&a, &b] {
        let mut c = d.connect().await;
        let (_, code) = wire::err(&mut c, "subscribe", json!({"session_id": sid, "since": 1000})).await;
        assert_eq!(code, "conflict");
    }
}

/// A writer until `stop` says so, or until a reply that is neither a
/// success nor `unavailable` (returned as the task's error). Records what
/// was acknowledged (message → id) and counts `unavailable` replies.
struct LoadWriter {
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    acks: watch::Receiver<usize>,
    unavailable: watch::Receiver<usize>,
    task: JoinHandle<Result<(), String>>,
}

fn load_writer(url: &str, sid: &str, tag: &str, stop: watch::Receiver<bool>) -> LoadWriter {
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let (acks_tx, acks) = watch::channel(0usize);
    let (unavailable_tx, unavailable) = watch::channel(0usize);
    let (url, sid, tag, record) = (url.to_string(), sid.to_string(), tag.to_string(), Arc::clone(&acked));
    let task = tokio::spawn(async move {
        let mut c = Client::connect(&url).await.map_err(|e| format!("connect: {e}"))?;
        for i in 0..1_000_000u64 {
            if *stop.borrow() {
                return Ok(());
            }
            let m = format!("{tag}-{i}");
            match write(&mut c, &sid, &m).await {
                Ok(id) => {
                    let mut a = record.lock().unwrap();
                    a.insert(m, id);
                    acks_tx.send_replace(a.len());
                }
                Err(ClientError::Remote { code, .. }) if code == "unavailable" => {
                    unavailable_tx.send_modify(|n| *n += 1);
                    // Pacing for the retry while the database is away.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(format!("{m}: {e}")),
            }
        }
        Err("never stopped".into())
    });
    LoadWriter { acked, acks, unavailable, task }
}

/// Asks `/readyz` (paced, within [`PHASE`]) until it answers `status`.
async fn readiness_becomes(d: &Daemon, status: u16) {
    let addr = http::addr(d);
    let deadline = tokio::time::Instant::now() + PHASE;
    let mut last = String::new();
    for _ in 0..1_000 {
        let probe = addr.clone();
        let (got, _, body) = tokio::task::spawn_blocking(move || http::get(&probe, "/readyz")).await.unwrap();
        if got == status {
            return;
        }
        last = format!("{got} {body}");
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz did not answer {status} within {PHASE:?}; last: {last}");
}

async fn wait_for(what: &str, rx: &mut watch::Receiver<usize>, at_least: usize) {
    bounded(what, rx.wait_for(|n| *n >= at_least)).await.expect("writer gone");
}

/// Everything the servers hold is whole and numbered without a hole:
/// listed sequences are 1..=M, each listed checkpoint's state is the one
/// its message was written with, and every acknowledged write is there.
async fn check_whole(c: &mut Client, sid: &str, acked: &BTreeMap<String, String>) -> Vec<(u64, String, String)> {
    let list = listed(c, sid).await;
    assert_consecutive(&list.iter().map(|x| x.0).collect::<Vec<_>>(), 1, "listed sequences");
    let by_id: BTreeMap<&str, &str> = list.iter().map(|(_, id, m)| (id.as_str(), m.as_str())).collect();
    for (m, id) in acked {
        assert_eq!(by_id.get(id.as_str()), Some(&m.as_str()), "acknowledged {m} ({id}) is missing");
    }
    for (seq, id, m) in &list {
        let cp = ok(c, "get_checkpoint", json!({"checkpoint_id": id})).await;
        assert_eq!(cp["state"], json!({"m": m}), "checkpoint {seq} is not whole");
        assert_eq!(u(&cp["sequence_number"]), *seq);
    }
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_write_leaves_nothing_half_done() {
    let url = pg::database().await;
    let (mut a, b) = (serve(&url), serve(&url));
    let mut cb = b.connect().await;
    let sid = wire::session(&mut cb, "killed").await;
    let (stop_tx, stop) = watch::channel(false);
    let mut writers: Vec<LoadWriter> =
        (0..4).map(|w| load_writer(a.url(), &sid, &format!("a{w}"), stop.clone())).collect();
    let mut on_b = load_writer(b.url(), &sid, "b", stop.clone());
    for w in &mut writers {
        wait_for("writes through A", &mut w.acks, 25).await;
    }
    a.kill();
    // A's writers lose their connection; B's goes on.
    let mut acked = BTreeMap::new();
    for w in writers {
        let result = bounded("a writer of A", w.task).await.expect("writer task");
        assert!(result.is_err(), "a writer of the killed server did not notice");
        acked.extend(w.acked.lock().unwrap().clone());
    }
    let at_kill = *on_b.acks.borrow();
    wait_for("writes through B after the kill", &mut on_b.acks, at_kill + 25).await;
    stop_tx.send_replace(true);
    bounded("B's writer", on_b.task).await.expect("writer task").expect("B's writer");
    acked.extend(on_b.acked.lock().unwrap().clone());
    let list = check_whole(&mut cb, &sid, &acked).await;
    // The journal too: every event 1..=E in order, each naming a stored
    // checkpoint (nothing unacknowledged appears half-done).
    let total = u(&ok(&mut cb, "metrics", json!({})).await["event_sequence"]) as usize;
    assert_eq!(total, list.len(), "one event per stored checkpoint");
    let mut sub = b.connect().await;
    ok(&mut sub, "subscribe", json!({"session_id": sid, "since": 0})).await;
    let replayed = events(&mut sub, total).await;
    assert_consecutive(&event_seqs(&replayed), 1, "replayed events");
    let ids: Vec<&str> = replayed.iter().map(|e| s(&e["data"]["checkpoint_id"])).collect();
    assert_eq!(ids, list.iter().map(|x| x.1.as_str()).collect::<Vec<_>>());
    // A restarted A serves the same and numbers on.
    let a = a.respawn();
    let mut ca = a.connect().await;
    let next = write(&mut ca, &sid, "after").await.unwrap();
    assert_eq!(
        u(&ok(&mut cb, "get_checkpoint", json!({"checkpoint_id": next})).await["sequence_number"]),
        list.len() as u64 + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_loses_nothing_and_subscriptions_resume() {
    let cluster =
        Arc::new(tokio::task::spawn_blocking(|| pg::Cluster::start().unwrap_or_else(|e| panic!("{e}"))).await.unwrap());
    let url = cluster.create_database().await;
    let (a, b) = (serve(&url), serve(&url));
    let mut ca = a.connect().await;
    let sid = wire::session(&mut ca, "restarted").await;
    let (mut sub_a, mut sub_b) = (a.connect().await, b.connect().await);
    ok(&mut sub_a, "subscribe", json!({"session_id": sid})).await;
    ok(&mut sub_b, "subscribe", json!({"session_id": sid})).await;
    let (stop_tx, stop) = watch::channel(false);
    let mut writers = vec![
        load_writer(a.url(), &sid, "a0", stop.clone()),
        load_writer(a.url(), &sid, "a1", stop.clone()),
        load_writer(b.url(), &sid, "b0", stop.clone()),
        load_writer(b.url(), &sid, "b1", stop.clone()),
    ];
    for w in &mut writers {
        wait_for("writes before the restart", &mut w.acks, 20).await;
    }
    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || c.stop_immediate()).await.unwrap();
    // While PostgreSQL is down every writer hears `unavailable`, and the
    // servers stay up.
    for w in &mut writers {
        wait_for("unavailable while PostgreSQL is down", &mut w.unavailable, 2).await;
    }
    let mut probe = b.connect().await;
    let (_, code) = wire::err(&mut probe, "list_checkpoints", json!({"session_id": sid})).await;
    assert_eq!(code, "unavailable");
    // A load balancer's probe sees it too; the process itself is alive.
    readiness_becomes(&b, 503).await;
    assert_eq!(http::get(&http::addr(&b), "/healthz").0, 200);
    let before: Vec<usize> = writers.iter().map(|w| *w.acks.borrow()).collect();
    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || c.restart()).await.unwrap();
    for (w, before) in writers.iter_mut().zip(before) {
        wait_for("writes after the restart", &mut w.acks, before + 20).await;
    }
    readiness_becomes(&b, 200).await;
    stop_tx.send_replace(true);
    let mut acked = BTreeMap::new();
    for w in writers {
        bounded("a writer", w.task).await.expect("writer task").unwrap_or_else(|e| panic!("a writer failed: {e}"));
        acked.extend(w.acked.lock().unwrap().clone());
    }
    let list = check_whole(&mut ca, &sid, &acked).await;
    let mut cb = b.connect().await;
    assert_eq!(check_whole(&mut cb, &sid, &acked).await, list);
    // The subscriptions made before the restart go on: every event, in
    // order, without a gap, on both servers.
    let total = u(&ok(&mut ca, "metrics", json!({})).await["event_sequence"]) as usize;
    assert_eq!(total, list.len());
    for (server, sub) in [("A", &mut sub_a), ("B", &mut sub_b)] {
        let got = events(sub, total).await;
        assert_consecutive(&event_seqs(&got), 1, &format!("events on {server} across the restart"));
        let ids: Vec<&str> = got.iter().map(|e| s(&e["data"]["checkpoint_id"])).collect();
        assert_eq!(ids, list.iter().map(|x| x.1.as_str()).collect::<Vec<_>>(), "events on {server}");
    }
    drop((a, b));
    tokio::task::spawn_blocking(move || drop(cluster)).await.unwrap();
}
