//! The one place that knows how records become bytes.
//!
//! A stored record is `[RECORD_FORMAT][bincode body][crc32 of the two, LE]`.
//! The leading byte lets a migration change the encoding; the trailing CRC
//! lets `validate` and every read detect a flipped byte. bincode is
//! unmaintained (its 3.0 release is only a `compile_error!`), so it stays
//! behind this module.

use super::error::{Result, StorageError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encoding of record bodies. Bump it only together with a migration.
pub const RECORD_FORMAT: u8 = 1;

const TRAILER: usize = 4;

/// The most bytes one record's fields may claim when decoded. A length
/// prefix is read before what it counts, so without a limit a damaged (or
/// crafted) record that still passes its checksum could claim exabytes and
/// abort the process on the allocation. Far above any record written: the
/// largest, a change's intent, holds one write (a client message, 16 MiB by
/// default, or an import batch of about 8 MiB).
pub const MAX_RECORD_BYTES: usize = 1 << 30;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn decode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_RECORD_BYTES>,
> {
    config().with_limit::<MAX_RECORD_BYTES>()
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(RECORD_FORMAT);
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("writing to a Vec cannot fail and our records always encode");
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Whether the record's trailing checksum matches its bytes.
pub fn checksum_ok(bytes: &[u8]) -> bool {
    stored_checksum(bytes).is_some_and(|crc| crc == crc32fast::hash(&bytes[..bytes.len() - TRAILER]))
}

/// The checksum a record carries.
pub fn stored_checksum(bytes: &[u8]) -> Option<u32> {
    let at = bytes.len().checked_sub(TRAILER)?;
    Some(u32::from_le_bytes(bytes[at..].try_into().ok()?))
}

/// Decodes a record, refusing a wrong format byte or a bad checksum.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    if !checksum_ok(bytes) {
        return Err(StorageError::Corrupt(format!("{what}: stored record failed its checksum")));
    }
    let body = &bytes[..bytes.len() - TRAILER];
    match body.first() {
        Some(&RECORD_FORMAT) => {}
        Some(other) => {
            return Err(StorageError::Corrupt(format!("{what}: record format {other} is not {RECORD_FORMAT}")));
        }
        None => return Err(StorageError::Corrupt(format!("{what}: empty record"))),
    }
    let (value, used) = bincode::serde::decode_from_slice(&body[1..], decode_config())
        .map_err(|e| StorageError::Corrupt(format!("{what}: undecodable record: {e}")))?;
    if used != body.len() - 1 {
        return Err(StorageError::Corrupt(format!("{what}: trailing bytes in record")));
    }
    Ok(value)
}

/// Rewrites the first fields of a record (`H`, a prefix of its shape) with
/// `f`, keeping the rest of the record byte for byte (migrations).
pub fn rewrite_head<H: Serialize + DeserializeOwned>(
    bytes: &[u8],
    what: &str,
    f: impl FnOnce(&mut H) -> Result<()>,
) -> Result<Vec<u8>> {
    if !checksum_ok(bytes) {
        return Err(StorageError::Corrupt(format!("{what}: stored record failed its checksum")));
    }
    let body = &bytes[..bytes.len() - TRAILER];
    if body.first() != Some(&RECORD_FORMAT) {
        return Err(StorageError::Corrupt(format!("{what}: record format is not {RECORD_FORMAT}")));
    }
    let (mut head, used): (H, usize) = bincode::serde::decode_from_slice(&body[1..], decode_config())
        .map_err(|e| StorageError::Corrupt(format!("{what}: undecodable record: {e}")))?;
    f(&mut head)?;
    let mut out = Vec::with_capacity(bytes.len() + 8);
    out.push(RECORD_FORMAT);
    bincode::serde::encode_into_std_write(&head, &mut out, config())
        .expect("writing to a Vec cannot fail and our records always encode");
    out.extend_from_slice(&body[1 + used..]);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_rewritten_and_the_rest_kept() {
        let v = (7u64, -5i64, "tail".to_string(), vec![9u8; 300]);
        let bytes = encode(&v);
        let out = rewrite_head(&bytes, "t", |h: &mut (u64, i64)| {
            h.1 *= 1_000_000;
            Ok(())
        })
        .unwrap();
        assert_eq!(
            decode::<(u64, i64, String, Vec<u8>)>(&out, "t").unwrap(),
            (7, -5_000_000, "tail".into(), vec![9; 300])
        );
    }

    #[test]
    fn round_trip_and_detects_flipped_byte() {
        let v = (42u64, "hello".to_string(), vec![1u8, 2, 3]);
        let mut bytes = encode(&v);
        assert_eq!(decode::<(u64, String, Vec<u8>)>(&bytes, "t").unwrap(), v);
        bytes[3] ^= 0x40;
        assert!(decode::<(u64, String, Vec<u8>)>(&bytes, "t").is_err());
        assert!(!checksum_ok(&bytes));
    }

    /// Regression: a record with a valid checksum whose length prefix claims
    /// exabytes aborted the process (`memory allocation of ... failed`).
    #[test]
    fn a_huge_length_prefix_is_an_error() {
        let mut body = vec![RECORD_FORMAT, 253];
        body.extend_from_slice(&0x73f6_6a9a_1c2b_38f2u64.to_le_bytes());
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        assert!(decode::<String>(&body, "t").unwrap_err().to_string().contains("undecodable"));
        assert!(decode::<Vec<u8>>(&body, "t").is_err());
        assert!(decode::<Vec<String>>(&body, "t").is_err());
    }
}
