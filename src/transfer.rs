//! Moving data between data directories: `checkpoint-dump export` writes
//! JSON lines, `checkpointd import` loads them into an empty directory with
//! the same ids, sequence numbers, timestamps and states, and
//! `checkpointd import --forge-export` loads forge-reasoning's
//! `export_all_checkpoints` file.
//!
//! # Export format (one JSON object per line)
//!
//! 1. `{"type":"header","export_version":2,"format_version":..,"global_sequence":..,"event_sequence":..,
//!    "sessions_created":..,"sessions":..,"checkpoints":..,"annotations":..,"writes":..,"exported_at":..}`
//! 2. per session, in creation order: `{"type":"session","id","ordinal","name","created_at","metadata","retention"[,"key"]}`,
//!    then its checkpoints in sequence order, each
//!    `{"type":"checkpoint","id","session_id","sequence_number","timestamp","message","tags","trigger",
//!    "parent_id","metadata","state"[,"namespace","external_id","parent_external_id"]}` followed by its
//!    `{"type":"annotation","checkpoint_id","index","note","severity","timestamp"}` lines,
//! 3. then the session's pending writes in key order (namespace, external
//!    id, task id, idx), whether their checkpoint is stored or not:
//!    `{"type":"write","session_id","namespace","external_id","task_id","task_path","idx","channel","value"}`.
//!
//! `state`, `metadata` and a write's `value` are the stored JSON text, byte
//! for byte; stored JSON that spans lines travels as a string in
//! `state_text` / `metadata_text` / `value_text` instead (with `null` in
//! `state` / `metadata` / `value`). A session's `key` and a checkpoint's
//! `namespace` (when not `""`), `external_id` and `parent_external_id` are
//! written only when set. The journal is not exported; the event sequence is
//! carried over instead, so numbers handed out after an import stay above
//! every exported one.
//!
//! Export version 2 (format 2) added the keys, namespaces, external ids and
//! write lines, and the header's `writes`; version 1 exports import as they
//! are. A checkpointd that reads only version 1 refuses a version-2 export
//! rather than drop what it cannot store.

use crate::error::{Error, Result};
use crate::model::{Annotation, Checkpoint, CheckpointId, RetentionPolicy, SessionId, Severity, Trigger, json_null};
use crate::protocol::reply::timestamp;
use crate::rules::{check_import, check_key, check_text};
use crate::storage::source::Source;
use crate::storage::{
    Backend, ImportAnnotation, ImportBatch, ImportCheckpoint, ImportCounts, ImportSession, Store, StoredWrite,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};

/// Version of the export format (not of the on-disk format).
pub const EXPORT_VERSION: u32 = 2;
/// The export versions [`import`] reads.
pub const READS_EXPORT_VERSIONS: [u32; 2] = [1, 2];
/// Checkpoints per import write; each write is one atomic change.
const BATCH_CHECKPOINTS: usize = 512;
/// Pending writes per import write.
const BATCH_WRITES: usize = 4096;
/// Rough bytes per import write.
const BATCH_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    r#type: String,
    export_version: u32,
    format_version: Option<u32>,
    global_sequence: u64,
    event_sequence: u64,
    sessions_created: u64,
    sessions: u64,
    checkpoints: u64,
    annotations: u64,
    /// Pending writes; since export version 2.
    #[serde(default)]
    writes: u64,
    exported_at: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct SessionLine {
    r#type: String,
    id: SessionId,
    ordinal: u64,
    name: String,
    created_at: DateTime<Utc>,
    metadata: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata_text: Option<String>,
    retention: Option<RetentionPolicy>,
    /// Since format 2; absent when the session has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointLine {
    r#type: String,
    id: CheckpointId,
    session_id: SessionId,
    sequence_number: u64,
    timestamp: DateTime<Utc>,
    message: String,
    tags: Vec<String>,
    trigger: String,
    parent_id: Option<CheckpointId>,
    metadata: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata_text: Option<String>,
    state: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state_text: Option<String>,
    /// Since format 2; absent for the root namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    namespace: String,
    /// Since format 2; absent when the checkpoint has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    external_id: Option<String>,
    /// Since format 2; absent when the parent has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent_external_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct AnnotationLine {
    r#type: String,
    checkpoint_id: CheckpointId,
    index: u32,
    note: String,
    severity: String,
    timestamp: DateTime<Utc>,
}

/// A pending write (since export version 2).
#[derive(Debug, Serialize, Deserialize)]
struct WriteLine {
    r#type: String,
    session_id: SessionId,
    #[serde(default)]
    namespace: String,
    external_id: String,
    task_id: String,
    #[serde(default)]
    task_path: String,
    idx: i32,
    channel: String,
    value: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_text: Option<String>,
}

#[derive(Deserialize)]
struct LineType {
    r#type: String,
}

/// Stored JSON that spans lines (a client may send pretty-printed JSON, kept
/// byte for byte) would break the one-object-per-line format: it travels as
/// a string in `<field>_text` instead, with `null` in `<field>`.
fn split_raw(raw: Box<RawValue>) -> (Box<RawValue>, Option<String>) {
    if raw.get().contains(['\n', '\r']) { (json_null(), Some(raw.get().to_string())) } else { (raw, None) }
}

fn join_raw(raw: Box<RawValue>, text: Option<String>, what: &str) -> Result<Box<RawValue>> {
    match text {
        Some(t) => RawValue::from_string(t).map_err(|e| Error::invalid(format!("{what}_text is not JSON: {e}"))),
        None => Ok(raw),
    }
}

fn write_line<T: Serialize>(out: &mut dyn Write, line: &T) -> Result<()> {
    serde_json::to_writer(&mut *out, line).map_err(|e| Error::Internal(format!("cannot write export: {e}")))?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Writes everything in the inspected store (a data directory's copy or a
/// database's snapshot) as export lines; returns what was written. Shows
/// its progress ([`crate::progress`]): one item per line.
pub fn export(ins: &dyn Source, out: &mut dyn Write) -> Result<ImportCounts> {
    let summary = ins.summary()?;
    let lines = 1 + summary.sessions + summary.checkpoints + summary.annotations + summary.writes;
    let progress = crate::progress::Progress::start("export", Some(lines));
    let result = export_to(ins, summary, &mut crate::progress::CountingWriter { inner: out, progress: &progress });
    progress.finish(result.is_ok());
    result
}

fn export_to(ins: &dyn Source, summary: crate::storage::Summary, out: &mut dyn Write) -> Result<ImportCounts> {
    let sequences = summary.sequences.unwrap_or_default();
    write_line(
        out,
        &Header {
            r#type: "header".into(),
            export_version: EXPORT_VERSION,
            format_version: summary.format_version,
            global_sequence: sequences.checkpoint,
            event_sequence: sequences.event,
            sessions_created: sequences.sessions_created,
            sessions: summary.sessions,
            checkpoints: summary.checkpoints,
            annotations: summary.annotations,
            writes: summary.writes,
            exported_at: timestamp(Utc::now()),
        },
    )?;
    let mut counts = ImportCounts::default();
    for session in ins.sessions() {
        let (ordinal, s) = session?;
        let (metadata, metadata_text) = split_raw(s.metadata);
        write_line(
            out,
            &SessionLine {
                r#type: "session".into(),
                id: s.id,
                ordinal,
                name: s.name,
                created_at: s.created_at,
                metadata,
                metadata_text,
                retention: s.retention,
                key: s.key,
            },
        )?;
        counts.sessions += 1;
        for summary in ins.checkpoints(s.id) {
            let id = summary?.id;
            let Checkpoint { summary: c, state, metadata, .. } = ins.checkpoint(id)?;
            let (state, state_text) = split_raw(state);
            let (metadata, metadata_text) = split_raw(metadata);
            write_line(
                out,
                &CheckpointLine {
                    r#type: "checkpoint".into(),
                    id,
                    session_id: c.session_id,
                    sequence_number: c.sequence_number,
                    timestamp: c.timestamp,
                    message: c.message,
                    tags: c.tags,
                    trigger: c.trigger.to_string(),
                    parent_id: c.parent_id,
                    metadata,
                    metadata_text,
                    state,
                    state_text,
                    namespace: c.namespace,
                    external_id: c.external_id,
                    parent_external_id: c.parent_external_id,
                },
            )?;
            counts.checkpoints += 1;
            for (index, a) in ins.annotations(id)? {
                write_line(
                    out,
                    &AnnotationLine {
                        r#type: "annotation".into(),
                        checkpoint_id: id,
                        index,
                        note: a.note,
                        severity: a.severity.as_str().into(),
                        timestamp: a.timestamp,
                    },
                )?;
                counts.annotations += 1;
            }
        }
        for w in ins.writes_of_session(s.id) {
            let w = w?;
            let (value, value_text) = split_raw(w.value);
            write_line(
                out,
                &WriteLine {
                    r#type: "write".into(),
                    session_id: w.session_id,
                    namespace: w.namespace,
                    external_id: w.external_id,
                    task_id: w.task_id,
                    task_path: w.task_path,
                    idx: w.idx,
                    channel: w.channel,
                    value,
                    value_text,
                },
            )?;
            counts.writes += 1;
        }
    }
    out.flush()?;
    let announced = ImportCounts {
        sessions: summary.sessions,
        checkpoints: summary.checkpoints,
        annotations: summary.annotations,
        writes: summary.writes,
    };
    if counts != announced {
        return Err(Error::Internal(format!(
            "exported {counts:?}, but the directory holds {announced:?}: some records belong to no listed session or checkpoint; run verify"
        )));
    }
    Ok(counts)
}

/// The rules of `put_writes`, for imported pending writes.
fn check_writes(writes: &[StoredWrite]) -> Result<()> {
    for w in writes {
        check_key("namespace", &w.namespace, true)?;
        check_key("external id", &w.external_id, false)?;
        check_key("task id", &w.task_id, false)?;
        check_text("task path", &w.task_path, true)?;
        check_text("channel", &w.channel, false)?;
    }
    Ok(())
}

/// One batch through the rules every record obeys, then into the store.
async fn import_batch(store: &dyn Backend, batch: ImportBatch) -> Result<ImportCounts> {
    check_import(&batch)?;
    check_writes(&batch.writes)?;
    Ok(store.import(batch).await?)
}

fn parse<'a, T: Deserialize<'a>>(line: &'a str, n: usize) -> Result<T> {
    serde_json::from_str(line).map_err(|e| Error::invalid(format!("line {n}: {e}")))
}

/// Loads an export into `store` (a data directory's or a database's),
/// which must be pristine (never written). Writes in atomic batches; on an
/// error the store holds a prefix of the export and should be discarded.
pub async fn import(store: &dyn Backend, input: impl BufRead) -> Result<ImportCounts> {
    if !store.is_pristine().await? {
        return Err(Error::Conflict(match store.data_dir() {
            Some(dir) => format!("data directory {} is not empty; import loads into an empty one", dir.display()),
            None => "the database is not empty; import loads into an empty one".to_string(),
        }));
    }
    let mut lines = input.lines().enumerate().map(|(i, l)| (i + 1, l));
    let header: Header = loop {
        match lines.next() {
            Some((_, Ok(l))) if l.trim().is_empty() => continue,
            Some((n, Ok(l))) => match parse::<Header>(&l, n) {
                Ok(h) if h.r#type == "header" => break h,
                _ => return Err(Error::invalid(format!("line {n}: not a checkpoint-dump export header"))),
            },
            Some((_, Err(e))) => return Err(e.into()),
            None => return Err(Error::invalid("the export is empty")),
        }
    };
    if !READS_EXPORT_VERSIONS.contains(&header.export_version) {
        return Err(Error::invalid(format!(
            "export version {} is not one this checkpointd reads ({READS_EXPORT_VERSIONS:?})",
            header.export_version
        )));
    }
    let fresh = || ImportBatch {
        global_seq_floor: header.global_sequence,
        event_seq_floor: header.event_sequence,
        sessions_created_floor: header.sessions_created,
        ..ImportBatch::default()
    };
    let mut batch = fresh();
    let mut total = ImportCounts::default();
    let records = header.sessions + header.checkpoints + header.annotations + header.writes;
    let progress = crate::progress::Progress::start("import", Some(records));
    for (n, line) in lines {
        let line = line?;
        progress.inc(u64::from(!line.trim().is_empty()), line.len() as u64 + 1);
        if line.trim().is_empty() {
            continue;
        }
        let at = |e: Error| e.context(format_args!("line {n}"));
        match parse::<LineType>(&line, n)?.r#type.as_str() {
            "session" => {
                let s: SessionLine = parse(&line, n)?;
                batch.sessions.push(ImportSession {
                    id: s.id,
                    ordinal: Some(s.ordinal),
                    name: s.name,
                    created_at: s.created_at,
                    metadata: join_raw(s.metadata, s.metadata_text, "metadata").map_err(at)?,
                    retention: s.retention,
                    key: s.key,
                });
            }
            "checkpoint" => {
                let c: CheckpointLine = parse(&line, n)?;
                let trigger = c.trigger.parse::<Trigger>().map_err(|e| at(Error::invalid(e)))?;
                batch.checkpoints.push(ImportCheckpoint {
                    id: c.id,
                    session_id: c.session_id,
                    sequence_number: c.sequence_number,
                    timestamp: c.timestamp,
                    message: c.message,
                    tags: c.tags,
                    trigger,
                    metadata: join_raw(c.metadata, c.metadata_text, "metadata").map_err(at)?,
                    parent_id: c.parent_id,
                    state: join_raw(c.state, c.state_text, "state").map_err(at)?,
                    namespace: c.namespace,
                    external_id: c.external_id,
                    parent_external_id: c.parent_external_id,
                });
            }
            "annotation" => {
                let a: AnnotationLine = parse(&line, n)?;
                let severity = a.severity.parse::<Severity>().map_err(|e| at(Error::invalid(e)))?;
                batch.annotations.push(ImportAnnotation {
                    checkpoint_id: a.checkpoint_id,
                    index: Some(a.index),
                    annotation: Annotation { note: a.note, severity, timestamp: a.timestamp },
                });
            }
            "write" => {
                let w: WriteLine = parse(&line, n)?;
                batch.writes.push(StoredWrite {
                    session_id: w.session_id,
                    namespace: w.namespace,
                    external_id: w.external_id,
                    task_id: w.task_id,
                    task_path: w.task_path,
                    idx: w.idx,
                    channel: w.channel,
                    value: join_raw(w.value, w.value_text, "value").map_err(at)?,
                });
            }
            other => return Err(Error::invalid(format!("line {n}: unknown line type {other:?}"))),
        }
        if batch.checkpoints.len() >= BATCH_CHECKPOINTS
            || batch.writes.len() >= BATCH_WRITES
            || batch.approx_bytes() >= BATCH_BYTES
        {
            total += import_batch(store, std::mem::replace(&mut batch, fresh())).await.map_err(at)?;
        }
    }
    // Also carries the counters over when the export holds no records.
    total += import_batch(store, batch).await?;
    let expected = ImportCounts {
        sessions: header.sessions,
        checkpoints: header.checkpoints,
        annotations: header.annotations,
        writes: header.writes,
    };
    if total != expected {
        return Err(Error::invalid(format!(
            "the export is incomplete: its header announces {expected:?}, it holds {total:?}"
        )));
    }
    progress.finish(true);
    Ok(total)
}

// ----- forge-reasoning ------------------------------------------------------

/// forge-reasoning's `export_all_checkpoints` file.
#[derive(Deserialize)]
struct ForgeExport {
    checkpoints: Vec<ForgeCheckpoint>,
    #[serde(default)]
    global_sequence: u64,
}

/// forge-reasoning's `TemporalCheckpoint`.
#[derive(Deserialize)]
struct ForgeCheckpoint {
    id: uuid::Uuid,
    timestamp: DateTime<Utc>,
    sequence_number: u64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    tags: Vec<String>,
    state: Box<RawValue>,
    trigger: serde_json::Value,
    session_id: uuid::Uuid,
    #[serde(default)]
    checksum: Option<String>,
}

/// What a forge import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForgeReport {
    pub imported: u64,
    /// Checkpoints whose id already existed (or repeated in the file).
    pub skipped: u64,
    pub sessions_created: u64,
    /// Sessions that already existed and received checkpoints.
    pub sessions_reused: u64,
    /// The global sequence after the import.
    pub global_sequence: u64,
}

/// The session a forge session becomes.
pub fn forge_session_name(id: SessionId) -> String {
    format!("forge:{id}")
}

/// forge's `CheckpointTrigger`, serialised by serde: `"Manual"`,
/// `"Scheduled"`, or `{"Automatic": "<AutoTrigger>"}` (`"Auto"` in some
/// versions).
fn forge_trigger(v: &serde_json::Value) -> Option<Trigger> {
    use serde_json::Value;
    let auto = |kind: Option<&Value>| match kind {
        None | Some(Value::Null) => Some(Trigger::Auto(None)),
        Some(Value::String(k)) if !k.is_empty() && k.len() <= crate::config::MAX_TAG_BYTES => {
            Some(Trigger::Auto(Some(k.clone())))
        }
        _ => None,
    };
    match v {
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "manual" => Some(Trigger::Manual),
            "scheduled" => Some(Trigger::Scheduled),
            "auto" | "automatic" => Some(Trigger::Auto(None)),
            _ => None,
        },
        Value::Object(m) if m.len() == 1 => {
            let (k, kind) = m.iter().next()?;
            matches!(k.to_ascii_lowercase().as_str(), "auto" | "automatic").then(|| auto(Some(kind)))?
        }
        _ => None,
    }
}

/// Loads forge-reasoning's export into `store`. Each forge session becomes
/// a session named `forge:<id>` with the same id; ids, sequence numbers,
/// timestamps, messages, tags and triggers are kept; `state` (which holds the
/// forge host's environment variables) is stored only with `keep_state`,
/// otherwise null. forge checksums are not verified (see
/// docs/operations.md); each is kept in the checkpoint's metadata as
/// `forge_checksum`. Ids already present are skipped. Refuses the whole file,
/// before writing anything, when a sequence number is 0, repeated, or used
/// by another checkpoint here.
pub async fn import_forge(store: &Store, text: &str, keep_state: bool) -> Result<ForgeReport> {
    let export: ForgeExport =
        serde_json::from_str(text).map_err(|e| Error::invalid(format!("not a forge-reasoning export: {e}")))?;
    let mut cps = export.checkpoints;
    cps.sort_by_key(|c| c.sequence_number);
    let mut report = ForgeReport::default();
    let mut first_seen: HashMap<SessionId, DateTime<Utc>> = HashMap::new();
    let mut seen_ids = HashSet::new();
    let mut seqs = HashSet::new();
    let mut todo = Vec::new();
    for c in cps {
        let session = SessionId(c.session_id);
        let earliest = first_seen.entry(session).or_insert(c.timestamp);
        *earliest = (*earliest).min(c.timestamp);
        let id = CheckpointId(c.id);
        if !seen_ids.insert(id) || store.reader().contains_checkpoint(id)? {
            report.skipped += 1;
            continue;
        }
        let seq = c.sequence_number;
        if seq == 0 {
            return Err(Error::invalid(format!("forge checkpoint {id} has sequence 0; sequences start at 1")));
        }
        if !seqs.insert(seq) || store.reader().sequence_in_use(seq)? {
            return Err(Error::Conflict(format!(
                "forge checkpoint {id} has sequence {seq}, which another checkpoint already uses; nothing was imported"
            )));
        }
        let trigger = forge_trigger(&c.trigger)
            .ok_or_else(|| Error::invalid(format!("forge checkpoint {id}: unknown trigger {}", c.trigger)))?;
        let mut tags: Vec<String> = Vec::with_capacity(c.tags.len());
        for t in c.tags {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        let metadata = match &c.checksum {
            Some(sum) => serde_json::json!({ "forge_checksum": sum }).to_string(),
            None => "{}".to_string(),
        };
        todo.push(ImportCheckpoint {
            id,
            session_id: session,
            sequence_number: seq,
            timestamp: c.timestamp,
            message: c.message,
            tags,
            trigger,
            metadata: RawValue::from_string(metadata).expect("serde_json renders JSON"),
            parent_id: None,
            state: if keep_state { c.state } else { json_null() },
            namespace: String::new(),
            external_id: None,
            parent_external_id: None,
        });
    }
    let mut batch = ImportBatch { global_seq_floor: export.global_sequence, ..ImportBatch::default() };
    let mut sessions_done = HashSet::new();
    for c in &todo {
        if !sessions_done.insert(c.session_id) {
            continue;
        }
        if store.reader().contains_session(c.session_id)? {
            report.sessions_reused += 1;
        } else {
            batch.sessions.push(ImportSession {
                id: c.session_id,
                ordinal: None,
                name: forge_session_name(c.session_id),
                created_at: first_seen[&c.session_id],
                metadata: RawValue::from_string(r#"{"imported_from":"forge-reasoning"}"#.to_string())
                    .expect("literal JSON"),
                retention: None,
                key: None,
            });
        }
    }
    for c in todo {
        batch.checkpoints.push(c);
        if batch.checkpoints.len() >= BATCH_CHECKPOINTS || batch.approx_bytes() >= BATCH_BYTES {
            let floor = batch.global_seq_floor;
            let done = import_batch(store, std::mem::take(&mut batch)).await?;
            batch.global_seq_floor = floor;
            report.imported += done.checkpoints;
            report.sessions_created += done.sessions;
        }
    }
    let done = import_batch(store, batch).await?;
    report.imported += done.checkpoints;
    report.sessions_created += done.sessions;
    report.global_sequence = store.metrics().await?.global_sequence;
    Ok(report)
}
