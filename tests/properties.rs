//! Property tests (bounded: a few hundred cases each, seconds in all) for the
//! two places where untrusted bytes come in: the request parser (any text a
//! client sends) and the record codec (any bytes a damaged disk holds). Any
//! input gives a value or an error, never a panic; what is encoded decodes
//! to the same; a flipped bit or a cut record is refused by its checksum.

use checkpointd::model::{CheckpointId, EventKind, RetentionPolicy, SessionId, Severity, Trigger};
use checkpointd::protocol::{Command, parse_request};
use checkpointd::storage::codec;
use checkpointd::storage::records::{AnnotationRecord, CheckpointRecord, Counters, EventRecord, SessionRecord};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ----- JSON ----------------------------------------------------------------

/// Numbers at and beyond every edge a param type has.
fn extreme_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
        Just("18446744073709551616".to_string()),
        Just("-0".to_string()),
        Just("1e400".to_string()),
        Just("123456789012345678901234567890".to_string()),
        Just("0.0000000000000000000000001".to_string()),
    ]
}

/// Arbitrary JSON text: scalars, extreme numbers, nested arrays and objects.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        extreme_number(),
        any::<String>().prop_map(|s| Value::String(s).to_string()),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((any::<String>(), inner), 0..6).prop_map(|kv| {
                let fields: Vec<String> = kv.into_iter().map(|(k, v)| format!("{}:{v}", Value::String(k))).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// Arrays nested `depth` deep, around an optional string with brackets in it.
fn deep(depth: usize) -> String {
    format!("{}\"[{{\\\"\"{}", "[".repeat(depth), "]".repeat(depth))
}

const PARAMS: [&str; 22] = [
    "token",
    "name",
    "metadata",
    "session_id",
    "limit",
    "after",
    "before",
    "tag",
    "order",
    "message",
    "tags",
    "trigger",
    "state",
    "parent_id",
    "since",
    "checkpoint_id",
    "keep_recent",
    "preserve_tags",
    "note",
    "severity",
    "params",
    "",
];

/// A param value: often of the right shape, often not.
fn param_value() -> impl Strategy<Value = String> {
    prop_oneof![
        json_text(),
        any::<u128>().prop_map(|n| format!("\"{}\"", uuid::Uuid::from_u128(n))),
        prop::sample::select(vec!["asc", "desc", "manual", "auto:x", "scheduled", "info", "critical", "bogus"])
            .prop_map(|s| format!("\"{s}\"")),
        (0usize..300).prop_map(deep),
        prop::collection::vec("[a-z]{0,3}", 0..70).prop_map(|tags| json!(tags).to_string()),
    ]
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(checkpointd::protocol::request::METHODS.to_vec()).prop_map(str::to_string),
        any::<String>(),
    ]
}

/// A request envelope with a method (mostly real) and params (mostly known
/// names with values of any shape).
fn near_valid_request() -> impl Strategy<Value = String> {
    let params = prop_oneof![
        prop::collection::vec((prop::sample::select(PARAMS.to_vec()), param_value()), 0..8).prop_map(|kv| {
            let fields: Vec<String> = kv.into_iter().map(|(k, v)| format!("{}:{v}", Value::String(k.into()))).collect();
            format!("{{{}}}", fields.join(","))
        }),
        json_text(),
    ];
    (any::<String>(), method(), prop::option::of(params)).prop_map(|(id, method, params)| {
        let mut text = format!("{{\"id\":{},\"method\":{}", Value::String(id), Value::String(method));
        if let Some(p) = params {
            text.push_str(",\"params\":");
            text.push_str(&p);
        }
        text.push('}');
        text
    })
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn any_text_parses_or_errs(text in any::<String>()) {
        let _ = parse_request(&text);
    }

    #[test]
    fn any_json_parses_or_errs(text in json_text()) {
        let _ = parse_request(&text);
    }

    #[test]
    fn near_valid_requests_parse_or_err(text in near_valid_request()) {
        // The envelope is what was sent (when serde_json can read all of it:
        // params nested past its recursion limit stay raw in a request);
        // the command is a value or an error.
        if let (Ok(request), Ok(sent)) = (parse_request(&text), serde_json::from_str::<Value>(&text)) {
            prop_assert_eq!(&Value::String(request.id.clone()), &sent["id"]);
            prop_assert_eq!(&Value::String(request.method.clone()), &sent["method"]);
        }
    }

    #[test]
    fn valid_checkpoint_requests_carry_their_values(
        session in any::<u128>(),
        message in any::<String>(),
        tags in prop::collection::vec("[a-z0-9]{1,8}", 0..5),
        state in json_text(),
        id in any::<String>(),
    ) {
        let session = uuid::Uuid::from_u128(session);
        let text = format!(
            "{{\"id\":{},\"method\":\"checkpoint\",\"params\":{{\"session_id\":\"{session}\",\"message\":{},\"tags\":{},\"trigger\":\"auto:tool\",\"state\":{state}}}}}",
            Value::String(id.clone()), Value::String(message.clone()), json!(tags)
        );
        let request = parse_request(&text).unwrap();
        prop_assert_eq!(request.id, id);
        match request.command {
            Ok(Command::Checkpoint(new)) => {
                prop_assert_eq!(new.session_id.0, session);
                prop_assert_eq!(new.message, message);
                prop_assert_eq!(new.tags, tags);
                prop_assert_eq!(new.trigger, Trigger::Auto(Some("tool".into())));
                let got = new.state.unwrap();
                prop_assert_eq!(got.get(), state.as_str());
            }
            Ok(other) => prop_assert!(false, "parsed as {other:?}"),
            // Only a state nested too deeply is refused.
            Err(e) => prop_assert_eq!(e.code(), "too_large"),
        }
    }

    #[test]
    fn valid_numbers_are_carried_exactly(
        session in any::<u128>(), limit in any::<u64>(), after in any::<u64>(), before in any::<u64>(), since in any::<u64>(),
    ) {
        let session = uuid::Uuid::from_u128(session);
        let list = format!(
            "{{\"id\":\"1\",\"method\":\"list_checkpoints\",\"params\":{{\"session_id\":\"{session}\",\"limit\":{limit},\"after\":{after},\"before\":{before},\"order\":\"desc\"}}}}"
        );
        match parse_request(&list).unwrap().command {
            Ok(Command::ListCheckpoints { session_id, query }) => {
                prop_assert_eq!(session_id.0, session);
                prop_assert_eq!(query.limit.map(|l| l as u64), usize::try_from(limit).ok().map(|l| l as u64));
                prop_assert_eq!((query.after, query.before, query.newest_first), (Some(after), Some(before), true));
            }
            // A limit beyond usize is refused, not truncated.
            Err(e) => prop_assert!(usize::try_from(limit).is_err() && e.code() == "invalid_params"),
            Ok(other) => prop_assert!(false, "parsed as {other:?}"),
        }
        let sub = format!("{{\"id\":\"1\",\"method\":\"subscribe\",\"params\":{{\"session_id\":\"{session}\",\"since\":{since}}}}}");
        match parse_request(&sub).unwrap().command {
            Ok(Command::Subscribe { session_id, since: got }) => {
                prop_assert_eq!((session_id.0, got), (session, Some(since)));
            }
            other => prop_assert!(false, "parsed as {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Each method's params, generated valid, come out in its command.
    #[test]
    fn valid_requests_of_every_shape_carry_their_values(
        session in any::<u128>(),
        checkpoint in any::<u128>(),
        text in any::<String>(),
        keep_recent in any::<u64>(),
        tags in prop::collection::vec(any::<String>(), 0..4),
        severity in severity(),
    ) {
        let (session, checkpoint) = (uuid::Uuid::from_u128(session), uuid::Uuid::from_u128(checkpoint));
        let parse = |method: &str, params: Value| {
            parse_request(&json!({"id": "7", "method": method, "params": params}).to_string()).unwrap().command
        };
        let sev = severity.as_str();
        match parse("annotate", json!({"checkpoint_id": checkpoint.to_string(), "note": text, "severity": sev})) {
            Ok(Command::Annotate { checkpoint_id, note, severity: got }) => {
                prop_assert_eq!((checkpoint_id.0, note, got), (checkpoint, text.clone(), Some(severity)));
            }
            other => prop_assert!(false, "annotate: {other:?}"),
        }
        let policy = json!({"session_id": session.to_string(), "keep_recent": keep_recent, "preserve_tags": tags});
        match parse("compact", policy) {
            Ok(Command::Compact { session_id, policy }) => {
                prop_assert_eq!(session_id.0, session);
                prop_assert_eq!(policy, RetentionPolicy { keep_recent: Some(keep_recent), preserve_tags: tags.clone() });
            }
            other => prop_assert!(false, "compact: {other:?}"),
        }
        match parse("create_session", json!({"name": text, "metadata": {"k": text}})) {
            Ok(Command::CreateSession { name, metadata }) => {
                prop_assert_eq!(name, Some(text.clone()));
                let metadata: Value = serde_json::from_str(metadata.unwrap().get()).unwrap();
                prop_assert_eq!(metadata, json!({"k": text}));
            }
            other => prop_assert!(false, "create_session: {other:?}"),
        }
        let ids = json!({"session_id": session.to_string(), "checkpoint_id": checkpoint.to_string()});
        match parse("restore", ids.clone()) {
            Ok(Command::Restore { session_id, checkpoint_id }) => {
                prop_assert_eq!((session_id.0, checkpoint_id.0), (session, checkpoint));
            }
            other => prop_assert!(false, "restore: {other:?}"),
        }
        match parse("delete_checkpoint", ids) {
            Ok(Command::DeleteCheckpoint { checkpoint_id, session_id }) => {
                prop_assert_eq!((checkpoint_id.0, session_id.map(|s| s.0)), (checkpoint, Some(session)));
            }
            other => prop_assert!(false, "delete_checkpoint: {other:?}"),
        }
        match parse("list_sessions", json!({"limit": keep_recent, "after": session.to_string()})) {
            Ok(Command::ListSessions { limit, after, key_prefix: None }) => {
                prop_assert_eq!(limit.map(|l| l as u64), Some(keep_recent));
                prop_assert_eq!(after.map(|s| s.0), Some(session));
            }
            // A limit beyond usize is refused, not truncated.
            Err(e) => prop_assert!(usize::try_from(keep_recent).is_err() && e.code() == "invalid_params"),
            Ok(other) => prop_assert!(false, "list_sessions: {other:?}"),
        }
    }
}

#[test]
fn nesting_far_beyond_the_limit_is_an_error() {
    for depth in [101, 127, 128, 129, 1_000, 100_000] {
        let text = format!(
            "{{\"id\":\"1\",\"method\":\"checkpoint\",\"params\":{{\"session_id\":\"{}\",\"state\":{}}}}}",
            uuid::Uuid::new_v4(),
            deep(depth)
        );
        let request = parse_request(&text);
        assert!(request.is_err() || request.unwrap().command.is_err(), "depth {depth} accepted");
    }
}

// ----- records -------------------------------------------------------------

fn session_id() -> impl Strategy<Value = SessionId> {
    any::<u128>().prop_map(|n| SessionId(uuid::Uuid::from_u128(n)))
}

fn checkpoint_id() -> impl Strategy<Value = CheckpointId> {
    any::<u128>().prop_map(|n| CheckpointId(uuid::Uuid::from_u128(n)))
}

fn trigger() -> impl Strategy<Value = Trigger> {
    prop_oneof![
        Just(Trigger::Manual),
        Just(Trigger::Scheduled),
        prop::option::of(any::<String>()).prop_map(Trigger::Auto),
    ]
}

fn severity() -> impl Strategy<Value = Severity> {
    prop_oneof![Just(Severity::Info), Just(Severity::Warning), Just(Severity::Critical)]
}

fn retention() -> impl Strategy<Value = RetentionPolicy> {
    (prop::option::of(any::<u64>()), prop::collection::vec(any::<String>(), 0..4))
        .prop_map(|(keep_recent, preserve_tags)| RetentionPolicy { keep_recent, preserve_tags })
}

fn event_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        (checkpoint_id(), any::<u64>()).prop_map(|(checkpoint_id, sequence_number)| EventKind::CheckpointCreated {
            checkpoint_id,
            sequence_number
        }),
        (checkpoint_id(), any::<u64>()).prop_map(|(checkpoint_id, sequence_number)| EventKind::CheckpointRestored {
            checkpoint_id,
            sequence_number
        }),
        (checkpoint_id(), any::<u64>()).prop_map(|(checkpoint_id, sequence_number)| EventKind::CheckpointDeleted {
            checkpoint_id,
            sequence_number
        }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(removed, remaining)| EventKind::CheckpointsCompacted { removed, remaining }),
        any::<u64>().prop_map(|removed| EventKind::SessionDeleted { removed }),
    ]
}

fn counters() -> impl Strategy<Value = Counters> {
    any::<[u64; 5]>().prop_map(|[global_seq, event_seq, sessions_created, active_sessions, checkpoints]| Counters {
        global_seq,
        event_seq,
        sessions_created,
        active_sessions,
        checkpoints,
    })
}

fn session_record() -> impl Strategy<Value = SessionRecord> {
    (
        session_id(),
        any::<u64>(),
        any::<String>(),
        any::<i64>(),
        any::<Vec<u8>>(),
        prop::option::of(retention()),
        any::<u64>(),
        prop::option::of(any::<u64>()),
        prop::option::of(any::<String>()),
    )
        .prop_map(|(id, ordinal, name, created_at, metadata, retention, checkpoint_count, last_sequence, key)| {
            SessionRecord { id, ordinal, name, created_at, metadata, retention, checkpoint_count, last_sequence, key }
        })
}

fn checkpoint_record() -> impl Strategy<Value = CheckpointRecord> {
    (
        (checkpoint_id(), session_id(), any::<u64>(), any::<i64>()),
        (any::<String>(), prop::collection::vec(any::<String>(), 0..5), trigger()),
        (any::<Vec<u8>>(), prop::option::of(checkpoint_id()), any::<u32>()),
        (any::<String>(), prop::option::of(any::<String>()), prop::option::of(any::<String>())),
    )
        .prop_map(
            |(
                (id, session_id, sequence_number, timestamp),
                (message, tags, trigger),
                (metadata, parent_id, state_crc),
                (namespace, external_id, parent_external_id),
            )| {
                CheckpointRecord {
                    id,
                    session_id,
                    sequence_number,
                    timestamp,
                    message,
                    tags,
                    trigger,
                    metadata,
                    parent_id,
                    state_crc,
                    namespace,
                    external_id,
                    parent_external_id,
                }
            },
        )
}

fn annotation_record() -> impl Strategy<Value = AnnotationRecord> {
    (any::<String>(), severity(), any::<i64>()).prop_map(|(note, severity, timestamp)| AnnotationRecord {
        note,
        severity,
        timestamp,
    })
}

fn event_record() -> impl Strategy<Value = EventRecord> {
    (session_id(), any::<i64>(), event_kind()).prop_map(|(session_id, timestamp, kind)| EventRecord {
        session_id,
        timestamp,
        kind,
    })
}

/// Encodes, decodes and encodes again: the same bytes.
fn round_trips<T: Serialize + DeserializeOwned>(value: &T) -> Result<(), TestCaseError> {
    let bytes = codec::encode(value);
    let back: T = codec::decode(&bytes, "record").map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(codec::encode(&back), bytes);
    Ok(())
}

/// Decodes `bytes` as every record type: each gives a value or an error.
fn decode_all(bytes: &[u8]) -> [bool; 5] {
    [
        codec::decode::<Counters>(bytes, "c").is_ok(),
        codec::decode::<SessionRecord>(bytes, "s").is_ok(),
        codec::decode::<CheckpointRecord>(bytes, "p").is_ok(),
        codec::decode::<AnnotationRecord>(bytes, "a").is_ok(),
        codec::decode::<EventRecord>(bytes, "e").is_ok(),
    ]
}

/// `body` framed as a stored record with a valid checksum, so that the
/// decoder itself (not the checksum) meets arbitrary bytes.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = vec![codec::RECORD_FORMAT];
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Every single-bit flip and every cut of `bytes` is refused.
fn damage_is_refused<T: Serialize + DeserializeOwned>(value: &T, bit: usize, cut: usize) -> Result<(), TestCaseError> {
    let bytes = codec::encode(value);
    let mut flipped = bytes.clone();
    let bit = bit % (bytes.len() * 8);
    flipped[bit / 8] ^= 1 << (bit % 8);
    prop_assert!(codec::decode::<T>(&flipped, "flipped").is_err(), "bit {} flipped and accepted", bit);
    let cut = cut % bytes.len();
    prop_assert!(codec::decode::<T>(&bytes[..cut], "cut").is_err(), "cut to {} bytes and accepted", cut);
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn records_round_trip(
        c in counters(), s in session_record(), p in checkpoint_record(), a in annotation_record(), e in event_record(),
    ) {
        round_trips(&c)?;
        round_trips(&s)?;
        round_trips(&p)?;
        round_trips(&a)?;
        round_trips(&e)?;
    }

    #[test]
    fn flipped_bits_and_cut_records_are_refused(
        c in counters(), s in session_record(), p in checkpoint_record(), a in annotation_record(), e in event_record(),
        bit in any::<usize>(), cut in any::<usize>(),
    ) {
        damage_is_refused(&c, bit, cut)?;
        damage_is_refused(&s, bit, cut)?;
        damage_is_refused(&p, bit, cut)?;
        damage_is_refused(&a, bit, cut)?;
        damage_is_refused(&e, bit, cut)?;
    }

    #[test]
    fn any_bytes_decode_or_err(bytes in any::<Vec<u8>>()) {
        let _ = decode_all(&bytes);
    }

    #[test]
    fn any_body_with_a_valid_checksum_decodes_or_errs(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_all(&framed(&body));
    }

    /// Length prefixes claiming huge strings or lists are refused, not
    /// allocated.
    #[test]
    fn huge_length_prefixes_are_refused(prefix in prop::collection::vec(any::<u8>(), 0..40), len in any::<u64>()) {
        let mut body = prefix;
        body.push(253); // bincode varint: a u64 follows
        body.extend_from_slice(&len.to_le_bytes());
        let _ = decode_all(&framed(&body));
    }
}
