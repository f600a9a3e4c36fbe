//! The on-disk format version and the runner that upgrades older directories.
//!
//! The meta tree records `format_version` (u32, big-endian). Opening a
//! directory of a newer format is refused with both versions named; an older
//! one is upgraded by the steps in the top-level `migrations/` directory, one
//! file per step, compiled into this module and run in order.
//!
//! Each step upgrades one version (`from` to `from + 1`). It reads the
//! directory as the previous version left it and stages its changes in a
//! [`StepWrite`]; the runner applies them together with the new
//! `format_version` in one sled transaction. So a step is atomic (a crash
//! leaves the directory at `from` or at `from + 1`, never in between), the
//! meta tree records the version after every step, and a step is never
//! applied twice: the next start resumes at the first step not recorded.
//!
//! Before the first step the runner copies the directory to
//! `<data_dir>.backup-v<old version>` (skipped when
//! [`StoreConfig::backup_before_migrate`] is off: `checkpointd --no-backup`),
//! and it logs every step.

#[path = "../../migrations/mod.rs"]
mod steps;

pub use steps::STEPS;

use super::dircopy;
use super::error::{Result, StorageError};
use super::keys::{self, TREE_NAMES, TreeId};
use super::segments::{self, Segments};
use crate::config::StoreConfig;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Batch, Transactional, Tree};
use std::path::{Path, PathBuf};

/// The format this binary writes.
pub const CURRENT_FORMAT: u32 = 4;

/// One upgrade of the on-disk format, from version `from` to `from + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// The version this step upgrades; it leaves the directory at `from + 1`.
    pub from: u32,
    /// A short name for the logs.
    pub name: &'static str,
    /// Stages the step's changes. It must only read the directory and stage
    /// writes in the [`StepWrite`]: the runner applies them atomically.
    pub run: fn(&mut StepWrite<'_>) -> Result<()>,
}

/// The changes of one migration step, applied in one transaction together
/// with the new format version.
pub struct StepWrite<'a> {
    db: &'a sled::Db,
    trees: Vec<(String, Tree, Batch)>,
    /// The directory's state segments (format 3), for steps that move
    /// values out of sled; synced before the step's transaction.
    segments: Segments,
    /// Changes staged so far (items) and their bytes, shown to the operator.
    progress: crate::progress::Progress,
}

impl StepWrite<'_> {
    fn slot(&mut self, name: &str) -> Result<usize> {
        if let Some(i) = self.trees.iter().position(|(n, _, _)| n == name) {
            return Ok(i);
        }
        let tree = self.db.open_tree(name)?;
        self.trees.push((name.to_string(), tree, Batch::default()));
        Ok(self.trees.len() - 1)
    }

    /// A tree to read, as the previous format left it (staged changes are
    /// not visible in it).
    pub fn tree(&mut self, name: &str) -> Result<Tree> {
        let i = self.slot(name)?;
        Ok(self.trees[i].1.clone())
    }

    /// Stages an insert into tree `name`.
    pub fn put(&mut self, name: &str, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let i = self.slot(name)?;
        let (key, value) = (key.as_ref(), value.as_ref());
        self.progress.inc(1, (key.len() + value.len()) as u64);
        self.trees[i].2.insert(key, value);
        Ok(())
    }

    /// Stages a removal from tree `name`.
    /// Appends a value to the directory's state segments and returns the
    /// pointer to store in its place (see `storage::segments`).
    pub fn append_value(&mut self, tree: TreeId, key: &[u8], value: &[u8]) -> Result<Vec<u8>> {
        let p = self.segments.append(&segments::owner(tree as u8, key), value)?;
        Ok(p.encode().to_vec())
    }

    /// The newest state segment present, if any (segment ids only grow).
    pub fn newest_segment(&self) -> Option<u32> {
        self.segments.ids().last().copied()
    }

    pub fn del(&mut self, name: &str, key: impl AsRef<[u8]>) -> Result<()> {
        let i = self.slot(name)?;
        self.trees[i].2.remove(key.as_ref());
        Ok(())
    }
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub from: u32,
    pub to: u32,
    /// Where the copy of the directory taken before the first step is.
    pub backup: Option<PathBuf>,
}

/// Reads the directory's format version; `None` for a directory never written.
pub fn read_version(meta: &sled::Tree) -> Result<Option<u32>> {
    match meta.get(keys::META_FORMAT_VERSION)? {
        Some(v) => {
            let bytes: [u8; 4] =
                v.as_ref().try_into().map_err(|_| StorageError::corrupt("format_version is not a u32"))?;
            Ok(Some(u32::from_be_bytes(bytes)))
        }
        None => Ok(None),
    }
}

/// Makes the directory ready for this binary: stamps a new one, refuses a
/// newer one, migrates an older one with [`STEPS`].
pub fn prepare(db: &sled::Db, meta: &sled::Tree, config: &StoreConfig) -> Result<()> {
    if read_version(meta)?.is_some() {
        migrate(db, config, STEPS, CURRENT_FORMAT)?;
        return Ok(());
    }
    let empty = TREE_NAMES.iter().all(|name| db.open_tree(name).map(|t| t.is_empty()).unwrap_or(false));
    if !empty {
        return Err(StorageError::Refused(format!(
            "data directory {} holds data but no format version; refusing to guess",
            config.data_dir.display()
        )));
    }
    meta.insert(keys::META_FORMAT_VERSION, &CURRENT_FORMAT.to_be_bytes())?;
    db.flush()?;
    Ok(())
}

/// Brings a directory that has a format version up to `target` with `steps`
/// (the store passes [`STEPS`] and [`CURRENT_FORMAT`]; tests pass their own).
/// Returns `None` when it already was at `target`. Refuses a newer directory,
/// and an older one for which a step is missing, before changing anything.
pub fn migrate(db: &sled::Db, config: &StoreConfig, steps: &[Step], target: u32) -> Result<Option<Migrated>> {
    let dir = config.data_dir.display();
    let meta = db.open_tree(TREE_NAMES[TreeId::Meta as usize])?;
    let Some(from) = read_version(&meta)? else {
        return Err(StorageError::Refused(format!("data directory {dir} has no format version to migrate from")));
    };
    if from == target {
        return Ok(None);
    }
    if from > target {
        return Err(StorageError::Refused(format!(
            "data directory {dir} has format version {from}, newer than version {target} that this checkpointd supports; upgrade checkpointd"
        )));
    }
    let plan = (from..target)
        .map(|v| {
            steps.iter().find(|s| s.from == v).ok_or_else(|| {
                StorageError::Refused(format!(
                    "data directory {dir} has format version {from}; this checkpointd knows no migration from version {v} to {}",
                    v + 1
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let backup = if config.backup_before_migrate {
        Some(backup(db, &config.data_dir, from)?)
    } else {
        tracing::warn!(data_dir = %dir, from, "migrating without a backup (--no-backup)");
        None
    };
    tracing::info!(data_dir = %dir, from, to = target, steps = plan.len(), "migrating the data directory");
    for step in plan {
        run_step(db, &meta, &config.data_dir, step)?;
        tracing::info!(data_dir = %dir, from = step.from, to = step.from + 1, step = step.name, "migration step done");
    }
    tracing::info!(data_dir = %dir, from, to = target, "migration complete");
    Ok(Some(Migrated { from, to: target, backup }))
}

/// Applies one step and the version it leaves, in one transaction, then
/// makes both durable.
fn run_step(db: &sled::Db, meta: &Tree, data_dir: &Path, step: &Step) -> Result<()> {
    let to = step.from + 1;
    let progress = crate::progress::Progress::start(format!("migration {} to {to} ({})", step.from, step.name), None);
    let mut w = StepWrite { db, trees: Vec::new(), segments: Segments::open(data_dir, true)?, progress };
    (step.run)(&mut w).map_err(|e| {
        StorageError::Refused(format!("migration step {} (version {} to {to}) failed: {e}", step.name, step.from))
    })?;
    w.put(TREE_NAMES[TreeId::Meta as usize], keys::META_FORMAT_VERSION, to.to_be_bytes())?;
    // What the step appended is durable before anything pointing to it.
    w.segments.sync()?;
    w.progress.finish(true);
    let segments = w.segments;
    let trees: Vec<Tree> = w.trees.iter().map(|(_, t, _)| t.clone()).collect();
    let batches: Vec<Batch> = w.trees.into_iter().map(|(_, _, b)| b).collect();
    let result: Result<(), TransactionError<()>> = trees.as_slice().transaction(|txs| {
        for (tx, batch) in txs.iter().zip(&batches) {
            tx.apply_batch(batch)?;
        }
        Ok::<_, ConflictableTransactionError<()>>(())
    });
    match result {
        Ok(()) => {}
        Err(TransactionError::Storage(e)) => return Err(e.into()),
        Err(TransactionError::Abort(())) => return Err(StorageError::Internal("migration transaction aborted".into())),
    }
    // sled's flush does not fsync on Linux: sync as a group commit does,
    // blob files included.
    super::commit::sync_database(db, &segments, data_dir)?;
    debug_assert_eq!(read_version(meta)?, Some(to));
    Ok(())
}

/// `<data_dir>.backup-v<version>`, beside the data directory.
pub fn backup_path(data_dir: &Path, version: u32) -> Result<PathBuf> {
    let abs = std::fs::canonicalize(data_dir)?;
    let name = abs
        .file_name()
        .ok_or_else(|| StorageError::Refused(format!("cannot name a backup of {}", abs.display())))?
        .to_string_lossy()
        .into_owned();
    Ok(abs.with_file_name(format!("{name}.backup-v{version}")))
}

/// Copies the directory (fsynced) before the first step. A backup left by an
/// earlier, interrupted migration is older still, so it is kept.
fn backup(db: &sled::Db, data_dir: &Path, from: u32) -> Result<PathBuf> {
    let target = backup_path(data_dir, from)?;
    if target.exists() {
        tracing::warn!(backup = %target.display(), "a backup of this version already exists; keeping it");
        return Ok(target);
    }
    db.flush()?;
    let mut partial = target.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    let bytes = dircopy::copy_dir(data_dir, &partial, true)?;
    std::fs::rename(&partial, &target)?;
    if let Some(parent) = target.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    tracing::info!(backup = %target.display(), bytes, "copied the data directory before migrating");
    Ok(target)
}
