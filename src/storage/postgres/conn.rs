//! Connections to PostgreSQL: a small fixed set owned by one store
//! ([`PG_CONNECTIONS`]), opened on demand, replaced when broken, every wait
//! bounded by a timeout; and the mapping of PostgreSQL's errors to
//! [`StorageError`].

use crate::config::{Durability, PG_CONNECT_TIMEOUT, PG_CONNECTIONS, PG_TIMEOUT};
use crate::storage::error::{Result, StorageError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, GenericClient, NoTls, Row, Statement};

/// Prepared statements cached per connection at most; past it the cache
/// starts over (SQL built from a query's options can vary).
const CACHED_STATEMENTS: usize = 256;

/// One connection's prepared statements by SQL text. It lives beside its
/// connection in the pool, and goes when the connection goes (a statement
/// belongs to the session that prepared it). PostgreSQL keeps a prepared
/// statement across rollbacks, so a cached one stays valid for the life of
/// the connection.
#[derive(Default)]
pub(crate) struct StmtCache(Mutex<HashMap<String, Statement>>);

impl StmtCache {
    fn get(&self, sql: &str) -> Option<Statement> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(sql).cloned()
    }

    fn put(&self, sql: &str, statement: &Statement) {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= CACHED_STATEMENTS {
            map.clear();
        }
        map.insert(sql.to_owned(), statement.clone());
    }
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

/// What the store's queries run on: a connection or a transaction, as is
/// ([`GenericClient`]: every call prepares its statement), or [`Cached`].
pub(crate) trait Db: Sync {
    fn query<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = std::result::Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a;
    fn query_opt<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = std::result::Result<Option<Row>, tokio_postgres::Error>> + Send + 'a;
    fn query_one<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = std::result::Result<Row, tokio_postgres::Error>> + Send + 'a;
    fn execute<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = std::result::Result<u64, tokio_postgres::Error>> + Send + 'a;
}

impl<C: GenericClient + Sync> Db for C {
    fn query<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = std::result::Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a {
        GenericClient::query(self, sql, params)
    }
    fn query_opt<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = std::result::Result<Option<Row>, tokio_postgres::Error>> + Send + 'a {
        GenericClient::query_opt(self, sql, params)
    }
    fn query_one<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = std::result::Result<Row, tokio_postgres::Error>> + Send + 'a {
        GenericClient::query_one(self, sql, params)
    }
    fn execute<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = std::result::Result<u64, tokio_postgres::Error>> + Send + 'a {
        GenericClient::execute(self, sql, params)
    }
}

/// A connection or transaction whose statements are prepared once per
/// connection ([`StmtCache`]) instead of on every call: a query is one
/// round trip instead of two.
pub(crate) struct Cached<'c, C> {
    pub c: &'c C,
    pub cache: &'c StmtCache,
}

impl<C: GenericClient + Sync> Cached<'_, C> {
    /// `sql` prepared on this connection: from the cache, or prepared
    /// now (one round trip) and cached.
    pub(crate) async fn statement(&self, sql: &str) -> std::result::Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.cache.get(sql) {
            return Ok(statement);
        }
        let statement = self.c.prepare(sql).await?;
        self.cache.put(sql, &statement);
        Ok(statement)
    }
}

// The futures are spelled out to match the trait, which promises `Send`.
#[allow(clippy::manual_async_fn)]
impl<C: GenericClient + Sync> Db for Cached<'_, C> {
    fn query<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = std::result::Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a {
        async move { self.c.query(&self.statement(sql).await?, params).await }
    }
    fn query_opt<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = std::result::Result<Option<Row>, tokio_postgres::Error>> + Send + 'a {
        async move { self.c.query_opt(&self.statement(sql).await?, params).await }
    }
    fn query_one<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = std::result::Result<Row, tokio_postgres::Error>> + Send + 'a {
        async move { self.c.query_one(&self.statement(sql).await?, params).await }
    }
    fn execute<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = std::result::Result<u64, tokio_postgres::Error>> + Send + 'a {
        async move { self.c.execute(&self.statement(sql).await?, params).await }
    }
}

/// What PostgreSQL's error means here. Connection trouble, a server
/// shutting down or starting, and exhausted resources are `Unavailable`
/// (the request may be retried); anything else is a bug (`Internal`).
pub(crate) fn db_error(e: tokio_postgres::Error) -> StorageError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            // 08: connection exception; 53: insufficient resources; 57P:
            // operator intervention (shutdown, crash, cannot connect now);
            // 58: system error; 40: serialization failure or deadlock.
            if ["08", "53", "57", "58", "40"].iter().any(|class| code.starts_with(class)) {
                StorageError::Unavailable(format!("PostgreSQL is unavailable: {}", db.message()))
            } else {
                StorageError::Internal(format!("PostgreSQL error {code}: {}", db.message()))
            }
        }
        None => StorageError::Unavailable(format!("PostgreSQL is unavailable: {e}")),
    }
}

/// `fut`, or `Unavailable` once [`PG_TIMEOUT`] has passed.
pub(crate) async fn bounded<T>(what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(PG_TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => Err(StorageError::Unavailable(format!(
            "PostgreSQL did not answer within {} s ({what})",
            PG_TIMEOUT.as_secs()
        ))),
    }
}

/// Opens one connection: its I/O runs on a task of its own; in `async`
/// mode its commits do not wait for the WAL flush.
pub(crate) async fn connect(config: &Config, durability: Durability) -> Result<Client> {
    let connecting = async {
        let (client, connection) = config.connect(NoTls).await.map_err(db_error)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection ended");
            }
        });
        let commit = match durability {
            Durability::Sync => "on",
            Durability::Async => "off",
        };
        client.batch_execute(&format!("SET synchronous_commit = {commit}")).await.map_err(db_error)?;
        Ok(client)
    };
    match tokio::time::timeout(PG_CONNECT_TIMEOUT, connecting).await {
        Ok(out) => out,
        Err(_) => Err(StorageError::Unavailable(format!(
            "could not connect to PostgreSQL within {} s",
            PG_CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// At most [`PG_CONNECTIONS`] connections, kept open between uses.
pub(crate) struct Pool {
    config: Config,
    durability: Durability,
    /// The store's own runtime: connections are opened and driven there,
    /// so they outlive the runtime of whoever asked for them.
    runtime: tokio::runtime::Handle,
    idle: Mutex<Vec<(Client, StmtCache)>>,
    permits: Arc<Semaphore>,
}

impl Pool {
    pub fn new(mut config: Config, durability: Durability, runtime: tokio::runtime::Handle) -> Pool {
        config.connect_timeout(PG_CONNECT_TIMEOUT);
        let permits = Arc::new(Semaphore::new(PG_CONNECTIONS));
        Pool { config, durability, runtime, idle: Mutex::new(Vec::new()), permits }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A connection: an idle one that is still open, or a new one.
    pub async fn get(self: &Arc<Self>) -> Result<Pooled> {
        let permit = match tokio::time::timeout(PG_TIMEOUT, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(StorageError::Failed("the store is closed".into())),
            Err(_) => {
                return Err(StorageError::Unavailable(format!(
                    "no PostgreSQL connection became free within {} s",
                    PG_TIMEOUT.as_secs()
                )));
            }
        };
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            idle.retain(|(c, _)| !c.is_closed());
            idle.pop()
        };
        let conn = match reused {
            Some(conn) => conn,
            None => {
                let (config, durability) = (self.config.clone(), self.durability);
                let connecting = self.runtime.spawn(async move { connect(&config, durability).await });
                let client = connecting
                    .await
                    .map_err(|e| StorageError::Unavailable(format!("connecting to PostgreSQL: {e}")))??;
                (client, StmtCache::default())
            }
        };
        Ok(Pooled { conn: Some(conn), pool: Arc::clone(self), keep: false, _permit: permit })
    }

    /// Drops every idle connection and refuses new ones.
    pub fn close(&self) {
        self.permits.close();
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }
}

/// A connection from the [`Pool`]. It goes back only when its user says it
/// is in a clean state ([`Pooled::release`]): one dropped mid-request (a
/// timeout, an error) is closed instead, its statement cache with it.
pub(crate) struct Pooled {
    conn: Option<(Client, StmtCache)>,
    pool: Arc<Pool>,
    keep: bool,
    _permit: OwnedSemaphorePermit,
}

impl Pooled {
    pub fn client(&mut self) -> &mut Client {
        self.parts().0
    }

    /// The client and its prepared statements.
    pub fn parts(&mut self) -> (&mut Client, &StmtCache) {
        let (client, cache) = self.conn.as_mut().expect("a pooled connection holds its client until dropped");
        (client, cache)
    }

    /// Returns the connection to the pool when it is dropped.
    pub fn release(mut self) {
        self.keep = true;
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.keep
            && !conn.0.is_closed()
        {
            self.pool.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(conn);
        }
    }
}
