//! End-to-end benchmark: the real `checkpointd` binary on loopback, driven by
//! concurrent WebSocket clients, next to two ceilings measured in the same run:
//! a WebSocket server speaking the same JSON protocol that stores nothing
//! (the protocol's ceiling) and raw sled with an fdatasync per write (the
//! disk's ceiling). Results are printed as Markdown tables; BENCHMARKS.md
//! keeps the latest.
//!
//! `cargo bench --bench e2e` (about three minutes); `-- --quick` for a short run;
//! `-- --sizes` for the state-size table alone (issue 11: 1 KiB, 64 KiB and
//! 1 MiB states against raw append + fdatasync of the same size, measured
//! beside them in the same run); `-- --postgres` for the PostgreSQL backend
//! (issue 12: 1 and 2 servers on one database, next to sled and to
//! `pgbench`'s raw commit rate on the same private cluster, with fsync on).

use checkpointd::client::Client;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

#[allow(dead_code)]
#[path = "../tests/common/pg.rs"]
mod pg;

const NULL_SERVER_ENV: &str = "CHECKPOINTD_BENCH_NULL_SERVER";
const STATE_BYTES: usize = 1024;
const EVENTS_PER_RUN: usize = 2_000;

fn main() {
    if std::env::var_os(NULL_SERVER_ENV).is_some() {
        return null_server::main();
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let window = if quick { Duration::from_secs(1) } else { Duration::from_secs(4) };
    let events = if quick { 300 } else { EVENTS_PER_RUN };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if std::env::args().any(|a| a == "--sizes") {
        return state_sizes(&rt, window);
    }
    if std::env::args().any(|a| a == "--postgres") {
        return postgres(&rt, window);
    }
    let state = one_kib_state();

    println!("# checkpointd end-to-end benchmark ({} s per point)\n", window.as_secs());
    let disk = DiskCeiling::measure(window);
    println!("## Disk ceiling: raw sled, 1 KiB values\n");
    println!("| mode | writes/s | p50 | p99 |\n|---|---|---|---|");
    println!(
        "| insert + flush + fdatasync per write | {:.0} | {} | {} |",
        disk.single.rate,
        ms(disk.single.p50),
        ms(disk.single.p99)
    );
    println!(
        "| batches of 64, one flush + fdatasync each | {:.0} | {} | {} |\n",
        disk.batched.rate,
        ms(disk.batched.p50),
        ms(disk.batched.p99)
    );

    let mut rows = Vec::new();
    let null = Server::null();
    let mut null_rates = HashMap::new();
    for clients in [1, 16, 64] {
        let s = rt.block_on(write_load(&[&null.url], clients, window, &state));
        null_rates.insert(clients, s.rate);
        rows.push(("no-storage server".to_string(), clients, s));
    }
    let null_events: Vec<_> = [1, 16].iter().map(|&n| (n, rt.block_on(event_latency(&null.url, n, events)))).collect();
    drop(null);

    let mut server_events = Vec::new();
    for durability in ["sync", "async"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Server::checkpointd(dir.path(), durability);
        for clients in [1, 16, 64] {
            let s = rt.block_on(write_load(&[&server.url], clients, window, &state));
            rows.push((format!("checkpointd {durability}"), clients, s));
        }
        if durability == "sync" {
            server_events = [1, 16].iter().map(|&n| (n, rt.block_on(event_latency(&server.url, n, events)))).collect();
        }
    }

    println!("## Checkpoint creation, 1 KiB state, one request in flight per client\n");
    println!("| server | clients | checkpoints/s | p50 | p99 | vs no-storage | vs disk (per-write) |");
    println!("|---|---|---|---|---|---|---|");
    for (name, clients, s) in &rows {
        println!(
            "| {name} | {clients} | {:.0} | {} | {} | {:.2}x | {:.2}x |",
            s.rate,
            ms(s.p50),
            ms(s.p99),
            s.rate / null_rates[clients],
            s.rate / disk.single.rate
        );
    }
    println!("\n## Event latency, from the writer's reply to each subscriber's event\n");
    println!("| server | subscribers | p50 | p99 |\n|---|---|---|---|");
    for (name, list) in [("no-storage server", &null_events), ("checkpointd sync", &server_events)] {
        for (n, (p50, p99)) in list {
            println!("| {name} | {n} | {} | {} |", ms(*p50), ms(*p99));
        }
    }
}

/// Checkpoints of 1 KiB, 64 KiB and 1 MiB states (`sync`), each beside raw
/// append + fdatasync of the same number of bytes to one file on the same
/// disk, measured just before it: the ratio is what issue 11 sets targets
/// for. Also the server's CPU time per checkpoint (from /proc) and the data
/// directory's size after each point.
fn state_sizes(rt: &tokio::runtime::Runtime, window: Duration) {
    println!("# State sizes, `sync` ({} s per point)\n", window.as_secs());
    println!(
        "| state | clients | raw append+fdatasync/s | checkpoints/s | ratio | p50 | p99 | p99/p50 | server CPU/checkpoint |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // `CHECKPOINTD_BENCH_SIZES=65536x1,1048576x8` runs only those points.
    let points: Vec<(usize, usize)> = match std::env::var("CHECKPOINTD_BENCH_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|p| p.split_once('x'))
            .filter_map(|(s, c)| Some((s.trim().parse().ok()?, c.trim().parse().ok()?)))
            .collect(),
        Err(_) => vec![(1024, 1), (1024, 16), (64 * 1024, 1), (64 * 1024, 8), (1 << 20, 1), (1 << 20, 8)],
    };
    for (size, clients) in points {
        let raw = raw_append(size, window);
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Server::checkpointd(dir.path(), "sync");
        let state = json!({"step": 1, "scratch": "x".repeat(size.saturating_sub(40))});
        eprintln!("server pid {} for {size} bytes x {clients}", server.child.id());
        let cpu_before = cpu_seconds(server.child.id());
        let s = rt.block_on(write_load(&[&server.url], clients, window, &state));
        let cpu = cpu_seconds(server.child.id()) - cpu_before;
        let n = s.rate * window.as_secs_f64();
        println!(
            "| {} | {clients} | {:.0} | {:.0} | {:.2}x | {} | {} | {:.1} | {:.3} ms |",
            if size >= 1 << 20 { format!("{} MiB", size >> 20) } else { format!("{} KiB", size >> 10) },
            raw.rate,
            s.rate,
            s.rate / raw.rate,
            ms(s.p50),
            ms(s.p99),
            s.p99.as_secs_f64() / s.p50.as_secs_f64().max(1e-9),
            cpu * 1000.0 / n.max(1.0)
        );
    }
}

/// The PostgreSQL backend (issue 12): checkpoints of 1 KiB states through 1
/// and 2 `checkpointd --database-url` servers on one database of a private
/// cluster (fsync on, `synchronous_commit` on), at 1, 16 and 64 clients,
/// beside `pgbench` committing one 1 KiB insert per transaction on the same
/// cluster (the raw commit rate) and the sled server, in the same run.
fn postgres(rt: &tokio::runtime::Runtime, window: Duration) {
    let cluster = pg::Cluster::start_durable().unwrap_or_else(|e| panic!("{e}"));
    let state = one_kib_state();
    println!("# PostgreSQL backend, `sync`, 1 KiB states ({} s per point)\n", window.as_secs());
    println!("| server | clients | checkpoints (or commits)/s | p50 | p99 | vs pgbench |");
    println!("|---|---|---|---|---|---|");
    let clients = [1, 16, 64];
    let raw: Vec<f64> = clients.iter().map(|&n| pgbench(rt, &cluster, n, window)).collect();
    for (n, tps) in clients.iter().zip(&raw) {
        println!("| pgbench, one 1 KiB insert per transaction | {n} | {tps:.0} | | | 1.00x |");
    }
    let mut rows = Vec::new();
    for servers in [1, 2] {
        let url = rt.block_on(cluster.create_database());
        let running: Vec<Server> = (0..servers).map(|_| Server::checkpointd_on_database(&url)).collect();
        let urls: Vec<&str> = running.iter().map(|s| s.url.as_str()).collect();
        for &n in &clients {
            let s = rt.block_on(write_load(&urls, n, window, &state));
            rows.push((
                format!("checkpointd on PostgreSQL, {servers} server{}", if servers > 1 { "s" } else { "" }),
                n,
                s,
            ));
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sled = Server::checkpointd(dir.path(), "sync");
    for &n in &clients {
        rows.push(("checkpointd on sled".to_string(), n, rt.block_on(write_load(&[&sled.url], n, window, &state))));
    }
    for (name, n, s) in rows {
        let tps = raw[clients.iter().position(|&c| c == n).expect("a measured count")];
        println!("| {name} | {n} | {:.0} | {} | {} | {:.2}x |", s.rate, ms(s.p50), ms(s.p99), s.rate / tps);
    }
}

/// `pgbench` on `cluster`: `clients` connections, each committing one 1 KiB
/// insert per transaction for `window`; transactions per second.
fn pgbench(rt: &tokio::runtime::Runtime, cluster: &pg::Cluster, clients: usize, window: Duration) -> f64 {
    let url = rt.block_on(cluster.create_database());
    // postgresql://postgres@/NAME?host=DIR
    let db = url.split_once("@/").and_then(|(_, rest)| rest.split_once('?')).map(|(db, _)| db.to_string()).expect("db");
    let host = cluster.dir().to_str().expect("a UTF-8 path").to_string();
    let run = |program: &str, args: &[&str]| {
        let out = cluster.tool(program).args(["-h", &host, "-U", "postgres"]).args(args).output().expect(program);
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run("psql", &["-d", &db, "-q", "-c", "CREATE TABLE raw (id bigserial PRIMARY KEY, v text)"]);
    let script = cluster.dir().join(format!("{db}.sql"));
    std::fs::write(&script, "INSERT INTO raw (v) VALUES (repeat('x', 1024));\n").expect("pgbench script");
    let (c, j, t) = (clients.to_string(), clients.min(4).to_string(), window.as_secs().max(1).to_string());
    let out = run("pgbench", &["-n", "-c", &c, "-j", &j, "-T", &t, "-f", script.to_str().expect("path"), &db]);
    out.lines()
        .find_map(|l| l.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's output: {out}"))
}

/// Appends `size` bytes and fdatasyncs, one write after another.
fn raw_append(size: usize, window: Duration) -> Stats {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut file = std::fs::File::create(dir.path().join("append")).expect("file");
    let value = vec![7u8; size];
    let start = Instant::now();
    let mut lat = Vec::new();
    while start.elapsed() < window {
        let t = Instant::now();
        file.write_all(&value).expect("write");
        file.sync_data().expect("fdatasync");
        lat.push(t.elapsed());
    }
    stats(lat, start.elapsed())
}

/// User + system CPU seconds a process has used (Linux /proc).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else { return 0.0 };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn one_kib_state() -> Value {
    // A realistic-looking object whose JSON text is about 1 KiB.
    let filler = "x".repeat(STATE_BYTES - 120);
    json!({"step": 42, "plan": ["read", "think", "act"], "scratch": filler, "score": 0.875})
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

fn stats(mut latencies: Vec<Duration>, elapsed: Duration) -> Stats {
    latencies.sort();
    let pick = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
    Stats { rate: latencies.len() as f64 / elapsed.as_secs_f64(), p50: pick(0.5), p99: pick(0.99) }
}

/// `clients` connections (spread over `urls` in turn), each with one
/// checkpoint in flight, for `window`.
async fn write_load(urls: &[&str], clients: usize, window: Duration, state: &Value) -> Stats {
    let mut conns = Vec::new();
    for i in 0..clients {
        let mut c = Client::connect(urls[i % urls.len()]).await.expect("connect");
        let session = c.create_session("bench").await.expect("session");
        conns.push((c, session));
    }
    let start = Instant::now();
    let deadline = start + window;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(mut c, session)| {
            let state = state.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    c.checkpoint(&session, "bench", state.clone(), json!({})).await.expect("checkpoint");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    stats(all, start.elapsed())
}

/// One writer, `subscribers` subscribers of its session; latency from the
/// writer receiving its reply to each subscriber receiving the event.
async fn event_latency(url: &str, subscribers: usize, events: usize) -> (Duration, Duration) {
    let mut writer = Client::connect(url).await.expect("connect");
    let session = writer.create_session("events").await.expect("session");
    let replies: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let mut sub = Client::connect(url).await.expect("connect");
        sub.subscribe(&session, None).await.expect("subscribe");
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(events);
            while seen.len() < events {
                match sub.next_event(Duration::from_secs(10)).await {
                    Ok(Some(ev)) => {
                        let id = ev["data"]["checkpoint_id"].as_str().unwrap_or_default().to_string();
                        seen.push((id, Instant::now()));
                    }
                    _ => break,
                }
            }
            seen
        }));
    }
    for _ in 0..events {
        let id = writer.checkpoint(&session, "e", json!({"n": 1}), json!({})).await.expect("checkpoint");
        replies.lock().unwrap().insert(id, Instant::now());
    }
    let mut lat = Vec::new();
    for t in tasks {
        for (id, at) in t.await.expect("subscriber") {
            if let Some(reply) = replies.lock().unwrap().get(&id) {
                lat.push(at.saturating_duration_since(*reply));
            }
        }
    }
    let s = stats(lat, Duration::from_secs(1));
    (s.p50, s.p99)
}

struct DiskCeiling {
    single: Stats,
    batched: Stats,
}

impl DiskCeiling {
    fn measure(window: Duration) -> DiskCeiling {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new().path(dir.path()).flush_every_ms(None).open().expect("sled");
        let file = std::fs::File::open(dir.path().join("db")).expect("db file");
        let value = vec![7u8; STATE_BYTES];
        let mut n = 0u64;
        let mut run = |batch: usize| {
            let start = Instant::now();
            let mut lat = Vec::new();
            while start.elapsed() < window {
                let t = Instant::now();
                for _ in 0..batch {
                    n += 1;
                    db.insert(n.to_be_bytes(), value.as_slice()).expect("insert");
                }
                db.flush().expect("flush");
                file.sync_data().expect("fdatasync");
                lat.extend(std::iter::repeat_n(t.elapsed(), batch));
            }
            stats(lat, start.elapsed())
        };
        let single = run(1);
        let batched = run(64);
        DiskCeiling { single, batched }
    }
}

/// A server child process; killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn checkpointd(dir: &std::path::Path, durability: &str) -> Server {
        // `CHECKPOINTD_BENCH_BIN` runs another build (an A/B comparison in one run).
        let bin = std::env::var_os("CHECKPOINTD_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_checkpointd").into());
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--durability", durability, "--data-dir"]).arg(dir);
        Server::spawn(cmd)
    }

    fn checkpointd_on_database(url: &str) -> Server {
        let bin = std::env::var_os("CHECKPOINTD_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_checkpointd").into());
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--durability", "sync", "--database-url", url]);
        Server::spawn(cmd)
    }

    fn null() -> Server {
        let mut cmd = Command::new(std::env::current_exe().expect("own path"));
        cmd.env(NULL_SERVER_ENV, "1");
        Server::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read address");
        // `listening on ws://ADDR`, maybe followed by what it serves.
        let rest = line.trim().strip_prefix("listening on ").expect("listening line");
        let url = rest.split_whitespace().next().expect("an address").to_string();
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The protocol's ceiling: same envelope, same JSON work, nothing stored.
mod null_server {
    use super::*;

    pub fn main() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            println!("listening on ws://{}", listener.local_addr().expect("addr"));
            let (events, _) = broadcast::channel::<(String, Arc<str>)>(4096);
            let seq_lock = Arc::new(Mutex::new(0u64));
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let events = events.clone();
                let seq = Arc::clone(&seq_lock);
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
                    let (mut tx, mut rx) = ws.split();
                    let (out, mut out_rx) = tokio::sync::mpsc::channel::<String>(256);
                    tokio::spawn(async move {
                        while let Some(text) = out_rx.recv().await {
                            if tx.send(Message::text(text)).await.is_err() {
                                return;
                            }
                        }
                    });
                    while let Some(Ok(msg)) = rx.next().await {
                        let Message::Text(text) = msg else { continue };
                        let req: Value = match serde_json::from_str(text.as_str()) {
                            Ok(v) => v,
                            Err(e) => {
                                let _ = out.send(json!({"id": "unknown", "success": false, "error": format!("Invalid JSON: {e}")}).to_string()).await;
                                continue;
                            }
                        };
                        let id = req["id"].as_str().unwrap_or("unknown").to_string();
                        let session = req["params"]["session_id"].as_str().unwrap_or_default().to_string();
                        let result = match req["method"].as_str().unwrap_or_default() {
                            "create_session" => json!(uuid::Uuid::new_v4().to_string()),
                            "checkpoint" => {
                                let cid = uuid::Uuid::new_v4().to_string();
                                let n = {
                                    let mut s = seq.lock().unwrap();
                                    *s += 1;
                                    *s
                                };
                                let ev = json!({"event_type": "checkpoint_created", "data": {"checkpoint_id": cid, "session_id": session, "timestamp": chrono::Utc::now().to_rfc3339(), "sequence_number": n}, "seq": n});
                                let _ = events.send((session.clone(), ev.to_string().into()));
                                json!(cid)
                            }
                            "subscribe" => {
                                let mut sub = events.subscribe();
                                let out = out.clone();
                                let want = session.clone();
                                tokio::spawn(async move {
                                    while let Ok((s, ev)) = sub.recv().await {
                                        if s == want && out.send(ev.to_string()).await.is_err() {
                                            return;
                                        }
                                    }
                                });
                                json!({"subscribed": true, "session_id": session})
                            }
                            _ => json!(null),
                        };
                        let reply = json!({"id": id, "success": true, "result": result}).to_string();
                        if out.send(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
}
