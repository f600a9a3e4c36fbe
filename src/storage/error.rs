//! What storage fails with, in its own terms. Storage never picks a wire
//! code: the one conversion below (`From<StorageError> for Error`) does.

use crate::config::MAX_CHANGE_CHECKPOINTS;
use crate::error::Error;
use crate::model::{CheckpointId, SessionId};
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

/// The refusals both stores give, each message written once: a client
/// that moves from sled to PostgreSQL reads the same words.
impl StorageError {
    pub(crate) fn session_not_found(id: SessionId) -> Self {
        StorageError::NotFound(format!("session {id} not found"))
    }

    pub(crate) fn checkpoint_not_found(id: CheckpointId) -> Self {
        StorageError::NotFound(format!("checkpoint {id} not found"))
    }

    pub(crate) fn no_session_with_key(key: &str) -> Self {
        StorageError::NotFound(format!("no session has key {key:?}"))
    }

    /// `restore`: the checkpoint is not one of `session`'s.
    pub(crate) fn not_in_session(id: CheckpointId, session: SessionId) -> Self {
        StorageError::NotFound(format!("checkpoint {id} not found in session {session}"))
    }

    /// `delete_checkpoint` with a session: the checkpoint is another's.
    pub(crate) fn not_in_this_session(id: CheckpointId) -> Self {
        StorageError::NotFound(format!("checkpoint {id} not found in this session"))
    }

    /// `get_checkpoint` by namespace (and external id, or the latest).
    pub(crate) fn none_in_namespace(session: SessionId, namespace: &str, external: Option<&str>) -> Self {
        StorageError::NotFound(match external {
            Some(external) => {
                format!("checkpoint {external:?} not found in namespace {namespace:?} of session {session}")
            }
            None => format!("no checkpoint in namespace {namespace:?} of session {session}"),
        })
    }

    /// A list bound given as an external id that is not stored.
    pub(crate) fn bound_not_found(namespace: &str, external: &str) -> Self {
        StorageError::NotFound(format!("checkpoint {external:?} not found in namespace {namespace:?}"))
    }

    pub(crate) fn parent_in_other_session(parent: CheckpointId) -> Self {
        StorageError::Conflict(format!("parent checkpoint {parent} belongs to another session"))
    }

    pub(crate) fn parent_not_found(session: SessionId, namespace: &str, external: &str) -> Self {
        StorageError::NotFound(format!(
            "parent checkpoint {external:?} not found in namespace {namespace:?} of session {session}"
        ))
    }

    pub(crate) fn annotations_full(id: CheckpointId, max: u32) -> Self {
        StorageError::Full(format!("checkpoint {id} already has {max} annotations"))
    }

    pub(crate) fn copy_too_large(source: SessionId, checkpoints: u64) -> Self {
        StorageError::Full(format!(
            "session {source} has {checkpoints} checkpoints; copy_session copies at most {MAX_CHANGE_CHECKPOINTS} at once"
        ))
    }

    pub(crate) fn copy_into_itself(source: SessionId) -> Self {
        StorageError::Conflict(format!("session {source} cannot be copied into itself"))
    }

    pub(crate) fn sequences_exhausted(counters: &impl std::fmt::Debug) -> Self {
        StorageError::Failed(format!("sequence numbers are exhausted: {counters:?}"))
    }

    // Import: a record that is already stored (or twice in the batch)
    // refuses the whole batch.

    pub(crate) fn session_exists(id: SessionId) -> Self {
        StorageError::Conflict(format!("session {id} already exists"))
    }

    pub(crate) fn ordinal_taken(id: SessionId, ordinal: u64) -> Self {
        StorageError::Conflict(format!("session {id}: ordinal {ordinal} is taken"))
    }

    pub(crate) fn key_taken(id: SessionId, key: &str) -> Self {
        StorageError::Conflict(format!("session {id}: key {key:?} is taken"))
    }

    pub(crate) fn checkpoint_exists(id: CheckpointId) -> Self {
        StorageError::Conflict(format!("checkpoint {id} already exists"))
    }

    pub(crate) fn sequence_taken(id: CheckpointId, seq: u64) -> Self {
        StorageError::Conflict(format!("checkpoint {id}: sequence {seq} is taken"))
    }

    pub(crate) fn external_taken(id: CheckpointId, namespace: &str, external: &str) -> Self {
        StorageError::Conflict(format!("checkpoint {id}: external id {external:?} is taken in namespace {namespace:?}"))
    }

    pub(crate) fn imported_parent_elsewhere(id: CheckpointId, parent: CheckpointId) -> Self {
        StorageError::Conflict(format!("checkpoint {id}: parent {parent} is in another session"))
    }

    pub(crate) fn annotated_missing(id: CheckpointId) -> Self {
        StorageError::NotFound(format!("annotation of checkpoint {id}, which does not exist"))
    }

    pub(crate) fn annotation_exists(id: CheckpointId, index: u32) -> Self {
        StorageError::Conflict(format!("checkpoint {id}: annotation {index} already exists"))
    }

    pub(crate) fn write_session_missing(session: SessionId) -> Self {
        StorageError::NotFound(format!("pending write of session {session}, which does not exist"))
    }

    pub(crate) fn write_exists(w: &crate::storage::StoredWrite) -> Self {
        StorageError::Conflict(format!(
            "pending write {} of task {:?} for {:?} in namespace {:?} of session {} already exists",
            w.idx, w.task_id, w.external_id, w.namespace, w.session_id
        ))
    }
}
