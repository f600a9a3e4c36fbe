//! The machinery of tests/powerloss.rs: LazyFS (a FUSE file system that keeps
//! unsynced writes in its own cache and drops them on command: a simulated
//! power loss), the real `checkpointd` as a child process, a seeded random
//! number generator, and an `LD_PRELOAD` object that turns every fsync into a
//! no-op (the control run).
//!
//! Everything is cleaned up on drop, also while a test panics: the server is
//! killed, LazyFS killed and unmounted, the temporary directory removed.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const SERVER: &str = env!("CARGO_BIN_EXE_checkpointd");

/// Set to 1 to skip (with a message) where LazyFS cannot run.
pub const SKIP_ENV: &str = "CHECKPOINTD_SKIP_POWERLOSS";
/// The LazyFS binary to use instead of `target/lazyfs/lazyfs`.
pub const LAZYFS_ENV: &str = "LAZYFS";

/// Longest wait for a mount, an unmount, a cache clear, a server start.
pub const STEP: Duration = Duration::from_secs(60);

/// Lines of a child's output kept for error messages.
const TAIL_LINES: usize = 40;

// ------------------------------------------------------------------ random

/// splitmix64: small, seedable, good enough to pick operations and delays.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// An independent generator for a sub-task.
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}

/// The run's seed: `CHECKPOINTD_POWERLOSS_SEED`, or a fresh one.
pub fn seed(env: &str) -> u64 {
    match std::env::var(env) {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("{env}={s:?} is not a number")),
        Err(_) => {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            Rng::new(t.as_nanos() as u64 ^ u64::from(std::process::id())).next_u64() >> 1
        }
    }
}

/// A stable number for a test name, to give each test its own stream.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

// ------------------------------------------------------------------ child output

/// Lines a child writes (stdout and stderr merged), read on threads; the
/// channel disconnects once the child closed both, i.e. exited.
struct Lines {
    rx: Receiver<String>,
    tail: VecDeque<String>,
}

impl Lines {
    fn capture(child: &mut Child) -> Lines {
        let (tx, rx) = mpsc::channel();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("piped stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("piped stderr"));
        for stream in [out, err] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Lines { rx, tail: VecDeque::new() }
    }

    fn keep(&mut self, line: String) {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// Waits for a line containing one of `needles`; `Err` with why not.
    fn wait_for(&mut self, needles: &[&str], within: Duration) -> Result<String, String> {
        let deadline = Instant::now() + within;
        loop {
            match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    self.keep(line.clone());
                    if needles.iter().any(|n| line.contains(n)) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Err(format!("no {needles:?} within {within:?}")),
                Err(RecvTimeoutError::Disconnected) => return Err(format!("exited before printing {needles:?}")),
            }
        }
    }

    /// Waits until the child closed its output (it exited); false on timeout.
    fn wait_closed(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.keep(line),
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => return true,
            }
        }
    }

    fn tail(&mut self) -> String {
        while let Ok(line) = self.rx.try_recv() {
            self.keep(line);
        }
        self.tail.iter().map(|l| format!("  {l}\n")).collect()
    }
}

fn signal(pid: u32, sig: libc::c_int) -> bool {
    match libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) only sends a signal, to a child this process started.
        Ok(pid) => unsafe { libc::kill(pid, sig) == 0 },
        Err(_) => false,
    }
}

// ------------------------------------------------------------------ LazyFS

/// Whether this machine can run LazyFS; why not otherwise.
fn can_run() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root (LazyFS mounts with allow_other)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse does not exist".into());
    }
    match Command::new("fusermount3").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("fusermount3 is not installed (apt-get install fuse3)".into()),
    }
}

/// The LazyFS binary: `$LAZYFS`, else `target/lazyfs/lazyfs`, built with
/// `../shared/tools/lazyfs/build.sh` when missing. `None` (after saying so)
/// when it cannot run and `CHECKPOINTD_SKIP_POWERLOSS=1`; otherwise a
/// missing LazyFS fails the test.
pub fn lazyfs_binary() -> Option<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        can_run()?;
        if let Some(path) = std::env::var_os(LAZYFS_ENV) {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(format!("{LAZYFS_ENV}={} is not a file", path.display()))
            };
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = manifest.join("target/lazyfs");
        let bin = out.join("lazyfs");
        if bin.is_file() {
            return Ok(bin);
        }
        let script = manifest.join("../shared/tools/lazyfs/build.sh");
        if !script.is_file() {
            return Err(format!("{} is missing and there is no {} to build it", bin.display(), script.display()));
        }
        eprintln!("powerloss: building LazyFS with {} (1-2 minutes)", script.display());
        let status = Command::new("bash").arg(&script).arg(&out).stdin(Stdio::null()).status();
        match status {
            Ok(s) if s.success() && bin.is_file() => Ok(bin),
            other => Err(format!("{} {} failed: {other:?}", script.display(), out.display())),
        }
    });
    match found {
        Ok(bin) => Some(bin.clone()),
        Err(why) if std::env::var(SKIP_ENV).as_deref() == Ok("1") => {
            eprintln!("powerloss: SKIPPED ({SKIP_ENV}=1): LazyFS cannot run: {why}");
            None
        }
        Err(why) => panic!(
            "power-loss tests need LazyFS, which cannot run here: {why}. Run as root with /dev/fuse and \
             ../shared/tools/lazyfs/build.sh present, set {LAZYFS_ENV}=/path/to/lazyfs, or set {SKIP_ENV}=1 to skip."
        ),
    }
}

/// A LazyFS mount of `<root>/r` (the backing directory, "the disk") at
/// `<root>/m`, with its fault fifo at `<root>/f`; `root` is a short new
/// directory under /tmp (fifo commands are read in ~100-byte chunks).
pub struct LazyFs {
    bin: PathBuf,
    root: Option<tempfile::TempDir>,
    child: Option<Child>,
    lines: Option<Lines>,
}

impl LazyFs {
    /// Prepares the directories and config; [`LazyFs::mount`] mounts.
    pub fn new(bin: PathBuf) -> LazyFs {
        let root = tempfile::Builder::new().prefix("cpl").tempdir_in("/tmp").expect("temp dir under /tmp");
        let fs = LazyFs { bin, root: Some(root), child: None, lines: None };
        std::fs::create_dir(fs.backing()).unwrap();
        std::fs::create_dir(fs.mount_point()).unwrap();
        // Eviction on: pages read or written stay cached until evicted, and a
        // full cache without eviction fails writes. Evicting a dirty page
        // writes it back, as a kernel would.
        let config = format!(
            "[faults]\nfifo_path=\"{}\"\n[cache]\napply_eviction=true\n[cache.simple]\ncustom_size=\"256mb\"\n\
             blocks_per_page=1\n[filesystem]\nlog_all_operations=false\nlogfile=\"\"\n",
            fs.fifo().display()
        );
        std::fs::write(fs.config(), config).unwrap();
        fs
    }

    pub fn root(&self) -> &Path {
        self.root.as_ref().expect("root").path()
    }

    /// The mount point: what the server sees.
    pub fn mount_point(&self) -> PathBuf {
        self.root().join("m")
    }

    /// The backing directory: what is on "disk". Fault commands name files here.
    pub fn backing(&self) -> PathBuf {
        self.root().join("r")
    }

    fn fifo(&self) -> PathBuf {
        self.root().join("f")
    }

    fn config(&self) -> PathBuf {
        self.root().join("c.toml")
    }

    fn is_mounted(&self) -> bool {
        let mp = self.mount_point();
        let mp = mp.to_str().unwrap();
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|info| info.lines().any(|l| l.split(' ').nth(4) == Some(mp)))
            .unwrap_or(false)
    }

    /// Mounts and waits until LazyFS takes fault commands.
    pub fn mount(&mut self) {
        assert!(self.child.is_none(), "already mounted");
        let mut child = Command::new(&self.bin)
            .arg(self.mount_point())
            .arg("--config-path")
            .arg(self.config())
            .args(["-o", "allow_other", "-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", self.backing().display()))
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        let mut lines = Lines::capture(&mut child);
        self.child = Some(child);
        let ready = lines.wait_for(&["waiting for fault commands"], STEP);
        let tail = lines.tail();
        self.lines = Some(lines);
        if let Err(why) = ready {
            panic!("LazyFS did not come up: {why}; its output:\n{tail}");
        }
        // The worker thread starts in the file system's init, i.e. once the
        // kernel mounted it; the mount table shows it by now.
        let deadline = Instant::now() + STEP;
        for _ in 0..10_000 {
            if self.is_mounted() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never appeared in /proc/self/mountinfo",
                self.mount_point().display()
            );
            std::thread::yield_now();
        }
        panic!("{} never appeared in /proc/self/mountinfo", self.mount_point().display());
    }

    /// Sends one fault command (one write: LazyFS reads ~100-byte chunks).
    fn command(&mut self, cmd: &str) {
        assert!(cmd.len() < 100, "fault command too long for LazyFS: {cmd}");
        let opened = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(self.fifo());
        let mut fifo = match opened {
            Ok(fifo) => fifo,
            Err(e) => {
                // ENXIO: nobody reads the fifo, i.e. LazyFS is gone.
                let status = self.child.as_mut().map(|c| c.try_wait());
                let tail = self.output_tail();
                panic!("cannot send {cmd:?} to LazyFS ({e}); LazyFS: {status:?}; its output:\n{tail}");
            }
        };
        fifo.write_all(format!("{cmd}\n").as_bytes()).expect("write to the LazyFS fifo");
    }

    fn lines(&mut self) -> &mut Lines {
        self.lines.as_mut().expect("LazyFS is not running")
    }

    /// Drops every byte not fsynced: the power cut.
    pub fn clear_cache(&mut self) {
        self.command("lazyfs::clear-cache");
        if let Err(why) = self.lines().wait_for(&["cache is cleared."], STEP) {
            let tail = self.lines().tail();
            panic!("LazyFS did not clear its cache: {why}; its output:\n{tail}");
        }
    }

    /// Arms a torn write: the next write to `file` (a path under
    /// [`LazyFs::backing`]) is split in three, only parts 1 and 3 reach the
    /// disk, and LazyFS exits (losing everything unsynced).
    pub fn arm_torn_write(&mut self, file: &Path) {
        self.command(&format!("lazyfs::torn-op::file={}::persist=1,3::parts=3", file.display()));
        let taken = self.lines().wait_for(&["configured successfully", "INVALID"], STEP);
        if !taken.as_ref().is_ok_and(|line| line.contains("configured successfully")) {
            let tail = self.lines().tail();
            panic!("LazyFS did not take the torn-op command ({taken:?}); its output:\n{tail}");
        }
    }

    /// Waits for LazyFS to exit on its own (after a torn write); false if
    /// it still runs after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let closed = self.lines().wait_closed(within);
        if closed && let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        closed
    }

    /// Whether LazyFS has exited; its output so far.
    pub fn output_tail(&mut self) -> String {
        self.lines.as_mut().map(Lines::tail).unwrap_or_default()
    }

    /// Unmounts (also a mount whose LazyFS died) and waits for LazyFS to exit.
    pub fn unmount(&mut self) {
        let out = Command::new("fusermount3").arg("-u").arg(self.mount_point()).output().expect("run fusermount3");
        assert!(
            out.status.success() || !self.is_mounted(),
            "fusermount3 -u {} failed: {}",
            self.mount_point().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(mut child) = self.child.take() {
            let exited = self.lines.as_mut().is_some_and(|l| l.wait_closed(STEP));
            if !exited {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.lines = None;
        assert!(!self.is_mounted(), "{} is still mounted", self.mount_point().display());
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.is_mounted() {
            // Its process is gone: a lazy unmount cannot block on it.
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(self.mount_point()).output();
        }
        let still_mounted = self.is_mounted();
        if let Some(root) = self.root.take()
            && still_mounted
        {
            // Never remove files through a mount; leave the directory.
            let _ = root.keep();
        }
    }
}

// ------------------------------------------------------------------ no-fsync preload

/// Compiles (with `cc`) a shared object that makes every way of syncing a
/// no-op that reports success; load it with `LD_PRELOAD` to run the server
/// without durability, unchanged.
pub fn build_no_fsync_preload(dir: &Path) -> PathBuf {
    let src = dir.join("nofsync.c");
    let so = dir.join("nofsync.so");
    std::fs::write(
        &src,
        "#define _GNU_SOURCE\n#include <sys/types.h>\n#include <stddef.h>\n\
         int fsync(int fd) { (void)fd; return 0; }\n\
         int fdatasync(int fd) { (void)fd; return 0; }\n\
         int syncfs(int fd) { (void)fd; return 0; }\n\
         void sync(void) {}\n\
         int sync_file_range(int fd, off_t off, off_t n, unsigned int flags)\n\
         { (void)fd; (void)off; (void)n; (void)flags; return 0; }\n\
         int msync(void *addr, size_t len, int flags) { (void)addr; (void)len; (void)flags; return 0; }\n",
    )
    .unwrap();
    let out =
        Command::new("cc").args(["-shared", "-fPIC", "-O2", "-o"]).arg(&so).arg(&src).output().unwrap_or_else(|e| {
            panic!("the control run compiles an LD_PRELOAD object with cc, which failed to run: {e}")
        });
    assert!(out.status.success(), "cc failed: {}", String::from_utf8_lossy(&out.stderr));
    so
}

// ------------------------------------------------------------------ the server

/// A running `checkpointd`; killed on drop.
pub struct Server {
    pid: u32,
    pub url: String,
    exited: Receiver<ExitStatus>,
    status: Option<ExitStatus>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    /// Starts a server on `dir` on a free loopback port; `Err` with its
    /// stderr when it does not come up.
    pub fn start(dir: &Path, durability: &str, preload: Option<&Path>) -> Result<Server, String> {
        let mut cmd = Command::new(SERVER);
        cmd.args(["--listen", "127.0.0.1:0", "--durability", durability, "--data-dir"])
            .arg(dir)
            // State segments of 1 MiB: medium and large states seal them
            // often, so cuts also land during their compaction (issue 11).
            .args(["--segment-bytes", "1048576"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("CHECKPOINTD_") {
                cmd.env_remove(var);
            }
        }
        // Short, plain stderr: a panic's message must not scroll out of the
        // kept tail behind a backtrace.
        cmd.env("RUST_LOG", "warn").env("RUST_BACKTRACE", "0").env("NO_COLOR", "1").env_remove("LD_PRELOAD");
        if let Some(so) = preload {
            cmd.env("LD_PRELOAD", so);
        }
        let mut child = cmd.spawn().expect("spawn checkpointd");
        let pid = child.id();
        let stdout = child.stdout.take().unwrap();
        let stderr_pipe = child.stderr.take().unwrap();
        let (url_tx, url_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = url_tx.send(addr.to_string());
                }
            }
        });
        let stderr: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                if s.len() == TAIL_LINES {
                    s.pop_front();
                }
                s.push_back(line);
            }
        });
        let (exit_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        let mut server = Server { pid, url: String::new(), exited, status: None, stderr };
        match url_rx.recv_timeout(STEP) {
            Ok(url) => {
                server.url = url;
                Ok(server)
            }
            Err(_) => {
                server.kill();
                let status = server.status.map_or("no exit".to_string(), |s| s.to_string());
                Err(format!("checkpointd did not start ({status}); stderr:\n{}", server.stderr()))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last lines of its stderr.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().iter().map(|l| format!("  {l}\n")).collect()
    }

    /// SIGSTOP: frozen mid-whatever, as at the instant of a power loss.
    pub fn pause(&self) {
        assert!(signal(self.pid, libc::SIGSTOP), "SIGSTOP checkpointd {}", self.pid);
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            signal(self.pid, libc::SIGKILL);
            self.status = self.exited.recv_timeout(STEP).ok();
        }
    }

    /// SIGTERM; the exit status, or `None` if it did not exit in time.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            signal(self.pid, libc::SIGTERM);
            self.status = self.exited.recv_timeout(STEP).ok();
        }
        self.status
    }

    /// Whether `path` (e.g. a preload object) is mapped into the process.
    pub fn maps(&self, path: &Path) -> bool {
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid))
            .is_ok_and(|maps| maps.contains(path.to_str().unwrap()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
