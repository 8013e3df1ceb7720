//! rustls configurations built from a bundle, for the hub and the unit daemon.
//!
//! - [`hub_server_config`]: the hub's QUIC sync server. TLS 1.3 only, ALPN [`ALPN_SYNC`]; it
//!   *requires* a client certificate that chains to the fleet CA, is within its validity, is not
//!   on the fleet's revocation list, and carries a Kerbside unit identity. The returned
//!   [`CrlReloader`] re-reads the CA bundle, the CRL and the hub's own certificate and swaps them
//!   in place: the next handshake uses them, established connections are untouched and the
//!   endpoint is never restarted.
//! - [`unit_client_config`]: the unit's side: verifies the hub against the fleet CA, its server
//!   name *and* its hub marker (`kerbside://hub/…`, so a unit's LAN certificate never passes as
//!   the hub), and presents the unit's certificate. Build a new one after a renewal (quinn takes
//!   a client config per connection).
//! - [`lan_client_config`]: what a tablet does towards one unit's LAN API: the fleet CA, the
//!   unit's LAN DNS name as server name, and the LAN marker for that very device
//!   (`kerbside://lan/DEVICE-ID`), so neither the hub's certificate nor another unit's LAN
//!   certificate passes.
//! - [`lan_server_config`]: the unit's LAN HTTPS server for tablets (no client certificates;
//!   staff authenticate with shift tokens). ALPN `h2`, `http/1.1`.
//! - [`peer_identity`]: who a verified client certificate belongs to.
//!
//! Only the `ring` provider is used: every config is built with it explicitly, and
//! [`install_default_provider`] installs it as the process default, so no process panics
//! choosing one.
//!
//! When a handshake is refused, rustls sends a TLS alert; over QUIC the peer sees it as a
//! connection closed with a crypto error code `0x100 + alert`. [`explain_quic_close`] turns that
//! code into a sentence for logs and the fleet dashboard.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use edge_proto::ids::DeviceId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use crate::config::{HubConfig, UnitConfig};
use crate::identity::{server_role, ServerRole};
use crate::keys::{load_certs, load_crls, load_private_key, parse_crls, read, LoadError};

pub use crate::identity::{peer_identity, IdentityError, UnitIdentity};

/// ALPN of the hub ↔ unit sync protocol.
pub const ALPN_SYNC: &[u8] = b"kerbside/1";

/// Why a TLS configuration could not be built or reloaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The CA bundle has no self-signed root to trust.
    #[error("{}: holds no self-signed root certificate to trust", path.display())]
    NoRoot { path: PathBuf },
    /// The revocation list was not signed by any CA in the bundle.
    #[error("{}: the revocation list is not signed by a CA in {}: {why}", crl.display(), ca.display())]
    CrlNotFromFleet {
        crl: PathBuf,
        ca: PathBuf,
        why: String,
    },
    /// rustls refused the material (e.g. a key that does not match its certificate).
    #[error("{}: {source}", what)]
    Rustls { what: String, source: rustls::Error },
    /// The client verifier could not be built.
    #[error("client verifier for {}: {source}", ca.display())]
    Verifier {
        ca: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    /// `lan_server_config` was asked for while `[lan] tls = false`.
    #[error("{}: lan.tls is false, so the LAN server has no TLS configuration", file.display())]
    LanTlsDisabled { file: PathBuf },
}

/// The `ring` crypto provider every config here is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Install `ring` as the process-wide default rustls provider. Idempotent: "already installed"
/// is not an error. Call it first thing in `main` of every binary and test that uses rustls.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// ---------------------------------------------------------------------------------------------
// hub

/// The files the hub's TLS material comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubTlsFiles {
    /// Fleet CA bundle.
    pub ca: PathBuf,
    /// Fleet revocation list.
    pub crl: PathBuf,
    /// The hub's certificate chain.
    pub cert: PathBuf,
    /// The hub's private key.
    pub key: PathBuf,
}

/// What a (re)load found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Certificates the CRL lists.
    pub revoked_serials: usize,
    /// The CRL's number (monotonic; a larger number is a newer list).
    pub crl_number: Option<u64>,
}

/// Builds the hub's server config and lets it reload its CA, CRL and certificate in place.
///
/// Cheap to clone; every clone drives the same server config. Call [`CrlReloader::reload`] on a
/// timer (`[tls] crl_reload_s`) or when told (e.g. an admin API call after a revocation).
#[derive(Debug, Clone)]
pub struct CrlReloader {
    files: Arc<HubTlsFiles>,
    /// The CRL in force when it did not come from `files.crl`: hubs sharing a database take
    /// the fleet's CRL from there ([`CrlReloader::use_crl`]); every later reload keeps it.
    crl_bytes: Arc<RwLock<Option<Arc<[u8]>>>>,
    provider: Arc<CryptoProvider>,
    verifier: Arc<ReloadableClientVerifier>,
    server_cert: Arc<ReloadableServerCert>,
}

impl CrlReloader {
    /// Re-read the CA bundle, CRL and the hub's certificate and key, and use them for every
    /// handshake from now on. On any error nothing changes (the previous material stays in use,
    /// so a half-written or corrupt file never locks the fleet out) and the error says why.
    pub fn reload(&self) -> Result<ReloadSummary, TlsError> {
        let crl = self
            .crl_bytes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let m = HubMaterial::load(&self.files, &self.provider, crl.as_deref())?;
        self.verifier.swap(m.verifier);
        self.server_cert.swap(m.certified);
        Ok(m.summary)
    }

    /// Check a CRL (`bytes`, PEM or DER) against the CA bundle without using it: what
    /// [`CrlReloader::use_crl`] would take, or why not.
    pub fn check_crl(&self, bytes: &[u8]) -> Result<ReloadSummary, TlsError> {
        let ca_certs = load_certs(&self.files.ca)?;
        let crls = parse_crls(bytes, &self.files.crl)?;
        check_crls(&self.files, &ca_certs, &crls)
    }

    /// Use `bytes` as the fleet CRL from now on, in place of the file (and on every later
    /// [`CrlReloader::reload`]). On any error nothing changes.
    pub fn use_crl(&self, bytes: &[u8]) -> Result<ReloadSummary, TlsError> {
        let m = HubMaterial::load(&self.files, &self.provider, Some(bytes))?;
        *self.crl_bytes.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::from(bytes));
        self.verifier.swap(m.verifier);
        self.server_cert.swap(m.certified);
        Ok(m.summary)
    }

    /// The CRL in force, as bytes: the one given to [`CrlReloader::use_crl`], else the file's.
    pub fn crl_in_force(&self) -> Result<Arc<[u8]>, TlsError> {
        if let Some(b) = self
            .crl_bytes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(b);
        }
        Ok(Arc::from(read(&self.files.crl)?))
    }

    /// The CRL file this reloader reads.
    pub fn crl_path(&self) -> &Path {
        &self.files.crl
    }

    /// The files this reloader reads.
    pub fn files(&self) -> &HubTlsFiles {
        &self.files
    }

    /// The live client verifier (for another listener that should apply the same fleet rules).
    pub fn client_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.verifier.clone()
    }
}

/// The hub's QUIC sync server config: mutual TLS against the fleet CA and CRL, TLS 1.3, ALPN
/// [`ALPN_SYNC`], and a [`CrlReloader`] to refresh it without a restart. Wrap it for quinn with
/// `quinn::crypto::rustls::QuicServerConfig::try_from(config)`.
pub fn hub_server_config(cfg: &HubConfig) -> Result<(Arc<ServerConfig>, CrlReloader), TlsError> {
    hub_server_config_from(HubTlsFiles {
        ca: cfg.tls.ca.clone(),
        crl: cfg.tls.crl.clone(),
        cert: cfg.tls.cert.clone(),
        key: cfg.tls.key.clone(),
    })
}

/// [`hub_server_config`] from explicit file paths.
pub fn hub_server_config_from(
    files: HubTlsFiles,
) -> Result<(Arc<ServerConfig>, CrlReloader), TlsError> {
    let provider = provider();
    let m = HubMaterial::load(&files, &provider, None)?;
    let verifier = Arc::new(ReloadableClientVerifier {
        inner: RwLock::new(m.verifier),
    });
    let server_cert = Arc::new(ReloadableServerCert {
        current: RwLock::new(m.certified),
    });
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            what: "TLS 1.3 with ring".into(),
            source,
        })?
        .with_client_cert_verifier(verifier.clone())
        .with_cert_resolver(server_cert.clone());
    config.alpn_protocols = vec![ALPN_SYNC.to_vec()];
    let reloader = CrlReloader {
        files: Arc::new(files),
        crl_bytes: Arc::new(RwLock::new(None)),
        provider,
        verifier,
        server_cert,
    };
    Ok((Arc::new(config), reloader))
}

/// A server config for the hub's admin API (HTTPS with the hub certificate, no client
/// certificates; ALPN `h2`, `http/1.1`).
pub fn hub_admin_server_config(cfg: &HubConfig) -> Result<Arc<ServerConfig>, TlsError> {
    https_server_config(&cfg.tls.cert, &cfg.tls.key)
}

/// Everything loaded from the hub's TLS files, checked for consistency.
struct HubMaterial {
    verifier: Arc<dyn ClientCertVerifier>,
    certified: Arc<CertifiedKey>,
    summary: ReloadSummary,
}

impl HubMaterial {
    /// `crl`: the CRL's bytes when they do not come from `files.crl`.
    fn load(
        files: &HubTlsFiles,
        provider: &Arc<CryptoProvider>,
        crl: Option<&[u8]>,
    ) -> Result<Self, TlsError> {
        let ca_certs = load_certs(&files.ca)?;
        let roots = root_store(&files.ca, &ca_certs)?;
        let crls = match crl {
            Some(b) => parse_crls(b, &files.crl)?,
            None => load_crls(&files.crl)?,
        };
        let summary = check_crls(files, &ca_certs, &crls)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls)
                // The issuing CA signs enrolled units' certificates and the CRL; the root is
                // offline. Certificates the hubs renew are signed by the renewal CA, which
                // publishes no CRL: their status is unknown here, and they are revoked by
                // device (the hub refuses every certificate of a unit the inventory marks
                // revoked, at connect and on every revalidation).
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status()
                .build()
                .map_err(|source| TlsError::Verifier {
                    ca: files.ca.clone(),
                    source,
                })?;
        let chain = load_certs(&files.cert)?;
        let key = load_private_key(&files.key)?;
        let certified =
            CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Rustls {
                what: format!("{} with {}", files.cert.display(), files.key.display()),
                source,
            })?;
        Ok(HubMaterial {
            verifier,
            certified: Arc::new(certified),
            summary,
        })
    }
}

/// Trust the self-signed certificates of a CA bundle (the fleet root); intermediates in the
/// bundle are used to check the CRL, and peers send them in their chains.
fn root_store(path: &Path, certs: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        let Ok((_, x)) = x509_parser::parse_x509_certificate(c.as_ref()) else {
            continue;
        };
        if x.subject() == x.issuer() {
            roots.add(c.clone()).map_err(|source| TlsError::Rustls {
                what: format!("{}: root certificate", path.display()),
                source,
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoot {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// Every CRL must be signed by a CA in the bundle: a CRL from elsewhere (or a corrupt one)
/// would otherwise make webpki refuse every unit.
fn check_crls(
    files: &HubTlsFiles,
    ca_certs: &[CertificateDer<'static>],
    crls: &[CertificateRevocationListDer<'static>],
) -> Result<ReloadSummary, TlsError> {
    let err = |why: String| TlsError::CrlNotFromFleet {
        crl: files.crl.clone(),
        ca: files.ca.clone(),
        why,
    };
    let mut summary = ReloadSummary {
        revoked_serials: 0,
        crl_number: None,
    };
    for der in crls {
        let (_, crl) = x509_parser::parse_x509_crl(der.as_ref()).map_err(|e| err(e.to_string()))?;
        let issuer = ca_certs
            .iter()
            .filter_map(|c| {
                x509_parser::parse_x509_certificate(c.as_ref())
                    .ok()
                    .map(|(_, x)| x)
            })
            .find(|x| x.subject() == crl.issuer())
            .ok_or_else(|| err(format!("no CA named {}", crl.issuer())))?;
        crl.verify_signature(issuer.public_key())
            .map_err(|e| err(format!("bad signature: {e}")))?;
        summary.revoked_serials += crl.iter_revoked_certificates().count();
        summary.crl_number = crl.crl_number().and_then(|n| u64::try_from(n.clone()).ok());
    }
    Ok(summary)
}

/// A client verifier whose inner WebPKI verifier can be swapped at runtime.
#[derive(Debug)]
struct ReloadableClientVerifier {
    inner: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl ReloadableClientVerifier {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn swap(&self, v: Arc<dyn ClientCertVerifier>) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

impl ClientCertVerifier for ReloadableClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; a unit has exactly one certificate to offer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .current()
            .verify_client_cert(end_entity, intermediates, now)?;
        // A fleet certificate without a unit identity (e.g. a server certificate misused)
        // is not a unit.
        peer_identity(end_entity.as_ref()).map_err(|e| {
            tracing::warn!(error = %e, "client certificate carries no usable unit identity");
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// A server certificate that can be swapped at runtime.
#[derive(Debug)]
struct ReloadableServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableServerCert {
    fn swap(&self, c: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = c;
    }
}

impl ResolvesServerCert for ReloadableServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// unit

/// The unit's client config for the hub link: trusts the fleet root, presents the unit's
/// certificate chain, TLS 1.3, ALPN [`ALPN_SYNC`]. Connect with server name `cfg.hub.name`.
/// The hub's certificate must also carry the hub marker (`kerbside://hub/NAME`): a unit's LAN
/// certificate, though from the same CA and perhaps for the same address, is refused.
/// Wrap it for quinn with `quinn::crypto::rustls::QuicClientConfig::try_from(config)`.
pub fn unit_client_config(cfg: &UnitConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let chain = load_certs(&cfg.tls.cert)?;
    let key = load_private_key(&cfg.tls.key)?;
    let what = format!("{} with {}", cfg.tls.cert.display(), cfg.tls.key.display());
    let verifier = marked_verifier(&cfg.tls.ca, Want::Hub)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            what: "TLS 1.3 with ring".into(),
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|source| TlsError::Rustls { what, source })?;
    config.alpn_protocols = vec![ALPN_SYNC.to_vec()];
    Ok(Arc::new(config))
}

/// Check a renewed certificate chain as the hub will: it chains to a root in the CA bundle
/// `ca` (intermediates from `chain` itself), is valid at `now` for client authentication, and
/// names `device`. Returns the identity it carries. Revocation is the hub's to check.
pub fn check_unit_chain(
    ca: &Path,
    chain: &[CertificateDer<'static>],
    device: &DeviceId,
    now: UnixTime,
) -> Result<crate::identity::UnitIdentity, String> {
    let ca_certs = load_certs(ca).map_err(|e| e.to_string())?;
    let roots = root_store(ca, &ca_certs).map_err(|e| e.to_string())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| e.to_string())?;
    let (leaf, rest) = chain.split_first().ok_or("an empty chain")?;
    verifier
        .verify_client_cert(leaf, rest, now)
        .map_err(|e| format!("does not verify against the fleet root: {e}"))?;
    let ident = crate::identity::peer_identity(leaf.as_ref()).map_err(|e| e.to_string())?;
    if &ident.device_id != device {
        return Err(format!(
            "names {} instead of this unit ({device})",
            ident.device_id
        ));
    }
    Ok(ident)
}

/// A client config for one unit's LAN API, as a fleet tablet should build it: trusts the fleet
/// root (`ca`, the bundle's `fleet-ca.crt`), requires the unit's LAN marker for `device`
/// (`kerbside://lan/DEVICE-ID`), no client certificate, TLS 1.2 and 1.3, ALPN `h2`,
/// `http/1.1`. Connect with the unit's LAN DNS name (`identity::lan_dns_name`, also `[lan]
/// name` in its `edge.toml`) as the server name. The hub's certificate and every other unit's
/// LAN certificate are refused.
pub fn lan_client_config(ca: &Path, device: &DeviceId) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = marked_verifier(ca, Want::Lan(device.clone()))?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "TLS with ring".into(),
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Which server marker a [`MarkedServerVerifier`] requires.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Hub,
    Lan(DeviceId),
}

fn marked_verifier(ca: &Path, want: Want) -> Result<Arc<MarkedServerVerifier>, TlsError> {
    let ca_certs = load_certs(ca)?;
    let roots = root_store(ca, &ca_certs)?;
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|source| TlsError::Verifier {
            ca: ca.to_owned(),
            source,
        })?;
    Ok(Arc::new(MarkedServerVerifier { inner, want }))
}

/// The certificate is from the fleet and names the server, but is the wrong kind of server.
#[derive(Debug)]
struct WrongServer(String);

impl std::fmt::Display for WrongServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WrongServer {}

/// WebPKI server verification (chain to the fleet root, validity, server name, serverAuth)
/// plus the Kerbside server marker.
#[derive(Debug)]
struct MarkedServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    want: Want,
}

impl ServerCertVerifier for MarkedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let refuse = |why: String| {
            tracing::warn!(error = %why, "server certificate refused");
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                WrongServer(why),
            ))))
        };
        let role = server_role(end_entity.as_ref()).map_err(|e| refuse(e.to_string()))?;
        match (&self.want, role) {
            (Want::Hub, ServerRole::Hub(_)) => Ok(ok),
            (Want::Lan(d), ServerRole::Lan(got)) if *d == got => Ok(ok),
            (Want::Hub, ServerRole::Lan(got)) => Err(refuse(format!(
                "not the hub: this is unit {got}'s LAN certificate"
            ))),
            (Want::Lan(d), ServerRole::Lan(got)) => Err(refuse(format!(
                "not unit {d}: this is unit {got}'s LAN certificate"
            ))),
            (Want::Lan(d), ServerRole::Hub(name)) => Err(refuse(format!(
                "not unit {d}: this is the hub's certificate ({name})"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The unit's LAN HTTPS server config (no client certificates; ALPN `h2`, `http/1.1`; TLS 1.2
/// and 1.3 for older tablets). Fails when `[lan] tls = false`.
pub fn lan_server_config(cfg: &UnitConfig) -> Result<Arc<ServerConfig>, TlsError> {
    match (&cfg.lan.cert, &cfg.lan.key) {
        (Some(cert), Some(key)) if cfg.lan.tls => https_server_config(cert, key),
        _ => Err(TlsError::LanTlsDisabled {
            file: cfg.file.clone(),
        }),
    }
}

fn https_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs(cert)?;
    let key_der = load_private_key(key)?;
    let what = format!("{} with {}", cert.display(), key.display());
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "TLS with ring".into(),
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|source| TlsError::Rustls { what, source })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------------------------------------
// diagnostics

/// A sentence for a TLS alert the peer sent (or we sent), for logs and dashboards.
pub fn explain_alert(alert: u8) -> &'static str {
    match alert {
        40 => "handshake failure: no common TLS parameters",
        42 => "bad certificate: the certificate is malformed",
        43 => "unsupported certificate: not issued for this purpose (client vs server)",
        44 => "certificate revoked: the fleet revoked this unit; re-enrol it (edge-provision enrol --replace)",
        45 => "certificate expired or not yet valid: check the unit's clock, then renew (edge-provision renew)",
        46 => "certificate unknown: the certificate was refused",
        48 => "unknown CA: the certificate was not issued by this fleet's CA (wrong fleet bundle?)",
        49 => "access denied: the certificate carries no Kerbside unit identity",
        51 => "decrypt error: a signature in the handshake did not verify",
        116 => "certificate required: the unit presented no client certificate",
        120 => "no application protocol: the peer does not speak kerbside/1",
        _ => "TLS handshake refused",
    }
}

/// Explain a QUIC connection-close error code: crypto errors are `0x100 + TLS alert`.
/// Returns `None` for codes that are not TLS alerts.
pub fn explain_quic_close(code: u64) -> Option<&'static str> {
    if (0x100..=0x1ff).contains(&code) {
        u8::try_from(code - 0x100).ok().map(explain_alert)
    } else {
        None
    }
}
