//! `checkpoint-dump` against real data directories: every command's output,
//! the directory unchanged byte for byte after each command, the lock of a
//! running server, `--snapshot`, `verify` finding damage, exit codes.

mod common;

use checkpointd::client::Client;
use checkpointd::model::SessionId;
use checkpointd::storage::codec;
use checkpointd::storage::keys;
use checkpointd::storage::migrate::{self, CURRENT_FORMAT};
use checkpointd::storage::records::{Counters, WriteRecord};
use common::child::{DUMP, Daemon, dump, dump_ok, json_lines, run};
use common::fixtures::{
    F2_CHILD, F2_CK1, F2_CK2, F2_PLAIN, F2_THREAD, fixture, fixture_file, populate, populate_format2,
};
use common::fs::{copy_dir, files, open_sled, wait_unlocked};
use serde_json::{Value, json};
use std::path::Path;
use tempfile::TempDir;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `args` and checks that no file of `dir` changed.
fn dump_unchanged(dir: &Path, args: &[&str]) -> std::process::Output {
    let before = files(dir);
    let out = dump(dir, args);
    assert_eq!(files(dir), before, "checkpoint-dump {args:?} changed the data directory");
    out
}

#[test]
fn every_command_reads_without_changing_a_byte() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("data");
    let p = populate(&dir);
    let (agent, plan, step) = (p.agent.to_string(), p.plan.to_string(), p.step.to_string());
    let commands: Vec<Vec<&str>> = vec![
        vec!["summary"],
        vec!["sessions"],
        vec!["checkpoints", "--session", &agent],
        vec!["checkpoints", "--session", &agent, "--with-state"],
        vec!["checkpoint", &step],
        vec!["events"],
        vec!["events", "--since", "3", "--limit", "2"],
        vec!["verify"],
        vec!["export"],
    ];
    let mut outputs = Vec::new();
    for mode in [&[][..], &["--json"][..], &["--snapshot"][..], &["--snapshot", "--json"][..]] {
        for cmd in &commands {
            let args: Vec<&str> = mode.iter().chain(cmd).copied().collect();
            let out = dump_unchanged(&dir, &args);
            assert!(out.status.success(), "{args:?}: {}", stderr(&out));
            outputs.push((args.join(" "), String::from_utf8(out.stdout).unwrap()));
        }
    }
    let out = |args: &str| &outputs.iter().find(|(a, _)| a == args).unwrap_or_else(|| panic!("{args}")).1;

    let summary = &json_lines(out("--json summary"))[0];
    assert_eq!(summary["format_version"], checkpointd::storage::migrate::CURRENT_FORMAT);
    assert_eq!(
        (&summary["sessions"], &summary["checkpoints"], &summary["annotations"], &summary["events"]),
        (&json!(2), &json!(3), &json!(3), &json!(11))
    );
    assert_eq!((&summary["global_sequence"], &summary["event_sequence"]), (&json!(7), &json!(11)));
    assert_eq!((&summary["oldest_event"], &summary["sessions_created"]), (&json!(1), &json!(3)));
    assert!(summary["bytes_on_disk"].as_u64().unwrap() > 0);
    assert!(out("summary").lines().any(|l| l.split_whitespace().eq(["global_sequence", "7"])));

    // Aligned table, full ids, creation order.
    let sessions: Vec<&str> = out("sessions").lines().collect();
    assert_eq!(sessions.len(), 3, "{}", out("sessions"));
    assert!(sessions[0].starts_with("ID ") && sessions[0].contains("LAST_SEQUENCE"));
    assert!(sessions[1].starts_with(&agent) && sessions[1].contains("agent-a"));
    assert_eq!(sessions[1].find("agent-a"), sessions[2].find("batch-b"), "columns align");
    let json_sessions = json_lines(out("--json sessions"));
    assert_eq!(json_sessions[0]["metadata"], json!({"owner": "ops", "n": 1}));
    assert_eq!(json_sessions[0]["retention"], json!({"keep_recent": 50, "preserve_tags": ["keep"]}));
    assert_eq!(json_sessions[1]["checkpoint_count"], 1);

    // Checkpoints in sequence order; the deleted one is gone.
    let rows = json_lines(out(&format!("--json checkpoints --session {agent} --with-state")));
    let seqs: Vec<u64> = rows.iter().map(|r| r["sequence_number"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(rows[0]["state"], json!({"step": 1, "nested": {"z": 1, "a": [1, 2.5, "x"]}}));
    assert!(out(&format!("--json checkpoints --session {agent} --with-state")).contains(r#"2.50"#), "state verbatim");
    assert_eq!(rows[1]["trigger"], "auto:tool_call");
    assert_eq!(rows[1]["parent_id"], plan);
    assert!(json_lines(out(&format!("--json checkpoints --session {agent}")))[0].get("state").is_none());
    let table: Vec<&str> = out(&format!("checkpoints --session {agent}")).lines().collect();
    assert_eq!(table.len(), 3);
    assert!(table[2].starts_with("2 ") && table[2].contains(&step) && table[2].contains(r"step two\nsecond line"));

    // One checkpoint in full.
    let full = &json_lines(out(&format!("--json checkpoint {step}")))[0];
    assert_eq!(full["state"], json!({"step": 2}));
    assert_eq!(full["metadata"], json!({"host": "fixture", "attempt": 1}));
    assert_eq!(full["annotations"][0]["severity"], "critical");
    assert_eq!(full["annotations"][1]["note"], "second note");
    let human = out(&format!("checkpoint {step}"));
    assert!(human.lines().any(|l| l.split_whitespace().eq(["parent_id", plan.as_str()])), "{human}");
    assert!(human.lines().any(|l| l.starts_with("annotation 1") && l.contains("warning") && l.contains("second note")));

    // Events: all, and `--since` exclusive with `--limit`.
    let events = json_lines(out("--json events"));
    assert_eq!(events.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(), (1..=11).collect::<Vec<_>>());
    let page = json_lines(out("--json events --since 3 --limit 2"));
    assert_eq!(page.iter().map(|e| e["seq"].clone()).collect::<Vec<_>>(), [json!(4), json!(5)]);
    assert_eq!(out("events --since 3 --limit 2").lines().count(), 3);
    assert!(out("events").contains("session_deleted"));

    assert!(out("verify").starts_with("ok: 2 sessions, 3 checkpoints"), "{}", out("verify"));
    assert_eq!(json_lines(out("--json verify"))[0]["ok"], true);
    assert_eq!(json_lines(out("export")).len(), 9);
    // A snapshot reads the same data.
    assert_eq!(out("--snapshot sessions"), out("sessions"));
}

#[test]
fn a_directory_without_a_format_version_is_refused_and_nothing_is_created() {
    let tmp = TempDir::new().unwrap();
    // sled files but no checkpointd format version: not ours, or damaged
    // beyond what sled could recover. Either way, it is refused in one line.
    let dir = tmp.path().join("bare");
    drop(open_sled(&dir));
    wait_unlocked(&dir);
    for args in [&["--json", "summary"][..], &["verify"][..], &["export"][..]] {
        let out = dump_unchanged(&dir, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("without a checkpointd format version"), "{err}");
    }

    // A missing directory is an error and stays missing.
    let missing = tmp.path().join("missing");
    let out = dump(&missing, &["summary"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!missing.exists(), "checkpoint-dump created {}", missing.display());
    // An empty directory is not a data directory, and stays empty.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = dump(&empty, &["sessions"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a checkpointd data directory"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn a_running_server_holds_the_lock_and_snapshot_reads_a_copy() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("live");
    let server = Daemon::serve(&dir, &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (session, checkpoint) = rt.block_on(async {
        let mut c = Client::connect(server.url()).await.unwrap();
        let s = c.create_session("live-one").await.unwrap();
        let id = c.checkpoint(&s, "while serving", json!({"n": 1}), json!({"tags": ["t"]})).await.unwrap();
        (s, id)
    });

    let out = dump(&dir, &["summary"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("locked by a running checkpointd server") && err.contains("--snapshot"), "{err}");

    let sessions = json_lines(&dump_ok(&dir, &["--snapshot", "--json", "sessions"]));
    assert_eq!(sessions.len(), 1);
    assert_eq!((&sessions[0]["id"], &sessions[0]["name"]), (&json!(session), &json!("live-one")));
    let full = &json_lines(&dump_ok(&dir, &["--snapshot", "--json", "checkpoint", &checkpoint]))[0];
    assert_eq!(full["state"], json!({"n": 1}));
    assert!(dump_ok(&dir, &["--snapshot", "verify"]).starts_with("ok:"));
    drop(server);
    wait_unlocked(&dir);
    // Once the server is gone, the plain read works again.
    assert!(dump(&dir, &["summary"]).status.success());
}

#[test]
fn verify_reports_each_kind_of_damage() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("data");
    let p = populate(&dir);
    {
        let db = open_sled(&dir);
        let meta = db.open_tree("meta").unwrap();
        // Nothing pending to re-apply over the damage.
        meta.remove(keys::META_INTENT).unwrap();
        // A flipped byte in a stored state.
        let states = db.open_tree("states").unwrap();
        let key = keys::checkpoint_key(p.agent, 2);
        let mut state = states.get(key).unwrap().unwrap().to_vec();
        state[1] ^= 0x01;
        states.insert(key, state).unwrap();
        // A missing index entry.
        db.open_tree("sequences").unwrap().remove(keys::sequence_key(6)).unwrap();
        // An index entry pointing at nothing.
        db.open_tree("tags").unwrap().insert(keys::tag_key(p.batch, "ghost", 99), &[][..]).unwrap();
        // Counters that disagree with the data.
        let mut counters: Counters = codec::decode(&meta.get(keys::META_COUNTERS).unwrap().unwrap(), "c").unwrap();
        counters.checkpoints += 1;
        meta.insert(keys::META_COUNTERS, codec::encode(&counters)).unwrap();
        db.flush().unwrap();
    }
    wait_unlocked(&dir);
    let out = dump_unchanged(&dir, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let problems: Vec<&str> = text.lines().filter(|l| l.starts_with("problem: ")).collect();
    let has = |what: &str| problems.iter().any(|l| l.contains(what));
    assert!(has(&format!("checkpoint {}: stored state failed its checksum", p.step)), "{text}");
    assert!(has(&format!("sequences: 6 (checkpoint {}) is missing", p.batch_kept)), "{text}");
    assert!(has("\"ghost\" at session"), "{text}");
    assert!(has("counters: 4 checkpoints counted, 3 stored"), "{text}");
    assert_eq!(problems.len(), 4, "{text}");
    assert!(text.lines().any(|l| l.starts_with("4 problems found")), "{text}");
    let json = json_lines(&String::from_utf8(dump(&dir, &["--json", "verify"]).stdout).unwrap());
    assert_eq!(json.last().unwrap()["problems"], 4);
    assert_eq!(json.last().unwrap()["ok"], false);
}

#[test]
fn usage_errors_exit_2_and_errors_exit_1() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("data");
    populate(&dir);
    for args in [
        &["frobnicate"][..],
        &["checkpoints"][..],
        &["summary", "--no-such-option"][..],
        &["checkpoint", "not-a-uuid"][..],
        &["events", "--since", "-1"][..],
    ] {
        assert_eq!(dump_unchanged(&dir, args).status.code(), Some(2), "{args:?}");
    }
    // Options go before or after the command.
    let after = dump_unchanged(&dir, &["summary", "--json"]);
    assert_eq!(after.status.code(), Some(0), "{}", stderr(&after));
    assert_eq!(after.stdout, dump_unchanged(&dir, &["--json", "summary"]).stdout);
    let unknown = uuid_like();
    let out = dump_unchanged(&dir, &["checkpoint", &unknown]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let out = dump_unchanged(&dir, &["checkpoints", "--session", &unknown]);
    assert_eq!(out.status.code(), Some(1));
    assert!(run(DUMP, &["--help"], None).status.success());
}

/// Every command on a format-1 directory (a copy of the fixture) reads a
/// private copy migrated to the current format, says so on stderr, and
/// leaves the directory as it was, byte for byte, still in format 1.
#[test]
fn a_format_1_directory_is_read_through_a_migrated_copy_and_left_unchanged() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("v1");
    copy_dir(&fixture(1), &dir);
    let export = json_lines(&std::fs::read_to_string(fixture_file("v1.export.jsonl")).unwrap());
    let agent = export[1]["id"].as_str().unwrap().to_string();
    let plan = export[2]["id"].as_str().unwrap().to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["summary"],
        vec!["sessions"],
        vec!["checkpoints", "--session", &agent, "--with-state"],
        vec!["checkpoint", &plan],
        vec!["events"],
        vec!["verify"],
        vec!["export"],
    ];
    let mut outputs = Vec::new();
    for mode in [&[][..], &["--json"][..], &["--snapshot"][..]] {
        for cmd in &commands {
            let args: Vec<&str> = mode.iter().chain(cmd).copied().collect();
            let out = dump_unchanged(&dir, &args);
            assert!(out.status.success(), "{args:?}: {}", stderr(&out));
            let note = stderr(&out);
            assert!(
                note.contains("note:") && note.contains("format version 1") && note.contains("unchanged"),
                "{args:?} says it read a migrated copy: {note}"
            );
            outputs.push((args.join(" "), String::from_utf8(out.stdout).unwrap()));
        }
    }
    let out = |args: &str| &outputs.iter().find(|(a, _)| a == args).unwrap_or_else(|| panic!("{args}")).1;
    let summary = &json_lines(out("--json summary"))[0];
    assert_eq!((&summary["format_version"], &summary["read_format"]), (&json!(1), &json!(CURRENT_FORMAT)));
    assert_eq!((&summary["sessions"], &summary["checkpoints"], &summary["writes"]), (&json!(2), &json!(3), &json!(0)));
    assert!(out("summary").contains(&format!("1 (read through a copy migrated to format {CURRENT_FORMAT})")));
    assert!(out("verify").starts_with("ok: 2 sessions, 3 checkpoints"), "{}", out("verify"));
    assert_eq!(*out("--json events"), std::fs::read_to_string(fixture_file("v1.events.jsonl")).unwrap());
    let mut exported = json_lines(out("export"));
    assert_eq!(exported[0]["format_version"], 1, "the export says which format it came from");
    assert_eq!(exported.len(), export.len());
    for (got, want) in exported.iter_mut().zip(&export).skip(1) {
        assert_eq!(got, want);
    }
    let db = open_sled(&dir);
    assert_eq!(migrate::read_version(&db.open_tree("meta").unwrap()).unwrap(), Some(1), "still format 1");
    drop(db);
    wait_unlocked(&dir);

    // A backup of it is a copy of what is there: format 1, not migrated.
    let dest = tmp.path().join("backup");
    assert!(dump_unchanged(&dir, &["backup", dest.to_str().unwrap()]).status.success());
    let db = open_sled(&dest);
    assert_eq!(migrate::read_version(&db.open_tree("meta").unwrap()).unwrap(), Some(1));
}

/// Damage the format-1 tool never met (it never decoded this record) makes
/// the migration of the private copy fail: the copy is read as it is, every
/// command says so, and `verify` reports it, as checkpointd would refuse to
/// start on the directory.
#[test]
fn a_format_1_directory_whose_migration_fails_is_read_unmigrated_and_verify_says_why() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("v1");
    copy_dir(&fixture(1), &dir);
    {
        let db = open_sled(&dir);
        let ghost: SessionId = "00000000-0000-4000-8000-0000000000bb".parse().unwrap();
        db.open_tree("sessions").unwrap().insert(keys::session_key(ghost), &b"not a record"[..]).unwrap();
        db.flush().unwrap();
    }
    wait_unlocked(&dir);
    let out = dump_unchanged(&dir, &["--json", "summary"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let warning = stderr(&out);
    assert!(warning.contains("warning:") && warning.contains("failed") && warning.contains("unmigrated"), "{warning}");
    let summary = &json_lines(&String::from_utf8(out.stdout).unwrap())[0];
    assert_eq!((&summary["format_version"], &summary["read_format"]), (&json!(1), &json!(1)));

    let out = dump_unchanged(&dir, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with(&format!("problem: migrating format 1 to {CURRENT_FORMAT} fails"))
            && l.contains("namespaces_and_keys")),
        "{text}"
    );
    let db = open_sled(&dir);
    assert_eq!(migrate::read_version(&db.open_tree("meta").unwrap()).unwrap(), Some(1));
}

/// Keys, namespaces, external ids and pending writes, in every view.
#[test]
fn format_2_data_is_shown_in_every_view() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("data");
    populate_format2(&dir);

    let summary = &json_lines(&dump_ok(&dir, &["--json", "summary"]))[0];
    let current = json!(checkpointd::storage::migrate::CURRENT_FORMAT);
    assert_eq!((&summary["format_version"], &summary["read_format"]), (&current, &current));
    assert_eq!((&summary["checkpoints"], &summary["writes"]), (&json!(4), &json!(5)));
    assert!(dump_ok(&dir, &["summary"]).lines().any(|l| l.split_whitespace().eq(["writes", "5"])));

    let sessions: Vec<String> = dump_ok(&dir, &["sessions"]).lines().map(String::from).collect();
    assert!(sessions[0].ends_with("  KEY"), "{sessions:?}");
    assert!(sessions[1].starts_with(F2_THREAD) && sessions[1].ends_with("  thread-1"), "{sessions:?}");
    assert!(sessions[2].starts_with(F2_PLAIN) && sessions[2].ends_with("  -"), "{sessions:?}");
    let json_sessions = json_lines(&dump_ok(&dir, &["--json", "sessions"]));
    assert_eq!(json_sessions[0]["key"], "thread-1");
    assert!(json_sessions[1].get("key").is_none());

    let table = dump_ok(&dir, &["checkpoints", "--session", F2_THREAD]);
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(&rows[0][..4], ["SEQUENCE", "ID", "NAMESPACE", "EXTERNAL_ID"], "{table}");
    assert!(rows[0].contains(&"PARENT_EXTERNAL_ID"), "{table}");
    assert_eq!(&rows[1][..4], ["3", F2_CK1, "-", "ck-1"], "{table}");
    assert_eq!(&rows[2][..4], ["5", F2_CK2, "-", "ck-2"], "{table}");
    assert!(rows[2].contains(&F2_CK1) && rows[2].contains(&"ck-1"), "parent by both ids: {table}");
    assert_eq!(&rows[3][..4], ["6", F2_CHILD, "child:1", "ck-1"], "{table}");
    let json_rows = json_lines(&dump_ok(&dir, &["--json", "checkpoints", "--session", F2_THREAD]));
    assert_eq!(json_rows[1]["parent_external_id"], "ck-1");
    assert_eq!((&json_rows[2]["namespace"], &json_rows[2]["external_id"]), (&json!("child:1"), &json!("ck-1")));
    assert!(json_rows[0].get("namespace").is_none(), "the root namespace is not shown, as on the wire");

    // A checkpoint with its pending writes, ordered by (task path, task id, idx).
    let human = dump_ok(&dir, &["checkpoint", F2_CK2]);
    let field = |name: &str| {
        human.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("{name}: {human}"))
    };
    assert!(field("namespace").ends_with(r#""" (root)"#), "{human}");
    assert!(field("external_id").ends_with(" ck-2") && field("parent_external_id").ends_with(" ck-1"), "{human}");
    assert!(field("writes").ends_with(" 3"), "{human}");
    let writes: Vec<&str> = human.lines().filter(|l| l.starts_with("write ")).collect();
    assert_eq!(writes.len(), 3, "{human}");
    assert!(writes[0].contains("task t-b  idx 0  channel messages  path a-path  [1, 2.50]"), "{human}");
    assert!(writes[1].contains("task t-b  idx 1  channel tools"), "{human}");
    assert!(writes[2].contains("task t-a  idx -1  channel __error__  path z-path"), "{human}");
    let text = dump_ok(&dir, &["--json", "checkpoint", F2_CK2]);
    assert!(text.contains(r#""value":[1, 2.50]"#), "values verbatim: {text}");
    let full = &json_lines(&text)[0];
    let brief: Vec<Value> =
        full["writes"].as_array().unwrap().iter().map(|w| json!([w["task_id"], w["idx"], w["task_path"]])).collect();
    assert_eq!(brief, [json!(["t-b", 0, "a-path"]), json!(["t-b", 1, "a-path"]), json!(["t-a", -1, "z-path"])]);
    assert_eq!(full["writes"][2]["value"], json!({"type": "json", "v": "boom"}));
    assert_eq!(full["annotations"][0]["note"], "seen");
    let child = &json_lines(&dump_ok(&dir, &["--json", "checkpoint", F2_CHILD]))[0];
    assert_eq!(child["writes"].as_array().unwrap().len(), 1, "writes are per namespace");
    let first = &json_lines(&dump_ok(&dir, &["--json", "checkpoint", F2_CK1]))[0];
    assert!(first.get("writes").is_none(), "no writes: omitted, as on the wire");

    let verify = dump_ok(&dir, &["verify"]);
    assert!(verify.starts_with("ok: 2 sessions, 4 checkpoints") && verify.contains(" 5 writes,"), "{verify}");
    assert_eq!(json_lines(&dump_ok(&dir, &["--json", "verify"]))[0]["writes"], 5);
}

#[test]
fn verify_checks_the_writes_tree() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("data");
    populate_format2(&dir);
    let thread: SessionId = F2_THREAD.parse().unwrap();
    let gone: SessionId = "00000000-0000-4000-8000-0000000000aa".parse().unwrap();
    {
        let db = open_sled(&dir);
        db.open_tree("meta").unwrap().remove(keys::META_INTENT).unwrap();
        let writes = db.open_tree("writes").unwrap();
        let good = codec::encode(&WriteRecord { task_path: String::new(), channel: "c".into(), value: b"1".to_vec() });
        // A key that does not decode.
        writes.insert(b"not a writes key", good.clone()).unwrap();
        // A record that does not decode.
        writes.insert(keys::write_key(thread, "", "ck-9", "t-x", 0), &b"garbage"[..]).unwrap();
        // A value that is not JSON.
        let bad = codec::encode(&WriteRecord { task_path: String::new(), channel: "c".into(), value: b"{".to_vec() });
        writes.insert(keys::write_key(thread, "", "ck-9", "t-x", 1), bad).unwrap();
        // A write of a session that does not exist.
        writes.insert(keys::write_key(gone, "", "ck-1", "t-y", 0), good).unwrap();
        db.flush().unwrap();
    }
    wait_unlocked(&dir);
    let out = dump_unchanged(&dir, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let problems: Vec<&str> = text.lines().filter(|l| l.starts_with("problem: ")).collect();
    let has = |what: &str| problems.iter().any(|l| l.contains(what));
    assert!(has("writes: undecodable key"), "{text}");
    assert!(has(r#"pending write 0 of task "t-x" for "ck-9""#), "{text}");
    let not_json = |l: &&str| l.contains(r#"pending write 1 of task "t-x""#) && l.contains("stored JSON is invalid");
    assert!(problems.iter().any(not_json), "{text}");
    assert!(has(&format!("of session {gone}: the session does not exist")), "{text}");
    assert_eq!(problems.len(), 4, "{text}");
    assert!(text.contains("9 writes"), "{text}");
}

fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000000".to_string()
}
