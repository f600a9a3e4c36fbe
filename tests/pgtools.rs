//! The binaries' PostgreSQL side: `checkpointd import --database-url`
//! loads an export into an empty database, `checkpoint-dump --database-url`
//! reads a database read-only (the same views as of the data directory the
//! export came from), `verify` finds damage in the rows, and the serving
//! binary's ready line names the database without its password.

mod common;

use common::child::{self, CHECKPOINTD, DUMP, Daemon, dump_ok, json_lines, run};
use common::fixtures::populate;
use common::pg;
use serde_json::{Value, json};
use std::process::Output;
use tempfile::TempDir;

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// `checkpoint-dump --database-url URL ARGS`.
fn pg_dump(url: &str, args: &[&str]) -> Output {
    let mut all = vec!["--database-url", url];
    all.extend_from_slice(args);
    run(DUMP, &all, None)
}

fn pg_dump_ok(url: &str, args: &[&str]) -> String {
    let out = pg_dump(url, args);
    assert!(out.status.success(), "checkpoint-dump {args:?} failed: {:?}\nstderr: {}", out.status, text(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn import(url: &str, file: &str) -> Output {
    run(CHECKPOINTD, &["import", "--database-url", url, file], None)
}

fn without_exported_at(export: &str) -> Vec<Value> {
    let mut lines = json_lines(export);
    lines[0].as_object_mut().unwrap().remove("exported_at");
    lines
}

/// A dump without the checkpoints' `checksum`: each store checksums what
/// it stores (sled: the record's bytes; PostgreSQL: the state's), so the
/// same checkpoint carries another one in each.
fn without_checksum(dump: &str) -> String {
    let mut out = String::new();
    for line in dump.lines().filter(|l| !l.starts_with("checksum ")) {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(mut fields)) => {
                fields.remove("checksum");
                out.push_str(&Value::Object(fields).to_string());
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Runs SQL on the database at `url` (to damage it, or to look at it).
async fn sql(url: &str, batch: &str) -> Vec<tokio_postgres::SimpleQueryMessage> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    let driver = tokio::spawn(connection);
    let out = common::svc::within("SQL", client.simple_query(batch)).await.expect("SQL");
    drop(client);
    let _ = driver.await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_exported_and_imported_into_postgres_reads_the_same() {
    let tmp = TempDir::new().unwrap();
    let source = tmp.path().join("source");
    // `populate` runs a runtime of its own: not on this one's threads.
    let p = {
        let source = source.clone();
        std::thread::spawn(move || populate(&source)).join().expect("populate")
    };
    let export = dump_ok(&source, &["export"]);
    let file = tmp.path().join("export.jsonl");
    std::fs::write(&file, &export).unwrap();
    let url = pg::database().await;

    let out = import(&url, file.to_str().unwrap());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.starts_with("imported 2 sessions, 3 checkpoints, 3 annotations"), "{report}");
    assert!(report.contains("into PostgreSQL database postgresql://postgres@/"), "{report}");

    // Every view of the database is the data directory's.
    let sessions = [p.agent.to_string(), p.batch.to_string()];
    let checkpoints = [p.plan.to_string(), p.step.to_string(), p.batch_kept.to_string()];
    let mut views: Vec<Vec<&str>> = vec![vec!["sessions"], vec!["--json", "sessions"]];
    for s in &sessions {
        views.push(vec!["checkpoints", "--session", s, "--with-state"]);
        views.push(vec!["--json", "checkpoints", "--session", s, "--with-state"]);
    }
    for c in &checkpoints {
        views.push(vec!["checkpoint", c]);
        views.push(vec!["--json", "checkpoint", c]);
    }
    for args in &views {
        assert_eq!(
            without_checksum(&pg_dump_ok(&url, args)),
            without_checksum(&dump_ok(&source, args)),
            "checkpoint-dump {args:?}"
        );
    }
    // The same export, but for the header's format_version: the schema's
    // version on PostgreSQL.
    let (mut from_pg, mut from_dir) =
        (without_exported_at(&pg_dump_ok(&url, &["export"])), without_exported_at(&export));
    assert_eq!(from_pg[0]["format_version"], json!(1));
    from_pg[0].as_object_mut().unwrap().remove("format_version");
    from_dir[0].as_object_mut().unwrap().remove("format_version");
    assert_eq!(from_pg, from_dir);
    // The journal is not exported: the database has none yet.
    assert_eq!(pg_dump_ok(&url, &["--json", "events"]), "");
    let verified = pg_dump_ok(&url, &["verify"]);
    assert!(verified.starts_with("ok: 2 sessions, 3 checkpoints"), "{verified}");
    let summary = &json_lines(&pg_dump_ok(&url, &["--json", "summary"]))[0];
    let dir_summary = &json_lines(&dump_ok(&source, &["--json", "summary"]))[0];
    for key in
        ["sessions", "checkpoints", "annotations", "writes", "global_sequence", "event_sequence", "sessions_created"]
    {
        assert_eq!(summary[key], dir_summary[key], "{key}");
    }
    assert_eq!(summary["schema_version"], json!(1));
    assert!(summary["database"].as_str().unwrap().starts_with("postgresql://postgres@/"), "{summary}");
    assert!(summary.get("data_dir").is_none());

    // A second import into the same, no longer empty, database is refused.
    let again = import(&url, file.to_str().unwrap());
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("the database is not empty"), "{}", text(&again.stderr));

    // A server on the database numbers on above every imported sequence.
    let server = Daemon::start(&["--listen", "127.0.0.1:0", "--database-url", &url], &[]);
    let mut c = server.connect().await;
    let id = common::wire::checkpoint(&mut c, &p.agent.to_string(), "after import").await;
    let got = common::wire::ok(&mut c, "get_checkpoint", json!({"checkpoint_id": id})).await;
    assert_eq!(got["sequence_number"], json!(dir_summary["global_sequence"].as_u64().unwrap() + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dump_reads_a_served_database_and_verify_finds_damage() {
    let url = pg::database().await;
    let server = Daemon::start(&["--listen", "127.0.0.1:0", "--database-url", &url], &[]);
    let mut c = server.connect().await;
    let sid = common::wire::session(&mut c, "dumped").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(common::wire::checkpoint(&mut c, &sid, &format!("m{i}")).await);
    }
    common::wire::ok(&mut c, "annotate", json!({"checkpoint_id": ids[1], "note": "look"})).await;
    // Read while the server runs.
    assert!(pg_dump_ok(&url, &["verify"]).starts_with("ok: 1 sessions, 5 checkpoints"));
    let events = json_lines(&pg_dump_ok(&url, &["--json", "events", "--since", "2"]));
    assert_eq!(events.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(), vec![3, 4, 5]);
    let listed = json_lines(&pg_dump_ok(&url, &["--json", "checkpoints", "--session", &sid]));
    assert_eq!(listed.iter().map(|r| r["id"].as_str().unwrap()).collect::<Vec<_>>(), ids);
    drop(server);

    // Damage: a state that fails its checksum, a session count that lies, a
    // hole in the journal.
    sql(
        &url,
        &format!(
            "UPDATE checkpoints SET state = '{{\"m\":\"changed\"}}' WHERE id = '{}'; \
             UPDATE sessions SET checkpoint_count = 9; DELETE FROM events WHERE seq = 3",
            ids[2]
        ),
    )
    .await;
    let out = pg_dump(&url, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let report = text(&out.stdout);
    assert!(report.contains(&format!("checkpoint {}: stored state failed its checksum", ids[2])), "{report}");
    assert!(report.contains("record says 9 checkpoints, 5 stored"), "{report}");
    assert!(report.contains("events 3..3 are missing from the journal"), "{report}");
    assert!(report.contains("3 problems found"), "{report}");
    // Reading the damaged checkpoint is an error in one line, not its data.
    let out = pg_dump(&url, &["checkpoint", &ids[2]]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr).lines().count(), 1, "{}", text(&out.stderr));
}

#[tokio::test]
async fn the_dump_never_writes_and_refuses_what_is_not_a_checkpointd_database() {
    let url = pg::database().await;
    let out = pg_dump(&url, &["summary"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("holds no checkpointd schema"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // It did not create the schema (a server would have).
    let rows = sql(&url, "SELECT to_regclass('schema_version') IS NULL").await;
    let absent = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(absent.as_deref(), Some("t"));
    // Backup is for data directories.
    let out = pg_dump(&url, &["backup", "/nonexistent-backup"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("pg_dump"), "{}", text(&out.stderr));
    // An unreachable database is one line, exit 1.
    let out = pg_dump("postgresql://postgres@/nodb?host=/nonexistent-dir", &["summary"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr).lines().count(), 1, "{}", text(&out.stderr));
}

#[test]
fn the_ready_line_names_the_database_without_its_password() {
    let url = common::pg::shared().url("readyline");
    let secret = url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(common::pg::shared().admin("CREATE DATABASE readyline TEMPLATE template0"));
    let mut d = Daemon::spawn(&["--listen", "127.0.0.1:0"], &[("CHECKPOINTD_DATABASE_URL", secret.as_str())]);
    let line = d.stdout.recv_timeout(child::DEADLINE).expect("a ready line");
    assert!(line.starts_with("listening on ws://127.0.0.1:"), "{line}");
    assert!(line.ends_with(&format!("serving PostgreSQL database {url}")), "{line}");
    assert!(!line.contains("hunter2"), "{line}");
    d.terminate();
    assert!(!d.stderr().contains("hunter2"));
    // --data-dir given too is refused.
    let (status, _, stderr) =
        child::run_server(&["--listen", "127.0.0.1:0", "--data-dir", "/nonexistent", "--database-url", &url], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}
