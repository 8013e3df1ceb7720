//! `edge-provision`: Kerbside's fleet certificate authority and enrolment.
//!
//! The London Ambulance Service's fleet engineers run the `edge-provision` binary in the
//! workshop. [`fleet`] is the fleet directory (root and issuing CA, staff-token and
//! record-signing keys, revocation list, inventory) and every operation on it: hub bundles,
//! enrolment, renewal, revocation, shift tokens.
//!
//! The runtime side — reading the bundles it writes (configs, TLS, keys, identity, inventory) —
//! is the `edge-runtime` crate, which the hub and the unit daemon link instead of this one; its
//! modules are re-exported here so the CA and its tests use one set of types.
//!
//! What is deliberately absent: no network I/O, no unit private key ever stays in the fleet
//! directory, and nothing here panics on a file's contents.

pub mod fleet;

pub use edge_runtime::{config, fsutil, hostport, identity, inventory, issue, keys, tls};
pub use edge_runtime::{
    load_ed25519_public, load_ed25519_signing, ConfigError, HostPort, HubConfig, UnitConfig,
    UnitIdentity,
};
pub use fleet::{Fleet, FleetError};
