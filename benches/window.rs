//! The `async` loss window under load: how long an acknowledged write waits
//! before it is durable (the most a power cut can take), measured by the
//! commit thread itself (`Store::longest_async_window`: from the
//! acknowledgement of a window's first write to the end of its fsync).
//!
//! 8 writers store checkpoints of 1 KiB, 64 KiB and 300 KiB in turn into a
//! store in `Durability::Async`, on the disk under the system temp dir, for
//! `CHECKPOINTD_BENCH_SECONDS` (default 10) seconds, with a `compact` every
//! 50 writes per writer. The documented bound is `ASYNC_FLUSH_INTERVAL`.
//!
//! `cargo bench --bench window`

use checkpointd::config::{ASYNC_FLUSH_DELAY, ASYNC_FLUSH_INTERVAL, Durability, StoreConfig};
use checkpointd::model::{NewCheckpoint, RetentionPolicy, Trigger};
use checkpointd::storage::{Backend, Store};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WRITERS: usize = 8;
const SIZES: [usize; 3] = [1024, 64 * 1024, 300 * 1024];

fn state(bytes: usize, n: usize) -> Box<RawValue> {
    let filler: String = std::iter::repeat_n(char::from(b'a' + (n % 26) as u8), bytes.saturating_sub(16)).collect();
    RawValue::from_string(format!("{{\"n\":{n},\"x\":\"{filler}\"}}")).expect("valid JSON")
}

fn main() {
    let seconds = std::env::var("CHECKPOINTD_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (writes, bytes, longest) = runtime.block_on(async {
        let config = StoreConfig { durability: Durability::Async, ..StoreConfig::new(dir.path()) };
        let store = Arc::new(Store::open(config).expect("open"));
        let until = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let session = store.create_session(format!("w{w}"), state(2, 0)).await.expect("session").id;
                let (mut n, mut bytes) = (0usize, 0usize);
                while Instant::now() < until {
                    let size = SIZES[n % SIZES.len()];
                    let new = NewCheckpoint {
                        session_id: session,
                        message: format!("{w}-{n}"),
                        tags: vec![],
                        trigger: Trigger::Manual,
                        state: Some(state(size, n).into()),
                        metadata: None,
                        parent_id: None,
                        namespace: String::new(),
                        external_id: None,
                        parent_external_id: None,
                    };
                    store.put_checkpoint(new).await.expect("write");
                    n += 1;
                    bytes += size;
                    if n % 50 == 0 {
                        let keep = RetentionPolicy { keep_recent: Some(10), preserve_tags: vec![] };
                        store.compact(session, &keep, false).await.expect("compact");
                    }
                }
                (n, bytes)
            }));
        }
        let (mut writes, mut bytes) = (0, 0);
        for t in tasks {
            let (n, b) = t.await.expect("writer");
            writes += n;
            bytes += b;
        }
        store.close();
        (writes, bytes, store.longest_async_window())
    });
    println!("## async loss window ({WRITERS} writers, 1 KiB / 64 KiB / 300 KiB states, {seconds} s)\n");
    println!("| writes/s | MiB/s | longest ack-to-durable | documented bound | flush delay |");
    println!("|---|---|---|---|---|");
    println!(
        "| {:.0} | {:.1} | {:.1} ms | {} ms | {} ms |",
        writes as f64 / seconds as f64,
        bytes as f64 / seconds as f64 / (1024.0 * 1024.0),
        longest.as_secs_f64() * 1000.0,
        ASYNC_FLUSH_INTERVAL.as_millis(),
        ASYNC_FLUSH_DELAY.as_millis()
    );
}
