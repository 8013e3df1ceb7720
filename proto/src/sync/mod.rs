//! The sync protocol between a unit and the hub, as sans-IO state machines for both ends.
//!
//! A unit pulls its cohort's critical summaries from the hub's change feed and stays live; the
//! hub re-baselines it when it cannot be brought up to date from the feed. Nothing here does
//! I/O, reads a clock or draws a random number: drivers (edge-daemon, edge-hub) move bytes,
//! run transactions and pass `now` in. The protocol is described in `docs/sync-protocol.md`.
//!
//! - [`wire`]: the messages; [`frame`]: their framing on a stream, bounded and panic-free.
//! - [`sign`]: what the hub signs and the unit verifies (Ed25519 per batch).
//! - [`cohort`]: which records a unit receives ([`cohort::in_cohort`]).
//! - [`feed`]: the hub's change feed as a trait; [`memfeed`]: an in-memory implementation.
//! - [`hub`]: [`HubSession`], the hub's end of one connection.
//! - [`unit`]: [`UnitSession`], the unit's end; [`store`]: applying its output atomically.

pub mod cohort;
pub mod compress;
pub mod feed;
pub mod frame;
pub mod hub;
pub mod memfeed;
pub mod sign;
pub mod store;
pub mod unit;
pub mod wire;

pub use cohort::{in_cohort, CohortFilter, RecordMeta};
pub use compress::{DeflateFramer, InflateDeframer, PullCompression, PullFramer, ZstdFramer};
pub use feed::{CurrentMeta, CurrentRecord, FeedBody, FeedEntry, FeedError, HubFeed};
pub use frame::{encode_frame, FrameDecoder, FrameError, MAX_FRAME_BYTES};
pub use hub::{HubConfig, HubError, HubSession, SessionProgress, UnitProfile};
pub use memfeed::MemFeed;
pub use store::{apply_to, MemStore, UnitStore};
pub use unit::{
    Apply, ApplyKind, ApplyReport, FetchResult, ProtocolError, SyncState, UnitConfig, UnitEvent,
    UnitSession,
};
pub use wire::{
    Batch, BatchKind, BearerToken, Bytes, Change, FetchOutcome, FetchRefusal, Hello,
    RebaselineReason, RefusalCode, StreamKind, SyncMode, ToHub, ToUnit, UnitHealth, Welcome,
    WithdrawReason,
};

/// The sync protocol version this build speaks (also in the ALPN, [`ALPN`]).
pub const PROTOCOL_VERSION: u16 = 1;

/// The QUIC ALPN for this protocol version.
pub const ALPN: &[u8] = b"kerbside/1";
