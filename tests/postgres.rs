//! The PostgreSQL store itself (`storage::postgres`), on a real PostgreSQL:
//! schema creation and versions, sequences under concurrent writers of two
//! stores, refused writes, events written through one store reaching the
//! other's subscribers in order without a gap, and a database that goes
//! away giving `unavailable` instead of a hang.

mod common;

use checkpointd::config::StoreConfig;
use checkpointd::model::{NewCheckpoint, RetentionPolicy, SessionId};
use checkpointd::service::Service;
use checkpointd::service::hub::Delivery;
use checkpointd::storage::postgres::schema;
use checkpointd::storage::{Backend, PgStore, SharedBackend, StorageError};
use common::child::{DUMP, json_lines, run};
use common::fixtures::fixture_file;
use common::pg;
use common::svc::{raw, within};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::watch;

fn config() -> StoreConfig {
    StoreConfig::new("unused-by-postgres")
}

async fn open(url: &str) -> PgStore {
    within("opening the PostgreSQL store", PgStore::open(url, &config())).await.unwrap_or_else(|e| panic!("open: {e}"))
}

/// Runs one SQL batch on the database at `url`.
async fn sql(url: &str, batch: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    let driver = tokio::spawn(connection);
    within("a SQL batch", client.batch_execute(batch)).await.expect("SQL batch");
    drop(client);
    let _ = driver.await;
}

#[tokio::test]
async fn the_schema_is_created_then_reopened() {
    let url = pg::database().await;
    let store = open(&url).await;
    assert_eq!(store.format_version(), schema::CURRENT_SCHEMA);
    assert!(store.is_pristine().await.unwrap());
    let s = store.create_session("a".into(), raw("{}")).await.unwrap();
    let (cp, _) = store.put_checkpoint(NewCheckpoint::new(s.id, "one")).await.unwrap();
    assert_eq!(cp.sequence_number, 1);
    assert!(!store.is_pristine().await.unwrap());
    store.close();
    drop(store);
    let store = open(&url).await;
    assert_eq!(store.session(s.id).await.unwrap().checkpoint_count, 1);
    let (cp, _) = store.put_checkpoint(NewCheckpoint::new(s.id, "two")).await.unwrap();
    assert_eq!(cp.sequence_number, 2);
    let m = store.metrics().await.unwrap();
    // Creating a session journals nothing.
    assert_eq!((m.global_sequence, m.event_sequence, m.total_checkpoints), (2, 2, 2));
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_the_oldest_is_migrated() {
    let url = pg::database().await;
    drop(open(&url).await);
    sql(&url, "UPDATE schema_version SET version = 99").await;
    let err = PgStore::open(&url, &config()).await.err().expect("a newer schema must be refused");
    assert!(matches!(&err, StorageError::Refused(m) if m.contains("schema version 99")), "{err}");

    // The oldest schema, as its step first wrote it.
    let oldest = pg::database().await;
    sql(&oldest, schema::step_sql(1).expect("step 1")).await;
    let store = open(&oldest).await;
    assert_eq!(store.format_version(), schema::CURRENT_SCHEMA);
    store.create_session("a".into(), raw("{}")).await.unwrap();
}

/// `tests/fixtures/pg-v1.sql`, a database of the oldest schema holding
/// data written by an import and by a serving binary, opens with today's
/// code (migrated to the current schema) and reads back exactly what it
/// exported when it was written; then it takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_schema_fixture_opens_intact_with_current_code() {
    let url = pg::database().await;
    sql(&url, &std::fs::read_to_string(fixture_file("pg-v1.sql")).expect("the fixture")).await;
    let read = |file: &str| std::fs::read_to_string(fixture_file(file)).expect("the fixture's export");
    let at = url.clone();
    let dump = move |args: &[&str]| {
        let url = at.clone();
        let mut all = vec!["--database-url", url.as_str()];
        all.extend_from_slice(args);
        let out = run(DUMP, &all, None);
        assert!(out.status.success(), "checkpoint-dump {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let without_exported_at = |export: &str| {
        let mut lines = json_lines(export);
        lines[0].as_object_mut().expect("header").remove("exported_at");
        lines
    };
    let (export, events) =
        tokio::task::spawn_blocking(move || (dump(&["export"]), dump(&["--json", "events"]))).await.expect("the dump");
    assert_eq!(without_exported_at(&export), without_exported_at(&read("pg-v1.export.jsonl")));
    assert_eq!(events, read("pg-v1.events.jsonl"));

    let store = open(&url).await;
    assert_eq!(store.format_version(), schema::CURRENT_SCHEMA);
    let live = store.session_by_key("pg-fixture/live").await.expect("the fixture's live session");
    let before = store.newest_event_sequence().await.unwrap();
    let (cp, _) = store.put_checkpoint(NewCheckpoint::new(live.id, "after the upgrade")).await.unwrap();
    assert_eq!(cp.sequence_number, 25, "numbers go on after the fixture's");
    assert_eq!(store.newest_event_sequence().await.unwrap(), before + 1);
}

/// Two stores on one database, each with several concurrent writers: the
/// checkpoint and event sequences are 1..=N without a hole or a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_stay_consecutive_under_concurrent_writers_of_two_stores() {
    let url = pg::database().await;
    let a = Arc::new(open(&url).await);
    let b = Arc::new(open(&url).await);
    let s = a.create_session("s".into(), raw("{}")).await.unwrap().id;
    let (writers, each) = (8, 25);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = if w % 2 == 0 { Arc::clone(&a) } else { Arc::clone(&b) };
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..each {
                let (cp, _) = store.put_checkpoint(NewCheckpoint::new(s, format!("{w}/{i}"))).await.unwrap();
                seqs.push(cp.sequence_number);
            }
            seqs
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        for seq in within("a writer", t).await.unwrap() {
            assert!(all.insert(seq), "sequence {seq} handed out twice");
        }
    }
    let n = (writers * each) as u64;
    assert_eq!(all, (1..=n).collect::<BTreeSet<u64>>());
    let events = b.events(0, u64::MAX, None, usize::MAX).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<u64>>(), "one event per checkpoint, consecutive");
    assert_eq!(a.metrics().await.unwrap().global_sequence, n);
}

/// A refused write changes nothing and consumes no number, also when it
/// shares a transaction with writes that succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_consumes_no_number() {
    let url = pg::database().await;
    let store = Arc::new(open(&url).await);
    let s1 = store.create_session("one".into(), raw("{}")).await.unwrap().id;
    let s2 = store.create_session("two".into(), raw("{}")).await.unwrap().id;
    let (other, _) = store.put_checkpoint(NewCheckpoint::new(s2, "other")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut new = NewCheckpoint::new(s1, format!("{i}"));
            if i % 2 == 1 {
                // A parent in another session: a conflict.
                new.parent_id = Some(other.id);
            }
            store.put_checkpoint(new).await
        }));
    }
    let mut ok = BTreeSet::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match within("a writer", t).await.unwrap() {
            Ok((cp, _)) => assert!(ok.insert(cp.sequence_number)),
            Err(StorageError::Conflict(m)) => {
                assert_eq!(i % 2, 1);
                assert!(m.contains("belongs to another session"), "{m}");
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, (2..=11).collect::<BTreeSet<u64>>());
    let missing = SessionId::new();
    assert!(matches!(store.put_checkpoint(NewCheckpoint::new(missing, "x")).await, Err(StorageError::NotFound(_))));
    let (next, _) = store.put_checkpoint(NewCheckpoint::new(s1, "next")).await.unwrap();
    assert_eq!(next.sequence_number, 12);
    assert_eq!(store.session(s1).await.unwrap().checkpoint_count, 11);
    let m = store.metrics().await.unwrap();
    assert_eq!((m.event_sequence, m.total_checkpoints), (12, 12));
}

/// What `put_checkpoint` answers (built from what it inserted, not read
/// back) is what a later read of the checkpoint returns, whatever it
/// carries; a write refused for a missing session, sent together with its
/// insert, takes nothing and leaves the other writes of its batch alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_answers_what_a_read_returns() {
    let url = pg::database().await;
    let store = Arc::new(open(&url).await);
    let s = store.create_session("answers".into(), raw("{}")).await.unwrap().id;
    let mut root = NewCheckpoint::new(s, "root");
    root.external_id = Some("r".into());
    root.namespace = "ns".into();
    let (root, _) = store.put_checkpoint(root).await.unwrap();
    let mut full = NewCheckpoint::new(s, "full \u{e9}");
    full.namespace = "ns".into();
    full.external_id = Some("f".into());
    full.tags = vec!["b".into(), "a".into(), "a".into()];
    full.trigger = "auto:loop".parse().unwrap();
    full.metadata = Some(raw(r#"{"k": [1, 2]}"#));
    full.parent_external_id = Some("r".into());
    let mut by_id = NewCheckpoint::new(s, "by id");
    by_id.parent_id = Some(root.id);
    by_id.trigger = "scheduled".parse().unwrap();
    let mut again = NewCheckpoint::new(s, "again, not stored");
    again.namespace = "ns".into();
    again.external_id = Some("r".into());
    let mut answers = vec![root];
    for new in [full, by_id, again, NewCheckpoint::new(s, "plain")] {
        answers.push(store.put_checkpoint(new).await.unwrap().0);
    }
    assert_eq!(answers[3], answers[0], "a repeated external id answers the first");
    store
        .set_retention(s, Some(RetentionPolicy { keep_recent: Some(1), preserve_tags: vec!["a".into()] }))
        .await
        .unwrap();
    let (kept, compaction) = store.put_checkpoint(NewCheckpoint::new(s, "compacting")).await.unwrap();
    assert!(compaction.is_some_and(|c| c.removed > 0), "the retention removed older checkpoints");
    answers.push(kept);
    for answer in &answers {
        match store.checkpoint(answer.id).await {
            Ok(read) => assert_eq!(&read.summary, answer),
            Err(StorageError::NotFound(_)) => assert!(answer.tags.is_empty(), "only untagged ones were compacted"),
            Err(e) => panic!("{e}"),
        }
    }
    // The tagged one and the newest stayed.
    assert_eq!(store.checkpoint(answers[1].id).await.unwrap().summary, answers[1]);
    assert_eq!(store.checkpoint(answers[5].id).await.unwrap().summary, answers[5]);
    let listed = store.list_by_sequence(0, 100).await.unwrap();
    assert_eq!(listed.last(), answers.last());

    // Concurrent writes, every other one to a missing session: those are
    // refused with their own error and take no number.
    let missing = SessionId::new();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store.put_checkpoint(NewCheckpoint::new(if i % 2 == 0 { s } else { missing }, format!("{i}"))).await
        }));
    }
    let before = answers[5].sequence_number;
    let mut seqs = BTreeSet::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match within("a writer", t).await.unwrap() {
            Ok((cp, _)) => {
                assert_eq!(i % 2, 0);
                seqs.insert(cp.sequence_number);
            }
            Err(StorageError::NotFound(m)) => {
                assert_eq!(i % 2, 1);
                assert_eq!(m, format!("session {missing} not found"));
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(seqs, (before + 1..=before + 8).collect::<BTreeSet<u64>>());
}

/// Writes through store B reach a subscriber of store A's service, in
/// order and without a gap; a retention policy set through A applies to
/// writes through B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_through_another_store_reach_subscribers_in_order() {
    let url = pg::database().await;
    let a = Service::new(Arc::new(open(&url).await) as SharedBackend);
    let b = Service::new(Arc::new(open(&url).await) as SharedBackend);
    let s = a.create_session(Some("s".into()), None).await.unwrap().id;
    let mut sub = a.subscribe(s, None).await.unwrap();
    let n = 200;
    let writer = {
        let b = b.clone();
        tokio::spawn(async move {
            for i in 0..n {
                b.checkpoint(NewCheckpoint::new(s, format!("{i}"))).await.unwrap();
            }
        })
    };
    let mut last = 0;
    for _ in 0..n {
        match within("an event from the other store", sub.next()).await {
            Some(Delivery::Event(e)) => {
                assert_eq!(e.seq, last + 1, "events in order without a gap");
                last = e.seq;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    within("the writer", writer).await.unwrap();
    // `since` resumes on A from what B wrote last.
    let newest = b.store().metrics().await.unwrap().event_sequence;
    let mut resumed = a.subscribe(s, Some(newest)).await.unwrap();
    b.checkpoint(NewCheckpoint::new(s, "after")).await.unwrap();
    match within("the event after a resume", resumed.next()).await {
        Some(Delivery::Event(e)) => assert_eq!(e.seq, newest + 1),
        other => panic!("unexpected {other:?}"),
    }
    a.set_retention(s, Some(RetentionPolicy { keep_recent: Some(3), preserve_tags: vec![] })).await.unwrap();
    b.checkpoint(NewCheckpoint::new(s, "compacting")).await.unwrap();
    assert_eq!(a.store().session(s).await.unwrap().checkpoint_count, 3);
}

/// A loopback TCP proxy to the cluster's unix socket that the test can cut:
/// while cut, it refuses new connections and drops the open ones.
struct Proxy {
    port: u16,
    cut: watch::Sender<bool>,
}

impl Proxy {
    async fn start(socket: std::path::PathBuf) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, cuts) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else { return };
                if *cuts.borrow() {
                    continue;
                }
                let socket = socket.clone();
                let mut cuts = cuts.clone();
                tokio::spawn(async move {
                    let Ok(mut unix) = UnixStream::connect(&socket).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix) => {}
                        _ = cuts.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Proxy { port, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// The database unreachable: reads and writes fail with `unavailable`
/// within the timeout (no hang, no panic), and work again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_gives_unavailable_then_recovers() {
    let url = pg::database().await;
    let db = url.split('/').nth(3).and_then(|p| p.split('?').next()).expect("a database name").to_string();
    let proxy = Proxy::start(pg::shared_async().await.dir().join(".s.PGSQL.5432")).await;
    let via = format!("postgresql://postgres@127.0.0.1:{}/{db}", proxy.port);
    let service = Service::new(Arc::new(open(&via).await) as SharedBackend);
    let s = service.create_session(None, None).await.unwrap().id;
    proxy.set_cut(true);
    let limit = checkpointd::config::PG_TIMEOUT + Duration::from_secs(5);
    let write = tokio::time::timeout(limit, service.checkpoint(NewCheckpoint::new(s, "lost"))).await;
    let err = write.expect("a write must not hang").expect_err("no database: no write");
    assert_eq!(err.code(), "unavailable", "{err}");
    let read = tokio::time::timeout(limit, service.get_session(s)).await.expect("a read must not hang");
    assert_eq!(read.expect_err("no database: no read").code(), "unavailable");
    proxy.set_cut(false);
    let cp =
        within("a write once the database is back", service.checkpoint(NewCheckpoint::new(s, "back"))).await.unwrap();
    assert_eq!(cp.sequence_number, 1, "the failed write consumed nothing");
}

/// A state changed behind the store's back fails its checksum: `validate`
/// reports it, and reading it is refused as corrupt.
#[tokio::test]
async fn validate_reports_a_changed_state() {
    let url = pg::database().await;
    let store = open(&url).await;
    let s = store.create_session("s".into(), raw("{}")).await.unwrap().id;
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut new = NewCheckpoint::new(s, format!("{i}"));
        new.state = Some(raw(&format!("{{\"step\":{i}}}")).into());
        ids.push(store.put_checkpoint(new).await.unwrap().0.id);
    }
    sql(&url, &format!("UPDATE checkpoints SET state = '{{\"step\":9}}' WHERE id = '{}'", ids[1].0)).await;
    let v = store.validate(None).await.unwrap();
    assert_eq!((v.valid, v.invalid, v.invalid_ids.clone()), (2, 1, vec![ids[1]]));
    assert_eq!(store.validate(Some(s)).await.unwrap(), v);
    assert!(matches!(store.checkpoint(ids[1]).await, Err(StorageError::Corrupt(m)) if m.contains("checksum")));
    store.checkpoint(ids[0]).await.unwrap();
}

/// Counters at the end of what PostgreSQL's bigint holds: a write is
/// refused (`Failed`), nothing wraps around.
#[tokio::test]
async fn exhausted_sequences_refuse_writes() {
    let url = pg::database().await;
    let store = open(&url).await;
    let s = store.create_session("s".into(), raw("{}")).await.unwrap().id;
    sql(&url, &format!("UPDATE counters SET global_seq = {}", i64::MAX - 1)).await;
    let err = store.put_checkpoint(NewCheckpoint::new(s, "x")).await.expect_err("exhausted");
    assert!(matches!(&err, StorageError::Failed(m) if m.contains("exhausted")), "{err}");
    assert_eq!(store.session(s).await.unwrap().checkpoint_count, 0);
}
