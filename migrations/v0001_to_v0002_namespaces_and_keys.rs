//! Format 1 → 2: client keys for sessions, namespaces and external ids for
//! checkpoints (the LangGraph checkpointer's needs, issue 10).
//!
//! A session record gains `key` (none for every existing session), and a
//! checkpoint record `namespace` (`""`), `external_id` and
//! `parent_external_id` (none). The new `writes` tree starts empty. Records
//! are positional (bincode), so every one is rewritten. Every checkpoint
//! also gets its entry in the new `namespaces` index; the new
//! `session_keys` and `external_ids` indexes start empty.

use crate::model::{CheckpointId, RetentionPolicy, SessionId, Trigger};
use crate::storage::codec;
use crate::storage::error::Result;
use crate::storage::migrate::{Step, StepWrite};
use serde::Deserialize;

pub const STEP: Step = Step { from: 1, name: "namespaces_and_keys", run };

/// A session record as format 1 stored it.
#[derive(Deserialize)]
struct SessionV1 {
    id: SessionId,
    ordinal: u64,
    name: String,
    created_at: i64,
    metadata: Vec<u8>,
    retention: Option<RetentionPolicy>,
    checkpoint_count: u64,
    last_sequence: Option<u64>,
}

/// A checkpoint record as format 1 stored it.
#[derive(Deserialize)]
struct CheckpointV1 {
    id: CheckpointId,
    session_id: SessionId,
    sequence_number: u64,
    timestamp: i64,
    message: String,
    tags: Vec<String>,
    trigger: Trigger,
    metadata: Vec<u8>,
    parent_id: Option<CheckpointId>,
    state_crc: u32,
}

/// Format 2's records are format 1's with fields appended: encoded here as
/// tuples of the same fields in the same order (bincode writes a struct as
/// its fields in order), so this step needs no later code's types.
fn run(w: &mut StepWrite<'_>) -> Result<()> {
    let sessions = w.tree("sessions")?;
    for entry in sessions.iter() {
        let (k, v) = entry?;
        let v1: SessionV1 = codec::decode(&v, "session (format 1)")?;
        w.put(
            "sessions",
            k,
            codec::encode(&(
                v1.id,
                v1.ordinal,
                v1.name,
                v1.created_at,
                v1.metadata,
                v1.retention,
                v1.checkpoint_count,
                v1.last_sequence,
                None::<String>,
            )),
        )?;
    }
    let checkpoints = w.tree("checkpoints")?;
    for entry in checkpoints.iter() {
        let (k, v) = entry?;
        let c: CheckpointV1 = codec::decode(&v, "checkpoint (format 1)")?;
        let index = namespace_key(c.session_id, c.sequence_number);
        w.put(
            "checkpoints",
            k,
            codec::encode(&(
                c.id,
                c.session_id,
                c.sequence_number,
                c.timestamp,
                c.message,
                c.tags,
                c.trigger,
                c.metadata,
                c.parent_id,
                c.state_crc,
                String::new(),
                None::<String>,
                None::<String>,
            )),
        )?;
        w.put("namespaces", index, [])?;
    }
    Ok(())
}

/// The `namespaces` key of a checkpoint in the root namespace, as format 2
/// spells it: session id · namespace length (2, zero) · sequence (8).
fn namespace_key(session: SessionId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(26);
    k.extend_from_slice(session.as_bytes());
    k.extend_from_slice(&0u16.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
