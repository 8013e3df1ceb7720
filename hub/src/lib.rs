//! `edge-hub`: the upstream hub of the Kerbside edge cache.
//!
//! The hub ingests FHIR R4 feeds from London's regional exchanges, assembles and signs each
//! patient's critical summary, keeps a change feed per cohort, serves units over QUIC with
//! mutual TLS (the sync server), stores the audit trail units upload, keeps the fleet registry,
//! and answers the admin API. It is a thin driver around the sans-IO state machines in
//! `edge-proto`; only this crate and `edge-daemon` know tokio, quinn and sled.
//!
//! Modules present in this build:
//!
//! * [`synth`] — deterministic synthetic Londoners as FHIR R4 NDJSON (`edge-hub synth`), for
//!   demos, tests and benchmarks.

pub mod synth;
