//! Integrity: reads concurrent with writes never see damage; a flipped byte
//! on disk is reported by `validate` and read as an error, never as wrong
//! data; counters read from disk never overflow. (The flipped byte and the
//! counters are written below the store, with sled: these tests are about a
//! sled data directory.)

mod common;

use checkpointd::config::Durability;
use checkpointd::model::{NewCheckpoint, SessionId};
use common::fs::open_sled;
use common::inproc::{close, config, open, open_with};
use common::svc::*;
use std::path::Path;
use std::sync::Arc;
use tempfile::TempDir;

/// Reads concurrent with writes never see a half-written checkpoint as
/// damaged, nor a listed checkpoint as missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validate_and_reads_concurrent_with_writes_see_no_damage() {
    let dir = TempDir::new().unwrap();
    let service = open_with(dir.path(), |c| c.durability = Durability::Async).await;
    let s = session(&service, "s").await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let service = service.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    let state = format!(r#"{{"w":{w},"i":{i},"pad":"{}"}}"#, "p".repeat(200));
                    let new =
                        NewCheckpoint { state: Some(raw(&state).into()), ..new_cp(s, &format!("{w}-{i}"), &["t"]) };
                    let c = service.checkpoint(new).await.unwrap();
                    if i % 4 == 3 {
                        service.delete_checkpoint(c.id, None).await.unwrap();
                    }
                }
            })
        })
        .collect();
    let reader = {
        let service = service.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut rounds = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) && rounds < 100_000 {
                rounds += 1;
                let v = service.validate(None).await.unwrap();
                assert_eq!(v.invalid, 0, "validate during writes reported {:?} as damaged", v.invalid_ids);
                // What an index lists can be read.
                let newest = service.metrics().await.unwrap().global_sequence.saturating_sub(5);
                for c in service.list_by_sequence(newest, Some(5)).await.unwrap() {
                    match service.get_checkpoint(c.id).await {
                        Ok(full) => assert_eq!(full.summary.sequence_number, c.sequence_number),
                        // Deleted since it was listed.
                        Err(e) if e.code() == "not_found" => {
                            let i: u32 = c.message.split('-').nth(1).unwrap().parse().unwrap();
                            assert_eq!(i % 4, 3, "listed {} then not found", c.message);
                        }
                        Err(e) => panic!("reading a listed checkpoint: {e}"),
                    }
                }
            }
            rounds
        })
    };
    for w in writers {
        within("writers", w).await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let rounds = within("reader", reader).await.unwrap();
    assert!(rounds > 0);
    assert_eq!(service.validate(None).await.unwrap().invalid, 0);
    close(service);
}

/// Flips one byte in the middle of the value at `key` in `tree`, through sled.
fn flip_byte(data_dir: &Path, tree: &str, key: &[u8]) {
    let db = open_sled(data_dir);
    let t = db.open_tree(tree).unwrap();
    let mut value = t.get(key).unwrap().expect("record present").to_vec();
    let mid = value.len() / 2;
    value[mid] ^= 0x20;
    t.insert(key, value).unwrap();
    t.flush().unwrap();
    db.flush().unwrap();
}

fn checkpoint_key(session: SessionId, seq: u64) -> Vec<u8> {
    let mut k = session.as_bytes().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reports_a_flipped_byte() {
    for tree in ["checkpoints", "states"] {
        let dir = TempDir::new().unwrap();
        let service = open(dir.path()).await;
        let s = session(&service, "s").await;
        let other = session(&service, "other").await;
        let mut made = Vec::new();
        for i in 0..6 {
            let state = format!(r#"{{"i":{i},"payload":"{}"}}"#, "z".repeat(100));
            let new = NewCheckpoint {
                state: Some(raw(&state).into()),
                metadata: Some(raw(r#"{"some":"metadata to make the record longer"}"#)),
                ..new_cp(if i % 2 == 0 { s } else { other }, &format!("message number {i}"), &["a", "b"])
            };
            made.push(service.checkpoint(new).await.unwrap());
        }
        assert_eq!(
            service.validate(None).await.unwrap(),
            checkpointd::model::Validation { valid: 6, ..Default::default() }
        );
        close(service);

        let victim = &made[2];
        flip_byte(&config(dir.path()).data_dir, tree, &checkpoint_key(s, victim.sequence_number));

        let service = open(dir.path()).await;
        let v = service.validate(None).await.unwrap();
        assert_eq!((v.valid, v.invalid, v.invalid_ids.clone()), (5, 1, vec![victim.id]), "tree {tree}");
        let v = service.validate(Some(s)).await.unwrap();
        assert_eq!((v.valid, v.invalid, v.invalid_ids.clone()), (2, 1, vec![victim.id]), "tree {tree}");
        let v = service.validate(Some(other)).await.unwrap();
        assert_eq!((v.valid, v.invalid), (3, 0), "tree {tree}");
        // Reading it is an error, not a panic and not wrong data.
        assert_eq!(code(service.get_checkpoint(victim.id).await), "internal", "tree {tree}");
        // Its neighbours are fine.
        assert!(service.get_checkpoint(made[0].id).await.is_ok());
        assert!(service.get_checkpoint(made[4].id).await.is_ok());
        close(service);
    }
}

/// Rewrites the counters record through sled, with nothing pending to
/// re-apply over it (a damaged or absurdly imported directory).
fn set_counters(dir: &Path, edit: impl Fn(&mut checkpointd::storage::records::Counters)) {
    use checkpointd::storage::{codec, keys};
    let dir = &config(dir).data_dir;
    let db = open_sled(dir);
    let meta = db.open_tree("meta").unwrap();
    let mut c = codec::decode(&meta.get(keys::META_COUNTERS).unwrap().unwrap(), "counters").unwrap();
    edit(&mut c);
    meta.insert(keys::META_COUNTERS, codec::encode(&c)).unwrap();
    meta.remove(keys::META_INTENT).unwrap();
    db.flush().unwrap();
    // The mark beside the data would (rightly) refuse counters that went down.
    let _ = std::fs::remove_file(dir.join(checkpointd::storage::datadir::MARK_FILE));
}

/// Counters read from disk are not trusted to stay in range: sequences at
/// the end of u64 refuse writes instead of wrapping around to reuse numbers,
/// and counts lower than what is stored never go below zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_from_disk_never_overflow() {
    let dir = TempDir::new().unwrap();
    let service = open(dir.path()).await;
    let s = session(&service, "s").await;
    let a = service.checkpoint(new_cp(s, "a", &[])).await.unwrap();
    let b = service.checkpoint(new_cp(s, "b", &[])).await.unwrap();
    close(service);

    // Counts below what is stored: deleting everything ends at zero.
    set_counters(dir.path(), |c| c.checkpoints = 1);
    let service = open(dir.path()).await;
    service.delete_checkpoint(a.id, None).await.unwrap();
    service.delete_checkpoint(b.id, None).await.unwrap();
    assert_eq!(service.metrics().await.unwrap().total_checkpoints, 0);
    assert_eq!(service.store().session(s).await.unwrap().checkpoint_count, 0);
    service.delete_session(s).await.unwrap();
    close(service);

    // Sequences at the end of u64: reads work, writes are refused.
    set_counters(dir.path(), |c| c.global_seq = u64::MAX);
    let service = open(dir.path()).await;
    assert!(service.list_sessions(None, None).await.unwrap().is_empty());
    let err = service.create_session(Some("t".into()), None).await.unwrap_err();
    assert!(err.to_string().contains("exhausted"), "{err}");
    close(service);
    set_counters(dir.path(), |c| {
        c.global_seq = 1;
        c.event_seq = u64::MAX - 1;
    });
    let service = open(dir.path()).await;
    assert!(service.create_session(Some("t".into()), None).await.unwrap_err().to_string().contains("exhausted"));
    close(service);
}
