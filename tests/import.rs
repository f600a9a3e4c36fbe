//! `checkpointd import`: a `checkpoint-dump export` loaded into an empty
//! directory reads back identically and numbers on above every imported
//! sequence; forge-reasoning exports become `forge:<id>` sessions.

mod common;

use checkpointd::config::StoreConfig;
use checkpointd::model::{NewCheckpoint, SessionId, Trigger};
use checkpointd::service::Service;
use common::child::{CHECKPOINTD, dump_ok, json_lines, run};
use common::fixtures::{
    F2_CHILD, F2_CK1, F2_CK2, F2_PLAIN, F2_PLAIN_CP, F2_THREAD, fixture_file, format2_export, populate,
};
use common::fs::wait_unlocked;
use common::inproc::open_store;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use tempfile::TempDir;

fn import(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut all = vec!["import", "--data-dir", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    run(CHECKPOINTD, &all, stdin)
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Adds one checkpoint through the service; returns its sequence number.
fn next_checkpoint(dir: &Path, session: SessionId) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let seq = rt.block_on(async {
        let svc = Service::new(Arc::new(open_store(&StoreConfig::new(dir))));
        let new = NewCheckpoint {
            session_id: session,
            message: "after import".into(),
            tags: vec![],
            trigger: Trigger::Manual,
            state: None,
            metadata: None,
            parent_id: None,
            namespace: String::new(),
            external_id: None,
            parent_external_id: None,
        };
        let seq = svc.checkpoint(new).await.unwrap().sequence_number;
        svc.close();
        seq
    });
    drop(rt);
    wait_unlocked(dir);
    seq
}

/// Every dump view that must survive a round trip.
fn views(dir: &Path, sessions: &[String], checkpoints: &[String]) -> Vec<String> {
    let mut out = vec![dump_ok(dir, &["sessions"]), dump_ok(dir, &["--json", "sessions"])];
    for s in sessions {
        out.push(dump_ok(dir, &["checkpoints", "--session", s, "--with-state"]));
        out.push(dump_ok(dir, &["--json", "checkpoints", "--session", s, "--with-state"]));
    }
    for c in checkpoints {
        out.push(dump_ok(dir, &["checkpoint", c]));
        out.push(dump_ok(dir, &["--json", "checkpoint", c]));
    }
    out
}

fn without_exported_at(export: &str) -> Vec<Value> {
    let mut lines = json_lines(export);
    lines[0].as_object_mut().unwrap().remove("exported_at");
    lines
}

#[test]
fn export_then_import_gives_identical_dumps_and_numbers_on_above() {
    let tmp = TempDir::new().unwrap();
    let source = tmp.path().join("source");
    let p = populate(&source);
    let export = dump_ok(&source, &["export"]);
    let file = tmp.path().join("export.jsonl");
    std::fs::write(&file, &export).unwrap();

    let target = tmp.path().join("target");
    let out = import(&target, &[file.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("imported 2 sessions, 3 checkpoints, 3 annotations"),
        "{}",
        text(&out.stdout)
    );

    let sessions = [p.agent.to_string(), p.batch.to_string()];
    let checkpoints = [p.plan.to_string(), p.step.to_string(), p.batch_kept.to_string()];
    assert_eq!(views(&target, &sessions, &checkpoints), views(&source, &sessions, &checkpoints));
    assert_eq!(without_exported_at(&dump_ok(&target, &["export"])), without_exported_at(&export));
    assert!(dump_ok(&target, &["verify"]).starts_with("ok:"));
    let summary = &json_lines(&dump_ok(&target, &["--json", "summary"]))[0];
    assert_eq!((&summary["global_sequence"], &summary["event_sequence"]), (&json!(7), &json!(11)));
    assert_eq!((&summary["events"], &summary["sessions_created"]), (&json!(0), &json!(3)));

    // The next checkpoint and event are numbered above every imported one,
    // although the newest imported sequence (6) is below the counter (7).
    assert_eq!(next_checkpoint(&target, p.agent), 8);
    let events = json_lines(&dump_ok(&target, &["--json", "events"]));
    assert_eq!(events.len(), 1);
    assert_eq!((&events[0]["seq"], &events[0]["data"]["sequence_number"]), (&json!(12), &json!(8)));
}

#[test]
fn import_reads_stdin_and_refuses_a_non_empty_directory_or_a_cut_export() {
    let tmp = TempDir::new().unwrap();
    let source = tmp.path().join("source");
    populate(&source);
    let export = dump_ok(&source, &["export"]);

    let target = tmp.path().join("from-stdin");
    let out = import(&target, &["-"], Some(export.as_bytes()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(dump_ok(&target, &["sessions"]), dump_ok(&source, &["sessions"]));

    // Not into a directory that holds data.
    let before = dump_ok(&target, &["export"]);
    let out = import(&target, &["-"], Some(export.as_bytes()));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is not empty"), "{}", text(&out.stderr));
    assert_eq!(without_exported_at(&dump_ok(&target, &["export"])), without_exported_at(&before));

    // A truncated export is reported, not silently accepted.
    let cut: String = export.lines().take(4).map(|l| format!("{l}\n")).collect();
    let out = import(&tmp.path().join("cut"), &["-"], Some(cut.as_bytes()));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("incomplete"), "{}", text(&out.stderr));

    // Usage: a file or --forge-export is required.
    assert_eq!(import(&tmp.path().join("x"), &[], None).status.code(), Some(2));
}

/// Keys, namespaces, external ids, parents by external id and pending writes
/// (of a stored checkpoint, of one not stored, in another namespace, with a
/// value that spans lines) survive export and import exactly.
#[test]
fn format_2_data_and_pending_writes_round_trip() {
    let tmp = TempDir::new().unwrap();
    let original = format2_export();
    let first = tmp.path().join("first");
    let out = import(&first, &["-"], Some(original.as_bytes()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("imported 2 sessions, 4 checkpoints, 1 annotations, 5 pending writes into"),
        "{}",
        text(&out.stdout)
    );
    // The directory exports exactly what was imported, values byte for byte.
    let export = dump_ok(&first, &["export"]);
    assert_eq!(without_exported_at(&export), without_exported_at(&original));
    assert!(export.contains(r#""value":[1, 2.50]"#), "{export}");
    assert!(export.contains(r#""value":null,"value_text":"{\n  \"later\": true\n}""#), "{export}");
    assert_eq!(json_lines(&export)[0]["export_version"], 2);
    assert!(dump_ok(&first, &["verify"]).contains(" 5 writes,"));

    // And again from that export: every view identical.
    let second = tmp.path().join("second");
    let out = import(&second, &["-"], Some(export.as_bytes()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sessions = [F2_THREAD.to_string(), F2_PLAIN.to_string()];
    let checkpoints: Vec<String> = [F2_CK1, F2_CK2, F2_CHILD, F2_PLAIN_CP].map(String::from).to_vec();
    assert_eq!(views(&second, &sessions, &checkpoints), views(&first, &sessions, &checkpoints));
    assert_eq!(without_exported_at(&dump_ok(&second, &["export"])), without_exported_at(&export));
    assert_eq!(json_lines(&dump_ok(&second, &["--json", "summary"]))[0]["writes"], 5);
}

/// Replaces line `n` (0-based) of an export with `f` of it.
fn edit_line(export: &str, n: usize, f: impl FnOnce(&mut Value)) -> String {
    let mut lines = json_lines(export);
    f(&mut lines[n]);
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
fn pending_writes_that_contradict_the_export_are_refused() {
    let tmp = TempDir::new().unwrap();
    let export = format2_export();
    let write_line = json_lines(&export).iter().position(|l| l["type"] == "write").unwrap();
    let refused = |name: &str, input: &str, expected: &str| {
        let out = import(&tmp.path().join(name), &["-"], Some(input.as_bytes()));
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text_of(&out));
        assert!(text(&out.stderr).contains(expected), "{name}: {}", text(&out.stderr));
    };
    // Of a session the export does not hold.
    let orphan = edit_line(&export, write_line, |l| l["session_id"] = json!("00000000-0000-4000-8000-0000000000aa"));
    refused("orphan", &orphan, "which does not exist");
    // The same write twice.
    let lines: Vec<&str> = export.lines().collect();
    let mut twice: String = lines.iter().map(|l| format!("{l}\n")).collect();
    twice = twice.replacen(lines[write_line], &format!("{}\n{}", lines[write_line], lines[write_line]), 1);
    let twice = edit_line(&twice, 0, |h| h["writes"] = json!(6));
    refused("twice", &twice, "already exists");
    // Ids the live operations refuse.
    let empty_task = edit_line(&export, write_line, |l| l["task_id"] = json!(""));
    refused("empty-task", &empty_task, "task id must not be empty");
    let long_id = edit_line(&export, write_line, |l| l["external_id"] = json!("x".repeat(70_000)));
    refused("long-id", &long_id, "external id is longer than");
    // Fewer writes than the header announces.
    let cut = edit_line(&export, 0, |h| h["writes"] = json!(6));
    refused("cut", &cut, "incomplete");
    // An export version this checkpointd does not know.
    let newer = edit_line(&export, 0, |h| h["export_version"] = json!(3));
    refused("newer", &newer, "export version 3");
}

/// An export written before format 2 (export version 1, no writes in the
/// header) still imports.
#[test]
fn a_version_1_export_still_imports() {
    let tmp = TempDir::new().unwrap();
    let v1 = std::fs::read_to_string(fixture_file("v1.export.jsonl")).unwrap();
    assert_eq!(json_lines(&v1)[0]["export_version"], 1);
    let dir = tmp.path().join("data");
    let out = import(&dir, &["-"], Some(v1.as_bytes()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut again = without_exported_at(&dump_ok(&dir, &["export"]));
    let mut expected = without_exported_at(&v1);
    for header in [&mut again[0], &mut expected[0]] {
        let h = header.as_object_mut().unwrap();
        h.remove("export_version");
        h.remove("format_version");
        assert!(h.remove("writes").is_none_or(|w| w == 0));
    }
    assert_eq!(again, expected);
}

fn text_of(out: &std::process::Output) -> String {
    format!("stdout: {} stderr: {}", text(&out.stdout), text(&out.stderr))
}

const FORGE_SESSION_A: &str = "a4031fa0-f667-4f41-afc8-669e8930888a";
const FORGE_SESSION_B: &str = "4765ddca-5992-423c-abb5-2a2e014282af";

#[test]
fn forge_export_becomes_forge_sessions_without_state() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("data");
    let file = fixture_file("forge-export.json");
    let out = import(&dir, &["--forge-export", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.contains("imported 4 forge checkpoints") && report.contains("0 skipped"), "{report}");
    assert!(report.contains("2 sessions created"), "{report}");

    let sessions = json_lines(&dump_ok(&dir, &["--json", "sessions"]));
    let names: Vec<(&str, &str)> =
        sessions.iter().map(|s| (s["id"].as_str().unwrap(), s["name"].as_str().unwrap())).collect();
    let a_name = format!("forge:{FORGE_SESSION_A}");
    let b_name = format!("forge:{FORGE_SESSION_B}");
    assert_eq!(names, [(FORGE_SESSION_A, a_name.as_str()), (FORGE_SESSION_B, b_name.as_str())]);
    assert_eq!(sessions[0]["created_at"], "2026-02-19T10:15:30.123456789Z", "first checkpoint's time, to the ns");

    let rows = json_lines(&dump_ok(&dir, &["--json", "checkpoints", "--session", FORGE_SESSION_A, "--with-state"]));
    let brief: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!([r["id"], r["sequence_number"], r["timestamp"], r["message"], r["tags"], r["trigger"], r["state"]])
        })
        .collect();
    assert_eq!(
        brief,
        [
            json!([
                "70783f7c-e8db-48ad-ab40-88c07088a18b",
                1,
                "2026-02-19T10:15:30.123456789Z",
                "Initial investigation",
                ["investigation", "gguf"],
                "manual",
                null
            ]),
            json!([
                "7fd0ef98-8b18-436f-885e-81ab104b3ce0",
                2,
                "2026-02-19T10:16:02.500000Z",
                "Auto: ToolCall",
                [],
                "auto:ToolCall",
                null
            ]),
            json!([
                "41b0ad13-70b8-44c0-9166-00ff2be595b2",
                5,
                "2026-02-19T10:25:45.000001Z",
                "Auto: CodeModified",
                ["fix"],
                "auto:CodeModified",
                null
            ]),
        ]
    );
    let b = json_lines(&dump_ok(&dir, &["--json", "checkpoints", "--session", FORGE_SESSION_B]));
    assert_eq!((&b[0]["trigger"], &b[0]["tags"]), (&json!("scheduled"), &json!(["scheduled"])));
    let full = &json_lines(&dump_ok(&dir, &["--json", "checkpoint", "70783f7c-e8db-48ad-ab40-88c07088a18b"]))[0];
    assert_eq!(full["state"], Value::Null);
    assert_eq!(full["metadata"]["forge_checksum"].as_str().unwrap().len(), 64, "kept, unverified");
    assert!(!dump_ok(&dir, &["export"]).contains("not-a-real-secret"), "the forge host's environment is dropped");
    assert!(dump_ok(&dir, &["verify"]).starts_with("ok:"));
    assert_eq!(json_lines(&dump_ok(&dir, &["--json", "summary"]))[0]["global_sequence"], 9);

    // Importing again skips every id; the next checkpoint numbers on from forge's global sequence.
    let out = import(&dir, &["--forge-export", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("imported 0 forge checkpoints") && text(&out.stdout).contains("4 skipped"));
    assert_eq!(next_checkpoint(&dir, FORGE_SESSION_A.parse().unwrap()), 10);
}

#[test]
fn forge_state_is_kept_on_request_and_sequence_clashes_are_refused() {
    let tmp = TempDir::new().unwrap();
    let file = fixture_file("forge-export.json");
    let original: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();

    let kept = tmp.path().join("kept");
    let out = import(&kept, &["--forge-export", file.to_str().unwrap(), "--keep-forge-state"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for cp in original["checkpoints"].as_array().unwrap() {
        let full = &json_lines(&dump_ok(&kept, &["--json", "checkpoint", cp["id"].as_str().unwrap()]))[0];
        assert_eq!(full["state"], cp["state"]);
    }
    // Those states are pretty-printed, stored byte for byte, and survive an
    // export (one object per line) and import exactly.
    let export = dump_ok(&kept, &["export"]);
    assert!(export.contains(r#""state_text":"{\n"#), "multi-line state travels as text");
    let again = tmp.path().join("again");
    let out = import(&again, &["-"], Some(export.as_bytes()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(without_exported_at(&dump_ok(&again, &["export"])), without_exported_at(&export));

    // A directory whose own checkpoint already has sequence 1: nothing is imported.
    let clash = tmp.path().join("clash");
    populate(&clash);
    let before = dump_ok(&clash, &["--json", "sessions"]);
    let out = import(&clash, &["--forge-export", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("sequence 1") && text(&out.stderr).contains("nothing was imported"));
    assert_eq!(dump_ok(&clash, &["--json", "sessions"]), before);

    // --keep-forge-state only goes with --forge-export.
    let out = import(&tmp.path().join("x"), &["some-file", "--keep-forge-state"], None);
    assert_eq!(out.status.code(), Some(2));
}
