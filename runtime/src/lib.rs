//! `edge-runtime`: what the hub and the unit daemon need at run time from the bundles the fleet
//! engineers' `edge-provision` writes. No certificate authority lives here: issuing and revoking
//! are `edge-provision`'s, and renewing over the sync the hub's (its renewal CA); [`issue`]
//! (feature `issue`) only says what a unit certificate contains, so both issuers write the same.
//!
//! - [`clock`]: the one clock abstraction (system, and manual for virtual-time tests).
//! - [`config`]: `hub.toml` and `edge.toml`, parsed once into validated structs.
//! - [`tls`]: rustls configurations built from a bundle (mutual TLS over QUIC with the fleet CA
//!   and its CRL, reloadable without a restart), and the unit identity carried in a certificate.
//! - [`keys`]: loaders for the key, certificate and CRL files a bundle holds.
//! - [`identity`]: how a unit's identity and cohorts are written into its certificate.
//! - [`inventory`]: the fleet inventory file (every unit the CA has enrolled), read by the hub.
//! - [`hostport`]: `HOST:PORT` addresses as they appear on the command line and in configs.
//! - [`issue`]: the parameters of unit and renewal-CA certificates (feature `issue`).
//! - [`fsutil`]: bounded reads and atomic, durable writes of small files.
//!
//! What is deliberately absent: no network I/O (the daemon and hub own sockets), and nothing
//! here panics on a file's contents.

pub mod clock;
pub mod config;
pub mod fsutil;
pub mod hostport;
pub mod identity;
pub mod inventory;
#[cfg(feature = "issue")]
pub mod issue;
pub mod keys;
pub mod tls;

pub use config::{ConfigError, HubConfig, UnitConfig};
pub use hostport::HostPort;
pub use identity::UnitIdentity;
pub use keys::{load_ed25519_public, load_ed25519_signing};
