//! Checksummed envelopes for metadata files (schemas, snapshots, manifests).
//!
//! ```text
//!   magic "SHMETA01" (8 bytes) | body length u64 LE | crc32 of body u32 LE | body (JSON)
//! ```
//!
//! A truncated file, a wrong length or a checksum mismatch is reported as
//! [`Error::Corrupt`] naming the file, before any JSON is parsed.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"SHMETA01";
const HEADER: usize = 8 + 8 + 4;

/// Encodes `value` as JSON inside a checksummed envelope.
///
/// # Errors
/// Serialization failures (a bug).
pub fn encode<T: Serialize>(value: &T) -> Result<Bytes> {
    let body = serde_json::to_vec(value).map_err(|e| Error::Invalid(format!("cannot encode metadata: {e}")))?;
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(Bytes::from(out))
}

/// Verifies and decodes an envelope read from `path`.
///
/// # Errors
/// [`Error::Corrupt`] naming `path` when the bytes are not a complete, intact envelope.
pub fn decode<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T> {
    if bytes.len() < HEADER {
        return Err(Error::corrupt(path, format!("truncated: {} bytes, header needs {HEADER}", bytes.len())));
    }
    if &bytes[..8] != MAGIC {
        return Err(Error::corrupt(path, "not a streamhouse metadata file (bad magic)"));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let body = &bytes[HEADER..];
    if body.len() != len {
        return Err(Error::corrupt(path, format!("truncated: body is {} bytes, header says {len}", body.len())));
    }
    if crc32fast::hash(body) != crc {
        return Err(Error::corrupt(path, "checksum mismatch"));
    }
    serde_json::from_slice(body).map_err(|e| Error::corrupt(path, format!("undecodable metadata: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_corruption_is_caught() {
        let value = vec![1u64, 2, 3];
        let bytes = encode(&value).unwrap();
        assert_eq!(decode::<Vec<u64>>("f", &bytes).unwrap(), value);
        for cut in [0, 5, HEADER, bytes.len() - 1] {
            let err = decode::<Vec<u64>>("snapshot/snapshot-1", &bytes[..cut]).unwrap_err();
            assert!(err.to_string().contains("snapshot/snapshot-1"), "{err}");
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.to_vec();
            flipped[i] ^= 0x40;
            assert!(decode::<Vec<u64>>("f", &flipped).is_err(), "flip at {i} not detected");
        }
    }
}
