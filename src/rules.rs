//! Input rules, in one home: what a session, checkpoint, annotation or
//! policy may hold. The live operations (`service`) and import
//! (`transfer`) check their input here before it reaches storage; the
//! protocol parser only checks shapes (types, ids, required params).

use crate::config::{MAX_KEY_BYTES, MAX_METADATA_BYTES, MAX_TAG_BYTES, MAX_TAGS, MAX_TEXT_BYTES};
use crate::error::{Error, Result};
use crate::model::{CheckpointId, RetentionPolicy, json_empty_object};
use crate::storage::ImportBatch;
use serde_json::value::RawValue;

/// A text field: at most [`MAX_TEXT_BYTES`], and not empty unless allowed.
pub fn check_text(field: &str, value: &str, allow_empty: bool) -> Result<()> {
    if value.is_empty() && !allow_empty {
        return Err(Error::invalid(format!("{field} must not be empty")));
    }
    check_len(field, value, MAX_TEXT_BYTES)
}

fn check_len(what: &str, text: &str, max: usize) -> Result<()> {
    if text.len() > max {
        return Err(Error::TooLarge(format!("{what} is longer than {max} bytes")));
    }
    Ok(())
}

/// A client key, namespace or external id: at most [`MAX_KEY_BYTES`], and
/// not empty unless allowed (the root namespace is `""`).
pub fn check_key(field: &str, value: &str, allow_empty: bool) -> Result<()> {
    if value.is_empty() && !allow_empty {
        return Err(Error::invalid(format!("{field} must not be empty")));
    }
    check_len(field, value, MAX_KEY_BYTES)
}

/// One tag: not empty, at most [`MAX_TAG_BYTES`].
pub fn check_tag(field: &str, tag: &str) -> Result<()> {
    if tag.is_empty() {
        return Err(Error::invalid(format!("{field}: a tag must not be empty")));
    }
    if tag.len() > MAX_TAG_BYTES {
        return Err(Error::TooLarge(format!("{field}: a tag is longer than {MAX_TAG_BYTES} bytes")));
    }
    Ok(())
}

/// Checks and de-duplicates tags, keeping their first order.
pub fn check_tags(field: &str, tags: Vec<String>) -> Result<Vec<String>> {
    if tags.len() > MAX_TAGS {
        return Err(Error::TooLarge(format!("{field}: more than {MAX_TAGS} tags")));
    }
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        check_tag(field, &tag)?;
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    Ok(out)
}

/// Metadata: a JSON object of at most [`MAX_METADATA_BYTES`]; `{}` when absent.
pub fn check_metadata(metadata: Option<Box<RawValue>>) -> Result<Box<RawValue>> {
    let Some(metadata) = metadata else { return Ok(json_empty_object()) };
    if !metadata.get().trim_start().starts_with('{') {
        return Err(Error::invalid("metadata must be a JSON object"));
    }
    if metadata.get().len() > MAX_METADATA_BYTES {
        return Err(Error::TooLarge(format!("metadata is larger than {MAX_METADATA_BYTES} bytes")));
    }
    Ok(metadata)
}

pub fn check_policy(policy: RetentionPolicy) -> Result<RetentionPolicy> {
    Ok(RetentionPolicy {
        keep_recent: policy.keep_recent,
        preserve_tags: check_tags("preserve_tags", policy.preserve_tags)?,
    })
}

/// Imported records keep what they held, so tags are not de-duplicated:
/// a repeated one is refused.
fn check_imported_tags(id: CheckpointId, tags: &[String]) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(Error::TooLarge(format!("checkpoint {id}: more than {MAX_TAGS} tags")));
    }
    for (i, tag) in tags.iter().enumerate() {
        if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
            return Err(Error::invalid(format!("checkpoint {id}: tag {tag:?} is empty or over {MAX_TAG_BYTES} bytes")));
        }
        if tags[..i].contains(tag) {
            return Err(Error::invalid(format!("checkpoint {id}: tag {tag:?} is given twice")));
        }
    }
    Ok(())
}

fn check_object(what: &str, json: &RawValue) -> Result<()> {
    check_len(what, json.get(), MAX_METADATA_BYTES)?;
    if !json.get().trim_start().starts_with('{') {
        return Err(Error::invalid(format!("{what} must be a JSON object")));
    }
    Ok(())
}

/// The rules of the live operations, for records being imported.
pub fn check_import(batch: &ImportBatch) -> Result<()> {
    for s in &batch.sessions {
        if s.name.is_empty() {
            return Err(Error::invalid(format!("session {}: the name must not be empty", s.id)));
        }
        check_len("session name", &s.name, MAX_TEXT_BYTES)?;
        check_object("session metadata", &s.metadata)?;
        if let Some(key) = &s.key {
            check_key("session key", key, false)?;
        }
    }
    for c in &batch.checkpoints {
        if c.sequence_number == 0 {
            return Err(Error::invalid(format!("checkpoint {}: sequence numbers start at 1", c.id)));
        }
        check_len("message", &c.message, MAX_TEXT_BYTES)?;
        check_imported_tags(c.id, &c.tags)?;
        check_object("checkpoint metadata", &c.metadata)?;
        check_key("namespace", &c.namespace, true)?;
        if let Some(external) = &c.external_id {
            check_key("external id", external, false)?;
        }
    }
    for a in &batch.annotations {
        check_len("annotation note", &a.annotation.note, MAX_TEXT_BYTES)?;
    }
    Ok(())
}
