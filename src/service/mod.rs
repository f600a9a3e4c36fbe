//! The operations checkpointd offers, with their input rules. The server maps
//! wire requests onto these methods; tests and tools may call them directly.
//! Every write goes to [`Store`], which returns only once it is durable;
//! every read answers only once what it read is durable (`Service::settled`).

pub mod hub;

use crate::config::{Durability, MAX_METADATA_BYTES, MAX_PAGE, MAX_TAG_BYTES, MAX_TAGS, MAX_TEXT_BYTES, StoreConfig};
use crate::error::{Error, Result};
use crate::model::{
    Annotation, Checkpoint, CheckpointId, CheckpointSummary, Compaction, ListQuery, Metrics, NewCheckpoint,
    RetentionPolicy, Session, SessionId, Severity, Validation, json_empty_object,
};
use crate::storage::Store;
use hub::{Hub, Subscription};
use serde_json::value::RawValue;
use std::sync::Arc;

/// Name given to sessions created without one (as the seed did).
pub const DEFAULT_SESSION_NAME: &str = "unnamed";

#[derive(Clone)]
pub struct Service {
    store: Arc<Store>,
    hub: Arc<Hub>,
}

/// `health` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    pub durability: Durability,
    pub format_version: u32,
    pub subscriptions: usize,
}

impl Service {
    /// Opens the data directory and starts event dispatch. Needs a tokio runtime.
    pub fn open(config: StoreConfig) -> Result<Service> {
        let store = Arc::new(Store::open(config)?);
        Ok(Service::new(store))
    }

    pub fn new(store: Arc<Store>) -> Service {
        let hub = Hub::start(Arc::clone(&store));
        Service { store, hub }
    }

    pub fn store(&self) -> &Arc<Store> {
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
        self.store.create_session(name, metadata).await
    }

    pub async fn get_session(&self, id: SessionId) -> Result<Session> {
        self.settled(self.store.session(id)).await
    }

    pub async fn list_sessions(&self, after: Option<SessionId>, limit: Option<usize>) -> Result<Vec<Session>> {
        self.settled(self.store.list_sessions(after, limit.unwrap_or(MAX_PAGE).min(MAX_PAGE))).await
    }

    pub async fn delete_session(&self, id: SessionId) -> Result<u64> {
        self.store.delete_session(id).await
    }

    pub async fn checkpoint(&self, mut new: NewCheckpoint) -> Result<CheckpointSummary> {
        check_text("message", &new.message, true)?;
        new.tags = check_tags("tags", new.tags)?;
        new.metadata = Some(check_metadata(new.metadata)?);
        Ok(self.store.put_checkpoint(new).await?.0)
    }

    pub async fn get_checkpoint(&self, id: CheckpointId) -> Result<Checkpoint> {
        self.settled(self.store.checkpoint(id)).await
    }

    pub async fn list_checkpoints(&self, session: SessionId, query: &ListQuery) -> Result<Vec<CheckpointSummary>> {
        if let Some(tag) = &query.tag {
            check_tag("tag", tag)?;
        }
        self.settled(self.store.list_checkpoints(session, query, MAX_PAGE)).await
    }

    /// Checkpoints of all sessions in global sequence order, after `after`.
    pub async fn list_by_sequence(&self, after: u64, limit: Option<usize>) -> Result<Vec<CheckpointSummary>> {
        self.settled(self.store.list_by_sequence(after, limit.unwrap_or(MAX_PAGE).min(MAX_PAGE))).await
    }

    pub async fn restore(&self, session: SessionId, id: CheckpointId) -> Result<Checkpoint> {
        self.store.restore(session, id).await
    }

    pub async fn delete_checkpoint(&self, id: CheckpointId, session: Option<SessionId>) -> Result<SessionId> {
        self.store.delete_checkpoint(id, session).await
    }

    pub async fn annotate(&self, id: CheckpointId, note: String, severity: Option<Severity>) -> Result<Annotation> {
        check_text("note", &note, false)?;
        self.store.annotate(id, note, severity.unwrap_or_default()).await
    }

    pub async fn compact(&self, session: SessionId, policy: RetentionPolicy) -> Result<Compaction> {
        let policy = check_policy(policy)?;
        if policy.is_empty() {
            return Err(Error::invalid("compact needs keep_recent and/or preserve_tags"));
        }
        self.store.compact(session, &policy).await
    }

    pub async fn set_retention(
        &self,
        session: SessionId,
        policy: Option<RetentionPolicy>,
    ) -> Result<Option<RetentionPolicy>> {
        let policy = policy.map(check_policy).transpose()?;
        self.store.set_retention(session, policy).await
    }

    /// Checks every checksum; reads the whole store, so it runs on a
    /// blocking thread.
    pub async fn validate(&self, session: Option<SessionId>) -> Result<Validation> {
        let store = Arc::clone(&self.store);
        let result = tokio::task::spawn_blocking(move || store.validate(session))
            .await
            .map_err(|e| Error::Internal(format!("validation task failed: {e}")))?;
        self.settled(result).await
    }

    pub async fn metrics(&self) -> Result<Metrics> {
        self.settled(self.store.metrics()).await
    }

    pub fn health(&self) -> Health {
        Health {
            healthy: self.store.healthy(),
            durability: self.store.durability(),
            format_version: self.store.format_version(),
            subscriptions: self.hub.subscriptions(),
        }
    }

    /// Subscribes to a session's events; with `since`, replays those after it.
    pub async fn subscribe(&self, session: SessionId, since: Option<u64>) -> Result<Subscription> {
        self.settled(self.store.session(session)).await?;
        self.hub.subscribe(session, since)
    }

    /// Answers a read (value or error) only once everything it may have
    /// observed is durable: in `sync` mode no reply shows a change, or the
    /// absence of a deleted one, that a crash could still undo.
    async fn settled<T>(&self, read: Result<T>) -> Result<T> {
        self.store.settled().await?;
        read
    }
}

fn check_text(field: &str, value: &str, allow_empty: bool) -> Result<()> {
    if value.is_empty() && !allow_empty {
        return Err(Error::invalid(format!("{field} must not be empty")));
    }
    if value.len() > MAX_TEXT_BYTES {
        return Err(Error::TooLarge(format!("{field} is longer than {MAX_TEXT_BYTES} bytes")));
    }
    Ok(())
}

fn check_tag(field: &str, tag: &str) -> Result<()> {
    if tag.is_empty() {
        return Err(Error::invalid(format!("{field}: a tag must not be empty")));
    }
    if tag.len() > MAX_TAG_BYTES {
        return Err(Error::TooLarge(format!("{field}: a tag is longer than {MAX_TAG_BYTES} bytes")));
    }
    Ok(())
}

/// Checks and de-duplicates tags, keeping their first order.
fn check_tags(field: &str, tags: Vec<String>) -> Result<Vec<String>> {
    if tags.len() > MAX_TAGS {
        return Err(Error::TooLarge(format!("{field}: more than {MAX_TAGS} tags")));
    }
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        check_tag(field, &tag)?;
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    Ok(out)
}

fn check_metadata(metadata: Option<Box<RawValue>>) -> Result<Box<RawValue>> {
    let Some(metadata) = metadata else { return Ok(json_empty_object()) };
    if !metadata.get().trim_start().starts_with('{') {
        return Err(Error::invalid("metadata must be a JSON object"));
    }
    if metadata.get().len() > MAX_METADATA_BYTES {
        return Err(Error::TooLarge(format!("metadata is larger than {MAX_METADATA_BYTES} bytes")));
    }
    Ok(metadata)
}

fn check_policy(policy: RetentionPolicy) -> Result<RetentionPolicy> {
    Ok(RetentionPolicy {
        keep_recent: policy.keep_recent,
        preserve_tags: check_tags("preserve_tags", policy.preserve_tags)?,
    })
}
