//! What `checkpoint-dump` and export read, from either store: a private
//! copy of a sled data directory ([`Inspector`]) or a read-only snapshot of
//! a PostgreSQL database ([`PgInspector`]). Every read is synchronous.

use super::error::Result;
use super::inspect::{Inspector, Summary};
use super::pending::StoredWrite;
use super::postgres::PgInspector;
use super::reads::Reader;
use super::verify::Verification;
use crate::model::{Annotation, Checkpoint, CheckpointId, CheckpointSummary, JournalEvent, Session, SessionId};

pub type Items<'a, T> = Box<dyn Iterator<Item = Result<T>> + 'a>;

/// A store opened for reading only.
pub trait Source {
    /// Counts, sequences and size. (A database's summary has an empty
    /// `data_dir`.)
    fn summary(&self) -> Result<Summary>;
    /// Every session in creation order, with its ordinal.
    fn sessions(&self) -> Items<'_, (u64, Session)>;
    fn session(&self, id: SessionId) -> Result<Session>;
    /// A session's checkpoints in sequence order.
    fn checkpoints(&self, session: SessionId) -> Items<'_, CheckpointSummary>;
    fn checkpoint(&self, id: CheckpointId) -> Result<Checkpoint>;
    /// A checkpoint's annotations with their indexes.
    fn annotations(&self, id: CheckpointId) -> Result<Vec<(u32, Annotation)>>;
    /// A session's pending writes in key order, whether their checkpoint is
    /// stored or not.
    fn writes_of_session(&self, session: SessionId) -> Items<'_, StoredWrite>;
    /// Journal events with a sequence above `after`, in order.
    fn events_after(&self, after: u64) -> Items<'_, JournalEvent>;
    /// Every check of the store's consistency.
    fn verify(&self) -> Result<Verification>;
}

impl Source for Inspector {
    fn summary(&self) -> Result<Summary> {
        Inspector::summary(self)
    }
    fn sessions(&self) -> Items<'_, (u64, Session)> {
        Box::new(Reader::sessions(self))
    }
    fn session(&self, id: SessionId) -> Result<Session> {
        Reader::session(self, id)
    }
    fn checkpoints(&self, session: SessionId) -> Items<'_, CheckpointSummary> {
        Box::new(Reader::checkpoints(self, session))
    }
    fn checkpoint(&self, id: CheckpointId) -> Result<Checkpoint> {
        Reader::checkpoint(self, id)
    }
    fn annotations(&self, id: CheckpointId) -> Result<Vec<(u32, Annotation)>> {
        Reader::annotations(self, id)
    }
    fn writes_of_session(&self, session: SessionId) -> Items<'_, StoredWrite> {
        Box::new(Reader::writes_of_session(self, session))
    }
    fn events_after(&self, after: u64) -> Items<'_, JournalEvent> {
        Box::new(Reader::events_after(self, after))
    }
    fn verify(&self) -> Result<Verification> {
        Inspector::verify(self)
    }
}

impl Source for PgInspector {
    fn summary(&self) -> Result<Summary> {
        PgInspector::summary(self)
    }
    fn sessions(&self) -> Items<'_, (u64, Session)> {
        Box::new(PgInspector::sessions(self))
    }
    fn session(&self, id: SessionId) -> Result<Session> {
        PgInspector::session(self, id)
    }
    fn checkpoints(&self, session: SessionId) -> Items<'_, CheckpointSummary> {
        Box::new(PgInspector::checkpoints(self, session))
    }
    fn checkpoint(&self, id: CheckpointId) -> Result<Checkpoint> {
        PgInspector::checkpoint(self, id)
    }
    fn annotations(&self, id: CheckpointId) -> Result<Vec<(u32, Annotation)>> {
        PgInspector::annotations(self, id)
    }
    fn writes_of_session(&self, session: SessionId) -> Items<'_, StoredWrite> {
        match PgInspector::writes_of_session(self, session) {
            Ok(writes) => Box::new(writes.into_iter().map(Ok)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }
    fn events_after(&self, after: u64) -> Items<'_, JournalEvent> {
        Box::new(PgInspector::events_after(self, after))
    }
    fn verify(&self) -> Result<Verification> {
        PgInspector::verify(self)
    }
}
