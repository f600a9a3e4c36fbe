//! Scale benchmark: what a large data directory and many connections cost.
//! Prints Markdown tables; BENCHMARKS.md keeps the latest.
//!
//! - `open`: time and resident memory (VmRSS) to open a data directory
//!   holding 1M checkpoints, 1k, and none, each in a fresh child process
//!   (this binary re-executed), so memory after open is the store's alone.
//! - `list`: a page of 100 at a random `after` in a session of 1M versus one
//!   of 1k, in the same data directory.
//! - `idle`: the real `checkpointd` server's VmRSS idle, then with 1,000 idle
//!   connections, each subscribed to its own session.
//! - `stalled`: the server's VmRSS while 100k events flow to a session one of
//!   whose subscribers never reads its socket, against the same run without
//!   it (three of each, alternated, since sled's cache alone moves the RSS by
//!   MiBs); then the stalled subscriber reads and must find
//!   `subscription_lagged` after a bounded number of events.
//!
//! The 1M-checkpoint directory (1 KiB state each, about two minutes to write)
//! is cached under `target/checkpointd-bench/` and reused by later runs.
//!
//! `cargo bench --bench scale` (a few minutes once the cache exists);
//! `cargo bench --bench scale -- open list` runs only those parts;
//! `CHECKPOINTD_BENCH_MAX=100000` caps the big directory and the event flow.
//! `CHECKPOINTD_BENCH_SERVER_NOFILE=1024` runs the server with that soft
//! limit on open files (by default it inherits the hard limit from here).

use checkpointd::client::Client;
use checkpointd::config::{Durability, MAX_PAGE, SUBSCRIBER_QUEUE_EVENTS, StoreConfig};
use checkpointd::model::{ListQuery, NewCheckpoint, SessionId, Trigger};
use checkpointd::server::OUTBOUND_QUEUE;
use checkpointd::storage::{Backend, Store};
use serde_json::json;
use serde_json::value::RawValue;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, Message};

/// Selects the child role of this binary: `open` (measure opening `DIR_ENV`).
const ROLE_ENV: &str = "CHECKPOINTD_BENCH_ROLE";
const DIR_ENV: &str = "CHECKPOINTD_BENCH_DIR";
const MAX_ENV: &str = "CHECKPOINTD_BENCH_MAX";
const SERVER_NOFILE_ENV: &str = "CHECKPOINTD_BENCH_SERVER_NOFILE";
const PARTS: [&str; 4] = ["open", "list", "idle", "stalled"];

const BIG: u64 = 1_000_000;
const SMALL: u64 = 1_000;
const STATE_BYTES: usize = 1024;
const PAGE: usize = 100;
const OPEN_RUNS: usize = 3;
const LIST_PAGES: usize = 2_000;
const IDLE_CONNECTIONS: usize = 1_000;
const FLOW_EVENTS: u64 = 100_000;
const FLOW_WRITERS: usize = 4;
/// Runs with and without a stalled subscriber, alternated.
const FLOW_ROUNDS: usize = 3;
/// Every wait in this bench ends by itself.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);
const FLOW_TIMEOUT: Duration = Duration::from_secs(180);
const LAG_READ_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("open") {
        return open_child();
    }
    let max = std::env::var(MAX_ENV).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(u64::MAX);
    let big = BIG.min(max).max(SMALL);
    let events = FLOW_EVENTS.min(max);
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| PARTS.contains(&a.as_str())).collect();
    let run = |part: &str| wanted.is_empty() || wanted.iter().any(|w| w == part);
    let nofile = raise_nofile();

    println!("# checkpointd scale benchmark\n");
    println!("Open-file limit of this process (and the server, unless {SERVER_NOFILE_ENV}): {nofile}.\n");
    if run("open") || run("list") {
        let cached = cached_directory(big);
        if run("open") {
            open_table(&cached);
        }
        if run("list") {
            list_table(&cached);
        }
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if run("idle") {
        idle_table(&rt);
    }
    if run("stalled") {
        stalled_table(&rt, events);
    }
}

// ----- data directories ------------------------------------------------------

fn one_kib_state() -> Box<RawValue> {
    let head = r#"{"step":42,"plan":["read","think","act"],"score":0.875,"scratch":""#;
    let filler = "x".repeat(STATE_BYTES - head.len() - 2);
    RawValue::from_string(format!("{head}{filler}\"}}")).expect("valid JSON")
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".into()).expect("valid JSON")
}

/// A populated data directory: a big session (created first) and a small one.
struct Populated {
    dir: PathBuf,
    big: SessionId,
    big_count: u64,
    small: SessionId,
}

/// Writes `big` then `small` checkpoints (1 KiB state) into two sessions of a
/// new store at `dir`. Async durability: an fsync per put would take hours;
/// the store syncs everything when it closes.
fn populate(dir: &Path, big: u64, small: u64) -> Populated {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let store = Store::open(StoreConfig { durability: Durability::Async, ..StoreConfig::new(dir) }).expect("open");
    let state = one_kib_state();
    let start = Instant::now();
    let (big_id, small_id) = rt.block_on(async {
        let big_id = store.create_session("big".into(), empty_object()).await.expect("session").id;
        let small_id = store.create_session("small".into(), empty_object()).await.expect("session").id;
        for (session, n) in [(big_id, big), (small_id, small)] {
            for i in 0..n {
                let new = NewCheckpoint {
                    session_id: session,
                    message: format!("step {i}"),
                    tags: vec!["bench".into()],
                    trigger: Trigger::Auto(Some("step".into())),
                    state: Some(state.clone().into()),
                    metadata: None,
                    parent_id: None,
                    namespace: String::new(),
                    external_id: None,
                    parent_external_id: None,
                };
                store.put_checkpoint(new).await.expect("put");
                if (i + 1) % 100_000 == 0 {
                    eprintln!("populated {} of {n} ({:.0} s)", i + 1, start.elapsed().as_secs_f64());
                }
            }
        }
        (big_id, small_id)
    });
    store.close();
    eprintln!("populated {} with {} checkpoints in {:.1} s", dir.display(), big + small, start.elapsed().as_secs_f64());
    Populated { dir: dir.to_path_buf(), big: big_id, big_count: big, small: small_id }
}

/// The big directory under `target/checkpointd-bench/`, written once: a JSON
/// marker beside it names its sessions and is written only when complete.
fn cached_directory(big: u64) -> Populated {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join("checkpointd-bench");
    let dir = root.join(format!("scale-{big}"));
    let marker = root.join(format!("scale-{big}.json"));
    if let Some(p) = read_marker(&marker, &dir, big) {
        eprintln!("reusing {}", dir.display());
        return p;
    }
    let _ = std::fs::remove_file(&marker);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&root).expect("create target/checkpointd-bench");
    eprintln!("writing {} checkpoints into {} (cached for later runs)", big + SMALL, dir.display());
    let p = populate(&dir, big, SMALL);
    let text = json!({"big": p.big.to_string(), "small": p.small.to_string(), "big_count": big}).to_string();
    std::fs::write(&marker, text).expect("write marker");
    p
}

/// The cached directory, if its marker is there and the store still opens
/// (a format change may have made it stale) with the sessions it names.
fn read_marker(marker: &Path, dir: &Path, big: u64) -> Option<Populated> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(marker).ok()?).ok()?;
    let big_id: SessionId = v["big"].as_str()?.parse().ok()?;
    let small_id: SessionId = v["small"].as_str()?.parse().ok()?;
    if v["big_count"].as_u64()? != big {
        return None;
    }
    let store = Store::open(StoreConfig::new(dir)).ok()?;
    let ok = store.reader().session(big_id).ok()?.checkpoint_count == big
        && store.reader().session(small_id).ok()?.checkpoint_count == SMALL;
    store.close();
    ok.then(|| Populated { dir: dir.to_path_buf(), big: big_id, big_count: big, small: small_id })
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

// ----- (a) open ----------------------------------------------------------------

/// Child role: open `DIR_ENV`, read one page, report on stdout.
fn open_child() {
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect("CHECKPOINTD_BENCH_DIR"));
    let before = status_kb("self", "VmRSS").unwrap_or(0);
    let start = Instant::now();
    let store = Store::open(StoreConfig::new(&dir)).expect("open");
    let open = start.elapsed();
    let after_open = status_kb("self", "VmRSS").unwrap_or(0);
    let hwm_open = status_kb("self", "VmHWM").unwrap_or(0);
    let start = Instant::now();
    if let Some(session) = store.reader().list_sessions(None, None, 1).expect("list sessions").first() {
        let q = ListQuery { limit: Some(PAGE), ..ListQuery::default() };
        store.reader().list_checkpoints(session.id, &q, MAX_PAGE).expect("list");
    }
    let first_page = start.elapsed();
    let after_page = status_kb("self", "VmRSS").unwrap_or(0);
    store.close();
    println!(
        "open_us={} first_page_us={} rss_before_kb={before} rss_open_kb={after_open} hwm_open_kb={hwm_open} rss_page_kb={after_page}",
        open.as_micros(),
        first_page.as_micros()
    );
}

/// One child's report, as `key=value` pairs.
fn measure_open(dir: &Path) -> std::collections::HashMap<String, u64> {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env(ROLE_ENV, "open")
        .env(DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn open child");
    let deadline = Instant::now() + CHILD_TIMEOUT;
    loop {
        match child.try_wait().expect("wait") {
            Some(status) => {
                assert!(status.success(), "open child failed: {status}");
                break;
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("opening {} took more than {CHILD_TIMEOUT:?}", dir.display());
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("child report");
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().expect("number")))
        .collect()
}

fn open_table(cached: &Populated) {
    let empty = tempfile::tempdir().expect("tempdir");
    Store::open(StoreConfig::new(empty.path())).expect("create empty store").close();
    let small = tempfile::tempdir().expect("tempdir");
    let small_dir = small.path().join("data");
    populate(&small_dir, SMALL, 0);
    let rows = [
        ("empty".to_string(), empty.path().to_path_buf()),
        (format!("{} checkpoints", SMALL), small_dir),
        (format!("{} checkpoints", cached.big_count + SMALL), cached.dir.clone()),
    ];
    println!("## Opening a data directory (fresh process each, median of {OPEN_RUNS}, OS page cache warm)\n");
    println!(
        "| data directory | on disk | open | RSS after open | peak RSS during open | first page of 100 | RSS after it |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut baseline = 0;
    let mut measured = Vec::new();
    for (label, dir) in &rows {
        let mut runs: Vec<_> = (0..OPEN_RUNS).map(|_| measure_open(dir)).collect();
        runs.sort_by_key(|r| r["open_us"]);
        let r = &runs[OPEN_RUNS / 2];
        // Resident memory is the store's: the process's own baseline subtracted.
        let base = r["rss_before_kb"];
        baseline = base;
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} |",
            mib(dir_bytes(dir) / 1024),
            ms(Duration::from_micros(r["open_us"])),
            mib(r["rss_open_kb"].saturating_sub(base)),
            mib(r["hwm_open_kb"].saturating_sub(base)),
            ms(Duration::from_micros(r["first_page_us"])),
            mib(r["rss_page_kb"].saturating_sub(base)),
        );
        measured.push((r["open_us"], r["rss_open_kb"].saturating_sub(base)));
    }
    println!("\nRSS columns are above the process's baseline before `Store::open` ({}).\n", mib(baseline));
    let (big_open, big_rss) = measured[2];
    let (_, small_rss) = measured[1];
    verdict("open with the big directory under 1 s", big_open < 1_000_000, &ms(Duration::from_micros(big_open)));
    verdict(
        "memory after open independent of the number stored",
        big_rss <= small_rss + 2 * 1024,
        &format!("{} with {} vs {} with {SMALL}", mib(big_rss), cached.big_count + SMALL, mib(small_rss)),
    );
    println!();
}

// ----- (b) list ----------------------------------------------------------------

fn list_table(cached: &Populated) {
    let store = Store::open(StoreConfig::new(&cached.dir)).expect("open");
    let range = |s: SessionId| {
        let q = |newest_first| ListQuery { limit: Some(1), newest_first, ..ListQuery::default() };
        let first = store.reader().list_checkpoints(s, &q(false), MAX_PAGE).expect("list")[0].sequence_number;
        let last = store.reader().list_checkpoints(s, &q(true), MAX_PAGE).expect("list")[0].sequence_number;
        (first, last)
    };
    let sessions = [(cached.big, range(cached.big)), (cached.small, range(cached.small))];
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut times = [Vec::with_capacity(LIST_PAGES), Vec::with_capacity(LIST_PAGES)];
    // Alternate the two sessions so both see the same machine noise; the
    // first 10% warm up and are not counted.
    let warm = LIST_PAGES / 10;
    for i in 0..LIST_PAGES + warm {
        for (k, (session, (first, last))) in sessions.iter().enumerate() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Seqs of each session are consecutive: any `after` up to
            // `last - PAGE` leaves a full page.
            let after = first - 1 + rng % (last - first + 2 - PAGE as u64);
            let q = ListQuery { limit: Some(PAGE), after: Some(after), ..ListQuery::default() };
            let t = Instant::now();
            let page = store.reader().list_checkpoints(*session, &q, MAX_PAGE).expect("list");
            let took = t.elapsed();
            assert_eq!(page.len(), PAGE);
            if i >= warm {
                times[k].push(took);
            }
        }
    }
    store.close();
    let [big, small] = times.map(Stats::of);
    println!("## A page of 100 at a random `after`, ascending ({LIST_PAGES} pages each, interleaved)\n");
    println!("| session | mean | p50 | p99 |\n|---|---|---|---|");
    println!("| {} checkpoints | {} | {} | {} |", cached.big_count, us(big.mean), us(big.p50), us(big.p99));
    println!("| {SMALL} checkpoints | {} | {} | {} |", us(small.mean), us(small.p50), us(small.p99));
    println!(
        "| ratio | {:.2}x | {:.2}x | {:.2}x |\n",
        ratio(big.mean, small.mean),
        ratio(big.p50, small.p50),
        ratio(big.p99, small.p99)
    );
    let r = ratio(big.mean, small.mean);
    verdict("a page in the big session within 2x of the same page in the 1k one", r <= 2.0, &format!("{r:.2}x (mean)"));
    println!();
}

// ----- (c) idle connections --------------------------------------------------

fn idle_table(rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    std::thread::sleep(Duration::from_millis(500));
    let idle = server.rss_kb();
    let start = Instant::now();
    let clients = rt.block_on(async {
        let url = Arc::new(server.url.clone());
        let gate = Arc::new(tokio::sync::Semaphore::new(64));
        let tasks: Vec<_> = (0..IDLE_CONNECTIONS)
            .map(|i| {
                let (url, gate) = (Arc::clone(&url), Arc::clone(&gate));
                tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await.ok()?;
                    tokio::time::timeout(CALL_TIMEOUT, async {
                        let mut c = Client::connect(&url).await.ok()?;
                        let session = c.create_session(&format!("idle-{i}")).await.ok()?;
                        c.subscribe(&session, None).await.ok()?;
                        Some(c)
                    })
                    .await
                    .ok()
                    .flatten()
                })
            })
            .collect();
        let mut clients = Vec::new();
        for t in tasks {
            if let Ok(Some(c)) = t.await {
                clients.push(c);
            }
        }
        clients
    });
    let connected = clients.len();
    let setup = start.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let busy = server.rss_kb();
    let subscriptions = rt.block_on(async {
        let metrics = tokio::time::timeout(CALL_TIMEOUT, async {
            let mut c = Client::connect(&server.url).await.ok()?;
            c.metrics().await.ok()
        });
        metrics.await.ok()??["subscriptions"].as_u64()
    });
    rt.block_on(async {
        let closes: Vec<_> = clients.into_iter().map(|c| tokio::spawn(c.close())).collect();
        for c in closes {
            let _ = tokio::time::timeout(CALL_TIMEOUT, c).await;
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let after = server.rss_kb();
    let hwm = server.status_kb("VmHWM");
    drop(server);

    println!("## Server memory with idle subscribed connections (real `checkpointd`, VmRSS)\n");
    println!("| state | server RSS |\n|---|---|");
    println!("| idle, no connections | {} |", mib(idle));
    println!(
        "| {connected} of {IDLE_CONNECTIONS} connections, each subscribed to its own session (set up in {:.1} s; server reports {} subscriptions) | {} |",
        setup.as_secs_f64(),
        subscriptions.map_or("?".into(), |n| n.to_string()),
        mib(busy)
    );
    println!("| per connection | {:.1} KiB |", busy.saturating_sub(idle) as f64 / connected.max(1) as f64);
    println!("| after they all closed | {} |", mib(after));
    println!("| peak (VmHWM) | {} |\n", mib(hwm));
    verdict(
        "1,000 idle subscribed connections under 100 MB (server RSS)",
        connected == IDLE_CONNECTIONS && busy * 1024 < 100_000_000,
        &format!("{connected} connections, {}", mib(busy)),
    );
    println!();
}

// ----- (d) stalled subscriber --------------------------------------------------

/// One run of the event flow; `lag` is set when a subscriber was stalled.
struct Flow {
    idle_kb: u64,
    peak_sampled_kb: u64,
    hwm_kb: u64,
    end_kb: u64,
    written: u64,
    elapsed: Duration,
    lag: Option<Lag>,
}

struct Lag {
    events_before: u64,
    last_event_seq: u64,
    lagged_last_seq: Option<u64>,
    read_time: Duration,
}

/// A WebSocket client on a plain blocking socket that subscribes and then
/// does not read until told to.
struct StalledSubscriber {
    ws: tungstenite::WebSocket<std::net::TcpStream>,
}

impl StalledSubscriber {
    fn subscribe(url: &str, session: &str) -> StalledSubscriber {
        let addr = url.strip_prefix("ws://").expect("ws url");
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(CALL_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(CALL_TIMEOUT)).expect("timeout");
        let (mut ws, _) = tungstenite::client(url, stream).expect("handshake");
        let req = json!({"id": "s", "method": "subscribe", "params": {"session_id": session}});
        ws.send(Message::text(req.to_string())).expect("send subscribe");
        let reply = ws.read().expect("subscribe reply");
        let reply: serde_json::Value = serde_json::from_str(reply.to_text().expect("text")).expect("json");
        assert_eq!(reply["success"], true, "subscribe failed: {reply}");
        StalledSubscriber { ws }
    }

    /// Reads until `subscription_lagged` (or the deadline).
    fn read_until_lagged(mut self) -> Lag {
        let start = Instant::now();
        let mut lag = Lag { events_before: 0, last_event_seq: 0, lagged_last_seq: None, read_time: Duration::ZERO };
        while start.elapsed() < LAG_READ_TIMEOUT {
            let Ok(msg) = self.ws.read() else { break };
            let Message::Text(text) = msg else { continue };
            let v: serde_json::Value = serde_json::from_str(text.as_str()).expect("json");
            match v["event_type"].as_str() {
                Some("subscription_lagged") => {
                    lag.lagged_last_seq = v["data"]["last_seq"].as_u64();
                    break;
                }
                Some(_) => {
                    lag.events_before += 1;
                    lag.last_event_seq = v["seq"].as_u64().unwrap_or(0);
                }
                None => {}
            }
        }
        lag.read_time = start.elapsed();
        lag
    }
}

fn flow(rt: &tokio::runtime::Runtime, events: u64, stalled: bool) -> Flow {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let url = server.url.clone();
    let session = rt.block_on(async {
        let mut c = connect(&url).await;
        tokio::time::timeout(CALL_TIMEOUT, c.create_session("flow")).await.expect("session timed out").expect("session")
    });
    let subscriber = stalled.then(|| StalledSubscriber::subscribe(&url, &session));
    std::thread::sleep(Duration::from_millis(300));
    let idle_kb = server.rss_kb();

    // Sample the server's RSS while the events flow.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, pid) = (Arc::clone(&done), server.pid());
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(status_kb(&pid, "VmRSS").unwrap_or(0));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let start = Instant::now();
    let written = rt.block_on(async {
        let next = Arc::new(AtomicU64::new(0));
        let deadline = tokio::time::Instant::now() + FLOW_TIMEOUT;
        let mut writers = Vec::new();
        for _ in 0..FLOW_WRITERS {
            let (url, session, next) = (url.clone(), session.clone(), Arc::clone(&next));
            writers.push(tokio::spawn(async move {
                let mut c = connect(&url).await;
                let mut n = 0u64;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= events || tokio::time::Instant::now() > deadline {
                        return n;
                    }
                    let put = c.checkpoint(&session, "flow", json!({"n": i}), json!({}));
                    tokio::time::timeout(CALL_TIMEOUT, put).await.expect("checkpoint timed out").expect("checkpoint");
                    n += 1;
                }
            }));
        }
        let mut written = 0;
        for w in writers {
            written += w.await.expect("writer");
        }
        written
    });
    let elapsed = start.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let end_kb = server.rss_kb();
    done.store(true, Ordering::Relaxed);
    let peak_sampled_kb = sampler.join().expect("sampler").max(end_kb);
    let hwm_kb = server.status_kb("VmHWM");
    let lag = subscriber.map(StalledSubscriber::read_until_lagged);
    Flow { idle_kb, peak_sampled_kb, hwm_kb, end_kb, written, elapsed, lag }
}

fn stalled_table(rt: &tokio::runtime::Runtime, events: u64) {
    // Alternate the two kinds of run: sled's cache makes the server's RSS
    // vary by several MiB from run to run, more than a stalled subscriber
    // may add, so the spread of the runs without one is the noise floor.
    let mut runs = Vec::new();
    for _ in 0..FLOW_ROUNDS {
        runs.push(flow(rt, events, false));
        runs.push(flow(rt, events, true));
    }
    println!("## Server memory while {events} events flow ({FLOW_WRITERS} writers, async durability, one session)\n");
    println!(
        "| run | stalled subscriber | checkpoints/s | RSS before | peak RSS (sampled) | peak (VmHWM) | RSS after |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, f) in runs.iter().enumerate() {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} |",
            i + 1,
            if f.lag.is_some() { "yes" } else { "no" },
            f.written as f64 / f.elapsed.as_secs_f64(),
            mib(f.idle_kb),
            mib(f.peak_sampled_kb),
            mib(f.hwm_kb),
            mib(f.end_kb)
        );
    }
    let growth = |stalled: bool| -> Vec<i64> {
        let mut v: Vec<i64> =
            runs.iter().filter(|f| f.lag.is_some() == stalled).map(|f| f.hwm_kb as i64 - f.idle_kb as i64).collect();
        v.sort();
        v
    };
    let (base, stall) = (growth(false), growth(true));
    let median = |v: &[i64]| v[v.len() / 2];
    let added = median(&stall) - median(&base);
    let noise = base[base.len() - 1] - base[0];
    // What one stalled subscriber may hold in the server: a connection
    // (tungstenite's 128 KiB read buffer and about 16 KiB more, see the idle
    // table), its subscription queue of events (about 100 bytes each), the
    // connection's outgoing queue of rendered events (about 300 bytes each)
    // and tungstenite's write buffer (128 KiB, which may double as it grows).
    let bound_kb = ((144 * 1024 + SUBSCRIBER_QUEUE_EVENTS * 100 + OUTBOUND_QUEUE * 300 + 256 * 1024) / 1024) as i64;
    println!(
        "\nPeak growth (VmHWM − RSS before), median of {FLOW_ROUNDS}: {} with the stalled subscriber, {} without \
         (spread without: {}); its connection and bounded queues may hold about {:.1} MiB.\n",
        mib(median(&stall).max(0) as u64),
        mib(median(&base).max(0) as u64),
        mib(noise.max(0) as u64),
        bound_kb as f64 / 1024.0
    );
    verdict(
        "a stalled subscriber adds no more than its bounded queue (beyond the spread of runs without one)",
        added <= bound_kb + noise,
        &format!("{:+.1} MiB", added as f64 / 1024.0),
    );
    let mut all_lagged = true;
    for lag in runs.iter().filter_map(|f| f.lag.as_ref()) {
        match lag.lagged_last_seq {
            Some(last) => println!(
                "- when it finally read, the stalled subscriber got {} events (the last with seq {}), then \
                 `subscription_lagged` with last_seq {last}, in {:.2} s{}",
                lag.events_before,
                lag.last_event_seq,
                lag.read_time.as_secs_f64(),
                if last == lag.last_event_seq { "" } else { " **(last_seq does not match the last event given)**" }
            ),
            None => {
                all_lagged = false;
                println!(
                    "- **when it finally read, the stalled subscriber got {} events and no `subscription_lagged` \
                     within {LAG_READ_TIMEOUT:?}**",
                    lag.events_before
                );
            }
        }
    }
    println!();
    if !all_lagged {
        std::process::exit(1);
    }
}

/// Connects within [`CALL_TIMEOUT`] or panics (the server child is killed on drop).
async fn connect(url: &str) -> Client {
    match tokio::time::timeout(CALL_TIMEOUT, Client::connect(url)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("connect to {url}: {e}"),
        Err(_) => panic!("connect to {url}: no handshake within {CALL_TIMEOUT:?}"),
    }
}

fn verdict(target: &str, met: bool, measured: &str) {
    println!("- target: {target}: **{}** ({measured})", if met { "met" } else { "not met" });
}

// ----- helpers -----------------------------------------------------------------

/// The real server on a temp dir, port 0, async durability; killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_checkpointd"));
        cmd.args(["--listen", "127.0.0.1:0", "--max-connections", "2000", "--durability", "async", "--data-dir"])
            .arg(dir)
            .env("RUST_LOG", "warn");
        if let Some(limit) = std::env::var(SERVER_NOFILE_ENV).ok().and_then(|v| v.parse::<u64>().ok()) {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches no memory of
            // the parent; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                    lim.rlim_cur = limit.min(lim.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                    Ok(())
                });
            }
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read address");
        let url = line.trim().strip_prefix("listening on ").expect("listening line").to_string();
        Server { child, url }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn status_kb(&self, field: &str) -> u64 {
        status_kb(&self.pid(), field).unwrap_or(0)
    }

    fn rss_kb(&self) -> u64 {
        self.status_kb("VmRSS")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of `/proc/<pid>/status` in kB (`pid` may be `self`).
fn status_kb(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].split_whitespace().next()?.parse().ok()
}

/// Raises the soft open-file limit to the hard one (1,000 client sockets
/// here, and as many in the server, which inherits it). Returns the limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

struct Stats {
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

impl Stats {
    fn of(mut v: Vec<Duration>) -> Stats {
        v.sort();
        let pick = |q: f64| v.get(((v.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
        let mean = v.iter().sum::<Duration>() / (v.len().max(1) as u32);
        Stats { mean, p50: pick(0.5), p99: pick(0.99) }
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}
