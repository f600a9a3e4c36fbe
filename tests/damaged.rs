//! Damaged, truncated and foreign data directories: every binary —
//! `checkpointd` serving, `checkpointd import`, and each `checkpoint-dump`
//! command, with and without `--snapshot` — refuses them with one line that
//! names the directory and the problem, and a non-zero exit. Never a panic,
//! and the server never starts listening. The directories are written by the
//! real server first (states over 128 KiB, so sled writes blob files), then
//! damaged on disk.

mod common;

use checkpointd::client::Client;
use checkpointd::storage::codec;
use checkpointd::storage::keys;
use checkpointd::storage::records::Counters;
use common::child::{CHECKPOINTD, DEADLINE, DUMP, Daemon, command, wait_output};
use common::fs::{copy_dir, open_sled, wait_unlocked};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use tempfile::TempDir;

/// Checkpoints with a state over sled's blob threshold, then small ones.
const BIG: usize = 3;
const SMALL: usize = 150;

/// SIGTERM, and the exit (bounded): a clean stop.
fn stop(mut server: Daemon) {
    let status = server.terminate();
    assert!(status.success(), "checkpointd did not stop cleanly: {status:?}");
}

/// A data directory written by the server and stopped, and a copy of it
/// served once more (so sled has written a snapshot of it).
struct Written {
    _root: TempDir,
    root: PathBuf,
    fresh: PathBuf,
    restarted: PathBuf,
    session: String,
    checkpoint: String,
    forge: PathBuf,
}

fn written() -> Written {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().to_path_buf();
    // Readable by the unprivileged user of the permission test.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fresh = root.join("fresh");
    let server = Daemon::serve(&fresh, &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (session, checkpoint) = rt.block_on(async {
        let mut c = tokio::time::timeout(DEADLINE, Client::connect(server.url())).await.unwrap().unwrap();
        let s = c.create_session("damaged").await.unwrap();
        let mut first = String::new();
        for i in 0..BIG + SMALL {
            // Large states go to state segments, not blobs: a record over
            // sled's blob threshold (128 KiB: 64 KB of message and of
            // metadata and 15 KB of tags) is what makes sled write blob files.
            let (message, state, extra) = if i < BIG {
                let tags: Vec<String> = (0..60).map(|j| format!("t{j:02}{}", "x".repeat(250))).collect();
                let big = json!({"tags": tags, "metadata": {"big": "x".repeat(64_000)}});
                (format!("m{i}{}", "m".repeat(64_000)), json!({"i": i, "big": "b".repeat(7_000)}), big)
            } else {
                (format!("m{i}"), json!({"i": i}), json!({"tags": ["t"]}))
            };
            let id = c.checkpoint(&s, &message, state, extra).await.unwrap();
            if i == 0 {
                first = id;
            }
        }
        (s, first)
    });
    stop(server);
    assert!(std::fs::read_dir(fresh.join("blobs")).unwrap().count() >= BIG, "sled wrote no blob files");
    let restarted = root.join("restarted");
    copy_dir(&fresh, &restarted);
    stop(Daemon::serve(&restarted, &[]));
    let forge = root.join("forge-empty.json");
    std::fs::write(&forge, r#"{"checkpoints":[],"global_sequence":0}"#).unwrap();
    Written { _root: tmp, root, fresh, restarted, session, checkpoint, forge }
}

/// Every invocation that opens a data directory: (binary, arguments before
/// and after the directory).
fn invocations(w: &Written) -> Vec<(&'static str, Vec<String>, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let forge = w.forge.to_str().unwrap();
    let mut all = vec![
        (CHECKPOINTD, s(&["--listen", "127.0.0.1:0", "--data-dir"]), vec![]),
        (CHECKPOINTD, s(&["import", "--data-dir"]), s(&["--forge-export", forge])),
    ];
    let commands: Vec<Vec<&str>> = vec![
        vec!["summary"],
        vec!["sessions"],
        vec!["checkpoints", "--session", &w.session, "--with-state"],
        vec!["checkpoint", &w.checkpoint],
        vec!["events"],
        vec!["verify"],
        vec!["export"],
        vec!["--snapshot", "summary"],
        vec!["--json", "--snapshot", "verify"],
    ];
    for cmd in commands {
        all.push((DUMP, s(&["--data-dir"]), s(&cmd)));
    }
    all
}

/// What a refusal must look like.
fn check_refusal(bin: &str, args: &[String], out: &Output, expect: &[&str]) {
    let program = if bin == CHECKPOINTD { "checkpointd" } else { "checkpoint-dump" };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let what = format!("{program} {args:?}\nstdout: {stdout}\nstderr: {stderr}");
    assert!(!out.status.success(), "accepted: {what}");
    assert!(out.status.code().is_some(), "killed by a signal: {what}");
    assert!(!stdout.contains("listening on"), "served: {what}");
    for bad in ["panicked at", "RUST_BACKTRACE", "stack backtrace", "internal error"] {
        assert!(!stderr.contains(bad), "{bad:?}: {what}");
    }
    let lines: Vec<&str> = stderr.lines().collect();
    let last = lines.last().unwrap_or_else(|| panic!("nothing on stderr: {what}"));
    assert!(last.starts_with(&format!("{program}: data directory ")), "{what}");
    for e in expect {
        assert!(last.contains(e), "expected {e:?}: {what}");
    }
    // Anything before the error line is the server's log (one line each).
    for line in &lines[..lines.len() - 1] {
        assert!(
            bin == CHECKPOINTD && ["WARN", "ERROR", "INFO"].iter().any(|level| line.contains(level)),
            "more than one line: {what}"
        );
    }
}

/// Runs a binary expected to refuse; a server that starts listening
/// instead is killed at once (the test fails on its output).
fn run_refused(mut cmd: Command) -> Output {
    let mut child = cmd.spawn().expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let served = line.contains("listening on");
            let _ = tx.send(line);
            if served {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    // Ends when stdout closes (the process exits) or a line says it serves.
    while let Ok(line) = rx.recv_timeout(DEADLINE) {
        let served = line.contains("listening on");
        lines.push(line);
        if served {
            let _ = child.kill();
            break;
        }
    }
    let mut out = wait_output(child);
    out.stdout = lines.join("\n").into_bytes();
    out
}

/// Runs every invocation on its own damaged copy of `source`; each must be
/// refused with a line containing every string of `expect`.
fn refused(w: &Written, source: &Path, damage: impl Fn(&Path), expect: &[&str]) {
    refused_as(w, source, damage, expect, None)
}

fn refused_as(w: &Written, source: &Path, damage: impl Fn(&Path), expect: &[&str], uid: Option<u32>) {
    for (n, (bin, before, after)) in invocations(w).into_iter().enumerate() {
        let dir = w.root.join(format!("case-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&dir);
        copy_dir(source, &dir);
        damage(&dir);
        let mut args = before.clone();
        args.push(dir.to_str().unwrap().to_string());
        args.extend(after);
        let mut cmd = command(bin, &args.iter().map(String::as_str).collect::<Vec<_>>());
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        let out = run_refused(cmd);
        check_refusal(
            bin,
            &args,
            &out,
            &expect
                .iter()
                .map(|e| e.replace("{dir}", dir.to_str().unwrap()))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        if dir.is_dir() {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

fn blobs(dir: &Path) -> Vec<PathBuf> {
    let mut all: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_str().unwrap().parse().unwrap(), e.path())
        })
        .collect();
    all.sort();
    all.into_iter().map(|(_, p)| p).collect()
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

/// Deterministic bytes that are no sled structure.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

/// Rewrites the counters record through sled (the directory is closed).
fn edit_counters(dir: &Path, edit: impl Fn(&mut Counters), clear: &[&str]) {
    let db = open_sled(dir);
    let meta = db.open_tree("meta").unwrap();
    let mut c: Counters = codec::decode(&meta.get(keys::META_COUNTERS).unwrap().unwrap(), "counters").unwrap();
    edit(&mut c);
    meta.insert(keys::META_COUNTERS, codec::encode(&c)).unwrap();
    // Nothing pending to re-apply over the edit.
    meta.remove(keys::META_INTENT).unwrap();
    for tree in clear {
        db.open_tree(tree).unwrap().clear().unwrap();
    }
    db.flush().unwrap();
    drop(meta);
    drop(db);
    wait_unlocked(dir);
}

#[test]
fn a_torn_blob_file() {
    let w = written();
    // The oldest blob, torn to its header: sled would stop recovery there,
    // silently, and delete every later blob.
    refused(
        &w,
        &w.fresh,
        |d| truncate(&blobs(d)[0], 5),
        &["is damaged: blob file blobs/", "(5 bytes) fails its checksum"],
    );
}

/// Blob files deleted from a directory sled has snapshotted: sled needs
/// them only when it reads what they hold, so what does not read them works.
/// Every invocation either succeeds or fails in one line (never a panic),
/// and `verify` finds every unreadable state.
#[test]
#[ignore = "issue 11: blob files now hold `checkpoints` tree nodes (states went to segments), and sled 0.34 \
            spins reading a node whose blob is missing (`checkpoint-dump summary` never returns); see BENCHMARKS.md"]
fn missing_blob_files() {
    let w = written();
    let delete = |d: &Path| {
        for blob in blobs(d) {
            std::fs::remove_file(blob).unwrap();
        }
    };
    intact_or_refused(&w, &w.restarted, delete);
    let dir = w.root.join("verify");
    copy_dir(&w.restarted, &dir);
    delete(&dir);
    let out = run_refused(command(DUMP, &["--data-dir", dir.to_str().unwrap(), "verify"]));
    assert_eq!(out.status.code(), Some(1));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("a file of the database is missing"), "{text}");
}

/// Runs every invocation on its own damaged copy of `source`: each either
/// succeeds, a server serves (and is stopped), or it fails with one line.
/// Never a panic; and what reads the directory finds all of its data.
fn intact_or_refused(w: &Written, source: &Path, damage: impl Fn(&Path)) {
    for (n, (bin, before, after)) in invocations(w).into_iter().enumerate() {
        let dir = w.root.join(format!("either-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        copy_dir(source, &dir);
        damage(&dir);
        let mut args = before.clone();
        args.push(dir.to_str().unwrap().to_string());
        args.extend(after);
        let out = run_refused(command(bin, &args.iter().map(String::as_str).collect::<Vec<_>>()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = format!("{args:?}: {:?}\n{stderr}", out.status);
        for bad in ["panicked at", "RUST_BACKTRACE", "stack backtrace", "internal error"] {
            assert!(!stderr.contains(bad), "{bad:?}: {what}");
        }
        if bin == DUMP {
            assert!(out.status.code().is_some(), "{what}");
            assert!(stderr.lines().count() <= 1, "{what}");
        }
    }
    let dir = w.root.join("either-summary");
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(source, &dir);
    damage(&dir);
    let out = run_refused(command(DUMP, &["--data-dir", dir.to_str().unwrap(), "--json", "summary"]));
    if out.status.success() {
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["checkpoints"], json!(BIG + SMALL), "part of the data");
    }
}

#[test]
fn random_bytes_for_the_whole_db() {
    let w = written();
    for source in [&w.fresh, &w.restarted] {
        refused(
            &w,
            source,
            |d| {
                let len = std::fs::metadata(d.join("db")).unwrap().len();
                std::fs::write(d.join("db"), noise(len as usize, 7)).unwrap();
            },
            &["is damaged: its database file `db`", "holds no valid sled log segment"],
        );
    }
}

#[test]
fn a_truncated_db() {
    let w = written();
    for source in [&w.fresh, &w.restarted] {
        refused(&w, source, |d| truncate(&d.join("db"), 0), &["`db` (0 bytes) holds no valid sled log segment"]);
    }
    let half = |d: &Path| {
        let len = std::fs::metadata(d.join("db")).unwrap().len();
        truncate(&d.join("db"), len / 2);
    };
    // Half of a log written once: sled recovers a prefix, which the mark
    // shows is less than was on disk (or it panics, or errs), unless the
    // intents in the state segments complete it.
    intact_or_refused(&w, &w.fresh, half);
    // After a restart sled has grown `db` to whole segments: the second half
    // may be only unused space.
    intact_or_refused(&w, &w.restarted, half);
}

/// Random bytes at places in `db`: each binary either reads every checkpoint
/// intact or refuses in one line. Never a panic, never a part of the data.
#[test]
fn random_bytes_at_offsets_in_db() {
    let w = written();
    for source in [&w.fresh, &w.restarted] {
        let len = std::fs::metadata(source.join("db")).unwrap().len();
        for offset in [0, 20, 4096, len / 3, len / 2, len.saturating_sub(8192)] {
            intact_or_refused(&w, source, |d| overwrite(&d.join("db"), offset, &noise(4096, offset + 1)));
        }
    }
}

#[test]
fn a_file_where_the_data_directory_should_be() {
    let w = written();
    refused(
        &w,
        &w.fresh,
        |d| {
            std::fs::remove_dir_all(d).unwrap();
            std::fs::write(d, b"not a directory").unwrap();
        },
        &["{dir} is not a directory"],
    );
}

#[test]
fn blobs_is_a_file() {
    let w = written();
    refused(
        &w,
        &w.fresh,
        |d| {
            std::fs::remove_dir_all(d.join("blobs")).unwrap();
            std::fs::write(d.join("blobs"), b"x").unwrap();
        },
        &["`blobs` is not a directory"],
    );
}

#[test]
fn db_is_missing() {
    let w = written();
    refused(&w, &w.fresh, |d| std::fs::remove_file(d.join("db")).unwrap(), &["no database file `db`"]);
}

#[test]
fn conf_is_garbage() {
    let w = written();
    refused(&w, &w.fresh, |d| std::fs::write(d.join("conf"), noise(62, 3)).unwrap(), &["sled cannot recover it"]);
}

#[test]
fn a_foreign_sled_database() {
    let w = written();
    let bare = w.root.join("bare");
    drop(open_sled(&bare));
    wait_unlocked(&bare);
    refused(&w, &bare, |_| {}, &["without a checkpointd format version"]);
}

#[test]
fn counters_behind_the_data() {
    let w = written();
    refused(
        &w,
        &w.fresh,
        |d| edit_counters(d, |c| c.global_seq = 1, &[]),
        &["stored checkpoint sequence", "above its counter 1"],
    );
    refused(
        &w,
        &w.fresh,
        |d| edit_counters(d, |_| {}, &["checkpoints", "states", "sequences", "checkpoint_ids", "tags"]),
        &[&format!("its counters record {} checkpoints but none is stored", BIG + SMALL)],
    );
}

#[test]
fn no_permission() {
    let w = written();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let uid = root.then_some(65534);
    refused_as(
        &w,
        &w.fresh,
        |d| {
            // Root ignores modes: the child runs as nobody on a 0700 directory.
            let mode = if root { 0o700 } else { 0o000 };
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap();
        },
        &["permission denied"],
        uid,
    );
}
