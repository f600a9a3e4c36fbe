//! Progress of long jobs: `checkpointd import`, `checkpoint-dump export` and
//! migrations. On a terminal (stderr) a progress bar shows items, bytes,
//! rate and ETA (when the total is known); otherwise a log line (target
//! `checkpointd::progress`, level info) says the same every
//! [`LOG_INTERVAL`] while the job runs, and once more when it is done (a
//! job that fails says so in its error instead). `--quiet` turns both off
//! ([`set_quiet`]).

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Without a terminal, how often a running job logs its progress.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);

static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet`: no progress bar and no progress lines, for the whole process.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// One job's progress. Cheap to update from a loop; thread-safe.
pub struct Progress {
    what: String,
    total: Option<u64>,
    items: AtomicU64,
    bytes: Arc<AtomicU64>,
    started: Instant,
    out: Output,
    finished: AtomicBool,
}

enum Output {
    Off,
    Bar(ProgressBar),
    /// When the last line was logged.
    Lines(Mutex<Instant>),
}

impl Progress {
    /// Starts reporting `what` (e.g. "import"), of `total` items if known.
    pub fn start(what: impl Into<String>, total: Option<u64>) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        Progress::with_output(what.into(), total, QUIET.load(Ordering::Relaxed), terminal)
    }

    fn with_output(what: String, total: Option<u64>, quiet: bool, terminal: bool) -> Progress {
        let bytes = Arc::new(AtomicU64::new(0));
        let out = match (quiet, terminal) {
            (true, _) => Output::Off,
            (false, true) => Output::Bar(bar(&what, total, Arc::clone(&bytes))),
            (false, false) => Output::Lines(Mutex::new(Instant::now())),
        };
        Progress {
            what,
            total,
            items: AtomicU64::new(0),
            bytes,
            started: Instant::now(),
            out,
            finished: AtomicBool::new(false),
        }
    }

    /// `items` more done, `bytes` more read or written.
    pub fn inc(&self, items: u64, bytes: u64) {
        self.items.fetch_add(items, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        match &self.out {
            Output::Off => {}
            Output::Bar(bar) => bar.inc(items),
            Output::Lines(last) => {
                let Ok(mut last) = last.try_lock() else { return };
                if last.elapsed() >= LOG_INTERVAL {
                    *last = Instant::now();
                    drop(last);
                    self.log("running");
                }
            }
        }
    }

    /// The job ended (successfully or not: `done` says which).
    pub fn finish(&self, done: bool) {
        if self.finished.swap(true, Ordering::Relaxed) {
            return;
        }
        match &self.out {
            Output::Off => {}
            Output::Bar(bar) if done => bar.finish(),
            Output::Bar(bar) => bar.abandon(),
            // A job that failed says so in its error, on one line.
            Output::Lines(_) if done => self.log("done"),
            Output::Lines(_) => {}
        }
    }

    /// The progress line: "import running: 1200 of 5000 items (24%), 3.4 MiB, 800 items/s, ETA 5 seconds".
    pub fn line(&self, phase: &str) -> String {
        let items = self.items.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { items as f64 / secs } else { 0.0 };
        let mut line = format!("{} {phase}: {items}", self.what);
        if let Some(total) = self.total {
            let pct = items.saturating_mul(100).checked_div(total).unwrap_or(100);
            line.push_str(&format!(" of {total} items ({}%)", pct.min(100)));
        } else {
            line.push_str(" items");
        }
        line.push_str(&format!(", {}, {rate:.0} items/s", HumanBytes(bytes)));
        if let Some(total) = self.total.filter(|_| rate > 0.0 && phase == "running") {
            let left = total.saturating_sub(items) as f64 / rate;
            line.push_str(&format!(", ETA {}", HumanDuration(Duration::from_secs_f64(left.min(1e9)))));
        }
        line
    }

    fn log(&self, phase: &str) {
        let items = self.items.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        tracing::info!(
            target: "checkpointd::progress",
            job = %self.what,
            items,
            total = self.total,
            bytes,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "{}",
            self.line(phase)
        );
    }
}

/// A job dropped without [`Progress::finish`] stopped early (an error).
impl Drop for Progress {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// Counts what passes through a writer: bytes, and lines as items.
pub struct CountingWriter<'a> {
    pub inner: &'a mut dyn std::io::Write,
    pub progress: &'a Progress,
}

impl std::io::Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let lines = memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
        self.progress.inc(lines, n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn bar(what: &str, total: Option<u64>, bytes: Arc<AtomicU64>) -> ProgressBar {
    let template = match total {
        Some(_) => "{prefix} [{bar:30}] {pos}/{len} items, {bytes_done}, {per_sec}, ETA {eta}",
        None => "{prefix} {spinner} {pos} items, {bytes_done}, {per_sec}, {elapsed}",
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("bytes_done", move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}", HumanBytes(bytes.load(Ordering::Relaxed)));
        })
        .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr()).with_style(style);
    bar.set_prefix(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_items_bytes_rate_and_eta() {
        let p = Progress::with_output("import".into(), Some(10), true, false);
        p.inc(4, 2048);
        let line = p.line("running");
        assert!(line.starts_with("import running: 4 of 10 items (40%), 2.00 KiB, "), "{line}");
        assert!(line.contains("items/s"), "{line}");
        assert!(line.contains("ETA"), "{line}");
        let p = Progress::with_output("migration".into(), None, true, false);
        p.inc(1, 1);
        assert!(p.line("done").starts_with("migration done: 1 items, 1 B, "), "{}", p.line("done"));
    }
}
