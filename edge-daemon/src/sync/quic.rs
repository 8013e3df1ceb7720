//! QUIC plumbing shared by the sync driver and the audit uploader: resolving the hub's
//! address, telling a refusal from silence, and putting a connection error in words.

use std::net::SocketAddr;

use anyhow::Context;
use edge_runtime::config::HubLink;

/// True when the hub answered and refused, rather than not answering.
pub(super) fn is_refusal(e: &quinn::ConnectionError) -> bool {
    matches!(
        e,
        quinn::ConnectionError::ConnectionClosed(_)
            | quinn::ConnectionError::ApplicationClosed(_)
            | quinn::ConnectionError::VersionMismatch
            | quinn::ConnectionError::TransportError(_)
    )
}

/// The address of one hub (`[hub]` or an entry of `hubs`), resolved now.
pub(super) fn resolve(hub: &HubLink) -> anyhow::Result<SocketAddr> {
    if let Some(a) = hub.addr.socket_addr() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    let text = format!("{}:{}", hub.addr.host(), hub.addr.port());
    text.to_socket_addrs()
        .with_context(|| format!("cannot resolve the hub address {text}"))?
        .next()
        .with_context(|| format!("no address for {text}"))
}

/// A connection error in words (TLS alerts explained).
pub(super) fn explain(e: quinn::ConnectionError) -> anyhow::Error {
    match &e {
        quinn::ConnectionError::ConnectionClosed(c) => {
            let code = u64::from(c.error_code);
            match edge_runtime::tls::explain_quic_close(code) {
                Some(why) => anyhow::anyhow!("{e}: {why}"),
                None => anyhow::anyhow!("{e}"),
            }
        }
        quinn::ConnectionError::ApplicationClosed(c) => {
            anyhow::anyhow!(
                "the hub closed the connection: {}",
                String::from_utf8_lossy(&c.reason)
            )
        }
        _ => anyhow::anyhow!("{e}"),
    }
}

/// A uniform random u64 from the OS's source (0 if it fails: no jitter).
pub(super) fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0;
    }
    u64::from_le_bytes(b)
}
