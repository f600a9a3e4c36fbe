//! Parsing at the edge: one [`Command`] per method, its params checked here,
//! so the handler only ever sees well-typed requests.

use crate::error::{Error, Result};
use crate::model::{
    CheckpointId, ListQuery, MetadataFilter, NewCheckpoint, NewWrites, RetentionPolicy, SearchQuery, SessionId,
    Severity, StateJson, Trigger,
};
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};

/// A parsed envelope: the id to answer with and the command, or why the
/// command is unusable (answered with the same id).
#[derive(Debug)]
pub struct Request {
    pub id: String,
    pub method: String,
    pub command: Result<Command>,
}

/// `method` as one of [`METHODS`], if it is one.
pub fn known_method(method: &str) -> Option<&'static str> {
    METHODS.iter().copied().find(|&m| m == method)
}

/// Every method the server understands.
#[derive(Debug)]
pub enum Command {
    Authenticate {
        token: Option<String>,
    },
    CreateSession {
        name: Option<String>,
        metadata: Option<Box<RawValue>>,
    },
    ListCheckpoints {
        session_id: SessionId,
        query: ListQuery,
    },
    Checkpoint(NewCheckpoint),
    Subscribe {
        session_id: SessionId,
        since: Option<u64>,
    },
    Unsubscribe {
        session_id: SessionId,
    },
    Metrics,
    Health,
    GetCheckpoint {
        checkpoint_id: CheckpointId,
    },
    /// By external id in (session, namespace), or the newest there.
    GetCheckpointIn {
        session_id: SessionId,
        namespace: String,
        external_id: Option<String>,
    },
    OpenSession {
        key: String,
        name: Option<String>,
        metadata: Option<Box<RawValue>>,
    },
    GetSessionByKey {
        key: String,
    },
    Restore {
        session_id: SessionId,
        checkpoint_id: CheckpointId,
    },
    DeleteCheckpoint {
        checkpoint_id: CheckpointId,
        session_id: Option<SessionId>,
    },
    /// With `per_namespace`, the policy applies within each namespace.
    Compact {
        session_id: SessionId,
        policy: RetentionPolicy,
        per_namespace: bool,
    },
    SearchCheckpoints {
        query: SearchQuery,
    },
    PutWrites(NewWrites),
    CopySession {
        session_id: SessionId,
        key: Option<String>,
        name: Option<String>,
        metadata: Option<Box<RawValue>>,
    },
    DeleteCheckpoints {
        session_id: Option<SessionId>,
        namespace: Option<String>,
        metadata: MetadataFilter,
    },
    SetRetention {
        session_id: SessionId,
        policy: Option<RetentionPolicy>,
    },
    ListSessions {
        limit: Option<usize>,
        after: Option<SessionId>,
        key_prefix: Option<String>,
    },
    GetSession {
        session_id: SessionId,
    },
    DeleteSession {
        session_id: SessionId,
    },
    Annotate {
        checkpoint_id: CheckpointId,
        note: String,
        severity: Option<Severity>,
    },
    Validate {
        session_id: Option<SessionId>,
    },
}

impl Command {
    /// Whether the command may journal events (a subscriber on the same
    /// connection must see its reply first).
    pub fn journals_events(&self) -> bool {
        matches!(
            self,
            Command::Checkpoint(_)
                | Command::Restore { .. }
                | Command::DeleteCheckpoint { .. }
                | Command::Compact { .. }
                | Command::DeleteSession { .. }
                | Command::PutWrites(_)
                | Command::CopySession { .. }
                | Command::DeleteCheckpoints { .. }
        )
    }
}

/// The envelope, read in one pass over the frame: `params`, when it is an
/// object, is split into its values right away, each borrowed from the
/// frame as raw JSON (validated once, copied only if a method keeps it).
#[derive(Deserialize)]
struct SplitEnvelope<'a> {
    id: String,
    method: String,
    #[serde(default, borrow)]
    params: Option<ParamsValue<'a>>,
}

/// What `params` held, as [`SplitEnvelope`] reads it.
enum ParamsValue<'a> {
    Object(Params<'a>),
    /// Not an object and not `null` (refused, unless the method is unknown).
    Other,
}

/// The envelope as first written (`params` kept whole as raw JSON, split
/// in a second pass): [`parse_request`] falls back to it for any text the
/// one-pass reading refuses, so every error keeps its exact wording, and
/// text only the one-pass reading would refuse (`"params": 1e999`, whose
/// number serde only range-checks when it visits it) is still accepted.
#[derive(Deserialize)]
struct Envelope<'a> {
    id: String,
    method: String,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
}

/// Every method the server answers, as the wire spells it.
pub const METHODS: [&str; 23] = [
    "authenticate",
    "create_session",
    "list_checkpoints",
    "checkpoint",
    "subscribe",
    "metrics",
    "get_checkpoint",
    "restore",
    "delete_checkpoint",
    "compact",
    "set_retention",
    "list_sessions",
    "get_session",
    "delete_session",
    "annotate",
    "validate",
    "unsubscribe",
    "health",
    "open_session",
    "put_writes",
    "search_checkpoints",
    "copy_session",
    "delete_checkpoints",
];

/// The `id` of a request that is not parsed further (one refused for its
/// size): the reply names it when the text is an envelope, else `"unknown"`.
pub fn request_id(text: &str) -> String {
    #[derive(Deserialize)]
    struct IdOnly {
        id: String,
    }
    serde_json::from_str::<IdOnly>(text).map_or_else(|_| "unknown".to_string(), |r| r.id)
}

/// Parses one text frame. Text that is not a request envelope is an error
/// answered with id `"unknown"`, as the seed did. An unknown method is
/// reported as such whatever its params (the seed never looked at them).
pub fn parse_request(text: &str) -> std::result::Result<Request, Error> {
    parse(text, None)
}

/// [`parse_request`] of a received text frame: a checkpoint's state is
/// shared with the frame rather than copied.
pub fn parse_frame(frame: &Utf8Bytes) -> std::result::Result<Request, Error> {
    parse(frame.as_str(), Some(frame.as_ref()))
}

/// `text` is `frame`'s when there is one.
fn parse(text: &str, frame: Option<&Bytes>) -> std::result::Result<Request, Error> {
    let (id, method, params) = match serde_json::from_str::<SplitEnvelope>(text) {
        Ok(env) => {
            let params = match env.params {
                None => Ok(Params::default()),
                Some(ParamsValue::Object(params)) => Ok(params),
                Some(ParamsValue::Other) => Err(Error::invalid("params must be an object")),
            };
            (env.id, env.method, params)
        }
        Err(_) => {
            let env: Envelope =
                serde_json::from_str(text).map_err(|e| Error::InvalidJson(format!("Invalid JSON: {e}")))?;
            (env.id, env.method, Params::parse(env.params))
        }
    };
    let command = if METHODS.contains(&method.as_str()) {
        params.and_then(|p| Params { frame, ..p }.command(&method))
    } else {
        Err(Error::UnknownMethod(format!("Unknown method: {method}")))
    };
    Ok(Request { id, method, command })
}

/// Deepest nesting of arrays and objects accepted in `state` and `metadata`.
/// Values are stored verbatim and handed back inside a reply (two levels
/// deeper), so this keeps every stored value readable by common JSON parsers
/// (serde_json stops at 128 levels); deeper values are `too_large`.
pub const MAX_JSON_DEPTH: usize = 100;

/// Refuses a value nested deeper than [`MAX_JSON_DEPTH`]. `raw` is valid
/// JSON, so brackets outside strings are all structure.
fn check_depth(name: &str, raw: &RawValue) -> Result<()> {
    let bytes = raw.get().as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            // A string is skipped to its closing quote with `memchr` (a large
            // state is mostly strings: byte by byte, this was the server's
            // largest cost for a 1 MiB state, issue 11).
            b'"' => {
                i += 1;
                loop {
                    let Some(rest) = bytes.get(i..) else { return Ok(()) };
                    match memchr::memchr2(b'"', b'\\', rest) {
                        Some(j) if rest[j] == b'\\' => i += j + 2,
                        Some(j) => {
                            i += j + 1;
                            break;
                        }
                        None => return Ok(()),
                    }
                }
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(Error::TooLarge(format!("{name} is nested deeper than {MAX_JSON_DEPTH} levels")));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// A request's params, each value borrowed from the frame as raw JSON until
/// a method asks for it. A name given twice means its last value (as a map
/// would have it); there are a handful, so a list is searched.
#[derive(Default)]
struct Params<'a> {
    values: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// The frame the values lie in, when the caller has it: the state is
    /// then shared with it rather than copied.
    frame: Option<&'a Bytes>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ParamsValue<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(ParamsVisitor(PhantomData))
    }
}

struct ParamsVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ParamsVisitor<'a> {
    type Value = ParamsValue<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        let mut params = Vec::new();
        while let Some(Name(name)) = map.next_key::<Name<'a>>()? {
            params.push((name, map.next_value::<&'a RawValue>()?));
        }
        Ok(ParamsValue::Object(Params { values: params, frame: None }))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(ParamsValue::Other)
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        // `null` inside `Some`: serde reads a bare `null` as `None` first.
        Ok(ParamsValue::Object(Params::default()))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Self::Value, E> {
        Ok(ParamsValue::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<Self::Value, E> {
        Ok(ParamsValue::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Self::Value, E> {
        Ok(ParamsValue::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<Self::Value, E> {
        Ok(ParamsValue::Other)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<Self::Value, E> {
        Ok(ParamsValue::Other)
    }
}

/// A param's name: borrowed from the frame unless it has escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct NameVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for NameVisitor<'a> {
            type Value = Name<'a>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_str(NameVisitor(PhantomData))
    }
}

impl<'a> Params<'a> {
    /// The second pass of [`Envelope`]'s reading.
    fn parse(raw: Option<&'a RawValue>) -> Result<Params<'a>> {
        match raw.map(RawValue::get).map(str::trim) {
            None | Some("null") => Ok(Params::default()),
            Some(text) if text.starts_with('{') => match serde_json::from_str::<ParamsValue>(text) {
                Ok(ParamsValue::Object(params)) => Ok(params),
                Ok(ParamsValue::Other) => Err(Error::invalid("params must be an object")),
                Err(e) => Err(Error::InvalidJson(format!("Invalid JSON: params: {e}"))),
            },
            Some(_) => Err(Error::invalid("params must be an object")),
        }
    }

    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.values.iter().rev().find(|(n, _)| n == name).map(|&(_, raw)| raw)
    }

    fn command(self, method: &str) -> Result<Command> {
        let p = self;
        Ok(match method {
            "authenticate" => Command::Authenticate { token: p.opt("token")? },
            "create_session" => Command::CreateSession { name: p.opt("name")?, metadata: p.raw_object("metadata")? },
            "list_checkpoints" => Command::ListCheckpoints {
                session_id: p.seed_session_id()?,
                query: ListQuery {
                    namespace: p.opt("namespace")?,
                    limit: p.opt("limit")?,
                    after: p.cursor("after")?.0,
                    before: p.cursor("before")?.0,
                    after_external: p.cursor("after")?.1,
                    before_external: p.cursor("before")?.1,
                    tag: p.opt("tag")?,
                    newest_first: match p.opt::<String>("order")?.as_deref() {
                        None | Some("asc") => false,
                        Some("desc") => true,
                        Some(other) => {
                            return Err(Error::invalid(format!("order must be \"asc\" or \"desc\", not {other:?}")));
                        }
                    },
                    metadata: p.opt("metadata")?,
                    full: p.opt("full")?.unwrap_or(false),
                },
            },
            "search_checkpoints" => Command::SearchCheckpoints {
                query: SearchQuery {
                    namespace: p.opt("namespace")?,
                    metadata: p.opt("metadata")?,
                    limit: p.opt("limit")?,
                    before: p.opt("before")?,
                    full: p.opt("full")?.unwrap_or(false),
                },
            },
            "put_writes" => Command::PutWrites(NewWrites {
                session_id: p.seed_session_id()?,
                namespace: p.opt("namespace")?.unwrap_or_default(),
                external_id: p.required("external_id")?,
                task_id: p.required("task_id")?,
                task_path: p.opt("task_path")?.unwrap_or_default(),
                writes: p.writes()?,
            }),
            "copy_session" => Command::CopySession {
                session_id: p.seed_session_id()?,
                key: p.opt("key")?,
                name: p.opt("name")?,
                metadata: p.raw_object("metadata")?,
            },
            "delete_checkpoints" => Command::DeleteCheckpoints {
                session_id: p.opt_id("session_id")?,
                namespace: p.opt("namespace")?,
                metadata: p
                    .opt::<MetadataFilter>("metadata")?
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| Error::invalid("Missing metadata parameter: a non-empty object"))?,
            },
            "checkpoint" => Command::Checkpoint(NewCheckpoint {
                session_id: p.seed_session_id()?,
                namespace: p.opt("namespace")?.unwrap_or_default(),
                external_id: p.opt("external_id")?,
                parent_external_id: p.opt("parent_external_id")?,
                message: p.opt("message")?.unwrap_or_else(|| "Checkpoint".to_string()),
                tags: p.opt("tags")?.unwrap_or_default(),
                trigger: match p.opt::<String>("trigger")? {
                    Some(t) => t.parse::<Trigger>().map_err(Error::InvalidParams)?,
                    None => Trigger::Manual,
                },
                state: p.state("state")?,
                metadata: p.raw_object("metadata")?,
                parent_id: p.opt_id("parent_id")?,
            }),
            "subscribe" => Command::Subscribe { session_id: p.seed_session_id()?, since: p.opt("since")? },
            "unsubscribe" => Command::Unsubscribe { session_id: p.seed_session_id()? },
            "metrics" => Command::Metrics,
            "health" => Command::Health,
            // By id; or in (session, namespace) by external id, or the newest.
            "get_checkpoint" if p.has("checkpoint_id") || !p.has("session_id") => {
                Command::GetCheckpoint { checkpoint_id: p.id("checkpoint_id")? }
            }
            "get_checkpoint" => Command::GetCheckpointIn {
                session_id: p.seed_session_id()?,
                namespace: p.opt("namespace")?.unwrap_or_default(),
                external_id: p.opt("external_id")?,
            },
            "open_session" => Command::OpenSession {
                key: p.opt("key")?.ok_or_else(|| Error::invalid("Missing key parameter"))?,
                name: p.opt("name")?,
                metadata: p.raw_object("metadata")?,
            },
            "restore" => Command::Restore { session_id: p.seed_session_id()?, checkpoint_id: p.id("checkpoint_id")? },
            "delete_checkpoint" => {
                Command::DeleteCheckpoint { checkpoint_id: p.id("checkpoint_id")?, session_id: p.opt_id("session_id")? }
            }
            "compact" => Command::Compact {
                session_id: p.seed_session_id()?,
                policy: p.policy()?,
                per_namespace: p.opt("per_namespace")?.unwrap_or(false),
            },
            "set_retention" => {
                let policy = p.policy()?;
                Command::SetRetention {
                    session_id: p.seed_session_id()?,
                    policy: (!policy.is_empty()).then_some(policy),
                }
            }
            "list_sessions" => Command::ListSessions {
                limit: p.opt("limit")?,
                after: p.opt_id("after")?,
                key_prefix: p.opt("key_prefix")?,
            },
            "get_session" if p.has("key") && !p.has("session_id") => {
                Command::GetSessionByKey { key: p.opt("key")?.ok_or_else(|| Error::invalid("Missing key parameter"))? }
            }
            "get_session" => Command::GetSession { session_id: p.seed_session_id()? },
            "delete_session" => Command::DeleteSession { session_id: p.seed_session_id()? },
            "annotate" => Command::Annotate {
                checkpoint_id: p.id("checkpoint_id")?,
                note: p.opt("note")?.ok_or_else(|| Error::invalid("Missing note parameter"))?,
                severity: match p.opt::<String>("severity")? {
                    Some(s) => Some(s.parse().map_err(Error::InvalidParams)?),
                    None => None,
                },
            },
            "validate" => Command::Validate { session_id: p.opt_id("session_id")? },
            other => return Err(Error::UnknownMethod(format!("Unknown method: {other}"))),
        })
    }

    /// Whether param `name` is given (not absent, not `null`).
    fn has(&self, name: &str) -> bool {
        self.get(name).is_some_and(|raw| raw.get() != "null")
    }

    /// An optional param of type `T`; JSON `null` counts as absent.
    fn opt<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        match self.get(name) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str(raw.get()).map(Some).map_err(|_| {
                Error::invalid(format!(
                    "Invalid {name} parameter: expected {}",
                    std::any::type_name::<T>().rsplit("::").next().unwrap_or("value")
                ))
            }),
        }
    }

    /// `session_id` with the seed's exact error strings.
    fn seed_session_id(&self) -> Result<SessionId> {
        let text = match self.opt::<String>("session_id") {
            Ok(Some(s)) => s,
            _ => return Err(Error::invalid("Missing session_id parameter")),
        };
        text.parse().map_err(|_| Error::invalid("Invalid session_id format"))
    }

    /// A required id param, in the seed's style of error.
    fn id<T: std::str::FromStr>(&self, name: &str) -> Result<T> {
        self.opt_id(name)?.ok_or_else(|| Error::invalid(format!("Missing {name} parameter")))
    }

    fn opt_id<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>> {
        let text = match self.opt::<String>(name) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(None),
            Err(_) => return Err(Error::invalid(format!("Invalid {name} format"))),
        };
        text.parse().map(Some).map_err(|_| Error::invalid(format!("Invalid {name} format")))
    }

    /// A param that must be a JSON object, kept as the client's text.
    fn raw_object(&self, name: &str) -> Result<Option<Box<RawValue>>> {
        match self.get(name) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) if raw.get().starts_with('{') => {
                check_depth(name, raw)?;
                Ok(Some(raw.to_owned()))
            }
            Some(_) => Err(Error::invalid(format!("Invalid {name} parameter: expected an object"))),
        }
    }

    /// A state: any JSON value, kept as the client's text (`null`
    /// included), shared with the frame when there is one.
    fn state(&self, name: &str) -> Result<Option<StateJson>> {
        match self.get(name) {
            None => Ok(None),
            Some(raw) => {
                check_depth(name, raw)?;
                Ok(Some(match self.frame {
                    Some(frame) => StateJson::shared(frame, raw),
                    None => raw.to_owned().into(),
                }))
            }
        }
    }

    /// A required string param.
    fn required(&self, name: &str) -> Result<String> {
        self.opt(name)?.ok_or_else(|| Error::invalid(format!("Missing {name} parameter")))
    }

    /// A list bound: a sequence number, or an external id (a string).
    fn cursor(&self, name: &str) -> Result<(Option<u64>, Option<String>)> {
        match self.get(name) {
            Some(raw) if raw.get().starts_with('"') => Ok((None, self.opt(name)?)),
            _ => Ok((self.opt(name)?, None)),
        }
    }

    /// `put_writes`'s `writes`: `[{idx, channel, value}]`.
    fn writes(&self) -> Result<Vec<(i32, String, Box<RawValue>)>> {
        #[derive(Deserialize)]
        struct Write {
            idx: i32,
            channel: String,
            value: Box<RawValue>,
        }
        let raw = self.get("writes").ok_or_else(|| Error::invalid("Missing writes parameter"))?;
        check_depth("writes", raw)?;
        let writes: Vec<Write> = serde_json::from_str(raw.get()).map_err(|_| {
            Error::invalid("Invalid writes parameter: expected an array of {idx: integer, channel: string, value}")
        })?;
        Ok(writes.into_iter().map(|w| (w.idx, w.channel, w.value)).collect())
    }

    fn policy(&self) -> Result<RetentionPolicy> {
        Ok(RetentionPolicy {
            keep_recent: self.opt("keep_recent")?,
            preserve_tags: self.opt("preserve_tags")?.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn depth_counts_structure_only_not_brackets_in_strings() {
        let raw = |t: &str| RawValue::from_string(t.to_string()).unwrap();
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(check_depth("s", &raw(&deep(MAX_JSON_DEPTH))).is_ok());
        assert!(check_depth("s", &raw(&deep(MAX_JSON_DEPTH + 1))).is_err());
        // Brackets, escaped quotes and an escaped backslash inside strings.
        let s = format!(r#"{{"a":"{}\"{}\\","b":[1]}}"#, "[".repeat(500), "{".repeat(500));
        assert!(check_depth("s", &raw(&s)).is_ok());
        let s = format!(r#"["\\",{}]"#, deep(MAX_JSON_DEPTH));
        assert!(check_depth("s", &raw(&s)).is_err(), "structure after an escaped backslash still counts");
    }

    use super::*;

    fn parse(text: &str) -> Result<Command> {
        parse_request(text).unwrap().command
    }

    #[test]
    fn seed_errors_are_exact() {
        let e = parse(r#"{"id":"1","method":"checkpoint","params":{}}"#).unwrap_err();
        assert_eq!(e.to_string(), "Missing session_id parameter");
        let e = parse(r#"{"id":"1","method":"checkpoint","params":{"session_id":7}}"#).unwrap_err();
        assert_eq!(e.to_string(), "Missing session_id parameter");
        let e = parse(r#"{"id":"1","method":"subscribe","params":{"session_id":"nope"}}"#).unwrap_err();
        assert_eq!(e.to_string(), "Invalid session_id format");
        let e = parse(r#"{"id":"1","method":"frobnicate"}"#).unwrap_err();
        assert_eq!(e.to_string(), "Unknown method: frobnicate");
        assert_eq!(e.code(), "unknown_method");
        let e = parse_request("{not json").unwrap_err();
        assert!(e.to_string().starts_with("Invalid JSON: "));
    }

    #[test]
    fn methods_lists_every_method() {
        for method in METHODS {
            let text = format!(r#"{{"id":"1","method":"{method}"}}"#);
            if let Err(e) = parse(&text) {
                assert_ne!(e.code(), "unknown_method", "{method}");
            }
        }
        let e = parse(r#"{"id":"1","method":"nope","params":[1]}"#).unwrap_err();
        assert_eq!(e.to_string(), "Unknown method: nope");
    }

    #[test]
    fn missing_or_null_params_are_empty() {
        assert!(matches!(parse(r#"{"id":"1","method":"metrics"}"#), Ok(Command::Metrics)));
        assert!(matches!(
            parse(r#"{"id":"1","method":"create_session","params":null}"#),
            Ok(Command::CreateSession { name: None, .. })
        ));
    }

    #[test]
    fn wrong_types_are_invalid_params() {
        let sid = uuid::Uuid::new_v4();
        let e = parse(&format!(
            r#"{{"id":"1","method":"list_checkpoints","params":{{"session_id":"{sid}","limit":"ten"}}}}"#
        ))
        .unwrap_err();
        assert_eq!(e.code(), "invalid_params");
        let e = parse(&format!(r#"{{"id":"1","method":"checkpoint","params":{{"session_id":"{sid}","tags":"x"}}}}"#))
            .unwrap_err();
        assert_eq!(e.code(), "invalid_params");
        let e = parse(&format!(
            r#"{{"id":"1","method":"checkpoint","params":{{"session_id":"{sid}","trigger":"sometimes"}}}}"#
        ))
        .unwrap_err();
        assert_eq!(e.code(), "invalid_params");
    }

    #[test]
    fn nesting_is_bounded() {
        let sid = uuid::Uuid::new_v4();
        let nested = |n: usize| format!("{}\"[{{\\\"\"{}", "[".repeat(n), "]".repeat(n));
        let text = |state: &str| {
            format!(r#"{{"id":"1","method":"checkpoint","params":{{"session_id":"{sid}","state":{state}}}}}"#)
        };
        assert!(parse(&text(&nested(MAX_JSON_DEPTH))).is_ok());
        assert_eq!(parse(&text(&nested(MAX_JSON_DEPTH + 1))).unwrap_err().code(), "too_large");
        let meta = format!(r#"{{"id":"1","method":"create_session","params":{{"metadata":{{"a":{}}}}}}}"#, nested(99));
        assert!(parse(&meta).is_ok());
        let meta = format!(r#"{{"id":"1","method":"create_session","params":{{"metadata":{{"a":{}}}}}}}"#, nested(100));
        assert_eq!(parse(&meta).unwrap_err().code(), "too_large");
    }

    #[test]
    fn one_pass_reading_answers_as_the_two_pass_one() {
        // A name given twice means its last value; names may be escaped.
        let sid = uuid::Uuid::new_v4();
        let text =
            format!(r#"{{"id":"1","method":"subscribe","params":{{"session_id":"x","session\u005fid":"{sid}"}}}}"#);
        assert!(
            matches!(parse(&text), Ok(Command::Subscribe { session_id, .. }) if session_id.to_string() == sid.to_string())
        );
        // Only the two-pass reading accepts a number serde cannot range.
        let e = parse(r#"{"id":"1","method":"checkpoint","params":1e999}"#).unwrap_err();
        assert_eq!(e.to_string(), "params must be an object");
        let e = parse(r#"{"id":"1","method":"nope","params":-1e999}"#).unwrap_err();
        assert_eq!(e.to_string(), "Unknown method: nope");
        for params in ["[1,{}]", "\"x\"", "true", "7"] {
            let e = parse(&format!(r#"{{"id":"1","method":"metrics","params":{params}}}"#)).unwrap_err();
            assert_eq!(e.to_string(), "params must be an object", "{params}");
        }
        // Errors keep their wording, the envelope's type name included (the
        // one-pass reading would call the last one a trailing comma).
        let e = parse_request(r#""{""#).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"Invalid JSON: invalid type: string "{", expected struct Envelope at line 1 column 3"#
        );
        let e = parse_request(r#"{"id":"1","method":"metrics","params":{"a":1,}}"#).unwrap_err();
        assert_eq!(e.to_string(), "Invalid JSON: key must be a string at line 1 column 46");
    }

    #[test]
    fn a_frames_state_is_shared_with_it_not_copied() {
        let sid = uuid::Uuid::new_v4();
        let text =
            format!(r#"{{"id":"1","method":"checkpoint","params":{{"session_id":"{sid}","state":{{"a": [1, 2]}}}}}}"#);
        let frame = Utf8Bytes::from(text.clone());
        let Ok(Command::Checkpoint(new)) = parse_frame(&frame).unwrap().command else { panic!() };
        let state = new.state.unwrap();
        assert_eq!(state.get(), r#"{"a": [1, 2]}"#);
        assert!(frame.as_bytes().as_ptr_range().contains(&state.get().as_ptr()));
        // Without a frame, a copy.
        let Ok(Command::Checkpoint(new)) = parse(&text) else { panic!() };
        assert_eq!(new.state.unwrap().get(), r#"{"a": [1, 2]}"#);
    }

    #[test]
    fn state_is_kept_verbatim() {
        let sid = uuid::Uuid::new_v4();
        let text = format!(
            r#"{{"id":"1","method":"checkpoint","params":{{"session_id":"{sid}","state":{{"n": 1.50, "big": 123456789012345678901234567890}}}}}}"#
        );
        let Ok(Command::Checkpoint(new)) = parse(&text) else { panic!() };
        assert_eq!(new.state.unwrap().get(), r#"{"n": 1.50, "big": 123456789012345678901234567890}"#);
    }
}
