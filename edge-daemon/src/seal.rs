//! Encryption at rest: AEAD sealing of cached values, the key hierarchy behind it, keyed index
//! hashes, and crypto-shredding. See `docs/encryption-at-rest.md` for the design and threat model.
//!
//! ```text
//! KeyStore ──► KEK (32 B, never on disk whole in production)
//!               │ HKDF-SHA256 "kerbside dek wrap v1" → ChaCha20-Poly1305 wrapping key
//!               ▼
//!  keys_dir/dek.sealed = "KBDK" ‖ 0x01 ‖ nonce(12) ‖ AEAD(DEK) (32+16)      (65 bytes, 0600)
//!               │ unwrapped in memory only
//!               ▼
//!  DEK (32 B random) ── HKDF-SHA256 ──┬─ "kerbside seal aead v1"  → ChaCha20-Poly1305 key (seal/open)
//!                                     ├─ "kerbside index hmac v1" → HMAC-SHA256 key (index_key)
//!                                     └─ "kerbside key id v1"     → 16-byte public fingerprint (key_id)
//! ```
//!
//! * [`Sealer::seal`] output: `0x01 ‖ nonce(12) ‖ ciphertext ‖ tag(16)`, 29 bytes of overhead.
//!   Nonces are 96 random bits from the OS RNG per seal (see [`NONCE_LEN`] for the bound).
//!   The associated data binds the format version, the table name and the record key, so a
//!   sealed value copied under another key or into another table does not open.
//! * [`Sealer::open`] never panics on any input and reports [`SealError::Truncated`],
//!   [`SealError::UnknownVersion`] or [`SealError::Forged`].
//! * [`Sealer::index_key`]: HMAC-SHA256 of (table, id) so identifiers such as NHS numbers are
//!   never stored in the clear and cannot be recovered by hashing the ~10⁹ candidates.
//! * [`Sealer::open_or_create`] unwraps the DEK with the KEK from a [`KeyStore`] (a wrong KEK is
//!   [`KeyError::WrongKey`]; an existing DEK file is never replaced), or creates and wraps a new
//!   one and says so with [`KeyState::Fresh`].
//! * [`shred`] destroys the wrapped DEK: everything sealed under it becomes unreadable at once.
//!   The caller must then delete the sealed data and start empty (the next
//!   [`Sealer::open_or_create`] returns [`KeyState::Fresh`]).
//!
//! Secrets never appear in `Debug` output, and the raw key bytes this module handles live in
//! [`Secret32`], which is overwritten with zeros on drop (best effort: no `unsafe`, so the
//! compiler may have left copies, and `ring`'s expanded key schedules are not wiped by `ring`).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The format version byte of a sealed value.
pub const VERSION: u8 = 1;
/// Nonce length: 96 bits, drawn at random for every seal.
///
/// With random nonces the chance that any two of `q` seals under one DEK share a nonce is about
/// `q² / 2⁹⁷`. A unit that sealed a million values a day for ten years (`q ≈ 3.7·10⁹ ≈ 2³²`,
/// far beyond a cohort cache's re-sync volume) stays below `10⁻¹⁰`; NIST SP 800-38D's limit for
/// random 96-bit nonces (`2³²` seals, `≤ 2⁻³²`) is met with room. Each shred also starts a new
/// DEK. A persisted counter was rejected: it needs an fsync (or a reserved block) before
/// every seal to stay unique across power cuts, and a restored or cloned disk image would
/// silently replay it; random nonces need no state.
pub const NONCE_LEN: usize = aead::NONCE_LEN;
/// Authentication tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed value has beyond its plaintext: version, nonce and tag.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Name of the wrapped DEK file inside the keys directory.
pub const DEK_FILE: &str = "dek.sealed";

/// Prefix of temporary files written while creating the DEK file (shredded too).
const DEK_TMP_PREFIX: &str = "dek.sealed.tmp";
/// Magic at the start of the wrapped DEK file.
const DEK_MAGIC: &[u8; 4] = b"KBDK";
/// Version of the wrapped DEK file format.
const DEK_FILE_VERSION: u8 = 1;
const DEK_HEADER_LEN: usize = DEK_MAGIC.len() + 1;
/// Length of the wrapped DEK file: header, nonce, wrapped key, tag.
const DEK_FILE_LEN: usize = DEK_HEADER_LEN + NONCE_LEN + 32 + TAG_LEN;
/// Largest key file read (anything bigger is malformed; files are outside input).
const MAX_KEY_FILE: u64 = 4096;

const SALT_DEK: &[u8] = b"kerbside/seal/dek/v1";
const SALT_KEK_WRAP: &[u8] = b"kerbside/seal/kek-wrap/v1";
const SALT_SPLIT: &[u8] = b"kerbside/seal/split-kek/v1";
const INFO_AEAD: &[u8] = b"kerbside seal aead v1";
const INFO_INDEX: &[u8] = b"kerbside index hmac v1";
const INFO_KEY_ID: &[u8] = b"kerbside key id v1";
const INFO_WRAP: &[u8] = b"kerbside dek wrap v1";
const INFO_SPLIT: &[u8] = b"kerbside kek v1";

// ---------------------------------------------------------------------------------------------
// Secrets

/// 32 secret bytes (a KEK, a DEK, a key share or a host secret), zeroed on drop (best effort).
/// `Debug` prints nothing secret.
pub struct Secret32([u8; 32]);

impl Secret32 {
    /// Wrap bytes. The caller's copy (if any) is the caller's to wipe.
    pub fn new(bytes: [u8; 32]) -> Self {
        Secret32(bytes)
    }

    /// 32 bytes from the OS random number generator.
    pub fn random(rng: &dyn SecureRandom) -> Result<Self, ring::error::Unspecified> {
        let mut s = Secret32([0; 32]);
        rng.fill(&mut s.0)?;
        Ok(s)
    }

    /// Copy from a slice that must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut s = Secret32([0; 32]);
        if bytes.len() != s.0.len() {
            return None;
        }
        s.0.copy_from_slice(bytes);
        Some(s)
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// True when every byte is the same (e.g. an erased register reading all 0x00 or 0xFF).
    fn is_degenerate(&self) -> bool {
        self.0.iter().all(|b| *b == self.0[0])
    }
}

impl Drop for Secret32 {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}

/// Overwrite with zeros; `black_box` keeps the stores from being optimised away (best effort).
fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        *b = 0;
    }
    std::hint::black_box(bytes);
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a sealed value did not open (or could not be sealed).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SealError {
    /// Too short to hold a version, nonce and tag.
    #[error("sealed value truncated ({len} bytes, at least {} needed)", OVERHEAD)]
    Truncated {
        /// Length of the input.
        len: usize,
    },
    /// The version byte is not one this build reads.
    #[error("sealed value has unknown format version {0}")]
    UnknownVersion(u8),
    /// Authentication failed: the bytes were altered, belong to another table or record key,
    /// or were sealed under another data key (e.g. before a shred).
    #[error("sealed value failed authentication (tampered, moved, or sealed under another key)")]
    Forged,
    /// The plaintext is too large for the AEAD.
    #[error("plaintext too large to seal")]
    TooLarge,
    /// The OS random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
}

/// Why a key store could not supply a key-encryption key.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A key file does not hold exactly 32 bytes.
    #[error("key file {path} is malformed ({len} bytes, expected 32)")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// A key file is readable or writable by group or others.
    #[error("key file {path} has mode {mode:o}; it must not be accessible to group or others (chmod 600)")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The supervisor did not supply its share (link down, not answering, …).
    #[error("supervisor key share unavailable: {0}")]
    Unavailable(String),
    /// The supervisor's share is degenerate (all bytes equal: an erased register).
    #[error("supervisor key share is blank (erased after tamper?)")]
    BlankShare,
    /// The OS random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
}

/// Why the data key could not be opened, created or shredded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The KEK does not open the wrapped DEK: the KEK is not the one that wrapped it (another
    /// host secret, a new supervisor share after tamper), or the file was altered. The DEK is
    /// left untouched; nothing sealed under it can be read until the right KEK is supplied or
    /// the keys are shredded and the sealed data discarded.
    #[error("the key-encryption key does not open {path} (wrong KEK, or the file was altered)")]
    WrongKey {
        /// The wrapped DEK file.
        path: PathBuf,
    },
    /// The wrapped DEK file is not in a format this build reads.
    #[error("wrapped data key {path} is corrupt: {reason}")]
    CorruptKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key store failed.
    #[error(transparent)]
    KeyStore(#[from] KeyStoreError),
    /// File system failure.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The OS random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn ks_io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyStoreError + '_ {
    move |source| KeyStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Key stores

/// Supplies the key-encryption key (KEK) that wraps the data key.
pub trait KeyStore {
    /// The KEK. Called once per [`Sealer::open_or_create`]; not cached by the sealer.
    fn kek(&self) -> Result<Secret32, KeyStoreError>;
}

/// Development key store: the KEK is a 0600 file of 32 random bytes, created on first use.
///
/// The KEK sits on the same disk as the data it protects, so this gives **no** protection
/// against a stolen disk; it exists so development and tests run without a supervisor.
#[derive(Debug, Clone)]
pub struct FileKeyStore {
    path: PathBuf,
}

impl FileKeyStore {
    /// A store whose KEK lives at `path` (created with mode 0600 when missing).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileKeyStore { path: path.into() }
    }

    /// The KEK file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl KeyStore for FileKeyStore {
    fn kek(&self) -> Result<Secret32, KeyStoreError> {
        load_or_create_secret_file(&self.path)
    }
}

/// The supervisor MCU's share of the KEK, fetched over the serial link (which lives elsewhere).
///
/// Any `Fn() -> Result<Secret32, KeyStoreError>` is a `SupervisorShare`.
pub trait SupervisorShare {
    /// The 32-byte share held in the MCU's battery-backed domain.
    fn share(&self) -> Result<Secret32, KeyStoreError>;
}

impl<F> SupervisorShare for F
where
    F: Fn() -> Result<Secret32, KeyStoreError>,
{
    fn share(&self) -> Result<Secret32, KeyStoreError> {
        self()
    }
}

/// Production key store: `KEK = HKDF-SHA256(supervisor share ‖ host secret)`.
///
/// The host secret is a 0600 file of 32 random bytes on the unit's disk (created on first use);
/// the share lives in the supervisor MCU, which erases it when the enclosure is opened. A disk
/// alone, or the disk after a tamper, yields no KEK. A blank share (all bytes equal) is
/// refused, so an erased register can never silently become a KEK derivable from the disk.
pub struct SplitKeyStore {
    share: Box<dyn SupervisorShare + Send + Sync>,
    host_secret: PathBuf,
}

impl SplitKeyStore {
    /// A store combining the supervisor's share with the host secret file at `host_secret`.
    pub fn new(
        share: impl SupervisorShare + Send + Sync + 'static,
        host_secret: impl Into<PathBuf>,
    ) -> Self {
        SplitKeyStore {
            share: Box::new(share),
            host_secret: host_secret.into(),
        }
    }
}

impl fmt::Debug for SplitKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitKeyStore")
            .field("share", &"<supervisor>")
            .field("host_secret", &self.host_secret)
            .finish()
    }
}

impl KeyStore for SplitKeyStore {
    fn kek(&self) -> Result<Secret32, KeyStoreError> {
        let share = self.share.share()?;
        if share.is_degenerate() {
            return Err(KeyStoreError::BlankShare);
        }
        let host = load_or_create_secret_file(&self.host_secret)?;
        let mut kek = Secret32([0; 32]);
        // HKDF-SHA256 expands up to 255·32 bytes; 32 never fails.
        #[allow(clippy::expect_used)]
        hkdf::Salt::new(hkdf::HKDF_SHA256, SALT_SPLIT)
            .extract(&concat_secrets(&share, &host))
            .expand(&[INFO_SPLIT], Len(32))
            .and_then(|okm| okm.fill(&mut kek.0))
            .expect("HKDF expand of 32 bytes");
        Ok(kek)
    }
}

/// `a ‖ b` in a buffer that is wiped on drop.
fn concat_secrets(a: &Secret32, b: &Secret32) -> Wiped<64> {
    let mut out = Wiped([0; 64]);
    out.0[..32].copy_from_slice(a.expose());
    out.0[32..].copy_from_slice(b.expose());
    out
}

/// A fixed-size scratch buffer wiped on drop.
struct Wiped<const N: usize>([u8; N]);

impl<const N: usize> std::ops::Deref for Wiped<N> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl<const N: usize> Drop for Wiped<N> {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Read a 32-byte secret file, or create it (0600, random, atomic, no clobber) when missing.
fn load_or_create_secret_file(path: &Path) -> Result<Secret32, KeyStoreError> {
    match read_secret_file(path) {
        Err(KeyStoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let secret = Secret32::random(&SystemRandom::new()).map_err(|_| KeyStoreError::Rng)?;
    let dir = parent(path);
    create_private_dir(dir).map_err(ks_io_err(dir))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| KeyStoreError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
        })?;
    match write_new_file(dir, name, &format!(".{name}.tmp"), secret.expose()) {
        Ok(true) => {
            tracing::info!(path = %path.display(), "created a new key file");
            Ok(secret)
        }
        // Someone else created it first: use theirs.
        Ok(false) => read_secret_file(path),
        Err(e) => Err(KeyStoreError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn read_secret_file(path: &Path) -> Result<Secret32, KeyStoreError> {
    let mut f = File::open(path).map_err(ks_io_err(path))?;
    let meta = f.metadata().map_err(ks_io_err(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyStoreError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() != 32 {
        return Err(KeyStoreError::Malformed {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    let mut s = Secret32([0; 32]);
    f.read_exact(&mut s.0).map_err(ks_io_err(path))?;
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// The sealer

/// Whether [`Sealer::open_or_create`] found the wrapped data key or made a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// A new DEK was created (first start, or after [`shred`]). Anything sealed before cannot
    /// be opened: the caller must delete existing sealed data and start empty.
    Fresh,
    /// The existing DEK was unwrapped; previously sealed data opens.
    Existing,
}

/// Seals and opens values with the unit's data key, and computes keyed index hashes.
///
/// Cheap to share (`&Sealer` is `Send + Sync`); holds no raw key bytes, only `ring` key
/// objects derived from the DEK.
pub struct Sealer {
    aead: LessSafeKey,
    index: hmac::Key,
    key_id: [u8; 16],
    rng: SystemRandom,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("algorithm", &"ChaCha20-Poly1305")
            .field("key_id", &hex::encode(self.key_id))
            .finish_non_exhaustive()
    }
}

/// An HKDF output length.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl Sealer {
    /// Open the unit's sealer: unwrap `keys_dir/dek.sealed` with the KEK from `keystore`, or,
    /// when there is no such file, create a random DEK, store it wrapped (temp file, fsync,
    /// no-clobber link, fsync dir; mode 0600; the directory is created 0700) and return
    /// [`KeyState::Fresh`].
    ///
    /// The KEK is fetched before anything is created, so an unavailable key store never leads
    /// to a new DEK. An existing DEK file is never replaced: a wrong KEK is
    /// [`KeyError::WrongKey`], an unreadable file [`KeyError::CorruptKeyFile`].
    pub fn open_or_create(
        keys_dir: &Path,
        keystore: &dyn KeyStore,
    ) -> Result<(Sealer, KeyState), KeyError> {
        let kek = keystore.kek()?;
        let path = keys_dir.join(DEK_FILE);
        match read_limited(&path) {
            Ok(mut bytes) => {
                let dek = unwrap_dek(&kek, &bytes, &path);
                wipe(&mut bytes);
                let sealer = Sealer::from_dek(&dek?);
                remove_stale_temps(keys_dir);
                tracing::debug!(key_id = %hex::encode(sealer.key_id), "data key unwrapped");
                return Ok((sealer, KeyState::Existing));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }

        create_private_dir(keys_dir).map_err(io_err(keys_dir))?;
        remove_stale_temps(keys_dir);
        let rng = SystemRandom::new();
        let dek = Secret32::random(&rng).map_err(|_| KeyError::Rng)?;
        let wrapped = wrap_dek(&kek, &dek, &rng)?;
        let tmp = format!("{DEK_TMP_PREFIX}.{}", std::process::id());
        let created = write_new_file(keys_dir, DEK_FILE, &tmp, &wrapped).map_err(io_err(&path))?;
        if !created {
            // Another opener won the race: its DEK is the one, never ours.
            let mut bytes = read_limited(&path).map_err(io_err(&path))?;
            let dek = unwrap_dek(&kek, &bytes, &path);
            wipe(&mut bytes);
            return Ok((Sealer::from_dek(&dek?), KeyState::Existing));
        }
        let sealer = Sealer::from_dek(&dek);
        tracing::info!(key_id = %hex::encode(sealer.key_id), "created a new data key");
        Ok((sealer, KeyState::Fresh))
    }

    /// A sealer with a random in-memory DEK that is never stored (tests, throwaway caches).
    pub fn ephemeral() -> Result<Sealer, SealError> {
        let dek = Secret32::random(&SystemRandom::new()).map_err(|_| SealError::Rng)?;
        Ok(Sealer::from_dek(&dek))
    }

    /// Derive the working keys from a DEK.
    fn from_dek(dek: &Secret32) -> Sealer {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT_DEK).extract(dek.expose());
        // HKDF-SHA256 can expand up to 255·32 bytes; 32-byte outputs never fail.
        #[allow(clippy::expect_used)]
        let (aead_key, index, key_id) = {
            let aead_key: UnboundKey = prk
                .expand(&[INFO_AEAD], &CHACHA20_POLY1305)
                .expect("HKDF expand of 32 bytes")
                .into();
            let index: hmac::Key = prk
                .expand(&[INFO_INDEX], hmac::HMAC_SHA256)
                .expect("HKDF expand of 32 bytes")
                .into();
            let mut key_id = [0u8; 16];
            prk.expand(&[INFO_KEY_ID], Len(16))
                .and_then(|okm| okm.fill(&mut key_id))
                .expect("HKDF expand of 16 bytes");
            (aead_key, index, key_id)
        };
        Sealer {
            aead: LessSafeKey::new(aead_key),
            index,
            key_id,
            rng: SystemRandom::new(),
        }
    }

    /// A public, non-secret fingerprint of the DEK (HKDF output, reveals nothing about the
    /// key). Callers may store it beside their sealed data to detect data sealed under a
    /// previous (shredded) key without trying to open it.
    pub fn key_id(&self) -> [u8; 16] {
        self.key_id
    }

    /// Seal `plaintext` as the value of record `key` in `table`.
    ///
    /// Output: `VERSION ‖ nonce(12) ‖ ciphertext ‖ tag(16)` ([`OVERHEAD`] bytes longer than
    /// the plaintext). Pass the record key exactly as it is stored (e.g. the
    /// [`Sealer::index_key`] output), since [`Sealer::open`] must be given the same bytes.
    pub fn seal(&self, table: &str, key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Rng)?;
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let ad = associated_data(VERSION, table, key);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&ad[..]),
                &mut out[1 + NONCE_LEN..],
            )
            .map_err(|_| SealError::TooLarge)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Open a value sealed by [`Sealer::seal`] for the same `table` and `key`.
    pub fn open(&self, table: &str, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let Some((&version, rest)) = sealed.split_first() else {
            return Err(SealError::Truncated { len: 0 });
        };
        if version != VERSION {
            return Err(SealError::UnknownVersion(version));
        }
        if sealed.len() < OVERHEAD {
            return Err(SealError::Truncated { len: sealed.len() });
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| SealError::Truncated { len: sealed.len() })?;
        let ad = associated_data(version, table, key);
        let mut buf = ciphertext.to_vec();
        match self.aead.open_in_place(nonce, Aad::from(&ad[..]), &mut buf) {
            Ok(plain) => {
                let n = plain.len();
                buf.truncate(n);
                Ok(buf)
            }
            Err(_) => {
                // ring may have left unauthenticated plaintext in the buffer.
                wipe(&mut buf);
                Err(SealError::Forged)
            }
        }
    }

    /// A keyed hash of identifier `id` for use as an index key in `table`:
    /// `HMAC-SHA256(index key, len(table) as u64 BE ‖ table ‖ id)`.
    ///
    /// Stable for as long as the DEK lives (across restarts); differs per table and per DEK.
    pub fn index_key(&self, table: &str, id: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.index);
        ctx.update(&(table.len() as u64).to_be_bytes());
        ctx.update(table.as_bytes());
        ctx.update(id);
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// `version ‖ len(table) as u64 BE ‖ table ‖ key` — the table is length-prefixed so no
/// (table, key) pair can be re-split into another; the key runs to the end.
fn associated_data(version: u8, table: &str, key: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(1 + 8 + table.len() + key.len());
    ad.push(version);
    ad.extend_from_slice(&(table.len() as u64).to_be_bytes());
    ad.extend_from_slice(table.as_bytes());
    ad.extend_from_slice(key);
    ad
}

// ---------------------------------------------------------------------------------------------
// Wrapping the DEK

fn wrapping_key(kek: &Secret32) -> LessSafeKey {
    // 32-byte expansion cannot fail.
    #[allow(clippy::expect_used)]
    let key: UnboundKey = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT_KEK_WRAP)
        .extract(kek.expose())
        .expand(&[INFO_WRAP], &CHACHA20_POLY1305)
        .expect("HKDF expand of 32 bytes")
        .into();
    LessSafeKey::new(key)
}

fn wrap_dek(kek: &Secret32, dek: &Secret32, rng: &SystemRandom) -> Result<Vec<u8>, KeyError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| KeyError::Rng)?;
    let mut out = Vec::with_capacity(DEK_FILE_LEN);
    out.extend_from_slice(DEK_MAGIC);
    out.push(DEK_FILE_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(dek.expose());
    let (header, body) = out.split_at_mut(DEK_HEADER_LEN);
    let tag = wrapping_key(kek)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&*header),
            &mut body[NONCE_LEN..],
        )
        .map_err(|_| KeyError::Rng)?; // unreachable for 32 bytes
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn unwrap_dek(kek: &Secret32, file: &[u8], path: &Path) -> Result<Secret32, KeyError> {
    let corrupt = |reason: String| KeyError::CorruptKeyFile {
        path: path.to_path_buf(),
        reason,
    };
    if file.len() != DEK_FILE_LEN {
        return Err(corrupt(format!(
            "{} bytes, expected {DEK_FILE_LEN}",
            file.len()
        )));
    }
    let (header, rest) = file.split_at(DEK_HEADER_LEN);
    if &header[..DEK_MAGIC.len()] != DEK_MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    if header[DEK_MAGIC.len()] != DEK_FILE_VERSION {
        return Err(corrupt(format!(
            "unknown version {}",
            header[DEK_MAGIC.len()]
        )));
    }
    let (nonce, wrapped) = rest.split_at(NONCE_LEN);
    let nonce =
        Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt("bad nonce length".into()))?;
    let mut buf = Wiped([0u8; 32 + TAG_LEN]);
    buf.0.copy_from_slice(wrapped);
    let plain = wrapping_key(kek)
        .open_in_place(nonce, Aad::from(header), &mut buf.0)
        .map_err(|_| KeyError::WrongKey {
            path: path.to_path_buf(),
        })?;
    Secret32::from_slice(plain).ok_or_else(|| corrupt("bad key length".into()))
}

// ---------------------------------------------------------------------------------------------
// Shredding

/// Crypto-shred: destroy the wrapped DEK in `keys_dir` so everything sealed under it is
/// unreadable from now on.
///
/// The DEK file (and any temporary left by an interrupted creation) is overwritten with zeros,
/// fsync'd and removed, then the directory is fsync'd. Idempotent: a missing directory or file
/// is success, so a shred interrupted by a crash can simply be repeated.
///
/// A `Sealer` still alive in memory keeps working until dropped — drop it first. Afterwards
/// the caller deletes its sealed files and starts empty; the next [`Sealer::open_or_create`]
/// makes a new DEK and returns [`KeyState::Fresh`]. On flash storage the overwrite is best
/// effort (wear levelling may keep old blocks); what makes the shred final in production is
/// that the supervisor erases its KEK share on tamper (see `docs/encryption-at-rest.md`).
pub fn shred(keys_dir: &Path) -> Result<(), KeyError> {
    let entries = match fs::read_dir(keys_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(keys_dir)(e)),
    };
    let mut victims = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(keys_dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == DEK_FILE || name.starts_with(DEK_TMP_PREFIX) {
            victims.push(entry.path());
        }
    }
    // The live key first.
    victims.sort_by_key(|p| p.file_name().map(|n| n != DEK_FILE));
    let mut first_err = None;
    for path in &victims {
        if let Err(e) = shred_file(path) {
            tracing::error!(path = %path.display(), error = %e, "shred failed");
            first_err.get_or_insert(e);
        }
    }
    if !victims.is_empty() {
        if let Err(e) = sync_dir(keys_dir) {
            first_err.get_or_insert(io_err(keys_dir)(e));
        }
        tracing::warn!(dir = %keys_dir.display(), "data key shredded");
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Zero, fsync and remove one file; the removal is attempted even if zeroing failed.
fn shred_file(path: &Path) -> Result<(), KeyError> {
    let zeroed = (|| -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).open(path)?;
        let len = f.metadata()?.len();
        let zeros = [0u8; 4096];
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        f.sync_all()
    })();
    let removed = match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    match (zeroed, removed) {
        (_, Err(e)) => Err(io_err(path)(e)),
        (Err(e), Ok(())) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// Best-effort removal of temporaries left by an interrupted DEK creation.
fn remove_stale_temps(keys_dir: &Path) {
    let Ok(entries) = fs::read_dir(keys_dir) else {
        return;
    };
    // A crash between the link and the unlink in `write_new_file` leaves a temporary that is
    // the same inode as the live DEK file: that one is only unlinked, never zeroed.
    let live = fs::metadata(keys_dir.join(DEK_FILE))
        .ok()
        .map(|m| (m.dev(), m.ino()));
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(DEK_TMP_PREFIX)
        {
            let path = entry.path();
            tracing::warn!(path = %path.display(), "removing a stale data-key temporary");
            let same_inode = fs::metadata(&path)
                .ok()
                .is_some_and(|m| Some((m.dev(), m.ino())) == live);
            let result = if same_inode {
                fs::remove_file(&path).map_err(io_err(&path))
            } else {
                shred_file(&path)
            };
            if let Err(e) = result {
                tracing::warn!(path = %path.display(), error = %e, "could not remove it");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Files

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Read a key file of at most [`MAX_KEY_FILE`] bytes (anything longer is cut there and then
/// fails the length check).
fn read_limited(path: &Path) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    File::open(path)?
        .take(MAX_KEY_FILE + 1)
        .read_to_end(&mut out)?;
    Ok(out)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create `dir` (and parents) with mode 0700 when missing.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if let Some(p) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(p)?;
    }
    Ok(())
}

/// Write `bytes` as `dir/name` (mode 0600) only if it does not exist: a temporary `dir/tmp` is
/// written and fsync'd, hard-linked to the final name (which fails rather than replace an
/// existing file), removed, and the directory fsync'd. `Ok(false)`: the file already existed.
fn write_new_file(dir: &Path, name: &str, tmp: &str, bytes: &[u8]) -> io::Result<bool> {
    let tmp_path = dir.join(tmp);
    let final_path = dir.join(name);
    let _ = fs::remove_file(&tmp_path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp_path)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        match fs::hard_link(&tmp_path, &final_path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    })();
    // Do not leave the temporary behind. After a successful link it is the same inode as the
    // final file, so it is only unlinked; otherwise its bytes are never used: zero, then unlink.
    if !matches!(result, Ok(true)) {
        if let Ok(mut f) = OpenOptions::new().write(true).open(&tmp_path) {
            let _ = f.write_all(&vec![0u8; bytes.len()]);
            let _ = f.sync_all();
        }
    }
    let _ = fs::remove_file(&tmp_path);
    let created = result?;
    sync_dir(dir)?;
    Ok(created)
}

// ---------------------------------------------------------------------------------------------

/// Seals audit journal records with a data key of their own (`data_dir/keys/journal/`), kept
/// apart from the cache's key so that shredding the cache (tamper, wipe) leaves pending audit
/// events readable for upload. Associated data binds each record to its sequence number.
pub struct JournalSealer(pub Sealer);

impl fmt::Debug for JournalSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JournalSealer").field(&self.0).finish()
    }
}

impl crate::journal::RecordCipher for JournalSealer {
    fn seal(&self, seq: u64, plain: &[u8]) -> Vec<u8> {
        // Sealing fails only if the OS random source fails; an empty payload is then stored,
        // which opening reports as an unreadable record (never silently dropped).
        self.0
            .seal("journal", &seq.to_be_bytes(), plain)
            .unwrap_or_default()
    }
    fn open(&self, seq: u64, sealed: &[u8]) -> Result<Vec<u8>, crate::journal::CipherError> {
        self.0
            .open("journal", &seq.to_be_bytes(), sealed)
            .map_err(|e| crate::journal::CipherError(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn dek_file_holds_neither_the_dek_nor_the_kek() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileKeyStore::new(dir.path().join("kek"));
        let keys = dir.path().join("keys");
        let (_, state) = Sealer::open_or_create(&keys, &store).unwrap();
        assert_eq!(state, KeyState::Fresh);
        let file = fs::read(keys.join(DEK_FILE)).unwrap();
        assert_eq!(file.len(), DEK_FILE_LEN);
        let kek = store.kek().unwrap();
        let dek = unwrap_dek(&kek, &file, &keys).unwrap();
        assert!(!contains(&file, dek.expose()));
        assert!(!contains(&file, kek.expose()));
        // Nor any 8-byte run of either.
        for w in dek.expose().windows(8).chain(kek.expose().windows(8)) {
            assert!(!contains(&file, w));
        }
    }

    #[test]
    fn ad_is_unambiguous() {
        assert_ne!(
            associated_data(1, "ab", b"c"),
            associated_data(1, "a", b"bc")
        );
    }

    #[test]
    fn debug_prints_no_secret() {
        let s = Secret32::new([0xAB; 32]);
        let d = format!("{s:?}");
        assert!(!d.contains("171") && !d.to_lowercase().contains("ab,"));
        let sealer = Sealer::ephemeral().unwrap();
        let d = format!("{sealer:?}");
        assert!(d.contains("key_id"));
        assert!(!d.contains("aead:") && !d.contains("index:"));
    }

    #[test]
    fn blank_share_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SplitKeyStore::new(
            || Ok(Secret32::new([0xFF; 32])),
            dir.path().join("host.secret"),
        );
        assert!(matches!(store.kek(), Err(KeyStoreError::BlankShare)));
    }

    #[test]
    fn wipe_zeroes() {
        let mut b = [7u8; 10];
        wipe(&mut b);
        assert_eq!(b, [0; 10]);
    }
}
