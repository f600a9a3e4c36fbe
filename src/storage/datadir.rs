//! Opening sled on a data directory without trusting the directory.
//!
//! sled 0.34 recovers whatever prefix of its log it can read, and stops at
//! the first piece it cannot: a torn or missing piece at the end of the log
//! is how a crash looks. The same rule makes damage silent. A blob file
//! (sled's file for one large log message, `blobs/<lsn>`) that fails its
//! checksum ends recovery there, and sled then deletes every later blob; a
//! `db` file of random bytes, or truncated, recovers as an empty database.
//! Other damage makes sled panic during recovery (`tried to serialize
//! Uninitialized`, an index out of bounds) or return an error that names no
//! directory. So [`open`], used by both [`Store::open`](super::Store::open)
//! and [`Inspector::open`](super::inspect::Inspector::open), checks in three
//! steps, and each finding is a [`DirError`]: one line naming the directory
//! and what is wrong with it.
//!
//! 1. **Before sled touches anything** ([`survey`], [`check_log`],
//!    [`check_blobs`]): the path is a directory we may read (and write);
//!    `db`, `conf` and `blobs` are what sled expects; sled files without a
//!    `db` are not a new directory; `db` holds at least one valid sled
//!    segment header; every blob file that recovery will read and that the
//!    mark says was synced whole passes its checksum (newer ones may be
//!    writes a crash cut short: sled recovers up to the first of them).
//! 2. **sled's open and recovery** run under [`crate::panics::catch`]: a
//!    panic prints nothing and becomes [`DirError::Unrecoverable`], as do
//!    sled's corruption errors.
//! 3. **What sled recovered** ([`check_recovered`]): a directory that held a
//!    database must have a checkpointd format version (else sled recovered
//!    none of it, or it is not ours), and the persisted counters must agree
//!    with the trees in what can be checked without a scan: a store that
//!    counts checkpoints has some, and no stored sequence number, event or
//!    session ordinal is above the counter that hands them out (else new
//!    ones would overwrite old ones). And sled recovered at least what the
//!    mark ([`MARK_FILE`]) says was durable when checkpointd last wrote it
//!    (at open, at close, and at most once a second while writes go on):
//!    sled cannot tell a log cut short by damage from a crash, and recovers
//!    the prefix; our own record of what was on disk can.
//!
//! What this cannot see without reading everything: a missing or damaged
//! blob that recovery does not read (older than sled's last snapshot); reads
//! of it fail later with an error, and `checkpoint-dump verify` finds it.
//! Nor damage to what was written since the mark, which looks like a crash
//! that lost those writes. And sled deletes the blob files beyond the point
//! where its recovery stopped before step 3 can refuse the directory.

use super::error::{Result, StorageError};
use super::keys::{self, TreeId, Trees};
use super::reads::Reader;
use super::records::{Counters, Mark};
use super::segments::{Pointer, Segments};
use super::{change, codec, migrate};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// sled's default segment size (its `conf` records the one in use).
const DEFAULT_SEGMENT_BYTES: u64 = 512 * 1024;
/// sled's segment header: crc32, lsn, max stable lsn.
const SEGMENT_HEADER_BYTES: usize = 20;
/// A blob file starts with its crc32 and a kind byte.
const BLOB_HEADER_BYTES: u64 = 5;

/// Puts back every blob file sled deleted before the log that replaced it
/// was durable, from its kept link (see [`super::commit::KEPT_BLOBS`]).
/// sled's recovery reads those its log still points to and ignores the rest.
fn restore_kept_blobs(dir: &Path) -> io::Result<()> {
    let (kept, blobs) = (dir.join(super::commit::KEPT_BLOBS), dir.join("blobs"));
    let entries = match fs::read_dir(&kept) {
        Ok(entries) => entries,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(()),
        Err(e) => return Err(e),
    };
    if !blobs.is_dir() {
        return Ok(());
    }
    for entry in entries {
        let name = entry?.file_name();
        let (link, blob) = (kept.join(&name), blobs.join(&name));
        // Only a whole one: a blob sled replaced before checkpointd synced
        // all of it was not needed by anything acknowledged, and a torn one
        // in place of a missing one would end sled's recovery there.
        if blob.exists() || !blob_intact(&link)? {
            continue;
        }
        match fs::hard_link(&link, &blob) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// What is wrong with a data directory, found while opening it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirError {
    #[error("data directory {} does not exist", .dir.display())]
    Missing { dir: PathBuf },
    #[error("data directory {} is not a directory", .dir.display())]
    NotADirectory { dir: PathBuf },
    #[error("data directory {}: permission denied ({what})", .dir.display())]
    NoPermission { dir: PathBuf, what: String },
    #[error("data directory {}: {what}: {error}", .dir.display())]
    Io { dir: PathBuf, what: String, error: String },
    #[error("data directory {}: {what} is not a {expected}, as a sled database has it", .dir.display())]
    WrongKind { dir: PathBuf, what: String, expected: &'static str },
    #[error(
        "data directory {} has sled files ({present}) but no database file `db`: refusing to start an empty database in its place",
        .dir.display()
    )]
    MissingDb { dir: PathBuf, present: String },
    #[error("data directory {} is damaged: {what}", .dir.display())]
    Damaged { dir: PathBuf, what: String },
    #[error("data directory {} is damaged: sled cannot recover it ({detail})", .dir.display())]
    Unrecoverable { dir: PathBuf, detail: String },
    #[error(
        "data directory {} holds a sled database without a checkpointd format version: it is not a checkpointd data directory, or it is damaged and sled recovered none of it (if nothing was ever stored in it, delete it)",
        .dir.display()
    )]
    NoFormatVersion { dir: PathBuf },
    #[error("data directory {} is in use by another checkpointd (could not acquire its lock)", .dir.display())]
    Locked { dir: PathBuf },
    /// Any other error while recovering or migrating, with the directory.
    #[error("data directory {}: {detail}", .dir.display())]
    Opening { dir: PathBuf, detail: String },
}

impl From<DirError> for crate::error::Error {
    fn from(e: DirError) -> Self {
        StorageError::from(e).into()
    }
}

impl From<DirError> for StorageError {
    fn from(e: DirError) -> Self {
        match e {
            DirError::Locked { .. } => StorageError::Locked(e.to_string()),
            e => StorageError::Refused(e.to_string()),
        }
    }
}

/// How [`open`] may use the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The server: reads and writes; a missing directory is created.
    Serve,
    /// `checkpoint-dump`: reads the directory (and opens a private copy of
    /// it); a missing directory is an error.
    Inspect,
}

/// What the directory held before sled opened it.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    /// A `db` file was there (else sled creates a new database).
    pub had_db: bool,
    /// Blob files by lsn.
    pub blobs: Vec<u64>,
    /// The newest snapshot's stable lsn (`snap.<hex lsn>`).
    pub snapshot_lsn: Option<u64>,
}

/// sled opened and recovered, every tree open, the last change completed,
/// the state segments' live bytes counted.
pub struct Opened {
    pub db: sled::Db,
    pub trees: Trees,
    pub segments: Arc<Segments>,
    /// Keeps sled syncing the segments before its log (see `segments`).
    pub pre_log_sync: sled::PreLogSync,
}

/// Opens sled on `dir` after the checks of step 1, recovers it (step 2),
/// completes an interrupted change, runs `then` (the store migrates and
/// reads its counters there), and checks what was recovered (step 3).
/// `shown` is the directory errors name (the inspector opens a copy).
pub fn open<T>(
    dir: &Path,
    shown: &Path,
    access: Access,
    cache_bytes: u64,
    segment_bytes: u64,
    then: impl FnOnce(&sled::Db, &Trees, &Arc<Segments>) -> Result<T>,
) -> Result<(Opened, T)> {
    let survey = survey(dir, shown, access)?;
    if survey.had_db && access == Access::Serve {
        // A server running on the directory is said as such, not as what
        // its writes in progress look like (a torn newest blob).
        check_unlocked(dir, shown)?;
    }
    if survey.had_db {
        check_log(dir, shown)?;
    }
    restore_kept_blobs(dir).map_err(|e| io_error(shown, "cannot restore a kept blob file", &e))?;
    let mark = match survey.had_db {
        true => read_mark(dir).map_err(|what| DirError::Damaged { dir: shown.to_path_buf(), what })?,
        false => None,
    };
    check_blobs(dir, shown, &survey, mark.and_then(|m| m.blob_lsn))?;
    let segments = Arc::new(Segments::open_sized(dir, true, segment_bytes).map_err(|e| DirError::Damaged {
        dir: shown.to_path_buf(),
        what: format!("its state segments cannot be read: {e}"),
    })?);
    let hooked = Arc::clone(&segments);
    let pre_log_sync = sled::register_pre_log_sync(dir, move || hooked.sync());
    let recovered = crate::panics::catch(|| -> Result<(Opened, T)> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // The committer flushes; sled's own timer thread would only add
            // unsynchronised flushes.
            .flush_every_ms(None)
            .open()
            .map_err(|e| sled_failed(dir, shown, e))?;
        let trees = Trees::open(&db).map_err(|e| sled_failed(dir, shown, e))?;
        let meta = trees.get(TreeId::Meta);
        let version = migrate::read_version(meta).map_err(|e| in_dir(shown, e))?;
        if survey.had_db && version.is_none() {
            return Err(DirError::NoFormatVersion { dir: shown.to_path_buf() }.into());
        }
        // A newer format is refused before anything of it is interpreted.
        if version.is_none_or(|v| v < migrate::CURRENT_FORMAT) {
            change::replay_legacy(&db, &trees).map_err(|e| in_dir(shown, e))?;
        }
        if version == Some(migrate::CURRENT_FORMAT) {
            change::recover(&db, &trees, &segments).map_err(|e| in_dir(shown, e))?;
        }
        let out = then(&db, &trees, &segments).map_err(|e| in_dir(shown, e))?;
        count_live(&trees, &segments).map_err(|e| in_dir(shown, e))?;
        if migrate::read_version(meta).map_err(|e| in_dir(shown, e))? == Some(migrate::CURRENT_FORMAT) {
            let damaged = |what| DirError::Damaged { dir: shown.to_path_buf(), what };
            check_recovered(&trees, &segments, mark.map(|m| m.counters)).map_err(damaged)?;
            if access == Access::Serve {
                // Only once what sled recovered is known to be whole: segments
                // no record points into (appends whose change never became
                // durable, or a compaction's source whose removal a crash cut
                // short).
                let keep = meta.get(keys::META_APPLIED)?.and_then(|m| keys::decode_applied_mark(&m)).map(|(id, _)| id);
                remove_unreferenced(&trees, &segments, keep, shown)?;
                segments
                    .trim_newest()
                    .map_err(|e| io_error(shown, "cannot cut the zeros after the newest state segment", &e))?;
            }
        }
        Ok((Opened { db, trees, segments: Arc::clone(&segments), pre_log_sync }, out))
    });
    match recovered {
        Ok(result) => result,
        Err(panic) => Err(DirError::Unrecoverable {
            dir: shown.to_path_buf(),
            detail: format!("sled panicked while recovering it: {panic}"),
        }
        .into()),
    }
}

/// Counts the live bytes of every segment from the pointers sled holds.
/// A directory of the current format reads only `segment_pointers` (one
/// small entry per value in a segment, see `keys`): opening does not grow
/// with the stored data. Any other (an older format the inspector reads
/// unmigrated, or a newer one) reads the pointers from `states` and
/// `writes` whole.
pub fn count_live(trees: &Trees, segments: &Segments) -> Result<()> {
    let mut pointers = Vec::new();
    if migrate::read_version(trees.get(TreeId::Meta))? == Some(migrate::CURRENT_FORMAT) {
        for entry in trees.get(TreeId::SegmentPointers).iter() {
            let (_, v) = entry?;
            // A malformed entry is `verify`'s to report; it counts nothing.
            if let Some(p) = Pointer::decode(&v) {
                pointers.push(p);
            }
        }
    } else {
        for id in [TreeId::States, TreeId::Writes] {
            for entry in trees.get(id).iter() {
                let (_, v) = entry?;
                if let Some(p) = super::change::pointer_in(id as u8, &v) {
                    pointers.push(p);
                }
            }
        }
    }
    segments.recount(pointers)?;
    Ok(())
}

/// Removes the segments no `segment_pointers` entry points into (see
/// [`Segments::remove_unreferenced`]), each only once a walk of its entries
/// finds no `states` / `writes` key pointing at one: the index is what the
/// live bytes were counted from, and an index missing an entry (damage)
/// must not cost the value. Such a segment is kept, and a warning names
/// `checkpoint-dump verify`. Only segments a crash or a compaction left
/// behind are walked, rarely more than one.
fn remove_unreferenced(trees: &Trees, segments: &Segments, keep: Option<u32>, shown: &Path) -> Result<()> {
    for id in segments.unreferenced(keep) {
        let (entries, _tail) = segments.entries(id).map_err(|e| io_error(shown, "cannot read a state segment", &e))?;
        let mut referenced = false;
        for e in &entries {
            let Some((&tree, key)) = e.owner.split_first() else { continue };
            if tree != TreeId::States as u8 && tree != TreeId::Writes as u8 {
                continue;
            }
            let Some(t) = trees.by_number(tree) else { continue };
            if t.get(key)?.is_some_and(|v| change::pointer_in(tree, &v) == Some(e.pointer)) {
                referenced = true;
                break;
            }
        }
        if referenced {
            tracing::warn!(
                data_dir = %shown.display(),
                segment = %super::segments::file_name(id),
                "a state segment that segment_pointers says is unused holds a live value: keeping it (the index is damaged; run `checkpoint-dump verify`)"
            );
            continue;
        }
        segments.remove(id).map_err(|e| io_error(shown, "cannot remove an unused segment", &e))?;
    }
    Ok(())
}

/// An error met while recovering, naming the directory once.
fn in_dir(dir: &Path, e: StorageError) -> StorageError {
    let shown = dir.display().to_string();
    if e.to_string().contains(&shown) {
        e
    } else {
        DirError::Opening { dir: dir.to_path_buf(), detail: e.to_string() }.into()
    }
}

fn io_error(dir: &Path, what: &str, e: &io::Error) -> DirError {
    if e.kind() == io::ErrorKind::PermissionDenied {
        DirError::NoPermission { dir: dir.to_path_buf(), what: what.to_string() }
    } else {
        DirError::Io { dir: dir.to_path_buf(), what: what.to_string(), error: e.to_string() }
    }
}

/// sled's error on open or recovery, as what it says about the directory.
fn sled_failed(path: &Path, shown: &Path, e: sled::Error) -> StorageError {
    let dir = shown.to_path_buf();
    let err = match e {
        // sled says so only in its message: ask the lock itself.
        sled::Error::Io(_) if matches!(check_unlocked(path, shown), Err(DirError::Locked { .. })) => {
            DirError::Locked { dir }
        }
        sled::Error::Io(io) if io.kind() == io::ErrorKind::PermissionDenied => {
            DirError::NoPermission { dir, what: format!("sled could not open its files: {io}") }
        }
        sled::Error::Io(io) if io.kind() == io::ErrorKind::NotFound => {
            DirError::Unrecoverable { dir, detail: format!("a file it needs is missing: {io}") }
        }
        sled::Error::Io(io) => DirError::Io { dir, what: "sled".into(), error: io.to_string() },
        sled::Error::Corruption { at: Some(sled::DiskPtr::Blob(_, lsn)), .. } => {
            DirError::Unrecoverable { dir, detail: format!("blob file blobs/{lsn} is corrupt") }
        }
        sled::Error::Corruption { at: Some(sled::DiskPtr::Inline(offset)), .. } => {
            DirError::Unrecoverable { dir, detail: format!("corrupt data at offset {offset} of `db`") }
        }
        sled::Error::Corruption { at: None, .. } => {
            DirError::Unrecoverable { dir, detail: "its log or snapshot is corrupt".into() }
        }
        sled::Error::Unsupported(what) => DirError::Unrecoverable { dir, detail: what },
        sled::Error::ReportableBug(what) => DirError::Unrecoverable { dir, detail: format!("sled bug: {what}") },
        sled::Error::CollectionNotFound(_) => DirError::Unrecoverable { dir, detail: e.to_string() },
    };
    err.into()
}

/// Step 1a: the directory and sled's files in it are of the right kind,
/// and readable (and writable, to serve). Creates a missing directory to
/// serve; nothing else is created or changed.
pub fn survey(dir: &Path, shown: &Path, access: Access) -> Result<Survey, DirError> {
    let d = || shown.to_path_buf();
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(DirError::NotADirectory { dir: d() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound && access == Access::Serve => {
            fs::create_dir_all(dir).map_err(|e| io_error(shown, "cannot create it", &e))?;
            return Ok(Survey::default());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(DirError::Missing { dir: d() }),
        Err(e) => return Err(io_error(shown, "cannot read it", &e)),
    }
    let mut survey = Survey::default();
    let (mut conf, mut blobs_dir, mut snapshots) = (false, false, 0);
    for entry in fs::read_dir(dir).map_err(|e| io_error(shown, "cannot list it", &e))? {
        let entry = entry.map_err(|e| io_error(shown, "cannot list it", &e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match name {
            "db" => survey.had_db = true,
            "conf" => conf = true,
            "blobs" => blobs_dir = true,
            _ => {
                if let Some(lsn) = name.strip_prefix("snap.").and_then(|hex| u64::from_str_radix(hex, 16).ok()) {
                    snapshots += 1;
                    survey.snapshot_lsn = survey.snapshot_lsn.max(Some(lsn));
                }
            }
        }
    }
    let write = access == Access::Serve;
    for (name, present) in [("db", survey.had_db), ("conf", conf)] {
        if !present {
            continue;
        }
        let path = dir.join(name);
        let meta = fs::metadata(&path).map_err(|e| io_error(shown, name, &e))?;
        if !meta.is_file() {
            return Err(DirError::WrongKind { dir: d(), what: format!("`{name}`"), expected: "regular file" });
        }
        OpenOptions::new()
            .read(true)
            .write(write)
            .open(&path)
            .map_err(|e| io_error(shown, &format!("cannot open `{name}`"), &e))?;
    }
    if blobs_dir {
        let path = dir.join("blobs");
        if !fs::metadata(&path).map_err(|e| io_error(shown, "blobs", &e))?.is_dir() {
            return Err(DirError::WrongKind { dir: d(), what: "`blobs`".into(), expected: "directory" });
        }
        for entry in fs::read_dir(&path).map_err(|e| io_error(shown, "cannot list `blobs`", &e))? {
            let entry = entry.map_err(|e| io_error(shown, "cannot list `blobs`", &e))?;
            let name = entry.file_name();
            let lsn = name.to_str().and_then(|n| n.parse::<u64>().ok()).ok_or_else(|| DirError::Damaged {
                dir: d(),
                what: format!("`blobs` holds {name:?}, which is not a sled blob file"),
            })?;
            if !entry.file_type().map_err(|e| io_error(shown, "blobs", &e))?.is_file() {
                return Err(DirError::WrongKind { dir: d(), what: format!("`blobs/{lsn}`"), expected: "regular file" });
            }
            survey.blobs.push(lsn);
        }
        survey.blobs.sort_unstable();
    }
    if !survey.had_db {
        let mut present = Vec::new();
        if conf {
            present.push("conf".to_string());
        }
        if !survey.blobs.is_empty() {
            present.push(format!("{} blob files", survey.blobs.len()));
        }
        if snapshots > 0 {
            present.push("a snapshot".to_string());
        }
        if !present.is_empty() {
            return Err(DirError::MissingDb { dir: d(), present: present.join(", ") });
        }
    }
    Ok(survey)
}

/// Fails when another process holds sled's lock (a `flock` on `db`).
fn check_unlocked(dir: &Path, shown: &Path) -> Result<(), DirError> {
    let file = File::open(dir.join("db")).map_err(|e| io_error(shown, "cannot open `db`", &e))?;
    match file.try_lock() {
        // Released when `file` closes; sled takes it again when it opens.
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(DirError::Locked { dir: shown.to_path_buf() }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_error(shown, "cannot lock `db`", &e)),
    }
}

/// The segment size recorded in `conf` (sled's default when unreadable).
fn segment_bytes(dir: &Path) -> u64 {
    let conf = fs::read_to_string(dir.join("conf")).unwrap_or_default();
    conf.lines()
        .find_map(|l| l.strip_prefix("segment_size: ")?.trim().parse::<u64>().ok())
        .filter(|&n| n >= SEGMENT_HEADER_BYTES as u64)
        .unwrap_or(DEFAULT_SEGMENT_BYTES)
}

/// The lsn of every valid segment header in `db`.
fn segment_lsns(dir: &Path, shown: &Path) -> Result<Vec<u64>, DirError> {
    let path = dir.join("db");
    let mut file = File::open(&path).map_err(|e| io_error(shown, "cannot open `db`", &e))?;
    let len = file.metadata().map_err(|e| io_error(shown, "db", &e))?.len();
    let step = segment_bytes(dir);
    let mut lsns = Vec::new();
    let mut at: u64 = 0;
    while at.saturating_add(SEGMENT_HEADER_BYTES as u64) <= len {
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        file.seek(SeekFrom::Start(at))
            .and_then(|_| file.read_exact(&mut header))
            .map_err(|e| io_error(shown, "cannot read `db`", &e))?;
        let stored = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) ^ 0xFFFF_FFFF;
        if stored == crc32fast::hash(&header[4..]) {
            let mut lsn = [0u8; 8];
            lsn.copy_from_slice(&header[4..12]);
            lsns.push(u64::from_le_bytes(lsn) ^ 0x7FFF_FFFF_FFFF_FFFF);
        }
        at = at.saturating_add(step);
    }
    Ok(lsns)
}

/// Step 1b: an existing `db` holds a sled log: at least one segment header
/// that passes its checksum. An empty, truncated or overwritten file would
/// otherwise recover as an empty database.
pub fn check_log(dir: &Path, shown: &Path) -> Result<(), DirError> {
    let len = fs::metadata(dir.join("db")).map_err(|e| io_error(shown, "db", &e))?.len();
    if segment_lsns(dir, shown)?.is_empty() {
        return Err(DirError::Damaged {
            dir: shown.to_path_buf(),
            what: format!("its database file `db` ({len} bytes) holds no valid sled log segment"),
        });
    }
    Ok(())
}

/// Step 1c: every blob file that sled's recovery reads (those written since
/// the segment of its last snapshot) and that the mark says was synced whole
/// (`synced_through`) passes its checksum. sled would stop recovery at a
/// damaged one, silently, and delete every later blob. A blob above the
/// mark may be a write a crash cut short, and is left to sled's recovery.
pub fn check_blobs(dir: &Path, shown: &Path, survey: &Survey, synced_through: Option<u64>) -> Result<(), DirError> {
    // Blob files above the mark may be writes a crash cut short (sled
    // recovers the log up to the first of them, and only unacknowledged
    // writes follow it: acknowledgements come in log order); at or below
    // it, checkpointd had synced them whole.
    let Some(synced_through) = synced_through else { return Ok(()) };
    let from = survey.snapshot_lsn.map_or(0, |lsn| lsn - lsn % segment_bytes(dir));
    for &lsn in survey.blobs.iter().filter(|&&lsn| lsn >= from && lsn <= synced_through) {
        let path = dir.join("blobs").join(lsn.to_string());
        let intact = match blob_intact(&path) {
            Ok(intact) => intact,
            // Removed since it was listed: nothing to recover from it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(shown, &format!("cannot read `blobs/{lsn}`"), &e)),
        };
        if !intact {
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            return Err(DirError::Damaged {
                dir: shown.to_path_buf(),
                what: format!(
                    "blob file blobs/{lsn} ({len} bytes) fails its checksum; sled would silently drop everything written after it"
                ),
            });
        }
    }
    Ok(())
}

/// Whether a blob file's stored crc32 matches its kind byte and body.
fn blob_intact(path: &Path) -> io::Result<bool> {
    let mut file = File::open(path)?;
    if file.metadata()?.len() < BLOB_HEADER_BYTES {
        return Ok(false);
    }
    let mut crc = [0u8; 4];
    file.read_exact(&mut crc)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(hasher.finalize() == u32::from_le_bytes(crc))
}

/// Step 3: what sled recovered is consistent with the persisted counters,
/// as far as a constant number of reads can tell. `Err` says what is wrong.
pub fn check_recovered(trees: &Trees, segments: &Arc<Segments>, mark: Option<Counters>) -> Result<(), String> {
    let tree = |id: TreeId| trees.get(id);
    let read = Reader::new(trees.clone(), Arc::clone(segments));
    let has_data = trees.data().iter().any(|t| !t.is_empty());
    let counters = match read.counters().map_err(|e| e.to_string())? {
        Some(counters) => counters,
        None if has_data => return Err("it holds data but no counters record".into()),
        None => Counters::default(),
    };
    let newest = read.newest_numbers().map_err(|e| e.to_string())?;
    let lost = |n: u64, what: &str| {
        format!("its counters record {n} {what} but none is stored (sled recovered only part of the database)")
    };
    if counters.checkpoints == 0 && !tree(TreeId::Checkpoints).is_empty() {
        return Err("its counters record no checkpoints but checkpoints are stored".into());
    }
    if counters.active_sessions == 0 && !tree(TreeId::Sessions).is_empty() {
        return Err("its counters record no sessions but sessions are stored".into());
    }
    if counters.checkpoints > 0 && tree(TreeId::Checkpoints).is_empty() {
        return Err(lost(counters.checkpoints, "checkpoints"));
    }
    if counters.active_sessions > 0 && tree(TreeId::Sessions).is_empty() {
        return Err(lost(counters.active_sessions, "sessions"));
    }
    for (stored, what, counter) in [
        (newest.checkpoint_sequence, "checkpoint sequence", counters.global_seq),
        (newest.event_sequence, "event sequence", counters.event_seq),
        (newest.session_ordinal, "session ordinal", counters.sessions_created),
    ] {
        if let Some(stored) = stored.filter(|&stored| stored > counter) {
            return Err(format!(
                "stored {what} {stored} is above its counter {counter} (the counters record is older than the data; new writes would reuse numbers)"
            ));
        }
    }
    if let Some(mark) = mark {
        for (what, recovered, marked) in [
            ("checkpoint sequence", counters.global_seq, mark.global_seq),
            ("event sequence", counters.event_seq, mark.event_seq),
            ("sessions created", counters.sessions_created, mark.sessions_created),
        ] {
            if recovered < marked {
                return Err(format!(
                    "sled recovered {what} {recovered}, but {marked} was on disk when checkpointd last recorded it ({MARK_FILE}): part of its log is lost"
                ));
            }
        }
    }
    Ok(())
}

/// The counters (and newest blob synced whole) as they were when
/// checkpointd last wrote its mark: at open, at close, and at most once a
/// `MARK_INTERVAL` while serving. Kept beside sled's files
/// (`checkpointd.counters`, written whole and fsynced). Everything they count was durable when they were
/// written, so sled must recover at least that much: a log cut short by
/// damage (which sled cannot tell from a crash) recovers less.
pub const MARK_FILE: &str = "checkpointd.counters";

/// Reads the mark; `None` when there is none (a directory of an older
/// checkpointd, or never closed).
pub fn read_mark(dir: &Path) -> Result<Option<Mark>, String> {
    match fs::read(dir.join(MARK_FILE)) {
        Ok(bytes) => codec::decode(&bytes, MARK_FILE).map(Some).map_err(|e| e.to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {MARK_FILE}: {e}")),
    }
}

/// Replaces the mark, durably. Call only once everything it counts is on
/// disk.
pub fn write_mark(dir: &Path, mark: &Mark) -> io::Result<()> {
    use std::io::Write;
    let partial = dir.join(format!("{MARK_FILE}.partial"));
    let mut file = File::create(&partial)?;
    file.write_all(&codec::encode(mark))?;
    file.sync_all()?;
    fs::rename(&partial, dir.join(MARK_FILE))?;
    File::open(dir)?.sync_all()
}
