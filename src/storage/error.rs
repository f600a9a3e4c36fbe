//! What storage fails with, in its own terms. Storage never picks a wire
//! code: the one conversion below (`From<StorageError> for Error`) does.

use crate::error::Error;
use std::io;

/// Result alias of the storage layer.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// No such session or checkpoint (wire: `not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The change contradicts what is stored: a taken id or sequence, a
    /// parent in another session (wire: `conflict`).
    #[error("{0}")]
    Conflict(String),
    /// A per-record limit is reached, e.g. a checkpoint's annotations
    /// (wire: `too_large`).
    #[error("{0}")]
    Full(String),
    /// Stored bytes do not read back: a checksum, a record, a key (wire:
    /// `internal`; `verify` describes the damage).
    #[error("{0}")]
    Corrupt(String),
    /// The disk refused an operation (wire: `unavailable`).
    #[error("{0}")]
    Io(String),
    /// The store refuses writes: a flush failed (it fails closed until a
    /// restart), it is closed, or its sequence numbers are exhausted (wire:
    /// `unavailable`).
    #[error("{0}")]
    Failed(String),
    /// Another process holds the data directory (wire: `unavailable`).
    #[error("{0}")]
    Locked(String),
    /// The data directory cannot be served safely: damaged, foreign, too
    /// new, or its migration failed (wire: `unavailable`).
    #[error("{0}")]
    Refused(String),
    /// The database server cannot be reached, is restarting, or did not
    /// answer in time (a networked store; wire: `unavailable`). Unlike
    /// `Failed`, it passes: the next request tries again.
    #[error("{0}")]
    Unavailable(String),
    /// A bug, e.g. a poisoned lock (wire: `internal`).
    #[error("{0}")]
    Internal(String),
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound(m) => Error::NotFound(m),
            StorageError::Conflict(m) => Error::Conflict(m),
            StorageError::Full(m) => Error::TooLarge(m),
            StorageError::Corrupt(m) | StorageError::Internal(m) => Error::Internal(m),
            StorageError::Io(m)
            | StorageError::Failed(m)
            | StorageError::Locked(m)
            | StorageError::Refused(m)
            | StorageError::Unavailable(m) => Error::Unavailable(m),
        }
    }
}

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) if io.kind() == io::ErrorKind::NotFound => {
                StorageError::Io(format!("storage I/O error: a file of the database is missing ({io})"))
            }
            sled::Error::Io(io) => StorageError::Io(format!("storage I/O error: {io}")),
            sled::Error::Corruption { at: Some(sled::DiskPtr::Blob(_, lsn)), .. } => {
                StorageError::Corrupt(format!("storage error: blob file blobs/{lsn} is corrupt"))
            }
            sled::Error::Corruption { at: Some(sled::DiskPtr::Inline(offset)), .. } => {
                StorageError::Corrupt(format!("storage error: corrupt data at offset {offset} of the database file"))
            }
            sled::Error::Corruption { at: None, .. } => StorageError::Corrupt("storage error: corrupt data".into()),
            other => StorageError::Internal(format!("storage error: {other}")),
        }
    }
}

impl From<io::Error> for StorageError {
    fn from(e: io::Error) -> Self {
        StorageError::Io(format!("I/O error: {e}"))
    }
}

impl StorageError {
    /// A stored record or key that does not decode.
    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        StorageError::Corrupt(what.to_string())
    }

    pub(crate) fn poisoned() -> Self {
        StorageError::Internal("write lock poisoned".into())
    }
}
