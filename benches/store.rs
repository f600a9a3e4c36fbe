//! Store-level benchmark (criterion): the cost of one `Store` operation as the
//! data directory grows. One store is grown through 1k, 100k and 1M stored
//! checkpoints (1 KiB JSON state each, all in one session); at each size:
//!
//! - `get`: `Store::checkpoint` of a random stored id (record, state, notes);
//! - `list100`: `Store::list_checkpoints`, a page of 100, ascending, after a
//!   random position in the big session;
//! - `compact`: a separate session of 150 checkpoints compacted to
//!   `keep_recent: 50` (set up per iteration, untimed);
//! - `create`: `Store::put_checkpoint` with 1 KiB state into a side session,
//!   run last and deleted afterwards so the next size starts from a clean
//!   count (at 1k, it measures a store growing from 1k to a few 10k).
//!
//! The store runs in `Durability::Async`: populating 1M checkpoints with an
//! fsync each would take hours, and what this bench measures is the store's
//! CPU and sled cost, not the disk's (benches/e2e.rs measures `sync` against
//! the disk's ceiling). Populating 1M takes one to two minutes.
//!
//! `cargo bench --bench store` (about five minutes);
//! `CHECKPOINTD_BENCH_MAX=100000 cargo bench --bench store` skips 1M.
//! Criterion's own flags work after `--` (a filter such as `get`, `--quick`).
//! A Markdown summary of the run is printed at the end.

use checkpointd::config::{Durability, MAX_PAGE, StoreConfig};
use checkpointd::model::{CheckpointId, ListQuery, NewCheckpoint, RetentionPolicy, SessionId, Trigger};
use checkpointd::storage::{Backend, Store};
use criterion::{BatchSize, BenchmarkId, Criterion};
use serde_json::value::RawValue;
use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SIZES: [u64; 3] = [1_000, 100_000, 1_000_000];
/// Caps the largest size, e.g. `CHECKPOINTD_BENCH_MAX=100000` for a quick run.
const MAX_ENV: &str = "CHECKPOINTD_BENCH_MAX";
const STATE_BYTES: usize = 1024;
const PAGE: usize = 100;
const COMPACT_SESSION: u64 = 150;
const COMPACT_KEEP: u64 = 50;

fn main() {
    let max = std::env::var(MAX_ENV).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(u64::MAX);
    let sizes: Vec<u64> = SIZES.iter().copied().filter(|&n| n <= max).collect();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
        .configure_from_args();
    let started = std::time::SystemTime::now();
    let fixture = Fixture::new();
    let mut populated = Vec::new();
    for &n in &sizes {
        let took = fixture.grow_to(n);
        populated.push((n, took));
        bench_at(&mut c, &fixture, n);
    }
    c.final_summary();
    summary(&sizes, &populated, started);
}

/// One store, one big session, and every id stored in it.
struct Fixture {
    rt: tokio::runtime::Runtime,
    store: Store,
    _dir: tempfile::TempDir,
    session: SessionId,
    /// Id and sequence number of every checkpoint of `session`, in order.
    stored: RefCell<Vec<(CheckpointId, u64)>>,
    state: Box<RawValue>,
    rng: Cell<u64>,
}

impl Fixture {
    fn new() -> Fixture {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StoreConfig { durability: Durability::Async, ..StoreConfig::new(dir.path().join("data")) };
        let store = Store::open(config).expect("open store");
        let session = rt.block_on(store.create_session("big".into(), empty_object())).expect("session").id;
        Fixture {
            rt,
            store,
            _dir: dir,
            session,
            stored: RefCell::new(Vec::new()),
            state: one_kib_state(),
            rng: Cell::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    fn new_checkpoint(&self, session: SessionId) -> NewCheckpoint {
        NewCheckpoint {
            session_id: session,
            message: "bench checkpoint".into(),
            tags: vec!["bench".into()],
            trigger: Trigger::Auto(Some("step".into())),
            state: Some(self.state.clone().into()),
            metadata: None,
            parent_id: None,
            namespace: String::new(),
            external_id: None,
            parent_external_id: None,
        }
    }

    fn put(&self, session: SessionId) -> (CheckpointId, u64) {
        let (summary, _) = self.rt.block_on(self.store.put_checkpoint(self.new_checkpoint(session))).expect("put");
        (summary.id, summary.sequence_number)
    }

    /// Adds checkpoints to the big session until the store holds `n`.
    fn grow_to(&self, n: u64) -> Duration {
        let have = self.rt.block_on(self.store.metrics()).expect("metrics").total_checkpoints;
        let start = Instant::now();
        let mut stored = self.stored.borrow_mut();
        for i in have..n {
            stored.push(self.put(self.session));
            if (i + 1) % 100_000 == 0 {
                eprintln!("populated {} of {n} ({:.0} s)", i + 1, start.elapsed().as_secs_f64());
            }
        }
        let took = start.elapsed();
        if n > have {
            eprintln!(
                "grew the store from {have} to {n} checkpoints in {:.1} s ({:.1} µs per put)",
                took.as_secs_f64(),
                took.as_secs_f64() * 1e6 / (n - have) as f64
            );
        }
        took
    }

    /// A splitmix64 step: cheap, deterministic, good enough to pick positions.
    fn random(&self, below: usize) -> usize {
        let mut z = self.rng.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.rng.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % below as u64) as usize
    }
}

fn bench_at(c: &mut Criterion, f: &Fixture, n: u64) {
    let mut group = c.benchmark_group("store");
    let count = f.stored.borrow().len();

    group.bench_function(BenchmarkId::new("get", n), |b| {
        b.iter_batched(
            || f.stored.borrow()[f.random(count)].0,
            |id| black_box(f.store.reader().checkpoint(id).expect("get")),
            BatchSize::SmallInput,
        )
    });

    group.bench_function(BenchmarkId::new("list100", n), |b| {
        b.iter_batched(
            || {
                // Any position that still has a full page after it.
                let after = f.stored.borrow()[f.random(count - PAGE)].1;
                ListQuery { limit: Some(PAGE), after: Some(after), ..ListQuery::default() }
            },
            |q| {
                let page = f.store.reader().list_checkpoints(f.session, &q, MAX_PAGE).expect("list");
                assert_eq!(page.len(), PAGE);
                black_box(page)
            },
            BatchSize::SmallInput,
        )
    });

    // Compacted sessions are deleted in the next setup, untimed.
    let leftovers = RefCell::new(Vec::new());
    let policy = RetentionPolicy { keep_recent: Some(COMPACT_KEEP), preserve_tags: Vec::new() };
    group.bench_function(BenchmarkId::new("compact150to50", n), |b| {
        b.iter_batched(
            || {
                for s in leftovers.borrow_mut().drain(..) {
                    f.rt.block_on(f.store.delete_session(s)).expect("delete session");
                }
                let s = f.rt.block_on(f.store.create_session("compact".into(), empty_object())).expect("session").id;
                for _ in 0..COMPACT_SESSION {
                    f.put(s);
                }
                s
            },
            |s| {
                let c = f.rt.block_on(f.store.compact(s, &policy, false)).expect("compact");
                assert_eq!(c.removed, COMPACT_SESSION - COMPACT_KEEP);
                leftovers.borrow_mut().push(s);
            },
            BatchSize::PerIteration,
        )
    });

    let side = f.rt.block_on(f.store.create_session("create".into(), empty_object())).expect("session").id;
    group.bench_function(BenchmarkId::new("create", n), |b| b.iter(|| black_box(f.put(side))));
    group.finish();

    // Put the store back to `n` (plus nothing) for the next size.
    for s in leftovers.into_inner().into_iter().chain([side]) {
        f.rt.block_on(f.store.delete_session(s)).expect("delete session");
    }
}

fn one_kib_state() -> Box<RawValue> {
    // A realistic-looking object whose JSON text is exactly 1 KiB.
    let head = r#"{"step":42,"plan":["read","think","act"],"score":0.875,"scratch":""#;
    let filler = "x".repeat(STATE_BYTES - head.len() - 2);
    let text = format!("{head}{filler}\"}}");
    assert_eq!(text.len(), STATE_BYTES);
    RawValue::from_string(text).expect("valid JSON")
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".into()).expect("valid JSON")
}

/// Prints the run as a Markdown table, from criterion's saved estimates.
fn summary(sizes: &[u64], populated: &[(u64, Duration)], started: std::time::SystemTime) {
    println!("\n## Store operations (criterion estimate and 95% CI per operation; async durability, 1 KiB state)\n");
    println!(
        "| operation | {} |",
        sizes.iter().map(|n| format!("{} stored", human(*n))).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---|".repeat(sizes.len()));
    let root = criterion_dir();
    for (op, label) in [
        ("create", "create (1 KiB state)"),
        ("get", "get (random id)"),
        ("list100", "list page of 100 (random `after`)"),
        ("compact150to50", "compact 150 → keep 50"),
    ] {
        let cells: Vec<String> = sizes
            .iter()
            .map(|n| match estimate(&root.join("store").join(op).join(n.to_string()), started) {
                Some((mean, lo, hi)) => format!("{} ({}–{})", micros(mean), micros(lo), micros(hi)),
                None => "–".into(),
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    println!("\nPopulation (async, one writer):");
    let mut from = 0;
    for (n, took) in populated {
        if *n > from {
            let per = took.as_secs_f64() * 1e6 / (*n - from) as f64;
            println!("- {} → {}: {:.1} s ({per:.1} µs per put)", human(from), human(*n), took.as_secs_f64());
        }
        from = *n;
    }
}

fn human(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn micros(ns: f64) -> String {
    if ns >= 1e6 { format!("{:.2} ms", ns / 1e6) } else { format!("{:.1} µs", ns / 1e3) }
}

/// Where criterion writes (the same rule criterion uses, without `cargo metadata`).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().map(PathBuf::from).unwrap_or_else(|| "target".into())
    });
    target.join("criterion")
}

/// Criterion's headline estimate (the slope of the linear fit, else the mean)
/// and its 95% confidence interval, in ns, from estimates.json; only if this
/// run wrote it (a filter may have skipped the benchmark).
fn estimate(dir: &std::path::Path, started: std::time::SystemTime) -> Option<(f64, f64, f64)> {
    let path = dir.join("new").join("estimates.json");
    if std::fs::metadata(&path).and_then(|m| m.modified()).ok()? < started {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let e = if v["slope"].is_object() { &v["slope"] } else { &v["mean"] };
    let ci = &e["confidence_interval"];
    Some((e["point_estimate"].as_f64()?, ci["lower_bound"].as_f64()?, ci["upper_bound"].as_f64()?))
}
