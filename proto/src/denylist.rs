//! The token deny list: shift and operator tokens revoked before their expiry.
//!
//! `edge-provision token-revoke` adds an entry naming a token id, a member of staff or an
//! operator, signs the whole list with the fleet's staff-token key and writes it into the fleet
//! directory (`token-denylist.cbor`). The hub reads it (and may check operator tokens against
//! it), and hands it to every unit over the sync; units check each shift token against it.
//!
//! ## Rules
//!
//! - An entry for a **token id** denies that token; one for a **staff id** (or **operator id**)
//!   denies every token of that person issued at or before the entry's `revoked_at` (tokens
//!   minted later — a new shift after the matter is settled — are not affected; stop minting
//!   them instead).
//! - `until` is when every token the entry covers has expired anyway:
//!   `revoked_at + 12 h + 5 min` ([`entry_until`]: the longest lifetime plus the clock skew a
//!   verifier allows). An entry past its `until` can never change a decision (what it covers is
//!   refused as expired), so [`DenyList::denies`] ignores it and [`DenyList::prune`] drops it when
//!   the list is rewritten.
//! - `version` only grows: a holder replaces its list only with a verified list of a higher
//!   version ([`DenyList::supersedes`]), so an old list cannot be replayed to lift a revocation.
//!
//! ## Encoding
//!
//! A CBOR map `{"sig": bytes(64), "list": bytes(payload)}` (in that canonical order), where the
//! Ed25519 signature covers [`DENYLIST_TAG`] followed by the payload, and the payload is the
//! canonical CBOR (RFC 8949 §4.2.1) of
//! `{"v": 1, "entries": [entry...], "version": N, "issued_at": ms}`, each entry
//! `{"id": text, "kind": "token"|"staff"|"operator", "until": ms, "reason"?: text,
//! "revoked_at": ms}`. [`verify_denylist`] refuses any other encoding, more than
//! [`MAX_DENY_ENTRIES`] entries or more than [`MAX_DENYLIST_BYTES`]. Pure: no I/O, no clock, no
//! panics.

use ring::signature::Ed25519KeyPair;
use serde::Deserialize;

use crate::time::UnixMillis;
use crate::token::{
    head, int, signature_ok, tagged, text, valid_person_id, valid_token_id, OperatorClaims,
    ShiftClaims, CLOCK_SKEW_MS, MAX_LIFETIME_MS, MAX_OPERATOR_LIFETIME_MS,
};

/// What the deny list's signature covers before the payload (domain separation from tokens).
pub const DENYLIST_TAG: &[u8] = b"kerbside/token-denylist/v1\0";
/// The deny-list format version this build writes and reads.
pub const DENYLIST_FORMAT: u8 = 1;
/// The largest signed deny list [`verify_denylist`] looks at.
pub const MAX_DENYLIST_BYTES: usize = 1024 * 1024;
/// The most entries a list may hold (live entries last at most ~12 h, so this is generous).
pub const MAX_DENY_ENTRIES: usize = 10_000;
/// The longest reason kept with an entry, in bytes.
pub const MAX_REASON_LEN: usize = 200;

/// What an entry names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DenySubject {
    /// One token (shift or operator), by its 32-hex-digit id.
    Token(String),
    /// Every shift token of a member of staff issued at or before `revoked_at`.
    Staff(String),
    /// Every operator token of an operator issued at or before `revoked_at`.
    Operator(String),
}

impl DenySubject {
    /// `token`, `staff` or `operator`.
    pub fn kind(&self) -> &'static str {
        match self {
            DenySubject::Token(_) => "token",
            DenySubject::Staff(_) => "staff",
            DenySubject::Operator(_) => "operator",
        }
    }

    /// The id it names.
    pub fn id(&self) -> &str {
        match self {
            DenySubject::Token(s) | DenySubject::Staff(s) | DenySubject::Operator(s) => s,
        }
    }

    /// Check the id's shape (token ids: 32 lower-case hex digits; staff and operator ids: 1–64
    /// of `A-Z a-z 0-9 . _ - @`).
    pub fn check(&self) -> Result<(), DenyListError> {
        let ok = match self {
            DenySubject::Token(t) => valid_token_id(t),
            DenySubject::Staff(s) | DenySubject::Operator(s) => valid_person_id(s),
        };
        if ok {
            Ok(())
        } else {
            Err(DenyListError::Malformed(match self {
                DenySubject::Token(_) => "a token id is not 32 lower-case hex digits",
                _ => "a staff or operator id is not 1-64 of A-Z a-z 0-9 . _ - @",
            }))
        }
    }
}

impl std::fmt::Display for DenySubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind(), self.id())
    }
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEntry {
    /// What is revoked.
    pub subject: DenySubject,
    /// When it was revoked.
    pub revoked_at: UnixMillis,
    /// When every token it covers has expired anyway ([`entry_until`]).
    pub until: UnixMillis,
    /// Why, for people (1–200 bytes, no control characters).
    pub reason: Option<String>,
}

impl DenyEntry {
    /// An entry revoking `subject` at `revoked_at`, live until [`entry_until`].
    pub fn new(subject: DenySubject, revoked_at: UnixMillis, reason: Option<String>) -> Self {
        DenyEntry {
            subject,
            revoked_at,
            until: entry_until(revoked_at),
            reason,
        }
    }

    fn live(&self, now: UnixMillis) -> bool {
        now < self.until
    }
}

/// When every token an entry made at `revoked_at` covers has expired: the longest token
/// lifetime (shift or operator) plus the clock skew verifiers allow, after `revoked_at`.
pub fn entry_until(revoked_at: UnixMillis) -> UnixMillis {
    revoked_at.plus_ms(MAX_LIFETIME_MS.max(MAX_OPERATOR_LIFETIME_MS) + CLOCK_SKEW_MS)
}

/// The whole list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DenyList {
    /// Grows with every rewrite; a holder only accepts a higher version than it has.
    pub version: u64,
    /// When this version was signed.
    pub issued_at: UnixMillis,
    /// Live revocations.
    pub entries: Vec<DenyEntry>,
}

/// Why a deny list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenyListError {
    /// Not a deny list, or one that breaks the format's rules.
    #[error("malformed token deny list: {0}")]
    Malformed(&'static str),
    /// A format version this build does not understand.
    #[error("token deny list format {0} is not supported (expected {DENYLIST_FORMAT})")]
    UnsupportedVersion(u64),
    /// Not signed by this fleet's staff-token key.
    #[error("token deny list signature is not valid for this fleet")]
    BadSignature,
}

impl DenyList {
    /// An empty list of `version`.
    pub fn empty(version: u64, issued_at: UnixMillis) -> Self {
        DenyList {
            version,
            issued_at,
            entries: Vec::new(),
        }
    }

    /// Whether a shift token is revoked at `now`: its token id is listed, or its staff id is
    /// listed with `revoked_at` at or after the token's `issued_at`. Entries past their `until`
    /// are ignored (the tokens they cover have expired).
    pub fn denies(&self, claims: &ShiftClaims, now: UnixMillis) -> bool {
        self.entries
            .iter()
            .filter(|e| e.live(now))
            .any(|e| match &e.subject {
                DenySubject::Token(t) => *t == claims.token_id,
                DenySubject::Staff(s) => *s == claims.staff_id && claims.issued_at <= e.revoked_at,
                DenySubject::Operator(_) => false,
            })
    }

    /// Whether an operator token is revoked at `now` (by token id, or by operator id for tokens
    /// issued at or before the entry's `revoked_at`).
    pub fn denies_operator(&self, claims: &OperatorClaims, now: UnixMillis) -> bool {
        self.entries
            .iter()
            .filter(|e| e.live(now))
            .any(|e| match &e.subject {
                DenySubject::Token(t) => *t == claims.token_id,
                DenySubject::Operator(o) => {
                    *o == claims.operator_id && claims.issued_at <= e.revoked_at
                }
                DenySubject::Staff(_) => false,
            })
    }

    /// Drop the entries past their `until` at `now`.
    pub fn prune(&mut self, now: UnixMillis) {
        self.entries.retain(|e| e.live(now));
    }

    /// Add `entry`, replacing any entry for the same subject (a later revocation of a person
    /// covers everything the earlier one did).
    pub fn add(&mut self, entry: DenyEntry) {
        self.entries.retain(|e| e.subject != entry.subject);
        self.entries.push(entry);
    }

    /// Whether this (verified) list should replace `current`: its version is higher.
    pub fn supersedes(&self, current: &DenyList) -> bool {
        self.version > current.version
    }

    /// Check the rules a signer must keep: entry count, ids, reasons, `revoked_at < until`.
    pub fn check(&self) -> Result<(), DenyListError> {
        if self.entries.len() > MAX_DENY_ENTRIES {
            return Err(DenyListError::Malformed("more than 10000 entries"));
        }
        for e in &self.entries {
            e.subject.check()?;
            if e.until <= e.revoked_at {
                return Err(DenyListError::Malformed(
                    "an entry's until is not after its revoked_at",
                ));
            }
            if let Some(r) = &e.reason {
                if r.trim().is_empty()
                    || r.len() > MAX_REASON_LEN
                    || r.chars().any(char::is_control)
                {
                    return Err(DenyListError::Malformed(
                        "a reason is empty, longer than 200 bytes or has control characters",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Sign `list` with the fleet's staff-token key: the bytes to store and distribute. The list is
/// not checked here (the signer calls [`DenyList::check`]; verifiers refuse a list that breaks
/// the rules).
pub fn sign_denylist(list: &DenyList, key: &Ed25519KeyPair) -> Vec<u8> {
    let payload = encode_list(list);
    let sig = key.sign(&tagged(DENYLIST_TAG, &payload));
    let mut out = Vec::with_capacity(payload.len() + 80);
    head(&mut out, 5, 2);
    text(&mut out, "sig");
    head(&mut out, 2, sig.as_ref().len() as u64);
    out.extend_from_slice(sig.as_ref());
    text(&mut out, "list");
    head(&mut out, 2, payload.len() as u64);
    out.extend_from_slice(&payload);
    out
}

/// Verify a signed deny list against the fleet's staff-token public key (32 raw Ed25519
/// bytes) and return it. Checks size, envelope, signature, canonical encoding, format version
/// and the list's rules. Pure and total.
pub fn verify_denylist(bytes: &[u8], public_key: &[u8]) -> Result<DenyList, DenyListError> {
    if bytes.len() > MAX_DENYLIST_BYTES {
        return Err(DenyListError::Malformed("larger than 1 MiB"));
    }
    let envelope: ciborium::Value = ciborium::de::from_reader_with_recursion_limit(bytes, 4)
        .map_err(|_| DenyListError::Malformed("not a CBOR map"))?;
    let map = envelope
        .as_map()
        .ok_or(DenyListError::Malformed("not a CBOR map"))?;
    let field = |name: &str| {
        map.iter()
            .find(|(k, _)| k.as_text() == Some(name))
            .and_then(|(_, v)| v.as_bytes())
    };
    let (Some(sig), Some(payload), 2) = (field("sig"), field("list"), map.len()) else {
        return Err(DenyListError::Malformed(
            "expected exactly the byte strings sig and list",
        ));
    };
    if sig.len() != 64 {
        return Err(DenyListError::Malformed("signature is not 64 bytes"));
    }
    if !signature_ok(public_key, DENYLIST_TAG, payload, sig) {
        return Err(DenyListError::BadSignature);
    }
    let list = decode_list(payload)?;
    // The envelope must be canonical too, so one list has one encoding.
    let mut again = Vec::with_capacity(bytes.len());
    head(&mut again, 5, 2);
    text(&mut again, "sig");
    head(&mut again, 2, 64);
    again.extend_from_slice(sig);
    text(&mut again, "list");
    head(&mut again, 2, payload.len() as u64);
    again.extend_from_slice(payload);
    if again != bytes {
        return Err(DenyListError::Malformed("not canonically encoded"));
    }
    Ok(list)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireList {
    v: u64,
    entries: Vec<WireEntry>,
    version: u64,
    issued_at: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEntry {
    id: String,
    kind: String,
    until: i64,
    #[serde(default)]
    reason: Option<String>,
    revoked_at: i64,
}

fn decode_list(payload: &[u8]) -> Result<DenyList, DenyListError> {
    let wire: WireList = ciborium::de::from_reader_with_recursion_limit(payload, 8)
        .map_err(|_| DenyListError::Malformed("the list is not a valid CBOR deny list"))?;
    if wire.v != u64::from(DENYLIST_FORMAT) {
        return Err(DenyListError::UnsupportedVersion(wire.v));
    }
    if wire.entries.len() > MAX_DENY_ENTRIES {
        return Err(DenyListError::Malformed("more than 10000 entries"));
    }
    let mut entries = Vec::with_capacity(wire.entries.len());
    for e in wire.entries {
        let subject = match e.kind.as_str() {
            "token" => DenySubject::Token(e.id),
            "staff" => DenySubject::Staff(e.id),
            "operator" => DenySubject::Operator(e.id),
            _ => return Err(DenyListError::Malformed("an entry has an unknown kind")),
        };
        entries.push(DenyEntry {
            subject,
            revoked_at: UnixMillis(e.revoked_at),
            until: UnixMillis(e.until),
            reason: e.reason,
        });
    }
    let list = DenyList {
        version: wire.version,
        issued_at: UnixMillis(wire.issued_at),
        entries,
    };
    if encode_list(&list) != payload {
        return Err(DenyListError::Malformed(
            "the list is not canonically encoded",
        ));
    }
    list.check()?;
    Ok(list)
}

/// Canonical CBOR of the list (keys: shorter first, then bytewise).
fn encode_list(l: &DenyList) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + l.entries.len() * 96);
    head(&mut out, 5, 4);
    // Order: v, entries, version, issued_at.
    text(&mut out, "v");
    head(&mut out, 0, u64::from(DENYLIST_FORMAT));
    text(&mut out, "entries");
    head(&mut out, 4, l.entries.len() as u64);
    for e in &l.entries {
        head(&mut out, 5, 4 + u64::from(e.reason.is_some()));
        // Order: id, kind, until, reason, revoked_at.
        text(&mut out, "id");
        text(&mut out, e.subject.id());
        text(&mut out, "kind");
        text(&mut out, e.subject.kind());
        text(&mut out, "until");
        int(&mut out, e.until.0);
        if let Some(r) = &e.reason {
            text(&mut out, "reason");
            text(&mut out, r);
        }
        text(&mut out, "revoked_at");
        int(&mut out, e.revoked_at.0);
    }
    text(&mut out, "version");
    head(&mut out, 0, l.version);
    text(&mut out, "issued_at");
    int(&mut out, l.issued_at.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::StaffRole;
    use crate::token::{OperatorRole, TOKEN_VERSION};
    use proptest::prelude::*;
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair as _;

    const T0: UnixMillis = UnixMillis(1_790_000_000_000);
    const TID: &str = "00112233445566778899aabbccddeeff";

    fn key() -> Ed25519KeyPair {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()
    }

    fn shift(token_id: &str, staff: &str, issued_at: UnixMillis) -> ShiftClaims {
        ShiftClaims {
            v: TOKEN_VERSION,
            token_id: token_id.into(),
            staff_id: staff.into(),
            staff_name: "PARAMEDIC, Test".into(),
            role: StaffRole::Clinical,
            org_ods: None,
            device: None,
            issued_at,
            expires_at: issued_at.plus_ms(12 * UnixMillis::HOUR),
        }
    }

    fn sample() -> DenyList {
        let mut l = DenyList::empty(7, T0);
        l.add(DenyEntry::new(
            DenySubject::Token(TID.into()),
            T0,
            Some("lost tablet — “urgent”".into()),
        ));
        l.add(DenyEntry::new(
            DenySubject::Staff("555000111222".into()),
            T0,
            None,
        ));
        l.add(DenyEntry::new(
            DenySubject::Operator("OPS-0001".into()),
            T0,
            None,
        ));
        l
    }

    #[test]
    fn round_trip_and_signature() {
        let (k, other) = (key(), key());
        let l = sample();
        let bytes = sign_denylist(&l, &k);
        assert_eq!(
            verify_denylist(&bytes, k.public_key().as_ref()),
            Ok(l.clone())
        );
        assert_eq!(
            verify_denylist(&bytes, other.public_key().as_ref()),
            Err(DenyListError::BadSignature)
        );
        // Any altered byte is refused, never a panic.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(
                verify_denylist(&b, k.public_key().as_ref()).is_err(),
                "byte {i}"
            );
        }
        // Empty list.
        let e = DenyList::empty(1, T0);
        assert_eq!(
            verify_denylist(&sign_denylist(&e, &k), k.public_key().as_ref()),
            Ok(e)
        );
    }

    #[test]
    fn a_token_signature_is_not_a_deny_list_signature() {
        // Domain separation: bytes signed under the token tags do not verify as a list.
        let k = key();
        let payload = encode_list(&sample());
        for tag in [
            crate::token::SHIFT_TOKEN_TAG,
            crate::token::OPERATOR_TOKEN_TAG,
            b"" as &[u8],
        ] {
            let sig = k.sign(&tagged(tag, &payload));
            let mut out = Vec::new();
            head(&mut out, 5, 2);
            text(&mut out, "sig");
            head(&mut out, 2, 64);
            out.extend_from_slice(sig.as_ref());
            text(&mut out, "list");
            head(&mut out, 2, payload.len() as u64);
            out.extend_from_slice(&payload);
            assert_eq!(
                verify_denylist(&out, k.public_key().as_ref()),
                Err(DenyListError::BadSignature)
            );
        }
    }

    #[test]
    fn denies_by_token_and_by_staff_issued_before() {
        let l = sample();
        let now = T0.plus_ms(UnixMillis::HOUR);
        // By token id, whoever holds it.
        assert!(l.denies(&shift(TID, "999", T0.plus_ms(-1000)), now));
        // By staff id: tokens issued at or before the revocation.
        let other_tid = "ffffffffffffffffffffffffffffffff";
        assert!(l.denies(&shift(other_tid, "555000111222", T0.plus_ms(-5)), now));
        assert!(l.denies(&shift(other_tid, "555000111222", T0), now));
        // A token minted after the revocation is not covered.
        assert!(!l.denies(&shift(other_tid, "555000111222", T0.plus_ms(1)), now));
        // Someone else.
        assert!(!l.denies(&shift(other_tid, "123", T0), now));
        // Operator entries never deny shift tokens, even with a matching id.
        assert!(!l.denies(&shift(other_tid, "OPS-0001", T0), now));
    }

    #[test]
    fn operator_tokens_are_deny_listed_too() {
        let l = sample();
        let op = |tid: &str, id: &str, at: UnixMillis| OperatorClaims {
            v: TOKEN_VERSION,
            token_id: tid.into(),
            operator_id: id.into(),
            operator_name: "ENGINEER, Fleet".into(),
            role: OperatorRole::Fleet,
            issued_at: at,
            expires_at: at.plus_ms(UnixMillis::HOUR),
        };
        let now = T0.plus_ms(1);
        let other = "ffffffffffffffffffffffffffffffff";
        assert!(l.denies_operator(&op(TID, "X", T0), now));
        assert!(l.denies_operator(&op(other, "OPS-0001", T0), now));
        assert!(!l.denies_operator(&op(other, "OPS-0001", T0.plus_ms(1)), now));
        assert!(!l.denies_operator(&op(other, "555000111222", T0), now));
    }

    #[test]
    fn expired_entries_are_ignored_and_pruned() {
        let mut l = sample();
        let c = shift(TID, "555000111222", T0);
        let until = entry_until(T0);
        assert_eq!(until, T0.plus_ms(12 * UnixMillis::HOUR + CLOCK_SKEW_MS));
        assert!(
            c.expires_at < until,
            "every covered token has expired by until"
        );
        assert!(l.denies(&c, until.plus_ms(-1)));
        assert!(!l.denies(&c, until));
        l.add(DenyEntry::new(
            DenySubject::Staff("777".into()),
            T0.plus_ms(UnixMillis::HOUR),
            None,
        ));
        l.prune(until);
        assert_eq!(l.entries.len(), 1);
        assert_eq!(l.entries[0].subject, DenySubject::Staff("777".into()));
    }

    #[test]
    fn add_replaces_the_same_subject_and_versions_only_grow() {
        let mut l = DenyList::empty(1, T0);
        l.add(DenyEntry::new(DenySubject::Staff("1".into()), T0, None));
        l.add(DenyEntry::new(
            DenySubject::Staff("1".into()),
            T0.plus_ms(10),
            None,
        ));
        assert_eq!(l.entries.len(), 1);
        assert_eq!(l.entries[0].revoked_at, T0.plus_ms(10));
        let newer = DenyList::empty(2, T0);
        assert!(newer.supersedes(&l));
        assert!(!l.supersedes(&newer));
        assert!(!l.supersedes(&l.clone()));
    }

    #[test]
    fn rules_are_enforced_after_the_signature() {
        let k = key();
        let pk = k.public_key().as_ref().to_vec();
        let bad = [
            DenyEntry::new(DenySubject::Token("XYZ".into()), T0, None),
            DenyEntry::new(DenySubject::Staff("a b".into()), T0, None),
            DenyEntry::new(DenySubject::Staff("1".into()), T0, Some("a\nb".into())),
            DenyEntry {
                until: T0,
                ..DenyEntry::new(DenySubject::Staff("1".into()), T0, None)
            },
        ];
        for e in bad {
            let mut l = DenyList::empty(1, T0);
            l.entries.push(e.clone());
            assert!(l.check().is_err(), "{e:?}");
            assert!(
                matches!(
                    verify_denylist(&sign_denylist(&l, &k), &pk),
                    Err(DenyListError::Malformed(_))
                ),
                "{e:?}"
            );
        }
        assert!(verify_denylist(&[], &pk).is_err());
        assert!(verify_denylist(&vec![0u8; MAX_DENYLIST_BYTES + 1], &pk).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = verify_denylist(&b, &[0u8; 32]);
        }

        #[test]
        fn signed_garbage_is_refused_without_panic(payload in proptest::collection::vec(any::<u8>(), 0..600)) {
            let k = key();
            let sig = k.sign(&tagged(DENYLIST_TAG, &payload));
            let mut out = Vec::new();
            head(&mut out, 5, 2);
            text(&mut out, "sig");
            head(&mut out, 2, 64);
            out.extend_from_slice(sig.as_ref());
            text(&mut out, "list");
            head(&mut out, 2, payload.len() as u64);
            out.extend_from_slice(&payload);
            prop_assert!(verify_denylist(&out, k.public_key().as_ref()).is_err());
        }
    }
}
