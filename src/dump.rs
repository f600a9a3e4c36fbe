//! `checkpoint-dump`: what each command reads from a [`Source`] and how it
//! is printed: aligned tables with full ids, or JSON lines (`--json`) in the
//! wire protocol's shapes, for jq. The binary only parses arguments. The
//! source is a data directory ([`Inspector`]: a private copy) or, with
//! `database_url`, a PostgreSQL database ([`PgInspector`]: one read-only
//! snapshot).
//!
//! A directory of an older format is read through a private copy migrated
//! to the current format (the directory itself is never changed); every
//! command then says so in one line on stderr.

use crate::error::{Error, Result};
use crate::model::{CheckpointId, EventKind, JournalEvent, SessionId};
use crate::protocol::reply::{self, SummaryView, timestamp};
use crate::storage::postgres::PgInspector;
use crate::storage::source::Source;
use crate::storage::{Inspector, Migration, Summary, Verification};
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::io::Write;
use std::path::PathBuf;

/// Longest message shown in a table cell; `checkpoint ID` and `--json` show
/// it whole.
pub const MAX_MESSAGE_CHARS: usize = 80;

#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    /// A PostgreSQL database to read instead of `data_dir`.
    pub database_url: Option<String>,
    /// JSON lines instead of tables.
    pub json: bool,
    /// Read a copy taken without the directory's lock (a server may hold it).
    pub snapshot: bool,
}

/// One `checkpoint-dump` subcommand, as [`run`] performs it.
#[derive(Debug, Clone)]
pub enum Action {
    Summary,
    Sessions,
    Checkpoints {
        session: SessionId,
        with_state: bool,
    },
    Checkpoint {
        id: CheckpointId,
    },
    /// Events with seq > `since`, at most `limit`.
    Events {
        since: u64,
        limit: Option<usize>,
    },
    Verify,
    Export,
    /// A consistent, fsynced copy of the directory (served or not) in
    /// `dest`, which must not exist or be empty.
    Backup {
        dest: PathBuf,
    },
}

/// Runs one command. `Ok(false)` means it ran and found problems (`verify`).
/// sled may panic reading a damaged page: that is an error, in one line.
pub fn run(opts: &Options, cmd: &Action, out: &mut dyn Write) -> Result<bool> {
    if let Some(url) = &opts.database_url {
        return crate::panics::catch(|| run_on_database(url, opts.json, cmd, out))
            .unwrap_or_else(|panic| Err(Error::Internal(format!("reading the PostgreSQL database failed: {panic}"))));
    }
    crate::panics::catch(|| run_command(opts, cmd, out)).unwrap_or_else(|panic| {
        Err(Error::Internal(format!(
            "data directory {} is damaged: reading it failed: {panic}",
            opts.data_dir.display()
        )))
    })
}

/// Where a summary says the data is.
#[derive(Clone, Copy)]
enum Place<'a> {
    Dir(&'a std::path::Path),
    Database(&'a str),
}

fn run_on_database(url: &str, json: bool, cmd: &Action, out: &mut dyn Write) -> Result<bool> {
    if let Action::Backup { .. } = cmd {
        return Err(Error::Conflict(
            "backup copies a data directory; back up a PostgreSQL database with pg_dump or pg_basebackup".into(),
        ));
    }
    let db = PgInspector::open(url)?;
    let place = Place::Database(db.described());
    read_command(&db, place, json, cmd, out)
}

fn run_command(opts: &Options, cmd: &Action, out: &mut dyn Write) -> Result<bool> {
    if let Action::Backup { dest } = cmd {
        backup(&crate::snapshot::backup(&opts.data_dir, dest)?, &opts.data_dir, opts.json, out)?;
        out.flush()?;
        return Ok(true);
    }
    let ins = Inspector::open(&opts.data_dir, opts.snapshot)?;
    let current = crate::storage::migrate::CURRENT_FORMAT;
    match ins.migration() {
        Migration::None => {}
        Migration::Migrated { from } => eprintln!(
            "checkpoint-dump: note: {} has format version {from}; reading a private copy migrated to format {current} (the directory is unchanged; checkpointd migrates it when it next opens it)",
            opts.data_dir.display()
        ),
        Migration::Failed { from, error } => eprintln!(
            "checkpoint-dump: warning: {} has format version {from}, and migrating a private copy of it to format {current} failed ({error}); reading it unmigrated, so its records may not decode (the directory is unchanged; checkpointd would refuse to start on it)",
            opts.data_dir.display()
        ),
    }
    read_command(&ins, Place::Dir(&opts.data_dir), opts.json, cmd, out)
}

/// The commands that read a store, from either kind of source.
fn read_command(ins: &dyn Source, place: Place, json: bool, cmd: &Action, out: &mut dyn Write) -> Result<bool> {
    match cmd {
        Action::Summary => summary(&ins.summary()?, place, json, out)?,
        Action::Sessions => sessions(ins, json, out)?,
        Action::Checkpoints { session, with_state } => checkpoints(ins, *session, *with_state, json, out)?,
        Action::Checkpoint { id } => checkpoint(ins, *id, json, out)?,
        Action::Events { since, limit } => events(ins, *since, *limit, json, out)?,
        Action::Verify => {
            let v = ins.verify()?;
            verification(&v, json, out)?;
            out.flush()?;
            return Ok(v.ok());
        }
        Action::Export => {
            crate::transfer::export(ins, out)?;
        }
        Action::Backup { .. } => unreachable!("handled before opening"),
    }
    out.flush()?;
    Ok(true)
}

/// JSON text on one line. Valid JSON has line breaks only between tokens
/// (never inside a string), where a space means the same.
fn one_line(raw: &RawValue) -> Box<RawValue> {
    let text = raw.get().replace(['\n', '\r'], " ");
    RawValue::from_string(text).expect("JSON with whitespace replaced by spaces stays JSON")
}

fn json_line(out: &mut dyn Write, value: &impl Serialize) -> Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(|e| Error::Internal(format!("cannot render: {e}")))?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Keeps a table row on one line.
fn cell(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if c.is_control() => s.push_str(&c.escape_unicode().to_string()),
            c => s.push(c),
        }
    }
    s
}

fn short(text: &str) -> String {
    let text = cell(text);
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Aligned columns, two spaces apart; the last column is not padded.
fn table(out: &mut dyn Write, head: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let head: Vec<String> = head.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `key  value` lines with aligned values.
fn record(out: &mut dyn Write, fields: &[(String, String)]) -> Result<()> {
    let width = fields.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    for (k, v) in fields {
        writeln!(out, "{k:<width$}  {v}")?;
    }
    Ok(())
}

fn summary(s: &Summary, place: Place, json: bool, out: &mut dyn Write) -> Result<()> {
    let c = s.sequences.unwrap_or_default();
    let (place_key, place_value, version_key) = match place {
        Place::Dir(dir) => ("data_dir", dir.display().to_string(), "format_version"),
        Place::Database(db) => ("database", db.to_string(), "schema_version"),
    };
    if json {
        let mut line = json!({
                "format_version": s.format_version,
                "read_format": s.read_format,
                "sessions": s.sessions,
                "checkpoints": s.checkpoints,
                "annotations": s.annotations,
                "writes": s.writes,
                "events": s.events,
                "oldest_event": s.oldest_event,
                "newest_event": s.newest_event,
                "global_sequence": c.checkpoint,
                "event_sequence": c.event,
                "sessions_created": c.sessions_created,
                "bytes_on_disk": s.bytes_on_disk,
                "state_live_bytes": s.state_live_bytes,
                "state_dead_bytes": s.state_dead_bytes,
        });
        let fields = line.as_object_mut().expect("an object");
        if let Place::Database(_) = place {
            // A database has a schema version, and no state segments.
            let version = fields.remove("format_version");
            fields.remove("read_format");
            fields.remove("state_live_bytes");
            fields.remove("state_dead_bytes");
            fields.insert(version_key.into(), version.unwrap_or_default());
        }
        fields.insert(place_key.into(), place_value.into());
        return json_line(out, &line);
    }
    let format = match (s.format_version, s.read_format) {
        (Some(own), Some(read)) if own != read => format!("{own} (read through a copy migrated to format {read})"),
        (own, _) => opt(own),
    };
    let mut fields = vec![(place_key, place_value), (version_key, format)];
    fields.extend([
        ("sessions", s.sessions.to_string()),
        ("checkpoints", s.checkpoints.to_string()),
        ("annotations", s.annotations.to_string()),
        ("writes", s.writes.to_string()),
        ("events", s.events.to_string()),
        ("oldest_event", opt(s.oldest_event)),
        ("newest_event", opt(s.newest_event)),
        ("global_sequence", c.checkpoint.to_string()),
        ("event_sequence", c.event.to_string()),
        ("sessions_created", c.sessions_created.to_string()),
        ("bytes_on_disk", s.bytes_on_disk.to_string()),
    ]);
    if let Place::Dir(_) = place {
        fields.push(("state_live_bytes", s.state_live_bytes.to_string()));
        fields.push(("state_dead_bytes", s.state_dead_bytes.to_string()));
    }
    let fields: Vec<(String, String)> = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    record(out, &fields)
}

/// `backup`: one line.
fn backup(b: &crate::snapshot::Backup, source: &std::path::Path, json: bool, out: &mut dyn Write) -> Result<()> {
    use crate::snapshot::Consistency;
    let c = b.summary.sequences.unwrap_or_default();
    let paused_ms = match b.copied.consistency {
        Consistency::Paused { paused } => Some(paused.as_millis() as u64),
        Consistency::Locked => None,
    };
    if json {
        return json_line(
            out,
            &json!({
                "source": source.display().to_string(),
                "backup": b.dest.display().to_string(),
                "format_version": b.summary.format_version,
                "sessions": b.summary.sessions,
                "checkpoints": b.summary.checkpoints,
                "global_sequence": c.checkpoint,
                "event_sequence": c.event,
                "bytes": b.summary.bytes_on_disk,
                "server_running": paused_ms.is_some(),
                "writes_paused_ms": paused_ms,
            }),
        );
    }
    let how = match paused_ms {
        Some(ms) => format!("the server paused writes for {ms} ms"),
        None => "no server was running (copied under the directory's lock)".to_string(),
    };
    writeln!(
        out,
        "backed up {} to {}: {} sessions, {} checkpoints, global sequence {}, event sequence {}, {} bytes; {how}",
        source.display(),
        b.dest.display(),
        b.summary.sessions,
        b.summary.checkpoints,
        c.checkpoint,
        c.event,
        b.summary.bytes_on_disk
    )?;
    Ok(())
}

fn sessions(ins: &dyn Source, json: bool, out: &mut dyn Write) -> Result<()> {
    let mut rows = Vec::new();
    for session in ins.sessions() {
        let (_, mut s) = session?;
        s.metadata = one_line(&s.metadata);
        if json {
            json_line(out, &reply::session(&s, true))?;
        } else {
            rows.push(vec![
                s.id.to_string(),
                cell(&s.name),
                timestamp(s.created_at),
                s.checkpoint_count.to_string(),
                opt(s.last_sequence),
                opt(s.key.as_deref().map(cell)),
            ]);
        }
    }
    if json { Ok(()) } else { table(out, &["ID", "NAME", "CREATED", "CHECKPOINTS", "LAST_SEQUENCE", "KEY"], &rows) }
}

#[derive(Serialize)]
struct CheckpointRow<'a> {
    #[serde(flatten)]
    summary: SummaryView<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a RawValue>,
}

fn checkpoints(ins: &dyn Source, session: SessionId, with_state: bool, json: bool, out: &mut dyn Write) -> Result<()> {
    ins.session(session)?;
    let mut rows = Vec::new();
    for s in ins.checkpoints(session) {
        let s = s?;
        let state = if with_state { Some(one_line(&ins.checkpoint(s.id)?.state)) } else { None };
        if json {
            json_line(out, &CheckpointRow { summary: SummaryView::from(&s), state: state.as_deref() })?;
            continue;
        }
        let mut row = vec![
            s.sequence_number.to_string(),
            s.id.to_string(),
            namespace(&s.namespace),
            opt(s.external_id.as_deref().map(short)),
            timestamp(s.timestamp),
            s.trigger.to_string(),
            opt((!s.tags.is_empty()).then(|| cell(&s.tags.join(",")))),
            opt(s.parent_id),
            opt(s.parent_external_id.as_deref().map(short)),
            if s.has_notes { "yes".into() } else { "-".into() },
            short(&s.message),
        ];
        if let Some(state) = state {
            row.push(state.get().to_string());
        }
        rows.push(row);
    }
    if json {
        return Ok(());
    }
    let mut head = vec![
        "SEQUENCE",
        "ID",
        "NAMESPACE",
        "EXTERNAL_ID",
        "TIMESTAMP",
        "TRIGGER",
        "TAGS",
        "PARENT",
        "PARENT_EXTERNAL_ID",
        "NOTES",
        "MESSAGE",
    ];
    if with_state {
        head.push("STATE");
    }
    table(out, &head, &rows)
}

/// A namespace in a table cell: `-` for the root namespace `""`.
fn namespace(ns: &str) -> String {
    if ns.is_empty() { "-".to_string() } else { short(ns) }
}

fn checkpoint(ins: &dyn Source, id: CheckpointId, json: bool, out: &mut dyn Write) -> Result<()> {
    let mut c = ins.checkpoint(id)?;
    c.state = one_line(&c.state);
    c.metadata = one_line(&c.metadata);
    for w in &mut c.writes {
        w.value = one_line(&w.value);
    }
    if json {
        return json_line(out, &reply::checkpoint(&c));
    }
    let s = &c.summary;
    let mut fields = vec![
        ("id".to_string(), s.id.to_string()),
        ("session_id".into(), s.session_id.to_string()),
        ("namespace".into(), if s.namespace.is_empty() { "\"\" (root)".into() } else { cell(&s.namespace) }),
        ("external_id".into(), opt(s.external_id.as_deref().map(cell))),
        ("sequence_number".into(), s.sequence_number.to_string()),
        ("timestamp".into(), timestamp(s.timestamp)),
        ("trigger".into(), s.trigger.to_string()),
        ("tags".into(), opt((!s.tags.is_empty()).then(|| cell(&s.tags.join(", "))))),
        ("parent_id".into(), opt(s.parent_id)),
        ("parent_external_id".into(), opt(s.parent_external_id.as_deref().map(cell))),
        ("message".into(), cell(&s.message)),
        ("metadata".into(), c.metadata.get().to_string()),
        ("state".into(), c.state.get().to_string()),
        ("checksum".into(), format!("{:08x}", c.checksum)),
        ("annotations".into(), c.annotations.len().to_string()),
    ];
    for (i, a) in c.annotations.iter().enumerate() {
        fields.push((
            format!("annotation {i}"),
            format!("{}  {:<8}  {}", timestamp(a.timestamp), a.severity.as_str(), cell(&a.note)),
        ));
    }
    fields.push(("writes".into(), c.writes.len().to_string()));
    for (i, w) in c.writes.iter().enumerate() {
        fields.push((
            format!("write {i}"),
            format!(
                "task {}  idx {}  channel {}  path {}  {}",
                cell(&w.task_id),
                w.idx,
                cell(&w.channel),
                if w.task_path.is_empty() { "-".into() } else { cell(&w.task_path) },
                w.value.get()
            ),
        ));
    }
    record(out, &fields)
}

/// One row of the events table. The columns hold what most kinds carry;
/// `DETAIL` holds the rest, as `name=value` pairs (strings quoted):
/// `writes_stored` has no checkpoint id (its checkpoint is named by
/// namespace and external id, and may not be stored yet), `session_copied`
/// names its source session.
fn event_row(e: &JournalEvent) -> Vec<String> {
    let quoted = |s: &str| cell(&format!("{s:?}"));
    let (mut checkpoint, mut sequence, mut removed, mut remaining, mut detail) = (None, None, None, None, None);
    match &e.kind {
        EventKind::CheckpointCreated { checkpoint_id, sequence_number }
        | EventKind::CheckpointRestored { checkpoint_id, sequence_number }
        | EventKind::CheckpointDeleted { checkpoint_id, sequence_number } => {
            checkpoint = Some(checkpoint_id.to_string());
            sequence = Some(*sequence_number);
        }
        EventKind::CheckpointsCompacted { removed: r, remaining: left } => {
            removed = Some(*r);
            remaining = Some(*left);
        }
        EventKind::SessionDeleted { removed: r } => removed = Some(*r),
        EventKind::WritesStored { namespace, external_id, task_id, stored } => {
            detail = Some(format!(
                "stored={stored} namespace={} external_id={} task_id={}",
                quoted(namespace),
                quoted(external_id),
                quoted(task_id)
            ));
        }
        EventKind::SessionCopied { source_session_id, copied } => {
            detail = Some(format!("copied={copied} source_session_id={source_session_id}"));
        }
    }
    vec![
        e.seq.to_string(),
        timestamp(e.timestamp),
        e.kind.name().to_string(),
        e.session_id.to_string(),
        opt(checkpoint),
        opt(sequence),
        opt(removed),
        opt(remaining),
        opt(detail),
    ]
}

fn events(ins: &dyn Source, since: u64, limit: Option<usize>, json: bool, out: &mut dyn Write) -> Result<()> {
    let mut rows = Vec::new();
    for e in ins.events_after(since).take(limit.unwrap_or(usize::MAX)) {
        let e = e?;
        if json {
            writeln!(out, "{}", reply::render_event(&e))?;
        } else {
            rows.push(event_row(&e));
        }
    }
    if json {
        return Ok(());
    }
    let head = ["SEQ", "TIMESTAMP", "EVENT", "SESSION", "CHECKPOINT", "SEQUENCE", "REMOVED", "REMAINING", "DETAIL"];
    table(out, &head, &rows)
}

fn verification(v: &Verification, json: bool, out: &mut dyn Write) -> Result<()> {
    let shown = if (v.problems.len() as u64) < v.total_problems {
        format!(" (the first {} shown)", v.problems.len())
    } else {
        String::new()
    };
    let checked = format!(
        "{} sessions, {} checkpoints, {} tags, {} annotations, {} writes, {} events checked",
        v.sessions, v.checkpoints, v.tags, v.annotations, v.writes, v.events
    );
    if json {
        for p in &v.problems {
            json_line(out, &json!({ "problem": p }))?;
        }
        return json_line(
            out,
            &json!({
                "ok": v.ok(),
                "problems": v.total_problems,
                "sessions": v.sessions,
                "checkpoints": v.checkpoints,
                "tags": v.tags,
                "annotations": v.annotations,
                "writes": v.writes,
                "events": v.events,
                "segments": v.segments,
                "segment_live_bytes": v.segment_live_bytes,
                "segment_dead_bytes": v.segment_dead_bytes,
                "unreferenced_segments": v.unreferenced_segments,
            }),
        );
    }
    for p in &v.problems {
        writeln!(out, "problem: {p}")?;
    }
    if v.ok() {
        writeln!(out, "ok: {checked}; no problems")?;
    } else {
        writeln!(out, "{} problems found{shown}; {checked}", v.total_problems)?;
    }
    if v.segments > 0 {
        writeln!(
            out,
            "state segments: {}, {} bytes live, {} dead ({} segments no record points into, removed when checkpointd next opens the directory)",
            v.segments, v.segment_live_bytes, v.segment_dead_bytes, v.unreferenced_segments
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn event(seq: u64, kind: EventKind) -> JournalEvent {
        let session_id = "5a4e0c39-93b1-4c1e-8d11-0b0a3c5e7f01".parse().unwrap();
        let timestamp = DateTime::<Utc>::from_timestamp_micros(1_764_514_800_123_456).unwrap();
        JournalEvent { seq, session_id, timestamp, kind }
    }

    fn rows(events: &[JournalEvent]) -> Vec<Vec<String>> {
        let head = ["SEQ", "TIMESTAMP", "EVENT", "SESSION", "CHECKPOINT", "SEQUENCE", "REMOVED", "REMAINING", "DETAIL"];
        let mut out = Vec::new();
        table(&mut out, &head, &events.iter().map(event_row).collect::<Vec<_>>()).unwrap();
        let text = String::from_utf8(out).unwrap();
        // Columns are two spaces apart; a cell of the DETAIL column has single spaces.
        text.lines()
            .map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect())
            .collect()
    }

    #[test]
    fn events_of_format_2_keep_to_their_columns() {
        let source: SessionId = "b6f3d2aa-1c2d-4e5f-9a0b-1c2d3e4f5a02".parse().unwrap();
        let checkpoint: CheckpointId = "0c1f2e3d-4b5a-4697-8877-665544332201".parse().unwrap();
        let table = rows(&[
            event(1, EventKind::CheckpointCreated { checkpoint_id: checkpoint, sequence_number: 3 }),
            event(2, EventKind::CheckpointsCompacted { removed: 2, remaining: 1 }),
            event(
                3,
                EventKind::WritesStored {
                    namespace: String::new(),
                    external_id: "ck\t2".into(),
                    task_id: "t-1".into(),
                    stored: 2,
                },
            ),
            event(4, EventKind::SessionCopied { source_session_id: source, copied: 7 }),
        ]);
        let session = "5a4e0c39-93b1-4c1e-8d11-0b0a3c5e7f01";
        let at = "2025-11-30T15:00:00.123456Z";
        assert_eq!(table[0].last().unwrap(), "DETAIL");
        assert_eq!(table[1], ["1", at, "checkpoint_created", session, &checkpoint.to_string(), "3", "-", "-", "-"]);
        assert_eq!(table[2], ["2", at, "checkpoints_compacted", session, "-", "-", "2", "1", "-"]);
        // No checkpoint id (the checkpoint may not be stored yet), no count
        // in another event's column: the rest is in DETAIL, strings quoted.
        let detail = r#"stored=2 namespace="" external_id="ck\t2" task_id="t-1""#;
        assert_eq!(table[3], ["3", at, "writes_stored", session, "-", "-", "-", "-", detail]);
        let detail = format!("copied=7 source_session_id={source}");
        assert_eq!(table[4], ["4", at, "session_copied", session, "-", "-", "-", "-", detail.as_str()]);
    }
}
