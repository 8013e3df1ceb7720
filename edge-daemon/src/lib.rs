//! `edge-daemon` as a library: the unit daemon's parts, each testable on its own. The binary
//! (`src/main.rs`) wires them together through [`daemon::run`]. Each part that decides
//! something with time in it has a pure policy (time passed in, tested in virtual time) and a
//! thin driver that does the I/O.
//!
//! * [`cache`] — the sled cache of critical summaries and the sync state (`UnitStore`).
//! * [`sync`] — the QUIC sync client driving `edge_proto::sync::UnitSession`; `sync::policy`
//!   (reconnect back-off, stall and keep-alive) and `sync::upload` (the audit-upload pipeline).
//! * [`journal`] — the tamper-evident, fsync'd, segmented audit journal (format, writer, scan,
//!   recovery).
//! * [`search`] — demographic search over the cache (normalised names, nicknames, phonetics).
//! * [`seal`] — encryption at rest: AEAD sealing of cached values, key stores, keyed index hashes.
//! * [`status`] — what the unit knows about itself (`/v1/status`).
//! * [`lan`] — the LAN HTTP API: `lan::policy` (tokens, request budget, bulk-browse window,
//!   pre-authentication limits), refusals, the auditor that records before it answers,
//!   lookups, search, metrics, the listener.
//! * [`supervisor`] — the host side of the supervisor board link: a pure policy mirroring the
//!   firmware's `step(now, inputs)` and the serial driver.
//! * [`daemon`] — `run`: start everything from a validated `edge.toml`.

pub mod allocator;
pub mod cache;
mod cards;
pub mod daemon;
pub mod disk;
pub mod index;
pub mod journal;
pub mod lan;
pub mod seal;
pub mod search;
mod sorted;
pub mod status;
pub mod supervisor;
pub mod sync;
pub mod vlog;
