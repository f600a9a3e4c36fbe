//! Consistent copies of a live server's data directory: `checkpoint-dump
//! --snapshot` and `checkpoint-dump backup` while writers write states of
//! 100 B to 300 KiB, delete and compact; the pause a copier holds, and what
//! happens when it goes away.

mod common;

use checkpointd::client::Client;
use common::child::{DUMP, Daemon, dump, dump_ok, json_lines, run};
use common::fixtures::populate;
use common::fs::wait_unlocked;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;

const WRITERS: usize = 4;
const SIZES: [usize; 3] = [100, 10 * 1024, 300 * 1024];

fn state(writer: usize, n: usize) -> Value {
    let pad = "x".repeat(SIZES[n % SIZES.len()]);
    json!({"writer": writer, "n": n, "pad": pad})
}

/// What the writers know is stored: per session, the ids acknowledged and
/// not (acknowledged as) deleted, the ids whose removal was acknowledged,
/// and those whose removal is in flight (they may be either).
#[derive(Default, Clone)]
struct Acked {
    live: BTreeMap<String, BTreeMap<String, usize>>,
    gone: BTreeSet<String>,
    doomed: BTreeSet<String>,
}

/// One writer: its own session, checkpoints of every size, a delete every
/// 7th write and a compaction to 5 every 20th. Runs until `stop`.
async fn writer(url: String, w: usize, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>) -> usize {
    let mut c = Client::connect(&url).await.expect("connect");
    let session = c.create_session(&format!("writer-{w}")).await.expect("session");
    acked.lock().unwrap().live.insert(session.clone(), BTreeMap::new());
    let mut mine: Vec<String> = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Acquire) && n < 100_000 {
        let id = c.checkpoint(&session, &format!("{w}-{n}"), state(w, n), json!({})).await.expect("checkpoint");
        acked.lock().unwrap().live.get_mut(&session).unwrap().insert(id.clone(), n);
        mine.push(id);
        n += 1;
        if n % 7 == 0 && mine.len() > 2 {
            let victim = mine.remove(0);
            acked.lock().unwrap().doomed.insert(victim.clone());
            c.call("delete_checkpoint", json!({"checkpoint_id": victim})).await.expect("delete");
            let mut a = acked.lock().unwrap();
            a.live.get_mut(&session).unwrap().remove(&victim);
            a.doomed.remove(&victim);
            a.gone.insert(victim);
        }
        if n % 20 == 0 {
            let doomed: Vec<String> = mine.drain(..mine.len().saturating_sub(5)).collect();
            acked.lock().unwrap().doomed.extend(doomed.iter().cloned());
            c.call("compact", json!({"session_id": session, "keep_recent": 5})).await.expect("compact");
            let mut a = acked.lock().unwrap();
            for id in doomed {
                a.live.get_mut(&session).unwrap().remove(&id);
                a.doomed.remove(&id);
                a.gone.insert(id);
            }
        }
    }
    n
}

/// Checks a backup against what was acknowledged before it began
/// (`before`): every checkpoint stored by then is in it, unless a removal
/// asked for since (`after`, read once the backup is done) took it; nothing
/// whose removal was acknowledged by then is.
fn check_backup(dest: &Path, before: &Acked, after: &Acked) {
    let out = dump_ok(dest, &["verify"]);
    assert!(out.starts_with("ok:"), "verify of the backup: {out}");
    for (session, ids) in &before.live {
        let listed: BTreeSet<String> = json_lines(&dump_ok(dest, &["--json", "checkpoints", "--session", session]))
            .iter()
            .map(|c| c["checkpoint_id"].as_str().or(c["id"].as_str()).expect("an id").to_string())
            .collect();
        let removed_since = |id: &String| after.doomed.contains(id) || after.gone.contains(id);
        for id in ids.keys().filter(|id| !removed_since(id)) {
            assert!(listed.contains(id), "checkpoint {id}, acknowledged before the backup, is not in it");
        }
        for id in &before.gone {
            assert!(!listed.contains(id), "checkpoint {id}, deleted before the backup, is in it");
        }
    }
}

#[test]
fn snapshots_and_backups_under_write_load_are_consistent_and_complete() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("data");
    let server = Daemon::serve(&dir, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| rt.spawn(writer(server.url().to_string(), w, Arc::clone(&acked), Arc::clone(&stop))))
        .collect();
    // Let every writer have written something of each size.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().live.values().map(BTreeMap::len).sum::<usize>() < WRITERS * SIZES.len() {
        assert!(std::time::Instant::now() < deadline, "writers made no progress");
        std::thread::yield_now();
    }
    let mut last_backup = None;
    for round in 0..6 {
        let before = acked.lock().unwrap().clone();
        if round % 2 == 0 {
            let out = dump_ok(&dir, &["--snapshot", "verify"]);
            assert!(out.starts_with("ok:"), "round {round}: {out}");
        } else {
            let dest = tmp.path().join(format!("backup-{round}"));
            let line = dump_ok(&dir, &["backup", dest.to_str().unwrap()]);
            assert_eq!(line.lines().count(), 1, "{line}");
            assert!(line.contains("the server paused writes for"), "{line}");
            let after = acked.lock().unwrap().clone();
            check_backup(&dest, &before, &after);
            last_backup = Some((dest, before, after));
        }
    }
    stop.store(true, Ordering::Release);
    let written: usize = rt.block_on(async {
        let mut total = 0;
        for w in writers {
            total += tokio::time::timeout(Duration::from_secs(60), w).await.expect("writer stops").expect("writer");
        }
        total
    });
    assert!(written > WRITERS * SIZES.len());
    drop(server);

    // A backup is a data directory checkpointd serves as it is.
    let (dest, before, after) = last_backup.unwrap();
    let served = Daemon::serve(&dest, &[]);
    rt.block_on(async {
        let mut c = Client::connect(served.url()).await.unwrap();
        let (session, ids) = before.live.iter().find(|(_, ids)| !ids.is_empty()).unwrap();
        for (id, &n) in ids.iter().filter(|(id, _)| !after.doomed.contains(*id) && !after.gone.contains(*id)) {
            let w: usize = session_writer(&mut c, session).await;
            let full = c.get_checkpoint(id).await.unwrap();
            assert_eq!(full["state"], state(w, n), "state of {id}");
        }
    });
}

async fn session_writer(c: &mut Client, session: &str) -> usize {
    let s = c.call("get_session", json!({"session_id": session})).await.unwrap();
    s["name"].as_str().unwrap().strip_prefix("writer-").unwrap().parse().unwrap()
}

/// The copier's end of the control socket, spoken by hand.
struct Copier {
    reader: BufReader<std::os::unix::net::UnixStream>,
}

impl Copier {
    fn connect(dir: &Path) -> Copier {
        let stream = std::os::unix::net::UnixStream::connect(dir.join("control.sock")).expect("control socket");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Copier { reader: BufReader::new(stream) }
    }

    fn call(&mut self, request: Value) -> Value {
        let mut text = request.to_string();
        text.push('\n');
        self.reader.get_mut().write_all(text.as_bytes()).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }
}

#[test]
fn a_pause_holds_writes_until_the_copier_resumes_or_goes_away() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("data");
    let server = Daemon::serve(&dir, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = rt.block_on(Client::connect(server.url())).unwrap();
    let session = rt.block_on(c.create_session("paused")).unwrap();
    assert_eq!(
        std::fs::metadata(dir.join("control.sock"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap(),
        0o600,
        "only the owner may pause the server"
    );

    for resume_by_disconnect in [false, true] {
        let mut copier = Copier::connect(&dir);
        assert_eq!(copier.call(json!({"op": "resume"}))["error"], "not paused");
        let paused = copier.call(json!({"op": "pause"}));
        assert_eq!(paused["paused"], true, "{paused}");
        assert_eq!(copier.call(json!({"op": "pause"}))["error"], "already paused");
        // Reads go on; a write waits.
        let sessions = rt.block_on(c.call("list_sessions", json!({}))).unwrap();
        assert_eq!(sessions.as_array().unwrap().len(), 1);
        let url = server.url().to_string();
        let s = session.clone();
        let write = rt.spawn(async move {
            let mut w = Client::connect(&url).await.unwrap();
            w.checkpoint(&s, "after the pause", json!({"k": 1}), json!({})).await.unwrap()
        });
        let held = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(300), async {
                while !write.is_finished() {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .is_err()
        });
        assert!(held, "a write completed while writes were paused");
        if resume_by_disconnect {
            drop(copier);
        } else {
            let resumed = copier.call(json!({"op": "resume"}));
            assert_eq!(resumed["resumed"], true, "{resumed}");
            assert!(resumed["paused_ms"].as_u64().unwrap() >= 300, "{resumed}");
        }
        let id = rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), write).await }).unwrap().unwrap();
        assert_eq!(rt.block_on(c.get_checkpoint(&id)).unwrap()["state"], json!({"k": 1}));
    }
}

#[test]
fn backup_refuses_a_destination_that_is_not_empty_and_works_without_a_server() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("data");
    populate(&dir);
    wait_unlocked(&dir);
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "mine").unwrap();
    let out = dump(&dir, &["backup", busy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is not empty"), "{err}");
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1, "the destination is untouched");

    // Stopped server: copied under the lock; an empty directory is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let line = dump_ok(&dir, &["backup", empty.to_str().unwrap()]);
    assert!(line.contains("no server was running"), "{line}");
    assert_eq!(dump_ok(&empty, &["--json", "sessions"]), dump_ok(&dir, &["--json", "sessions"]));
    let json = json_lines(&dump_ok(&dir, &["--json", "backup", tmp.path().join("j").to_str().unwrap()]));
    assert_eq!(json[0]["server_running"], false);
    assert_eq!(json[0]["sessions"], 2);
    // Not a data directory: refused, nothing created.
    let nowhere = tmp.path().join("nowhere");
    let out = run(
        DUMP,
        &["--data-dir", tmp.path().join("missing").to_str().unwrap(), "backup", nowhere.to_str().unwrap()],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!nowhere.exists());
}
