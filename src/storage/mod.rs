//! Durable storage: the interface the service uses, and its sled
//! implementation, the only code that knows trees, key bytes and records.
//!
//! - [`backend`]: the interface ([`Backend`]) and the contract every store
//!   keeps: atomic writes, acknowledged = durable, reads show only durable
//!   data, sequence numbers never reused, the event journal.
//! - [`error`]: what storage fails with ([`StorageError`]); one conversion
//!   maps it to wire codes.
//!
//! The sled implementation, from the top:
//!
//! - [`store`]: [`Store`], the [`Backend`] on a data directory: the write
//!   pipeline (write lock, atomic change, group commit) and settled reads.
//! - [`writes`]: the operations, each building one atomic change.
//! - [`import`]: records written elsewhere, as one change per batch.
//! - [`change`]: the atomic change itself: ops, intent record, replay.
//! - [`reads`]: every read, written once ([`Reader`]): the store, the
//!   operations, `verify` and the inspector use it; [`pending`]: the reads
//!   of pending writes with their keys (`checkpoint-dump`, export, `verify`).
//! - [`journal`]: the live feed of journal appends; trimming.
//! - [`commit`]: group commit, fsync and the durable mark.
//! - [`segments`]: the value log where states and pending-write values too
//!   large for sled live (format 3); [`compaction`]: reclaiming their
//!   dead space in the background.
//! - [`keys`]: the whole key schema; [`records`] and [`codec`]: the stored
//!   shapes and their encoding.
//! - [`datadir`]: opening a data directory safely (damage, locks, marks);
//!   [`migrate`]: format versions and upgrades.
//! - [`source`]: what `checkpoint-dump` and export read, from a sled copy
//!   ([`Inspector`]) or a PostgreSQL snapshot (`postgres::inspect`).
//! - [`verify`], [`inspect`]: `checkpoint-dump`'s checks and private copies;
//!   [`dircopy`]: copying a data directory.

pub mod backend;
pub mod change;
pub mod codec;
pub mod commit;
pub mod compaction;
pub mod datadir;
pub mod dircopy;
pub mod error;
pub mod import;
pub mod inspect;
pub mod journal;
pub mod keys;
pub mod migrate;
pub mod pending;
pub mod postgres;
pub mod reads;
pub mod records;
pub mod segments;
pub mod source;
pub mod store;
pub mod verify;
pub mod writes;

pub use backend::{Appended, Backend, DurableMark, EventFeed, SharedBackend, WritePause};
pub use error::{Result, StorageError};
pub use import::{ImportAnnotation, ImportBatch, ImportCheckpoint, ImportCounts, ImportSession};
pub use inspect::{Inspector, Migration, Summary};
pub use pending::StoredWrite;
pub use postgres::PgStore;
pub use reads::Reader;
pub use store::Store;
pub use verify::Verification;

#[cfg(test)]
mod tests;
