//! Logs: every binary writes them to stderr through `tracing`, as text
//! (for people) or JSON lines (for log collectors), `--log-format text|json`.
//!
//! Text is coloured only when stderr is a terminal and `NO_COLOR` is unset
//! or empty (<https://no-color.org>), so files and pipes never get escape
//! codes. JSON is one object per line:
//!
//! ```json
//! {"timestamp":"2026-11-30T21:00:00.123456Z","level":"INFO","target":"checkpointd","message":"serving","fields":{"message":"serving","data_dir":"./checkpoint-data"}}
//! ```
//!
//! `fields` holds every field of the event as tracing recorded it (the
//! message among them, as tracing-subscriber's own JSON format has it);
//! `message` repeats it at the top level. `spans` (the names of the
//! enclosing spans, outermost first) appears when there are any.

use serde_json::{Map, Value};
use std::io::IsTerminal;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event; coloured on a terminal only.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether text logs on stderr get colour: only on a terminal, and never
/// when `NO_COLOR` is set to anything but the empty string.
pub fn use_colour() -> bool {
    colour_allowed(std::env::var_os("NO_COLOR").as_deref(), std::io::stderr().is_terminal())
}

fn colour_allowed(no_color: Option<&std::ffi::OsStr>, terminal: bool) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the process's log subscriber: `RUST_LOG` filters (default
/// `info`), stderr, in `format`. tungstenite stays at `info` whatever
/// `RUST_LOG` says: it traces every frame's payload, tokens included.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    init_with(format, filter);
}

/// Logs of a tool that prints its own errors (`checkpoint-dump`): only the
/// progress lines ([`crate::progress`]), whatever `RUST_LOG` says.
pub fn init_progress_logging(format: LogFormat) {
    init_with(format, tracing_subscriber::EnvFilter::new("off,checkpointd::progress=info"));
}

fn init_with(format: LogFormat, filter: tracing_subscriber::EnvFilter) {
    let filter = filter.add_directive("tungstenite=info".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // `try_init`: a second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(use_colour()).try_init(),
        LogFormat::Json => builder.with_ansi(false).event_format(JsonLines).try_init(),
    };
}

/// The JSON-lines event format (see the module).
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let mut fields = FieldMap::default();
        event.record(&mut fields);
        let meta = event.metadata();
        // Records from the `log` crate (sled) carry their own target.
        let target = match fields.log_target.take() {
            Some(target) => target,
            None => meta.target().to_string(),
        };
        let message = fields.map.get("message").cloned().unwrap_or(Value::String(String::new()));
        let spans =
            ctx.event_scope().map(|scope| scope.from_root().map(|span| span.name()).collect()).unwrap_or_default();
        let line = Line {
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            level: meta.level().as_str(),
            target,
            message,
            fields: fields.map,
            spans,
        };
        let text = serde_json::to_string(&line).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// One JSON log line, its keys in this order.
#[derive(serde::Serialize)]
struct Line {
    timestamp: String,
    level: &'static str,
    target: String,
    message: Value,
    fields: Map<String, Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    spans: Vec<&'static str>,
}

#[derive(Default)]
struct FieldMap {
    map: Map<String, Value>,
    log_target: Option<String>,
}

impl FieldMap {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "log.target" {
            self.log_target = value.as_str().map(str::to_string);
        } else if !name.starts_with("log.") {
            self.map.insert(name.to_string(), value);
        }
    }
}

impl Visit for FieldMap {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, serde_json::Number::from_f64(value).map_or_else(|| value.to_string().into(), Value::Number));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_allowed(None, true));
        assert!(colour_allowed(Some(OsStr::new("")), true));
        assert!(!colour_allowed(Some(OsStr::new("1")), true));
        assert!(!colour_allowed(None, false));
    }

    #[test]
    fn json_lines_hold_every_field() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt().event_format(JsonLines).with_writer(move || sink.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("outer");
            let _in = span.enter();
            tracing::warn!(count = 3u64, ok = true, name = "x\"y", "a \"quoted\" message");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["message"], "a \"quoted\" message");
        assert_eq!(line["fields"]["count"], 3);
        assert_eq!(line["fields"]["ok"], true);
        assert_eq!(line["fields"]["name"], "x\"y");
        assert_eq!(line["spans"], serde_json::json!(["outer"]));
        assert!(chrono::DateTime::parse_from_rfc3339(line["timestamp"].as_str().unwrap()).is_ok());
    }
}
