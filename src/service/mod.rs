//! The operations checkpointd offers. The server maps wire requests onto
//! these methods; tests and tools may call them directly. Each checks its
//! input against [`rules`](crate::rules) and its limits, then calls the
//! store through the storage interface ([`Backend`](crate::storage::Backend)): a write returns only
//! once it is durable, a read answers only with durable data (the
//! interface's contract). Events reach subscribers through the [`hub`].

pub mod hub;

use crate::config::{Durability, MAX_ANNOTATIONS, MAX_PAGE, MAX_WRITES_PER_REQUEST, StoreConfig};
use crate::error::{Error, Result};
use crate::model::{
    Annotation, Checkpoint, CheckpointId, CheckpointSummary, Compaction, ListQuery, MetadataFilter, Metrics,
    NewCheckpoint, NewWrites, Page, RetentionPolicy, SearchQuery, Session, SessionId, Severity, Validation,
};
use crate::rules::{check_key, check_metadata, check_policy, check_tag, check_tags, check_text};
use crate::storage::{SharedBackend, Store};
use hub::{Hub, Subscription};
use serde_json::value::RawValue;
use std::sync::Arc;

/// Name given to sessions created without one (as the seed did).
pub const DEFAULT_SESSION_NAME: &str = "unnamed";

#[derive(Clone)]
pub struct Service {
    store: SharedBackend,
    hub: Arc<Hub>,
}

/// `health` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    pub durability: Durability,
    pub format_version: u32,
    pub subscriptions: usize,
    /// The state segments' live, dead and on-disk bytes.
    pub space: crate::storage::segments::SpaceUsage,
}

impl Service {
    /// Opens the data directory (the sled store) and starts event
    /// dispatch. Needs a tokio runtime.
    pub fn open(config: StoreConfig) -> Result<Service> {
        Ok(Service::new(Arc::new(Store::open(config)?)))
    }

    /// Serves `store` and starts event dispatch. Needs a tokio runtime.
    pub fn new(store: SharedBackend) -> Service {
        let hub = Hub::start(Arc::clone(&store));
        Service { store, hub }
    }

    pub fn store(&self) -> &SharedBackend {
        &self.store
    }

    /// Flushes everything to disk and stops accepting writes.
    pub fn close(&self) {
        self.store.close();
    }

    pub async fn create_session(&self, name: Option<String>, metadata: Option<Box<RawValue>>) -> Result<Session> {
        let name = name.unwrap_or_else(|| DEFAULT_SESSION_NAME.to_string());
        check_text("name", &name, false)?;
        let metadata = check_metadata(metadata)?;
        Ok(self.store.create_session(name, metadata).await?)
    }

    /// The session with client key `key`, created when there is none (see
    /// [`Backend::open_session`](crate::storage::Backend::open_session)).
    pub async fn open_session(
        &self,
        key: String,
        name: Option<String>,
        metadata: Option<Box<RawValue>>,
    ) -> Result<(Session, bool)> {
        check_key("key", &key, false)?;
        let name = name.unwrap_or_else(|| DEFAULT_SESSION_NAME.to_string());
        check_text("name", &name, false)?;
        let metadata = check_metadata(metadata)?;
        Ok(self.store.open_session(key, name, metadata).await?)
    }

    pub async fn get_session(&self, id: SessionId) -> Result<Session> {
        Ok(self.store.session(id).await?)
    }

    pub async fn get_session_by_key(&self, key: &str) -> Result<Session> {
        check_key("key", key, false)?;
        Ok(self.store.session_by_key(key).await?)
    }

    pub async fn list_sessions(&self, after: Option<SessionId>, limit: Option<usize>) -> Result<Vec<Session>> {
        Ok(self.store.list_sessions(after, None, limit.unwrap_or(MAX_PAGE).min(MAX_PAGE)).await?)
    }

    /// Sessions whose client key starts with `prefix`, in key order, after
    /// session `after`.
    pub async fn list_sessions_by_key(
        &self,
        prefix: &str,
        after: Option<SessionId>,
        limit: Option<usize>,
    ) -> Result<Vec<Session>> {
        check_key("key_prefix", prefix, true)?;
        Ok(self.store.list_sessions(after, Some(prefix), limit.unwrap_or(MAX_PAGE).min(MAX_PAGE)).await?)
    }

    pub async fn delete_session(&self, id: SessionId) -> Result<u64> {
        Ok(self.store.delete_session(id).await?)
    }

    pub async fn checkpoint(&self, mut new: NewCheckpoint) -> Result<CheckpointSummary> {
        check_text("message", &new.message, true)?;
        check_key("namespace", &new.namespace, true)?;
        for (field, id) in [("external_id", &new.external_id), ("parent_external_id", &new.parent_external_id)] {
            if let Some(id) = id {
                check_key(field, id, false)?;
            }
        }
        new.tags = check_tags("tags", new.tags)?;
        new.metadata = Some(check_metadata(new.metadata)?);
        Ok(self.store.put_checkpoint(new).await?.0)
    }

    pub async fn get_checkpoint(&self, id: CheckpointId) -> Result<Checkpoint> {
        Ok(self.store.checkpoint(id).await?)
    }

    /// The checkpoint with external id `external` in (session, namespace),
    /// or with `None` the newest there.
    pub async fn get_checkpoint_in(
        &self,
        session: SessionId,
        namespace: &str,
        external: Option<&str>,
    ) -> Result<Checkpoint> {
        check_key("namespace", namespace, true)?;
        if let Some(external) = external {
            check_key("external_id", external, false)?;
        }
        Ok(self.store.checkpoint_in(session, namespace, external).await?)
    }

    /// One page of summaries (`query.full` is ignored; see [`Service::list_page`]).
    pub async fn list_checkpoints(&self, session: SessionId, query: &ListQuery) -> Result<Vec<CheckpointSummary>> {
        let query = ListQuery { full: false, ..query.clone() };
        match self.list_page(session, &query).await? {
            Page::Summaries(rows) => Ok(rows),
            Page::Records(rows) => Ok(rows.into_iter().map(|c| c.summary).collect()),
        }
    }

    /// One page of a session's checkpoints: summaries, or full records
    /// with `query.full`.
    pub async fn list_page(&self, session: SessionId, query: &ListQuery) -> Result<Page> {
        if let Some(tag) = &query.tag {
            check_tag("tag", tag)?;
        }
        if let Some(namespace) = &query.namespace {
            check_key("namespace", namespace, true)?;
        }
        for external in [&query.after_external, &query.before_external].into_iter().flatten() {
            check_key("external id", external, false)?;
        }
        Ok(self.store.list_checkpoints(session, query, MAX_PAGE).await?)
    }

    /// The same filters across every session, newest first.
    pub async fn search_checkpoints(&self, query: &SearchQuery) -> Result<Page> {
        if let Some(namespace) = &query.namespace {
            check_key("namespace", namespace, true)?;
        }
        Ok(self.store.search_checkpoints(query, MAX_PAGE).await?)
    }

    /// Stores a task's pending writes (see [`NewWrites`]); returns how many
    /// were stored or replaced.
    pub async fn put_writes(&self, writes: NewWrites) -> Result<u64> {
        check_key("namespace", &writes.namespace, true)?;
        check_key("external_id", &writes.external_id, false)?;
        check_key("task_id", &writes.task_id, false)?;
        check_text("task_path", &writes.task_path, true)?;
        if writes.writes.len() > MAX_WRITES_PER_REQUEST {
            return Err(Error::TooLarge(format!("more than {MAX_WRITES_PER_REQUEST} writes in one request")));
        }
        for (_, channel, _) in &writes.writes {
            check_text("channel", channel, false)?;
        }
        Ok(self.store.put_writes(writes).await?)
    }

    /// Copies a session into the session with client key `key` (created
    /// when none has it; without a key, a new session).
    pub async fn copy_session(
        &self,
        source: SessionId,
        key: Option<String>,
        name: Option<String>,
        metadata: Option<Box<RawValue>>,
    ) -> Result<(Session, u64)> {
        if let Some(key) = &key {
            check_key("key", key, false)?;
        }
        let name = name.unwrap_or_else(|| DEFAULT_SESSION_NAME.to_string());
        check_text("name", &name, false)?;
        let metadata = check_metadata(metadata)?;
        Ok(self.store.copy_session(source, key, name, metadata).await?)
    }

    /// Deletes a batch of the checkpoints whose metadata matches; returns
    /// how many, and whether more match.
    pub async fn delete_checkpoints(
        &self,
        session: Option<SessionId>,
        namespace: Option<&str>,
        filter: &MetadataFilter,
    ) -> Result<(u64, bool)> {
        if filter.is_empty() {
            return Err(Error::invalid("delete_checkpoints needs a non-empty metadata filter"));
        }
        if let Some(namespace) = namespace {
            check_key("namespace", namespace, true)?;
        }
        Ok(self.store.delete_checkpoints(session, namespace, filter).await?)
    }

    /// Checkpoints of all sessions in global sequence order, after `after`.
    pub async fn list_by_sequence(&self, after: u64, limit: Option<usize>) -> Result<Vec<CheckpointSummary>> {
        Ok(self.store.list_by_sequence(after, limit.unwrap_or(MAX_PAGE).min(MAX_PAGE)).await?)
    }

    pub async fn restore(&self, session: SessionId, id: CheckpointId) -> Result<Checkpoint> {
        Ok(self.store.restore(session, id).await?)
    }

    pub async fn delete_checkpoint(&self, id: CheckpointId, session: Option<SessionId>) -> Result<SessionId> {
        Ok(self.store.delete_checkpoint(id, session).await?)
    }

    /// Adds an annotation; a checkpoint holds at most [`MAX_ANNOTATIONS`].
    pub async fn annotate(&self, id: CheckpointId, note: String, severity: Option<Severity>) -> Result<Annotation> {
        check_text("note", &note, false)?;
        Ok(self.store.annotate(id, note, severity.unwrap_or_default(), MAX_ANNOTATIONS).await?)
    }

    pub async fn compact(&self, session: SessionId, policy: RetentionPolicy) -> Result<Compaction> {
        self.compact_by(session, policy, false).await
    }

    /// `compact`; with `per_namespace`, the policy ranks checkpoints within
    /// each namespace (`keep_recent: 1` keeps every namespace's newest).
    pub async fn compact_by(
        &self,
        session: SessionId,
        policy: RetentionPolicy,
        per_namespace: bool,
    ) -> Result<Compaction> {
        let policy = check_policy(policy)?;
        if policy.is_empty() {
            return Err(Error::invalid("compact needs keep_recent and/or preserve_tags"));
        }
        Ok(self.store.compact(session, &policy, per_namespace).await?)
    }

    pub async fn set_retention(
        &self,
        session: SessionId,
        policy: Option<RetentionPolicy>,
    ) -> Result<Option<RetentionPolicy>> {
        let policy = policy.map(check_policy).transpose()?;
        Ok(self.store.set_retention(session, policy).await?)
    }

    /// Checks every checksum (of one session, or all).
    pub async fn validate(&self, session: Option<SessionId>) -> Result<Validation> {
        Ok(self.store.validate(session).await?)
    }

    pub async fn metrics(&self) -> Result<Metrics> {
        Ok(self.store.metrics().await?)
    }

    pub fn health(&self) -> Health {
        Health {
            healthy: self.store.healthy(),
            durability: self.store.durability(),
            format_version: self.store.format_version(),
            subscriptions: self.hub.subscriptions(),
            space: self.store.space(),
        }
    }

    /// Subscribes to a session's events; with `since`, replays those after it.
    pub async fn subscribe(&self, session: SessionId, since: Option<u64>) -> Result<Subscription> {
        self.store.session(session).await?;
        self.hub.subscribe(session, since).await
    }
}
