//! Read-only access to a data directory, for `checkpoint-dump`.
//!
//! sled 0.34 has no read-only open: opening a directory takes its lock,
//! creates missing files, and recovery writes a fresh snapshot file. So the
//! inspector never opens the directory it is given. It copies it into a
//! private temporary directory and opens the copy, which it may change
//! freely; the original is only read.
//!
//! - By default it first takes the directory's lock (the `flock` on `db` that
//!   sled takes), so no server writes while it copies; when a server holds
//!   it, opening fails with one line that suggests `--snapshot`.
//! - With `snapshot` the copy is taken while a server may run on the
//!   directory: the server pauses its writes and syncs them while the files
//!   are copied (see [`crate::snapshot`]), so the copy holds every write
//!   acknowledged before the snapshot began and is a consistent image. With
//!   no server running it is taken under the lock, as above.
//!
//! A directory of an older format is read through its copy migrated to the
//! current format, as checkpointd would migrate it ([`migrate::prepare`],
//! without a backup: the original is untouched); [`Inspector::migration`]
//! says so, and [`Summary::format_version`] stays the original's. When the
//! migration fails (damage a format-1 read never met), the copy is read as
//! it is, and `verify` reports the failure: checkpointd would refuse to
//! start on the directory. A newer format is opened as it is (`summary` and
//! `verify` say which it is).

use super::datadir::{self, Access};
use super::error::Result;
use super::keys::TreeId;
use super::reads::Reader;
use super::verify::{self, Verification};
use super::{dircopy, migrate, segments};
use crate::config::StoreConfig;
use crate::model::Sequences;
use std::path::{Path, PathBuf};

/// sled page cache for the copy: inspection scans, it does not need more.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// A private, readable copy of a data directory. Its reads are the
/// store's ([`Reader`], through `Deref`).
pub struct Inspector {
    // Field order is drop order: sled closes before its files are removed.
    read: Reader,
    /// The database, and the hook syncing its segments before its log.
    _db: (sled::Db, sled::PreLogSync),
    /// The private copy, when the inspector made one.
    copy: Option<tempfile::TempDir>,
    source: PathBuf,
    source_bytes: u64,
    migration: Migration,
}

/// What the inspector did to read a directory of an older format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migration {
    /// The directory is of the current format (or a newer one): read as it is.
    None,
    /// The private copy was migrated from this format to the current one.
    Migrated { from: u32 },
    /// Migrating the private copy failed; it is read as it is.
    Failed { from: u32, error: String },
}

/// `checkpoint-dump summary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub data_dir: PathBuf,
    /// The directory's own format version (before any migration of the copy).
    pub format_version: Option<u32>,
    /// The format of what was read: the current one when the copy was
    /// migrated, else the directory's own.
    pub read_format: Option<u32>,
    pub sessions: u64,
    pub checkpoints: u64,
    pub annotations: u64,
    /// Pending writes (since format 2).
    pub writes: u64,
    /// Journal events retained.
    pub events: u64,
    pub oldest_event: Option<u64>,
    pub newest_event: Option<u64>,
    /// As persisted; `None` for a directory never written to.
    pub sequences: Option<Sequences>,
    pub bytes_on_disk: u64,
    /// Bytes of the state segments records point to.
    pub state_live_bytes: u64,
    /// Bytes of the state segments nothing points to (compaction's work).
    pub state_dead_bytes: u64,
}

/// Opens a copy of a data directory (`source` names the original in
/// errors) and completes a change a crash or the copy cut short, as the
/// server would when it opens the directory; a damaged copy is refused
/// (`datadir`). With `migrate`, a copy of an older format is migrated to
/// the current one (no backup: it is a copy).
fn open_sled(path: &Path, source: &Path, migrate: bool) -> Result<((sled::Db, sled::PreLogSync), Reader, Migration)> {
    let (opened, migrated) =
        datadir::open(path, source, Access::Inspect, CACHE_BYTES, segments::SEGMENT_BYTES, |db, trees, _| {
            let meta = trees.get(TreeId::Meta);
            match migrate::read_version(meta)? {
                Some(from) if migrate && from < migrate::CURRENT_FORMAT => {
                    let config = StoreConfig { backup_before_migrate: false, ..StoreConfig::new(path) };
                    // A step that fails changes nothing (see `migrate`).
                    Ok(match migrate::prepare(db, meta, &config) {
                        Ok(()) => Migration::Migrated { from },
                        Err(e) => Migration::Failed { from, error: e.to_string() },
                    })
                }
                _ => Ok(Migration::None),
            }
        })?;
    let datadir::Opened { db, trees, segments, pre_log_sync } = opened;
    Ok(((db, pre_log_sync), Reader::new(trees, segments), migrated))
}

impl std::ops::Deref for Inspector {
    type Target = Reader;

    fn deref(&self) -> &Reader {
        &self.read
    }
}

impl Inspector {
    /// Copies `dir` to a temporary directory and opens the copy. Without
    /// `snapshot`, holds the directory's lock while copying (and fails when
    /// a server holds it); with it, a running server pauses its writes while
    /// the copy is taken ([`crate::snapshot`]). Refuses a path that is not a
    /// sled directory, so nothing is ever created. A copy of an older format
    /// is migrated to the current one ([`Inspector::migration`]).
    pub fn open(dir: &Path, snapshot: bool) -> crate::Result<Inspector> {
        let copy = tempfile::Builder::new().prefix("checkpoint-dump-").tempdir()?;
        let source_bytes = if snapshot {
            crate::snapshot::copy_consistent(dir, copy.path())?.bytes
        } else {
            crate::snapshot::copy_locked(dir, copy.path())?
        };
        let (db, read, migration) = open_sled(copy.path(), dir, true)?;
        Ok(Inspector { read, _db: db, copy: Some(copy), source: dir.to_path_buf(), source_bytes, migration })
    }

    /// Opens a directory that is this process's own copy (a backup being
    /// made) in place: sled recovers it and the last change is completed,
    /// exactly as when a server opens it. It is not migrated: a backup
    /// keeps the format of what it copied.
    pub fn open_own_copy(dir: &Path) -> Result<Inspector> {
        let source_bytes = dircopy::dir_size(dir)?;
        let (db, read, _) = open_sled(dir, dir, false)?;
        Ok(Inspector { read, _db: db, copy: None, source: dir.to_path_buf(), source_bytes, migration: Migration::None })
    }

    /// Whether the private copy of an older directory was migrated to the
    /// current format to be read (the original is not changed: checkpointd
    /// migrates it when it next opens it), or failed to be.
    pub fn migration(&self) -> &Migration {
        &self.migration
    }

    /// Where the private copy lives (removed when the inspector is dropped).
    pub fn copy_path(&self) -> &Path {
        self.copy.as_ref().map_or(&self.source, |c| c.path())
    }

    /// The original directory's format version.
    pub fn format_version(&self) -> Result<Option<u32>> {
        match self.migration {
            Migration::Migrated { from } | Migration::Failed { from, .. } => Ok(Some(from)),
            Migration::None => self.read_format(),
        }
    }

    /// The format version of what is read (of the copy, migrated or not).
    pub fn read_format(&self) -> Result<Option<u32>> {
        migrate::read_version(self.read.tree(TreeId::Meta))
    }

    pub fn summary(&self) -> Result<Summary> {
        let len = |id: TreeId| self.read.tree(id).len() as u64;
        Ok(Summary {
            data_dir: self.source.clone(),
            format_version: self.format_version()?,
            read_format: self.read_format()?,
            sessions: len(TreeId::Sessions),
            checkpoints: len(TreeId::Checkpoints),
            annotations: len(TreeId::Annotations),
            writes: len(TreeId::Writes),
            events: len(TreeId::Events),
            oldest_event: self.read.oldest_event()?,
            newest_event: self.read.newest_event()?,
            sequences: self.read.counters()?.map(|c| c.sequences()),
            bytes_on_disk: self.source_bytes,
            state_live_bytes: self.read.segments().space().live_bytes,
            state_dead_bytes: self.read.segments().space().dead_bytes,
        })
    }

    /// Checks every checksum, every index entry against its record, every
    /// record against the indexes, and the counters against the data.
    /// A failed migration of the private copy is a problem too: checkpointd
    /// would refuse to start on the directory.
    pub fn verify(&self) -> Result<Verification> {
        let mut v = verify::verify(&self.read)?;
        if let Migration::Failed { from, error } = &self.migration {
            v.problem(format!(
                "migrating format {from} to {} fails, so checkpointd would refuse to start on it: {error}",
                migrate::CURRENT_FORMAT
            ));
        }
        Ok(v)
    }
}
