//! `edge-daemon` as a library: the unit daemon's parts, each testable on its own. The binary
//! (`src/main.rs`) wires them together.
//!
//! * [`cache`] — the sled cache of critical summaries and the sync state (`UnitStore`).
//! * [`sync`] — the QUIC sync client driving `edge_proto::sync::UnitSession`.
//! * [`journal`] — the tamper-evident, fsync'd, segmented audit journal.
//! * [`search`] — demographic search over the cache (normalised names, nicknames, phonetics).
//! * [`seal`] — encryption at rest: AEAD sealing of cached values, key stores, keyed index hashes.
//! * [`status`] — what the unit knows about itself (`/v1/status`).
//! * [`lan`] — the LAN HTTP API.


pub mod cache;
pub mod daemon;

pub mod journal;
pub mod lan;
pub mod seal;
pub mod search;
pub mod status;
pub mod supervisor;
pub mod sync;
