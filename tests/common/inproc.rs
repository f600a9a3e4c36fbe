//! The in-process harness: a store opened through one backend factory, the
//! [`Service`] built on it, and optionally the WebSocket server serving it on
//! a real loopback TCP port.
//!
//! The service and server tests are written against the storage interface
//! ([`Backend`](checkpointd::storage::Backend), shared as [`SharedBackend`]):
//! they reach the store only through [`open_backend`], the service's methods
//! and `Service::store()`. [`open_backend`] picks the backend from
//! `CHECKPOINTD_TEST_BACKEND`: `sled` (the default) or `postgres` (a
//! database of the test process's private cluster, [`super::pg`], per data
//! directory). Tests that are about a sled data directory itself (raw trees,
//! flipped bytes, locks, fixtures the binaries read) say so and use
//! [`open_store`].

use super::{fs, pg};
use checkpointd::client::Client;
use checkpointd::config::StoreConfig;
use checkpointd::server::{self, ServerConfig};
use checkpointd::service::Service;
use checkpointd::storage::{SharedBackend, Store};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Upper bound for connecting to the in-process server, and for it to
/// return after shutdown.
pub const STEP: Duration = Duration::from_secs(10);

/// The store configuration of a test: its data under `dir/data`.
pub fn config(dir: &Path) -> StoreConfig {
    StoreConfig::new(dir.join("data"))
}

/// Which store the service and server tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sled,
    Postgres,
}

/// The backend `CHECKPOINTD_TEST_BACKEND` names (`sled` when unset); any
/// other value fails the test.
pub fn backend_kind() -> BackendKind {
    match std::env::var("CHECKPOINTD_TEST_BACKEND").as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("") | Ok("sled") => BackendKind::Sled,
        Ok("postgres") => BackendKind::Postgres,
        other => panic!("CHECKPOINTD_TEST_BACKEND must be sled or postgres, not {other:?}"),
    }
}

/// The backend factory: the store every service and server test runs on.
/// On sled, the [`Store`] on `config.data_dir`, opened once this process no
/// longer holds that directory (a store closed a moment ago may still). On
/// PostgreSQL, the store on the database standing for `config.data_dir`:
/// opening "the same directory" again opens the same database.
pub async fn open_backend(config: &StoreConfig) -> SharedBackend {
    match backend_kind() {
        BackendKind::Sled => Arc::new(open_store(config)),
        BackendKind::Postgres => {
            let url = pg::database_for(&config.data_dir).await;
            open_postgres(&url, config).await
        }
    }
}

/// The PostgreSQL store on the database at `url`.
pub async fn open_postgres(url: &str, config: &StoreConfig) -> SharedBackend {
    match tokio::time::timeout(STEP, checkpointd::storage::PgStore::open(url, config)).await {
        Ok(Ok(store)) => Arc::new(store),
        Ok(Err(e)) => panic!("open {url}: {e}"),
        Err(_) => panic!("open {url}: no answer within {STEP:?}"),
    }
}

/// The sled store itself, for tests of a sled data directory.
pub fn open_store(config: &StoreConfig) -> Store {
    fs::wait_unlocked(&config.data_dir);
    Store::open(config.clone()).unwrap_or_else(|e| panic!("open {}: {e}", config.data_dir.display()))
}

/// The service on a store from [`open_backend`]. Needs a tokio runtime.
pub async fn open_service(config: StoreConfig) -> Service {
    Service::new(open_backend(&config).await)
}

/// The service on `dir/data`, with the default configuration.
pub async fn open(dir: &Path) -> Service {
    open_service(config(dir)).await
}

/// The service on `dir/data`, with the configuration `f` makes.
pub async fn open_with(dir: &Path, f: impl FnOnce(&mut StoreConfig)) -> Service {
    let mut c = config(dir);
    f(&mut c);
    open_service(c).await
}

/// Closes a service and drops it, so its directory can be opened again.
pub fn close(service: Service) {
    service.close();
    drop(service);
}

/// The WebSocket server in-process on `127.0.0.1:0`, serving a service from
/// [`open_service`] on a temporary directory. Dropping it aborts the server.
pub struct TestServer {
    pub url: String,
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<checkpointd::Result<()>>>,
    _dir: TempDir,
}

impl TestServer {
    /// The default server and store configuration.
    pub async fn start() -> TestServer {
        Self::with(ServerConfig::default(), |_| {}).await
    }

    /// `config` for the server; `store` adjusts the store's configuration.
    pub async fn with(config: ServerConfig, store: impl FnOnce(&mut StoreConfig)) -> TestServer {
        let dir = fs::tempdir();
        let mut store_config = self::config(dir.path());
        store(&mut store_config);
        let service = open_service(store_config).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::run(listener, service, config, async move {
            let _ = rx.await;
        }));
        TestServer { url: format!("ws://{addr}"), addr, shutdown: Some(tx), handle: Some(handle), _dir: dir }
    }

    pub async fn connect(&self) -> Client {
        timeout(STEP, Client::connect(&self.url)).await.expect("connect timed out").expect("connect")
    }

    /// Triggers shutdown and waits (bounded) for `run` to return.
    pub async fn stop(&mut self) -> Result<checkpointd::Result<()>, tokio::time::error::Elapsed> {
        let _ = self.shutdown.take().expect("stopped twice").send(());
        let handle = self.handle.take().unwrap();
        timeout(STEP, async { handle.await.expect("server task panicked") }).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}
