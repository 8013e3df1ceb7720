//! The unit's side of certificate renewal over the sync.
//!
//! Operational certificates last 7 days. Once two thirds of its certificate's lifetime has
//! passed (`edge_runtime`'s `renew_due_at`), the unit asks the hub on its live connection
//! (`ToHub::Renew`); the hub re-issues the certificate it was shown with the fleet's renewal
//! CA. The unit accepts the answer only when it chains to the fleet root in its own CA bundle,
//! is valid now for client authentication, names this unit, and carries this unit's public
//! key; it then replaces `unit.crt` atomically (the key never changes, so the pair stays
//! consistent whatever the moment of a crash) and presents the new chain from its next
//! connection. A refusal or a bad answer leaves the certificate as it was; the unit asks again
//! on its next connection.

use std::path::Path;

use anyhow::Context as _;
use edge_proto::ids::DeviceId;
use edge_proto::sync::Bytes;
use edge_proto::time::UnixMillis;
use edge_runtime::config::UnitConfig;
use rustls::pki_types::{CertificateDer, UnixTime};

/// What the unit knows of the certificate it presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertState {
    pub not_before: UnixMillis,
    pub not_after: UnixMillis,
    /// SubjectPublicKeyInfo, DER.
    spki: Vec<u8>,
}

impl CertState {
    /// Read the end-entity certificate of a chain file.
    pub fn read(path: &Path) -> anyhow::Result<CertState> {
        let chain = edge_runtime::keys::load_certs(path)?;
        let leaf = chain.first().context("no certificate")?;
        CertState::of(leaf.as_ref())
    }

    fn of(der: &[u8]) -> anyhow::Result<CertState> {
        let (_, c) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
        Ok(CertState {
            not_before: UnixMillis(c.validity().not_before.timestamp() * 1000),
            not_after: UnixMillis(c.validity().not_after.timestamp() * 1000),
            spki: c.public_key().raw.to_vec(),
        })
    }

    /// When this certificate should be renewed (two thirds through its lifetime).
    pub fn due_at(&self) -> UnixMillis {
        edge_runtime::identity::renew_due_at(self.not_before, self.not_after)
    }

    /// Due for renewal at `now`.
    pub fn due(&self, now: UnixMillis) -> bool {
        now.0 >= self.due_at().0
    }
}

/// Check a renewed chain from the hub against `current` and this unit's bundle, and when it
/// passes, write it over `cfg.tls.cert` (atomically, 0600). Returns the new certificate's state.
pub fn take(
    cfg: &UnitConfig,
    device: &DeviceId,
    current: &CertState,
    chain: &[Bytes],
    now: UnixMillis,
) -> anyhow::Result<CertState> {
    let ders: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|b| CertificateDer::from(b.as_slice().to_vec()))
        .collect();
    let secs = u64::try_from(now.0 / 1000).unwrap_or(0);
    edge_runtime::tls::check_unit_chain(
        &cfg.tls.ca,
        &ders,
        device,
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)),
    )
    .map_err(|e| anyhow::anyhow!("the renewed certificate {e}"))?;
    let leaf = ders.first().context("an empty chain")?;
    let fresh = CertState::of(leaf.as_ref())?;
    anyhow::ensure!(
        fresh.spki == current.spki,
        "the renewed certificate is not for this unit's key"
    );
    anyhow::ensure!(
        fresh.not_after.0 > current.not_after.0,
        "the renewed certificate expires no later than the current one"
    );
    let pem: String = ders
        .iter()
        .map(|d| edge_runtime::keys::pem_encode("CERTIFICATE", d.as_ref()))
        .collect();
    edge_runtime::fsutil::write_atomic(
        &cfg.tls.cert,
        pem.as_bytes(),
        edge_runtime::fsutil::MODE_PRIVATE,
    )
    .with_context(|| format!("cannot write {}", cfg.tls.cert.display()))?;
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_two_thirds_through() {
        let c = CertState {
            not_before: UnixMillis(0),
            not_after: UnixMillis(3_000),
            spki: Vec::new(),
        };
        assert_eq!(c.due_at(), UnixMillis(2_000));
        assert!(!c.due(UnixMillis(1_999)));
        assert!(c.due(UnixMillis(2_000)));
    }
}
