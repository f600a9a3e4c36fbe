//! The PostgreSQL store: the [`Backend`] on a PostgreSQL database, which
//! any number of checkpointd servers may share.
//!
//! **Durability.** `sync`: a write is acknowledged only after its
//! transaction's COMMIT returned with `synchronous_commit = on`, so it is
//! in PostgreSQL's flushed WAL (and, with synchronous replication, on the
//! standby). `async`: commits run with `synchronous_commit = off`, so an
//! acknowledged write may be lost if PostgreSQL crashes within about three
//! times its `wal_writer_delay` (600 ms by default); a checkpointd crash
//! loses nothing acknowledged.
//!
//! - `schema`: the tables, their versions and migrations.
//! - `writer`: group commit; one transaction per batch, a savepoint per
//!   write, the counters row locked first (numbers consecutive, in commit
//!   order, never reused, across servers).
//! - `ops`: the write operations in SQL; `read`: every read.
//! - `events`: the journal's live feed (LISTEN/NOTIFY wakes, the `events`
//!   table is the truth, a periodic read covers lost notifications).
//! - `conn`: connections, timeouts, error mapping.
//!
//! **Failure.** A database that is unreachable, restarting or too slow
//! makes requests fail with `Unavailable` (wire `unavailable`) within
//! [`PG_TIMEOUT`](crate::config::PG_TIMEOUT); broken connections are
//! replaced at the next request. Unlike the sled store, which fails closed
//! after a failed flush until it is reopened, this store goes on serving
//! once the database answers again: a failed transaction applied nothing.
//! A transaction whose COMMIT was sent but not answered may have been
//! applied; it is not acknowledged (the client sees `unavailable`).

mod conn;
mod events;
pub mod inspect;
mod ops;
mod read;
pub mod schema;
mod url;
mod writer;

pub use inspect::PgInspector;
pub use url::describe_url;

use crate::config::{Durability, PG_WRITE_QUEUE, StoreConfig};
use crate::model::{
    Annotation, Checkpoint, CheckpointId, CheckpointSummary, Compaction, JournalEvent, ListQuery, MetadataFilter,
    Metrics, NewCheckpoint, NewWrites, Page, RetentionPolicy, SearchQuery, Session, SessionId, Severity, Validation,
};
use crate::storage::backend::{Backend, DurableMark, EventFeed, WritePause};
use crate::storage::error::{Result, StorageError};
use crate::storage::import::{ImportBatch, ImportCounts};
use conn::{Cached, Db, Pool, StmtCache, bounded, db_error};
use events::Journal;
use ops::{Done, Write};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};

/// The checkpoint store on PostgreSQL. Cheap to share behind an `Arc`.
///
/// It runs its connections and tasks (group commit, journal reader,
/// listener) on a small runtime of its own, so that, like the sled store,
/// it serves callers on any runtime and outlives the one it was opened on.
pub struct PgStore {
    pool: Arc<Pool>,
    queue: mpsc::Sender<writer::Job>,
    journal: Arc<Journal>,
    /// Told of every committed batch (metrics).
    observer: Arc<writer::Observer>,
    durability: Durability,
    closed: AtomicBool,
    /// Shut down (in the background) when the store is dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

/// What `open` builds on the store's runtime.
struct Opened {
    pool: Arc<Pool>,
    queue: mpsc::Sender<writer::Job>,
    journal: Arc<Journal>,
    observer: Arc<writer::Observer>,
}

/// Threads of a store's own runtime.
const RUNTIME_THREADS: usize = 2;

impl PgStore {
    /// Connects to `url` (e.g. `postgresql://user@host/db` or
    /// `postgresql:///db?host=/run/postgresql`), creates the schema on
    /// first start or migrates an older one, and starts the event listener.
    /// Uses `config.durability` and `config.event_retention`; ignores the
    /// sled-only fields.
    pub async fn open(url: &str, config: &StoreConfig) -> Result<PgStore> {
        let (sent, opened) = oneshot::channel();
        let runtime = PgStore::start(url, config, move |out| {
            let _ = sent.send(out);
        })?;
        let opened = opened.await.unwrap_or_else(|_| Err(StorageError::Internal("the store's runtime ended".into())));
        PgStore::finish(runtime, opened, config)
    }

    /// [`PgStore::open`] for a caller that is not async (it blocks the
    /// calling thread, which may be a runtime's: the store's work runs on
    /// its own runtime).
    pub fn open_blocking(url: &str, config: &StoreConfig) -> Result<PgStore> {
        let (sent, opened) = std::sync::mpsc::channel();
        let runtime = PgStore::start(url, config, move |out| {
            let _ = sent.send(out);
        })?;
        let opened = opened.recv().unwrap_or_else(|_| Err(StorageError::Internal("the store's runtime ended".into())));
        PgStore::finish(runtime, opened, config)
    }

    /// Starts the store's runtime and opens the store on it; `deliver`
    /// gets the outcome.
    fn start(
        url: &str,
        config: &StoreConfig,
        deliver: impl FnOnce(Result<Opened>) + Send + 'static,
    ) -> Result<tokio::runtime::Runtime> {
        let pg: tokio_postgres::Config =
            url.parse().map_err(|e| StorageError::Refused(format!("invalid PostgreSQL URL: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("checkpointd-pg")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Internal(format!("cannot start the PostgreSQL store's runtime: {e}")))?;
        let (durability, retention, handle) = (config.durability, config.event_retention, runtime.handle().clone());
        runtime.spawn(async move { deliver(open_on(pg, durability, retention, handle).await) });
        Ok(runtime)
    }

    fn finish(runtime: tokio::runtime::Runtime, opened: Result<Opened>, config: &StoreConfig) -> Result<PgStore> {
        match opened {
            Ok(Opened { pool, queue, journal, observer }) => Ok(PgStore {
                pool,
                queue,
                journal,
                observer,
                durability: config.durability,
                closed: AtomicBool::new(false),
                runtime: Some(runtime),
            }),
            Err(e) => {
                // Dropping a runtime blocks, which an async caller must not.
                runtime.shutdown_background();
                Err(e)
            }
        }
    }

    /// Queues a write for the group commit and waits for its answer.
    async fn write(&self, write: Write) -> Result<Done> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Failed("the store is closed".into()));
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(writer::Job { write, reply })
            .await
            .map_err(|_| StorageError::Failed("the store is closed".into()))?;
        answer.await.map_err(|_| StorageError::Failed("the store is closed".into()))?
    }

    /// A connection for one read, bounded in time; returned to the pool
    /// only when the read finished.
    async fn read<T, F>(&self, what: &str, f: F) -> Result<T>
    where
        F: for<'c> FnOnce(Conn<'c>) -> futures_util::future::BoxFuture<'c, Result<T>>,
    {
        bounded(what, async {
            let mut conn = self.pool.get().await?;
            let (client, cache) = conn.parts();
            let out = f(Conn { client, cache }).await;
            if !matches!(out, Err(StorageError::Unavailable(_))) {
                conn.release();
            }
            out
        })
        .await
    }
}

/// Opens the store on its runtime: schema, counters, journal trim, tasks.
async fn open_on(
    pg: tokio_postgres::Config,
    durability: Durability,
    retention: u64,
    runtime: tokio::runtime::Handle,
) -> Result<Opened> {
    let pool = Arc::new(Pool::new(pg, durability, runtime));
    let mut conn = pool.get().await?;
    bounded("preparing the schema", schema::prepare(conn.client())).await?;
    let counters = bounded("reading the counters", read::counters(conn.client())).await?;
    // The journal after its retention was lowered.
    if let Some(keep_from) = counters.event_seq.checked_sub(retention) {
        let keep_from = read::bound(keep_from);
        let client = conn.client();
        let trim = async { client.execute("DELETE FROM events WHERE seq <= $1", &[&keep_from]).await };
        bounded("trimming the journal", async { trim.await.map_err(db_error) }).await?;
    }
    conn.release();
    let journal = Arc::new(Journal::new(counters.event_seq));
    let (queue, jobs) = mpsc::channel(PG_WRITE_QUEUE);
    let observer = Arc::new(writer::Observer::default());
    tokio::spawn(writer::run(Arc::clone(&pool), jobs, Arc::clone(&journal), Arc::clone(&observer), retention));
    tokio::spawn(events::read_loop(Arc::clone(&journal), Arc::clone(&pool)));
    tokio::spawn(events::listen_loop(Arc::clone(&journal), pool.config().clone()));
    Ok(Opened { pool, queue, journal, observer })
}

/// Unexpected answer kind from the writer: a bug.
fn mismatch() -> StorageError {
    StorageError::Internal("the group commit answered another kind of write".into())
}

/// A pooled connection lent to one read, with its prepared statements.
struct Conn<'c> {
    client: &'c mut tokio_postgres::Client,
    cache: &'c StmtCache,
}

impl Conn<'_> {
    /// The connection, its statements prepared once ([`Cached`]).
    fn cached(&self) -> Cached<'_, tokio_postgres::Client> {
        Cached { c: &*self.client, cache: self.cache }
    }
}

/// Runs reads in one repeatable-read, read-only transaction: what they
/// see is one committed state. Its statements are the connection's cached
/// ones (a statement prepared in a transaction outlives it).
macro_rules! snapshot {
    ($conn:expr, $tx:ident => $body:expr) => {{
        let conn: Conn<'_> = $conn;
        let raw = conn
            .client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db_error)?;
        let $tx = Cached { c: &raw, cache: conn.cache };
        let out = $body;
        raw.commit().await.map_err(db_error)?;
        Ok(out)
    }};
}

#[async_trait::async_trait]
impl Backend for PgStore {
    fn durability(&self) -> Durability {
        self.durability
    }

    fn format_version(&self) -> u32 {
        schema::CURRENT_SCHEMA
    }

    /// Open, and the database answered the last read of the journal.
    fn healthy(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.journal.reachable()
    }

    /// Every acknowledged write is committed already: stops accepting
    /// writes; the event feed ends once it has handed out every event
    /// committed so far. Reads go on until the store is dropped.
    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.journal.close();
    }

    fn data_dir(&self) -> Option<&std::path::Path> {
        None
    }

    /// Each committed batch: its writes, and how long its COMMIT (the WAL
    /// flush, in `sync`) took.
    fn observe_commits(&self, observer: Arc<dyn crate::storage::commit::CommitObserver>) {
        let _ = self.observer.set(observer);
    }

    /// There is no local directory to copy: back up a PostgreSQL store
    /// with `pg_dump` or `pg_basebackup`.
    async fn pause_writes(&self) -> Result<WritePause> {
        Err(StorageError::Refused(
            "a PostgreSQL store has no data directory to copy; back it up with pg_dump or pg_basebackup".into(),
        ))
    }

    // ----- writes -------------------------------------------------------------

    async fn create_session(&self, name: String, metadata: Box<RawValue>) -> Result<Session> {
        match self.write(Write::CreateSession { name, metadata }).await? {
            Done::Session(s) => Ok(s),
            _ => Err(mismatch()),
        }
    }

    async fn open_session(&self, key: String, name: String, metadata: Box<RawValue>) -> Result<(Session, bool)> {
        match self.write(Write::OpenSession { key, name, metadata }).await? {
            Done::Opened(s, created) => Ok((s, created)),
            _ => Err(mismatch()),
        }
    }

    async fn delete_session(&self, id: SessionId) -> Result<u64> {
        match self.write(Write::DeleteSession(id)).await? {
            Done::Count(n) => Ok(n),
            _ => Err(mismatch()),
        }
    }

    async fn set_retention(&self, id: SessionId, policy: Option<RetentionPolicy>) -> Result<Option<RetentionPolicy>> {
        match self.write(Write::SetRetention(id, policy)).await? {
            Done::Retention(p) => Ok(p),
            _ => Err(mismatch()),
        }
    }

    async fn put_checkpoint(&self, new: NewCheckpoint) -> Result<(CheckpointSummary, Option<Compaction>)> {
        match self.write(Write::PutCheckpoint(new)).await? {
            Done::Put(s, c) => Ok((s, c)),
            _ => Err(mismatch()),
        }
    }

    async fn restore(&self, session: SessionId, id: CheckpointId) -> Result<Checkpoint> {
        match self.write(Write::Restore(session, id)).await? {
            Done::Checkpoint(c) => Ok(c),
            _ => Err(mismatch()),
        }
    }

    async fn delete_checkpoint(&self, id: CheckpointId, session: Option<SessionId>) -> Result<SessionId> {
        match self.write(Write::DeleteCheckpoint(id, session)).await? {
            Done::SessionId(s) => Ok(s),
            _ => Err(mismatch()),
        }
    }

    async fn annotate(&self, id: CheckpointId, note: String, severity: Severity, max: u32) -> Result<Annotation> {
        match self.write(Write::Annotate { id, note, severity, max }).await? {
            Done::Annotation(a) => Ok(a),
            _ => Err(mismatch()),
        }
    }

    async fn compact(&self, session: SessionId, policy: &RetentionPolicy, per_namespace: bool) -> Result<Compaction> {
        match self.write(Write::Compact { session, policy: policy.clone(), per_namespace }).await? {
            Done::Compaction(c) => Ok(c),
            _ => Err(mismatch()),
        }
    }

    async fn put_writes(&self, writes: NewWrites) -> Result<u64> {
        match self.write(Write::PutWrites(writes)).await? {
            Done::Count(n) => Ok(n),
            _ => Err(mismatch()),
        }
    }

    async fn copy_session(
        &self,
        source: SessionId,
        key: Option<String>,
        name: String,
        metadata: Box<RawValue>,
    ) -> Result<(Session, u64)> {
        match self.write(Write::CopySession { source, key, name, metadata }).await? {
            Done::Copied(s, n) => Ok((s, n)),
            _ => Err(mismatch()),
        }
    }

    async fn delete_checkpoints(
        &self,
        session: Option<SessionId>,
        namespace: Option<&str>,
        filter: &MetadataFilter,
    ) -> Result<(u64, bool)> {
        let write =
            Write::DeleteCheckpoints { session, namespace: namespace.map(str::to_string), filter: filter.clone() };
        match self.write(write).await? {
            Done::Deleted(n, more) => Ok((n, more)),
            _ => Err(mismatch()),
        }
    }

    async fn import(&self, batch: ImportBatch) -> Result<ImportCounts> {
        match self.write(Write::Import(batch)).await? {
            Done::Imported(c) => Ok(c),
            _ => Err(mismatch()),
        }
    }

    // ----- reads --------------------------------------------------------------

    async fn session(&self, id: SessionId) -> Result<Session> {
        self.read("a session", move |c| Box::pin(async move { read::session(&c.cached(), id).await })).await
    }

    async fn session_by_key(&self, key: &str) -> Result<Session> {
        let key = key.to_string();
        self.read("a session", move |c| {
            Box::pin(async move {
                read::session_by_key(&c.cached(), &key).await?.ok_or_else(|| StorageError::no_session_with_key(&key))
            })
        })
        .await
    }

    async fn list_sessions(
        &self,
        after: Option<SessionId>,
        key_prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Session>> {
        let prefix = key_prefix.map(str::to_string);
        self.read("sessions", move |c| {
            Box::pin(
                async move { snapshot!(c, tx => read::list_sessions(&tx, after, prefix.as_deref(), limit).await?) },
            )
        })
        .await
    }

    async fn checkpoint(&self, id: CheckpointId) -> Result<Checkpoint> {
        self.read("a checkpoint", move |c| {
            Box::pin(async move { snapshot!(c, tx => read::checkpoint(&tx, id).await?) })
        })
        .await
    }

    async fn checkpoint_in(&self, session: SessionId, namespace: &str, external: Option<&str>) -> Result<Checkpoint> {
        let (namespace, external) = (namespace.to_string(), external.map(str::to_string));
        self.read("a checkpoint", move |c| {
            Box::pin(async move {
                snapshot!(c, tx => read::checkpoint_in(&tx, session, &namespace, external.as_deref()).await?)
            })
        })
        .await
    }

    async fn list_checkpoints(&self, session: SessionId, q: &ListQuery, max: usize) -> Result<Page> {
        let q = q.clone();
        self.read("checkpoints", move |c| {
            Box::pin(async move { snapshot!(c, tx => read::list_page(&tx, session, &q, max).await?) })
        })
        .await
    }

    async fn search_checkpoints(&self, q: &SearchQuery, max: usize) -> Result<Page> {
        let q = q.clone();
        self.read("a search", move |c| Box::pin(async move { snapshot!(c, tx => read::search(&tx, &q, max).await?) }))
            .await
    }

    async fn list_by_sequence(&self, after: u64, limit: usize) -> Result<Vec<CheckpointSummary>> {
        self.read("checkpoints", move |c| {
            Box::pin(async move { read::list_by_sequence(&c.cached(), after, limit).await })
        })
        .await
    }

    async fn validate(&self, session: Option<SessionId>) -> Result<Validation> {
        // Not bounded by PG_TIMEOUT as a whole: it reads every state, in
        // chunks, each chunk bounded.
        let mut conn = self.pool.get().await?;
        let (client, cache) = conn.parts();
        let out = snapshot_validate(Conn { client, cache }, session).await;
        if out.is_ok() {
            conn.release();
        }
        out
    }

    async fn metrics(&self) -> Result<Metrics> {
        self.read("metrics", |c| {
            Box::pin(async move {
                snapshot!(c, tx => {
                    let counters = read::counters(&tx).await?;
                    let oldest_event = read::oldest_event(&tx).await?;
                    let row = tx
                        .query_one(
                            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
                             JOIN pg_namespace n ON n.oid = c.relnamespace \
                             WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname IN \
                             ('counters', 'sessions', 'checkpoints', 'annotations', 'writes', 'events', \
                              'schema_version')",
                            &[],
                        )
                        .await
                        .map_err(db_error)?;
                    Metrics {
                        total_checkpoints: counters.checkpoints,
                        active_sessions: counters.active_sessions,
                        total_sessions_created: counters.sessions_created,
                        global_sequence: counters.global_seq,
                        event_sequence: counters.event_seq,
                        oldest_event,
                        bytes_on_disk: read::num(row.get(0)),
                        state_live_bytes: 0,
                        state_dead_bytes: 0,
                    }
                })
            })
        })
        .await
    }

    async fn is_pristine(&self) -> Result<bool> {
        self.read("the counters", |c| {
            Box::pin(async move {
                snapshot!(c, tx => {
                    let counters = read::counters(&tx).await?;
                    let row = tx
                        .query_one(
                            "SELECT NOT EXISTS (SELECT 1 FROM sessions) AND NOT EXISTS (SELECT 1 FROM checkpoints) \
                             AND NOT EXISTS (SELECT 1 FROM events)",
                            &[],
                        )
                        .await
                        .map_err(db_error)?;
                    let empty: bool = row.get(0);
                    empty && counters.global_seq == 0 && counters.event_seq == 0 && counters.sessions_created == 0
                })
            })
        })
        .await
    }

    // ----- the journal --------------------------------------------------------

    async fn events(
        &self,
        after: u64,
        through: u64,
        session: Option<SessionId>,
        limit: usize,
    ) -> Result<Vec<JournalEvent>> {
        self.read("journal events", move |c| {
            Box::pin(async move { read::events(&c.cached(), after, through, session, limit).await })
        })
        .await
    }

    async fn oldest_event(&self) -> Result<Option<u64>> {
        self.read("the journal", |c| Box::pin(async move { read::oldest_event(&c.cached()).await })).await
    }

    fn event_sequence(&self) -> u64 {
        self.journal.seen()
    }

    /// Also what other servers committed: read from the database.
    async fn newest_event_sequence(&self) -> Result<u64> {
        let committed =
            self.read("the counters", |c| Box::pin(async move { read::counters(&c.cached()).await })).await?.event_seq;
        self.journal.saw(committed);
        Ok(self.journal.seen())
    }

    fn watch_events(&self) -> Box<dyn EventFeed> {
        self.journal.feed()
    }

    fn durable_marks(&self) -> tokio::sync::watch::Receiver<DurableMark> {
        self.journal.marks()
    }
}

async fn snapshot_validate(c: Conn<'_>, session: Option<SessionId>) -> Result<Validation> {
    snapshot!(c, tx => read::validate(&tx, session).await?)
}

impl Drop for PgStore {
    /// Closes the store and stops its tasks and connections.
    fn drop(&mut self) {
        self.close();
        self.pool.close();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
