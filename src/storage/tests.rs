//! Tests of the sled store's internals: crash cuts inside a change, reads
//! that settle, kept blobs, changes split in several.

use super::keys::{self, TreeId};
use super::*;
use crate::config::{Durability, MAX_CHANGE_CHECKPOINTS, StoreConfig};
use crate::model::{EventKind, ListQuery, NewCheckpoint, Trigger, json_empty_object};
use serde_json::value::RawValue;

/// sled releases a directory's lock a moment after its last handle is
/// dropped (its threads let go of the file): open with a deadline.
fn open_when_released(config: StoreConfig) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(config.clone()) {
            Ok(store) => return store,
            Err(StorageError::Locked(_)) if std::time::Instant::now() < deadline => std::thread::yield_now(),
            Err(e) => panic!("open {}: {e}", config.data_dir.display()),
        }
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A crash after the intent and any prefix of a change's keys: opening
/// the directory completes the change.
#[tokio::test]
async fn open_completes_a_change_cut_short() {
    let root = tempfile::tempdir().unwrap();
    let (live, pristine) = (root.path().join("live"), root.path().join("pristine"));
    let store = Store::open(StoreConfig::new(&live)).unwrap();
    let session = store.create_session("s".into(), json_empty_object()).await.unwrap().id;
    drop(store);
    copy_dir(&live, &pristine);

    let store = open_when_released(StoreConfig::new(&live));
    let state = RawValue::from_string("{\"k\":[1,2,3]}".into()).unwrap();
    let new = NewCheckpoint {
        session_id: session,
        message: "m".into(),
        tags: vec!["t".into()],
        trigger: Trigger::Manual,
        state: Some(state.into()),
        metadata: None,
        parent_id: None,
        namespace: String::new(),
        external_id: None,
        parent_external_id: None,
    };
    let (created, _) = store.put_checkpoint(new).await.unwrap();
    let intent = change::last_intent(store.trees(), &store.segments);
    let expected = store.metrics().await.unwrap();
    drop(store);
    let mut ops = usize::MAX;

    for applied in 0.. {
        if applied > ops {
            break;
        }
        let torn = root.path().join(format!("torn-{applied}"));
        copy_dir(&pristine, &torn);
        {
            let db = sled::open(&torn).unwrap();
            let trees = keys::Trees::open(&db).unwrap();
            let segments = segments::Segments::open(&torn, true).unwrap();
            ops = change::apply_prefix(&trees, &segments, &intent, applied);
            assert!(ops >= 8, "record, state, indexes, tag, session, counters, event");
            db.flush().unwrap();
        }
        let store = open_when_released(StoreConfig::new(&torn));
        let got = store.metrics().await.unwrap();
        assert_eq!(
            (got.total_checkpoints, got.global_sequence, got.event_sequence),
            (expected.total_checkpoints, expected.global_sequence, expected.event_sequence),
            "after {applied} of {ops} keys"
        );
        let cp = store.checkpoint(created.id).await.unwrap();
        assert_eq!(cp.state.get(), "{\"k\":[1,2,3]}");
        assert_eq!(store.session(session).await.unwrap().checkpoint_count, 1);
        let tagged = ListQuery { tag: Some("t".into()), ..ListQuery::default() };
        assert_eq!(store.list_checkpoints(session, &tagged, 10).await.unwrap().len(), 1);
        assert_eq!(store.events(0, u64::MAX, Some(session), 10).await.unwrap().len(), 1);
        let mark = store.trees().get(TreeId::Meta).get(keys::META_APPLIED).unwrap().unwrap();
        assert_eq!(keys::decode_applied_mark(&mark).map(|(segment, _)| segment), Some(2), "the intent re-applied");
    }
}

/// A read that observed a change not yet durable answers only once it
/// is: `settled` waits for the flush that covers everything applied
/// before it was called, and a write applied after does not hold it up.
#[tokio::test]
// The guard is held across awaits on purpose: it stalls the commit
// thread, and nothing on this task's thread takes it.
#[allow(clippy::await_holding_lock)]
async fn reads_settle_only_once_what_they_saw_is_durable() {
    use futures_util::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(StoreConfig::new(dir.path())).unwrap());
    let session = store.create_session("s".into(), json_empty_object()).await.unwrap().id;
    // Nothing in flight: a read settles at once.
    assert!(store.settled(Ok(())).now_or_never().expect("nothing to wait for").is_ok());

    let held = store.hold_commits();
    let writer = {
        let store = std::sync::Arc::clone(&store);
        tokio::spawn(async move { store.put_checkpoint(NewCheckpoint::new(session, "m")).await })
    };
    // The change is applied (visible to a raw read) but not durable.
    let mut seen = Vec::new();
    for _ in 0..10_000 {
        seen = store.reader().list_checkpoints(session, &ListQuery::default(), 10).unwrap();
        if !seen.is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(seen.len(), 1, "the write was applied");
    let mut settle = Box::pin(store.settled(Ok(())));
    assert!((&mut settle).now_or_never().is_none(), "a read must not answer before the flush");
    assert!(!writer.is_finished(), "nor is the write acknowledged");
    drop(held);
    tokio::time::timeout(std::time::Duration::from_secs(10), settle).await.unwrap().unwrap();
    let (created, _) = writer.await.unwrap().unwrap();
    assert_eq!(created.id, seen[0].id);
}

/// A blob file sled deleted before the log that replaced it was durable
/// (what a power cut can leave) is restored from its kept link when the
/// directory is opened, so the data it held is not lost.
#[tokio::test]
async fn a_blob_deleted_ahead_of_its_replacement_is_restored_at_open() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).unwrap();
    let session = store.create_session("s".into(), json_empty_object()).await.unwrap().id;
    // States that large go to segments (`segments`), metadata does not.
    let text = format!("{{\"x\":\"{}\"}}", "b".repeat(300 * 1024));
    let metadata = RawValue::from_string(text.clone()).unwrap();
    let new = NewCheckpoint { metadata: Some(metadata), ..NewCheckpoint::new(session, "big") };
    let (cp, _) = store.put_checkpoint(new).await.unwrap();
    drop(store);
    let (blobs, kept) = (dir.path().join("blobs"), dir.path().join(commit::KEPT_BLOBS));
    let names: Vec<_> = std::fs::read_dir(&blobs).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!names.is_empty(), "300 KiB of metadata is a blob file");
    for name in &names {
        let ino = |d: &std::path::Path| std::fs::metadata(d.join(name)).unwrap().ino();
        assert_eq!(ino(&blobs), ino(&kept), "{name:?} has a kept link");
        std::fs::remove_file(blobs.join(name)).unwrap();
    }
    let store = open_when_released(StoreConfig::new(dir.path()));
    assert_eq!(store.checkpoint(cp.id).await.unwrap().metadata.get(), text);
    assert_eq!(store.metrics().await.unwrap().global_sequence, 1);
}

/// A session larger than one change is deleted in several; the result is
/// the same as one change: nothing of it left, one event, exact counts.
#[tokio::test]
async fn deleting_a_large_session_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig { durability: Durability::Async, ..StoreConfig::new(dir.path()) }).unwrap();
    let big = store.create_session("big".into(), json_empty_object()).await.unwrap().id;
    let other = store.create_session("other".into(), json_empty_object()).await.unwrap().id;
    let n = 2 * MAX_CHANGE_CHECKPOINTS + 7;
    let new = |session_id| NewCheckpoint {
        session_id,
        message: "m".into(),
        tags: vec!["t".into()],
        trigger: Trigger::Manual,
        state: None,
        metadata: None,
        parent_id: None,
        namespace: String::new(),
        external_id: None,
        parent_external_id: None,
    };
    for _ in 0..n {
        store.put_checkpoint(new(big)).await.unwrap();
    }
    let kept = store.put_checkpoint(new(other)).await.unwrap().0;
    assert_eq!(store.delete_session(big).await.unwrap(), n as u64);
    assert!(matches!(store.session(big).await, Err(StorageError::NotFound(_))));
    let m = store.metrics().await.unwrap();
    assert_eq!((m.total_checkpoints, m.active_sessions), (1, 1));
    for tree in [TreeId::Checkpoints, TreeId::States, TreeId::CheckpointIds, TreeId::Sequences, TreeId::Tags] {
        assert_eq!(store.trees().get(tree).len(), 1, "{tree:?} keeps keys of the deleted session");
    }
    let deleted: Vec<_> = store
        .events(0, u64::MAX, Some(big), usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::SessionDeleted { .. }))
        .collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].kind, EventKind::SessionDeleted { removed: n as u64 });
    assert_eq!(store.checkpoint(kept.id).await.unwrap().summary.session_id, other);
}

fn big_json(bytes: usize, seed: u64) -> Box<RawValue> {
    RawValue::from_string(format!("{{\"seed\":{seed},\"x\":\"{}\"}}", "s".repeat(bytes))).unwrap()
}

/// A large state is written once, to a segment: sled holds a pointer (no
/// blob file, an intent of a few bytes), and it reads back, also after
/// reopening; its bytes count as live.
#[tokio::test]
async fn a_large_state_is_written_once_to_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).unwrap();
    let session = store.create_session("s".into(), json_empty_object()).await.unwrap().id;
    let state = big_json(300 * 1024, 1);
    let new = NewCheckpoint { state: Some(state.clone().into()), ..NewCheckpoint::new(session, "big") };
    let (cp, _) = store.put_checkpoint(new).await.unwrap();
    let stored = store.trees().get(TreeId::States).iter().values().next().unwrap().unwrap();
    let p = segments::Pointer::decode(&stored).expect("the states tree holds a pointer");
    assert_eq!(p.len as usize, state.get().len());
    let intent = change::last_intent(store.trees(), &store.segments);
    assert!(intent.len() < 4096, "the intent holds the pointer, not the state ({} bytes)", intent.len());
    let blobs = std::fs::read_dir(dir.path().join("blobs")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(blobs, 0, "no blob file");
    assert_eq!(store.checkpoint(cp.id).await.unwrap().state.get(), state.get());
    assert_eq!(store.space().live_bytes, state.get().len() as u64);
    drop(store);
    let store = open_when_released(StoreConfig::new(dir.path()));
    assert_eq!(store.checkpoint(cp.id).await.unwrap().state.get(), state.get());
    assert_eq!(store.space().live_bytes, state.get().len() as u64);
    // A small state stays inline.
    let small = NewCheckpoint { state: Some(big_json(100, 2).into()), ..NewCheckpoint::new(session, "small") };
    let (small, _) = store.put_checkpoint(small).await.unwrap();
    let key = keys::checkpoint_key(session, small.sequence_number);
    let stored = store.trees().get(TreeId::States).get(key).unwrap().unwrap();
    assert!(segments::Pointer::decode(&stored).is_none());
    assert_eq!(store.space().live_bytes, state.get().len() as u64);
}

/// Under churn (write, compact to a few, repeat) the segments stay within
/// twice the live bytes plus one segment, with every kept state readable,
/// also across reopening; deleting everything leaves only the newest
/// segment after a compaction pass and a reopen.
#[tokio::test]
async fn compaction_keeps_segments_within_twice_the_live_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let seg = 256 * 1024;
    let config = StoreConfig { segment_bytes: seg, ..StoreConfig::new(dir.path()) };
    let mut store = Store::open(config.clone()).unwrap();
    let session = store.create_session("s".into(), json_empty_object()).await.unwrap().id;
    let policy = crate::model::RetentionPolicy { keep_recent: Some(4), preserve_tags: vec![] };
    let mut kept = std::collections::VecDeque::new();
    let mut written = 0u64;
    for round in 0..12u64 {
        for i in 0..8u64 {
            let state = big_json(20 * 1024, round * 100 + i);
            written += state.get().len() as u64;
            let new = NewCheckpoint { state: Some(state.clone().into()), ..NewCheckpoint::new(session, "c") };
            let (cp, _) = store.put_checkpoint(new).await.unwrap();
            kept.push_back((cp.id, state));
        }
        store.compact(session, &policy, false).await.unwrap();
        while kept.len() > 4 {
            kept.pop_front();
        }
        store.compact_segments().await.unwrap();
        let space = store.space();
        let live: u64 = kept.iter().map(|(_, s)| s.get().len() as u64).sum();
        assert_eq!(space.live_bytes, live, "round {round}");
        assert!(
            space.bytes_on_disk <= 2 * live + seg,
            "round {round}: {} bytes of segments for {live} live ({written} written)",
            space.bytes_on_disk
        );
        if round % 4 == 3 {
            drop(store);
            store = open_when_released(config.clone());
        }
        for (id, state) in &kept {
            assert_eq!(store.checkpoint(*id).await.unwrap().state.get(), state.get(), "round {round}");
        }
    }
    assert!(written > 6 * seg, "the churn wrote many segments' worth");
    store.delete_session(session).await.unwrap();
    store.compact_segments().await.unwrap();
    drop(store);
    let store = open_when_released(config);
    // Only the newest segment is left (its id must not be used again).
    let space = store.space();
    assert_eq!((space.segments, space.live_bytes), (1, 0));
    assert!(space.bytes_on_disk <= seg);
    let left = std::fs::read_dir(dir.path().join(segments::SEGMENTS_DIR)).unwrap().count();
    assert_eq!(left, 1, "only the newest segment file is left");
}

/// A large pending-write value goes to a segment too, reads back, and is
/// moved by compaction like a state.
#[tokio::test]
async fn a_large_pending_write_value_lives_in_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig { segment_bytes: 64 * 1024, ..StoreConfig::new(dir.path()) };
    let store = Store::open(config).unwrap();
    let session = store.create_session("s".into(), json_empty_object()).await.unwrap().id;
    // A state that dies shares the write's segment: it is then more than
    // half dead.
    let dead = NewCheckpoint { state: Some(big_json(45 * 1024, 0).into()), ..NewCheckpoint::new(session, "dead") };
    let (dead, _) = store.put_checkpoint(dead).await.unwrap();
    let value = big_json(15 * 1024, 7);
    let new = crate::model::NewWrites {
        session_id: session,
        namespace: String::new(),
        external_id: "e1".into(),
        task_id: "t".into(),
        task_path: "p".into(),
        writes: vec![(0, "ch".into(), value.clone())],
    };
    assert_eq!(store.put_writes(new).await.unwrap(), 1);
    let stored = store.trees().get(TreeId::Writes).iter().values().next().unwrap().unwrap();
    assert!(change::pointer_in(TreeId::Writes as u8, &stored).is_some());
    let read = store.reader().checkpoint_writes(session, "", "e1").unwrap();
    assert_eq!(read[0].value.get(), value.get());
    // Seal the segment, kill the state, compact: the write moves to a
    // newer segment and still reads back.
    let first = change::pointer_in(TreeId::Writes as u8, &stored).unwrap().segment;
    store.delete_checkpoint(dead.id, None).await.unwrap();
    for i in 0..2 {
        let new = NewCheckpoint { state: Some(big_json(30 * 1024, i).into()), ..NewCheckpoint::new(session, "x") };
        let (cp, _) = store.put_checkpoint(new).await.unwrap();
        store.delete_checkpoint(cp.id, None).await.unwrap();
    }
    assert!(store.compact_segments().await.unwrap() >= 1);
    let stored = store.trees().get(TreeId::Writes).iter().values().next().unwrap().unwrap();
    assert!(change::pointer_in(TreeId::Writes as u8, &stored).unwrap().segment > first);
    let read = store.reader().checkpoint_writes(session, "", "e1").unwrap();
    assert_eq!(read[0].value.get(), value.get());
}

/// Opens `checkpoint-dump`'s view of a directory once the store that had it
/// has let go of its lock, and verifies it.
fn verify_when_released(dir: &std::path::Path) -> Verification {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Inspector::open(dir, false) {
            Ok(ins) => return ins.verify().unwrap(),
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::yield_now()
            }
            Err(e) => panic!("inspect {}: {e}", dir.display()),
        }
    }
}

/// A new store in `dir` with one session holding two 20 KB states (each in
/// a segment).
async fn two_large_states(dir: &std::path::Path) -> (Store, crate::model::SessionId) {
    let store = Store::open(StoreConfig::new(dir)).unwrap();
    let session = store.create_session("s".into(), json_empty_object()).await.unwrap().id;
    for i in 0..2 {
        let new = NewCheckpoint { state: Some(big_json(20_000, i).into()), ..NewCheckpoint::new(session, "big") };
        store.put_checkpoint(new).await.unwrap();
    }
    (store, session)
}

/// `verify` checks the segments: a flipped byte in a value and a segment cut
/// short under a pointer are problems; a segment no record points into (what
/// a crash leaves of appends whose change never became durable) is counted;
/// an intact directory is clean.
#[tokio::test]
async fn verify_finds_damage_in_segments() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let (store, _) = two_large_states(&dir).await;
    let pointers: Vec<segments::Pointer> = store
        .trees()
        .get(TreeId::States)
        .iter()
        .values()
        .map(|v| segments::Pointer::decode(&v.unwrap()).unwrap())
        .collect();
    store.close();
    drop(store);
    let clean = verify_when_released(&dir);
    assert!(clean.ok(), "{:?}", clean.problems);
    assert_eq!((clean.segments, clean.segment_live_bytes), (1, 2 * u64::from(pointers[0].len)));
    let damaged = |name: &str, damage: &dyn Fn(&std::path::Path)| {
        let copy = root.path().join(name);
        copy_dir(&dir, &copy);
        damage(&copy.join(segments::SEGMENTS_DIR).join(segments::file_name(pointers[0].segment)));
        verify_when_released(&copy)
    };
    use std::os::unix::fs::FileExt;
    let flipped = damaged("flipped", &|f| {
        let file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        file.write_all_at(b"#", pointers[0].offset + 100).unwrap();
    });
    let flipped = flipped.problems.join("\n");
    assert!(flipped.contains("fail their checksum"), "{flipped}");
    let cut = damaged("cut", &|f| {
        std::fs::OpenOptions::new().write(true).open(f).unwrap().set_len(pointers[1].offset + 10).unwrap();
    });
    let cut = cut.problems.join("\n");
    assert!(cut.contains("reaches past its end"), "{cut}");
    let orphan = damaged("orphan", &|f| {
        // An older segment holding an entry no record points to.
        let name = segments::file_name(0);
        let other = segments::Segments::open(&root.path().join("scratch"), true).unwrap();
        other.append(&segments::owner(TreeId::States as u8, b"nobody"), &[b'1'; 9000]).unwrap();
        std::fs::copy(other.dir().join(segments::file_name(1)), f.with_file_name(name)).unwrap();
    });
    assert_eq!(orphan.unreferenced_segments, 1, "a segment no record points into is counted");
    assert!(orphan.ok(), "dead appends are not damage: {:?}", orphan.problems);
}

/// Owner → stored pointer, as `segment_pointers` holds them.
fn index_entries(trees: &keys::Trees) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    trees.get(TreeId::SegmentPointers).iter().map(|e| e.unwrap()).map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

/// Owner → stored pointer, for every `states` / `writes` value in a segment.
fn pointers_held(trees: &keys::Trees) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for tree in [TreeId::States, TreeId::Writes] {
        for e in trees.get(tree).iter() {
            let (k, v) = e.unwrap();
            if let Some(p) = change::pointer_in(tree as u8, &v) {
                out.insert(segments::owner(tree as u8, &k), p.encode().to_vec());
            }
        }
    }
    out
}

/// The index equals the pointers held, and the live bytes are theirs.
fn assert_index_exact(store: &Store, what: &str) -> usize {
    let held = pointers_held(store.trees());
    assert_eq!(index_entries(store.trees()), held, "{what}");
    let live: u64 = held.values().map(|p| u64::from(segments::Pointer::decode(p).unwrap().len)).sum();
    assert_eq!(store.space().live_bytes, live, "{what}: live bytes");
    held.len()
}

/// `segment_pointers` holds exactly one entry per value in a segment,
/// through every path that puts, replaces or removes one: puts, pending
/// writes replaced large→small and small→large (also twice in one change),
/// deletions, retention, segment compaction, copy_session, bulk and session
/// deletion; also after reopening, where live bytes are counted from it.
#[tokio::test]
async fn segment_pointers_match_the_values_in_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig { segment_bytes: 64 * 1024, ..StoreConfig::new(dir.path()) };
    let mut store = Store::open(config.clone()).unwrap();
    let session = store.create_session("s".into(), json_empty_object()).await.unwrap().id;
    let mut ids = Vec::new();
    for i in 0..6u64 {
        let state = if i % 3 == 2 { big_json(100, i) } else { big_json(20 * 1024, i) };
        let new = NewCheckpoint {
            state: Some(state.into()),
            external_id: Some(format!("e{i}")),
            ..NewCheckpoint::new(session, "c")
        };
        ids.push(store.put_checkpoint(new).await.unwrap().0.id);
    }
    assert_eq!(assert_index_exact(&store, "puts"), 4);
    let writes = |external: &str, writes: Vec<(i32, Box<RawValue>)>| crate::model::NewWrites {
        session_id: session,
        namespace: String::new(),
        external_id: external.into(),
        task_id: "t".into(),
        task_path: "p".into(),
        writes: writes.into_iter().map(|(idx, v)| (idx, "ch".to_string(), v)).collect(),
    };
    store.put_writes(writes("e0", vec![(-1, big_json(10 * 1024, 1)), (0, big_json(10 * 1024, 2))])).await.unwrap();
    store.put_writes(writes("e1", vec![(1, big_json(10, 3))])).await.unwrap();
    assert_eq!(assert_index_exact(&store, "large writes"), 6);
    // Large → small, small → large, and both within one change.
    store.put_writes(writes("e0", vec![(-1, big_json(10, 4))])).await.unwrap();
    assert_eq!(assert_index_exact(&store, "large → small"), 5);
    store.put_writes(writes("e0", vec![(-1, big_json(10 * 1024, 5))])).await.unwrap();
    assert_eq!(assert_index_exact(&store, "small → large"), 6);
    store.put_writes(writes("e0", vec![(-1, big_json(10 * 1024, 6)), (-1, big_json(10, 7))])).await.unwrap();
    assert_eq!(assert_index_exact(&store, "large then small in one change"), 5);
    store.put_writes(writes("e0", vec![(-1, big_json(10, 8)), (-1, big_json(10 * 1024, 9))])).await.unwrap();
    assert_eq!(assert_index_exact(&store, "small then large in one change"), 6);
    // Deleting a checkpoint removes its state and its writes.
    store.delete_checkpoint(ids[0], None).await.unwrap();
    assert_eq!(assert_index_exact(&store, "delete_checkpoint"), 3);
    // Retention keeps the newest three.
    let policy = crate::model::RetentionPolicy { keep_recent: Some(3), preserve_tags: vec![] };
    store.compact(session, &policy, false).await.unwrap();
    assert_eq!(assert_index_exact(&store, "retention"), 2);
    // Churn that leaves sealed segments mostly dead, then compaction moves
    // what is left.
    for i in 0..6u64 {
        let new =
            NewCheckpoint { state: Some(big_json(20 * 1024, 100 + i).into()), ..NewCheckpoint::new(session, "x") };
        let (cp, _) = store.put_checkpoint(new).await.unwrap();
        store.delete_checkpoint(cp.id, None).await.unwrap();
    }
    let before = index_entries(store.trees());
    assert!(store.compact_segments().await.unwrap() >= 1);
    assert_eq!(assert_index_exact(&store, "compact_segments"), 2);
    assert_ne!(index_entries(store.trees()), before, "compaction repointed values");
    let (copy, copied) =
        store.copy_session(session, Some("k".into()), "copy".into(), json_empty_object()).await.unwrap();
    assert_eq!(copied, 3);
    store
        .put_writes(crate::model::NewWrites { session_id: copy.id, ..writes("e5", vec![(2, big_json(9000, 10))]) })
        .await
        .unwrap();
    assert_eq!(assert_index_exact(&store, "copy_session"), 5);
    drop(store);
    store = open_when_released(config.clone());
    assert_eq!(assert_index_exact(&store, "reopened"), 5);
    let everything = crate::model::MetadataFilter::new();
    store.delete_checkpoints(Some(session), None, &everything).await.unwrap();
    assert_eq!(assert_index_exact(&store, "delete_checkpoints"), 3);
    store.delete_session(copy.id).await.unwrap();
    assert_eq!(assert_index_exact(&store, "delete_session"), 0);
    drop(store);
    let store = open_when_released(config);
    assert_eq!(assert_index_exact(&store, "reopened empty"), 0);
}

/// `verify` reports a `segment_pointers` entry that disagrees with its
/// key, one whose key holds no value in a segment, and a value in a
/// segment without its entry.
#[tokio::test]
async fn verify_finds_a_damaged_segment_index() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let (store, session) = two_large_states(&dir).await;
    let entries: Vec<(Vec<u8>, Vec<u8>)> = index_entries(store.trees()).into_iter().collect();
    assert_eq!(entries.len(), 2);
    store.close();
    drop(store);
    let clean = verify_when_released(&dir);
    assert!(clean.ok(), "{:?}", clean.problems);
    let damaged = |name: &str, damage: &dyn Fn(&sled::Tree)| {
        let copy = root.path().join(name);
        copy_dir(&dir, &copy);
        {
            let db = sled::open(&copy).unwrap();
            damage(&db.open_tree(keys::TREE_NAMES[TreeId::SegmentPointers as usize]).unwrap());
            db.flush().unwrap();
        }
        let v = verify_when_released(&copy);
        (v.total_problems, v.problems.join("\n"))
    };
    let (n, missing) = damaged("missing", &|t| {
        t.remove(&entries[0].0).unwrap();
    });
    assert_eq!(n, 1, "{missing}");
    assert!(missing.contains("segment_pointers: states key") && missing.contains("has no entry"), "{missing}");
    let (n, wrong) = damaged("wrong", &|t| {
        t.insert(&entries[0].0, entries[1].1.as_slice()).unwrap();
    });
    assert_eq!(n, 1, "{wrong}");
    assert!(wrong.contains("but the key points to"), "{wrong}");
    let (n, stray) = damaged("stray", &|t| {
        let owner = segments::owner(TreeId::States as u8, &keys::checkpoint_key(session, 999));
        t.insert(owner, entries[1].1.as_slice()).unwrap();
    });
    assert_eq!(n, 1, "{stray}");
    assert!(stray.contains("there is no such key"), "{stray}");
}
