//! The event journal's sled side: the live feed of appends and the trim to
//! the configured retention. Events are appended by the operations
//! themselves (`Change::event`), inside their atomic change.

use super::backend::{Appended, EventFeed};
use super::error::Result;
use super::keys::{self, TreeId, Trees};
use super::reads::decode_event;
use sled::Batch;

/// Journal appends as sled reports them: before they are durable, and in
/// sequence order (writers are serialised by the write lock, and sled's
/// watch delivers one subscriber's events in the order they were written).
pub(crate) struct EventWatch {
    sub: sled::Subscriber,
}

impl EventWatch {
    pub fn new(trees: &Trees) -> EventWatch {
        EventWatch { sub: trees.get(TreeId::Events).watch_prefix(b"") }
    }
}

impl EventFeed for EventWatch {
    fn next_blocking(&mut self) -> Option<Appended> {
        loop {
            match Iterator::next(&mut self.sub)? {
                sled::Event::Insert { key, value } => match decode_event(&key, &value) {
                    Ok(event) => return Some(Appended::Event(event)),
                    Err(e) => {
                        tracing::error!(error = %e, "undecodable journal event");
                        if let Some(seq) = keys::decode_event_key(&key) {
                            return Some(Appended::Undecodable { seq });
                        }
                    }
                },
                // Retention trims show up as removals.
                sled::Event::Remove { .. } => {}
            }
        }
    }
}

/// Removes every event up to `keep_from` (exclusive), in bounded batches:
/// the journal after its retention was lowered. Not an atomic change: an
/// interrupted trim is finished at the next open.
pub(crate) fn trim(trees: &Trees, keep_from: u64) -> Result<()> {
    let events = trees.get(TreeId::Events);
    loop {
        let mut batch = Batch::default();
        let mut n = 0;
        for entry in events.range(..keys::event_key(keep_from)).keys().take(10_000) {
            batch.remove(entry?);
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        events.apply_batch(batch)?;
    }
}
