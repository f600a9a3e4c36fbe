//! The on-disk format version and the hook that upgrades older directories.
//!
//! The meta tree records `format_version` (u32, big-endian). Opening a
//! directory of a newer format is refused with both versions named; an
//! older one is upgraded by the steps in `migrations/` (none yet: format 1 is
//! the first released format).

use super::keys::{self, TREE_NAMES};
use crate::config::StoreConfig;
use crate::error::{Error, Result};

/// The format this binary writes.
pub const CURRENT_FORMAT: u32 = 1;

/// Reads the directory's format version; `None` for a directory never written.
pub fn read_version(meta: &sled::Tree) -> Result<Option<u32>> {
    match meta.get(keys::META_FORMAT_VERSION)? {
        Some(v) => {
            let bytes: [u8; 4] =
                v.as_ref().try_into().map_err(|_| Error::Internal("format_version is not a u32".into()))?;
            Ok(Some(u32::from_be_bytes(bytes)))
        }
        None => Ok(None),
    }
}

/// Makes the directory ready for this binary: stamps a new one, refuses a
/// newer one, migrates an older one.
pub fn prepare(db: &sled::Db, meta: &sled::Tree, config: &StoreConfig) -> Result<()> {
    match read_version(meta)? {
        None => {
            let empty = TREE_NAMES.iter().all(|name| db.open_tree(name).map(|t| t.is_empty()).unwrap_or(false));
            if !empty {
                return Err(Error::Unavailable(format!(
                    "data directory {} holds data but no format version; refusing to guess",
                    config.data_dir.display()
                )));
            }
            meta.insert(keys::META_FORMAT_VERSION, &CURRENT_FORMAT.to_be_bytes())?;
            db.flush()?;
            Ok(())
        }
        Some(v) if v == CURRENT_FORMAT => Ok(()),
        Some(v) if v > CURRENT_FORMAT => Err(Error::Unavailable(format!(
            "data directory {} has format version {v}, newer than version {CURRENT_FORMAT} that this checkpointd supports; upgrade checkpointd",
            config.data_dir.display()
        ))),
        Some(v) => Err(Error::Unavailable(format!(
            "data directory {} has format version {v}; this checkpointd knows no migration from it to {CURRENT_FORMAT}",
            config.data_dir.display()
        ))),
    }
}
