//! Disk space under churn (issue 11): the real `checkpointd`, writing large
//! states and compacting them away round after round, with restarts in
//! between, keeps its data directory within twice the live state bytes plus
//! a fixed overhead that does not grow with the writes ever made; the
//! background compaction of state segments is what reclaims it, and
//! `health` shows live, dead and on-disk bytes.

mod common;

use common::child::{Daemon, dump};
use common::fs::wait_unlocked;
use common::wire::{ok, session};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const SEGMENT_BYTES: u64 = 1 << 20;
const STATE_BYTES: usize = 64 * 1024;
const SESSIONS: usize = 3;
const PER_ROUND: usize = 20;
const KEEP: usize = 5;
const ROUNDS: usize = 30;
/// sled's own files (its log, snapshot, config, the journal): they do not
/// grow with the number of states written.
const FIXED_OVERHEAD: u64 = 8 << 20;
/// The longest the background compaction may take to catch up after a round.
const CATCH_UP: Duration = Duration::from_secs(20);

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { dir_bytes(&entry.path()) } else { meta.len() };
    }
    total
}

fn space(health: &Value) -> (u64, u64, u64) {
    let s = &health["space"];
    (s["live_bytes"].as_u64().unwrap(), s["dead_bytes"].as_u64().unwrap(), s["bytes_on_disk"].as_u64().unwrap())
}

#[test]
fn churn_across_restarts_keeps_the_directory_within_twice_the_live_bytes() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("data");
    let segment = SEGMENT_BYTES.to_string();
    let mut server = Daemon::serve(&dir, &["--segment-bytes", &segment]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut sessions: Vec<String> = Vec::new();
    let mut written = 0u64;
    let mut state_len = 0u64;
    let mut largest = 0u64;
    for round in 0..ROUNDS {
        if round > 0 && round % 10 == 0 {
            server.terminate();
            server = server.respawn();
        }
        let (live, dead, on_disk) = rt.block_on(async {
            let mut c = server.connect().await;
            while sessions.len() < SESSIONS {
                sessions.push(session(&mut c, "churn").await);
            }
            for i in 0..PER_ROUND {
                let sid = &sessions[i % SESSIONS];
                // Every state's JSON text has the same length.
                let state = json!({"at": format!("{round:03}-{i:02}"), "x": "s".repeat(STATE_BYTES - 40)});
                state_len = serde_json::to_string(&state).unwrap().len() as u64;
                written += state_len;
                ok(&mut c, "checkpoint", json!({"session_id": sid, "message": "m", "state": state})).await;
            }
            for sid in &sessions {
                ok(&mut c, "compact", json!({"session_id": sid, "keep_recent": KEEP})).await;
            }
            // The background compaction catches up: no sealed segment is
            // more than half dead (bounded; each poll is a round trip).
            let deadline = Instant::now() + CATCH_UP;
            loop {
                let (live, dead, on_disk) = space(&ok(&mut c, "health", json!({})).await);
                if dead <= live + SEGMENT_BYTES {
                    break (live, dead, on_disk);
                }
                assert!(Instant::now() < deadline, "round {round}: compaction left {dead} dead bytes for {live} live");
                tokio::task::yield_now().await;
            }
        });
        // Every live state, with the same JSON text length.
        assert_eq!(live, (SESSIONS * KEEP) as u64 * state_len, "round {round}");
        assert_eq!(on_disk, live + dead);
        assert!(on_disk <= 2 * live + SEGMENT_BYTES, "round {round}: segments {on_disk} for {live} live");
        let total = dir_bytes(&dir);
        largest = largest.max(total);
        assert!(
            total <= 2 * live + SEGMENT_BYTES + FIXED_OVERHEAD,
            "round {round}: the directory holds {total} bytes for {live} live ({written} written)"
        );
    }
    assert!(written > 4 * (2 * (SESSIONS * KEEP) as u64 * state_len + SEGMENT_BYTES + FIXED_OVERHEAD) / 3);
    eprintln!("wrote {written} bytes of states; the directory peaked at {largest} bytes");
    server.terminate();
    wait_unlocked(&dir);
    let verify = dump(&dir, &["verify"]);
    assert!(verify.status.success(), "verify: {}", String::from_utf8_lossy(&verify.stdout));
}
