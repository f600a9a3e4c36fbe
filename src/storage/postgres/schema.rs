//! The PostgreSQL schema and its versions, like the sled format's: a new
//! database is given the whole schema at first start, an older one is
//! migrated step by step, a newer one is refused with both versions named.
//! Each step is kept as it was written, so the oldest schema can always be
//! made again ([`step_sql`]) and a test can migrate from it.
//!
//! Sequence numbers, ordinals and counts are `bigint`: a PostgreSQL store
//! keeps numbers up to `i64::MAX` (an import beyond it is refused). Client
//! strings (names, keys, namespaces, ids, tags, notes, messages) are
//! `bytea`: a JSON string may hold U+0000, which `text` cannot, and byte
//! order is the order the sled store lists keys in. JSON (states,
//! metadata, write values, events) is `text`, kept exactly as sent.

use crate::storage::error::{Result, StorageError};
use crate::storage::postgres::conn::db_error;
use tokio_postgres::Client;

/// The schema this binary reads and writes.
pub const CURRENT_SCHEMA: u32 = 1;

/// Key of the advisory lock that serialises schema changes: servers
/// starting together do not both create or migrate it.
const SCHEMA_LOCK: i64 = 0x636b_7074_6473_6368;

/// Schema version 1, as first written.
const STEP_1: &str = r#"
CREATE TABLE schema_version (
    version integer NOT NULL
);
INSERT INTO schema_version VALUES (1);

-- One row. Every write transaction locks it first (SELECT ... FOR UPDATE)
-- and updates it before COMMIT: numbers are consecutive, follow commit
-- order and are never reused, however many servers write.
CREATE TABLE counters (
    id smallint PRIMARY KEY CHECK (id = 1),
    global_seq bigint NOT NULL,
    event_seq bigint NOT NULL,
    sessions_created bigint NOT NULL,
    active_sessions bigint NOT NULL,
    checkpoints bigint NOT NULL
);
INSERT INTO counters VALUES (1, 0, 0, 0, 0, 0);

CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    ordinal bigint NOT NULL UNIQUE,
    key bytea UNIQUE,
    name bytea NOT NULL,
    created_at bigint NOT NULL,          -- nanoseconds since the epoch
    metadata text NOT NULL,
    retention text,                      -- a RetentionPolicy as JSON
    checkpoint_count bigint NOT NULL,
    last_sequence bigint
);

CREATE TABLE checkpoints (
    seq bigint PRIMARY KEY,
    id uuid NOT NULL UNIQUE,
    session_id uuid NOT NULL REFERENCES sessions (id),
    namespace bytea NOT NULL,
    external_id bytea,
    ts bigint NOT NULL,
    message bytea NOT NULL,
    tags bytea[] NOT NULL,
    trigger text NOT NULL,
    metadata text NOT NULL,
    parent_id uuid,
    parent_external_id bytea,
    state text NOT NULL,
    state_crc bigint NOT NULL,           -- CRC-32 of the state's bytes
    UNIQUE (session_id, namespace, external_id)
);
CREATE INDEX checkpoints_by_session ON checkpoints (session_id, seq);
CREATE INDEX checkpoints_by_namespace ON checkpoints (session_id, namespace, seq);

CREATE TABLE annotations (
    checkpoint_id uuid NOT NULL REFERENCES checkpoints (id) ON DELETE CASCADE,
    idx integer NOT NULL,
    note bytea NOT NULL,
    severity text NOT NULL,
    ts bigint NOT NULL,
    PRIMARY KEY (checkpoint_id, idx)
);

CREATE TABLE writes (
    session_id uuid NOT NULL REFERENCES sessions (id),
    namespace bytea NOT NULL,
    external_id bytea NOT NULL,
    task_id bytea NOT NULL,
    idx integer NOT NULL,
    task_path bytea NOT NULL,
    channel bytea NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (session_id, namespace, external_id, task_id, idx)
);

-- The journal: appended in the write transactions, trimmed to the
-- configured retention by them.
CREATE TABLE events (
    seq bigint PRIMARY KEY,
    session_id uuid NOT NULL,
    ts bigint NOT NULL,
    kind text NOT NULL                   -- an EventKind as JSON
);
"#;

/// Each version's step: the SQL that brings the previous version to it.
const STEPS: &[(u32, &str)] = &[(1, STEP_1)];

/// The SQL of the step that makes schema `version` (version 1: the whole
/// oldest schema), as first written; `None` for a version this binary does
/// not know.
pub fn step_sql(version: u32) -> Option<&'static str> {
    STEPS.iter().find(|(v, _)| *v == version).map(|(_, sql)| *sql)
}

/// Makes the database ready for this binary: creates the schema in an
/// empty one, migrates an older one, refuses a newer one or one holding
/// other tables of ours without a version. Returns the version found
/// (`None`: the schema was created).
pub(crate) async fn prepare(client: &mut Client) -> Result<Option<u32>> {
    let tx = client.transaction().await.map_err(db_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).await.map_err(db_error)?;
    let has_version: bool =
        tx.query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[]).await.map_err(db_error)?.get(0);
    if !has_version {
        let ours: i64 = tx
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() \
                 AND tablename IN ('counters', 'sessions', 'checkpoints', 'annotations', 'writes', 'events')",
                &[],
            )
            .await
            .map_err(db_error)?
            .get(0);
        if ours > 0 {
            return Err(StorageError::Refused(
                "the database holds checkpointd tables but no schema_version; refusing to guess".into(),
            ));
        }
        tx.batch_execute(STEP_1).await.map_err(db_error)?;
        migrate_from(&tx, 1).await?;
        tx.commit().await.map_err(db_error)?;
        return Ok(None);
    }
    let version: i32 = match tx.query_opt("SELECT version FROM schema_version", &[]).await.map_err(db_error)? {
        Some(row) => row.get(0),
        None => return Err(StorageError::Refused("the database's schema_version table is empty".into())),
    };
    let version = u32::try_from(version)
        .map_err(|_| StorageError::Refused(format!("the database has schema version {version}, which is invalid")))?;
    if version > CURRENT_SCHEMA {
        return Err(StorageError::Refused(format!(
            "the database has schema version {version}, newer than this checkpointd reads ({CURRENT_SCHEMA}); \
             upgrade checkpointd"
        )));
    }
    migrate_from(&tx, version).await?;
    tx.commit().await.map_err(db_error)?;
    Ok(Some(version))
}

/// Runs every step after `version`, in the caller's transaction.
async fn migrate_from(tx: &tokio_postgres::Transaction<'_>, version: u32) -> Result<()> {
    for (to, sql) in STEPS.iter().filter(|(v, _)| *v > version) {
        tx.batch_execute(sql).await.map_err(db_error)?;
        let to = i32::try_from(*to).map_err(|_| StorageError::Internal("schema version out of range".into()))?;
        tx.execute("UPDATE schema_version SET version = $1", &[&to]).await.map_err(db_error)?;
        tracing::info!(from = version, to, "migrated the PostgreSQL schema");
    }
    Ok(())
}
