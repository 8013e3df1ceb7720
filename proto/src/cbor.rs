//! CBOR for everything host-side: records on the wire and at rest, audit events, sync messages.
//!
//! Encoding is `ciborium`'s (the bytes that record digests and audit hashes are computed over);
//! decoding is `cbor4ii`'s serde deserializer over a slice, 2.2 × faster on a summary (a LAN
//! lookup, every sync batch, every audit event the hub takes in), with the same 256-deep
//! recursion limit (`cargo bench -p edge-daemon --bench codecs`). The two agree on everything
//! `ciborium` writes for these types (`proto/tests/export_corpus.rs`:
//! `every_corpus_summary_decodes_the_same_with_both_decoders`, and every round-trip test); one
//! thing the faster decoder does not take is a float written in a narrower width than its type,
//! which `ciborium` does for floats — no wire or stored type has a float (the same corpus test
//! checks).
//!
//! Decoding is bounded ([`MAX_CBOR_BYTES`]) and never panics; unknown fields are ignored so a
//! newer writer's records decode on an older reader. Summaries carry an explicit schema version
//! that a reader checks ([`decode_summary`]).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{Summary, SCHEMA_VERSION};

/// The largest CBOR value any Kerbside decoder accepts (a summary is a few KiB).
pub const MAX_CBOR_BYTES: usize = 4 * 1024 * 1024;

/// Why bytes could not be decoded (or, rarely, encoded).
#[derive(Debug, thiserror::Error)]
pub enum CborError {
    #[error("CBOR value is {0} bytes, more than the {MAX_CBOR_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    #[error("schema version {found} is newer than this build understands ({supported})")]
    UnsupportedSchema { found: u16, supported: u16 },
    #[error("CBOR encoding failed: {0}")]
    Encode(String),
}

/// Encode any serialisable value.
pub fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, CborError> {
    let mut out = Vec::with_capacity(512);
    ciborium::into_writer(value, &mut out).map_err(|e| CborError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decode a value from untrusted bytes: bounded in size, never panics.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CborError> {
    if bytes.len() > MAX_CBOR_BYTES {
        return Err(CborError::TooLarge(bytes.len()));
    }
    from_slice_prefix(bytes).map(|(v, _)| v)
}

/// Decode one value from the start of untrusted `bytes` (never panics; the caller bounds the
/// size, as the sync framing does with its own limit); also how many bytes follow it.
pub fn from_slice_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CborError> {
    use cbor4ii::core::dec::{Read, Reference};
    let mut de = cbor4ii::serde::Deserializer::new(cbor4ii::core::utils::SliceReader::new(bytes));
    let v = T::deserialize(&mut de).map_err(|e| CborError::Malformed(e.to_string()))?;
    let mut rest = de.into_inner();
    let trailing = match rest.fill(usize::MAX) {
        Ok(Reference::Long(b)) => b.len(),
        Ok(Reference::Short(b)) => b.len(),
        Err(never) => match never {},
    };
    Ok((v, trailing))
}

/// Encode a summary (always with the current schema version).
pub fn encode_summary(s: &Summary) -> Result<Vec<u8>, CborError> {
    if s.schema == SCHEMA_VERSION {
        to_vec(s)
    } else {
        let mut s = s.clone();
        s.schema = SCHEMA_VERSION;
        to_vec(&s)
    }
}

/// Decode a summary, refusing a schema version newer than this build.
pub fn decode_summary(bytes: &[u8]) -> Result<Summary, CborError> {
    let s: Summary = from_slice(bytes)?;
    if s.schema > SCHEMA_VERSION {
        return Err(CborError::UnsupportedSchema {
            found: s.schema,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(s)
}
