//! Crash test: a child process (this test binary, re-invoked to run only
//! `crash_child`) writes checkpoints and prints each acknowledgement; the
//! parent kills it with SIGKILL at a random moment, reopens the directory and
//! checks that every acknowledged write is there, intact. A third of the
//! states are large enough for state segments (small ones, so they seal
//! often), and a churning writer keeps segments more than half dead, so the
//! kill also lands during appends to segments and during their compaction.

mod common;

use checkpointd::config::{Durability, StoreConfig};
use checkpointd::model::{CheckpointId, EventKind, NewCheckpoint, SessionId, Trigger};
use checkpointd::service::Service;
use checkpointd::storage::{Backend, StorageError, Store, segments};
use common::child::this_test_binary;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const DIR_ENV: &str = "CHECKPOINTD_CRASH_CHILD_DIR";
const ROUND_ENV: &str = "CHECKPOINTD_CRASH_CHILD_ROUND";
const DURABILITY_ENV: &str = "CHECKPOINTD_CRASH_CHILD_DURABILITY";
const WRITERS: usize = 4;
/// The child gives up on its own after this long (the parent kills it much
/// sooner), so a lost parent never leaves it running.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// The longest the parent waits for the acknowledgements it wants.
const ACK_DEADLINE: Duration = Duration::from_secs(30);

/// The state the child stores for writer `w`'s `i`-th checkpoint of `round`.
fn state_for(round: u64, w: usize, i: u64) -> String {
    // Every third state goes to a segment (over 8 KiB).
    let pad = if i % 3 == 1 { 10_000 + (i % 5) as usize * 5_000 } else { (i % 7) as usize * 50 };
    format!(
        r#"{{"round":{round},"writer":{w},"i":{i},"big":123456789012345678901234567890,"text":"é😀 {}","nested":[{{"k":[{i},null,true]}}]}}"#,
        "x".repeat(pad)
    )
}

/// Segments seal at this size in the child, so compaction has work.
const CHILD_SEGMENT_BYTES: u64 = 128 * 1024;

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish()
}

/// Not a test on its own: the body of the child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "runs only as the child process of the crash tests"]
async fn crash_child() {
    let Some(dir) = std::env::var_os(DIR_ENV) else { return };
    let round: u64 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let mut config = StoreConfig::new(dir);
    config.durability = std::env::var(DURABILITY_ENV).unwrap().parse().unwrap();
    config.segment_bytes = CHILD_SEGMENT_BYTES;
    let service = Service::open(config).expect("child opens the store");
    let mut tasks = Vec::new();
    // The churn: large states, compacted to the newest two, so sealed
    // segments keep going more than half dead and compaction keeps running.
    let churn = service.clone();
    tasks.push(tokio::spawn(async move {
        let s = churn.create_session(Some(format!("round {round} churn")), None).await.unwrap().id;
        let keep = checkpointd::model::RetentionPolicy { keep_recent: Some(2), preserve_tags: vec![] };
        for i in 0..1_000_000u64 {
            let state = format!(r#"{{"churn":{i},"x":"{}"}}"#, "c".repeat(40_000));
            let new = NewCheckpoint {
                state: Some(RawValue::from_string(state).unwrap().into()),
                ..NewCheckpoint::new(s, "c")
            };
            churn.checkpoint(new).await.unwrap();
            if i % 4 == 3 {
                churn.compact(s, keep.clone()).await.unwrap();
            }
        }
    }));
    for w in 0..WRITERS {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let s = service.create_session(Some(format!("round {round} writer {w}")), None).await.unwrap().id;
            let mut parent: Option<CheckpointId> = None;
            for i in 0..1_000_000u64 {
                let c = service
                    .checkpoint(NewCheckpoint {
                        session_id: s,
                        message: format!("round {round} writer {w} #{i}"),
                        tags: vec![format!("w{w}")],
                        trigger: Trigger::Auto(Some("crash".into())),
                        state: Some(RawValue::from_string(state_for(round, w, i)).unwrap().into()),
                        metadata: None,
                        parent_id: parent,
                        namespace: String::new(),
                        external_id: None,
                        parent_external_id: None,
                    })
                    .await
                    .unwrap();
                let p = parent.map_or_else(|| "-".to_string(), |p| p.to_string());
                {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {} {} {s} {p} {round} {w} {i}", c.id, c.sequence_number).unwrap();
                    out.flush().unwrap();
                }
                if i % 10 == 9 {
                    service.delete_checkpoint(c.id, Some(s)).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "DEL {}", c.id).unwrap();
                    out.flush().unwrap();
                } else {
                    parent = Some(c.id);
                }
            }
        }));
    }
    let _ = tokio::time::timeout(CHILD_LIFETIME, futures_util::future::join_all(tasks)).await;
}

/// One acknowledged checkpoint, as the child reported it.
#[derive(Debug, Clone)]
struct Ack {
    id: CheckpointId,
    seq: u64,
    session: SessionId,
    parent: Option<CheckpointId>,
    round: u64,
    writer: usize,
    i: u64,
}

fn parse_ack(line: &str) -> Ack {
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 8, "bad ack line {line:?}");
    Ack {
        id: f[1].parse().unwrap(),
        seq: f[2].parse().unwrap(),
        session: f[3].parse().unwrap(),
        parent: (f[4] != "-").then(|| f[4].parse().unwrap()),
        round: f[5].parse().unwrap(),
        writer: f[6].parse().unwrap(),
        i: f[7].parse().unwrap(),
    }
}

/// Runs one child until it has acknowledged `want` checkpoints, kills it
/// with SIGKILL, and returns every acknowledgement it printed.
fn run_child_and_kill(
    data_dir: &Path,
    round: u64,
    durability: Durability,
    want: usize,
) -> (Vec<Ack>, Vec<CheckpointId>) {
    let mut child = this_test_binary("crash_child")
        .env(DIR_ENV, data_dir)
        .env(ROUND_ENV, round.to_string())
        .env(DURABILITY_ENV, durability.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                // A line cut short by the kill was never acknowledged.
                Ok(_) if line.ends_with('\n') => {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
                Ok(_) => return,
            }
        }
    });
    let deadline = Instant::now() + ACK_DEADLINE;
    let mut lines = Vec::new();
    let mut acks = 0;
    while acks < want {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                acks += usize::from(line.starts_with("ACK "));
                lines.push(line);
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                match e {
                    RecvTimeoutError::Timeout => panic!("child acknowledged only {acks} of {want} in time"),
                    RecvTimeoutError::Disconnected => panic!("child exited after {acks} of {want} acks"),
                }
            }
        }
    }
    // `Child::kill` sends SIGKILL on Unix.
    child.kill().expect("SIGKILL the child");
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished: {status}");
    // Whatever it printed before dying was acknowledged too.
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let mut created = Vec::new();
    let mut deleted = Vec::new();
    for line in &lines {
        if line.starts_with("ACK ") {
            created.push(parse_ack(line));
        } else if let Some(id) = line.strip_prefix("DEL ") {
            deleted.push(id.trim().parse().unwrap());
        }
    }
    assert!(created.len() >= want);
    (created, deleted)
}

/// Runs one call of the store's async interface from a plain test.
fn block<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(call)
}

/// What every store must look like after a crash, acknowledged or not:
/// indexes, counters and journal agree with the records.
fn check_consistent(store: &Store) {
    let v = block(store.validate(None)).unwrap();
    assert_eq!(v.invalid, 0, "invalid checkpoints after a crash: {:?}", v.invalid_ids);
    let all = block(store.list_by_sequence(0, usize::MAX)).unwrap();
    let m = block(store.metrics()).unwrap();
    assert_eq!(m.total_checkpoints, all.len() as u64, "checkpoint counter agrees with the records");
    assert_eq!(v.valid, all.len() as u64);
    assert!(all.last().is_none_or(|c| c.sequence_number <= m.global_sequence));
    let sessions = block(store.list_sessions(None, None, usize::MAX)).unwrap();
    assert_eq!(m.active_sessions, sessions.len() as u64);
    let mut per_session: HashMap<SessionId, Vec<u64>> = HashMap::new();
    for c in &all {
        per_session.entry(c.session_id).or_default().push(c.sequence_number);
        let full = block(store.checkpoint(c.id)).expect("every indexed checkpoint is readable");
        assert_eq!(full.summary.sequence_number, c.sequence_number);
    }
    for s in &sessions {
        let listed = per_session.remove(&s.id).unwrap_or_default();
        assert_eq!(s.checkpoint_count, listed.len() as u64, "session {} count", s.id);
        assert_eq!(s.last_sequence, listed.last().copied(), "session {} last_sequence", s.id);
    }
    assert!(per_session.is_empty(), "checkpoints of sessions that do not exist");
    // Every stored checkpoint has its event (the default retention keeps all).
    let created: BTreeSet<CheckpointId> = block(store.events(0, u64::MAX, None, usize::MAX))
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::CheckpointCreated { checkpoint_id, .. } => Some(checkpoint_id),
            _ => None,
        })
        .collect();
    for c in &all {
        assert!(created.contains(&c.id), "checkpoint {} has no checkpoint_created event", c.id);
    }
}

/// After a crash the segments hold every live value, and one compaction
/// pass brings them within twice the live bytes, plus a segment and the
/// zeros written ahead of the active segment's small appends.
fn check_segments(store: &Store, durability: Durability) {
    let before = store.space();
    // (In `async` mode a kill may take every write since the last flush.)
    assert!(before.live_bytes > 0 || durability == Durability::Async, "large states are in segments");
    block(store.compact_segments()).unwrap();
    let after = store.space();
    assert_eq!(after.live_bytes, before.live_bytes);
    assert!(
        after.bytes_on_disk <= 2 * after.live_bytes + CHILD_SEGMENT_BYTES + segments::PREALLOCATE_BYTES,
        "segments hold {} bytes for {} live",
        after.bytes_on_disk,
        after.live_bytes
    );
}

#[test]
fn crash_sync_keeps_every_acknowledged_checkpoint() {
    let dir = TempDir::new().unwrap();
    let data_dir = dir.path().join("data");
    let mut acked: BTreeMap<CheckpointId, Ack> = BTreeMap::new();
    let mut deleted: BTreeSet<CheckpointId> = BTreeSet::new();
    let mut highest_before = 0;
    for round in 0..3 {
        let want = 20 + (random_u64() % 181) as usize;
        let (created, dels) = run_child_and_kill(&data_dir, round, Durability::Sync, want);
        for a in &created {
            assert!(a.seq > highest_before, "sequence {} reused after a crash (had {highest_before})", a.seq);
        }
        deleted.extend(dels);
        acked.extend(created.into_iter().map(|a| (a.id, a)));

        let store = Store::open(StoreConfig::new(&data_dir)).expect("reopen after SIGKILL");
        check_consistent(&store);
        check_segments(&store, Durability::Sync);
        let m = block(store.metrics()).unwrap();
        let max_acked = acked.values().map(|a| a.seq).max().unwrap();
        assert!(m.global_sequence >= max_acked, "global sequence {} below acked {max_acked}", m.global_sequence);
        let mut found = 0;
        for a in acked.values() {
            let got = block(store.checkpoint(a.id));
            if deleted.contains(&a.id) {
                assert_eq!(
                    got.err().map(|e| checkpointd::Error::from(e).code()),
                    Some("not_found"),
                    "acknowledged delete of {} undone",
                    a.id
                );
                continue;
            }
            let c = match got {
                Ok(c) => c,
                // Its delete may have been done but not yet acknowledged.
                Err(StorageError::NotFound(_)) if a.i % 10 == 9 => continue,
                Err(e) => panic!("acknowledged checkpoint {} (seq {}) lost: {e}", a.id, a.seq),
            };
            assert_eq!(c.summary.sequence_number, a.seq);
            assert_eq!(c.summary.session_id, a.session);
            assert_eq!(c.summary.parent_id, a.parent);
            assert_eq!(c.summary.message, format!("round {} writer {} #{}", a.round, a.writer, a.i));
            assert_eq!(c.state.get(), state_for(a.round, a.writer, a.i));
            found += 1;
        }
        assert!(found > 0);
        highest_before = m.global_sequence;
        store.close();
        drop(store);
    }
}

#[test]
fn crash_async_leaves_a_consistent_store() {
    let dir = TempDir::new().unwrap();
    let data_dir = dir.path().join("data");
    for round in 0..2 {
        let want = 20 + (random_u64() % 181) as usize;
        run_child_and_kill(&data_dir, round, Durability::Async, want);
        let mut config = StoreConfig::new(&data_dir);
        config.durability = Durability::Async;
        let store = Store::open(config).expect("reopen after SIGKILL");
        check_consistent(&store);
        check_segments(&store, Durability::Async);
        store.close();
    }
}
