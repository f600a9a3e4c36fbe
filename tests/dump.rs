//! `checkpoint-dump` against real data directories: every command's output,
//! the directory unchanged byte for byte after each command, the lock of a
//! running server, `--snapshot`, `verify` finding damage, exit codes.

mod common;

use checkpointd::client::Client;
use checkpointd::storage::codec;
use checkpointd::storage::keys;
use checkpointd::storage::records::Counters;
use common::child::{DUMP, Daemon, dump, dump_ok, json_lines, run};
use common::fixtures::populate;
use common::fs::{files, open_sled, wait_unlocked};
use serde_json::json;
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
    assert!(text.lines().last().unwrap().starts_with("4 problems found"), "{text}");
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
        &["summary", "--json"][..],
        &["checkpoint", "not-a-uuid"][..],
        &["events", "--since", "-1"][..],
    ] {
        assert_eq!(dump_unchanged(&dir, args).status.code(), Some(2), "{args:?}");
    }
    let unknown = uuid_like();
    let out = dump_unchanged(&dir, &["checkpoint", &unknown]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let out = dump_unchanged(&dir, &["checkpoints", "--session", &unknown]);
    assert_eq!(out.status.code(), Some(1));
    assert!(run(DUMP, &["--help"], None).status.success());
}

fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000000".to_string()
}
