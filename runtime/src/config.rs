//! `hub.toml` and `edge.toml`: the configs `edge-provision` writes into bundles and the hub and
//! daemon read at start.
//!
//! Each file is parsed once, by [`HubConfig::load`] / [`UnitConfig::load`], into a validated
//! struct: relative paths are resolved against the file's folder (so every path in the struct
//! is absolute), unknown keys are errors, sections of tuning knobs have defaults, and every
//! error names the file, the key and the problem (`unit/edge.toml: lan.tls: ...`).
//!
//! To add a setting later: add a field to the section struct, give tuning knobs a default in
//! the section's `Default` impl, and check its range in `validate`.

use std::fmt;
use std::path::{Path, PathBuf};

use edge_proto::ids::{CohortSpec, DeviceId, OdsCode, UnitRole};
use serde::{Deserialize, Serialize};

use crate::fsutil::read_limited;
use crate::hostport::{is_dns_name, HostPort};

/// The largest config file accepted.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// A config file could not be used. Displays as `FILE: KEY: PROBLEM`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// The dotted key (`lan.tls`), or the table, or empty when the whole file is at fault.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.problem)
        }
    }
}

impl ConfigError {
    fn new(file: &Path, key: &str, problem: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            key: key.to_owned(),
            problem: problem.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// hub.toml

/// `hub.toml`: everything `edge-hub serve --config hub.toml` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// The file this was loaded from (absolute); empty when built in memory.
    #[serde(skip)]
    pub file: PathBuf,
    /// The hub's name: its certificate's SAN, what units put in `hub.name`.
    pub name: String,
    /// QUIC sync listener (UDP).
    pub listen: HostPort,
    /// Admin API listener (TCP).
    pub admin: HostPort,
    /// Everything the hub writes lives under here.
    pub data_dir: PathBuf,
    /// The fleet inventory (`inventory.json` in the fleet directory), when the hub can see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<PathBuf>,
    /// Certificates, key and revocation list.
    pub tls: HubTls,
    /// Signing and verification keys.
    pub keys: HubKeys,
    /// Sync tuning.
    #[serde(default)]
    pub sync: HubSync,
    /// The feeds that send bundles (`[[feeds]]`): each names its organisation and whether its
    /// bundles are full snapshots. `edge-hub ingest --feed NAME`, `POST /admin/ingest?feed=NAME`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feeds: Vec<HubFeedConfig>,
    /// Where the summaries, change feed and unit records live (`[store]`): the embedded store
    /// in `data_dir` unless it names a PostgreSQL database.
    #[serde(default, skip_serializing_if = "HubStoreConfig::is_embedded_default")]
    pub store: HubStoreConfig,
}

/// Which store backend the hub runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// sled in `data_dir` (one hub).
    #[default]
    Embedded,
    /// A PostgreSQL database (several hubs may share it).
    Postgres,
}

/// `[store]` of `hub.toml`. The database password is never in this file's `url`: it comes from
/// the environment variable `password_env` names, or from `password_file` (first line).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubStoreConfig {
    #[serde(default)]
    pub backend: StoreBackend,
    /// `postgres://user@host:port/dbname[?sslmode=require]`, without a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The environment variable holding the database password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// A file (0600) whose first line is the database password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// PEM root certificates to verify the database server with (TLS is then required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Connections in this hub's pool (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u32>,
}

impl HubStoreConfig {
    fn is_embedded_default(&self) -> bool {
        *self == HubStoreConfig::default()
    }

    /// The database password, from the environment or the file named (`None` when neither is
    /// set). The error names where it looked, never the value.
    pub fn password(&self) -> Result<Option<String>, String> {
        if let Some(var) = &self.password_env {
            return match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(v)),
                _ => Err(format!(
                    "[store] password_env names {var}, which is not set in the environment"
                )),
            };
        }
        if let Some(file) = &self.password_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("[store] password_file {}: {e}", file.display()))?;
            let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
            if line.is_empty() {
                return Err(format!("[store] password_file {} is empty", file.display()));
            }
            return Ok(Some(line.to_owned()));
        }
        Ok(None)
    }
}

/// One `[[feeds]]` entry of `hub.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubFeedConfig {
    /// What operators call the feed (`--feed NAME`).
    pub name: String,
    /// The feed's organisation (ODS code, or `system|value`): items whose bundle names no
    /// organisation of their own are filed under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Every bundle is the source's full record of the patient: items a later bundle no
    /// longer holds are withdrawn.
    #[serde(default)]
    pub snapshot: bool,
}

/// `[tls]` of `hub.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubTls {
    /// Fleet CA bundle (root, then issuing CA), PEM.
    pub ca: PathBuf,
    /// The hub's certificate chain (hub certificate, then issuing CA), PEM.
    pub cert: PathBuf,
    /// The hub's private key, PKCS#8 PEM.
    pub key: PathBuf,
    /// The fleet's revocation list (usually the fleet directory's `crl.pem`, by absolute path,
    /// so revocations are seen without copying).
    pub crl: PathBuf,
    /// How often the hub re-reads the CA, CRL and its own certificate.
    #[serde(default = "default_crl_reload_s")]
    pub crl_reload_s: u64,
}

fn default_crl_reload_s() -> u64 {
    60
}

/// `[keys]` of `hub.toml`.
///
/// The hub holds only the *public* halves of the token keys it verifies with: shift tokens
/// (`token_verify`), operator tokens on the admin API (`operator_verify`) and the signed token
/// deny list (`token_denylist`, verified with `token_verify`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubKeys {
    /// Ed25519 key the hub signs records with (PKCS#8 PEM).
    pub record_signing: PathBuf,
    /// Obsolete: hub bundles written before operator tokens carried the fleet's staff-token
    /// *private* key here, which the hub never used. Still accepted so an old `hub.toml` loads,
    /// and ignored (never checked, never loaded); `edge-provision hub` no longer writes it.
    /// Delete the file it names from old hub bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_signing: Option<PathBuf>,
    /// The fleet's shift-token public key (Ed25519, SPKI PEM): verifies shift tokens and the
    /// token deny list.
    pub token_verify: PathBuf,
    /// The fleet's operator-token public key (Ed25519, SPKI PEM): verifies operator tokens on
    /// the admin API. Optional only so hub bundles written before operator tokens still load;
    /// every bundle `edge-provision hub` writes has it, and without it no operator token can be
    /// verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_verify: Option<PathBuf>,
    /// The fleet's signed token deny list (`token-denylist.cbor`, usually the fleet directory's
    /// own file by absolute path, like `tls.crl`), verified with `token_verify`. Optional for
    /// the same reason as `operator_verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_denylist: Option<PathBuf>,
    /// The fleet's renewal CA certificate (PEM; `renewal-ca.crt`): an intermediate under the
    /// fleet root, EKU clientAuth, path length 0. With `renewal_ca_key`, the hub re-issues a
    /// unit's 7-day certificate over the sync before it expires. Both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_ca_cert: Option<PathBuf>,
    /// The renewal CA's private key (PEM; `renewal-ca.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_ca_key: Option<PathBuf>,
}

/// `[sync]` of `hub.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubSync {
    /// Most records in one sync batch.
    pub batch_records_max: u32,
    /// How long a withdrawal (a record removed from a cohort) is kept in the change feed.
    pub withdrawal_retention_s: u64,
    /// On-demand fetch budget: distinct patients one unit may fetch from the hub in an hour
    /// before the hub alerts (it still answers).
    pub fetch_unit_per_hour: u32,
    /// On-demand fetch budget: distinct patients one staff member (shift token's staff id)
    /// may fetch in an hour, across units, before the hub alerts.
    pub fetch_staff_per_hour: u32,
    /// The hard ceiling, as a multiple of the budgets: past it the hub refuses fetches (and
    /// alerts).
    pub fetch_ceiling_factor: u32,
    /// How often the hub samples every unit's lag, audit backlog and link for the console's
    /// day of history (seconds, 1-3600; one sample per unit per period, kept 26 hours).
    pub history_every_s: u64,
}

impl Default for HubSync {
    fn default() -> Self {
        HubSync {
            batch_records_max: 500,
            withdrawal_retention_s: 30 * 86_400,
            fetch_unit_per_hour: 60,
            fetch_staff_per_hour: 60,
            fetch_ceiling_factor: 10,
            history_every_s: 300,
        }
    }
}

impl HubConfig {
    fn validate_store(&self) -> Result<(), ConfigError> {
        let (f, st) = (&self.file, &self.store);
        match (st.backend, &st.url) {
            (StoreBackend::Postgres, None) => {
                return Err(ConfigError::new(
                    f,
                    "store.url",
                    "backend = \"postgres\" needs the database's url",
                ))
            }
            (StoreBackend::Embedded, Some(_)) => {
                return Err(ConfigError::new(
                    f,
                    "store.url",
                    "a url is for backend = \"postgres\" (the embedded store lives in data_dir)",
                ))
            }
            _ => {}
        }
        if let Some(url) = &st.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::new(
                    f,
                    "store.url",
                    "expected postgres://user@host:port/dbname",
                ));
            }
            // user:password@ — the password belongs in password_env or password_file.
            let auth = url
                .split_once("://")
                .map_or("", |(_, rest)| rest.split(['/', '?']).next().unwrap_or(""));
            if auth
                .rsplit_once('@')
                .is_some_and(|(ui, _)| ui.contains(':'))
            {
                return Err(ConfigError::new(
                    f,
                    "store.url",
                    "holds a password: give it by password_env or password_file instead",
                ));
            }
        }
        if st.password_env.is_some() && st.password_file.is_some() {
            return Err(ConfigError::new(
                f,
                "store.password_env",
                "password_env and password_file: one or the other",
            ));
        }
        if let Some(n) = st.pool_size {
            range(f, "store.pool_size", u64::from(n), 2, 256)?;
        }
        Ok(())
    }

    /// Read, parse, resolve and validate `hub.toml`, and check the files it names exist.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_text(path)?;
        let cfg = Self::parse(&text, path)?;
        cfg.check_files()?;
        Ok(cfg)
    }

    /// Parse and validate `text` as if read from `file` (paths resolve against its folder).
    /// Does not touch the files it names; [`HubConfig::load`] does.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let mut cfg: HubConfig = toml::from_str(text).map_err(|e| toml_error(file, text, &e))?;
        let (file, base) = locate(file)?;
        cfg.file = file;
        for p in [
            &mut cfg.data_dir,
            &mut cfg.tls.ca,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
            &mut cfg.tls.crl,
            &mut cfg.keys.record_signing,
            &mut cfg.keys.token_verify,
        ] {
            *p = base.join(&*p);
        }
        for p in [
            cfg.inventory.as_mut(),
            cfg.keys.token_signing.as_mut(),
            cfg.keys.operator_verify.as_mut(),
            cfg.keys.token_denylist.as_mut(),
            cfg.keys.renewal_ca_cert.as_mut(),
            cfg.keys.renewal_ca_key.as_mut(),
            cfg.store.password_file.as_mut(),
            cfg.store.ca_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            *p = base.join(&*p);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let f = &self.file;
        check_server_name(f, "name", &self.name)?;
        self.validate_store()?;
        range(f, "tls.crl_reload_s", self.tls.crl_reload_s, 1, 86_400)?;
        if self.keys.renewal_ca_cert.is_some() != self.keys.renewal_ca_key.is_some() {
            return Err(ConfigError::new(
                f,
                "keys.renewal_ca_cert",
                "renewal_ca_cert and renewal_ca_key go together (both or neither)",
            ));
        }
        if self.keys.operator_verify.as_ref() == Some(&self.keys.token_verify) {
            return Err(ConfigError::new(
                f,
                "keys.operator_verify",
                "must be the fleet's operator key, not the shift-token key (token_verify)",
            ));
        }
        for (key, p) in [
            ("keys.token_verify", Some(&self.keys.token_verify)),
            ("keys.operator_verify", self.keys.operator_verify.as_ref()),
        ] {
            if let Some(p) = p {
                if Some(p) == self.keys.token_signing.as_ref() || *p == self.keys.record_signing {
                    return Err(ConfigError::new(
                        f,
                        key,
                        "must name a public key (.pub), not a private signing key",
                    ));
                }
            }
        }
        range(
            f,
            "sync.batch_records_max",
            u64::from(self.sync.batch_records_max),
            1,
            10_000,
        )?;
        range(
            f,
            "sync.history_every_s",
            self.sync.history_every_s,
            1,
            3600,
        )?;
        range(
            f,
            "sync.withdrawal_retention_s",
            self.sync.withdrawal_retention_s,
            60,
            10 * 365 * 86_400,
        )?;
        for (i, feed) in self.feeds.iter().enumerate() {
            let key = format!("feeds[{i}]");
            if feed.name.trim().is_empty() || feed.name.len() > 64 {
                return Err(ConfigError::new(
                    f,
                    &key,
                    "name: expected 1 to 64 characters",
                ));
            }
            if self.feeds[..i].iter().any(|g| g.name == feed.name) {
                return Err(ConfigError::new(f, &key, "two feeds with the same name"));
            }
            if let Some(src) = &feed.source {
                edge_proto::ids::SourceId::parse(src)
                    .map_err(|e| ConfigError::new(f, &format!("{key}.source"), e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Check that every file the config names exists.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let f = &self.file;
        exists(f, "tls.ca", &self.tls.ca)?;
        exists(f, "tls.cert", &self.tls.cert)?;
        exists(f, "tls.key", &self.tls.key)?;
        exists(f, "tls.crl", &self.tls.crl)?;
        exists(f, "keys.record_signing", &self.keys.record_signing)?;
        exists(f, "keys.token_verify", &self.keys.token_verify)?;
        if let Some(p) = &self.keys.operator_verify {
            exists(f, "keys.operator_verify", p)?;
        }
        if let Some(p) = &self.keys.token_denylist {
            exists(f, "keys.token_denylist", p)?;
        }
        if let Some(p) = &self.keys.renewal_ca_cert {
            exists(f, "keys.renewal_ca_cert", p)?;
        }
        if let Some(p) = &self.keys.renewal_ca_key {
            exists(f, "keys.renewal_ca_key", p)?;
        }
        Ok(())
    }

    /// Render as TOML (paths as they are held: relative in a bundle being written).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::new(&self.file, "", e.to_string()))
    }

    /// The folder the config file is in.
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }
}

// ---------------------------------------------------------------------------------------------
// edge.toml

/// `edge.toml`: everything `edge-daemon run --config edge.toml` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitConfig {
    /// The file this was loaded from (absolute); empty when built in memory.
    #[serde(skip)]
    pub file: PathBuf,
    /// The unit's fleet device id (also inside its certificate).
    pub device_id: DeviceId,
    /// Vehicle or kiosk.
    pub role: UnitRole,
    /// Radio callsign, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callsign: Option<String>,
    /// The ODS code of the site (ED kiosks: the hospital).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<OdsCode>,
    /// Everything the daemon writes (cache, journal, state) lives under here.
    pub data_dir: PathBuf,
    /// The unit's cohorts as enrolled. Informational: the hub uses the certificate's.
    #[serde(default, with = "cohort_strings")]
    pub cohorts: Vec<CohortSpec>,
    /// The hub to sync with (the first one tried).
    pub hub: HubLink,
    /// Every hub the unit may sync with, in the order it tries them, when it has several (hubs
    /// sharing one PostgreSQL database): the first is `[hub]`. The unit stays with a hub while
    /// it answers and moves to the next when it does not, resuming from its cursor. Empty:
    /// `[hub]` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hubs: Vec<HubLink>,
    /// The LAN API listener for tablets and the kiosk page.
    pub lan: LanConfig,
    /// The unit's fleet certificate and key for the hub link.
    pub tls: UnitTls,
    /// Public keys the unit verifies with.
    pub keys: UnitKeys,
    /// Cache freshness.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Sync tuning.
    #[serde(default)]
    pub sync: SyncConfig,
    /// Audit journal limits.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Supervisor board link.
    #[serde(default)]
    pub supervisor: SupervisorConfig,
}

/// `[hub]` of `edge.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubLink {
    /// Where the hub listens (UDP), `HOST:PORT`.
    pub addr: HostPort,
    /// The name in the hub's certificate (TLS server name), a DNS name or IP address.
    pub name: String,
}

/// `[lan]` of `edge.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanConfig {
    /// Listen address, `HOST:PORT`.
    pub listen: HostPort,
    /// Serve HTTPS (the default). Plain HTTP is only allowed on a loopback address.
    #[serde(default = "yes")]
    pub tls: bool,
    /// The LAN server certificate chain (required when `tls = true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The LAN server private key (required when `tls = true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The unit's LAN DNS name, as its LAN certificate carries it (the device id under the
    /// fleet's LAN domain, e.g. `las-amb-0192.units.kerbside.invalid`): the name tablets must
    /// verify. Informational for the daemon (shown to crews and on `/healthz`); the certificate
    /// is what tablets check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A client must send a request's headers within this many seconds (slow-loris defence).
    #[serde(default = "lan_header_read_timeout_s")]
    pub header_read_timeout_s: u64,
    /// A connection with no bytes either way for this many seconds is closed.
    #[serde(default = "lan_idle_timeout_s")]
    pub idle_timeout_s: u64,
    /// Open LAN connections at most; past it new connections wait to be accepted.
    #[serde(default = "lan_max_connections")]
    pub max_connections: u32,
    /// Requests in flight at most per client address; past it, 429.
    #[serde(default = "lan_max_requests_per_client")]
    pub max_requests_per_client: u32,
    /// Requests without a valid shift token per client address per second (burst 5×); past
    /// it, 429 without a journal write.
    #[serde(default = "lan_unauthenticated_per_s")]
    pub unauthenticated_per_s: u32,
}

impl LanConfig {
    /// A `[lan]` table with the default limits.
    pub fn new(listen: HostPort, tls: bool, cert: Option<PathBuf>, key: Option<PathBuf>) -> Self {
        LanConfig {
            listen,
            tls,
            cert,
            key,
            name: None,
            header_read_timeout_s: lan_header_read_timeout_s(),
            idle_timeout_s: lan_idle_timeout_s(),
            max_connections: lan_max_connections(),
            max_requests_per_client: lan_max_requests_per_client(),
            unauthenticated_per_s: lan_unauthenticated_per_s(),
        }
    }
}

fn lan_header_read_timeout_s() -> u64 {
    10
}
fn lan_idle_timeout_s() -> u64 {
    120
}
fn lan_max_connections() -> u32 {
    256
}
fn lan_max_requests_per_client() -> u32 {
    16
}
fn lan_unauthenticated_per_s() -> u32 {
    5
}

fn yes() -> bool {
    true
}

/// `[tls]` of `edge.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitTls {
    /// Fleet CA bundle (root, then issuing CA), PEM.
    pub ca: PathBuf,
    /// The unit's operational certificate chain (unit certificate, then issuing CA), PEM.
    pub cert: PathBuf,
    /// The unit's private key, PKCS#8 PEM.
    pub key: PathBuf,
}

/// `[keys]` of `edge.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitKeys {
    /// The hub's record-signing public key (Ed25519, SPKI PEM).
    pub record_verify: PathBuf,
    /// The fleet's shift-token public key (Ed25519, SPKI PEM).
    pub token_verify: PathBuf,
}

/// `[cache]` of `edge.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// After this long without a successful sync, records are shown as stale.
    pub stale_after_s: u64,
    /// How long a record fetched on demand (outside the cohort) is kept.
    pub on_demand_ttl_s: u64,
    /// After this long offline, the cache stops serving clinical content.
    pub offline_limit_s: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            stale_after_s: 86_400,
            on_demand_ttl_s: 259_200,
            offline_limit_s: 1_209_600,
        }
    }
}

/// `[sync]` of `edge.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// QUIC keep-alive while connected and idle: as often as a carrier NAT needs (15 s), not
    /// more — an idle link costs one PING and one ACK per interval. A local network change
    /// sends a PING at once, so the hub learns a new address without waiting for this. The
    /// idle timeout is twice this plus 5 s (one lost PING does not end the connection).
    pub keepalive_interval_ms: u64,
    /// First reconnect delay after a drop.
    pub reconnect_min_ms: u64,
    /// Longest delay between connection attempts the hub did not answer (exponential back-off
    /// cap; the link is presumed down, so attempts stay frequent enough to use a returning
    /// link within about two seconds).
    pub reconnect_max_ms: u64,
    /// Longest delay between attempts the hub answered with a refusal (TLS failure, unknown or
    /// revoked unit, protocol version): retrying fast would not help.
    pub reconnect_refused_max_ms: u64,
    /// How long after losing the hub the unit keeps trying about once a second; after that
    /// (a unit parked out of coverage) the back-off cap becomes `reconnect_slow_max_ms`, and a
    /// local network change (interface, address, route) brings an attempt at once.
    pub reconnect_fast_s: u64,
    /// Back-off cap for unanswered attempts after `reconnect_fast_s` without the hub.
    pub reconnect_slow_max_ms: u64,
    /// How long one connection attempt waits for the hub's answer before a fresh attempt.
    pub connect_attempt_ms: u64,
    /// With work outstanding (catching up, audit upload awaiting its acknowledgement, a fetch
    /// waiting), nothing from the hub for this long closes the connection and reconnects.
    pub stall_timeout_ms: u64,
    /// How long a LAN lookup may wait for an on-demand fetch from the hub.
    pub fetch_budget_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            keepalive_interval_ms: 15_000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 200,
            reconnect_refused_max_ms: 60_000,
            reconnect_fast_s: 150,
            reconnect_slow_max_ms: 60_000,
            connect_attempt_ms: 600,
            stall_timeout_ms: 2_000,
            fetch_budget_ms: 1_500,
        }
    }
}

/// `[audit]` of `edge.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Most disk the audit journal may use.
    pub disk_budget_bytes: u64,
    /// How long acknowledged (uploaded) audit segments are kept locally.
    pub retention_s: u64,
    /// Size at which the journal starts a new segment file (the unit of pruning).
    pub segment_bytes: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            disk_budget_bytes: 256 * 1024 * 1024,
            retention_s: 90 * 86_400,
            segment_bytes: 4 * 1024 * 1024,
        }
    }
}

/// How the daemon talks to the supervisor board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SupervisorMode {
    /// No supervisor (kiosks, development).
    #[default]
    None,
    /// The simulated board, in process.
    Sim,
    /// The real board on a serial device.
    Serial,
}

/// `[supervisor]` of `edge.toml`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    /// `none`, `sim` or `serial`.
    pub mode: SupervisorMode,
    /// The serial device (required for `serial`), e.g. `/dev/ttyS1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<PathBuf>,
}

/// The most hubs a unit lists.
pub const MAX_HUBS: usize = 8;

impl UnitConfig {
    /// The hubs the unit syncs with, in the order it tries them: `hubs`, or `[hub]` alone.
    pub fn hub_links(&self) -> Vec<HubLink> {
        if self.hubs.is_empty() {
            vec![self.hub.clone()]
        } else {
            self.hubs.clone()
        }
    }

    /// Read, parse, resolve and validate `edge.toml`, and check the files it names exist.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_text(path)?;
        let cfg = Self::parse(&text, path)?;
        cfg.check_files()?;
        Ok(cfg)
    }

    /// Parse and validate `text` as if read from `file` (paths resolve against its folder).
    /// Does not touch the files it names; [`UnitConfig::load`] does.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let mut cfg: UnitConfig = toml::from_str(text).map_err(|e| toml_error(file, text, &e))?;
        let (file, base) = locate(file)?;
        cfg.file = file;
        for p in [
            &mut cfg.data_dir,
            &mut cfg.tls.ca,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
            &mut cfg.keys.record_verify,
            &mut cfg.keys.token_verify,
        ] {
            *p = base.join(&*p);
        }
        for p in [cfg.lan.cert.as_mut(), cfg.lan.key.as_mut()]
            .into_iter()
            .flatten()
        {
            *p = base.join(&*p);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let f = &self.file;
        if let Some(c) = &self.callsign {
            if c.trim().is_empty() || c.len() > 32 || c.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    f,
                    "callsign",
                    "expected 1 to 32 printable characters",
                ));
            }
        }
        check_server_name(f, "hub.name", &self.hub.name)?;
        if self.hub.addr.port() == 0 {
            return Err(ConfigError::new(f, "hub.addr", "port 0 is not a real port"));
        }
        if self.hubs.len() > MAX_HUBS {
            return Err(ConfigError::new(
                f,
                "hubs",
                format!("at most {MAX_HUBS} hubs, got {}", self.hubs.len()),
            ));
        }
        if let Some(first) = self.hubs.first() {
            if *first != self.hub {
                return Err(ConfigError::new(
                    f,
                    "hubs",
                    "the first entry must be [hub] (the hub tried first)",
                ));
            }
        }
        for (i, h) in self.hubs.iter().enumerate() {
            check_server_name(f, &format!("hubs[{i}].name"), &h.name)?;
            if h.addr.port() == 0 {
                return Err(ConfigError::new(
                    f,
                    &format!("hubs[{i}].addr"),
                    "port 0 is not a real port",
                ));
            }
            if self.hubs[..i].contains(h) {
                return Err(ConfigError::new(f, &format!("hubs[{i}]"), "listed twice"));
            }
        }
        if self.lan.tls {
            if self.lan.cert.is_none() || self.lan.key.is_none() {
                return Err(ConfigError::new(
                    f,
                    "lan",
                    "tls = true needs both cert and key",
                ));
            }
        } else if !self.lan.listen.is_loopback() {
            return Err(ConfigError::new(
                f,
                "lan.tls",
                format!(
                    "plain HTTP (tls = false) is only allowed on a loopback address, not {}",
                    self.lan.listen
                ),
            ));
        }
        let l = &self.lan;
        if let Some(n) = &l.name {
            if !is_dns_name(n) {
                return Err(ConfigError::new(
                    f,
                    "lan.name",
                    format!("{n:?} is not a DNS name"),
                ));
            }
        }
        range(
            f,
            "lan.header_read_timeout_s",
            l.header_read_timeout_s,
            1,
            300,
        )?;
        range(f, "lan.idle_timeout_s", l.idle_timeout_s, 1, 86_400)?;
        range(
            f,
            "lan.max_connections",
            u64::from(l.max_connections),
            1,
            65_536,
        )?;
        range(
            f,
            "lan.max_requests_per_client",
            u64::from(l.max_requests_per_client),
            1,
            10_000,
        )?;
        range(
            f,
            "lan.unauthenticated_per_s",
            u64::from(l.unauthenticated_per_s),
            1,
            10_000,
        )?;
        let c = &self.cache;
        range(f, "cache.stale_after_s", c.stale_after_s, 1, 365 * 86_400)?;
        range(
            f,
            "cache.on_demand_ttl_s",
            c.on_demand_ttl_s,
            1,
            365 * 86_400,
        )?;
        range(
            f,
            "cache.offline_limit_s",
            c.offline_limit_s,
            1,
            365 * 86_400,
        )?;
        let s = &self.sync;
        range(
            f,
            "sync.keepalive_interval_ms",
            s.keepalive_interval_ms,
            100,
            600_000,
        )?;
        range(f, "sync.reconnect_min_ms", s.reconnect_min_ms, 1, 600_000)?;
        range(
            f,
            "sync.reconnect_max_ms",
            s.reconnect_max_ms,
            s.reconnect_min_ms,
            3_600_000,
        )?;
        range(
            f,
            "sync.reconnect_refused_max_ms",
            s.reconnect_refused_max_ms,
            s.reconnect_min_ms,
            3_600_000,
        )?;
        range(f, "sync.reconnect_fast_s", s.reconnect_fast_s, 0, 86_400)?;
        range(
            f,
            "sync.reconnect_slow_max_ms",
            s.reconnect_slow_max_ms,
            s.reconnect_max_ms,
            3_600_000,
        )?;
        range(
            f,
            "sync.connect_attempt_ms",
            s.connect_attempt_ms,
            200,
            120_000,
        )?;
        range(f, "sync.stall_timeout_ms", s.stall_timeout_ms, 500, 600_000)?;
        range(f, "sync.fetch_budget_ms", s.fetch_budget_ms, 1, 60_000)?;
        range(
            f,
            "audit.disk_budget_bytes",
            self.audit.disk_budget_bytes,
            1 << 20,
            1 << 40,
        )?;
        range(
            f,
            "audit.retention_s",
            self.audit.retention_s,
            60,
            10 * 365 * 86_400,
        )?;
        // At least four segments fit in the budget, so that pruning acknowledged segments
        // (from three quarters of the budget) always has one to free.
        range(
            f,
            "audit.segment_bytes",
            self.audit.segment_bytes,
            64 << 10,
            (self.audit.disk_budget_bytes / 4).clamp(64 << 10, 1 << 30),
        )?;
        if self.supervisor.mode == SupervisorMode::Serial && self.supervisor.device.is_none() {
            return Err(ConfigError::new(
                f,
                "supervisor.device",
                "mode = \"serial\" needs a device",
            ));
        }
        Ok(())
    }

    /// Check that every file the config names exists.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let f = &self.file;
        exists(f, "tls.ca", &self.tls.ca)?;
        exists(f, "tls.cert", &self.tls.cert)?;
        exists(f, "tls.key", &self.tls.key)?;
        exists(f, "keys.record_verify", &self.keys.record_verify)?;
        exists(f, "keys.token_verify", &self.keys.token_verify)?;
        if self.lan.tls {
            if let Some(p) = &self.lan.cert {
                exists(f, "lan.cert", p)?;
            }
            if let Some(p) = &self.lan.key {
                exists(f, "lan.key", p)?;
            }
        }
        Ok(())
    }

    /// Render as TOML (paths as they are held: relative in a bundle being written).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::new(&self.file, "", e.to_string()))
    }

    /// The folder the config file is in.
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }
}

// ---------------------------------------------------------------------------------------------
// helpers

/// Serde for `Vec<CohortSpec>` as a list of spec strings (`["postcode:SE1,SE5", "flagged"]`).
pub(crate) mod cohort_strings {
    use edge_proto::ids::CohortSpec;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[CohortSpec], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|c| c.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<CohortSpec>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| CohortSpec::parse(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    let bytes = read_limited(path, MAX_CONFIG_BYTES)
        .map_err(|e| ConfigError::new(path, "", format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|_| ConfigError::new(path, "", "not UTF-8 text"))
}

/// The absolute file path and the folder relative paths resolve against.
fn locate(file: &Path) -> Result<(PathBuf, PathBuf), ConfigError> {
    let abs = std::path::absolute(file)
        .map_err(|e| ConfigError::new(file, "", format!("cannot make the path absolute: {e}")))?;
    let base = abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    Ok((abs, base))
}

fn exists(file: &Path, key: &str, p: &Path) -> Result<(), ConfigError> {
    if p.is_file() {
        Ok(())
    } else {
        Err(ConfigError::new(
            file,
            key,
            format!("{} does not exist or is not a file", p.display()),
        ))
    }
}

fn range(file: &Path, key: &str, v: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::new(
            file,
            key,
            format!("{v} is outside {min}..={max}"),
        ))
    }
}

fn check_server_name(file: &Path, key: &str, name: &str) -> Result<(), ConfigError> {
    if name.parse::<std::net::IpAddr>().is_ok() || is_dns_name(name) {
        Ok(())
    } else {
        Err(ConfigError::new(
            file,
            key,
            format!("{name:?} is neither a DNS name nor an IP address"),
        ))
    }
}

/// Turn a TOML error into a [`ConfigError`] naming the key (`table.key`) where it points.
fn toml_error(file: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let mut key = String::new();
    let mut problem = e.message().trim().to_owned();
    if let Some(span) = e.span() {
        let start = span.start.min(text.len());
        let line_no = text[..start].matches('\n').count() + 1;
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line = text[line_start..].lines().next().unwrap_or("").trim();
        let table = text[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
        key = if line.starts_with('[') {
            line.trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned()
        } else {
            let k = line
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches('"');
            match (&table, k.is_empty()) {
                (Some(t), false) => format!("{t}.{k}"),
                (None, false) => k.to_owned(),
                (Some(t), true) => t.clone(),
                (None, true) => String::new(),
            }
        };
        problem = format!("{problem} (line {line_no})");
    }
    ConfigError {
        file: file.to_owned(),
        key,
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EDGE: &str = r#"
device_id = "LAS-AMB-0192"
role = "vehicle"
callsign = "K192"
data_dir = "data"
cohorts = ["postcode:SE1,SE5", "flagged"]

[hub]
addr = "127.0.0.1:4433"
name = "127.0.0.1"

[lan]
listen = "127.0.0.1:8443"
cert = "lan.crt"
key = "lan.key"

[tls]
ca = "fleet-ca.crt"
cert = "unit.crt"
key = "unit.key"

[keys]
record_verify = "record-verify.pub"
token_verify = "token-verify.pub"

[sync]
reconnect_max_ms = 5000
"#;

    fn parse(text: &str) -> Result<UnitConfig, ConfigError> {
        UnitConfig::parse(text, Path::new("/b/unit/edge.toml"))
    }

    #[test]
    fn edge_resolves_paths_and_fills_defaults() {
        let c = parse(EDGE).unwrap();
        assert_eq!(c.tls.cert, Path::new("/b/unit/unit.crt"));
        assert_eq!(c.data_dir, Path::new("/b/unit/data"));
        assert_eq!(c.lan.cert.as_deref(), Some(Path::new("/b/unit/lan.crt")));
        assert!(c.lan.tls);
        assert_eq!(c.sync.reconnect_max_ms, 5000);
        assert_eq!(c.sync.keepalive_interval_ms, 15_000);
        assert_eq!(c.sync.stall_timeout_ms, 2_000);
        assert_eq!(c.cache, CacheConfig::default());
        assert_eq!(c.cohorts.len(), 2);
        assert_eq!(c.supervisor.mode, SupervisorMode::None);
        // Round trip through TOML.
        let again =
            UnitConfig::parse(&c.to_toml().unwrap(), Path::new("/b/unit/edge.toml")).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn edge_lists_several_hubs_first_hub_first() {
        assert_eq!(parse(EDGE).unwrap().hub_links().len(), 1, "[hub] alone");
        let two = EDGE.replace(
            "cohorts = [",
            "hubs = [{ addr = \"127.0.0.1:4433\", name = \"127.0.0.1\" }, { addr = \"10.0.2.10:4433\", name = \"hub-b.example\" }]\ncohorts = [",
        );
        let c = parse(&two).unwrap();
        let links = c.hub_links();
        assert_eq!(links.len(), 2);
        assert_eq!(links[0], c.hub);
        assert_eq!(links[1].name, "hub-b.example");
        let again =
            UnitConfig::parse(&c.to_toml().unwrap(), Path::new("/b/unit/edge.toml")).unwrap();
        assert_eq!(again, c, "round trip");
        let wrong_first = two.replacen("127.0.0.1:4433\", name", "10.0.9.9:4433\", name", 1);
        let e = parse(&wrong_first).unwrap_err();
        assert!(e.to_string().contains("first entry must be [hub]"), "{e}");
        let twice = two.replace(
            "10.0.2.10:4433\", name = \"hub-b.example",
            "127.0.0.1:4433\", name = \"127.0.0.1",
        );
        let e = parse(&twice).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let bad_name = two.replace("hub-b.example", "not a name!");
        assert!(parse(&bad_name)
            .unwrap_err()
            .to_string()
            .contains("hubs[1].name"));
    }

    #[test]
    fn edge_errors_name_file_key_and_problem() {
        let cases = [
            (
                EDGE.replace("role = \"vehicle\"", "role = \"submarine\""),
                "role",
                "submarine",
            ),
            (
                EDGE.replace("[sync]", "[sync]\nkeepalive_ms = 1"),
                "sync.keepalive_ms",
                "unknown field",
            ),
            (
                EDGE.replace("reconnect_max_ms = 5000", "reconnect_max_ms = 1"),
                "sync.reconnect_max_ms",
                "outside",
            ),
            (
                EDGE.replace("addr = \"127.0.0.1:4433\"", "addr = \"nowhere\""),
                "hub.addr",
                "HOST:PORT",
            ),
            (
                EDGE.replace("addr = \"127.0.0.1:4433\"\n", ""),
                "hub",
                "missing field `addr`",
            ),
            (
                EDGE.replace(
                    "listen = \"127.0.0.1:8443\"\ncert = \"lan.crt\"",
                    "listen = \"0.0.0.0:8443\"\ntls = false",
                ),
                "lan.tls",
                "loopback",
            ),
            (
                EDGE.replace("cohorts = [", "cohorts = [\"everyone\", "),
                "cohorts",
                "unknown kind",
            ),
            (
                EDGE.replace("callsign = \"K192\"", "site = \"X\""),
                "site",
                "ODS",
            ),
        ];
        for (text, key, problem) in cases {
            let e = parse(&text).unwrap_err();
            assert_eq!(e.file, Path::new("/b/unit/edge.toml"));
            assert_eq!(e.key, key, "{e}");
            assert!(e.to_string().contains(problem), "{e}");
        }
        let named = EDGE.replace(
            "key = \"lan.key\"",
            "key = \"lan.key\"\nname = \"las-amb-0192.units.kerbside.invalid\"",
        );
        assert_eq!(
            parse(&named).unwrap().lan.name.as_deref(),
            Some("las-amb-0192.units.kerbside.invalid")
        );
        let e = parse(&named.replace("las-amb-0192.units", "bad name")).unwrap_err();
        assert_eq!(e.key, "lan.name");
        // Plain HTTP on loopback is allowed.
        let plain = EDGE.replace("cert = \"lan.crt\"\nkey = \"lan.key\"", "tls = false");
        assert!(!parse(&plain).unwrap().lan.tls);
    }

    #[test]
    fn load_checks_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("edge.toml");
        std::fs::write(&p, EDGE).unwrap();
        let e = UnitConfig::load(&p).unwrap_err();
        assert_eq!(e.key, "tls.ca");
        assert!(e.problem.contains("does not exist"), "{e}");
        let e = UnitConfig::load(&d.path().join("missing.toml")).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn hub_config() {
        let text = r#"
name = "hub.kerbside.example"
listen = "0.0.0.0:4433"
admin = "127.0.0.1:9443"
data_dir = "data"
inventory = "/fleet/inventory.json"

[tls]
ca = "fleet-ca.crt"
cert = "hub.crt"
key = "hub.key"
crl = "/fleet/crl.pem"

[keys]
record_signing = "record-signing.key"
token_signing = "token-signing.key"
token_verify = "token-verify.pub"
"#;
        let c = HubConfig::parse(text, Path::new("/h/hub.toml")).unwrap();
        // An old hub.toml: the staff-token private key is accepted and ignored.
        assert_eq!(
            c.keys.token_signing.as_deref(),
            Some(Path::new("/h/token-signing.key"))
        );
        assert_eq!(c.keys.operator_verify, None);
        // A new one: public halves only.
        let new = text.replace(
            "token_signing = \"token-signing.key\"",
            "operator_verify = \"operator-verify.pub\"\ntoken_denylist = \"/fleet/token-denylist.cbor\"",
        );
        let n = HubConfig::parse(&new, Path::new("/h/hub.toml")).unwrap();
        assert_eq!(n.keys.token_signing, None);
        assert_eq!(
            n.keys.operator_verify.as_deref(),
            Some(Path::new("/h/operator-verify.pub"))
        );
        assert_eq!(
            n.keys.token_denylist.as_deref(),
            Some(Path::new("/fleet/token-denylist.cbor"))
        );
        assert!(!n.to_toml().unwrap().contains("token_signing"));
        let e = HubConfig::parse(
            &new.replace("operator-verify.pub", "token-verify.pub"),
            Path::new("/h/hub.toml"),
        )
        .unwrap_err();
        assert_eq!(e.key, "keys.operator_verify");
        let e = HubConfig::parse(
            &new.replace("operator-verify.pub", "record-signing.key"),
            Path::new("/h/hub.toml"),
        )
        .unwrap_err();
        assert_eq!(e.key, "keys.operator_verify");
        assert_eq!(c.tls.crl, Path::new("/fleet/crl.pem"));
        assert_eq!(c.tls.cert, Path::new("/h/hub.crt"));
        assert_eq!(c.sync, HubSync::default());
        assert_eq!(c.tls.crl_reload_s, 60);
        let e = HubConfig::parse(&text.replace("[sync]", ""), Path::new("/h/hub.toml"));
        assert!(e.is_ok());
        let e = HubConfig::parse(
            &format!("{text}\n[sync]\nbatch_records_max = 0\n"),
            Path::new("/h/hub.toml"),
        )
        .unwrap_err();
        assert_eq!(e.key, "sync.batch_records_max");
        let e = HubConfig::parse(
            &text.replace("name = \"hub.kerbside.example\"", "name = \"a b\""),
            Path::new("/h/hub.toml"),
        )
        .unwrap_err();
        assert_eq!(e.key, "name");
    }

    #[test]
    fn hub_store_section() {
        let base = r#"
name = "hub.kerbside.example"
listen = "0.0.0.0:4433"
admin = "127.0.0.1:9443"
data_dir = "data"

[tls]
ca = "fleet-ca.crt"
cert = "hub.crt"
key = "hub.key"
crl = "/fleet/crl.pem"

[keys]
record_signing = "record-signing.key"
token_verify = "token-verify.pub"
"#;
        let p = Path::new("/h/hub.toml");
        let c = HubConfig::parse(base, p).unwrap();
        assert_eq!(c.store.backend, StoreBackend::Embedded);
        assert!(
            !c.to_toml().unwrap().contains("[store]"),
            "the default is not written"
        );
        let pg = format!(
            "{base}\n[store]\nbackend = \"postgres\"\nurl = \"postgres://kerbside@db.example:5432/kerbside\"\npassword_file = \"db.pass\"\n"
        );
        let c = HubConfig::parse(&pg, p).unwrap();
        assert_eq!(c.store.backend, StoreBackend::Postgres);
        assert_eq!(
            c.store.password_file.as_deref(),
            Some(Path::new("/h/db.pass"))
        );
        let back = HubConfig::parse(&c.to_toml().unwrap(), p).unwrap();
        assert_eq!(back.store, c.store);
        for (bad, key) in [
            (
                "url = \"postgres://kerbside@db.example:5432/kerbside\"",
                "store.url",
            ),
            (
                "url = \"postgres://kerbside:s3cret@db.example:5432/kerbside\"",
                "store.url",
            ),
            ("url = \"mysql://db.example/kerbside\"", "store.url"),
            (
                "url = \"postgres://kerbside@db.example:5432/kerbside\"\npassword_env = \"PGPASS\"",
                "store.password_env",
            ),
            (
                "url = \"postgres://k@d/k\"\npool_size = 1",
                "store.pool_size",
            ),
        ] {
            let text = pg.replace(
                "url = \"postgres://kerbside@db.example:5432/kerbside\"",
                bad,
            );
            let text = if key == "store.url" && !bad.contains("s3cret") && !bad.contains("mysql") {
                // a url with the embedded backend
                text.replace("backend = \"postgres\"", "backend = \"embedded\"")
            } else {
                text
            };
            let e = HubConfig::parse(&text, p).unwrap_err();
            assert_eq!(e.key, key, "{bad}: {e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
        let e =
            HubConfig::parse(&format!("{base}\n[store]\nbackend = \"postgres\"\n"), p).unwrap_err();
        assert_eq!(e.key, "store.url");
        // The password: from the environment or the file, never from the url.
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("db.pass");
        std::fs::write(&f, "pw-from-file\nignored\n").unwrap();
        let st = HubStoreConfig {
            password_file: Some(f),
            ..c.store.clone()
        };
        assert_eq!(st.password().unwrap().as_deref(), Some("pw-from-file"));
        let st = HubStoreConfig {
            password_file: None,
            password_env: Some("KERBSIDE_TEST_SURELY_UNSET_VAR".into()),
            ..c.store.clone()
        };
        let e = st.password().unwrap_err();
        assert!(e.contains("KERBSIDE_TEST_SURELY_UNSET_VAR"), "{e}");
    }
}
