//! Shared by tests/dump.rs, tests/migrations.rs and tests/import.rs: the real
//! binaries, directory snapshots, and a data directory with one of
//! everything (also the generator of `tests/fixtures/v1`).

#![allow(dead_code)]

use checkpointd::config::StoreConfig;
use checkpointd::model::{CheckpointId, NewCheckpoint, RetentionPolicy, SessionId, Severity, Trigger};
use checkpointd::service::Service;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const DUMP: &str = env!("CARGO_BIN_EXE_checkpoint-dump");
pub const SERVER: &str = env!("CARGO_BIN_EXE_checkpointd");

/// The longest any child process may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn fixture(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("v{version}"))
}

pub fn fixture_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Copies a data directory (the fixtures are only ever opened as copies).
pub fn copy_dir(from: &Path, to: &Path) {
    checkpointd::storage::dircopy::copy_dir(from, to, false).expect("copy data directory");
}

/// Every file under `dir` with its contents.
pub fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            if entry.file_type().expect("file type").is_dir() {
                out.insert(path.strip_prefix(dir).unwrap().join(""), Vec::new());
                todo.push(path);
            } else {
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).expect("read file"));
            }
        }
    }
    out
}

/// Runs a binary with `args` and waits (bounded) for it.
pub fn run(bin: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("CHECKPOINTD_DATA_DIR")
        .env("RUST_LOG", "warn")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    wait_output(child)
}

/// Waits for a child with a deadline, killing it if it overruns.
pub fn wait_output(child: Child) -> Output {
    let id = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.expect("wait for child"),
        Err(_) => {
            // SAFETY-free: kill(2) by the pid of our own child.
            let _ = Command::new("kill").args(["-9", &id.to_string()]).status();
            panic!("child process {id} ran past {DEADLINE:?}");
        }
    }
}

pub fn dump(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--data-dir", dir.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    run(DUMP, &all, None)
}

/// Runs checkpoint-dump and requires exit 0; returns stdout.
pub fn dump_ok(dir: &Path, args: &[&str]) -> String {
    let out = dump(dir, args);
    assert!(
        out.status.success(),
        "checkpoint-dump {args:?} failed: {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect()
}

/// A running `checkpointd` on port 0; killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    pub fn start(dir: &Path) -> Server {
        let mut child = Command::new(SERVER)
            .args(["--listen", "127.0.0.1:0", "--data-dir", dir.to_str().unwrap()])
            .env_remove("CHECKPOINTD_DATA_DIR")
            .env_remove("CHECKPOINTD_TOKEN")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn checkpointd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let url = match rx.recv_timeout(DEADLINE) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("checkpointd did not print `listening on` within {DEADLINE:?}");
            }
        };
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_string()).expect("valid JSON")
}

/// What [`populate`] made.
#[derive(Debug, Clone)]
pub struct Populated {
    pub agent: SessionId,
    pub batch: SessionId,
    pub plan: CheckpointId,
    pub step: CheckpointId,
    pub deleted: CheckpointId,
    pub batch_kept: CheckpointId,
}

/// Fills `dir` through the service, as a server would: sessions with names
/// and metadata, checkpoints with tags, state, metadata, parent and every
/// trigger, annotations, a restore, a delete, a compaction, a deleted
/// session and a retention policy.
pub fn populate(dir: &Path) -> Populated {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let made = rt.block_on(async {
        let svc = Service::open(StoreConfig::new(dir)).expect("open");
        let new = |session_id, message: &str, tags: &[&str], trigger, state: Option<&str>, parent_id| NewCheckpoint {
            session_id,
            message: message.to_string(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            trigger,
            state: state.map(raw),
            metadata: Some(raw(r#"{"host":"fixture","attempt":1}"#)),
            parent_id,
        };
        let agent = svc.create_session(Some("agent-a".into()), Some(raw(r#"{"owner":"ops","n":1}"#))).await.unwrap();
        let batch = svc.create_session(Some("batch-b".into()), None).await.unwrap();
        let doomed = svc.create_session(Some("doomed".into()), None).await.unwrap();
        let plan = svc
            .checkpoint(new(
                agent.id,
                "plan",
                &["plan", "keep"],
                Trigger::Manual,
                Some(r#"{"step": 1, "nested": {"z": 1, "a": [1, 2.50, "x"]}}"#),
                None,
            ))
            .await
            .unwrap();
        let step = svc
            .checkpoint(new(
                agent.id,
                "step two\nsecond line",
                &["wip"],
                Trigger::Auto(Some("tool_call".into())),
                Some(r#"{"step":2}"#),
                Some(plan.id),
            ))
            .await
            .unwrap();
        let deleted =
            svc.checkpoint(new(agent.id, "scratch", &[], Trigger::Scheduled, None, Some(step.id))).await.unwrap();
        let mut batch_ids = Vec::new();
        for i in 0..3 {
            let state = format!(r#"{{"i":{i}}}"#);
            let cp = svc
                .checkpoint(new(batch.id, &format!("batch {i}"), &["b"], Trigger::Auto(None), Some(&state), None))
                .await
                .unwrap();
            batch_ids.push(cp.id);
        }
        svc.checkpoint(new(doomed.id, "gone", &["x"], Trigger::Manual, Some("[1,2,3]"), None)).await.unwrap();
        svc.annotate(plan.id, "looks good".into(), None).await.unwrap();
        svc.annotate(step.id, "regressed\there".into(), Some(Severity::Critical)).await.unwrap();
        svc.annotate(step.id, "second note".into(), Some(Severity::Warning)).await.unwrap();
        svc.restore(agent.id, plan.id).await.unwrap();
        svc.delete_checkpoint(deleted.id, None).await.unwrap();
        let compacted = svc.compact(batch.id, RetentionPolicy { keep_recent: Some(1), preserve_tags: vec![] }).await;
        assert_eq!(compacted.unwrap().removed, 2);
        svc.delete_session(doomed.id).await.unwrap();
        svc.set_retention(
            agent.id,
            Some(RetentionPolicy { keep_recent: Some(50), preserve_tags: vec!["keep".into()] }),
        )
        .await
        .unwrap();
        svc.close();
        Populated {
            agent: agent.id,
            batch: batch.id,
            plan: plan.id,
            step: step.id,
            deleted: deleted.id,
            batch_kept: batch_ids[2],
        }
    });
    drop(rt);
    wait_unlocked(dir);
    made
}

/// Waits (bounded) until no handle of this process holds `dir`'s sled lock.
pub fn wait_unlocked(dir: &Path) {
    let start = Instant::now();
    let db = std::fs::File::open(dir.join("db")).expect("db file");
    loop {
        match db.try_lock() {
            Ok(()) => {
                db.unlock().expect("unlock");
                return;
            }
            Err(_) if start.elapsed() < DEADLINE => std::thread::yield_now(),
            Err(e) => panic!("{} stays locked: {e}", dir.display()),
        }
    }
}
