//! Files: temporary directories, copies and snapshots of data directories,
//! raw sled opens, and the one wait for a directory's lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

/// The longest a data directory may stay locked after its last handle in
/// this process was dropped (sled lets go of the lock from its threads).
pub const UNLOCK: Duration = Duration::from_secs(20);

/// A fresh temporary directory, removed on drop.
pub fn tempdir() -> TempDir {
    TempDir::new().expect("temporary directory")
}

/// The data directory inside a temporary one (created on first open).
pub fn data(dir: &TempDir) -> PathBuf {
    dir.path().join("data")
}

/// Copies a data directory (the fixtures are only ever opened as copies),
/// with the crate's own copier.
pub fn copy_dir(from: &Path, to: &Path) {
    checkpointd::storage::dircopy::copy_dir(from, to, false).expect("copy data directory");
}

/// Every file under `dir` with its contents.
pub fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            if entry.file_type().expect("file type").is_dir() {
                out.insert(path.strip_prefix(dir).unwrap().join(""), Vec::new());
                todo.push(path);
            } else {
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).expect("read file"));
            }
        }
    }
    out
}

/// Waits until nothing holds `dir`'s sled lock (a `flock` on `db`): sled
/// releases the lock of a dropped database from its background threads, a
/// moment after the last handle is gone. No polling: a helper thread blocks
/// on the lock itself and reports when it got it; the wait is bounded by
/// [`UNLOCK`]. A directory without `db` holds no lock.
pub fn wait_unlocked(dir: &Path) {
    let Ok(db) = std::fs::File::open(dir.join("db")) else { return };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let got = db.lock().and_then(|()| db.unlock());
        let _ = tx.send(got);
    });
    match rx.recv_timeout(UNLOCK) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("cannot lock {}: {e}", dir.display()),
        Err(_) => panic!("{} stays locked for over {UNLOCK:?}", dir.display()),
    }
}

/// Opens a closed data directory with sled itself (below the store), once
/// this process no longer holds it.
pub fn open_sled(dir: &Path) -> sled::Db {
    wait_unlocked(dir);
    sled::Config::new().path(dir).flush_every_ms(None).open().expect("open sled")
}
