//! Loading the key, certificate and CRL files a bundle holds, and writing them as PEM.
//!
//! File formats (all PEM, so an operator can inspect them with `openssl`):
//!
//! | file | format |
//! | --- | --- |
//! | Ed25519 private keys (`token-signing.key`, `record-signing.key`) | PKCS#8 PEM, `-----BEGIN PRIVATE KEY-----` (v1 or v2) |
//! | Ed25519 public keys (`token-verify.pub`, `record-verify.pub`) | SubjectPublicKeyInfo PEM, `-----BEGIN PUBLIC KEY-----`; a file holding exactly 64 hex digits (the raw 32-byte key) is also accepted |
//! | TLS private keys (`unit.key`, `lan.key`, `hub.key`) | PKCS#8 PEM (ECDSA P-256) |
//! | certificates (`*.crt`) | one or more `-----BEGIN CERTIFICATE-----` blocks, end entity first |
//! | revocation list (`crl.pem`) | `-----BEGIN X509 CRL-----` (DER also accepted) |
//! | token deny list (`token-denylist.cbor`) | binary, signed CBOR (see `edge_proto::denylist`); [`load_denylist`] |

use std::io;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer,
    SubjectPublicKeyInfoDer,
};

use crate::fsutil::{read_limited, MAX_FILE_BYTES};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A key, certificate or CRL file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The file was read but its contents are not what it should hold.
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
}

impl LoadError {
    fn invalid(path: &Path, problem: impl Into<String>) -> Self {
        LoadError::Invalid {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}

/// A key or certificate file's bytes (at most 16 MiB).
pub fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    read_limited(path, MAX_FILE_BYTES).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Encode DER bytes as a PEM block with `label` (64-column base64).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A freshly generated Ed25519 key: the PKCS#8 PEM to store and the raw public key.
#[derive(Debug)]
pub struct NewEd25519 {
    /// PKCS#8 v2 PEM (`PRIVATE KEY`); write it with mode 0600.
    pub private_pem: String,
    /// The 32-byte public key.
    pub public: [u8; 32],
}

/// Why key bytes are not a usable Ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("the system random number generator failed")]
    Random,
    #[error("generated Ed25519 key is unusable: {0}")]
    Unusable(String),
    #[error("not a PKCS#8 PEM private key (BEGIN PRIVATE KEY): {0}")]
    NotPrivatePem(String),
    #[error("not an Ed25519 PKCS#8 private key: {0}")]
    NotEd25519Private(String),
    #[error("bad hex: {0}")]
    Hex(String),
    #[error("not a PEM public key (BEGIN PUBLIC KEY) nor 64 hex digits: {0}")]
    NotPublicPem(String),
    #[error("the public key is not an Ed25519 key")]
    NotEd25519Public,
}

/// Generate an Ed25519 key pair from the OS RNG.
pub fn generate_ed25519() -> Result<NewEd25519, KeyFormatError> {
    let doc =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyFormatError::Random)?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|e| KeyFormatError::Unusable(e.to_string()))?;
    let mut public = [0u8; 32];
    public.copy_from_slice(pair.public_key().as_ref());
    Ok(NewEd25519 {
        private_pem: pem_encode("PRIVATE KEY", doc.as_ref()),
        public,
    })
}

/// The SubjectPublicKeyInfo PEM (`PUBLIC KEY`) of a raw Ed25519 public key.
pub fn ed25519_public_pem(public: &[u8; 32]) -> String {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(public);
    pem_encode("PUBLIC KEY", &der)
}

/// Parse an Ed25519 private key from PKCS#8 PEM bytes.
pub fn parse_ed25519_signing(pem: &[u8]) -> Result<Ed25519KeyPair, KeyFormatError> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map_err(|e| KeyFormatError::NotPrivatePem(e.to_string()))?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
        .map_err(|e| KeyFormatError::NotEd25519Private(e.to_string()))
}

/// Parse a raw 32-byte Ed25519 public key from SubjectPublicKeyInfo PEM or 64 hex digits.
pub fn parse_ed25519_public(text: &[u8]) -> Result<[u8; 32], KeyFormatError> {
    let trimmed = String::from_utf8_lossy(text);
    let trimmed = trimmed.trim();
    if trimmed.len() == 64 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut out = [0u8; 32];
        hex::decode_to_slice(trimmed, &mut out).map_err(|e| KeyFormatError::Hex(e.to_string()))?;
        return Ok(out);
    }
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(text)
        .map_err(|e| KeyFormatError::NotPublicPem(e.to_string()))?;
    let der: &[u8] = spki.as_ref();
    match der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
        Some(key) if key.len() == 32 => {
            let mut out = [0u8; 32];
            out.copy_from_slice(key);
            Ok(out)
        }
        _ => Err(KeyFormatError::NotEd25519Public),
    }
}

/// Load an Ed25519 signing key (the hub's record-signing key, the staff-token key) from a
/// PKCS#8 PEM file (`-----BEGIN PRIVATE KEY-----`).
pub fn load_ed25519_signing(path: &Path) -> Result<Ed25519KeyPair, LoadError> {
    parse_ed25519_signing(&read(path)?).map_err(|p| LoadError::invalid(path, p.to_string()))
}

/// Load a 32-byte Ed25519 public key (record-verify, token-verify) from a SubjectPublicKeyInfo
/// PEM file (`-----BEGIN PUBLIC KEY-----`) or a file of exactly 64 hex digits.
pub fn load_ed25519_public(path: &Path) -> Result<[u8; 32], LoadError> {
    parse_ed25519_public(&read(path)?).map_err(|p| LoadError::invalid(path, p.to_string()))
}

/// Load and verify the fleet's signed token deny list (`token-denylist.cbor`) with the
/// shift-token public key (`token_verify`). A file that is corrupt, too large or not signed by
/// this fleet is an error naming the file; keep the list you had in that case.
pub fn load_denylist(
    path: &Path,
    token_verify: &[u8; 32],
) -> Result<edge_proto::denylist::DenyList, LoadError> {
    let bytes = read(path)?;
    edge_proto::denylist::verify_denylist(&bytes, token_verify)
        .map_err(|e| LoadError::invalid(path, e.to_string()))
}

/// Load every certificate from a PEM file, in file order (end entity first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::invalid(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(LoadError::invalid(
            path,
            "holds no certificate (BEGIN CERTIFICATE)",
        ));
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| LoadError::invalid(path, format!("a certificate is corrupt: {e}")))?;
    }
    Ok(certs)
}

/// Load a TLS private key (PKCS#8, SEC1 or PKCS#1 PEM).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, LoadError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| LoadError::invalid(path, format!("not a PEM private key: {e}")))
}

/// Load the revocation list(s) from a PEM (`X509 CRL`) or DER file. Each is parsed, so a corrupt
/// file is refused here rather than failing every handshake later.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, LoadError> {
    let bytes = read(path)?;
    parse_crls(&bytes, path)
}

/// The revocation list(s) in `bytes` (PEM `X509 CRL` or DER), each parsed; `what` names where
/// they came from in errors (a file, or the copy hubs share in their database).
pub fn parse_crls(
    bytes: &[u8],
    what: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, LoadError> {
    let crls = if bytes.trim_ascii_start().starts_with(b"-----") {
        CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LoadError::invalid(what, format!("not a PEM CRL file: {e}")))?
    } else {
        vec![CertificateRevocationListDer::from(bytes.to_vec())]
    };
    if crls.is_empty() {
        return Err(LoadError::invalid(
            what,
            "holds no revocation list (BEGIN X509 CRL)",
        ));
    }
    for c in &crls {
        x509_parser::parse_x509_crl(c.as_ref()).map_err(|e| {
            LoadError::invalid(what, format!("the revocation list is corrupt: {e}"))
        })?;
    }
    Ok(crls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_round_trip_through_files() {
        let d = tempfile::tempdir().unwrap();
        let k = generate_ed25519().unwrap();
        std::fs::write(d.path().join("s.key"), &k.private_pem).unwrap();
        std::fs::write(d.path().join("v.pub"), ed25519_public_pem(&k.public)).unwrap();
        std::fs::write(d.path().join("v.hex"), hex::encode(k.public) + "\n").unwrap();
        let pair = load_ed25519_signing(&d.path().join("s.key")).unwrap();
        assert_eq!(pair.public_key().as_ref(), &k.public);
        assert_eq!(
            load_ed25519_public(&d.path().join("v.pub")).unwrap(),
            k.public
        );
        assert_eq!(
            load_ed25519_public(&d.path().join("v.hex")).unwrap(),
            k.public
        );
    }

    #[test]
    fn corrupt_files_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad");
        std::fs::write(
            &p,
            "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = load_ed25519_signing(&p).unwrap_err().to_string();
        assert!(e.contains("bad") && e.contains("PKCS#8"), "{e}");
        assert!(load_ed25519_public(&p).is_err());
        assert!(load_certs(&p).is_err());
        std::fs::write(&p, "hello").unwrap();
        assert!(load_certs(&p)
            .unwrap_err()
            .to_string()
            .contains("no certificate"));
        assert!(load_crls(&p).is_err());
        let e = load_certs(&d.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read"), "{e}");
    }
}
