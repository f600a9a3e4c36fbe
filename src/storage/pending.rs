//! Reads of the `writes` tree (pending writes, since format 2) for
//! `checkpoint-dump`, export and `verify`: each write with the whole key
//! that files it, so that a write whose checkpoint is not stored (yet, or
//! ever) can be shown and exported too.

use super::codec;
use super::error::{Result, StorageError};
use super::keys::{self, TreeId};
use super::reads::Reader;
use super::records::{WriteRecord, raw_json};
use crate::model::{PendingWrite, SessionId};
use serde_json::value::RawValue;

/// One stored pending write and the key it is filed under.
#[derive(Debug, Clone)]
pub struct StoredWrite {
    pub session_id: SessionId,
    pub namespace: String,
    /// The external id of the checkpoint it belongs to.
    pub external_id: String,
    pub task_id: String,
    pub task_path: String,
    pub idx: i32,
    pub channel: String,
    /// The client's JSON, exactly as sent.
    pub value: Box<RawValue>,
}

/// A `writes` entry, key and record.
pub(crate) fn decode_stored_write(r: &Reader, k: &[u8], v: &[u8]) -> Result<StoredWrite> {
    let key =
        keys::decode_write_key(k).ok_or_else(|| StorageError::corrupt(format!("writes: undecodable key {k:?}")))?;
    let rec: WriteRecord = codec::decode(v, "pending write")?;
    Ok(StoredWrite {
        session_id: key.session,
        namespace: key.namespace,
        external_id: key.external_id,
        task_id: key.task_id,
        task_path: rec.task_path,
        idx: key.idx,
        channel: rec.channel,
        value: raw_json(r.resolve(&rec.value, "pending write value")?, "pending write value")?,
    })
}

impl From<StoredWrite> for PendingWrite {
    fn from(w: StoredWrite) -> PendingWrite {
        PendingWrite { task_id: w.task_id, task_path: w.task_path, idx: w.idx, channel: w.channel, value: w.value }
    }
}

impl Reader {
    /// The pending writes filed under one checkpoint's (session, namespace,
    /// external id), ordered by (task path, task id, idx) as a record
    /// shows them.
    pub fn checkpoint_writes(&self, session: SessionId, namespace: &str, external: &str) -> Result<Vec<StoredWrite>> {
        let prefix = keys::writes_prefix(session, namespace, external);
        let mut out = self
            .tree(TreeId::Writes)
            .scan_prefix(prefix)
            .map(|entry| {
                let (k, v) = entry?;
                decode_stored_write(self, &k, &v)
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| (&a.task_path, &a.task_id, a.idx).cmp(&(&b.task_path, &b.task_id, b.idx)));
        Ok(out)
    }

    /// Every pending write of a session in key order (namespace, external
    /// id, task id, idx), whether its checkpoint is stored or not.
    pub fn writes_of_session(&self, session: SessionId) -> impl Iterator<Item = Result<StoredWrite>> + '_ {
        self.tree(TreeId::Writes).scan_prefix(keys::session_key(session)).map(|entry| {
            let (k, v) = entry?;
            decode_stored_write(self, &k, &v)
        })
    }

    /// How many pending writes are stored (all sessions).
    pub fn write_count(&self) -> u64 {
        self.tree(TreeId::Writes).len() as u64
    }

    /// Whether a pending write is stored under `key` (a `writes` key).
    pub(crate) fn has_write_key(&self, key: &[u8]) -> Result<bool> {
        Ok(self.tree(TreeId::Writes).contains_key(key)?)
    }
}
