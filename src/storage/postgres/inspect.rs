//! Read-only access to a PostgreSQL store, for `checkpoint-dump
//! --database-url`: what the sled [`Inspector`](crate::storage::Inspector)
//! offers for a data directory, and `verify`'s checks of the schema's rows.
//!
//! The connection is read-only twice over: it is opened with
//! `default_transaction_read_only=on`, and everything is read in one
//! `REPEATABLE READ READ ONLY` transaction, so every command sees one
//! consistent snapshot while servers go on writing, and nothing can change
//! the database. The inspector is synchronous (a private runtime drives the
//! connection), like the sled one; large tables are read in pages.

use super::conn::db_error;
use super::read::{self, EVENT_COLS, SESSION, SUMMARY, num};
use super::schema::CURRENT_SCHEMA;
use crate::config::{MAX_TAG_BYTES, PG_CONNECT_TIMEOUT, PG_TIMEOUT};
use crate::model::{Annotation, Checkpoint, CheckpointId, CheckpointSummary, JournalEvent, Session, SessionId};
use crate::storage::error::{Result, StorageError};
use crate::storage::inspect::Summary;
use crate::storage::pending::StoredWrite;
use crate::storage::verify::Verification;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use tokio_postgres::{Client, NoTls};

/// Rows one query of a paged read returns.
const PAGE: i64 = 256;

/// A read-only snapshot of a PostgreSQL store.
pub struct PgInspector {
    // Field order is drop order: the client before the runtime driving it.
    client: Client,
    runtime: tokio::runtime::Runtime,
    described: String,
    schema_version: u32,
}

impl PgInspector {
    /// Connects read-only to `url` and opens the snapshot. Refuses a
    /// database without checkpointd's schema, or with a schema version this
    /// tool does not read.
    pub fn open(url: &str) -> Result<PgInspector> {
        let described = super::describe_url(url)?;
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StorageError::Refused(format!("invalid PostgreSQL URL: {e}")))?;
        let options = match config.get_options() {
            Some(given) => format!("{given} -c default_transaction_read_only=on"),
            None => "-c default_transaction_read_only=on".to_string(),
        };
        config.options(options);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StorageError::Internal(format!("cannot start a runtime: {e}")))?;
        let connect = async {
            let (client, connection) = config.connect(NoTls).await.map_err(db_error)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "PostgreSQL connection ended");
                }
            });
            Ok::<_, StorageError>(client)
        };
        let client = match runtime.block_on(async { tokio::time::timeout(PG_CONNECT_TIMEOUT, connect).await }) {
            Ok(client) => client?,
            Err(_) => {
                return Err(StorageError::Unavailable(format!(
                    "PostgreSQL did not answer within {} s (connecting)",
                    PG_CONNECT_TIMEOUT.as_secs()
                )));
            }
        };
        let mut ins = PgInspector { client, runtime, described, schema_version: 0 };
        ins.schema_version = ins.run("opening a snapshot", |c| async move {
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(db_error)?;
            let has: bool =
                c.query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[]).await.map_err(db_error)?.get(0);
            if !has {
                return Err(StorageError::Refused("the database holds no checkpointd schema".into()));
            }
            let version: Option<i32> =
                c.query_opt("SELECT version FROM schema_version", &[]).await.map_err(db_error)?.map(|r| r.get(0));
            version.and_then(|v| u32::try_from(v).ok()).ok_or_else(|| {
                StorageError::corrupt("the database's schema_version table is empty or invalid".to_string())
            })
        })?;
        if ins.schema_version != CURRENT_SCHEMA {
            let how = if ins.schema_version > CURRENT_SCHEMA {
                "newer than this tool reads: upgrade checkpoint-dump"
            } else {
                "older than this tool reads: checkpointd migrates it when it next opens it"
            };
            return Err(StorageError::Refused(format!(
                "the database has schema version {}, {how} (this tool reads version {CURRENT_SCHEMA})",
                ins.schema_version
            )));
        }
        Ok(ins)
    }

    /// The database, as `postgresql://USER@HOST/DB` (no password).
    pub fn described(&self) -> &str {
        &self.described
    }

    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    /// Runs `f` on the snapshot's connection, bounded in time.
    fn run<'a, T, F, Fut>(&'a self, what: &str, f: F) -> Result<T>
    where
        F: FnOnce(&'a Client) -> Fut,
        Fut: Future<Output = Result<T>> + 'a,
    {
        let work = f(&self.client);
        match self.runtime.block_on(async { tokio::time::timeout(PG_TIMEOUT, work).await }) {
            Ok(out) => out,
            Err(_) => Err(StorageError::Unavailable(format!(
                "PostgreSQL did not answer within {} s ({what})",
                PG_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Counts, sequences and size. `data_dir` is empty (see
    /// [`PgInspector::described`]); there are no state segments.
    pub fn summary(&self) -> Result<Summary> {
        let (row, counters) = self.run("the summary", |c| async move {
            let row = c
                .query_one(
                    "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM checkpoints), \
                     (SELECT count(*) FROM annotations), (SELECT count(*) FROM writes), \
                     (SELECT count(*) FROM events), (SELECT min(seq) FROM events), (SELECT max(seq) FROM events), \
                     pg_database_size(current_database())",
                    &[],
                )
                .await
                .map_err(db_error)?;
            Ok((row, read::counters(c).await?))
        })?;
        Ok(Summary {
            data_dir: Default::default(),
            format_version: Some(self.schema_version),
            read_format: Some(self.schema_version),
            sessions: num(row.get(0)),
            checkpoints: num(row.get(1)),
            annotations: num(row.get(2)),
            writes: num(row.get(3)),
            events: num(row.get(4)),
            oldest_event: row.get::<_, Option<i64>>(5).map(num),
            newest_event: row.get::<_, Option<i64>>(6).map(num),
            sequences: Some(counters.sequences()),
            bytes_on_disk: num(row.get(7)),
            state_live_bytes: 0,
            state_dead_bytes: 0,
        })
    }

    /// One page of sessions in creation order, after ordinal `after`.
    fn sessions_page(&self, after: i64) -> Result<Vec<(u64, Session)>> {
        self.run("reading sessions", |c| async move {
            let rows = c
                .query(&format!("{SESSION} WHERE ordinal > $1 ORDER BY ordinal LIMIT $2"), &[&after, &PAGE])
                .await
                .map_err(db_error)?;
            rows.iter().map(|r| Ok((num(r.get(8)), read::session_of(r)?))).collect()
        })
    }

    /// Every session in creation order, with its ordinal.
    pub fn sessions(&self) -> impl Iterator<Item = Result<(u64, Session)>> + '_ {
        pages(move |after: Option<u64>| self.sessions_page(read::bound(after.unwrap_or(0))), |(ordinal, _)| *ordinal)
    }

    pub fn session(&self, id: SessionId) -> Result<Session> {
        self.run("reading a session", |c| async move { read::session(c, id).await })
    }

    /// A session's checkpoints in sequence order.
    pub fn checkpoints(&self, session: SessionId) -> impl Iterator<Item = Result<CheckpointSummary>> + '_ {
        let fetch = move |after: Option<u64>| {
            let after = read::bound(after.unwrap_or(0));
            self.run("reading checkpoints", |c| async move {
                let sql = format!(
                    "SELECT {SUMMARY} FROM checkpoints c WHERE c.session_id = $1 AND c.seq > $2 ORDER BY c.seq LIMIT $3"
                );
                let rows = c.query(&sql, &[&session.0, &after, &PAGE]).await.map_err(db_error)?;
                rows.iter().map(read::summary_of).collect()
            })
        };
        pages(fetch, |s: &CheckpointSummary| s.sequence_number)
    }

    /// The full checkpoint (its state checked against its CRC).
    pub fn checkpoint(&self, id: CheckpointId) -> Result<Checkpoint> {
        self.run("reading a checkpoint", |c| async move { read::checkpoint(c, id).await })
    }

    /// A checkpoint's annotations with their indexes.
    pub fn annotations(&self, id: CheckpointId) -> Result<Vec<(u32, Annotation)>> {
        self.run("reading annotations", |c| async move { read::annotations_indexed(c, id).await })
    }

    /// A session's pending writes in key order.
    pub fn writes_of_session(&self, session: SessionId) -> Result<Vec<StoredWrite>> {
        self.run("reading pending writes", |c| async move { read::session_writes(c, session).await })
    }

    /// One page of journal rows after `after`: each decoded, or the
    /// sequence of one that does not decode.
    fn events_page(&self, after: i64) -> Result<Vec<std::result::Result<JournalEvent, u64>>> {
        self.run("reading the journal", |c| async move {
            let rows = c
                .query(
                    &format!("SELECT {EVENT_COLS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"),
                    &[&after, &PAGE],
                )
                .await
                .map_err(db_error)?;
            Ok(rows.iter().map(read::event_of).collect())
        })
    }

    /// Journal events with a sequence above `after`, in order.
    pub fn events_after(&self, after: u64) -> impl Iterator<Item = Result<JournalEvent>> + '_ {
        let seq_of = |row: &std::result::Result<JournalEvent, u64>| match row {
            Ok(e) => e.seq,
            Err(seq) => *seq,
        };
        pages(move |last: Option<u64>| self.events_page(read::bound(last.unwrap_or(after))), seq_of).map(|e| match e {
            Ok(Ok(event)) => Ok(event),
            Ok(Err(seq)) => Err(StorageError::corrupt(format!("journal event {seq} does not decode"))),
            Err(e) => Err(e),
        })
    }

    /// Checks every row: each checkpoint's state against its CRC and as
    /// JSON, its metadata, tags and parent; each session's counts against
    /// its checkpoints; rows that belong to nothing (checkpoints, pending
    /// writes of no session, annotations of no checkpoint); every journal
    /// event decodes and the journal has no hole; the counters against the
    /// data.
    pub fn verify(&self) -> Result<Verification> {
        let mut v = Verification::default();
        let found = self.verify_checkpoints(&mut v)?;
        let max_ordinal = self.verify_sessions(&mut v, &found)?;
        self.verify_dangling(&mut v)?;
        let last_event = self.verify_events(&mut v)?;
        let counters = self.run("reading the counters", |c| async move { read::counters(c).await })?;
        if counters.checkpoints != v.checkpoints {
            v.problem(format!("counters: {} checkpoints counted, {} stored", counters.checkpoints, v.checkpoints));
        }
        if counters.active_sessions != v.sessions {
            v.problem(format!("counters: {} active sessions counted, {} stored", counters.active_sessions, v.sessions));
        }
        if counters.sessions_created < max_ordinal || counters.sessions_created < counters.active_sessions {
            v.problem(format!(
                "counters: {} sessions created, but a session has ordinal {max_ordinal}",
                counters.sessions_created
            ));
        }
        if counters.global_seq < found.max_seq {
            v.problem(format!(
                "counters: global sequence {} is below stored sequence {}",
                counters.global_seq, found.max_seq
            ));
        }
        if counters.event_seq < last_event {
            v.problem(format!("counters: event sequence {} is below journal event {last_event}", counters.event_seq));
        }
        Ok(v)
    }

    fn verify_checkpoints(&self, v: &mut Verification) -> Result<Found> {
        let mut found = Found::default();
        let mut after = -1i64;
        for _ in 0..u64::MAX {
            let rows = self.run("verifying checkpoints", |c| async move {
                let sql = format!(
                    "SELECT {SUMMARY}, c.metadata, c.state, c.state_crc FROM checkpoints c \
                     WHERE c.seq > $1 ORDER BY c.seq LIMIT $2"
                );
                c.query(&sql, &[&after, &PAGE]).await.map_err(db_error)
            })?;
            for row in &rows {
                after = row.get(0);
                v.checkpoints += 1;
                let id = CheckpointId(row.get(1));
                let session = SessionId(row.get(2));
                let seq = num(after);
                found.max_seq = found.max_seq.max(seq);
                found.ids.insert(id, session);
                let entry = found.per_session.entry(session).or_default();
                entry.0 += 1;
                entry.1 = Some(entry.1.map_or(seq, |s: u64| s.max(seq)));
                match read::summary_of(row) {
                    Ok(s) => {
                        v.tags += s.tags.len() as u64;
                        for tag in &s.tags {
                            if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
                                v.problem(format!("checkpoint {id}: tag {tag:?} is empty or too long"));
                            }
                        }
                        if let Some(parent) = s.parent_id {
                            found.parents.push((id, parent, session));
                        }
                    }
                    Err(e) => v.problem(format!("checkpoint {id} (sequence {seq}): {e}")),
                }
                let metadata: String = row.get(12);
                if !serde_json::from_str::<serde_json::Value>(&metadata).is_ok_and(|m| m.is_object()) {
                    v.problem(format!("checkpoint {id}: metadata is not a JSON object"));
                }
                let state: String = row.get(13);
                if i64::from(crc32fast::hash(state.as_bytes())) != row.get::<_, i64>(14) {
                    v.problem(format!("checkpoint {id}: stored state failed its checksum"));
                } else if serde_json::from_str::<serde::de::IgnoredAny>(&state).is_err() {
                    v.problem(format!("checkpoint {id}: stored state is not JSON"));
                }
            }
            if (rows.len() as i64) < PAGE {
                break;
            }
        }
        for (child, parent, session) in &found.parents {
            if let Some(owner) = found.ids.get(parent).filter(|owner| *owner != session) {
                v.problem(format!("checkpoint {child}: parent {parent} belongs to another session ({owner})"));
            }
        }
        Ok(found)
    }

    /// Checks each session against its checkpoints, and its pending writes;
    /// returns the largest ordinal.
    fn verify_sessions(&self, v: &mut Verification, found: &Found) -> Result<u64> {
        let mut max_ordinal = 0;
        let mut seen = std::collections::HashSet::new();
        for session in self.sessions() {
            let (ordinal, s) = match session {
                Ok(s) => s,
                Err(e) => {
                    // A session that does not decode ends the paging; what
                    // the rows hold is checked by the counts below.
                    v.problem(format!("sessions: {e}"));
                    break;
                }
            };
            v.sessions += 1;
            max_ordinal = max_ordinal.max(ordinal);
            seen.insert(s.id);
            let (count, last) = found.per_session.get(&s.id).copied().unwrap_or_default();
            if s.checkpoint_count != count {
                v.problem(format!("session {}: record says {} checkpoints, {count} stored", s.id, s.checkpoint_count));
            }
            if s.last_sequence != last {
                v.problem(format!(
                    "session {}: record says last sequence {:?}, newest stored is {last:?}",
                    s.id, s.last_sequence
                ));
            }
            match self.writes_of_session(s.id) {
                Ok(writes) => v.writes += writes.len() as u64,
                Err(e) => v.problem(format!("session {}: pending writes: {e}", s.id)),
            }
        }
        for session in found.per_session.keys().filter(|s| !seen.contains(s)) {
            v.problem(format!("checkpoints of session {session}, which does not exist"));
        }
        Ok(max_ordinal)
    }

    /// Rows that belong to nothing: annotations of no checkpoint, pending
    /// writes of no session (the schema's foreign keys should make these
    /// impossible; a restore of part of the tables would not).
    fn verify_dangling(&self, v: &mut Verification) -> Result<()> {
        let (annotations, orphans, writes) = self.run("looking for rows that belong to nothing", |c| async move {
            let annotations: i64 = c.query_one("SELECT count(*) FROM annotations", &[]).await.map_err(db_error)?.get(0);
            let orphans = c
                .query(
                    "SELECT 'annotation ' || a.idx || ' of checkpoint ' || a.checkpoint_id || ', which does not exist' \
                     FROM annotations a WHERE NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.id = a.checkpoint_id) \
                     UNION ALL \
                     SELECT 'pending writes of session ' || w.session_id || ', which does not exist' \
                     FROM (SELECT DISTINCT session_id FROM writes) w \
                     WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = w.session_id) LIMIT 1000",
                    &[],
                )
                .await
                .map_err(db_error)?;
            let writes: i64 = c.query_one("SELECT count(*) FROM writes", &[]).await.map_err(db_error)?.get(0);
            Ok((num(annotations), orphans.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>(), num(writes)))
        })?;
        v.annotations = annotations;
        for orphan in orphans {
            v.problem(orphan);
        }
        if writes != v.writes {
            v.problem(format!("writes: {writes} stored, {} belong to a session", v.writes));
        }
        Ok(())
    }

    /// Every journal event decodes, and the journal has no hole (it is only
    /// ever trimmed from its oldest end). Returns the newest sequence.
    fn verify_events(&self, v: &mut Verification) -> Result<u64> {
        let mut last: Option<u64> = None;
        let mut after = -1i64;
        for _ in 0..u64::MAX {
            let page = self.events_page(after)?;
            for row in &page {
                v.events += 1;
                let seq = match row {
                    Ok(e) => e.seq,
                    Err(seq) => {
                        v.problem(format!("event {seq}: does not decode"));
                        *seq
                    }
                };
                if let Some(prev) = last.filter(|prev| seq != prev + 1) {
                    v.problem(format!("events {}..{} are missing from the journal", prev + 1, seq - 1));
                }
                last = Some(seq);
                after = read::bound(seq);
            }
            if (page.len() as i64) < PAGE {
                break;
            }
        }
        Ok(last.unwrap_or(0))
    }
}

/// What the checkpoint scan found, for the session and counter checks.
#[derive(Default)]
struct Found {
    ids: HashMap<CheckpointId, SessionId>,
    /// Per session: how many checkpoints, newest sequence.
    per_session: HashMap<SessionId, (u64, Option<u64>)>,
    parents: Vec<(CheckpointId, CheckpointId, SessionId)>,
    max_seq: u64,
}

/// The items of pages fetched one after another: `fetch` gets the cursor
/// of the last item handed out (`None` first) and returns the next page; a
/// short page is the last. An error is yielded once and ends the items.
fn pages<T, C: Copy>(
    mut fetch: impl FnMut(Option<C>) -> Result<Vec<T>>,
    cursor: impl Fn(&T) -> C,
) -> impl Iterator<Item = Result<T>> {
    let mut buffer: VecDeque<T> = VecDeque::new();
    let mut last: Option<C> = None;
    let mut done = false;
    std::iter::from_fn(move || {
        if buffer.is_empty() && !done {
            match fetch(last) {
                Ok(page) => {
                    done = (page.len() as i64) < PAGE;
                    buffer.extend(page);
                }
                Err(e) => {
                    done = true;
                    return Some(Err(e));
                }
            }
        }
        let item = buffer.pop_front()?;
        last = Some(cursor(&item));
        Some(Ok(item))
    })
}
