//! The hub's change feed, as the sync state machine sees it: a narrow trait the hub implements
//! over its store (sled), and [`super::memfeed::MemFeed`] in memory for tests.
//!
//! # Contract
//!
//! - Every new version of a summary and every withdrawal gets the next sequence number
//!   (starting at 1; strictly increasing; never reused).
//! - For one patient, `version` strictly increases from entry to entry, withdrawals included
//!   (a withdrawal carries a new version).
//! - Each entry names the routing facts of its own version (`meta`, `withdrawn` set for a
//!   withdrawal) and of the version it replaced (`previous`, `None` for a patient's first entry).
//!   The hub needs `previous` to turn "left this unit's cohort" into a withdrawal for the unit.
//! - Compaction removes a *prefix* only: every entry from [`HubFeed::oldest_retained_seq`] to
//!   [`HubFeed::head_seq`] is present, and the horizon never moves back. A unit whose cursor
//!   is below the horizon − 1 is re-baselined.
//! - The current state (latest version of each patient, or its withdrawal) is never compacted.

use std::error::Error;

use super::cohort::{CohortFilter, RecordMeta};
use super::wire::{Bytes, WithdrawReason};
use crate::nhs::NhsNumber;

/// What an entry (or a patient's current state) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedBody {
    /// A version of the summary (CBOR).
    Record(Bytes),
    /// Withdrawn: objection or deletion.
    Withdrawn(WithdrawReason),
}

/// One entry of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    pub seq: u64,
    pub nhs: NhsNumber,
    pub version: u64,
    pub meta: RecordMeta,
    pub previous: Option<RecordMeta>,
    pub body: FeedBody,
}

/// A patient's current version, without its bytes (what a baseline scans).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentMeta {
    /// Sequence number of the current version.
    pub seq: u64,
    pub version: u64,
    pub meta: RecordMeta,
}

/// A patient's current version or withdrawal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentRecord {
    pub seq: u64,
    pub version: u64,
    pub meta: RecordMeta,
    pub body: FeedBody,
}

/// The feed's store failed.
#[derive(Debug, thiserror::Error)]
#[error("change feed unavailable")]
pub struct FeedError(#[source] pub Box<dyn Error + Send + Sync>);

/// The hub's change feed and current records.
pub trait HubFeed {
    /// The highest sequence number issued (0 when the feed is empty).
    fn head_seq(&self) -> Result<u64, FeedError>;
    /// The lowest sequence number still retained (`head + 1` when none is).
    fn oldest_retained_seq(&self) -> Result<u64, FeedError>;
    /// Up to `limit` entries with `seq > after_seq`, in order.
    fn changes_after(&self, after_seq: u64, limit: usize) -> Result<Vec<FeedEntry>, FeedError>;
    /// Up to `limit` current, non-withdrawn records matching `filter` with an NHS number after
    /// `after`, in ascending NHS-number order.
    fn current_metas(
        &self,
        filter: &CohortFilter<'_>,
        after: Option<&NhsNumber>,
        limit: usize,
    ) -> Result<Vec<CurrentMeta>, FeedError>;
    /// A patient's current version or withdrawal.
    fn get(&self, nhs: &NhsNumber) -> Result<Option<CurrentRecord>, FeedError>;
    /// [`HubFeed::get`] of each of `nhs`, in order. A feed on a database answers them in one
    /// round trip; the default asks one at a time.
    fn get_many(&self, nhs: &[NhsNumber]) -> Result<Vec<Option<CurrentRecord>>, FeedError> {
        nhs.iter().map(|n| self.get(n)).collect()
    }
}
