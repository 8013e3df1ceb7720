//! Shift tokens: how a member of staff proves, offline, who they are to a unit.
//!
//! At shift start the hub (or, in the workshop and in tests, `edge-provision token`) signs a
//! [`ShiftClaims`] with the fleet's staff-token key (Ed25519). The crew's tablet presents the
//! token to the unit on every request; the unit checks it with [`verify`] against the fleet's
//! token-verification public key, which ships in its bundle. No network and no secret is needed
//! on the vehicle, so a token minted in the depot still works in a tunnel.
//!
//! Compact form: `base64url(canonical CBOR claims) "." base64url(Ed25519 signature)`, both without
//! padding. The signature covers the exact CBOR bytes. The claims are a CBOR map whose keys are
//! the field names below, encoded deterministically (RFC 8949 §4.2.1: definite lengths, shortest
//! integer forms, keys sorted by their encoded bytes, absent options omitted). [`verify`] refuses
//! any payload that is not in that exact form, so one set of claims has exactly one encoding.
//!
//! Verification is pure (the caller supplies `now`), bounded ([`MAX_TOKEN_LEN`]) and never
//! panics, whatever the input; the daemon can cache a verified token until its expiry.
//!
//! Two kinds of token share the compact form, and neither can pass as the other:
//!
//! - **shift tokens** ([`ShiftClaims`], [`sign`] / [`verify`]): staff on a unit's LAN API, signed
//!   with the fleet's staff-token key;
//! - **operator tokens** ([`OperatorClaims`], [`sign_operator`] / [`verify_operator`]): fleet
//!   engineers and privacy officers on the hub's admin API, signed with the fleet's separate
//!   operator key.
//!
//! The Ed25519 signature never covers the claims alone but a domain-separation tag followed by
//! them ([`SHIFT_TOKEN_TAG`], [`OPERATOR_TOKEN_TAG`]; the deny list has its own, see
//! [`crate::denylist`]), so even a signature made with the wrong key for the wrong kind cannot be
//! replayed as the other kind; the two claim sets also have different, closed field sets.
//! Both kinds live at most 12 hours ([`MAX_LIFETIME_MS`], [`MAX_OPERATOR_LIFETIME_MS`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};
use serde::Deserialize;

use std::fmt;
use std::str::FromStr;

use crate::ids::{DeviceId, OdsCode, StaffRole};
use crate::time::UnixMillis;

/// The token format version this build writes and accepts.
pub const TOKEN_VERSION: u8 = 1;
/// The longest compact token [`verify`] looks at, in bytes.
pub const MAX_TOKEN_LEN: usize = 4 * 1024;
/// How far ahead of the unit's clock a token's `issued_at` may be (clock skew allowance).
pub const CLOCK_SKEW_MS: i64 = 5 * 60 * 1_000;
/// The longest lifetime (`expires_at - issued_at`) a shift token may claim: 12 hours.
pub const MAX_LIFETIME_MS: i64 = 12 * UnixMillis::HOUR;
/// The longest lifetime an operator token may claim: 12 hours.
pub const MAX_OPERATOR_LIFETIME_MS: i64 = 12 * UnixMillis::HOUR;
/// What a shift token's signature covers before the claims (domain separation).
pub const SHIFT_TOKEN_TAG: &[u8] = b"kerbside/shift-token/v1\0";
/// What an operator token's signature covers before the claims (domain separation).
pub const OPERATOR_TOKEN_TAG: &[u8] = b"kerbside/operator-token/v1\0";
/// Limits on the text claims (bytes).
const MAX_STAFF_ID_LEN: usize = 64;
const MAX_STAFF_NAME_LEN: usize = 200;

/// What a shift token asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShiftClaims {
    /// Format version; [`TOKEN_VERSION`].
    pub v: u8,
    /// A random 128-bit id, 32 lower-case hex digits, chosen by the issuer (this crate has no
    /// RNG). Audit events name it, so a token can be traced back to its issue.
    pub token_id: String,
    /// The member of staff's identifier (e.g. their NHS CIS2 / SDS user id): 1–64 characters
    /// from `A-Z a-z 0-9 . _ - @`.
    pub staff_id: String,
    /// Display name, e.g. `PARAMEDIC, Test`: 1–200 bytes, no control characters.
    pub staff_name: String,
    /// What they may see.
    pub role: StaffRole,
    /// The organisation they work for, when the issuer knows it.
    pub org_ods: Option<OdsCode>,
    /// When set, the token is valid only on this unit.
    pub device: Option<DeviceId>,
    /// When the token was issued (its validity starts then).
    pub issued_at: UnixMillis,
    /// When it stops being valid (exclusive).
    pub expires_at: UnixMillis,
}

/// Why a token was refused. Each kind is distinct so the LAN API can tell the crew what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token at all, or claims that break the format's rules.
    #[error("malformed shift token: {0}")]
    Malformed(&'static str),
    /// A version this build does not understand.
    #[error("shift token version {0} is not supported (expected {TOKEN_VERSION})")]
    UnsupportedVersion(u64),
    /// Well formed, but not signed by this fleet's token key (forged, altered or another fleet).
    #[error("shift token signature is not valid for this fleet")]
    BadSignature,
    /// The token's lifetime is over.
    #[error("shift token expired at {expires_at}")]
    Expired { expires_at: UnixMillis },
    /// Issued more than [`CLOCK_SKEW_MS`] in this unit's future (check the unit's clock).
    #[error("shift token is not valid until {issued_at} and this unit's clock says {now}")]
    NotYetValid {
        issued_at: UnixMillis,
        now: UnixMillis,
    },
    /// Bound to a different unit.
    #[error("shift token is bound to unit {bound_to}, not this unit ({this_device})")]
    WrongUnit {
        bound_to: DeviceId,
        this_device: DeviceId,
    },
    /// A genuine token of another kind (an operator token presented as a shift token).
    #[error("this is an operator token, not a shift token")]
    WrongKind,
    /// On the fleet's deny list (`edge-provision token-revoke`).
    #[error("shift token has been revoked")]
    Revoked,
}

/// The signed message: a domain tag, then the payload.
pub(crate) fn tagged(tag: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(tag.len() + payload.len());
    m.extend_from_slice(tag);
    m.extend_from_slice(payload);
    m
}

/// Ed25519 over `tag || payload`; `false` for a bad key or signature.
pub(crate) fn signature_ok(public_key: &[u8], tag: &[u8], payload: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&tagged(tag, payload), sig)
        .is_ok()
}

/// `base64url(payload) "." base64url(signature over tag || payload)`.
fn compact(tag: &[u8], payload: &[u8], key: &Ed25519KeyPair) -> String {
    let sig = key.sign(&tagged(tag, payload));
    let mut out = URL_SAFE_NO_PAD.encode(payload);
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
    out
}

/// Split and decode a compact token into its payload and 64-byte signature.
fn split_compact(token: &str) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
    if token.len() > MAX_TOKEN_LEN {
        return Err("longer than 4096 bytes");
    }
    let token = token.trim();
    let (payload_b64, sig_b64) = token
        .split_once('.')
        .ok_or("expected two base64url parts joined by '.'")?;
    if payload_b64.is_empty() || sig_b64.contains('.') {
        return Err("expected two base64url parts joined by '.'");
    }
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| "claims are not base64url")?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| "signature is not base64url")?;
    if sig.len() != 64 {
        return Err("signature is not 64 bytes");
    }
    Ok((payload, sig))
}

/// Sign `claims` with the fleet's staff-token key and return the compact token.
///
/// The claims are encoded canonically; `sign` does not check them (the issuer does, and
/// [`verify`] refuses tokens whose claims break the rules, see [`ShiftClaims::check`]).
pub fn sign(claims: &ShiftClaims, key: &Ed25519KeyPair) -> String {
    compact(SHIFT_TOKEN_TAG, &encode_claims(claims), key)
}

/// Verify a compact token against the fleet's token-verification key (32 raw Ed25519 bytes) at
/// `now` on unit `this_device`, and return its claims.
///
/// Checks, in order: size and shape, signature (over [`SHIFT_TOKEN_TAG`] and the claims),
/// canonical encoding and claim rules, version, not-yet-valid (with [`CLOCK_SKEW_MS`] allowance), expiry, unit binding. Pure and total: it
/// reads no clock and never panics.
pub fn verify(
    token: &str,
    public_key: &[u8],
    now: UnixMillis,
    this_device: &DeviceId,
) -> Result<ShiftClaims, TokenError> {
    let (payload, sig) = split_compact(token).map_err(TokenError::Malformed)?;
    if !signature_ok(public_key, SHIFT_TOKEN_TAG, &payload, &sig) {
        if signature_ok(public_key, OPERATOR_TOKEN_TAG, &payload, &sig) {
            return Err(TokenError::WrongKind);
        }
        return Err(TokenError::BadSignature);
    }

    let claims = decode_claims(&payload)?;
    if claims.issued_at.0 > now.0.saturating_add(CLOCK_SKEW_MS) {
        return Err(TokenError::NotYetValid {
            issued_at: claims.issued_at,
            now,
        });
    }
    if now >= claims.expires_at {
        return Err(TokenError::Expired {
            expires_at: claims.expires_at,
        });
    }
    if let Some(bound_to) = &claims.device {
        if bound_to != this_device {
            return Err(TokenError::WrongUnit {
                bound_to: bound_to.clone(),
                this_device: this_device.clone(),
            });
        }
    }
    Ok(claims)
}

impl ShiftClaims {
    /// Check the claim rules that do not depend on time or unit: version, token id shape, text
    /// limits, `issued_at < expires_at` and a lifetime of at most [`MAX_LIFETIME_MS`].
    pub fn check(&self) -> Result<(), TokenError> {
        if self.v != TOKEN_VERSION {
            return Err(TokenError::UnsupportedVersion(u64::from(self.v)));
        }
        if !valid_token_id(&self.token_id) {
            return Err(TokenError::Malformed(
                "token_id is not 32 lower-case hex digits",
            ));
        }
        if !valid_person_id(&self.staff_id) {
            return Err(TokenError::Malformed(
                "staff_id is not 1-64 of A-Z a-z 0-9 . _ - @",
            ));
        }
        if !valid_name(&self.staff_name) {
            return Err(TokenError::Malformed(
                "staff_name is empty, too long or has control characters",
            ));
        }
        if self.expires_at <= self.issued_at {
            return Err(TokenError::Malformed("expires_at is not after issued_at"));
        }
        if self.expires_at.0.saturating_sub(self.issued_at.0) > MAX_LIFETIME_MS {
            return Err(TokenError::Malformed("lifetime is longer than 12 hours"));
        }
        Ok(())
    }
}

/// The wire shape, for decoding only (encoding is done by hand, canonically).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireClaims {
    v: u64,
    token_id: String,
    staff_id: String,
    staff_name: String,
    role: StaffRole,
    #[serde(default)]
    org_ods: Option<OdsCode>,
    #[serde(default)]
    device: Option<DeviceId>,
    issued_at: i64,
    expires_at: i64,
}

fn decode_claims(payload: &[u8]) -> Result<ShiftClaims, TokenError> {
    let wire: WireClaims = ciborium::de::from_reader_with_recursion_limit(payload, 8)
        .map_err(|_| TokenError::Malformed("claims are not a valid CBOR claims map"))?;
    let v = u8::try_from(wire.v)
        .ok()
        .filter(|v| *v == TOKEN_VERSION)
        .ok_or(TokenError::UnsupportedVersion(wire.v))?;
    let claims = ShiftClaims {
        v,
        token_id: wire.token_id,
        staff_id: wire.staff_id,
        staff_name: wire.staff_name,
        role: wire.role,
        org_ods: wire.org_ods,
        device: wire.device,
        issued_at: UnixMillis(wire.issued_at),
        expires_at: UnixMillis(wire.expires_at),
    };
    if encode_claims(&claims) != payload {
        return Err(TokenError::Malformed("claims are not canonically encoded"));
    }
    claims.check()?;
    Ok(claims)
}

/// Canonical CBOR of the claims: a definite-length map, keys in deterministic order (shorter
/// keys first, then bytewise), absent options omitted. Infallible.
fn encode_claims(c: &ShiftClaims) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let entries = 7 + usize::from(c.device.is_some()) + usize::from(c.org_ods.is_some());
    head(&mut out, 5, entries as u64);
    // Order: v, role, device, org_ods, staff_id, token_id, issued_at, expires_at, staff_name.
    text(&mut out, "v");
    head(&mut out, 0, u64::from(c.v));
    text(&mut out, "role");
    text(&mut out, c.role.as_str());
    if let Some(d) = &c.device {
        text(&mut out, "device");
        text(&mut out, d.as_str());
    }
    if let Some(o) = &c.org_ods {
        text(&mut out, "org_ods");
        text(&mut out, o.as_str());
    }
    text(&mut out, "staff_id");
    text(&mut out, &c.staff_id);
    text(&mut out, "token_id");
    text(&mut out, &c.token_id);
    text(&mut out, "issued_at");
    int(&mut out, c.issued_at.0);
    text(&mut out, "expires_at");
    int(&mut out, c.expires_at.0);
    text(&mut out, "staff_name");
    text(&mut out, &c.staff_name);
    out
}

// ---------------------------------------------------------------------------------------------
// operator tokens

/// What an operator may do on the hub's admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperatorRole {
    /// Fleet engineering: ingest, devices, cohort, wipe.
    Fleet,
    /// Information governance: audit queries, verify, export, alerts, objections, operator log.
    Privacy,
}

impl OperatorRole {
    /// `fleet` or `privacy`.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Fleet => "fleet",
            OperatorRole::Privacy => "privacy",
        }
    }
}

impl fmt::Display for OperatorRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OperatorRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fleet" => Ok(OperatorRole::Fleet),
            "privacy" => Ok(OperatorRole::Privacy),
            _ => Err(format!(
                "unknown operator role {s:?}: expected fleet or privacy"
            )),
        }
    }
}

impl serde::Serialize for OperatorRole {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OperatorRole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "fleet" => Ok(OperatorRole::Fleet),
            "privacy" => Ok(OperatorRole::Privacy),
            _ => Err(serde::de::Error::custom("unknown operator role")),
        }
    }
}

/// What an operator token asserts: who is at the hub's admin API, and in which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorClaims {
    /// Format version; [`TOKEN_VERSION`].
    pub v: u8,
    /// A random 128-bit id, 32 lower-case hex digits (deny-listable like a shift token's).
    pub token_id: String,
    /// The operator's identifier, e.g. `OPS-0001`: 1–64 characters from `A-Z a-z 0-9 . _ - @`.
    pub operator_id: String,
    /// Display name: 1–200 bytes, no control characters.
    pub operator_name: String,
    /// What they may do.
    pub role: OperatorRole,
    /// When the token was issued.
    pub issued_at: UnixMillis,
    /// When it stops being valid (exclusive); at most [`MAX_OPERATOR_LIFETIME_MS`] after issue.
    pub expires_at: UnixMillis,
}

/// Why an operator token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorTokenError {
    /// Not a token at all, or claims that break the format's rules.
    #[error("malformed operator token: {0}")]
    Malformed(&'static str),
    /// A version this build does not understand.
    #[error("operator token version {0} is not supported (expected {TOKEN_VERSION})")]
    UnsupportedVersion(u64),
    /// Not signed by this fleet's operator key.
    #[error("operator token signature is not valid for this fleet")]
    BadSignature,
    /// A genuine shift token presented as an operator token.
    #[error("this is a staff shift token, not an operator token")]
    WrongKind,
    /// The token's lifetime is over.
    #[error("operator token expired at {expires_at}")]
    Expired { expires_at: UnixMillis },
    /// Issued more than [`CLOCK_SKEW_MS`] in the verifier's future.
    #[error("operator token is not valid until {issued_at} and this clock says {now}")]
    NotYetValid {
        issued_at: UnixMillis,
        now: UnixMillis,
    },
}

/// Sign `claims` with the fleet's operator key and return the compact token (same shape as a
/// shift token; the signature covers [`OPERATOR_TOKEN_TAG`] and the canonical CBOR claims).
pub fn sign_operator(claims: &OperatorClaims, key: &Ed25519KeyPair) -> String {
    compact(OPERATOR_TOKEN_TAG, &encode_operator_claims(claims), key)
}

/// Verify an operator token against the fleet's operator public key (32 raw Ed25519 bytes) at
/// `now`. Checks size and shape, signature (a genuine shift token is [`OperatorTokenError::WrongKind`]),
/// canonical encoding and claim rules, version, not-yet-valid ([`CLOCK_SKEW_MS`]) and expiry.
/// Pure and total.
pub fn verify_operator(
    token: &str,
    public_key: &[u8],
    now: UnixMillis,
) -> Result<OperatorClaims, OperatorTokenError> {
    let (payload, sig) = split_compact(token).map_err(OperatorTokenError::Malformed)?;
    if !signature_ok(public_key, OPERATOR_TOKEN_TAG, &payload, &sig) {
        if signature_ok(public_key, SHIFT_TOKEN_TAG, &payload, &sig) {
            return Err(OperatorTokenError::WrongKind);
        }
        return Err(OperatorTokenError::BadSignature);
    }
    let claims = decode_operator_claims(&payload)?;
    if claims.issued_at.0 > now.0.saturating_add(CLOCK_SKEW_MS) {
        return Err(OperatorTokenError::NotYetValid {
            issued_at: claims.issued_at,
            now,
        });
    }
    if now >= claims.expires_at {
        return Err(OperatorTokenError::Expired {
            expires_at: claims.expires_at,
        });
    }
    Ok(claims)
}

/// The id rule shared by staff and operator ids: 1–64 of `A-Z a-z 0-9 . _ - @`.
pub fn valid_person_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_STAFF_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

/// The token id rule: exactly 32 lower-case hex digits.
pub fn valid_token_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn valid_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.len() <= MAX_STAFF_NAME_LEN
        && !name.chars().any(char::is_control)
}

impl OperatorClaims {
    /// Check the rules that do not depend on time: version, token id, text limits,
    /// `issued_at < expires_at` and a lifetime of at most [`MAX_OPERATOR_LIFETIME_MS`].
    pub fn check(&self) -> Result<(), OperatorTokenError> {
        if self.v != TOKEN_VERSION {
            return Err(OperatorTokenError::UnsupportedVersion(u64::from(self.v)));
        }
        if !valid_token_id(&self.token_id) {
            return Err(OperatorTokenError::Malformed(
                "token_id is not 32 lower-case hex digits",
            ));
        }
        if !valid_person_id(&self.operator_id) {
            return Err(OperatorTokenError::Malformed(
                "operator_id is not 1-64 of A-Z a-z 0-9 . _ - @",
            ));
        }
        if !valid_name(&self.operator_name) {
            return Err(OperatorTokenError::Malformed(
                "operator_name is empty, too long or has control characters",
            ));
        }
        if self.expires_at <= self.issued_at {
            return Err(OperatorTokenError::Malformed(
                "expires_at is not after issued_at",
            ));
        }
        if self.expires_at.0.saturating_sub(self.issued_at.0) > MAX_OPERATOR_LIFETIME_MS {
            return Err(OperatorTokenError::Malformed(
                "lifetime is longer than 12 hours",
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireOperatorClaims {
    v: u64,
    token_id: String,
    operator_id: String,
    operator_name: String,
    role: OperatorRole,
    issued_at: i64,
    expires_at: i64,
}

fn decode_operator_claims(payload: &[u8]) -> Result<OperatorClaims, OperatorTokenError> {
    let wire: WireOperatorClaims = ciborium::de::from_reader_with_recursion_limit(payload, 8)
        .map_err(|_| OperatorTokenError::Malformed("claims are not a valid CBOR claims map"))?;
    let v = u8::try_from(wire.v)
        .ok()
        .filter(|v| *v == TOKEN_VERSION)
        .ok_or(OperatorTokenError::UnsupportedVersion(wire.v))?;
    let claims = OperatorClaims {
        v,
        token_id: wire.token_id,
        operator_id: wire.operator_id,
        operator_name: wire.operator_name,
        role: wire.role,
        issued_at: UnixMillis(wire.issued_at),
        expires_at: UnixMillis(wire.expires_at),
    };
    if encode_operator_claims(&claims) != payload {
        return Err(OperatorTokenError::Malformed(
            "claims are not canonically encoded",
        ));
    }
    claims.check()?;
    Ok(claims)
}

/// Canonical CBOR of operator claims (shorter keys first, then bytewise).
fn encode_operator_claims(c: &OperatorClaims) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    head(&mut out, 5, 7);
    // Order: v, role, token_id, issued_at, expires_at, operator_id, operator_name.
    text(&mut out, "v");
    head(&mut out, 0, u64::from(c.v));
    text(&mut out, "role");
    text(&mut out, c.role.as_str());
    text(&mut out, "token_id");
    text(&mut out, &c.token_id);
    text(&mut out, "issued_at");
    int(&mut out, c.issued_at.0);
    text(&mut out, "expires_at");
    int(&mut out, c.expires_at.0);
    text(&mut out, "operator_id");
    text(&mut out, &c.operator_id);
    text(&mut out, "operator_name");
    text(&mut out, &c.operator_name);
    out
}

pub(crate) fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u64::from(u8::MAX) {
        out.push(m | 24);
        out.push(n as u8);
    } else if n <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

pub(crate) fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn int(out: &mut Vec<u8>, i: i64) {
    if i >= 0 {
        head(out, 0, i as u64);
    } else {
        // CBOR negative integers encode -1 - i.
        head(out, 1, (-1 - i) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ring::rand::SystemRandom;

    fn key() -> Ed25519KeyPair {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()
    }

    fn public(k: &Ed25519KeyPair) -> Vec<u8> {
        use ring::signature::KeyPair as _;
        k.public_key().as_ref().to_vec()
    }

    const T0: UnixMillis = UnixMillis(1_790_000_000_000);

    fn claims(device: Option<&str>) -> ShiftClaims {
        ShiftClaims {
            v: TOKEN_VERSION,
            token_id: "00112233445566778899aabbccddeeff".into(),
            staff_id: "555000111222".into(),
            staff_name: "PARAMEDIC, Test".into(),
            role: StaffRole::Clinical,
            org_ods: Some(OdsCode::parse("RRU").unwrap()),
            device: device.map(|d| DeviceId::parse(d).unwrap()),
            issued_at: T0,
            expires_at: T0.plus_ms(12 * UnixMillis::HOUR),
        }
    }

    fn unit(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    /// One place to run a verification, so a signature change touches one function.
    fn check(
        token: &str,
        pk: &[u8],
        now: UnixMillis,
        dev: &str,
    ) -> Result<ShiftClaims, TokenError> {
        verify(token, pk, now, &unit(dev))
    }

    #[test]
    fn valid_token_round_trips() {
        let k = key();
        for c in [
            claims(None),
            claims(Some("LAS-AMB-0192")),
            ShiftClaims {
                org_ods: None,
                ..claims(None)
            },
        ] {
            let t = sign(&c, &k);
            assert!(t.len() < 400, "{}", t.len());
            assert_eq!(
                check(
                    &t,
                    &public(&k),
                    T0.plus_ms(UnixMillis::HOUR),
                    "LAS-AMB-0192"
                )
                .unwrap(),
                c
            );
        }
    }

    #[test]
    fn canonical_encoding_matches_ciborium_map_order() {
        // Whatever ciborium decodes must re-encode to the same bytes: sign, then verify.
        let c = claims(Some("LAS-AMB-0192"));
        let bytes = encode_claims(&c);
        let v: ciborium::Value = ciborium::from_reader(&bytes[..]).unwrap();
        let keys: Vec<String> = v
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_text().unwrap().to_owned())
            .collect();
        assert_eq!(
            keys,
            [
                "v",
                "role",
                "device",
                "org_ods",
                "staff_id",
                "token_id",
                "issued_at",
                "expires_at",
                "staff_name"
            ]
        );
        let negative = ShiftClaims {
            issued_at: UnixMillis(-5),
            expires_at: UnixMillis(1_000),
            ..c
        };
        let w: WireClaims = ciborium::from_reader(&encode_claims(&negative)[..]).unwrap();
        assert_eq!(w.issued_at, -5);
    }

    #[test]
    fn forged_token_is_refused() {
        let (k, other) = (key(), key());
        let t = sign(&claims(None), &other);
        assert_eq!(
            check(&t, &public(&k), T0, "U1"),
            Err(TokenError::BadSignature)
        );
        // Altered claims under a genuine signature.
        let genuine = sign(&claims(None), &k);
        let (_, sig) = genuine.split_once('.').unwrap();
        let admin = ShiftClaims {
            role: StaffRole::Admin,
            ..claims(None)
        };
        let forged = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(encode_claims(&admin)));
        assert_eq!(
            check(&forged, &public(&k), T0, "U1"),
            Err(TokenError::BadSignature)
        );
        // A wrong-length key is a bad signature, not a panic.
        assert_eq!(
            check(&genuine, &[1, 2, 3], T0, "U1"),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn expiry_and_skew() {
        let k = key();
        let c = claims(None);
        let t = sign(&c, &k);
        let pk = public(&k);
        assert!(matches!(
            check(&t, &pk, c.expires_at, "U1"),
            Err(TokenError::Expired { .. })
        ));
        assert!(check(&t, &pk, c.expires_at.plus_ms(-1), "U1").is_ok());
        assert!(check(&t, &pk, T0.plus_ms(-CLOCK_SKEW_MS), "U1").is_ok());
        assert!(matches!(
            check(&t, &pk, T0.plus_ms(-CLOCK_SKEW_MS - 1), "U1"),
            Err(TokenError::NotYetValid { .. })
        ));
    }

    #[test]
    fn wrong_unit_is_refused() {
        let k = key();
        let t = sign(&claims(Some("LAS-AMB-0192")), &k);
        assert_eq!(
            check(&t, &public(&k), T0, "LAS-AMB-0001"),
            Err(TokenError::WrongUnit {
                bound_to: unit("LAS-AMB-0192"),
                this_device: unit("LAS-AMB-0001")
            })
        );
    }

    #[test]
    fn claim_rules_are_enforced_after_the_signature() {
        let k = key();
        let pk = public(&k);
        let bad = [
            ShiftClaims {
                token_id: "XYZ".into(),
                ..claims(None)
            },
            ShiftClaims {
                staff_id: "".into(),
                ..claims(None)
            },
            ShiftClaims {
                staff_name: "a\nb".into(),
                ..claims(None)
            },
            ShiftClaims {
                expires_at: T0,
                ..claims(None)
            },
            ShiftClaims {
                expires_at: T0.plus_ms(13 * UnixMillis::HOUR),
                ..claims(None)
            },
        ];
        for c in bad {
            assert!(
                matches!(
                    check(&sign(&c, &k), &pk, T0, "U1"),
                    Err(TokenError::Malformed(_))
                ),
                "{c:?}"
            );
        }
        let v2 = ShiftClaims {
            v: 2,
            ..claims(None)
        };
        assert_eq!(
            check(&sign(&v2, &k), &pk, T0, "U1"),
            Err(TokenError::UnsupportedVersion(2))
        );
        // Non-canonical (ciborium's own field order) but genuinely signed: refused.
        #[derive(serde::Serialize)]
        struct Loose<'a> {
            v: u8,
            token_id: &'a str,
            staff_id: &'a str,
            staff_name: &'a str,
            role: StaffRole,
            issued_at: i64,
            expires_at: i64,
        }
        let c = claims(None);
        let mut loose = Vec::new();
        ciborium::into_writer(
            &Loose {
                v: 1,
                token_id: &c.token_id,
                staff_id: &c.staff_id,
                staff_name: &c.staff_name,
                role: c.role,
                issued_at: c.issued_at.0,
                expires_at: c.expires_at.0,
            },
            &mut loose,
        )
        .unwrap();
        let t = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&loose),
            URL_SAFE_NO_PAD.encode(k.sign(&tagged(SHIFT_TOKEN_TAG, &loose)).as_ref())
        );
        assert_eq!(
            check(&t, &pk, T0, "U1"),
            Err(TokenError::Malformed("claims are not canonically encoded"))
        );
    }

    #[test]
    fn malformed_shapes() {
        let k = key();
        let pk = public(&k);
        let good = sign(&claims(None), &k);
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        let cases = [
            "",
            ".",
            "abc",
            "abc.",
            ".abc",
            "a.b.c",
            "!!!.abc",
            &long,
            &format!("{good}.x"),
        ];
        for t in cases {
            assert!(
                matches!(check(t, &pk, T0, "U1"), Err(TokenError::Malformed(_))),
                "{t:?}"
            );
        }
    }

    fn operator(role: OperatorRole) -> OperatorClaims {
        OperatorClaims {
            v: TOKEN_VERSION,
            token_id: "ffeeddccbbaa99887766554433221100".into(),
            operator_id: "OPS-0001".into(),
            operator_name: "ENGINEER, Fleet".into(),
            role,
            issued_at: T0,
            expires_at: T0.plus_ms(8 * UnixMillis::HOUR),
        }
    }

    #[test]
    fn operator_tokens_round_trip_with_their_role() {
        let k = key();
        for role in [OperatorRole::Fleet, OperatorRole::Privacy] {
            let c = operator(role);
            let t = sign_operator(&c, &k);
            let got = verify_operator(&t, &public(&k), T0.plus_ms(UnixMillis::HOUR)).unwrap();
            assert_eq!(got, c);
            assert_eq!(got.role, role);
        }
        assert_eq!("Privacy".parse::<OperatorRole>(), Ok(OperatorRole::Privacy));
        assert!("root".parse::<OperatorRole>().is_err());
        // The role is signed: changing it breaks the signature.
        let t = sign_operator(&operator(OperatorRole::Privacy), &k);
        let (_, sig) = t.split_once('.').unwrap();
        let fleet = encode_operator_claims(&operator(OperatorRole::Fleet));
        let forged = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(fleet));
        assert_eq!(
            verify_operator(&forged, &public(&k), T0),
            Err(OperatorTokenError::BadSignature)
        );
    }

    #[test]
    fn a_shift_token_is_never_an_operator_token_and_back() {
        // Even signed with the same key (the fleet uses two), the kinds do not mix.
        let k = key();
        let pk = public(&k);
        let shift = sign(&claims(None), &k);
        let op = sign_operator(&operator(OperatorRole::Fleet), &k);
        assert_eq!(
            verify_operator(&shift, &pk, T0),
            Err(OperatorTokenError::WrongKind)
        );
        assert_eq!(check(&op, &pk, T0, "U1"), Err(TokenError::WrongKind));
        // With the fleet's two different keys it is simply a bad signature.
        let other = key();
        assert_eq!(
            verify_operator(&shift, &public(&other), T0),
            Err(OperatorTokenError::BadSignature)
        );
        assert_eq!(
            check(&op, &public(&other), T0, "U1"),
            Err(TokenError::BadSignature)
        );
        // A shift payload re-signed as an operator token has the wrong claims: malformed.
        let payload = encode_claims(&claims(None));
        let t = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(k.sign(&tagged(OPERATOR_TOKEN_TAG, &payload)).as_ref())
        );
        assert!(matches!(
            verify_operator(&t, &pk, T0),
            Err(OperatorTokenError::Malformed(_))
        ));
        // And an operator payload signed as a shift token is malformed as a shift token.
        let payload = encode_operator_claims(&operator(OperatorRole::Fleet));
        let t = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(k.sign(&tagged(SHIFT_TOKEN_TAG, &payload)).as_ref())
        );
        assert!(matches!(
            check(&t, &pk, T0, "U1"),
            Err(TokenError::Malformed(_))
        ));
        // An untagged signature (the pre-tag format) is refused.
        let payload = encode_claims(&claims(None));
        let t = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(k.sign(&payload).as_ref())
        );
        assert_eq!(check(&t, &pk, T0, "U1"), Err(TokenError::BadSignature));
    }

    #[test]
    fn operator_expiry_skew_and_lifetime() {
        let k = key();
        let pk = public(&k);
        let c = operator(OperatorRole::Privacy);
        let t = sign_operator(&c, &k);
        assert!(matches!(
            verify_operator(&t, &pk, c.expires_at),
            Err(OperatorTokenError::Expired { .. })
        ));
        assert!(verify_operator(&t, &pk, c.expires_at.plus_ms(-1)).is_ok());
        assert!(matches!(
            verify_operator(&t, &pk, T0.plus_ms(-CLOCK_SKEW_MS - 1)),
            Err(OperatorTokenError::NotYetValid { .. })
        ));
        let long = OperatorClaims {
            expires_at: T0.plus_ms(MAX_OPERATOR_LIFETIME_MS + 1),
            ..operator(OperatorRole::Fleet)
        };
        assert!(matches!(
            verify_operator(&sign_operator(&long, &k), &pk, T0),
            Err(OperatorTokenError::Malformed(_))
        ));
        let twelve = OperatorClaims {
            expires_at: T0.plus_ms(MAX_OPERATOR_LIFETIME_MS),
            ..operator(OperatorRole::Fleet)
        };
        assert!(verify_operator(&sign_operator(&twelve, &k), &pk, T0).is_ok());
        for bad in [
            OperatorClaims {
                operator_id: "a b".into(),
                ..operator(OperatorRole::Fleet)
            },
            OperatorClaims {
                operator_name: " ".into(),
                ..operator(OperatorRole::Fleet)
            },
            OperatorClaims {
                token_id: "nope".into(),
                ..operator(OperatorRole::Fleet)
            },
        ] {
            assert!(matches!(
                verify_operator(&sign_operator(&bad, &k), &pk, T0),
                Err(OperatorTokenError::Malformed(_))
            ));
        }
        for t in ["", "a.b", &"x".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(matches!(
                verify_operator(t, &pk, T0),
                Err(OperatorTokenError::Malformed(_))
            ));
        }
    }

    #[test]
    fn operator_canonical_order_matches_ciborium() {
        let bytes = encode_operator_claims(&operator(OperatorRole::Fleet));
        let v: ciborium::Value = ciborium::from_reader(&bytes[..]).unwrap();
        let keys: Vec<String> = v
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_text().unwrap().to_owned())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_by(|a, b| a.len().cmp(&b.len()).then(a.cmp(b)));
        assert_eq!(keys, sorted);
    }

    proptest! {
        #[test]
        fn operator_arbitrary_strings_never_panic(s in ".{0,600}") {
            let _ = verify_operator(&s, &[0u8; 32], T0);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,600}") {
            let _ = verify(&s, &[0u8; 32], T0, &unit("U1"));
        }

        #[test]
        fn arbitrary_base64_parts_never_panic(a in proptest::collection::vec(any::<u8>(), 0..600),
                                             b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let t = format!("{}.{}", URL_SAFE_NO_PAD.encode(&a), URL_SAFE_NO_PAD.encode(&b));
            let _ = verify(&t, &[0u8; 32], T0, &unit("U1"));
        }

        #[test]
        fn signed_garbage_is_refused_without_panic(payload in proptest::collection::vec(any::<u8>(), 0..600)) {
            // Exercises the CBOR decoder on arbitrary, genuinely signed bytes.
            let k = key();
            let t = format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(k.sign(&tagged(SHIFT_TOKEN_TAG, &payload)).as_ref()));
            let r = verify(&t, &public(&k), T0, &unit("U1"));
            prop_assert!(r.is_err());
            let t = format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(k.sign(&tagged(OPERATOR_TOKEN_TAG, &payload)).as_ref()));
            prop_assert!(verify_operator(&t, &public(&k), T0).is_err());
        }

        #[test]
        fn signed_valid_claims_round_trip(name in "[A-Za-z ,'-]{1,60}", staff in "[0-9]{1,20}",
                                          issued in -1_000_000_000_000i64..4_000_000_000_000i64,
                                          life in 1i64..MAX_LIFETIME_MS) {
            let k = key();
            prop_assume!(!name.trim().is_empty());
            let c = ShiftClaims { staff_name: name, staff_id: staff, issued_at: UnixMillis(issued),
                                  expires_at: UnixMillis(issued + life), ..claims(None) };
            let t = sign(&c, &k);
            prop_assert_eq!(verify(&t, &public(&k), UnixMillis(issued), &unit("U1")), Ok(c));
        }
    }
}
