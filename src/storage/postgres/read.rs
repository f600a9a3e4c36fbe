//! Every read of the PostgreSQL schema, written once: the store's answers,
//! the write operations (inside their transaction) and the event feed use
//! these functions on any [`Db`] (a connection or transaction, or one with
//! its statements cached).

use super::conn::Db;
use super::conn::db_error;
use crate::config::MAX_REPORTED_INVALID;
use crate::model::{
    Annotation, Checkpoint, CheckpointId, CheckpointSummary, EventKind, JournalEvent, ListQuery, Page, PageFill,
    PendingWrite, RetentionPolicy, SearchQuery, Session, SessionId, Severity, Trigger, Validation, exclusive_range,
    metadata_matches,
};
use crate::storage::error::{Result, StorageError};
use crate::storage::pending::StoredWrite;
use crate::storage::records::{Counters, from_nanos, raw_json};
use tokio_postgres::Row;

/// Rows one query of a chunked scan reads.
const SCAN_CHUNK: i64 = 256;

/// A number as a query bound: PostgreSQL's `bigint` stops at `i64::MAX`,
/// and nothing stored is above it.
pub(crate) fn bound(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A number to store; refused above `i64::MAX` (see `schema`).
pub(crate) fn storable(n: u64, what: &str) -> Result<i64> {
    i64::try_from(n).map_err(|_| {
        StorageError::Refused(format!("{what} {n} is above {}, the largest a PostgreSQL store keeps", i64::MAX))
    })
}

/// A stored number (never negative when written by checkpointd).
pub(crate) fn num(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

pub(crate) fn text(bytes: Vec<u8>, what: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| StorageError::corrupt(format!("{what}: stored text is not UTF-8")))
}

fn opt_text(bytes: Option<Vec<u8>>, what: &str) -> Result<Option<String>> {
    bytes.map(|b| text(b, what)).transpose()
}

// ----- counters -------------------------------------------------------------------

pub(crate) const COUNTERS: &str =
    "SELECT global_seq, event_seq, sessions_created, active_sessions, checkpoints FROM counters WHERE id = 1";

pub(crate) fn counters_of(row: &Row) -> Counters {
    Counters {
        global_seq: num(row.get(0)),
        event_seq: num(row.get(1)),
        sessions_created: num(row.get(2)),
        active_sessions: num(row.get(3)),
        checkpoints: num(row.get(4)),
    }
}

pub(crate) async fn counters(c: &impl Db) -> Result<Counters> {
    let row = c.query_one(COUNTERS, &[]).await.map_err(db_error)?;
    Ok(counters_of(&row))
}

// ----- sessions -------------------------------------------------------------------

pub(crate) const SESSION: &str = "SELECT id, key, name, created_at, metadata, retention, checkpoint_count, last_sequence, ordinal \
                       FROM sessions";

pub(crate) fn session_of(row: &Row) -> Result<Session> {
    let retention: Option<String> = row.get(5);
    let retention = match retention {
        Some(json) => Some(
            serde_json::from_str::<RetentionPolicy>(&json)
                .map_err(|e| StorageError::corrupt(format!("session retention: {e}")))?,
        ),
        None => None,
    };
    Ok(Session {
        id: SessionId(row.get(0)),
        key: opt_text(row.get(1), "session key")?,
        name: text(row.get(2), "session name")?,
        created_at: from_nanos(row.get(3)),
        metadata: raw_json(row.get::<_, String>(4).into_bytes(), "session metadata")?,
        retention,
        checkpoint_count: num(row.get(6)),
        last_sequence: row.get::<_, Option<i64>>(7).map(num),
    })
}

/// The query of one session by id (`$1`).
pub(crate) fn session_by_id_sql() -> String {
    format!("{SESSION} WHERE id = $1")
}

pub(crate) async fn session(c: &impl Db, id: SessionId) -> Result<Session> {
    let row = c.query_opt(&session_by_id_sql(), &[&id.0]).await.map_err(db_error)?;
    session_of(&row.ok_or_else(|| StorageError::session_not_found(id))?)
}

/// The session and its creation ordinal.
pub(crate) async fn session_ordinal(c: &impl Db, id: SessionId) -> Result<(Session, u64)> {
    let row = c.query_opt(&format!("{SESSION} WHERE id = $1"), &[&id.0]).await.map_err(db_error)?;
    let row = row.ok_or_else(|| StorageError::session_not_found(id))?;
    Ok((session_of(&row)?, num(row.get(8))))
}

pub(crate) async fn session_by_key(c: &impl Db, key: &str) -> Result<Option<Session>> {
    let row = c.query_opt(&format!("{SESSION} WHERE key = $1"), &[&key.as_bytes()]).await.map_err(db_error)?;
    row.map(|r| session_of(&r)).transpose()
}

pub(crate) async fn list_sessions(
    c: &impl Db,
    after: Option<SessionId>,
    key_prefix: Option<&str>,
    limit: usize,
) -> Result<Vec<Session>> {
    let limit = bound(limit as u64);
    let rows = match key_prefix {
        Some(prefix) => {
            // In key (byte) order, after the key of `after`, which must
            // itself start with the prefix.
            let from: Option<Vec<u8>> = match after {
                Some(id) => match session(c, id).await?.key.filter(|k| k.starts_with(prefix)) {
                    Some(key) => Some(key.into_bytes()),
                    None => return Ok(Vec::new()),
                },
                None => None,
            };
            let p = prefix.as_bytes();
            c.query(
                &format!(
                    "{SESSION} WHERE key >= $2 AND substring(key FROM 1 FOR $1) = $2 \
                     AND ($3::bytea IS NULL OR key > $3) ORDER BY key LIMIT $4"
                ),
                &[&i32::try_from(p.len()).unwrap_or(i32::MAX), &p, &from, &limit],
            )
            .await
            .map_err(db_error)?
        }
        None => {
            let from = match after {
                Some(id) => session_ordinal(c, id).await?.1,
                None => 0,
            };
            c.query(&format!("{SESSION} WHERE ordinal > $1 ORDER BY ordinal LIMIT $2"), &[&bound(from), &limit])
                .await
                .map_err(db_error)?
        }
    };
    rows.iter().map(session_of).collect()
}

// ----- checkpoints ------------------------------------------------------------------

/// The columns of a summary (`has_notes` last); [`FULL`] adds metadata,
/// state and its CRC.
pub(crate) const SUMMARY: &str = "c.seq, c.id, c.session_id, c.namespace, c.external_id, c.ts, c.message, c.tags, c.trigger, \
                       c.parent_id, c.parent_external_id, \
                       EXISTS (SELECT 1 FROM annotations a WHERE a.checkpoint_id = c.id)";
const FULL_COLS: &str = "c.metadata, c.state, c.state_crc";

fn columns(full: bool) -> String {
    if full { format!("{SUMMARY}, {FULL_COLS}") } else { SUMMARY.to_string() }
}

/// The columns of a page's rows: the metadata (13th) is always selected,
/// for the filter.
fn page_columns(full: bool) -> String {
    if full { columns(true) } else { format!("{SUMMARY}, c.metadata") }
}

pub(crate) fn summary_of(row: &Row) -> Result<CheckpointSummary> {
    let tags: Vec<Vec<u8>> = row.get(7);
    let trigger: String = row.get(8);
    Ok(CheckpointSummary {
        sequence_number: num(row.get(0)),
        id: CheckpointId(row.get(1)),
        session_id: SessionId(row.get(2)),
        namespace: text(row.get(3), "namespace")?,
        external_id: opt_text(row.get(4), "external id")?,
        timestamp: from_nanos(row.get(5)),
        message: text(row.get(6), "message")?,
        tags: tags.into_iter().map(|t| text(t, "tag")).collect::<Result<_>>()?,
        trigger: trigger.parse::<Trigger>().map_err(StorageError::corrupt)?,
        parent_id: row.get::<_, Option<uuid::Uuid>>(9).map(CheckpointId),
        parent_external_id: opt_text(row.get(10), "parent external id")?,
        has_notes: row.get(11),
    })
}

/// The state of a full row, checked against its CRC.
fn state_of(row: &Row, id: CheckpointId) -> Result<String> {
    let state: String = row.get(13);
    let crc: i64 = row.get(14);
    if i64::from(crc32fast::hash(state.as_bytes())) != crc {
        return Err(StorageError::corrupt(format!("checkpoint {id}: stored state failed its checksum")));
    }
    Ok(state)
}

/// A full record from a row selected with `columns(true)`.
pub(crate) async fn full_of(c: &impl Db, row: &Row) -> Result<Checkpoint> {
    let mut summary = summary_of(row)?;
    let state = state_of(row, summary.id)?;
    let metadata: String = row.get(12);
    let crc: i64 = row.get(14);
    let annotations = annotations(c, summary.id).await?;
    summary.has_notes = !annotations.is_empty();
    let writes = match &summary.external_id {
        Some(external) => checkpoint_writes(c, summary.session_id, &summary.namespace, external)
            .await?
            .into_iter()
            .map(PendingWrite::from)
            .collect(),
        None => Vec::new(),
    };
    Ok(Checkpoint {
        summary,
        state: raw_json(state.into_bytes(), "state")?,
        metadata: raw_json(metadata.into_bytes(), "checkpoint metadata")?,
        annotations,
        // The CRC of the state as stored: what `validate` checks.
        checksum: u32::try_from(crc).unwrap_or_default(),
        writes,
    })
}

pub(crate) async fn checkpoint(c: &impl Db, id: CheckpointId) -> Result<Checkpoint> {
    let sql = format!("SELECT {} FROM checkpoints c WHERE c.id = $1", columns(true));
    let row = c.query_opt(&sql, &[&id.0]).await.map_err(db_error)?;
    full_of(c, &row.ok_or_else(|| StorageError::checkpoint_not_found(id))?).await
}

/// A checkpoint's summary, if stored.
pub(crate) async fn summary(c: &impl Db, id: CheckpointId) -> Result<Option<CheckpointSummary>> {
    let sql = format!("SELECT {SUMMARY} FROM checkpoints c WHERE c.id = $1");
    c.query_opt(&sql, &[&id.0]).await.map_err(db_error)?.map(|r| summary_of(&r)).transpose()
}

pub(crate) async fn by_external_id(
    c: &impl Db,
    session: SessionId,
    namespace: &str,
    external: &str,
) -> Result<Option<CheckpointSummary>> {
    let sql = format!(
        "SELECT {SUMMARY} FROM checkpoints c WHERE c.session_id = $1 AND c.namespace = $2 AND c.external_id = $3"
    );
    let row = c.query_opt(&sql, &[&session.0, &namespace.as_bytes(), &external.as_bytes()]).await.map_err(db_error)?;
    row.map(|r| summary_of(&r)).transpose()
}

/// The checkpoint with the client's id `external` in (session, namespace),
/// or with `None` the newest there.
pub(crate) async fn checkpoint_in(
    c: &impl Db,
    session: SessionId,
    namespace: &str,
    external: Option<&str>,
) -> Result<Checkpoint> {
    let found = match external {
        Some(external) => by_external_id(c, session, namespace, external).await?,
        None => {
            self::session(c, session).await?;
            let sql = format!(
                "SELECT {SUMMARY} FROM checkpoints c WHERE c.session_id = $1 AND c.namespace = $2 \
                 ORDER BY c.seq DESC LIMIT 1"
            );
            let row = c.query_opt(&sql, &[&session.0, &namespace.as_bytes()]).await.map_err(db_error)?;
            row.map(|r| summary_of(&r)).transpose()?
        }
    };
    match found {
        Some(summary) => checkpoint(c, summary.id).await,
        None => Err(StorageError::none_in_namespace(session, namespace, external)),
    }
}

async fn external_bound(c: &impl Db, session: SessionId, namespace: &str, external: &str) -> Result<u64> {
    let found = by_external_id(c, session, namespace, external).await?;
    found.map(|s| s.sequence_number).ok_or_else(|| StorageError::bound_not_found(namespace, external))
}

/// One page of a session's checkpoints, filled as the sled store fills it
/// ([`PageFill`]); a metadata filter is applied to the rows as read, in
/// chunks, so a page costs the rows it passes over.
pub(crate) async fn list_page(c: &impl Db, session: SessionId, q: &ListQuery, max: usize) -> Result<Page> {
    self::session(c, session).await?;
    let limit = q.limit.unwrap_or(max).min(max);
    let namespace = q.namespace.as_deref().unwrap_or("");
    let after = match &q.after_external {
        Some(external) => Some(external_bound(c, session, namespace, external).await?),
        None => q.after,
    };
    let before = match &q.before_external {
        Some(external) => Some(external_bound(c, session, namespace, external).await?),
        None => q.before,
    };
    let mut page = PageFill::new(q.full, limit);
    let Some((low, high)) = exclusive_range(after, before) else { return Ok(page.done()) };
    if limit == 0 {
        return Ok(page.done());
    }
    let (mut low, mut high) = (bound(low), bound(high));
    let order = if q.newest_first { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT {} FROM checkpoints c WHERE c.session_id = $1 AND c.seq BETWEEN $2 AND $3 \
         AND ($4::bytea IS NULL OR c.namespace = $4) AND ($5::bytea IS NULL OR $5 = ANY (c.tags)) \
         ORDER BY c.seq {order} LIMIT $6",
        page_columns(q.full)
    );
    let ns = q.namespace.as_ref().map(|n| n.as_bytes().to_vec());
    let tag = q.tag.as_ref().map(|t| t.as_bytes().to_vec());
    loop {
        let want = if q.metadata.is_some() { SCAN_CHUNK } else { bound(page.room() as u64).clamp(1, SCAN_CHUNK) };
        let rows = c.query(&sql, &[&session.0, &low, &high, &ns, &tag, &want]).await.map_err(db_error)?;
        let n = rows.len();
        for row in &rows {
            let seq: i64 = row.get(0);
            if q.newest_first {
                high = seq - 1;
            } else {
                low = seq + 1;
            }
            if page.is_full() {
                break;
            }
            push_row(c, &mut page, row, q.metadata.as_ref()).await?;
        }
        if page.is_full() || (n as i64) < want || low > high {
            return Ok(page.done());
        }
    }
}

/// Adds a row selected with `columns(page.wants_records())` unless the
/// metadata filter refuses it.
async fn push_row(
    c: &impl Db,
    page: &mut PageFill,
    row: &Row,
    filter: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<()> {
    if let Some(filter) = filter {
        let metadata: String = row.get(12);
        if !metadata_matches(filter, metadata.as_bytes()) {
            return Ok(());
        }
    }
    if page.wants_records() {
        page.push_record(full_of(c, row).await?);
    } else {
        page.push_summary(summary_of(row)?);
    }
    Ok(())
}

/// Checkpoints of every session, newest first, below `q.before`.
pub(crate) async fn search(c: &impl Db, q: &SearchQuery, max: usize) -> Result<Page> {
    let limit = q.limit.unwrap_or(max).min(max);
    let mut page = PageFill::new(q.full, limit);
    let Some(high) = q.before.map_or(Some(u64::MAX), |b| b.checked_sub(1)) else { return Ok(page.done()) };
    if limit == 0 {
        return Ok(page.done());
    }
    let mut high = bound(high);
    let sql = format!(
        "SELECT {} FROM checkpoints c WHERE c.seq <= $1 AND ($2::bytea IS NULL OR c.namespace = $2) \
         ORDER BY c.seq DESC LIMIT $3",
        page_columns(q.full)
    );
    let ns = q.namespace.as_ref().map(|n| n.as_bytes().to_vec());
    loop {
        let want = if q.metadata.is_some() { SCAN_CHUNK } else { bound(page.room() as u64).clamp(1, SCAN_CHUNK) };
        let rows = c.query(&sql, &[&high, &ns, &want]).await.map_err(db_error)?;
        for row in &rows {
            high = row.get::<_, i64>(0) - 1;
            if page.is_full() {
                break;
            }
            push_row(c, &mut page, row, q.metadata.as_ref()).await?;
        }
        if page.is_full() || (rows.len() as i64) < want || high < 0 {
            return Ok(page.done());
        }
    }
}

pub(crate) async fn list_by_sequence(c: &impl Db, after: u64, limit: usize) -> Result<Vec<CheckpointSummary>> {
    let sql = format!("SELECT {SUMMARY} FROM checkpoints c WHERE c.seq > $1 ORDER BY c.seq LIMIT $2");
    let rows = c.query(&sql, &[&bound(after), &bound(limit as u64)]).await.map_err(db_error)?;
    rows.iter().map(summary_of).collect()
}

/// Checks every stored state against its CRC, in chunks.
pub(crate) async fn validate(c: &impl Db, session: Option<SessionId>) -> Result<Validation> {
    if let Some(s) = session {
        self::session(c, s).await?;
    }
    let mut v = Validation::default();
    let mut after = -1i64;
    let session_id = session.map(|s| s.0);
    loop {
        // Each chunk bounded: the whole may take long on a large store.
        let chunk = async {
            c.query(
                "SELECT seq, id, state, state_crc FROM checkpoints \
                 WHERE seq > $1 AND ($2::uuid IS NULL OR session_id = $2) ORDER BY seq LIMIT $3",
                &[&after, &session_id, &SCAN_CHUNK],
            )
            .await
            .map_err(db_error)
        };
        let rows = super::conn::bounded("validating", chunk).await?;
        for row in &rows {
            after = row.get(0);
            let state: String = row.get(2);
            if i64::from(crc32fast::hash(state.as_bytes())) == row.get::<_, i64>(3) {
                v.valid += 1;
            } else {
                v.invalid += 1;
                if v.invalid_ids.len() < MAX_REPORTED_INVALID {
                    v.invalid_ids.push(CheckpointId(row.get(1)));
                }
            }
        }
        if (rows.len() as i64) < SCAN_CHUNK {
            return Ok(v);
        }
    }
}

// ----- annotations and writes -------------------------------------------------------

pub(crate) async fn annotations(c: &impl Db, id: CheckpointId) -> Result<Vec<Annotation>> {
    Ok(annotations_indexed(c, id).await?.into_iter().map(|(_, a)| a).collect())
}

pub(crate) async fn annotations_indexed(c: &impl Db, id: CheckpointId) -> Result<Vec<(u32, Annotation)>> {
    let rows = c
        .query("SELECT idx, note, severity, ts FROM annotations WHERE checkpoint_id = $1 ORDER BY idx", &[&id.0])
        .await
        .map_err(db_error)?;
    rows.iter()
        .map(|r| {
            let severity: String = r.get(2);
            Ok((
                u32::try_from(r.get::<_, i32>(0)).unwrap_or_default(),
                Annotation {
                    note: text(r.get(1), "annotation note")?,
                    severity: severity.parse::<Severity>().map_err(StorageError::corrupt)?,
                    timestamp: from_nanos(r.get(3)),
                },
            ))
        })
        .collect()
}

fn write_of(r: &Row) -> Result<StoredWrite> {
    Ok(StoredWrite {
        session_id: SessionId(r.get(0)),
        namespace: text(r.get(1), "write namespace")?,
        external_id: text(r.get(2), "write external id")?,
        task_id: text(r.get(3), "task id")?,
        idx: r.get(4),
        task_path: text(r.get(5), "task path")?,
        channel: text(r.get(6), "channel")?,
        value: raw_json(r.get::<_, String>(7).into_bytes(), "pending write value")?,
    })
}

const WRITE_COLS: &str = "session_id, namespace, external_id, task_id, idx, task_path, channel, value";

/// A checkpoint's pending writes, ordered by (task path, task id, idx).
pub(crate) async fn checkpoint_writes(
    c: &impl Db,
    session: SessionId,
    namespace: &str,
    external: &str,
) -> Result<Vec<StoredWrite>> {
    let rows = c
        .query(
            &format!(
                "SELECT {WRITE_COLS} FROM writes WHERE session_id = $1 AND namespace = $2 AND external_id = $3 \
                 ORDER BY task_path, task_id, idx"
            ),
            &[&session.0, &namespace.as_bytes(), &external.as_bytes()],
        )
        .await
        .map_err(db_error)?;
    rows.iter().map(write_of).collect()
}

/// Every pending write of a session, in key order (namespace, external id,
/// task id, idx).
pub(crate) async fn session_writes(c: &impl Db, session: SessionId) -> Result<Vec<StoredWrite>> {
    let rows = c
        .query(
            &format!(
                "SELECT {WRITE_COLS} FROM writes WHERE session_id = $1 ORDER BY namespace, external_id, task_id, idx"
            ),
            &[&session.0],
        )
        .await
        .map_err(db_error)?;
    rows.iter().map(write_of).collect()
}

// ----- the journal ------------------------------------------------------------------

pub(crate) const EVENT_COLS: &str = "seq, session_id, ts, kind";

/// A journal row; an undecodable kind is `Err` with its sequence.
pub(crate) fn event_of(row: &Row) -> std::result::Result<JournalEvent, u64> {
    let seq = num(row.get(0));
    let kind: String = row.get(3);
    match serde_json::from_str::<EventKind>(&kind) {
        Ok(kind) => {
            Ok(JournalEvent { seq, session_id: SessionId(row.get(1)), timestamp: from_nanos(row.get(2)), kind })
        }
        Err(e) => {
            tracing::error!(seq, error = %e, "undecodable journal event");
            Err(seq)
        }
    }
}

pub(crate) async fn events(
    c: &impl Db,
    after: u64,
    through: u64,
    session: Option<SessionId>,
    limit: usize,
) -> Result<Vec<JournalEvent>> {
    let rows = c
        .query(
            &format!(
                "SELECT {EVENT_COLS} FROM events WHERE seq > $1 AND seq <= $2 \
                 AND ($3::uuid IS NULL OR session_id = $3) ORDER BY seq LIMIT $4"
            ),
            &[&bound(after), &bound(through), &session.map(|s| s.0), &bound(limit as u64)],
        )
        .await
        .map_err(db_error)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        match event_of(row) {
            Ok(event) => out.push(event),
            Err(seq) => return Err(StorageError::corrupt(format!("journal event {seq} does not decode"))),
        }
    }
    Ok(out)
}

pub(crate) async fn oldest_event(c: &impl Db) -> Result<Option<u64>> {
    let row = c.query_one("SELECT min(seq) FROM events", &[]).await.map_err(db_error)?;
    Ok(row.get::<_, Option<i64>>(0).map(num))
}
