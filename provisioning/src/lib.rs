//! `edge-provision`: Kerbside's fleet PKI, enrolment and bundle configuration.
//!
//! The London Ambulance Service's fleet engineers run the `edge-provision` binary in the
//! workshop; the hub and the unit daemon use this library to read the bundles it writes.
//!
//! - [`fleet`]: the fleet directory (root and issuing CA, staff-token and record-signing keys,
//!   revocation list, inventory) and every operation on it: hub bundles, enrolment, renewal,
//!   revocation, shift tokens.
//! - [`config`]: `hub.toml` and `edge.toml`, parsed once into validated structs.
//! - [`tls`]: rustls configurations built from a bundle (mutual TLS over QUIC with the fleet CA
//!   and its CRL, reloadable without a restart), and the unit identity carried in a certificate.
//! - [`keys`]: loaders for the key, certificate and CRL files a bundle holds.
//! - [`identity`]: how a unit's identity and cohorts are written into its certificate.
//! - [`hostport`]: `HOST:PORT` addresses as they appear on the command line and in configs.
//!
//! What is deliberately absent: no network I/O (the daemon and hub own sockets), no unit
//! private key ever stays in the fleet directory, and nothing here panics on a file's contents.

pub mod config;
pub mod fleet;
pub mod fsutil;
pub mod hostport;
pub mod identity;
pub mod inventory;
pub mod keys;
pub mod tls;

pub use config::{ConfigError, HubConfig, UnitConfig};
pub use fleet::{Fleet, FleetError};
pub use hostport::HostPort;
pub use identity::UnitIdentity;
pub use keys::{load_ed25519_public, load_ed25519_signing};
