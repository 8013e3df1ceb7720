//! The privacy officer's reviews of break-glass accesses and security alerts: one per event
//! (device, seq), with who reviewed it, when, and a note. Kept beside the audit repository —
//! the hub's sled database, or `audit_review` on PostgreSQL (migration 7) — and never changing
//! the sealed event itself. Every review call is also in the operator log.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// The longest note kept (characters).
pub const MAX_NOTE_CHARS: usize = 2_000;

/// One review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub reviewed_at: String,
    pub operator_id: String,
    pub operator_name: String,
    pub note: String,
}

/// Where reviews are kept.
#[derive(Debug)]
pub enum Reviews {
    Sled(sled::Tree),
    Pg(Arc<crate::pg::PgStore>),
}

fn key(device: &str, seq: u64) -> Vec<u8> {
    let mut k = device.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: "review".into(),
        why: e.to_string(),
    }
}

impl Reviews {
    /// The reviews in the hub's own sled database.
    pub fn open(db: &sled::Db) -> Result<Reviews, StoreError> {
        Ok(Reviews::Sled(db.open_tree("audit_review")?))
    }

    /// Keep `r` as the review of (device, seq) unless it has one; `true` when kept.
    pub fn record(&self, device: &str, seq: u64, r: &Review) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec(r).map_err(corrupt)?;
        match self {
            Reviews::Sled(t) => {
                let done = t
                    .compare_and_swap(key(device, seq), None as Option<&[u8]>, Some(bytes))?
                    .is_ok();
                t.flush()?;
                Ok(done)
            }
            Reviews::Pg(p) => p.review_insert(device, seq, &bytes),
        }
    }

    /// The reviews these events have.
    pub fn of(&self, keys: &[(String, u64)]) -> Result<HashMap<(String, u64), Review>, StoreError> {
        let mut out = HashMap::new();
        match self {
            Reviews::Sled(t) => {
                for (d, s) in keys {
                    if let Some(v) = t.get(key(d, *s))? {
                        out.insert(
                            (d.clone(), *s),
                            serde_json::from_slice(&v).map_err(corrupt)?,
                        );
                    }
                }
            }
            Reviews::Pg(p) => {
                for (d, s, v) in p.reviews_of(keys)? {
                    out.insert((d, s), serde_json::from_slice(&v).map_err(corrupt)?);
                }
            }
        }
        Ok(out)
    }
}
