//! The fleet directory and everything done to it: CA, hub bundles, enrolment, renewal,
//! revocation, revocation list, shift tokens.
//!
//! ```text
//! FLEET/                 (0700; every file in it 0600)
//!   root-ca.crt          root certificate (20 years); the trust anchor in every bundle
//!   root-ca.key          root key; only `ca init` uses it: move it offline afterwards
//!   issuing-ca.crt       issuing CA (5 years), signs every hub/unit certificate and the CRL
//!   issuing-ca.key
//!   crl.pem              X.509 CRL signed by the issuing CA, regenerated from the inventory
//!   renewal-ca.crt       renewal CA (2 years, under the root, EKU clientAuth, path length 0):
//!   renewal-ca.key       copied into hub bundles; the hub re-issues unit certificates with it
//!   token-signing.key    Ed25519, staff shift tokens and the token deny list; stays here
//!   token-verify.pub     its public key; copied into every bundle
//!   operator-signing.key Ed25519, operator tokens for the hub's admin API; stays here
//!   operator-verify.pub  its public key; hub bundle
//!   token-denylist.cbor  signed deny list of revoked shift and operator tokens (the hub reads it)
//!   record-signing.key   Ed25519, the hub signs records with it; hub bundle only
//!   record-verify.pub    its public key; unit bundles
//!   fleet.json           fleet settings (the LAN domain)
//!   inventory.json       hubs, units, certificates, revocations
//! ```
//!
//! Every file the CA writes is 0600 and every folder 0700, public halves included: a bundle is
//! read by one service account and nothing in it needs to be readable by anyone else.
//!
//! Every operation takes `now` explicitly (the CLI reads the clock once), writes each file
//! atomically, builds whole bundles before they appear, and holds [`DirLock`] on the fleet
//! directory while it runs. Unit private keys are generated here but written only to the unit's
//! bundle; the fleet keeps their public keys (for renewal) and nothing else.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use edge_proto::denylist::{self, DenyEntry, DenyList, DenySubject};
use edge_proto::ids::{CohortSpec, DeviceId, OdsCode, StaffRole, UnitRole};
use edge_proto::time::UnixMillis;
use edge_proto::token::{self, OperatorClaims, OperatorRole, ShiftClaims, TOKEN_VERSION};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, RevocationReason,
    RevokedCertParams, SanType, SerialNumber, SubjectPublicKeyInfo, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use crate::config::{
    AuditConfig, CacheConfig, HubConfig, HubKeys, HubLink, HubSync, HubTls, LanConfig,
    SupervisorConfig, SyncConfig, UnitConfig, UnitKeys, UnitTls,
};
use crate::fsutil::{
    read_limited, write_atomic, write_bundle, BundleFile, DirLock, MAX_FILE_BYTES, MODE_PRIVATE,
};
use crate::hostport::{is_dns_name, HostPort};
use crate::identity::{check_lan_domain, hub_uri, lan_dns_name, lan_uri, DEFAULT_LAN_DOMAIN};
use crate::inventory::{
    CertRecord, HubRecord, Inventory, RevokeReason, RevokedCert, UnitRecord, INVENTORY_FORMAT,
};
use crate::keys::{self, ed25519_public_pem, generate_ed25519, pem_encode};

/// Root CA lifetime.
pub const ROOT_CA_LIFETIME_MS: i64 = 20 * 365 * UnixMillis::DAY;
/// Issuing CA lifetime.
pub const ISSUING_CA_LIFETIME_MS: i64 = 5 * 365 * UnixMillis::DAY;
pub use crate::issue::{
    BACKDATE_MS, RENEWAL_CA_LIFETIME_MS, RENEW_AFTER_FRACTION, UNIT_CERT_LIFETIME_MS,
};
/// How long after expiry `renew` still re-issues a unit's certificate (the unit was parked or
/// out of coverage); after that it must be re-enrolled in the workshop.
pub const RENEWAL_AFTER_EXPIRY_MS: i64 = 30 * UnixMillis::DAY;
/// LAN server certificate lifetime (must outlast long offline spells; tablets see it).
pub const LAN_CERT_LIFETIME_MS: i64 = 365 * UnixMillis::DAY;
/// Hub server certificate lifetime.
pub const HUB_CERT_LIFETIME_MS: i64 = 365 * UnixMillis::DAY;
/// The CRL's `nextUpdate` (verifiers do not enforce it; `edge-provision crl` refreshes it).
pub const CRL_NEXT_UPDATE_MS: i64 = 30 * UnixMillis::DAY;
/// The longest shift token `token` mints (hours).
pub const MAX_TOKEN_HOURS: u32 = 12;
/// The longest operator token `operator` mints (hours).
pub const MAX_OPERATOR_HOURS: u32 = 12;
/// The fleet settings format this build writes.
pub const SETTINGS_FORMAT: u32 = 1;

/// File names inside the fleet directory.
pub mod files {
    pub const ROOT_CERT: &str = "root-ca.crt";
    pub const ROOT_KEY: &str = "root-ca.key";
    pub const ISSUING_CERT: &str = "issuing-ca.crt";
    pub const ISSUING_KEY: &str = "issuing-ca.key";
    pub const CRL: &str = "crl.pem";
    pub const RENEWAL_CERT: &str = "renewal-ca.crt";
    pub const RENEWAL_KEY: &str = "renewal-ca.key";
    pub const TOKEN_SIGNING: &str = "token-signing.key";
    pub const TOKEN_VERIFY: &str = "token-verify.pub";
    pub const RECORD_SIGNING: &str = "record-signing.key";
    pub const RECORD_VERIFY: &str = "record-verify.pub";
    pub const OPERATOR_SIGNING: &str = "operator-signing.key";
    pub const OPERATOR_VERIFY: &str = "operator-verify.pub";
    pub const TOKEN_DENYLIST: &str = "token-denylist.cbor";
    pub const SETTINGS: &str = "fleet.json";
    pub const INVENTORY: &str = "inventory.json";
    /// Bundle files.
    pub const CA_BUNDLE: &str = "fleet-ca.crt";
    pub const HUB_TOML: &str = "hub.toml";
    pub const HUB_CERT: &str = "hub.crt";
    pub const HUB_KEY: &str = "hub.key";
    pub const EDGE_TOML: &str = "edge.toml";
    pub const UNIT_CERT: &str = "unit.crt";
    pub const UNIT_KEY: &str = "unit.key";
    pub const LAN_CERT: &str = "lan.crt";
    pub const LAN_KEY: &str = "lan.key";
    /// Every file `ca init` writes.
    pub const FLEET: [&str; 16] = [
        ROOT_CERT,
        ROOT_KEY,
        ISSUING_CERT,
        ISSUING_KEY,
        CRL,
        RENEWAL_CERT,
        RENEWAL_KEY,
        TOKEN_SIGNING,
        TOKEN_VERIFY,
        OPERATOR_SIGNING,
        OPERATOR_VERIFY,
        TOKEN_DENYLIST,
        RECORD_SIGNING,
        RECORD_VERIFY,
        SETTINGS,
        INVENTORY,
    ];
}

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The fleet directory is missing or incomplete.
    #[error("{} is not a fleet directory ({}); create one with `edge-provision ca init --fleet {}`", dir.display(), why, dir.display())]
    NotAFleet { dir: PathBuf, why: String },
    /// `ca init` on an existing fleet without `--force`.
    #[error("{} already holds a fleet ({}); refusing to overwrite it without --force", dir.display(), found)]
    FleetExists { dir: PathBuf, found: String },
    /// An output directory already holds files this command would overwrite.
    #[error("{} already holds {}; refusing to overwrite without --force", dir.display(), found)]
    WouldOverwrite { dir: PathBuf, found: String },
    /// A directory this command would write into is not usable.
    #[error("{}: {why}", dir.display())]
    BadDir { dir: PathBuf, why: String },
    /// A fleet file is corrupt.
    #[error("{}: {problem}", path.display())]
    Corrupt { path: PathBuf, problem: String },
    /// Loading a key or certificate failed.
    #[error(transparent)]
    Load(#[from] keys::LoadError),
    /// Reading or writing a file failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The device id is already enrolled.
    #[error("device {0} is already enrolled; pass --replace to re-enrol it (its old certificates are revoked)")]
    Duplicate(DeviceId),
    /// No such unit.
    #[error("device {0} is not enrolled in this fleet (see `edge-provision list`)")]
    UnknownUnit(DeviceId),
    /// Renewal refused.
    #[error("device {device}: {why}")]
    RenewalRefused { device: DeviceId, why: String },
    /// An argument is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Pki(#[from] rcgen::Error),
    /// A config could not be rendered.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A certificate could not be described.
    #[error(transparent)]
    Issue(#[from] crate::issue::IssueError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FleetError {
    let path = path.to_owned();
    move |source| FleetError::Io { what, path, source }
}

/// Options for `ca init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Organisation name in the CA certificates.
    pub org: String,
    /// Replace an existing fleet (it is moved aside, not deleted).
    pub force: bool,
}

/// What `ca init` made.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The fleet id.
    pub fleet_id: String,
    /// Where a replaced fleet was moved to.
    pub replaced_to: Option<PathBuf>,
}

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// DER.
    pub der: Vec<u8>,
    /// Serial, lower-case hex.
    pub serial: String,
    /// Validity start.
    pub not_before: UnixMillis,
    /// Validity end.
    pub not_after: UnixMillis,
}

impl IssuedCert {
    fn record(&self) -> CertRecord {
        CertRecord {
            serial: self.serial.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

/// What `hub` should produce.
#[derive(Debug, Clone)]
pub struct HubPlan {
    /// The hub's name (certificate SAN; IP SAN when an IP address).
    pub name: String,
    /// QUIC listen address.
    pub listen: HostPort,
    /// Admin API listen address.
    pub admin: HostPort,
    /// Bundle directory.
    pub out: PathBuf,
    /// Overwrite an existing bundle's keys.
    pub force: bool,
    /// hub.toml's `[store]`: the embedded store by default, or a PostgreSQL database.
    pub store: edge_runtime::config::HubStoreConfig,
}

/// What `enrol` should produce.
#[derive(Debug, Clone)]
pub struct EnrolPlan {
    /// Fleet device id.
    pub device_id: DeviceId,
    /// Vehicle or kiosk.
    pub role: UnitRole,
    /// The hub's address.
    pub hub: HostPort,
    /// The hub's certificate name.
    pub hub_name: String,
    /// Further hubs on the same database the unit fails over to, in order (`hubs` in
    /// edge.toml, after `hub`).
    pub more_hubs: Vec<HubLink>,
    /// The unit's LAN listen address (its host is the LAN certificate's SAN).
    pub lan: HostPort,
    /// Extra names for the LAN certificate.
    pub lan_names: Vec<String>,
    /// Radio callsign.
    pub callsign: Option<String>,
    /// Site ODS code.
    pub site: Option<OdsCode>,
    /// Cohorts (empty means `all`).
    pub cohorts: Vec<CohortSpec>,
    /// Supervisor link written into `edge.toml`.
    pub supervisor: SupervisorConfig,
    /// Re-enrol an existing device id, revoking its old certificates.
    pub replace: bool,
    /// Overwrite an existing bundle's keys in `out`.
    pub force: bool,
    /// Bundle directory.
    pub out: PathBuf,
}

/// What `enrol` did.
#[derive(Debug, Clone)]
pub struct EnrolReport {
    /// The new operational certificate.
    pub cert: CertRecord,
    /// Serials revoked because this replaced an earlier enrolment.
    pub revoked: Vec<String>,
    /// The bundle directory (absolute).
    pub bundle_dir: PathBuf,
}

/// What `renew` did.
#[derive(Debug, Clone)]
pub struct RenewReport {
    /// The new operational certificate.
    pub cert: CertRecord,
    /// Where the certificates were written.
    pub written_to: PathBuf,
}

/// What `revoke` did.
#[derive(Debug, Clone)]
pub struct RevokeReport {
    /// Serials newly added to the CRL.
    pub serials: Vec<String>,
    /// The unit was already revoked.
    pub already: bool,
    /// The CRL's number.
    pub crl_number: u64,
}

/// One row of `list`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UnitSummary {
    /// Device id.
    pub device_id: String,
    /// `vehicle` or `kiosk`.
    pub role: UnitRole,
    /// Callsign.
    pub callsign: Option<String>,
    /// Site.
    pub site: Option<String>,
    /// Current operational certificate serial.
    pub serial: String,
    /// Its expiry, RFC 3339.
    pub expiry: String,
    /// Whether it has expired at `now`.
    pub expired: bool,
    /// Whether the unit is revoked.
    pub revoked: bool,
    /// When it was revoked, RFC 3339.
    pub revoked_at: Option<String>,
    /// Cohort specs.
    pub cohorts: Vec<String>,
    /// The hub it syncs with.
    pub hub: String,
    /// Its bundle directory.
    pub bundle_dir: PathBuf,
}

/// `fleet.json`: settings chosen at `ca init`. A fleet made before it existed reads as the
/// defaults.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    /// [`SETTINGS_FORMAT`].
    pub format: u32,
    /// The DNS domain unit LAN names live under (`ca init --lan-domain`).
    pub lan_domain: String,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            format: SETTINGS_FORMAT,
            lan_domain: DEFAULT_LAN_DOMAIN.to_owned(),
        }
    }
}

/// An operator token request.
#[derive(Debug, Clone)]
pub struct OperatorRequest {
    /// The operator's id, e.g. `OPS-0001`.
    pub operator_id: String,
    /// Display name.
    pub name: String,
    /// `fleet` or `privacy`.
    pub role: OperatorRole,
    /// Lifetime in hours (1..=[`MAX_OPERATOR_HOURS`]).
    pub hours: u32,
}

/// What `token-revoke` did.
#[derive(Debug, Clone)]
pub struct DenyReport {
    /// The new list's version.
    pub version: u64,
    /// The entry added.
    pub entry: DenyEntry,
    /// Live entries in the list now (after pruning expired ones).
    pub entries: usize,
    /// Entries pruned because everything they covered has expired.
    pub pruned: usize,
    /// The file written.
    pub path: PathBuf,
}

/// A shift token request.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// Staff id (SDS user id).
    pub staff_id: String,
    /// Display name.
    pub staff_name: String,
    /// Clinical or admin.
    pub role: StaffRole,
    /// Bind to one unit; `None` is a token for any unit (the CLI only mints one when told
    /// `--any-unit`).
    pub device: Option<DeviceId>,
    /// Lifetime in hours (1..=[`MAX_TOKEN_HOURS`]).
    pub hours: u32,
    /// Employing organisation.
    pub org: Option<OdsCode>,
}

/// An open fleet directory, locked for this process.
pub struct Fleet {
    dir: PathBuf,
    root_pem: String,
    issuing_pem: String,
    issuer: rcgen::Certificate,
    issuing_key: KeyPair,
    inventory: Inventory,
    settings: FleetSettings,
    _lock: DirLock,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Fleet")
            .field("dir", &self.dir)
            .field("fleet_id", &self.inventory.fleet_id)
            .field("units", &self.inventory.units.len())
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// time and randomness helpers

fn to_odt(t: UnixMillis) -> Result<OffsetDateTime, FleetError> {
    Ok(crate::issue::to_odt(t)?)
}

/// Certificates carry whole seconds; keep the inventory consistent with them.
fn whole_seconds(t: UnixMillis) -> UnixMillis {
    crate::issue::whole_seconds(t)
}

fn random_bytes<const N: usize>() -> Result<[u8; N], FleetError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| FleetError::Invalid("the system random number generator failed".into()))?;
    Ok(b)
}

fn new_serial() -> Result<Vec<u8>, FleetError> {
    Ok(crate::issue::new_serial()?)
}

fn new_key() -> Result<KeyPair, FleetError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

fn san_for(name: &str) -> Result<SanType, FleetError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        Ok(SanType::IpAddress(ip))
    } else if is_dns_name(name) {
        Ok(SanType::DnsName(name.to_owned().try_into()?))
    } else {
        Err(FleetError::Invalid(format!(
            "{name:?} is neither a DNS name nor an IP address"
        )))
    }
}

fn dn(org: &str, cn: &str) -> DistinguishedName {
    crate::issue::dn(org, cn)
}

fn read_text(path: &Path) -> Result<String, FleetError> {
    let bytes = read_limited(path, MAX_FILE_BYTES).map_err(io_err("cannot read", path))?;
    String::from_utf8(bytes).map_err(|_| FleetError::Corrupt {
        path: path.to_owned(),
        problem: "not UTF-8 text".into(),
    })
}

/// Names of bundle files already present in `dir` among `names`.
fn present(dir: &Path, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|n| dir.join(n).exists())
        .map(|n| (*n).to_owned())
        .collect()
}

fn absolute(p: &Path) -> Result<PathBuf, FleetError> {
    std::path::absolute(p).map_err(io_err("cannot resolve", p))
}

/// Refuse to write a bundle into `out` when that would overwrite keys without `force`, or when
/// `out` is a file or inside the fleet directory.
fn check_out_dir(
    out: &Path,
    fleet_dir: &Path,
    names: &[&str],
    force: bool,
) -> Result<(), FleetError> {
    if out.exists() && !out.is_dir() {
        return Err(FleetError::BadDir {
            dir: out.to_owned(),
            why: "exists and is not a directory".into(),
        });
    }
    if let (Ok(a), Ok(b)) = (fs::canonicalize(out), fs::canonicalize(fleet_dir)) {
        if a == b {
            return Err(FleetError::BadDir {
                dir: out.to_owned(),
                why: "is the fleet directory; write bundles elsewhere".into(),
            });
        }
    }
    let found = present(out, names);
    if !force && !found.is_empty() {
        return Err(FleetError::WouldOverwrite {
            dir: out.to_owned(),
            found: found.join(", "),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// the fleet

impl Fleet {
    /// `ca init`: create a fleet in `dir`: root CA, issuing CA, staff-token and record-signing
    /// keys, an empty CRL and an inventory. The whole directory appears at once. Refuses an
    /// existing fleet unless `opts.force`, in which case the old one is moved aside to
    /// `DIR.replaced-<time>` (never deleted).
    pub fn init(dir: &Path, opts: &InitOptions, now: UnixMillis) -> Result<InitReport, FleetError> {
        Self::init_with_lan_domain(dir, opts, DEFAULT_LAN_DOMAIN, now)
    }

    /// [`Fleet::init`] with the DNS domain unit LAN names live under (`ca init --lan-domain`),
    /// recorded in `fleet.json`.
    pub fn init_with_lan_domain(
        dir: &Path,
        opts: &InitOptions,
        lan_domain: &str,
        now: UnixMillis,
    ) -> Result<InitReport, FleetError> {
        let now = whole_seconds(now);
        let lan_domain = check_lan_domain(lan_domain)
            .map_err(|e| FleetError::Invalid(format!("--lan-domain: {e}")))?;
        let found = present(dir, &files::FLEET);
        if dir.exists() && !dir.is_dir() {
            return Err(FleetError::BadDir {
                dir: dir.to_owned(),
                why: "exists and is not a directory".into(),
            });
        }
        if !found.is_empty() && !opts.force {
            return Err(FleetError::FleetExists {
                dir: dir.to_owned(),
                found: found.join(", "),
            });
        }
        if found.is_empty() && dir.is_dir() {
            let mut entries = fs::read_dir(dir).map_err(io_err("cannot list", dir))?;
            if entries.next().is_some() {
                return Err(FleetError::BadDir {
                    dir: dir.to_owned(),
                    why: "exists and is not empty; choose a new or empty directory for the fleet"
                        .into(),
                });
            }
        }
        if opts.org.trim().is_empty() || opts.org.len() > 64 {
            return Err(FleetError::Invalid(
                "--org must be 1 to 64 characters".into(),
            ));
        }

        let fleet_id = hex::encode(random_bytes::<6>()?);
        let org = opts.org.trim();

        // Root CA.
        let root_key = new_key()?;
        let mut root = CertificateParams::default();
        root.distinguished_name = dn(org, &format!("Kerbside fleet root CA {fleet_id}"));
        root.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        root.serial_number = Some(SerialNumber::from_slice(&new_serial()?));
        root.not_before = to_odt(now.plus_ms(-BACKDATE_MS))?;
        root.not_after = to_odt(now.plus_ms(ROOT_CA_LIFETIME_MS))?;
        let root_cert = root.self_signed(&root_key)?;

        // Issuing CA.
        let issuing_key = new_key()?;
        let mut issuing = CertificateParams::default();
        issuing.distinguished_name = dn(org, &format!("Kerbside fleet issuing CA {fleet_id}"));
        issuing.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        issuing.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        issuing.use_authority_key_identifier_extension = true;
        issuing.serial_number = Some(SerialNumber::from_slice(&new_serial()?));
        issuing.not_before = to_odt(now.plus_ms(-BACKDATE_MS))?;
        issuing.not_after = to_odt(now.plus_ms(ISSUING_CA_LIFETIME_MS))?;
        let issuing_cert = issuing.signed_by(&issuing_key, &root_cert, &root_key)?;

        // Renewal CA (the hubs re-issue unit certificates over the sync with it).
        let renewal_key = new_key()?;
        let renewal_cert = crate::issue::renewal_ca_params(
            org,
            &fleet_id,
            now.plus_ms(-BACKDATE_MS),
            now.plus_ms(RENEWAL_CA_LIFETIME_MS),
        )?
        .signed_by(&renewal_key, &root_cert, &root_key)?;

        let inventory = Inventory {
            format: INVENTORY_FORMAT,
            fleet_id: fleet_id.clone(),
            created_at: now,
            crl_number: 1,
            revision: 1,
            hubs: Vec::new(),
            units: Vec::new(),
            revoked: Vec::new(),
        };
        let crl = make_crl(&inventory, &issuing_cert, &issuing_key, now)?;
        let token = generate_ed25519().map_err(|e| FleetError::Invalid(e.to_string()))?;
        let operator = generate_ed25519().map_err(|e| FleetError::Invalid(e.to_string()))?;
        let record = generate_ed25519().map_err(|e| FleetError::Invalid(e.to_string()))?;
        let inventory_json = serde_json::to_vec_pretty(&inventory)
            .map_err(|e| FleetError::Invalid(format!("inventory: {e}")))?;
        let token_pair = keys::parse_ed25519_signing(token.private_pem.as_bytes())
            .map_err(|e| FleetError::Invalid(e.to_string()))?;
        let denylist = denylist::sign_denylist(&DenyList::empty(1, now), &token_pair);
        let settings = serde_json::to_vec_pretty(&FleetSettings {
            format: SETTINGS_FORMAT,
            lan_domain,
        })
        .map_err(|e| FleetError::Invalid(format!("fleet settings: {e}")))?;

        // Every file 0600, the directory 0700 (see the module docs).
        let bundle = [
            BundleFile::private(files::ROOT_CERT, root_cert.pem()),
            BundleFile::private(files::ROOT_KEY, root_key.serialize_pem()),
            BundleFile::private(files::ISSUING_CERT, issuing_cert.pem()),
            BundleFile::private(files::ISSUING_KEY, issuing_key.serialize_pem()),
            BundleFile::private(files::CRL, crl),
            BundleFile::private(files::RENEWAL_CERT, renewal_cert.pem()),
            BundleFile::private(files::RENEWAL_KEY, renewal_key.serialize_pem()),
            BundleFile::private(files::TOKEN_SIGNING, token.private_pem),
            BundleFile::private(files::TOKEN_VERIFY, ed25519_public_pem(&token.public)),
            BundleFile::private(files::OPERATOR_SIGNING, operator.private_pem),
            BundleFile::private(files::OPERATOR_VERIFY, ed25519_public_pem(&operator.public)),
            BundleFile::private(files::TOKEN_DENYLIST, denylist),
            BundleFile::private(files::RECORD_SIGNING, record.private_pem),
            BundleFile::private(files::RECORD_VERIFY, ed25519_public_pem(&record.public)),
            BundleFile::private(files::SETTINGS, settings),
            BundleFile::private(files::INVENTORY, inventory_json),
        ];

        let mut replaced_to = None;
        if !found.is_empty() {
            // --force: hold the old fleet's lock while moving it aside.
            let lock = DirLock::acquire(dir).map_err(io_err("cannot lock", dir))?;
            let aside = PathBuf::from(format!(
                "{}.replaced-{}",
                dir.display(),
                now.to_rfc3339().replace(':', "")
            ));
            fs::rename(dir, &aside)
                .map_err(io_err("cannot move the old fleet aside to", &aside))?;
            drop(lock);
            let _ = fs::remove_file(aside.join(crate::fsutil::LOCK_FILE));
            replaced_to = Some(aside);
        }
        write_bundle(dir, &bundle).map_err(io_err("cannot write the fleet into", dir))?;
        tracing::info!(fleet = %dir.display(), fleet_id, "fleet created");
        Ok(InitReport {
            fleet_id,
            replaced_to,
        })
    }

    /// Open and lock an existing fleet directory, checking that its CA, key, CRL and inventory
    /// are present and sound.
    pub fn open(dir: &Path) -> Result<Fleet, FleetError> {
        if !dir.is_dir() {
            return Err(FleetError::NotAFleet {
                dir: dir.to_owned(),
                why: "no such directory".into(),
            });
        }
        let missing: Vec<&str> = [
            files::ROOT_CERT,
            files::ISSUING_CERT,
            files::ISSUING_KEY,
            files::INVENTORY,
        ]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
        if !missing.is_empty() {
            return Err(FleetError::NotAFleet {
                dir: dir.to_owned(),
                why: format!("missing {}", missing.join(", ")),
            });
        }
        let lock = DirLock::acquire(dir).map_err(io_err("cannot lock", dir))?;

        let root_path = dir.join(files::ROOT_CERT);
        let issuing_path = dir.join(files::ISSUING_CERT);
        let key_path = dir.join(files::ISSUING_KEY);
        let root_der = keys::load_certs(&root_path)?.remove(0);
        let issuing_der = keys::load_certs(&issuing_path)?.remove(0);
        let issuing_key =
            KeyPair::from_pem(&read_text(&key_path)?).map_err(|e| FleetError::Corrupt {
                path: key_path.clone(),
                problem: format!("not a PEM private key: {e}"),
            })?;
        let issuer = CertificateParams::from_ca_cert_der(&issuing_der)
            .map_err(|e| FleetError::Corrupt {
                path: issuing_path.clone(),
                problem: e.to_string(),
            })?
            .self_signed(&issuing_key)?;
        // The key must be the certificate's.
        let (_, parsed) =
            x509_parser::parse_x509_certificate(issuing_der.as_ref()).map_err(|e| {
                FleetError::Corrupt {
                    path: issuing_path.clone(),
                    problem: e.to_string(),
                }
            })?;
        if parsed.public_key().raw != issuing_key.public_key_der().as_slice() {
            return Err(FleetError::Corrupt {
                path: key_path,
                problem: format!("is not the key of {}", issuing_path.display()),
            });
        }
        let inv_path = dir.join(files::INVENTORY);
        let inventory: Inventory =
            serde_json::from_str(&read_text(&inv_path)?).map_err(|e| FleetError::Corrupt {
                path: inv_path.clone(),
                problem: format!("not a fleet inventory: {e}"),
            })?;
        if inventory.format != INVENTORY_FORMAT {
            return Err(FleetError::Corrupt {
                path: inv_path,
                problem: format!(
                    "inventory format {} is not supported (expected {INVENTORY_FORMAT})",
                    inventory.format
                ),
            });
        }
        let settings_path = dir.join(files::SETTINGS);
        let settings = if settings_path.exists() {
            let s: FleetSettings =
                serde_json::from_str(&read_text(&settings_path)?).map_err(|e| {
                    FleetError::Corrupt {
                        path: settings_path.clone(),
                        problem: format!("not fleet settings: {e}"),
                    }
                })?;
            if s.format != SETTINGS_FORMAT {
                return Err(FleetError::Corrupt {
                    path: settings_path,
                    problem: format!(
                        "settings format {} is not supported (expected {SETTINGS_FORMAT})",
                        s.format
                    ),
                });
            }
            check_lan_domain(&s.lan_domain).map_err(|problem| FleetError::Corrupt {
                path: settings_path.clone(),
                problem: problem.to_string(),
            })?;
            s
        } else {
            // A fleet made before fleet.json existed.
            FleetSettings::default()
        };
        Ok(Fleet {
            dir: dir.to_owned(),
            root_pem: pem_encode("CERTIFICATE", root_der.as_ref()),
            issuing_pem: pem_encode("CERTIFICATE", issuing_der.as_ref()),
            issuer,
            issuing_key,
            inventory,
            settings,
            _lock: lock,
        })
    }

    /// The fleet directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The inventory as loaded (and updated by this process).
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The fleet's settings (`fleet.json`, or the defaults for an older fleet).
    pub fn settings(&self) -> &FleetSettings {
        &self.settings
    }

    /// A unit's LAN DNS name in this fleet, e.g. `las-amb-0192.units.kerbside.invalid`.
    pub fn lan_dns_name(&self, device_id: &DeviceId) -> Result<String, FleetError> {
        lan_dns_name(device_id, &self.settings.lan_domain)
            .map_err(|e| FleetError::Invalid(e.to_string()))
    }

    /// The CA bundle every hub and unit trusts: root, then issuing CA (PEM).
    pub fn ca_bundle_pem(&self) -> String {
        format!("{}{}", self.root_pem, self.issuing_pem)
    }

    /// A certificate chain file: `leaf`, then the issuing CA (PEM).
    pub fn chain_pem(&self, leaf: &IssuedCert) -> String {
        format!(
            "{}{}",
            pem_encode("CERTIFICATE", &leaf.der),
            self.issuing_pem
        )
    }

    /// Path of the fleet's CRL.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join(files::CRL)
    }

    /// Check the CRL file parses (the `crl` command rewrites a corrupt one from the inventory).
    pub fn check_crl(&self) -> Result<(), FleetError> {
        keys::load_crls(&self.crl_path())?;
        Ok(())
    }

    fn sign_leaf(
        &self,
        params: CertificateParams,
        public_key: &impl PublicKeyData,
    ) -> Result<IssuedCert, FleetError> {
        let not_before = UnixMillis(params.not_before.unix_timestamp() * 1000);
        let not_after = UnixMillis(params.not_after.unix_timestamp() * 1000);
        let serial = crate::issue::serial_hex(&params);
        let cert = params.signed_by(public_key, &self.issuer, &self.issuing_key)?;
        Ok(IssuedCert {
            der: cert.der().to_vec(),
            serial,
            not_before,
            not_after,
        })
    }

    /// Issue a unit's operational (client) certificate for `public_key` with explicit validity.
    /// It carries the identity URI and one URI per cohort (see [`crate::identity`]), EKU
    /// clientAuth only. The CLI uses a 7-day validity; tests use this to make expired and
    /// not-yet-valid certificates.
    pub fn issue_unit_cert(
        &self,
        public_key: &impl PublicKeyData,
        device_id: &DeviceId,
        role: UnitRole,
        cohorts: &[CohortSpec],
        not_before: UnixMillis,
        not_after: UnixMillis,
    ) -> Result<IssuedCert, FleetError> {
        let p = crate::issue::unit_cert_params(
            &self.inventory.fleet_id,
            device_id,
            role,
            cohorts,
            not_before,
            not_after,
        )?;
        self.sign_leaf(p, public_key)
    }

    /// Issue the hub's TLS server certificate for `name` (a DNS or IP SAN) with the hub marker
    /// `kerbside://hub/NAME` (units require it), EKU serverAuth only.
    pub fn issue_hub_cert(
        &self,
        public_key: &impl PublicKeyData,
        name: &str,
        not_before: UnixMillis,
        not_after: UnixMillis,
    ) -> Result<IssuedCert, FleetError> {
        self.issue_server_cert(
            public_key,
            &[name.to_owned()],
            &hub_uri(name),
            not_before,
            not_after,
        )
    }

    /// Issue a unit's LAN server certificate: its LAN DNS name in this fleet
    /// ([`Fleet::lan_dns_name`]) first, then `names` (its LAN address and any `--lan-name`), and
    /// the LAN marker `kerbside://lan/DEVICE-ID`; EKU serverAuth only.
    pub fn issue_lan_cert(
        &self,
        public_key: &impl PublicKeyData,
        device_id: &DeviceId,
        names: &[String],
        not_before: UnixMillis,
        not_after: UnixMillis,
    ) -> Result<IssuedCert, FleetError> {
        let mut all = vec![self.lan_dns_name(device_id)?];
        for n in names {
            if !all.iter().any(|a| a.eq_ignore_ascii_case(n)) {
                all.push(n.clone());
            }
        }
        self.issue_server_cert(public_key, &all, &lan_uri(device_id), not_before, not_after)
    }

    /// A TLS server certificate for `names` (DNS or IP SANs) and one marker URI, EKU serverAuth
    /// only.
    fn issue_server_cert(
        &self,
        public_key: &impl PublicKeyData,
        names: &[String],
        marker: &str,
        not_before: UnixMillis,
        not_after: UnixMillis,
    ) -> Result<IssuedCert, FleetError> {
        let first = names
            .first()
            .ok_or_else(|| FleetError::Invalid("a server certificate needs a name".into()))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(
            &format!("Kerbside fleet {}", self.inventory.fleet_id),
            first,
        );
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        p.serial_number = Some(SerialNumber::from_slice(&new_serial()?));
        p.not_before = to_odt(whole_seconds(not_before))?;
        p.not_after = to_odt(whole_seconds(not_after))?;
        for n in names {
            p.subject_alt_names.push(san_for(n)?);
        }
        p.subject_alt_names
            .push(SanType::URI(marker.to_owned().try_into()?));
        self.sign_leaf(p, public_key)
    }

    fn write_crl(&mut self, now: UnixMillis) -> Result<u64, FleetError> {
        self.inventory.crl_number += 1;
        let pem = make_crl(
            &self.inventory,
            &self.issuer,
            &self.issuing_key,
            whole_seconds(now),
        )?;
        let path = self.crl_path();
        write_atomic(&path, pem.as_bytes(), MODE_PRIVATE).map_err(io_err("cannot write", &path))?;
        Ok(self.inventory.crl_number)
    }

    /// Write the inventory, one revision on from the last (hubs sharing a database keep the
    /// highest revision they have seen).
    fn save_inventory(&mut self) -> Result<(), FleetError> {
        self.inventory.revision += 1;
        let json = serde_json::to_vec_pretty(&self.inventory)
            .map_err(|e| FleetError::Invalid(format!("inventory: {e}")))?;
        let path = self.dir.join(files::INVENTORY);
        write_atomic(&path, &json, MODE_PRIVATE).map_err(io_err("cannot write", &path))
    }

    fn read_fleet_file(&self, name: &str) -> Result<String, FleetError> {
        read_text(&self.dir.join(name))
    }

    /// `crl`: re-sign the CRL from the inventory (refreshes `nextUpdate`, repairs a corrupt file).
    pub fn refresh_crl(&mut self, now: UnixMillis) -> Result<u64, FleetError> {
        let n = self.write_crl(now)?;
        self.save_inventory()?;
        Ok(n)
    }

    /// `hub`: write a hub bundle (certificate for `plan.name`, key, CA bundle, signing keys,
    /// `hub.toml` pointing at the fleet's CRL and inventory by absolute path).
    pub fn make_hub_bundle(
        &mut self,
        plan: &HubPlan,
        now: UnixMillis,
    ) -> Result<HubConfig, FleetError> {
        let now = whole_seconds(now);
        let names = [
            files::HUB_TOML,
            files::HUB_CERT,
            files::HUB_KEY,
            files::RECORD_SIGNING,
        ];
        check_out_dir(&plan.out, &self.dir, &names, plan.force)?;
        san_for(&plan.name)?;
        // Check the fleet keys before copying them. The hub gets the record-signing key and
        // only the public halves of the token keys.
        let record_pem = self.read_fleet_file(files::RECORD_SIGNING)?;
        keys::parse_ed25519_signing(record_pem.as_bytes()).map_err(|problem| {
            FleetError::Corrupt {
                path: self.dir.join(files::RECORD_SIGNING),
                problem: problem.to_string(),
            }
        })?;
        let token_verify = self.read_fleet_file(files::TOKEN_VERIFY)?;
        keys::parse_ed25519_public(token_verify.as_bytes()).map_err(|problem| {
            FleetError::Corrupt {
                path: self.dir.join(files::TOKEN_VERIFY),
                problem: problem.to_string(),
            }
        })?;
        // Fleets made before operator tokens and the deny list get them now.
        let (_, operator_public) = self.operator_key()?;
        let operator_verify = ed25519_public_pem(&operator_public);
        self.deny_list(now)?;
        // The renewal CA, when the fleet has one (fleets made before it: `ca renewal-ca`).
        let renewal = self.renewal_ca()?;
        if renewal.is_none() {
            tracing::warn!(
                fleet = %self.dir.display(),
                "this fleet has no renewal CA: the hub cannot renew unit certificates over the sync; create one with `edge-provision ca renewal-ca` (needs root-ca.key) and rewrite the hub bundle"
            );
        }

        let key = new_key()?;
        let cert = self.issue_hub_cert(
            &key,
            &plan.name,
            now.plus_ms(-BACKDATE_MS),
            now.plus_ms(HUB_CERT_LIFETIME_MS),
        )?;
        let cfg = HubConfig {
            file: PathBuf::new(),
            name: plan.name.clone(),
            listen: plan.listen.clone(),
            admin: plan.admin.clone(),
            data_dir: PathBuf::from("data"),
            inventory: Some(absolute(&self.dir.join(files::INVENTORY))?),
            tls: HubTls {
                ca: files::CA_BUNDLE.into(),
                cert: files::HUB_CERT.into(),
                key: files::HUB_KEY.into(),
                crl: absolute(&self.crl_path())?,
                crl_reload_s: 60,
            },
            keys: HubKeys {
                record_signing: files::RECORD_SIGNING.into(),
                token_signing: None,
                token_verify: files::TOKEN_VERIFY.into(),
                operator_verify: Some(files::OPERATOR_VERIFY.into()),
                token_denylist: Some(absolute(&self.dir.join(files::TOKEN_DENYLIST))?),
                renewal_ca_cert: renewal.as_ref().map(|_| files::RENEWAL_CERT.into()),
                renewal_ca_key: renewal.as_ref().map(|_| files::RENEWAL_KEY.into()),
            },
            sync: HubSync::default(),
            feeds: Vec::new(),
            store: plan.store.clone(),
        };
        let toml = format!(
            "# Kerbside hub, written by edge-provision for fleet {}.\n# Paths are relative to this file. The CRL, inventory and token deny list are the fleet's\n# own files, so revocations are seen without copying; copy them here if the hub runs elsewhere.\n\n{}",
            self.inventory.fleet_id,
            cfg.to_toml()?
        );
        // Validate the config exactly as the hub will read it, before anything is written.
        HubConfig::parse(&toml, &plan.out.join(files::HUB_TOML))?;
        let mut bundle = vec![
            BundleFile::private(files::HUB_TOML, toml),
            BundleFile::private(files::HUB_CERT, self.chain_pem(&cert)),
            BundleFile::private(files::HUB_KEY, key.serialize_pem()),
            BundleFile::private(files::CA_BUNDLE, self.ca_bundle_pem()),
            BundleFile::private(files::RECORD_SIGNING, record_pem),
            BundleFile::private(files::TOKEN_VERIFY, token_verify),
            BundleFile::private(files::OPERATOR_VERIFY, operator_verify),
        ];
        if let Some((cert_pem, key_pem)) = renewal {
            bundle.push(BundleFile::private(files::RENEWAL_CERT, cert_pem));
            bundle.push(BundleFile::private(files::RENEWAL_KEY, key_pem));
        }
        write_bundle(&plan.out, &bundle)
            .map_err(io_err("cannot write the hub bundle into", &plan.out))?;
        // A bundle written by an older `hub` held the staff-token private key: take it out.
        let stale = plan.out.join(files::TOKEN_SIGNING);
        if stale.is_file() {
            fs::remove_file(&stale).map_err(io_err("cannot remove the obsolete", &stale))?;
            tracing::info!(file = %stale.display(), "removed the staff-token private key from the hub bundle");
        }
        let bundle_dir = absolute(&plan.out)?;
        self.inventory.hubs.retain(|h| h.bundle_dir != bundle_dir);
        self.inventory.hubs.push(HubRecord {
            name: plan.name.clone(),
            serial: cert.serial.clone(),
            not_after: cert.not_after,
            bundle_dir: bundle_dir.clone(),
        });
        self.save_inventory()?;
        tracing::info!(hub = %plan.name, serial = %cert.serial, bundle = %bundle_dir.display(), "hub bundle written");
        Ok(HubConfig::load(&bundle_dir.join(files::HUB_TOML))?)
    }

    /// The fleet's renewal CA (certificate PEM, key PEM), checked to be a pair signed by the
    /// root; `None` for a fleet made before renewal over the sync.
    pub fn renewal_ca(&self) -> Result<Option<(String, String)>, FleetError> {
        let cert_path = self.dir.join(files::RENEWAL_CERT);
        let key_path = self.dir.join(files::RENEWAL_KEY);
        match (cert_path.is_file(), key_path.is_file()) {
            (false, false) => return Ok(None),
            (true, true) => {}
            _ => {
                return Err(FleetError::Corrupt {
                    path: cert_path,
                    problem: format!(
                        "{} and {} must both be present or both absent",
                        files::RENEWAL_CERT,
                        files::RENEWAL_KEY
                    ),
                })
            }
        }
        let cert_pem = read_text(&cert_path)?;
        let key_pem = read_text(&key_path)?;
        let der = keys::load_certs(&cert_path)?.remove(0);
        let corrupt = |problem: String| FleetError::Corrupt {
            path: cert_path.clone(),
            problem,
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| corrupt(e.to_string()))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| FleetError::Corrupt {
            path: key_path.clone(),
            problem: format!("not a PEM private key: {e}"),
        })?;
        if parsed.public_key().raw != key.public_key_der().as_slice() {
            return Err(FleetError::Corrupt {
                path: key_path,
                problem: format!("is not the key of {}", cert_path.display()),
            });
        }
        let root_der = keys::load_certs(&self.dir.join(files::ROOT_CERT))?.remove(0);
        let (_, root) = x509_parser::parse_x509_certificate(root_der.as_ref())
            .map_err(|e| corrupt(e.to_string()))?;
        parsed
            .verify_signature(Some(root.public_key()))
            .map_err(|e| corrupt(format!("is not signed by the fleet root: {e}")))?;
        Ok(Some((cert_pem, key_pem)))
    }

    /// `ca renewal-ca`: create (or with `force`, replace) the fleet's renewal CA, signed by the
    /// root key, which must be back in the fleet directory for this. Existing hub bundles get
    /// it when rewritten with `hub`. Returns the new CA's serial and expiry.
    pub fn make_renewal_ca(
        &mut self,
        force: bool,
        now: UnixMillis,
    ) -> Result<(String, UnixMillis), FleetError> {
        let now = whole_seconds(now);
        if self.renewal_ca()?.is_some() && !force {
            return Err(FleetError::Invalid(format!(
                "{} already has a renewal CA; --force replaces it (every hub bundle must then be rewritten)",
                self.dir.display()
            )));
        }
        let root_key_path = self.dir.join(files::ROOT_KEY);
        if !root_key_path.is_file() {
            return Err(FleetError::Invalid(format!(
                "the renewal CA is signed by the fleet root: put the root key back at {} for this command, then move it offline again",
                root_key_path.display()
            )));
        }
        let root_key =
            KeyPair::from_pem(&read_text(&root_key_path)?).map_err(|e| FleetError::Corrupt {
                path: root_key_path.clone(),
                problem: format!("not a PEM private key: {e}"),
            })?;
        let root_der = keys::load_certs(&self.dir.join(files::ROOT_CERT))?.remove(0);
        let root = CertificateParams::from_ca_cert_der(&root_der)
            .map_err(|e| FleetError::Corrupt {
                path: self.dir.join(files::ROOT_CERT),
                problem: e.to_string(),
            })?
            .self_signed(&root_key)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(root_der.as_ref()).map_err(|e| {
            FleetError::Corrupt {
                path: self.dir.join(files::ROOT_CERT),
                problem: e.to_string(),
            }
        })?;
        if parsed.public_key().raw != root_key.public_key_der().as_slice() {
            return Err(FleetError::Corrupt {
                path: root_key_path,
                problem: "is not the key of the fleet root certificate".into(),
            });
        }
        let org = parsed
            .subject()
            .iter_organization()
            .next()
            .and_then(|o| o.as_str().ok())
            .unwrap_or("Kerbside")
            .to_owned();
        let key = new_key()?;
        let params = crate::issue::renewal_ca_params(
            &org,
            &self.inventory.fleet_id,
            now.plus_ms(-BACKDATE_MS),
            now.plus_ms(RENEWAL_CA_LIFETIME_MS),
        )?;
        let serial = crate::issue::serial_hex(&params);
        let cert = params.signed_by(&key, &root, &root_key)?;
        let not_after = whole_seconds(now.plus_ms(RENEWAL_CA_LIFETIME_MS));
        // Key first: a crash between the two leaves a key without its certificate, which
        // `renewal_ca` reports rather than pairing the old certificate with a new key.
        write_atomic(
            &self.dir.join(files::RENEWAL_KEY),
            key.serialize_pem().as_bytes(),
            MODE_PRIVATE,
        )
        .map_err(io_err("cannot write", &self.dir.join(files::RENEWAL_KEY)))?;
        write_atomic(
            &self.dir.join(files::RENEWAL_CERT),
            cert.pem().as_bytes(),
            MODE_PRIVATE,
        )
        .map_err(io_err("cannot write", &self.dir.join(files::RENEWAL_CERT)))?;
        tracing::info!(fleet = %self.dir.display(), serial, "renewal CA written");
        Ok((serial, not_after))
    }

    /// `enrol`: a fresh key pair, a 7-day operational certificate, a LAN certificate, the CA
    /// bundle and verification keys, and `edge.toml`, written as one bundle; the unit is recorded
    /// in the inventory. A device id already enrolled is refused unless `plan.replace`, which
    /// revokes every certificate of the old enrolment.
    pub fn enrol(&mut self, plan: &EnrolPlan, now: UnixMillis) -> Result<EnrolReport, FleetError> {
        let now = whole_seconds(now);
        let existing = self.inventory.unit(&plan.device_id).cloned();
        if existing.is_some() && !plan.replace {
            return Err(FleetError::Duplicate(plan.device_id.clone()));
        }
        let names = [
            files::EDGE_TOML,
            files::UNIT_CERT,
            files::UNIT_KEY,
            files::LAN_CERT,
            files::LAN_KEY,
        ];
        check_out_dir(&plan.out, &self.dir, &names, plan.force)?;
        if plan.hub.port() == 0 {
            return Err(FleetError::Invalid(format!(
                "--hub {}: port 0 is not a real port",
                plan.hub
            )));
        }
        san_for(&plan.hub_name)?;
        for h in &plan.more_hubs {
            if h.addr.port() == 0 {
                return Err(FleetError::Invalid(format!(
                    "--hub {}: port 0 is not a real port",
                    h.addr
                )));
            }
            san_for(&h.name)?;
        }
        if plan.more_hubs.len() + 1 > edge_runtime::config::MAX_HUBS {
            return Err(FleetError::Invalid(format!(
                "at most {} hubs",
                edge_runtime::config::MAX_HUBS
            )));
        }
        if let Some(c) = &plan.callsign {
            if c.trim().is_empty() || c.len() > 32 || c.chars().any(char::is_control) {
                return Err(FleetError::Invalid(
                    "--callsign must be 1 to 32 printable characters".into(),
                ));
            }
        }
        let mut lan_names: Vec<String> = Vec::new();
        if !plan.lan.is_unspecified() {
            lan_names.push(plan.lan.host().to_owned());
        }
        for n in &plan.lan_names {
            san_for(n)?;
            if !lan_names.contains(n) {
                lan_names.push(n.clone());
            }
        }
        // The unit's own LAN DNS name; it must not collide with another unit's.
        let lan_dns = self.lan_dns_name(&plan.device_id)?;
        if let Some(other) = self.inventory.units.iter().find(|u| {
            u.device_id != plan.device_id
                && lan_dns_name(&u.device_id, &self.settings.lan_domain)
                    .ok()
                    .as_ref()
                    == Some(&lan_dns)
        }) {
            return Err(FleetError::Invalid(format!(
                "device id {} would have the LAN name {lan_dns}, which unit {} already has; choose another device id",
                plan.device_id, other.device_id
            )));
        }
        let cohorts = if plan.cohorts.is_empty() {
            vec![CohortSpec::All]
        } else {
            plan.cohorts.clone()
        };
        let record_verify = self.read_fleet_file(files::RECORD_VERIFY)?;
        let token_verify = self.read_fleet_file(files::TOKEN_VERIFY)?;
        for (name, text) in [
            (files::RECORD_VERIFY, &record_verify),
            (files::TOKEN_VERIFY, &token_verify),
        ] {
            keys::parse_ed25519_public(text.as_bytes()).map_err(|problem| FleetError::Corrupt {
                path: self.dir.join(name),
                problem: problem.to_string(),
            })?;
        }

        let unit_key = new_key()?;
        let lan_key = new_key()?;
        let cert = self.issue_unit_cert(
            &unit_key,
            &plan.device_id,
            plan.role,
            &cohorts,
            now.plus_ms(-BACKDATE_MS),
            now.plus_ms(UNIT_CERT_LIFETIME_MS),
        )?;
        let lan_cert = self.issue_lan_cert(
            &lan_key,
            &plan.device_id,
            &lan_names,
            now.plus_ms(-BACKDATE_MS),
            now.plus_ms(LAN_CERT_LIFETIME_MS),
        )?;
        let mut lan = LanConfig::new(
            plan.lan.clone(),
            true,
            Some(files::LAN_CERT.into()),
            Some(files::LAN_KEY.into()),
        );
        lan.name = Some(lan_dns.clone());

        let cfg = UnitConfig {
            file: PathBuf::new(),
            device_id: plan.device_id.clone(),
            role: plan.role,
            callsign: plan.callsign.clone(),
            site: plan.site.clone(),
            data_dir: PathBuf::from("data"),
            cohorts: cohorts.clone(),
            hub: HubLink {
                addr: plan.hub.clone(),
                name: plan.hub_name.clone(),
            },
            hubs: if plan.more_hubs.is_empty() {
                Vec::new()
            } else {
                let mut all = vec![HubLink {
                    addr: plan.hub.clone(),
                    name: plan.hub_name.clone(),
                }];
                all.extend(plan.more_hubs.iter().cloned());
                all
            },
            lan,
            tls: UnitTls {
                ca: files::CA_BUNDLE.into(),
                cert: files::UNIT_CERT.into(),
                key: files::UNIT_KEY.into(),
            },
            keys: UnitKeys {
                record_verify: files::RECORD_VERIFY.into(),
                token_verify: files::TOKEN_VERIFY.into(),
            },
            cache: CacheConfig::default(),
            sync: SyncConfig::default(),
            audit: AuditConfig::default(),
            supervisor: plan.supervisor.clone(),
        };
        let toml = format!(
            "# Kerbside unit {} ({}), written by edge-provision for fleet {}.\n# Paths are relative to this file. `cohorts` is informational: the hub uses the\n# cohorts inside unit.crt, which only the fleet can change.\n\n{}",
            plan.device_id,
            plan.role,
            self.inventory.fleet_id,
            cfg.to_toml()?
        );
        // Validate the config exactly as the daemon will read it, before anything is written.
        UnitConfig::parse(&toml, &plan.out.join(files::EDGE_TOML))?;
        let bundle = [
            BundleFile::private(files::EDGE_TOML, toml),
            BundleFile::private(files::UNIT_CERT, self.chain_pem(&cert)),
            BundleFile::private(files::UNIT_KEY, unit_key.serialize_pem()),
            BundleFile::private(files::LAN_CERT, self.chain_pem(&lan_cert)),
            BundleFile::private(files::LAN_KEY, lan_key.serialize_pem()),
            BundleFile::private(files::CA_BUNDLE, self.ca_bundle_pem()),
            BundleFile::private(files::RECORD_VERIFY, record_verify),
            BundleFile::private(files::TOKEN_VERIFY, token_verify),
        ];
        write_bundle(&plan.out, &bundle)
            .map_err(io_err("cannot write the unit bundle into", &plan.out))?;
        let bundle_dir = absolute(&plan.out)?;

        let mut revoked = Vec::new();
        if let Some(old) = existing {
            self.inventory
                .revoke_certs(&old, RevokeReason::Replaced, now);
            revoked = old.certs.iter().map(|c| c.serial.clone()).collect();
            self.inventory
                .units
                .retain(|u| u.device_id != plan.device_id);
            self.write_crl(now)?;
        }
        self.inventory.units.push(UnitRecord {
            device_id: plan.device_id.clone(),
            role: plan.role,
            callsign: plan.callsign.clone(),
            site: plan.site.clone(),
            cohorts,
            hub: plan.hub.clone(),
            hub_name: plan.hub_name.clone(),
            lan: plan.lan.clone(),
            lan_names,
            bundle_dir: bundle_dir.clone(),
            public_key: STANDARD.encode(unit_key.public_key_der()),
            lan_public_key: STANDARD.encode(lan_key.public_key_der()),
            cert: cert.record(),
            lan_cert: lan_cert.record(),
            certs: vec![cert.record()],
            enrolled_at: now,
            renewed_at: None,
            revoked_at: None,
        });
        self.save_inventory()?;
        tracing::info!(device = %plan.device_id, serial = %cert.serial, bundle = %bundle_dir.display(), replaced = !revoked.is_empty(), "unit enrolled");
        Ok(EnrolReport {
            cert: cert.record(),
            revoked,
            bundle_dir,
        })
    }

    /// `revoke`: revoke every certificate of a unit, re-sign the CRL and mark the unit revoked.
    /// Idempotent. Hubs pick the new CRL up on their next reload.
    pub fn revoke(
        &mut self,
        device_id: &DeviceId,
        reason: RevokeReason,
        now: UnixMillis,
    ) -> Result<RevokeReport, FleetError> {
        let now = whole_seconds(now);
        let unit = self
            .inventory
            .unit(device_id)
            .cloned()
            .ok_or_else(|| FleetError::UnknownUnit(device_id.clone()))?;
        let before = self.inventory.revoked.len();
        self.inventory.revoke_certs(&unit, reason, now);
        let serials: Vec<String> = self.inventory.revoked[before..]
            .iter()
            .map(|r| r.serial.clone())
            .collect();
        let already = unit.revoked();
        if let Some(u) = self.inventory.unit_mut(device_id) {
            u.revoked_at.get_or_insert(now);
        }
        let crl_number = self.write_crl(now)?;
        self.save_inventory()?;
        tracing::info!(device = %device_id, revoked = serials.len(), crl_number, "unit revoked");
        Ok(RevokeReport {
            serials,
            already,
            crl_number,
        })
    }

    /// `renew`: re-issue a unit's operational certificate (and its LAN certificate) for the same
    /// keys, 7 days from `now`, written as `unit.crt` and `lan.crt` into `out` or the unit's
    /// recorded bundle directory. Refused for a revoked unit and for one whose certificate
    /// expired more than [`RENEWAL_AFTER_EXPIRY_MS`] ago (re-enrol it with `--replace`).
    pub fn renew(
        &mut self,
        device_id: &DeviceId,
        out: Option<&Path>,
        now: UnixMillis,
    ) -> Result<RenewReport, FleetError> {
        let now = whole_seconds(now);
        let unit = self
            .inventory
            .unit(device_id)
            .cloned()
            .ok_or_else(|| FleetError::UnknownUnit(device_id.clone()))?;
        let refuse = |why: String| FleetError::RenewalRefused {
            device: device_id.clone(),
            why,
        };
        if unit.revoked() {
            return Err(refuse(
                "it is revoked; re-enrol it with `edge-provision enrol --replace`".into(),
            ));
        }
        if now > unit.cert.not_after.plus_ms(RENEWAL_AFTER_EXPIRY_MS) {
            return Err(refuse(format!(
                "its certificate expired at {}, more than {} days ago; re-enrol it in the workshop with `edge-provision enrol --replace`",
                unit.cert.not_after,
                RENEWAL_AFTER_EXPIRY_MS / UnixMillis::DAY
            )));
        }
        let dir = match out {
            Some(d) => d.to_owned(),
            None if unit.bundle_dir.is_dir() => unit.bundle_dir.clone(),
            None => {
                return Err(refuse(format!(
                    "its bundle directory {} no longer exists; pass --out DIR to write the renewed certificates there",
                    unit.bundle_dir.display()
                )))
            }
        };
        if dir.exists() && !dir.is_dir() {
            return Err(FleetError::BadDir {
                dir,
                why: "exists and is not a directory".into(),
            });
        }
        let spki = decode_spki(&unit.public_key, &self.dir.join(files::INVENTORY))?;
        let lan_spki = decode_spki(&unit.lan_public_key, &self.dir.join(files::INVENTORY))?;
        // If the target holds the unit's key, it must be this unit's key.
        let key_path = dir.join(files::UNIT_KEY);
        if key_path.is_file() {
            let k = KeyPair::from_pem(&read_text(&key_path)?).map_err(|e| FleetError::Corrupt {
                path: key_path.clone(),
                problem: format!("not a PEM private key: {e}"),
            })?;
            if STANDARD.encode(k.public_key_der()) != unit.public_key {
                return Err(refuse(format!(
                    "{} is not this unit's key (was the unit re-enrolled elsewhere?)",
                    key_path.display()
                )));
            }
        }
        let cert = self.issue_unit_cert(
            &spki,
            device_id,
            unit.role,
            &unit.cohorts,
            now.plus_ms(-BACKDATE_MS),
            now.plus_ms(UNIT_CERT_LIFETIME_MS),
        )?;
        // The recorded names (address, --lan-name); issue_lan_cert adds the LAN DNS name and
        // marker, so a unit enrolled before they existed gets them at its next renewal.
        let lan_cert = self.issue_lan_cert(
            &lan_spki,
            device_id,
            &unit.lan_names,
            now.plus_ms(-BACKDATE_MS),
            now.plus_ms(LAN_CERT_LIFETIME_MS),
        )?;
        let bundle = [
            BundleFile::private(files::UNIT_CERT, self.chain_pem(&cert)),
            BundleFile::private(files::LAN_CERT, self.chain_pem(&lan_cert)),
        ];
        write_bundle(&dir, &bundle)
            .map_err(io_err("cannot write the renewed certificates into", &dir))?;
        if let Some(u) = self.inventory.unit_mut(device_id) {
            u.cert = cert.record();
            u.lan_cert = lan_cert.record();
            u.certs.push(cert.record());
            u.renewed_at = Some(now);
        }
        self.save_inventory()?;
        tracing::info!(device = %device_id, serial = %cert.serial, dir = %dir.display(), "unit renewed");
        Ok(RenewReport {
            cert: cert.record(),
            written_to: dir,
        })
    }

    /// `list`: every unit, with its current certificate, expiry and revocation.
    pub fn units(&self, now: UnixMillis) -> Vec<UnitSummary> {
        self.inventory
            .units
            .iter()
            .map(|u| UnitSummary {
                device_id: u.device_id.to_string(),
                role: u.role,
                callsign: u.callsign.clone(),
                site: u.site.as_ref().map(|s| s.to_string()),
                serial: u.cert.serial.clone(),
                expiry: u.cert.not_after.to_rfc3339(),
                expired: now >= u.cert.not_after,
                revoked: u.revoked(),
                revoked_at: u.revoked_at.map(|t| t.to_rfc3339()),
                cohorts: u.cohorts.iter().map(|c| c.to_string()).collect(),
                hub: u.hub.to_string(),
                bundle_dir: u.bundle_dir.clone(),
            })
            .collect()
    }

    /// `token`: mint a shift token signed with the fleet's staff-token key. A unit binding must
    /// name an enrolled, unrevoked unit.
    pub fn mint_token(
        &self,
        req: &TokenRequest,
        now: UnixMillis,
    ) -> Result<(String, ShiftClaims), FleetError> {
        if !(1..=MAX_TOKEN_HOURS).contains(&req.hours) {
            return Err(FleetError::Invalid(format!(
                "--hours must be 1 to {MAX_TOKEN_HOURS} (a shift token lasts one shift at most)"
            )));
        }
        if let Some(d) = &req.device {
            match self.inventory.unit(d) {
                None => return Err(FleetError::UnknownUnit(d.clone())),
                Some(u) if u.revoked() => {
                    return Err(FleetError::Invalid(format!(
                        "device {d} is revoked; a token bound to it would be useless"
                    )))
                }
                Some(_) => {}
            }
        }
        let path = self.dir.join(files::TOKEN_SIGNING);
        let key = keys::load_ed25519_signing(&path)?;
        let claims = ShiftClaims {
            v: TOKEN_VERSION,
            token_id: hex::encode(random_bytes::<16>()?),
            staff_id: req.staff_id.trim().to_owned(),
            staff_name: req.staff_name.trim().to_owned(),
            role: req.role,
            org_ods: req.org.clone(),
            device: req.device.clone(),
            issued_at: now,
            expires_at: now.plus_ms(i64::from(req.hours) * UnixMillis::HOUR),
        };
        claims
            .check()
            .map_err(|e| FleetError::Invalid(e.to_string()))?;
        Ok((token::sign(&claims, &key), claims))
    }

    /// The fleet's operator key pair, created (both files 0600) on first use in a fleet made
    /// before operator tokens. A public key without its private key is refused rather than
    /// replaced, since hubs may already trust it.
    pub fn operator_key(&self) -> Result<(ring::signature::Ed25519KeyPair, [u8; 32]), FleetError> {
        use ring::signature::KeyPair as _;
        let sk_path = self.dir.join(files::OPERATOR_SIGNING);
        let pk_path = self.dir.join(files::OPERATOR_VERIFY);
        if !sk_path.exists() {
            if pk_path.exists() {
                return Err(FleetError::Corrupt {
                    path: sk_path,
                    problem: format!(
                        "is missing but {} exists; restore the operator key from the fleet's backup (hubs trust its public half)",
                        files::OPERATOR_VERIFY
                    ),
                });
            }
            let new = generate_ed25519().map_err(|e| FleetError::Invalid(e.to_string()))?;
            write_atomic(&sk_path, new.private_pem.as_bytes(), MODE_PRIVATE)
                .map_err(io_err("cannot write", &sk_path))?;
            tracing::info!(key = %sk_path.display(), "operator key created");
        }
        let pair = keys::load_ed25519_signing(&sk_path)?;
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        match keys::load_ed25519_public(&pk_path) {
            Ok(p) if p == public => {}
            Ok(_) => {
                return Err(FleetError::Corrupt {
                    path: pk_path,
                    problem: format!("is not the public half of {}", files::OPERATOR_SIGNING),
                })
            }
            Err(_) if !pk_path.exists() => {
                write_atomic(
                    &pk_path,
                    ed25519_public_pem(&public).as_bytes(),
                    MODE_PRIVATE,
                )
                .map_err(io_err("cannot write", &pk_path))?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok((pair, public))
    }

    /// `operator`: mint an operator token for the hub's admin API, signed with the fleet's
    /// operator key (created on first use).
    pub fn mint_operator_token(
        &self,
        req: &OperatorRequest,
        now: UnixMillis,
    ) -> Result<(String, OperatorClaims), FleetError> {
        if !(1..=MAX_OPERATOR_HOURS).contains(&req.hours) {
            return Err(FleetError::Invalid(format!(
                "--hours must be 1 to {MAX_OPERATOR_HOURS}"
            )));
        }
        let (key, _) = self.operator_key()?;
        let claims = OperatorClaims {
            v: TOKEN_VERSION,
            token_id: hex::encode(random_bytes::<16>()?),
            operator_id: req.operator_id.trim().to_owned(),
            operator_name: req.name.trim().to_owned(),
            role: req.role,
            issued_at: now,
            expires_at: now.plus_ms(i64::from(req.hours) * UnixMillis::HOUR),
        };
        claims
            .check()
            .map_err(|e| FleetError::Invalid(e.to_string()))?;
        Ok((token::sign_operator(&claims, &key), claims))
    }

    /// Path of the fleet's signed token deny list.
    pub fn denylist_path(&self) -> PathBuf {
        self.dir.join(files::TOKEN_DENYLIST)
    }

    /// The fleet's current token deny list, verified with its token-verify key; an empty list
    /// (version 1) is written first in a fleet made before deny lists. A corrupt or foreign
    /// list is an error, never silently replaced (versions must only grow).
    pub fn deny_list(&self, now: UnixMillis) -> Result<DenyList, FleetError> {
        let path = self.denylist_path();
        if !path.exists() {
            let list = DenyList::empty(1, now);
            let key = keys::load_ed25519_signing(&self.dir.join(files::TOKEN_SIGNING))?;
            write_atomic(&path, &denylist::sign_denylist(&list, &key), MODE_PRIVATE)
                .map_err(io_err("cannot write", &path))?;
            return Ok(list);
        }
        let public = keys::load_ed25519_public(&self.dir.join(files::TOKEN_VERIFY))?;
        Ok(keys::load_denylist(&path, &public)?)
    }

    /// `token-revoke`: add `subject` to the fleet's deny list (replacing an earlier entry for
    /// it), drop entries whose tokens have all expired, bump the version, re-sign with the
    /// staff-token key and write it atomically (0600). Hubs pick it up and pass it to units.
    pub fn revoke_tokens(
        &self,
        subject: DenySubject,
        reason: Option<String>,
        now: UnixMillis,
    ) -> Result<DenyReport, FleetError> {
        // `now` to the millisecond (not whole seconds): a staff entry covers tokens issued up
        // to this instant, including one minted a moment ago.
        let subject = match subject {
            DenySubject::Token(t) => DenySubject::Token(t.trim().to_ascii_lowercase()),
            DenySubject::Staff(s) => DenySubject::Staff(s.trim().to_owned()),
            DenySubject::Operator(o) => DenySubject::Operator(o.trim().to_owned()),
        };
        subject
            .check()
            .map_err(|e| FleetError::Invalid(e.to_string()))?;
        let reason = reason
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty());
        let mut list = self.deny_list(now)?;
        let before = list.entries.len();
        list.prune(now);
        let pruned = before - list.entries.len();
        let entry = DenyEntry::new(subject, now, reason);
        list.add(entry.clone());
        list.version = list.version.saturating_add(1);
        list.issued_at = now;
        list.check()
            .map_err(|e| FleetError::Invalid(format!("--reason: {e}")))?;
        let key = keys::load_ed25519_signing(&self.dir.join(files::TOKEN_SIGNING))?;
        let path = self.denylist_path();
        write_atomic(&path, &denylist::sign_denylist(&list, &key), MODE_PRIVATE)
            .map_err(io_err("cannot write", &path))?;
        tracing::info!(subject = %entry.subject, version = list.version, "token deny list written");
        Ok(DenyReport {
            version: list.version,
            entry,
            entries: list.entries.len(),
            pruned,
            path,
        })
    }
}

fn decode_spki(b64: &str, inventory: &Path) -> Result<SubjectPublicKeyInfo, FleetError> {
    let der = STANDARD.decode(b64).map_err(|e| FleetError::Corrupt {
        path: inventory.to_owned(),
        problem: format!("a unit public key is not base64: {e}"),
    })?;
    SubjectPublicKeyInfo::from_der(&der).map_err(|e| FleetError::Corrupt {
        path: inventory.to_owned(),
        problem: format!("a unit public key is not a SubjectPublicKeyInfo: {e}"),
    })
}

/// The CRL for the inventory's revocations (expired certificates are left out: they are refused
/// anyway), numbered `inventory.crl_number`, PEM.
fn make_crl(
    inventory: &Inventory,
    issuer: &rcgen::Certificate,
    key: &KeyPair,
    now: UnixMillis,
) -> Result<String, FleetError> {
    let revoked_certs = inventory
        .revoked
        .iter()
        .filter(|r: &&RevokedCert| r.not_after > now)
        .map(|r| {
            let serial = hex::decode(&r.serial)
                .map_err(|e| FleetError::Invalid(format!("revoked serial {:?}: {e}", r.serial)))?;
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: to_odt(r.revoked_at)?,
                reason_code: match r.reason {
                    RevokeReason::Unspecified => None,
                    RevokeReason::Stolen => Some(RevocationReason::KeyCompromise),
                    RevokeReason::Decommissioned => Some(RevocationReason::CessationOfOperation),
                    RevokeReason::Replaced => Some(RevocationReason::Superseded),
                },
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, FleetError>>()?;
    let params = CertificateRevocationListParams {
        this_update: to_odt(now)?,
        next_update: to_odt(now.plus_ms(CRL_NEXT_UPDATE_MS))?,
        crl_number: SerialNumber::from(inventory.crl_number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: issuer.params().key_identifier_method.clone(),
    };
    Ok(params.signed_by(issuer, key)?.pem()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_floors() {
        assert_eq!(whole_seconds(UnixMillis(1_999)), UnixMillis(1_000));
        assert_eq!(whole_seconds(UnixMillis(-1)), UnixMillis(-1_000));
    }
}
