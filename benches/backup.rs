//! The pause writers see while `checkpoint-dump backup` copies a live data
//! directory of about 1 GB (`CHECKPOINTD_BENCH_BACKUP_MB`, default 1024).
//!
//! The directory is filled with checkpoints of 256 KiB (or
//! `CHECKPOINTD_BENCH_BACKUP_STATE_KB`) (through the store, in
//! `async` mode, to be quick), then the real `checkpointd` serves it and one
//! client writes 1 KiB checkpoints back to back while `checkpoint-dump
//! backup` runs. Reported: the pause the server measured (from its
//! acknowledgement of the pause to the resume), the slowest write the client
//! saw during the backup next to its median outside it, and how long the
//! whole backup took (the fsync of the copy happens after the pause).
//!
//! `cargo bench --bench backup`

use checkpointd::client::Client;
use checkpointd::config::{Durability, StoreConfig};
use checkpointd::model::{NewCheckpoint, Trigger};
use checkpointd::storage::{Backend, Store};
use serde_json::json;
use serde_json::value::RawValue;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Size of each filler state, `CHECKPOINTD_BENCH_BACKUP_STATE_KB` (default
/// 256: sled blob files; 4 puts everything in sled's `db` file).
const STATE_KB_ENV: &str = "CHECKPOINTD_BENCH_BACKUP_STATE_KB";

fn main() {
    let megabytes: usize =
        std::env::var("CHECKPOINTD_BENCH_BACKUP_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let state_bytes = 1024 * std::env::var(STATE_KB_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(256usize);
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let filled = Instant::now();
    runtime.block_on(async {
        let config = StoreConfig { durability: Durability::Async, ..StoreConfig::new(&data) };
        let store = Store::open(config).expect("open");
        let session = store.create_session("bulk".into(), raw("{}")).await.expect("session").id;
        let filler = "z".repeat(state_bytes - 16);
        for n in 0..megabytes * 1024 * 1024 / state_bytes {
            let new = NewCheckpoint {
                session_id: session,
                message: format!("{n}"),
                tags: vec![],
                trigger: Trigger::Manual,
                state: Some(raw(&format!("{{\"n\":{n},\"f\":\"{filler}\"}}")).into()),
                metadata: None,
                parent_id: None,
                namespace: String::new(),
                external_id: None,
                parent_external_id: None,
            };
            store.put_checkpoint(new).await.expect("fill");
        }
        store.close();
    });
    let bytes = checkpointd::storage::dircopy::dir_size(&data).expect("size");
    eprintln!("filled {:.0} MB in {:.1?}", bytes as f64 / 1e6, filled.elapsed());

    let mut server = Command::new(env!("CARGO_BIN_EXE_checkpointd"))
        .args(["--listen", "127.0.0.1:0", "--data-dir", data.to_str().expect("utf-8 path")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn checkpointd");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("ready line");
    let url = line.trim().strip_prefix("listening on ").expect("listening on").to_string();

    let backing_up = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (backing_up, stop, url) = (Arc::clone(&backing_up), Arc::clone(&stop), url.clone());
        runtime.spawn(async move {
            let mut c = Client::connect(&url).await.expect("connect");
            let s = c.create_session("writer").await.expect("session");
            let (mut during, mut outside) = (Vec::new(), Vec::new());
            let payload = json!({"pad": "p".repeat(1000)});
            while !stop.load(Ordering::Acquire) && outside.len() + during.len() < 10_000_000 {
                let t = Instant::now();
                c.checkpoint(&s, "w", payload.clone(), json!({})).await.expect("write");
                let took = t.elapsed();
                if backing_up.load(Ordering::Acquire) { during.push(took) } else { outside.push(took) }
            }
            (during, outside)
        })
    };
    // A second of writes before, the backup, a second after.
    std::thread::sleep(Duration::from_secs(1));
    backing_up.store(true, Ordering::Release);
    let started = Instant::now();
    let dest = root.path().join("backup");
    let out = Command::new(env!("CARGO_BIN_EXE_checkpoint-dump"))
        .args(["--data-dir", data.to_str().unwrap(), "--json", "backup", dest.to_str().unwrap()])
        .output()
        .expect("run checkpoint-dump");
    let backup_took = started.elapsed();
    backing_up.store(false, Ordering::Release);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Release);
    let (during, mut outside) = runtime.block_on(writer).expect("writer");
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    outside.sort();
    let median = outside.get(outside.len() / 2).copied().unwrap_or_default();
    let slowest = during.iter().max().copied().unwrap_or_default();
    println!("## live backup of {:.2} GB of {} KiB states\n", bytes as f64 / 1e9, state_bytes / 1024);
    println!("| data | pause (server) | slowest write during the backup | median write otherwise | whole backup |");
    println!("|---|---|---|---|---|");
    println!(
        "| {:.2} GB | {} ms | {:.1} ms | {:.2} ms | {:.1} s |",
        bytes as f64 / 1e9,
        report["writes_paused_ms"],
        slowest.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        backup_took.as_secs_f64()
    );
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_string()).expect("valid JSON")
}
