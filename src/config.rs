//! Configuration of the store and server, and the limits every input obeys.
//! Each number here is a documented consequence, not a magic constant.

use std::path::PathBuf;
use std::time::Duration;

/// Longest checkpoint message, session name or annotation note, in bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Most tags on one checkpoint (and preserved tags in one retention policy).
pub const MAX_TAGS: usize = 64;
/// Longest tag, in bytes. Tags must not be empty.
pub const MAX_TAG_BYTES: usize = 256;
/// Longest client key of a session, namespace, or external checkpoint id.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest `metadata` object (session or checkpoint), as JSON text.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Most annotations one checkpoint can carry.
pub const MAX_ANNOTATIONS: u32 = 1024;
/// Largest page `list_checkpoints` / `list_sessions` returns; also the
/// default when no `limit` is given. Clients page on with `after`.
pub const MAX_PAGE: usize = 10_000;
/// A `list_checkpoints` page also ends once its messages and tags reach this
/// many bytes (at least one row is always returned), so a page of long
/// messages cannot make a reply of hundreds of megabytes.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Checkpoints one atomic change removes when a whole session is deleted;
/// a larger session is deleted in several changes, so that no intent record
/// (the change written whole before its keys) grows with the session.
pub const MAX_CHANGE_CHECKPOINTS: usize = 1024;
/// Pending writes one `put_writes` request may carry.
pub const MAX_WRITES_PER_REQUEST: usize = 10_000;
/// Pending writes one change removes at most when it deletes a session's
/// writes whose checkpoint was never stored (it takes more changes then).
pub const MAX_CHANGE_WRITES: usize = 16 * 1024;
/// Most ids `validate` lists in `invalid_ids` (the counts are always exact).
pub const MAX_REPORTED_INVALID: usize = 1_000;
/// Default number of journal events retained for `subscribe { since }`.
pub const DEFAULT_EVENT_RETENTION: u64 = 100_000;
/// Default sled page-cache size. sled's own default is 1 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// In `async` mode, the longest an acknowledged write stays only in memory,
/// as long as one flush + fsync takes at most `ASYNC_FLUSH_INTERVAL -
/// ASYNC_FLUSH_DELAY` (a disk that stalls longer stretches it; the server
/// logs a warning when that happens).
pub const ASYNC_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// How often, at most, the commit thread records the counters it has made
/// durable beside sled's files (`checkpointd.counters`; three fsyncs), so
/// that an open can tell a log that damage cut short from a crash.
pub const MARK_INTERVAL: Duration = Duration::from_secs(1);
/// How often, at most, the commit thread flushes sled's own log while
/// writes come in (a group commit only syncs the state segments, where each
/// change's intent is): an open re-applies at most this much of the newest
/// changes from the segments.
pub const SLED_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// In `async` mode, how long the first acknowledged write of a window waits
/// for others to share its flush. The rest of [`ASYNC_FLUSH_INTERVAL`] is
/// left for the flush itself.
pub const ASYNC_FLUSH_DELAY: Duration = Duration::from_millis(50);

/// When an acknowledged write is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Success is returned after the write is flushed and fdatasync'ed: it
    /// survives a process crash and a power loss. Concurrent writers share
    /// one fsync (group commit).
    #[default]
    Sync,
    /// Success is returned once the write is applied in memory; it is flushed
    /// and synced within [`ASYNC_FLUSH_INTERVAL`]. A crash may lose that window.
    Async,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Async => "async",
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(Durability::Sync),
            "async" => Ok(Durability::Async),
            other => Err(format!("durability must be sync or async, not {other:?}")),
        }
    }
}

/// How to open a data directory.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Journal events kept for replay; older ones are trimmed as new ones land.
    pub event_retention: u64,
    /// sled page-cache budget in bytes.
    pub cache_bytes: u64,
    /// Before migrating an older format, copy the directory to
    /// `<data_dir>.backup-v<old version>`.
    pub backup_before_migrate: bool,
    /// A state segment is sealed at this size (`storage::segments`).
    pub segment_bytes: u64,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            durability: Durability::Sync,
            event_retention: DEFAULT_EVENT_RETENTION,
            cache_bytes: DEFAULT_CACHE_BYTES,
            backup_before_migrate: true,
            segment_bytes: crate::storage::segments::SEGMENT_BYTES,
        }
    }
}

/// Events one subscription may have queued. When a subscriber falls this far
/// behind, its subscription ends with `subscription_lagged` (naming the last
/// event it was given) instead of slowing writers or other subscribers.
pub const SUBSCRIBER_QUEUE_EVENTS: usize = 1024;
/// Journal events the watch-draining thread may hold for an event
/// dispatcher the runtime has not scheduled yet (about 100 bytes each).
/// Beyond it, writers wait instead of memory growing.
pub const WATCH_FORWARD_EVENTS: usize = 65_536;
/// Journal events read per step while replaying `subscribe { since }`.
pub const REPLAY_PAGE_EVENTS: usize = 256;

// ----- the PostgreSQL store (`storage::postgres`) -------------------------------

/// Connections one server opens to PostgreSQL at most for writes, reads and
/// reading the journal; one more listens for notifications. Requests beyond
/// them wait for a free one (up to [`PG_TIMEOUT`]).
pub const PG_CONNECTIONS: usize = 8;
/// Writes waiting for the group-commit task. Beyond it, writers wait for
/// room instead of memory growing.
pub const PG_WRITE_QUEUE: usize = 1024;
/// Most writes one group-commit transaction carries (each in its own
/// savepoint): 16 per transaction measured 12-17k/s on 2 cores, against
/// 1,150-1,500/s for one.
pub const PG_BATCH_WRITES: usize = 64;
/// A transaction takes no further write once its writes reach this many
/// bytes (it always takes one): a large import or state commits alone.
pub const PG_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Longest wait for a connection, a read or a write transaction: past it the
/// request fails with `unavailable` (the connection is dropped) instead of
/// hanging while the database is unreachable.
pub const PG_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait to connect (or reconnect) to PostgreSQL.
pub const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the journal is read without a notification: the fallback that
/// finds events whose NOTIFY was lost (the listening connection was down).
pub const PG_EVENT_POLL: Duration = Duration::from_millis(500);
/// How long event dispatch waits before reading the journal again after a
/// read failed (the database restarting): the event is retried, never
/// skipped.
pub const DISPATCH_RETRY: Duration = Duration::from_millis(100);
/// Journal events read per query by the event feed.
pub const PG_EVENT_PAGE: usize = 1024;
/// Events the feed may hold for the hub's draining thread before the feed
/// waits (about 100 bytes each).
pub const PG_FEED_EVENTS: usize = 4096;
