//! Format 2 → 3: large values move to state segments, and times are
//! nanoseconds (issue 11).
//!
//! - Every state, and every pending write's value, longer than 8 KiB is
//!   appended to the directory's state segments (`segments/`), and sled keeps
//!   a pointer to it (see `storage::segments`): sled 0.34 kept such values
//!   as blob files it did not reliably delete. The segments are fdatasynced
//!   before the step's transaction (the runner does it).
//! - Every stored time (a session's `created_at`, a checkpoint's, an
//!   annotation's and a journal event's `timestamp`) is multiplied by 1000:
//!   format 3 stores nanoseconds since the epoch, so an imported
//!   `…07.123456789Z` keeps its digits. A time past 2262 (beyond `i64`
//!   nanoseconds) fails the step, which then changes nothing.
//!
//! Records are positional (bincode): only the fields up to each time are
//! decoded (this step's own copies of their shapes), the time is rewritten,
//! and the rest of the record is kept byte for byte.

use crate::storage::codec;
use crate::storage::error::{Result, StorageError};
use crate::storage::keys::TreeId;
use crate::storage::migrate::{Step, StepWrite};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const STEP: Step = Step { from: 2, name: "segments_and_nanoseconds", run };

/// Values longer than this moved out of sled (format 3's
/// `segments::VALUE_THRESHOLD`, copied: a later threshold may differ).
const THRESHOLD: usize = 8 * 1024;

/// A session record's fields up to its time, as format 2 stored them.
#[derive(Serialize, Deserialize)]
struct SessionHead {
    id: Uuid,
    ordinal: u64,
    name: String,
    created_at: i64,
}

/// A checkpoint record's fields up to its time.
#[derive(Serialize, Deserialize)]
struct CheckpointHead {
    id: Uuid,
    session_id: Uuid,
    sequence_number: u64,
    timestamp: i64,
}

/// An annotation record's fields up to its time (the severity is a unit
/// variant, stored as its index).
#[derive(Serialize, Deserialize)]
struct AnnotationHead {
    note: String,
    severity: u32,
    timestamp: i64,
}

/// A journal event record's fields up to its time.
#[derive(Serialize, Deserialize)]
struct EventHead {
    session_id: Uuid,
    timestamp: i64,
}

/// A pending write record as format 2 stored it.
#[derive(Serialize, Deserialize)]
struct WriteV2 {
    task_path: String,
    channel: String,
    value: Vec<u8>,
}

fn to_nanos(micros: i64, what: &str) -> Result<i64> {
    micros.checked_mul(1000).ok_or_else(|| {
        StorageError::Refused(format!("{what}: time {micros} µs is beyond what format 3 stores (year 2262)"))
    })
}

fn run(w: &mut StepWrite<'_>) -> Result<()> {
    for entry in w.tree("sessions")?.iter() {
        let (k, v) = entry?;
        let v = codec::rewrite_head(&v, "session (format 2)", |h: &mut SessionHead| {
            h.created_at = to_nanos(h.created_at, "session")?;
            Ok(())
        })?;
        w.put("sessions", k, v)?;
    }
    for entry in w.tree("checkpoints")?.iter() {
        let (k, v) = entry?;
        let v = codec::rewrite_head(&v, "checkpoint (format 2)", |h: &mut CheckpointHead| {
            h.timestamp = to_nanos(h.timestamp, "checkpoint")?;
            Ok(())
        })?;
        w.put("checkpoints", k, v)?;
    }
    for entry in w.tree("annotations")?.iter() {
        let (k, v) = entry?;
        let v = codec::rewrite_head(&v, "annotation (format 2)", |h: &mut AnnotationHead| {
            h.timestamp = to_nanos(h.timestamp, "annotation")?;
            Ok(())
        })?;
        w.put("annotations", k, v)?;
    }
    for entry in w.tree("events")?.iter() {
        let (k, v) = entry?;
        let v = codec::rewrite_head(&v, "journal event (format 2)", |h: &mut EventHead| {
            h.timestamp = to_nanos(h.timestamp, "journal event")?;
            Ok(())
        })?;
        w.put("events", k, v)?;
    }
    for entry in w.tree("states")?.iter() {
        let (k, v) = entry?;
        if v.len() > THRESHOLD {
            let pointer = w.append_value(TreeId::States, &k, &v)?;
            w.put("states", k, pointer)?;
        }
    }
    for entry in w.tree("writes")?.iter() {
        let (k, v) = entry?;
        let mut rec: WriteV2 = codec::decode(&v, "pending write (format 2)")?;
        if rec.value.len() > THRESHOLD {
            rec.value = w.append_value(TreeId::Writes, &k, &rec.value)?;
            w.put("writes", k, codec::encode(&rec))?;
        }
    }
    Ok(())
}
