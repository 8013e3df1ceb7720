//! Applying an [`Apply`] to the unit's cache: the rules, once, over a narrow storage trait.
//!
//! The driver implements [`UnitStore`] over **one storage transaction** (a sled transaction
//! in edge-daemon) and calls [`apply_to`] inside it, then commits; the changes and the new
//! [`SyncState`](super::unit::SyncState) become durable together or not at all.
//! [`MemStore`] is an in-memory implementation for tests.
//!
//! Rules (a record is stored with its version and the baseline generation, "epoch", it
//! belongs to):
//!
//! - **Feed batch.** An upsert is written unless the cache holds a *newer* version (after a
//!   baseline, the catch-up replays feed entries older than versions the baseline already
//!   sent; they are skipped, so a record never goes back in time). A withdrawal removes the
//!   record unless the cache holds a newer version.
//! - **Baseline batch.** An upsert is written unconditionally, tagged with the baseline's
//!   epoch (a baseline is authoritative). A keep re-tags the stored record with the epoch if
//!   the stored version is exactly the one named; otherwise the record is left untagged (it
//!   will be evicted) and the mismatch is counted and reported: the state is stored
//!   "distrusted" so the next connection's baseline re-sends everything.
//! - **Baseline end.** Every record not tagged with the baseline's epoch is evicted.

use std::collections::BTreeMap;

use super::unit::{Apply, ApplyKind, ApplyReport};
use super::wire::{Bytes, Change};
use super::SyncState;
use crate::nhs::NhsNumber;

/// What the cache holds for a patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredVersion {
    pub version: u64,
    pub epoch: u64,
}

/// The cache operations [`apply_to`] needs, all inside one transaction.
pub trait UnitStore {
    type Error;
    fn stored(&mut self, nhs: &NhsNumber) -> Result<Option<StoredVersion>, Self::Error>;
    /// Store `record`; `digest` is its [`record_digest`](super::sign::record_digest) when the
    /// caller already has it (from verifying the batch), `None` to compute it if needed.
    fn put(
        &mut self,
        nhs: &NhsNumber,
        version: u64,
        epoch: u64,
        record: &Bytes,
        digest: Option<[u8; 32]>,
    ) -> Result<(), Self::Error>;
    fn set_epoch(&mut self, nhs: &NhsNumber, epoch: u64) -> Result<(), Self::Error>;
    fn remove(&mut self, nhs: &NhsNumber) -> Result<(), Self::Error>;
    /// Remove every record whose epoch is not `epoch`; returns how many.
    fn evict_other_epochs(&mut self, epoch: u64) -> Result<u64, Self::Error>;
    fn save_state(&mut self, state: &SyncState) -> Result<(), Self::Error>;
}

/// Apply one step to the cache and store the new sync state (inside the caller's transaction).
pub fn apply_to<S: UnitStore>(store: &mut S, apply: &Apply) -> Result<ApplyReport, S::Error> {
    let mut r = ApplyReport::default();
    let baseline = matches!(apply.kind, ApplyKind::Baseline { .. });
    for (i, c) in apply.changes.iter().enumerate() {
        let stored = store.stored(c.nhs())?;
        let newer_held = stored.is_some_and(|s| s.version > c.version());
        match c {
            Change::Upsert {
                nhs,
                version,
                record,
                ..
            } => {
                if baseline || !newer_held {
                    let digest = apply.record_digests.get(i).copied().flatten();
                    store.put(nhs, *version, apply.epoch, record, digest)?;
                    r.written += 1;
                } else {
                    r.stale_skipped += 1;
                }
            }
            Change::Withdraw { nhs, .. } => match stored {
                Some(_) if baseline || !newer_held => {
                    store.remove(nhs)?;
                    r.removed += 1;
                }
                Some(_) => r.stale_skipped += 1,
                None => {}
            },
            Change::Keep { nhs, version, .. } => match stored {
                Some(s) if s.version == *version => {
                    store.set_epoch(nhs, apply.epoch)?;
                    r.kept += 1;
                }
                _ => r.keep_mismatches += 1,
            },
        }
    }
    if let ApplyKind::FinishBaseline { epoch, .. } = apply.kind {
        r.evicted = store.evict_other_epochs(epoch)?;
    }
    if r.keep_mismatches > 0 {
        let mut state = apply.state.clone();
        state.distrust_cache();
        store.save_state(&state)?;
    } else {
        store.save_state(&apply.state)?;
    }
    Ok(r)
}

/// One cached record in [`MemStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemRecord {
    pub version: u64,
    pub epoch: u64,
    pub record: Bytes,
}

/// An in-memory cache and sync state. Clone it, apply to the clone, and swap it in to get
/// transaction semantics in tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemStore {
    pub records: BTreeMap<NhsNumber, MemRecord>,
    pub state: SyncState,
}

impl UnitStore for MemStore {
    type Error = std::convert::Infallible;
    fn stored(&mut self, nhs: &NhsNumber) -> Result<Option<StoredVersion>, Self::Error> {
        Ok(self.records.get(nhs).map(|r| StoredVersion {
            version: r.version,
            epoch: r.epoch,
        }))
    }
    fn put(
        &mut self,
        nhs: &NhsNumber,
        version: u64,
        epoch: u64,
        record: &Bytes,
        _digest: Option<[u8; 32]>,
    ) -> Result<(), Self::Error> {
        self.records.insert(
            *nhs,
            MemRecord {
                version,
                epoch,
                record: record.clone(),
            },
        );
        Ok(())
    }
    fn set_epoch(&mut self, nhs: &NhsNumber, epoch: u64) -> Result<(), Self::Error> {
        if let Some(r) = self.records.get_mut(nhs) {
            r.epoch = epoch;
        }
        Ok(())
    }
    fn remove(&mut self, nhs: &NhsNumber) -> Result<(), Self::Error> {
        self.records.remove(nhs);
        Ok(())
    }
    fn evict_other_epochs(&mut self, epoch: u64) -> Result<u64, Self::Error> {
        let before = self.records.len();
        self.records.retain(|_, r| r.epoch == epoch);
        Ok((before - self.records.len()) as u64)
    }
    fn save_state(&mut self, state: &SyncState) -> Result<(), Self::Error> {
        self.state = state.clone();
        Ok(())
    }
}
