//! An in-memory [`HubFeed`]: the reference implementation of the feed contract, used by the
//! simulation and by any test that needs a hub without storage.

use std::collections::{BTreeMap, VecDeque};

use super::cohort::{CohortFilter, RecordMeta};
use super::feed::{CurrentMeta, CurrentRecord, FeedBody, FeedEntry, FeedError, HubFeed};
use super::wire::{Bytes, WithdrawReason};
use crate::cbor::{self, CborError};
use crate::model::Summary;
use crate::nhs::NhsNumber;

/// Why a change was refused by [`MemFeed`].
#[derive(Debug, thiserror::Error)]
pub enum MemFeedError {
    #[error("version {given} is not newer than the current version {current}")]
    VersionNotNewer { given: u64, current: u64 },
    #[error("no such patient")]
    Unknown,
    #[error(transparent)]
    Cbor(#[from] CborError),
}

/// A change feed and current-record table held in memory.
#[derive(Debug, Default, Clone)]
pub struct MemFeed {
    log: VecDeque<FeedEntry>,
    current: BTreeMap<NhsNumber, CurrentRecord>,
    head: u64,
    oldest: u64,
}

impl MemFeed {
    pub fn new() -> Self {
        MemFeed {
            log: VecDeque::new(),
            current: BTreeMap::new(),
            head: 0,
            oldest: 1,
        }
    }

    fn check_version(
        &self,
        nhs: &NhsNumber,
        version: u64,
    ) -> Result<Option<RecordMeta>, MemFeedError> {
        match self.current.get(nhs) {
            Some(c) if version <= c.version => Err(MemFeedError::VersionNotNewer {
                given: version,
                current: c.version,
            }),
            Some(c) => Ok(Some(c.meta.clone())),
            None => Ok(None),
        }
    }

    fn push(
        &mut self,
        nhs: NhsNumber,
        version: u64,
        meta: RecordMeta,
        previous: Option<RecordMeta>,
        body: FeedBody,
    ) -> u64 {
        self.head += 1;
        let seq = self.head;
        self.current.insert(
            nhs,
            CurrentRecord {
                seq,
                version,
                meta: meta.clone(),
                body: body.clone(),
            },
        );
        self.log.push_back(FeedEntry {
            seq,
            nhs,
            version,
            meta,
            previous,
            body,
        });
        seq
    }

    /// Record a new version of a summary from its bytes and routing facts; returns its seq.
    pub fn upsert(
        &mut self,
        record: Bytes,
        meta: RecordMeta,
        version: u64,
    ) -> Result<u64, MemFeedError> {
        let nhs = meta.nhs;
        let previous = self.check_version(&nhs, version)?;
        Ok(self.push(nhs, version, meta, previous, FeedBody::Record(record)))
    }

    /// Record a new version of a summary (encoded as CBOR; its `version` is used).
    pub fn upsert_summary(&mut self, s: &Summary) -> Result<u64, MemFeedError> {
        let bytes = cbor::encode_summary(s)?;
        self.upsert(Bytes::from(bytes), RecordMeta::of_summary(s), s.version)
    }

    /// Withdraw a patient (objection, deletion) with a new version; returns the seq.
    pub fn withdraw(
        &mut self,
        nhs: &NhsNumber,
        version: u64,
        reason: WithdrawReason,
    ) -> Result<u64, MemFeedError> {
        let previous = self
            .check_version(nhs, version)?
            .ok_or(MemFeedError::Unknown)?;
        let meta = previous.clone().into_withdrawn();
        Ok(self.push(
            *nhs,
            version,
            meta,
            Some(previous),
            FeedBody::Withdrawn(reason),
        ))
    }

    /// Drop entries below `oldest` (clamped to `head + 1`; the horizon never moves back).
    pub fn compact_to(&mut self, oldest: u64) {
        let oldest = oldest.min(self.head + 1);
        if oldest <= self.oldest {
            return;
        }
        while self.log.front().is_some_and(|e| e.seq < oldest) {
            self.log.pop_front();
        }
        self.oldest = oldest;
    }

    /// Every patient's current state, in NHS-number order.
    pub fn current(&self) -> impl Iterator<Item = &CurrentRecord> {
        self.current.values()
    }
}

impl HubFeed for MemFeed {
    fn head_seq(&self) -> Result<u64, FeedError> {
        Ok(self.head)
    }

    fn oldest_retained_seq(&self) -> Result<u64, FeedError> {
        Ok(self.oldest)
    }

    fn changes_after(&self, after_seq: u64, limit: usize) -> Result<Vec<FeedEntry>, FeedError> {
        // Entries are dense from `oldest` to `head`: index arithmetic finds the start.
        let start = after_seq.saturating_add(1).max(self.oldest);
        let skip = usize::try_from(start - self.oldest).unwrap_or(usize::MAX);
        Ok(self.log.iter().skip(skip).take(limit).cloned().collect())
    }

    fn current_metas(
        &self,
        filter: &CohortFilter<'_>,
        after: Option<&NhsNumber>,
        limit: usize,
    ) -> Result<Vec<CurrentMeta>, FeedError> {
        let range = match after {
            Some(a) => self
                .current
                .range((std::ops::Bound::Excluded(*a), std::ops::Bound::Unbounded)),
            None => self.current.range(..),
        };
        Ok(range
            .filter(|(_, c)| matches!(c.body, FeedBody::Record(_)) && filter.matches(&c.meta))
            .take(limit)
            .map(|(_, c)| CurrentMeta {
                seq: c.seq,
                version: c.version,
                meta: c.meta.clone(),
            })
            .collect())
    }

    fn get(&self, nhs: &NhsNumber) -> Result<Option<CurrentRecord>, FeedError> {
        Ok(self.current.get(nhs).cloned())
    }
}
