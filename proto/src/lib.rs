//! `edge-proto`: Kerbside's shared vocabulary.
//!
//! The NHS number, the critical-summary model, the FHIR R4 mapping at the edges, the CBOR wire
//! and storage encoding, audit events, shift tokens and the sync protocol as sans-IO state
//! machines. This crate does no I/O and never reads a clock: time arrives as an argument
//! ([`time::UnixMillis`]), so everything here is deterministic and testable in simulation.

pub mod assemble;
pub mod audit;
pub mod cbor;
pub mod codes;
pub mod denylist;
pub mod fhir;
pub mod ids;
pub mod model;
pub mod nhs;
pub mod sync;
pub mod time;
pub mod token;
pub mod view;

pub use nhs::NhsNumber;
