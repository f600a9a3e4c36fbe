//! Format 3 → 4: a change's intent moves from sled to the state segments,
//! and a new `segment_pointers` tree indexes every value in a segment.
//!
//! Format 3 wrote each change first as one intent record in sled's meta
//! tree (`intent`), then its keys, and the group commit flushed sled's log.
//! Format 4 appends the intent to the state segments and ends each change
//! with an `applied` mark in the meta tree: where in the segments the intent
//! after that change starts. The group commit syncs only the segments; at
//! open every intent after the mark is re-applied (`storage::change`). So a
//! format-3 binary must not open a format-4 directory: it would not see
//! the intents sled does not hold yet (nor keep `segment_pointers`).
//!
//! Nothing is converted for the intents: opening a format-3 directory
//! already re-applied and removed its last intent. The step records the
//! mark at the start of the segment after the newest one, where format 4's
//! first intent will go (segment ids only grow), so that recovery never
//! walks the values of format-3 segments looking for intents.
//!
//! Format 3 found each segment's live bytes at open by reading `states` and
//! `writes` whole, so opening took time in proportion to everything
//! stored. Format 4 keeps one `segment_pointers` entry per value that lives
//! in a segment: key = the value's owner (tree number · key, as segment
//! entries name it), value = the 22-byte pointer its tree holds; every
//! change maintains it, and opening reads only it. The step builds it from
//! every state that is a pointer and every pending write whose value is
//! one (this step's own copies of the pointer and write record shapes).

use crate::storage::codec;
use crate::storage::error::Result;
use crate::storage::migrate::{Step, StepWrite};

pub const STEP: Step = Step { from: 3, name: "intents_in_segments", run };

/// The tree numbers owners carry (format 3's `states` and `writes`).
const STATES: u8 = 4;
const WRITES: u8 = 13;

/// A pending write record as format 3 stores it: task path, channel, value
/// (bincode writes a struct as its fields in order).
type WriteV3 = (String, String, Vec<u8>);

/// Whether a stored value is a format-3 segment pointer: tag `\0S`, then
/// segment (4), offset (8), length (4) and CRC-32 (4).
fn is_pointer(stored: &[u8]) -> bool {
    stored.len() == 22 && stored[..2] == [0, b'S']
}

fn owner(tree: u8, key: &[u8]) -> Vec<u8> {
    let mut o = Vec::with_capacity(1 + key.len());
    o.push(tree);
    o.extend_from_slice(key);
    o
}

fn run(w: &mut StepWrite<'_>) -> Result<()> {
    let next = w.newest_segment().map_or(1, |id| id + 1);
    // Format 4's mark: segment id, then offset, big-endian.
    let mut mark = [0u8; 12];
    mark[..4].copy_from_slice(&next.to_be_bytes());
    w.put("meta", b"applied", mark)?;
    for entry in w.tree("states")?.iter() {
        let (k, v) = entry?;
        if is_pointer(&v) {
            w.put("segment_pointers", owner(STATES, &k), v)?;
        }
    }
    for entry in w.tree("writes")?.iter() {
        let (k, v) = entry?;
        // A record that does not decode counted nothing at a format-3 open
        // either: `verify` reports it, and the migration goes on.
        let Ok((_task_path, _channel, value)) = codec::decode::<WriteV3>(&v, "pending write (format 3)") else {
            continue;
        };
        if is_pointer(&value) {
            w.put("segment_pointers", owner(WRITES, &k), value)?;
        }
    }
    Ok(())
}
