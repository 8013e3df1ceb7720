//! Signatures on sync data: one Ed25519 signature per batch, one per fetched record.
//!
//! The hub signs; a unit verifies with the hub's 32-byte public key before anything is stored.
//! What is signed is a fixed, hand-built byte string (not a CBOR re-encoding), so both ends
//! agree on it whatever the serialiser does:
//!
//! - change digest = SHA-256(`"kerbside sync change v1\0"` ‖ kind ‖ seq ‖ NHS digits ‖ version ‖
//!   payload), where kind is 1 upsert, 2 withdraw, 3 keep; the payload is SHA-256(record) for an
//!   upsert, the reason code for a withdrawal, nothing for a keep; integers are u64 big-endian.
//! - batch message = `"kerbside sync batch v1\0"` ‖ kind bytes ‖ u32 change count ‖ digests,
//!   kind bytes being 1 ‖ first ‖ last (feed), 2 ‖ epoch ‖ after ‖ through (baseline; a key is
//!   pass ‖ NHS digits, `after` preceded by 0 absent / 1 present), 3 ‖ epoch ‖ snapshot (done).
//! - fetched message = `"kerbside sync fetched v1\0"` ‖ NHS digits ‖ version ‖ SHA-256(record).
//!
//! The per-record SHA-256 ([`record_digest`]) is also what a unit can keep beside each stored
//! record to check its integrity cheaply before serving it.

use ring::digest::{self, SHA256};
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};

use super::wire::{BaselineKey, BatchKind, Bytes, Change};
use crate::nhs::NhsNumber;

/// A signature did not verify against the hub's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature does not verify against the hub's key")]
pub struct BadSignature;

/// SHA-256 of a record's bytes.
pub fn record_digest(record: &[u8]) -> [u8; 32] {
    sha256(record)
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = digest::digest(&SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn nhs_bytes(n: &NhsNumber) -> [u8; 10] {
    n.digits().map(|d| b'0' + d)
}

/// The digest of one change, as covered by its batch's signature.
pub fn change_digest(c: &Change) -> [u8; 32] {
    change_digest_and_record(c).0
}

/// The digest of one change and, for an upsert, its record's digest (computed on the way).
fn change_digest_and_record(c: &Change) -> ([u8; 32], Option<[u8; 32]>) {
    let mut m = Vec::with_capacity(96);
    m.extend_from_slice(b"kerbside sync change v1\0");
    let (kind, seq, nhs, version) = match c {
        Change::Upsert {
            seq, nhs, version, ..
        } => (1u8, seq, nhs, version),
        Change::Withdraw {
            seq, nhs, version, ..
        } => (2u8, seq, nhs, version),
        Change::Keep { seq, nhs, version } => (3u8, seq, nhs, version),
    };
    m.push(kind);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&nhs_bytes(nhs));
    m.extend_from_slice(&version.to_be_bytes());
    let mut record_sha = None;
    match c {
        Change::Upsert { record, .. } => {
            let d = record_digest(record.as_slice());
            m.extend_from_slice(&d);
            record_sha = Some(d);
        }
        Change::Withdraw { reason, .. } => m.push(u8::from(*reason)),
        Change::Keep { .. } => {}
    }
    (sha256(&m), record_sha)
}

fn push_key(m: &mut Vec<u8>, k: &BaselineKey) {
    m.push(k.pass);
    m.extend_from_slice(&nhs_bytes(&k.nhs));
}

fn batch_message(kind: &BatchKind, changes: &[Change]) -> Vec<u8> {
    batch_message_and_digests(kind, changes).0
}

/// The signed message of a batch, and each change's record digest (`None` but for upserts).
fn batch_message_and_digests(
    kind: &BatchKind,
    changes: &[Change],
) -> (Vec<u8>, Vec<Option<[u8; 32]>>) {
    let mut m = Vec::with_capacity(64 + 32 * changes.len());
    m.extend_from_slice(b"kerbside sync batch v1\0");
    match kind {
        BatchKind::Feed {
            first_seq,
            last_seq,
        } => {
            m.push(1);
            m.extend_from_slice(&first_seq.to_be_bytes());
            m.extend_from_slice(&last_seq.to_be_bytes());
        }
        BatchKind::Baseline {
            epoch,
            after,
            through,
        } => {
            m.push(2);
            m.extend_from_slice(&epoch.to_be_bytes());
            match after {
                None => m.push(0),
                Some(k) => {
                    m.push(1);
                    push_key(&mut m, k);
                }
            }
            push_key(&mut m, through);
        }
        BatchKind::BaselineDone {
            epoch,
            snapshot_seq,
        } => {
            m.push(3);
            m.extend_from_slice(&epoch.to_be_bytes());
            m.extend_from_slice(&snapshot_seq.to_be_bytes());
        }
    }
    // A batch never holds 2^32 changes (frames are bounded); saturate rather than wrap.
    let n = u32::try_from(changes.len()).unwrap_or(u32::MAX);
    m.extend_from_slice(&n.to_be_bytes());
    let mut records = Vec::with_capacity(changes.len());
    for c in changes {
        let (d, r) = change_digest_and_record(c);
        m.extend_from_slice(&d);
        records.push(r);
    }
    (m, records)
}

/// Sign a batch (hub side).
pub fn sign_batch(key: &Ed25519KeyPair, kind: &BatchKind, changes: &[Change]) -> Bytes {
    Bytes::from(key.sign(&batch_message(kind, changes)).as_ref())
}

/// Verify a batch against the hub's public key (32 raw bytes).
pub fn verify_batch(
    hub_public_key: &[u8],
    kind: &BatchKind,
    changes: &[Change],
    signature: &[u8],
) -> Result<(), BadSignature> {
    verify_batch_digests(hub_public_key, kind, changes, signature).map(|_| ())
}

/// [`verify_batch`], also returning each change's record digest ([`record_digest`]; `None`
/// but for upserts), which verifying computes anyway: the unit stores it beside the record
/// instead of hashing every record a second time.
pub fn verify_batch_digests(
    hub_public_key: &[u8],
    kind: &BatchKind,
    changes: &[Change],
    signature: &[u8],
) -> Result<Vec<Option<[u8; 32]>>, BadSignature> {
    let (m, digests) = batch_message_and_digests(kind, changes);
    UnparsedPublicKey::new(&ED25519, hub_public_key)
        .verify(&m, signature)
        .map_err(|_| BadSignature)?;
    Ok(digests)
}

fn fetched_message(nhs: &NhsNumber, version: u64, record: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(80);
    m.extend_from_slice(b"kerbside sync fetched v1\0");
    m.extend_from_slice(&nhs_bytes(nhs));
    m.extend_from_slice(&version.to_be_bytes());
    m.extend_from_slice(&record_digest(record));
    m
}

/// Sign an on-demand fetch answer (hub side).
pub fn sign_fetched(key: &Ed25519KeyPair, nhs: &NhsNumber, version: u64, record: &[u8]) -> Bytes {
    Bytes::from(key.sign(&fetched_message(nhs, version, record)).as_ref())
}

/// Verify an on-demand fetch answer for the patient the unit asked about.
pub fn verify_fetched(
    hub_public_key: &[u8],
    nhs: &NhsNumber,
    version: u64,
    record: &[u8],
    signature: &[u8],
) -> Result<(), BadSignature> {
    UnparsedPublicKey::new(&ED25519, hub_public_key)
        .verify(&fetched_message(nhs, version, record), signature)
        .map_err(|_| BadSignature)
}
