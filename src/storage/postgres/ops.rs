//! The write operations in SQL. Each runs inside the group commit's
//! transaction (`writer`), in a savepoint of its own, after the counters
//! row was locked: every other writer, on any server, waits for that lock,
//! so what an operation reads cannot change before it commits. An operation
//! that returns an error is rolled back to its savepoint (its numbers given
//! back). The rules (retention, pending writes, refusals and their
//! messages) are the sled store's (`storage::writes`), through the same
//! shared functions of [`crate::model`].

use super::conn::{Cached, Db, db_error};
use super::read::{self, bound, num, storable};
use crate::config::MAX_CHANGE_CHECKPOINTS;
use crate::model::{
    Annotation, Checkpoint, CheckpointId, CheckpointSummary, Compaction, EventKind, MetadataFilter, NewCheckpoint,
    NewWrites, RetentionPolicy, Session, SessionId, Severity, StateJson, Trigger, metadata_matches, write_replaces,
};
use crate::storage::error::{Result, StorageError};
use crate::storage::import::{ImportBatch, ImportCheckpoint, ImportCounts, ImportSession, ImportTarget, apply};
use crate::storage::pending::StoredWrite;
use crate::storage::records::{Counters, from_nanos, stored_time};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, HashSet};
use tokio_postgres::Transaction;

/// One write, as queued for the group commit.
pub(crate) enum Write {
    CreateSession { name: String, metadata: Box<RawValue> },
    OpenSession { key: String, name: String, metadata: Box<RawValue> },
    DeleteSession(SessionId),
    SetRetention(SessionId, Option<RetentionPolicy>),
    PutCheckpoint(NewCheckpoint),
    Restore(SessionId, CheckpointId),
    DeleteCheckpoint(CheckpointId, Option<SessionId>),
    Annotate { id: CheckpointId, note: String, severity: Severity, max: u32 },
    Compact { session: SessionId, policy: RetentionPolicy, per_namespace: bool },
    PutWrites(NewWrites),
    CopySession { source: SessionId, key: Option<String>, name: String, metadata: Box<RawValue> },
    DeleteCheckpoints { session: Option<SessionId>, namespace: Option<String>, filter: MetadataFilter },
    Import(ImportBatch),
}

/// What a write answers.
pub(crate) enum Done {
    Session(Session),
    Opened(Session, bool),
    Count(u64),
    Retention(Option<RetentionPolicy>),
    Put(CheckpointSummary, Option<Compaction>),
    Checkpoint(Checkpoint),
    SessionId(SessionId),
    Annotation(Annotation),
    Compaction(Compaction),
    Copied(Session, u64),
    Deleted(u64, bool),
    Imported(ImportCounts),
}

impl Write {
    /// About how many bytes it carries, to bound a transaction.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Write::PutCheckpoint(n) => {
                256 + n.message.len()
                    + n.state.as_ref().map_or(4, |s| s.get().len())
                    + n.metadata.as_ref().map_or(2, |m| m.get().len())
            }
            Write::PutWrites(w) => 256 + w.writes.iter().map(|(_, c, v)| 64 + c.len() + v.get().len()).sum::<usize>(),
            Write::Import(b) => b.approx_bytes(),
            Write::CreateSession { name, metadata } | Write::OpenSession { name, metadata, .. } => {
                256 + name.len() + metadata.get().len()
            }
            Write::Annotate { note, .. } => 256 + note.len(),
            _ => 256,
        }
    }

    pub(crate) async fn run(self, x: &mut Ctx<'_>) -> Result<Done> {
        Ok(match self {
            Write::CreateSession { name, metadata } => Done::Session(new_session(x, None, name, &metadata).await?),
            Write::OpenSession { key, name, metadata } => match read::session_by_key(x.tx, &key).await? {
                Some(s) => Done::Opened(s, false),
                None => Done::Opened(new_session(x, Some(key), name, &metadata).await?, true),
            },
            Write::DeleteSession(id) => Done::Count(delete_session(x, id).await?),
            Write::SetRetention(id, policy) => Done::Retention(set_retention(x, id, policy).await?),
            Write::PutCheckpoint(new) => {
                let (s, c) = put_checkpoint(x, new).await?;
                Done::Put(s, c)
            }
            Write::Restore(session, id) => Done::Checkpoint(restore(x, session, id).await?),
            Write::DeleteCheckpoint(id, session) => Done::SessionId(delete_checkpoint(x, id, session).await?),
            Write::Annotate { id, note, severity, max } => {
                Done::Annotation(annotate(x, id, note, severity, max).await?)
            }
            Write::Compact { session, policy, per_namespace } => {
                Done::Compaction(compact(x, session, &policy, per_namespace).await?)
            }
            Write::PutWrites(w) => Done::Count(put_writes(x, w).await?),
            Write::CopySession { source, key, name, metadata } => {
                let (s, n) = copy_session(x, source, key, name, &metadata).await?;
                Done::Copied(s, n)
            }
            Write::DeleteCheckpoints { session, namespace, filter } => {
                let (n, more) = delete_checkpoints(x, session, namespace.as_deref(), &filter).await?;
                Done::Deleted(n, more)
            }
            Write::Import(batch) => Done::Imported(import(x, batch).await?),
        })
    }
}

/// One transaction's state: the counters as they will be after it, and
/// its time (every record a write stamps gets it).
pub(crate) struct Ctx<'t> {
    /// The transaction, its statements prepared once per connection.
    pub tx: &'t Cached<'t, Transaction<'t>>,
    pub c: Counters,
    pub now: i64,
}

/// Sequence numbers one write may hand out at most before the counters
/// would pass `i64::MAX` (a write refuses when fewer are left).
pub(crate) fn exhausted(c: &Counters) -> bool {
    let limit = i64::MAX as u64 - Counters::WRITE_HEADROOM;
    [c.global_seq, c.event_seq, c.sessions_created].iter().any(|&n| n > limit)
}

impl Ctx<'_> {
    /// Journals an event with the next event sequence.
    async fn event(&mut self, session: SessionId, kind: EventKind) -> Result<()> {
        let seq = self.next_event();
        self.insert_event(seq, session, &kind).await
    }

    /// Takes the next event sequence, for [`Ctx::insert_event`].
    fn next_event(&mut self) -> u64 {
        self.c.event_seq += 1;
        self.c.event_seq
    }

    /// Journals an event with a sequence taken by [`Ctx::next_event`].
    async fn insert_event(&self, seq: u64, session: SessionId, kind: &EventKind) -> Result<()> {
        let kind = serde_json::to_string(kind).map_err(|e| StorageError::Internal(format!("event: {e}")))?;
        self.tx
            .execute(
                "INSERT INTO events (seq, session_id, ts, kind) VALUES ($1, $2, $3, $4)",
                &[&bound(seq), &session.0, &self.now, &kind],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn exec(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<u64> {
        self.tx.execute(sql, params).await.map_err(db_error)
    }
}

// ----- sessions ------------------------------------------------------------------

struct NewSession<'a> {
    id: SessionId,
    ordinal: u64,
    key: Option<&'a str>,
    name: &'a str,
    created_at: i64,
    metadata: &'a str,
    retention: Option<&'a RetentionPolicy>,
}

async fn insert_session(x: &Ctx<'_>, s: NewSession<'_>) -> Result<()> {
    let retention = s.retention.map(|p| serde_json::to_string(p).unwrap_or_default());
    x.exec(
        "INSERT INTO sessions (id, ordinal, key, name, created_at, metadata, retention, checkpoint_count, last_sequence) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, NULL)",
        &[
            &s.id.0,
            &storable(s.ordinal, "session ordinal")?,
            &s.key.map(str::as_bytes),
            &s.name.as_bytes(),
            &s.created_at,
            &s.metadata,
            &retention,
        ],
    )
    .await?;
    Ok(())
}

async fn new_session(x: &mut Ctx<'_>, key: Option<String>, name: String, metadata: &RawValue) -> Result<Session> {
    x.c.sessions_created += 1;
    x.c.active_sessions += 1;
    let id = SessionId::new();
    let s = NewSession {
        id,
        ordinal: x.c.sessions_created,
        key: key.as_deref(),
        name: &name,
        created_at: x.now,
        metadata: metadata.get(),
        retention: None,
    };
    insert_session(x, s).await?;
    read::session(x.tx, id).await
}

/// Sets a session's count and newest sequence from what it holds now.
async fn recount(x: &Ctx<'_>, id: SessionId) -> Result<Session> {
    x.exec(
        "UPDATE sessions SET checkpoint_count = (SELECT count(*) FROM checkpoints WHERE session_id = $1), \
         last_sequence = (SELECT max(seq) FROM checkpoints WHERE session_id = $1) WHERE id = $1",
        &[&id.0],
    )
    .await?;
    read::session(x.tx, id).await
}

async fn delete_session(x: &mut Ctx<'_>, id: SessionId) -> Result<u64> {
    read::session(x.tx, id).await?;
    x.exec("DELETE FROM writes WHERE session_id = $1", &[&id.0]).await?;
    // Annotations go with their checkpoints (ON DELETE CASCADE).
    let removed = x.exec("DELETE FROM checkpoints WHERE session_id = $1", &[&id.0]).await?;
    x.exec("DELETE FROM sessions WHERE id = $1", &[&id.0]).await?;
    x.c.checkpoints = x.c.checkpoints.saturating_sub(removed);
    x.c.active_sessions = x.c.active_sessions.saturating_sub(1);
    x.event(id, EventKind::SessionDeleted { removed }).await?;
    Ok(removed)
}

async fn set_retention(
    x: &mut Ctx<'_>,
    id: SessionId,
    policy: Option<RetentionPolicy>,
) -> Result<Option<RetentionPolicy>> {
    read::session(x.tx, id).await?;
    let policy = policy.filter(|p| !p.is_empty());
    let json = policy.as_ref().map(|p| serde_json::to_string(p).unwrap_or_default());
    x.exec("UPDATE sessions SET retention = $2 WHERE id = $1", &[&id.0, &json]).await?;
    Ok(policy)
}

// ----- checkpoints ------------------------------------------------------------------

struct CheckpointRow<'a> {
    seq: u64,
    id: CheckpointId,
    session: SessionId,
    namespace: &'a str,
    external_id: Option<&'a str>,
    ts: i64,
    message: &'a str,
    tags: &'a [String],
    trigger: String,
    metadata: &'a str,
    parent_id: Option<CheckpointId>,
    parent_external_id: Option<&'a str>,
    state: &'a str,
}

async fn insert_checkpoint(x: &Ctx<'_>, r: CheckpointRow<'_>) -> Result<()> {
    let tags: Vec<&[u8]> = r.tags.iter().map(|t| t.as_bytes()).collect();
    x.exec(
        "INSERT INTO checkpoints (seq, id, session_id, namespace, external_id, ts, message, tags, trigger, metadata, \
         parent_id, parent_external_id, state, state_crc) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        &[
            &storable(r.seq, "sequence number")?,
            &r.id.0,
            &r.session.0,
            &r.namespace.as_bytes(),
            &r.external_id.map(str::as_bytes),
            &r.ts,
            &r.message.as_bytes(),
            &tags,
            &r.trigger,
            &r.metadata,
            &r.parent_id.map(|p| p.0),
            &r.parent_external_id.map(str::as_bytes),
            &r.state,
            &i64::from(crc32fast::hash(r.state.as_bytes())),
        ],
    )
    .await?;
    Ok(())
}

async fn put_checkpoint(x: &mut Ctx<'_>, new: NewCheckpoint) -> Result<(CheckpointSummary, Option<Compaction>)> {
    // Reads that decide what is written (an earlier checkpoint of the same
    // external id, a parent) come first, the session with them. Without
    // them the session is read in the round trip that writes (below).
    let read_first = new.external_id.is_some() || new.parent_id.is_some() || new.parent_external_id.is_some();
    // The session and an earlier checkpoint of the same external id are
    // asked for in one round trip (tokio-postgres pipelines the queries of
    // one connection that are awaited together). Both only read, so their
    // order does not matter; a missing session is still the error.
    let session = match &new.external_id {
        Some(external) => {
            let (session, earlier) = futures_util::try_join!(
                read::session(x.tx, new.session_id),
                read::by_external_id(x.tx, new.session_id, &new.namespace, external)
            )?;
            if let Some(stored) = earlier {
                return Ok((stored, None));
            }
            Some(session)
        }
        None if read_first => Some(read::session(x.tx, new.session_id).await?),
        None => None,
    };
    let parent = match (&new.parent_id, &new.parent_external_id) {
        (Some(parent), _) => {
            let rec = read::summary(x.tx, *parent).await?.ok_or_else(|| StorageError::checkpoint_not_found(*parent))?;
            if rec.session_id != new.session_id {
                return Err(StorageError::parent_in_other_session(*parent));
            }
            Some((rec.id, rec.external_id))
        }
        (None, Some(external)) => {
            let parent = read::by_external_id(x.tx, new.session_id, &new.namespace, external).await?;
            let parent =
                parent.ok_or_else(|| StorageError::parent_not_found(new.session_id, &new.namespace, external))?;
            Some((parent.id, parent.external_id))
        }
        (None, None) => None,
    };
    let (parent_id, parent_external_id) = parent.unzip();
    let parent_external_id = parent_external_id.flatten();
    x.c.global_seq += 1;
    x.c.checkpoints += 1;
    let seq = x.c.global_seq;
    let id = CheckpointId::new();
    let state = new.state.as_ref().map_or("null", StateJson::get);
    let metadata = new.metadata.as_ref().map_or("{}", |m| m.get());
    let event_seq = x.next_event();
    let kind = EventKind::CheckpointCreated { checkpoint_id: id, sequence_number: seq };
    let last_sequence = bound(seq);
    let session_id = new.session_id.0;
    let count_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&session_id, &last_sequence];
    let trigger = new.trigger.to_string();
    let xr = &*x;
    // Its row, its session's count and its event are sent together (one
    // round trip once their statements are prepared; they do not depend on
    // each other, so their order does not matter; a failure of any fails
    // the write, rolled back to its savepoint).
    let written = async {
        futures_util::try_join!(
            insert_checkpoint(
                xr,
                CheckpointRow {
                    seq,
                    id,
                    session: new.session_id,
                    namespace: &new.namespace,
                    external_id: new.external_id.as_deref(),
                    ts: xr.now,
                    message: &new.message,
                    tags: &new.tags,
                    trigger: trigger.clone(),
                    metadata,
                    parent_id,
                    parent_external_id: parent_external_id.as_deref(),
                    state,
                },
            ),
            xr.exec(
                "UPDATE sessions SET checkpoint_count = checkpoint_count + 1, last_sequence = $2 WHERE id = $1",
                &count_params,
            ),
            xr.insert_event(event_seq, new.session_id, &kind),
        )
        .map(|_| ())
    };
    let session = match session {
        Some(session) => {
            written.await?;
            session
        }
        None => {
            // The session is read in the same round trip as the writes, and
            // before them: its statement is prepared first (no round trip
            // once cached, as it nearly always is), so its query is queued
            // on the connection on the first poll of `join!`, before any of
            // the writes' (a statement still to be prepared would go out
            // after those already prepared). A missing session is found
            // missing, and the insert then fails (its foreign key); the
            // session's error is the answer and the savepoint takes back
            // whatever did run.
            let by_id = xr.tx.statement(&read::session_by_id_sql()).await.map_err(db_error)?;
            let session_id = new.session_id;
            let session = async {
                let row = xr.tx.c.query_opt(&by_id, &[&session_id.0]).await.map_err(db_error)?;
                read::session_of(&row.ok_or_else(|| StorageError::session_not_found(session_id))?)
            };
            let (session, written) = futures_util::join!(session, written);
            let session = session?;
            written?;
            session
        }
    };
    let compaction = match &session.retention {
        Some(policy) => apply_policy(x, new.session_id, policy, false, 1).await?,
        None => None,
    };
    // What a read of the new row returns, built from what was inserted
    // (`read::summary_of`): the trigger as parsed back from its stored
    // text, the time as stored (the transaction's, to the microsecond),
    // no annotations yet. The retention just applied never removes it (the
    // newest of its session, exempt).
    let stored = CheckpointSummary {
        sequence_number: seq,
        id,
        session_id: new.session_id,
        namespace: new.namespace,
        external_id: new.external_id,
        timestamp: from_nanos(x.now),
        message: new.message,
        tags: new.tags,
        trigger: trigger.parse::<Trigger>().map_err(StorageError::corrupt)?,
        parent_id,
        parent_external_id,
        has_notes: false,
    };
    Ok((stored, compaction))
}

async fn restore(x: &mut Ctx<'_>, session: SessionId, id: CheckpointId) -> Result<Checkpoint> {
    let cp = read::checkpoint(x.tx, id).await?;
    if cp.summary.session_id != session {
        return Err(StorageError::not_in_session(id, session));
    }
    let sequence_number = cp.summary.sequence_number;
    x.event(session, EventKind::CheckpointRestored { checkpoint_id: id, sequence_number }).await?;
    Ok(cp)
}

/// Removes checkpoints (by sequence) with their annotations and the
/// pending writes filed under their external ids.
async fn remove_checkpoints(x: &mut Ctx<'_>, seqs: &[i64]) -> Result<u64> {
    if seqs.is_empty() {
        return Ok(0);
    }
    x.exec(
        "DELETE FROM writes w USING checkpoints c WHERE c.seq = ANY ($1) AND c.external_id IS NOT NULL \
         AND w.session_id = c.session_id AND w.namespace = c.namespace AND w.external_id = c.external_id",
        &[&seqs],
    )
    .await?;
    let removed = x.exec("DELETE FROM checkpoints WHERE seq = ANY ($1)", &[&seqs]).await?;
    x.c.checkpoints = x.c.checkpoints.saturating_sub(removed);
    Ok(removed)
}

async fn delete_checkpoint(x: &mut Ctx<'_>, id: CheckpointId, session: Option<SessionId>) -> Result<SessionId> {
    let rec = read::summary(x.tx, id).await?.ok_or_else(|| StorageError::checkpoint_not_found(id))?;
    if session.is_some_and(|s| s != rec.session_id) {
        return Err(StorageError::not_in_this_session(id));
    }
    read::session(x.tx, rec.session_id).await?;
    remove_checkpoints(x, &[bound(rec.sequence_number)]).await?;
    recount(x, rec.session_id).await?;
    let sequence_number = rec.sequence_number;
    x.event(rec.session_id, EventKind::CheckpointDeleted { checkpoint_id: id, sequence_number }).await?;
    Ok(rec.session_id)
}

async fn annotate(x: &mut Ctx<'_>, id: CheckpointId, note: String, severity: Severity, max: u32) -> Result<Annotation> {
    if read::summary(x.tx, id).await?.is_none() {
        return Err(StorageError::checkpoint_not_found(id));
    }
    let row =
        x.tx.query_one("SELECT max(idx) FROM annotations WHERE checkpoint_id = $1", &[&id.0])
            .await
            .map_err(db_error)?;
    let next = match row.get::<_, Option<i32>>(0) {
        Some(last) => u32::try_from(last).unwrap_or_default().saturating_add(1),
        None => 0,
    };
    if next >= max {
        return Err(StorageError::annotations_full(id, max));
    }
    let index =
        i32::try_from(next).map_err(|_| StorageError::Full(format!("checkpoint {id}: too many annotations")))?;
    x.exec(
        "INSERT INTO annotations (checkpoint_id, idx, note, severity, ts) VALUES ($1, $2, $3, $4, $5)",
        &[&id.0, &index, &note.as_bytes(), &severity.as_str(), &x.now],
    )
    .await?;
    Ok(Annotation { note, severity, timestamp: crate::storage::records::from_nanos(x.now) })
}

async fn compact(
    x: &mut Ctx<'_>,
    session: SessionId,
    policy: &RetentionPolicy,
    per_namespace: bool,
) -> Result<Compaction> {
    let s = read::session(x.tx, session).await?;
    let applied = apply_policy(x, session, policy, per_namespace, 0).await?;
    let result = applied.unwrap_or(Compaction { removed: 0, remaining: s.checkpoint_count });
    if result.removed == 0 {
        x.event(session, EventKind::CheckpointsCompacted { removed: 0, remaining: result.remaining }).await?;
    }
    Ok(result)
}

/// Applies `policy` to a session (with `per_namespace`, ranked within each
/// namespace), the `skip` newest exempt (the checkpoint being added).
/// Which checkpoints go is [`RetentionPolicy::keeps`]' decision; the query
/// only passes over the `keep_recent` newest, which it keeps by definition.
/// Returns `None` when nothing was removed.
async fn apply_policy(
    x: &mut Ctx<'_>,
    session: SessionId,
    policy: &RetentionPolicy,
    per_namespace: bool,
    skip: u64,
) -> Result<Option<Compaction>> {
    let partition = if per_namespace { "PARTITION BY namespace" } else { "" };
    let surely_kept = bound(policy.keep_recent.unwrap_or(0).max(skip));
    let rows =
        x.tx.query(
            &format!(
                "SELECT seq, tags, rank FROM (SELECT seq, tags, \
                 row_number() OVER ({partition} ORDER BY seq DESC) - 1 AS rank \
                 FROM checkpoints WHERE session_id = $1) r WHERE rank >= $2 ORDER BY seq"
            ),
            &[&session.0, &surely_kept],
        )
        .await
        .map_err(db_error)?;
    let mut doomed = Vec::new();
    for row in &rows {
        let tags: Vec<Vec<u8>> = row.get(1);
        let tags: Vec<String> = tags.into_iter().map(|t| read::text(t, "tag")).collect::<Result<_>>()?;
        if !policy.keeps(num(row.get(2)), &tags) {
            doomed.push(row.get::<_, i64>(0));
        }
    }
    if doomed.is_empty() {
        return Ok(None);
    }
    let removed = remove_checkpoints(x, &doomed).await?;
    let s = recount(x, session).await?;
    let result = Compaction { removed, remaining: s.checkpoint_count };
    x.event(session, EventKind::CheckpointsCompacted { removed, remaining: result.remaining }).await?;
    Ok(Some(result))
}

// ----- pending writes -----------------------------------------------------------------

/// One pending write's row.
struct WriteRow<'a> {
    session: SessionId,
    namespace: &'a str,
    external_id: &'a str,
    task_id: &'a str,
    idx: i32,
    task_path: &'a str,
    channel: &'a str,
    value: &'a str,
}

impl<'a> WriteRow<'a> {
    fn of(w: &'a StoredWrite) -> Self {
        WriteRow {
            session: w.session_id,
            namespace: &w.namespace,
            external_id: &w.external_id,
            task_id: &w.task_id,
            idx: w.idx,
            task_path: &w.task_path,
            channel: &w.channel,
            value: w.value.get(),
        }
    }
}

/// Stores one pending write by [`write_replaces`]' rule; returns whether it
/// was stored.
async fn merge_write(x: &Ctx<'_>, w: &WriteRow<'_>) -> Result<bool> {
    let on_conflict = if write_replaces(w.idx) {
        "DO UPDATE SET task_path = EXCLUDED.task_path, channel = EXCLUDED.channel, value = EXCLUDED.value"
    } else {
        "DO NOTHING"
    };
    let n = x
        .exec(
            &format!(
                "INSERT INTO writes (session_id, namespace, external_id, task_id, idx, task_path, channel, value) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (session_id, namespace, external_id, task_id, idx) {on_conflict}"
            ),
            &[
                &w.session.0,
                &w.namespace.as_bytes(),
                &w.external_id.as_bytes(),
                &w.task_id.as_bytes(),
                &w.idx,
                &w.task_path.as_bytes(),
                &w.channel.as_bytes(),
                &w.value,
            ],
        )
        .await?;
    Ok(n > 0)
}

async fn put_writes(x: &mut Ctx<'_>, new: NewWrites) -> Result<u64> {
    read::session(x.tx, new.session_id).await?;
    let NewWrites { session_id, namespace, external_id, task_id, task_path, writes } = new;
    let mut stored = 0;
    for (idx, channel, value) in writes {
        let row = WriteRow {
            session: session_id,
            namespace: &namespace,
            external_id: &external_id,
            task_id: &task_id,
            idx,
            task_path: &task_path,
            channel: &channel,
            value: value.get(),
        };
        if merge_write(x, &row).await? {
            stored += 1;
        }
    }
    if stored > 0 {
        x.event(session_id, EventKind::WritesStored { namespace, external_id, task_id, stored }).await?;
    }
    Ok(stored)
}

// ----- copies and bulk removal ----------------------------------------------------------

async fn copy_session(
    x: &mut Ctx<'_>,
    source: SessionId,
    key: Option<String>,
    name: String,
    metadata: &RawValue,
) -> Result<(Session, u64)> {
    let src = read::session(x.tx, source).await?;
    if src.checkpoint_count > MAX_CHANGE_CHECKPOINTS as u64 {
        return Err(StorageError::copy_too_large(source, src.checkpoint_count));
    }
    let existing = match &key {
        Some(key) => read::session_by_key(x.tx, key).await?,
        None => None,
    };
    let copy_into_existing = existing.is_some();
    let target = match existing {
        Some(s) if s.id == source => {
            return Err(StorageError::copy_into_itself(source));
        }
        Some(s) => s,
        None => new_session(x, key, name, metadata).await?,
    };
    let mut copies: HashMap<CheckpointId, CheckpointId> = HashMap::new();
    let mut copied = 0;
    let sql = "SELECT c.id FROM checkpoints c WHERE c.session_id = $1 ORDER BY c.seq";
    let ids: Vec<CheckpointId> =
        x.tx.query(sql, &[&source.0]).await.map_err(db_error)?.iter().map(|r| CheckpointId(r.get(0))).collect();
    for id in ids {
        let cp = read::checkpoint(x.tx, id).await?;
        let rec = &cp.summary;
        if copy_into_existing
            && let Some(external) = &rec.external_id
            && let Some(there) = read::by_external_id(x.tx, target.id, &rec.namespace, external).await?
        {
            copies.insert(rec.id, there.id);
            continue;
        }
        x.c.global_seq += 1;
        x.c.checkpoints += 1;
        let copy_id = CheckpointId::new();
        let stored_ts = stored_time(rec.timestamp, "checkpoint")?;
        insert_checkpoint(
            x,
            CheckpointRow {
                seq: x.c.global_seq,
                id: copy_id,
                session: target.id,
                namespace: &rec.namespace,
                external_id: rec.external_id.as_deref(),
                ts: stored_ts,
                message: &rec.message,
                tags: &rec.tags,
                trigger: rec.trigger.to_string(),
                metadata: cp.metadata.get(),
                parent_id: rec.parent_id.and_then(|p| copies.get(&p).copied()),
                parent_external_id: rec.parent_external_id.as_deref(),
                state: cp.state.get(),
            },
        )
        .await?;
        for (index, a) in read::annotations_indexed(x.tx, rec.id).await? {
            x.exec(
                "INSERT INTO annotations (checkpoint_id, idx, note, severity, ts) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &copy_id.0,
                    &i32::try_from(index).unwrap_or(i32::MAX),
                    &a.note.as_bytes(),
                    &a.severity.as_str(),
                    &stored_time(a.timestamp, "annotation")?,
                ],
            )
            .await?;
        }
        copies.insert(rec.id, copy_id);
        copied += 1;
    }
    for w in read::session_writes(x.tx, source).await? {
        merge_write(x, &WriteRow { session: target.id, ..WriteRow::of(&w) }).await?;
    }
    let target = recount(x, target.id).await?;
    x.event(target.id, EventKind::SessionCopied { source_session_id: source, copied }).await?;
    Ok((target, copied))
}

async fn delete_checkpoints(
    x: &mut Ctx<'_>,
    session: Option<SessionId>,
    namespace: Option<&str>,
    filter: &MetadataFilter,
) -> Result<(u64, bool)> {
    if let Some(id) = session {
        read::session(x.tx, id).await?;
    }
    // In (session, sequence) order, as the sled store's keys are.
    let sql = "SELECT c.session_id, c.seq, c.id, c.metadata FROM checkpoints c \
               WHERE ($1::uuid IS NULL OR c.session_id = $1) AND ($2::bytea IS NULL OR c.namespace = $2) \
               AND (c.session_id, c.seq) > ($3, $4) ORDER BY c.session_id, c.seq LIMIT 256";
    let ns = namespace.map(str::as_bytes);
    let mut doomed: Vec<(SessionId, i64, CheckpointId)> = Vec::new();
    let mut more = false;
    let mut from = (uuid::Uuid::nil(), -1i64);
    'scan: loop {
        let rows = x.tx.query(sql, &[&session.map(|s| s.0), &ns, &from.0, &from.1]).await.map_err(db_error)?;
        for row in &rows {
            from = (row.get(0), row.get(1));
            let metadata: String = row.get(3);
            if !metadata_matches(filter, metadata.as_bytes()) {
                continue;
            }
            if doomed.len() == MAX_CHANGE_CHECKPOINTS {
                more = true;
                break 'scan;
            }
            doomed.push((SessionId(row.get(0)), row.get(1), CheckpointId(row.get(2))));
        }
        if rows.len() < 256 {
            break;
        }
    }
    let seqs: Vec<i64> = doomed.iter().map(|d| d.1).collect();
    remove_checkpoints(x, &seqs).await?;
    let mut sessions: BTreeMap<SessionId, ()> = BTreeMap::new();
    for (session, seq, id) in &doomed {
        sessions.insert(*session, ());
        x.event(*session, EventKind::CheckpointDeleted { checkpoint_id: *id, sequence_number: num(*seq) }).await?;
    }
    for id in sessions.keys() {
        recount(x, *id).await?;
    }
    Ok((doomed.len() as u64, more))
}

// ----- import ---------------------------------------------------------------------

async fn exists(x: &Ctx<'_>, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<bool> {
    Ok(x.tx.query_opt(sql, params).await.map_err(db_error)?.is_some())
}

/// Records written elsewhere, as they were, by the rules both stores share
/// ([`crate::storage::import::apply`]).
async fn import(x: &mut Ctx<'_>, batch: ImportBatch) -> Result<ImportCounts> {
    apply(&mut PgImport { x, touched: HashSet::new() }, batch).await
}

struct PgImport<'a, 't> {
    x: &'a mut Ctx<'t>,
    /// Sessions given checkpoints: recounted at the end.
    touched: HashSet<SessionId>,
}

impl ImportTarget for PgImport<'_, '_> {
    fn counters(&mut self) -> &mut Counters {
        &mut self.x.c
    }

    async fn session_exists(&mut self, id: SessionId) -> Result<bool> {
        exists(self.x, "SELECT 1 FROM sessions WHERE id = $1", &[&id.0]).await
    }

    async fn ordinal_in_use(&mut self, ordinal: u64) -> Result<bool> {
        exists(self.x, "SELECT 1 FROM sessions WHERE ordinal = $1", &[&bound(ordinal)]).await
    }

    async fn key_in_use(&mut self, key: &str) -> Result<bool> {
        Ok(read::session_by_key(self.x.tx, key).await?.is_some())
    }

    async fn checkpoint_session(&mut self, id: CheckpointId) -> Result<Option<SessionId>> {
        Ok(read::summary(self.x.tx, id).await?.map(|p| p.session_id))
    }

    async fn sequence_in_use(&mut self, seq: u64) -> Result<bool> {
        exists(self.x, "SELECT 1 FROM checkpoints WHERE seq = $1", &[&bound(seq)]).await
    }

    async fn external_in_use(&mut self, session: SessionId, namespace: &str, external: &str) -> Result<bool> {
        Ok(read::by_external_id(self.x.tx, session, namespace, external).await?.is_some())
    }

    async fn next_annotation_index(&mut self, id: CheckpointId) -> Result<u32> {
        let row = self
            .x
            .tx
            .query_one("SELECT max(idx) FROM annotations WHERE checkpoint_id = $1", &[&id.0])
            .await
            .map_err(db_error)?;
        Ok(row.get::<_, Option<i32>>(0).map_or(0, |i| u32::try_from(i).unwrap_or_default().saturating_add(1)))
    }

    async fn annotation_exists(&mut self, id: CheckpointId, index: u32) -> Result<bool> {
        let index = annotation_index(id, index)?;
        exists(self.x, "SELECT 1 FROM annotations WHERE checkpoint_id = $1 AND idx = $2", &[&id.0, &index]).await
    }

    async fn write_exists(&mut self, w: &StoredWrite) -> Result<bool> {
        exists(
            self.x,
            "SELECT 1 FROM writes WHERE session_id = $1 AND namespace = $2 AND external_id = $3 AND task_id = $4 \
             AND idx = $5",
            &[&w.session_id.0, &w.namespace.as_bytes(), &w.external_id.as_bytes(), &w.task_id.as_bytes(), &w.idx],
        )
        .await
    }

    fn storable(&self, value: u64, what: &str) -> Result<()> {
        storable(value, what).map(|_| ())
    }

    async fn add_session(&mut self, s: ImportSession, ordinal: u64) -> Result<()> {
        let retention = s.retention.filter(|p| !p.is_empty());
        insert_session(
            self.x,
            NewSession {
                id: s.id,
                ordinal,
                key: s.key.as_deref(),
                name: &s.name,
                created_at: stored_time(s.created_at, "session")?,
                metadata: s.metadata.get(),
                retention: retention.as_ref(),
            },
        )
        .await
    }

    async fn add_checkpoint(&mut self, cp: ImportCheckpoint) -> Result<()> {
        self.touched.insert(cp.session_id);
        insert_checkpoint(
            self.x,
            CheckpointRow {
                seq: cp.sequence_number,
                id: cp.id,
                session: cp.session_id,
                namespace: &cp.namespace,
                external_id: cp.external_id.as_deref(),
                ts: stored_time(cp.timestamp, "checkpoint")?,
                message: &cp.message,
                tags: &cp.tags,
                trigger: cp.trigger.to_string(),
                metadata: cp.metadata.get(),
                parent_id: cp.parent_id,
                parent_external_id: cp.parent_external_id.as_deref(),
                state: cp.state.get(),
            },
        )
        .await
    }

    async fn add_annotation(&mut self, id: CheckpointId, index: u32, annotation: Annotation) -> Result<()> {
        self.x
            .exec(
                "INSERT INTO annotations (checkpoint_id, idx, note, severity, ts) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &id.0,
                    &annotation_index(id, index)?,
                    &annotation.note.as_bytes(),
                    &annotation.severity.as_str(),
                    &stored_time(annotation.timestamp, "annotation")?,
                ],
            )
            .await
            .map(|_| ())
    }

    async fn add_write(&mut self, w: StoredWrite) -> Result<()> {
        merge_write(self.x, &WriteRow::of(&w)).await.map(|_| ())
    }

    async fn finish(&mut self) -> Result<()> {
        for id in &self.touched {
            recount(self.x, *id).await?;
        }
        Ok(())
    }
}

/// An annotation index as its column holds it.
fn annotation_index(id: CheckpointId, index: u32) -> Result<i32> {
    i32::try_from(index)
        .map_err(|_| StorageError::Refused(format!("checkpoint {id}: annotation index {index} is too large")))
}
