//! Format 3 → 4: a change's intent moves from sled to the state segments.
//!
//! Format 3 wrote each change first as one intent record in sled's meta
//! tree (`intent`), then its keys, and the group commit flushed sled's log.
//! Format 4 appends the intent to the state segments and ends each change
//! with an `applied` mark in the meta tree: where in the segments the intent
//! after that change starts. The group commit syncs only the segments; at
//! open every intent after the mark is re-applied (`storage::change`). So a
//! format-3 binary must not open a format-4 directory: it would not see
//! the intents sled does not hold yet.
//!
//! Nothing is converted: opening a format-3 directory already re-applied
//! and removed its last intent. The step records the mark at the start of
//! the segment after the newest one, where format 4's first intent will
//! go (segment ids only grow), so that recovery never walks the values of
//! format-3 segments looking for intents.

use crate::storage::error::Result;
use crate::storage::migrate::{Step, StepWrite};

pub const STEP: Step = Step { from: 3, name: "intents_in_segments", run };

fn run(w: &mut StepWrite<'_>) -> Result<()> {
    let next = w.newest_segment().map_or(1, |id| id + 1);
    // Format 4's mark: segment id, then offset, big-endian.
    let mut mark = [0u8; 12];
    mark[..4].copy_from_slice(&next.to_be_bytes());
    w.put("meta", b"applied", mark)?;
    Ok(())
}
