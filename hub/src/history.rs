//! Each unit's recent history for the console (docs/console.md): every `[sync]
//! history_every_s` (default 300 s) the hub samples every unit it knows — how many changes it
//! is behind the feed, how old the oldest of them is, its audit backlog, the records it holds,
//! whether it is connected — and keeps the samples for [`KEEP_MS`] (a day, plus margin). Kept
//! in the hub's sled database, or `unit_history` on PostgreSQL (migration 8), where hubs sharing
//! the database share one history: a sample is keyed by (time bucket, unit), and a hub the unit
//! is connected to overwrites one taken by a hub it is not (which knows only the last cursor
//! written to the database).
//!
//! Not clinical content: unit ids and counts only.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// How long samples are kept (26 hours: a day's charts, whatever the time zone's shift).
pub const KEEP_MS: i64 = 26 * 3600 * 1000;

/// Most samples one unit's query returns (a day at one a minute is 1,440; at the shortest
/// period, one a second, the latest are kept). The fleet's totals are grouped by bucket as
/// they are read, whatever the number of units.
pub const MAX_ROWS: usize = 100_000;

/// One unit at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub device_id: String,
    /// Unix milliseconds at the start of the sample's bucket.
    pub at: i64,
    /// Changes behind the feed head (`None`: the unit has never acknowledged a cursor).
    pub lag: Option<u64>,
    /// Age in seconds of the oldest change it has not acknowledged (`None`: none, or unknown).
    pub behind_s: Option<u64>,
    /// Audit events on the unit not yet at the hub, as far as the hub can tell (`None`: never
    /// reported).
    pub audit_backlog: Option<u64>,
    /// Records the unit reported holding.
    pub records: Option<u64>,
    pub connected: bool,
}

/// The fleet at one moment: totals over every unit sampled in a bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetPoint {
    pub at: i64,
    pub units: u64,
    pub connected: u64,
    /// Units one change or more behind.
    pub behind: u64,
    /// The sum of the units' audit backlogs.
    pub audit_backlog: u64,
    /// The largest single lag.
    pub max_lag: u64,
}

/// Where samples are kept.
#[derive(Debug)]
pub enum History {
    Sled(sled::Tree),
    Pg(Arc<crate::pg::PgStore>),
}

/// sled key: bucket (big-endian, so a range is a time range), then the unit id.
fn key(at: i64, device: &str) -> Vec<u8> {
    let mut k = (at.max(0) as u64).to_be_bytes().to_vec();
    k.extend_from_slice(device.as_bytes());
    k
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: "history".into(),
        why: e.to_string(),
    }
}

/// Add `s` to its bucket's totals.
fn tally(by: &mut std::collections::BTreeMap<i64, FleetPoint>, s: &Sample) {
    let p = by.entry(s.at).or_insert_with(|| FleetPoint {
        at: s.at,
        ..FleetPoint::default()
    });
    p.units += 1;
    p.connected += u64::from(s.connected);
    p.behind += u64::from(s.lag.unwrap_or(0) > 0);
    p.audit_backlog += s.audit_backlog.unwrap_or(0);
    p.max_lag = p.max_lag.max(s.lag.unwrap_or(0));
}

/// Totals per bucket, oldest first.
pub fn fleet_points(samples: &[Sample]) -> Vec<FleetPoint> {
    let mut by = std::collections::BTreeMap::new();
    for s in samples {
        tally(&mut by, s);
    }
    by.into_values().collect()
}

impl History {
    /// The history in the hub's own sled database.
    pub fn open(db: &sled::Db) -> Result<History, StoreError> {
        Ok(History::Sled(db.open_tree("unit_history")?))
    }

    /// The history where `hub` keeps it: the shared database, else its sled database.
    pub fn of_hub(hub: &crate::server::Hub) -> Result<History, StoreError> {
        Ok(match &hub.shared {
            Some(pg) => History::Pg(pg.clone()),
            None => History::open(&hub.local)?,
        })
    }

    /// Keep these samples (one bucket's), replacing a sample of the same unit and bucket only
    /// when the new one was taken while the unit was connected and the old one was not; drop
    /// samples older than [`KEEP_MS`] before `now`.
    pub fn record(&self, samples: &[Sample], now: i64) -> Result<(), StoreError> {
        let cutoff = now.saturating_sub(KEEP_MS);
        match self {
            History::Sled(t) => {
                for s in samples {
                    let k = key(s.at, &s.device_id);
                    let keep_old = match t.get(&k)? {
                        Some(v) => {
                            let old: Sample = serde_json::from_slice(&v).map_err(corrupt)?;
                            old.connected || !s.connected
                        }
                        None => false,
                    };
                    if !keep_old {
                        t.insert(k, serde_json::to_vec(s).map_err(corrupt)?)?;
                    }
                }
                let old: Vec<sled::IVec> = t
                    .range(..key(cutoff, ""))
                    .keys()
                    .collect::<Result<_, _>>()?;
                for k in old {
                    t.remove(k)?;
                }
                t.flush()?;
                Ok(())
            }
            History::Pg(p) => p.history_record(samples, cutoff),
        }
    }

    /// The fleet's totals per bucket since `since` (Unix ms), oldest first, over every sample
    /// (grouped as they are read: no limit on the number of units).
    pub fn fleet(&self, since: i64) -> Result<Vec<FleetPoint>, StoreError> {
        match self {
            History::Sled(t) => {
                let mut by = std::collections::BTreeMap::new();
                for kv in t.range(key(since, "")..) {
                    let (_, v) = kv?;
                    tally(&mut by, &serde_json::from_slice(&v).map_err(corrupt)?);
                }
                Ok(by.into_values().collect())
            }
            History::Pg(p) => p.history_fleet(since),
        }
    }

    /// Samples since `since` (Unix ms), oldest first: one unit's, or every unit's (the latest
    /// [`MAX_ROWS`] when there are more).
    pub fn since(&self, device: Option<&str>, since: i64) -> Result<Vec<Sample>, StoreError> {
        match self {
            History::Sled(t) => {
                let mut out = Vec::new();
                for kv in t.range(key(since, "")..) {
                    let (k, v) = kv?;
                    // The unit id is the key's tail: skip other units without decoding.
                    if device.is_some_and(|d| k.get(8..) != Some(d.as_bytes())) {
                        continue;
                    }
                    out.push(serde_json::from_slice(&v).map_err(corrupt)?);
                }
                let extra = out.len().saturating_sub(MAX_ROWS);
                out.drain(..extra);
                Ok(out)
            }
            History::Pg(p) => p.history_since(device, since, MAX_ROWS),
        }
    }
}

/// One sample per unit, from the rows `GET /admin/devices` would answer now.
pub fn take(hub: &crate::server::Hub, at: i64, now: i64) -> anyhow::Result<Vec<Sample>> {
    let rows = crate::server::device_rows(hub)?;
    Ok(rows
        .iter()
        .filter(|r| !r["revoked"].as_bool().unwrap_or(false) && r["wipe_sent"].is_null())
        .filter_map(|r| {
            let device_id = r["device_id"].as_str()?.to_owned();
            let head = r["head"].as_u64().unwrap_or(0);
            let lag = r["cursor"].as_u64().map(|c| head.saturating_sub(c));
            let behind_s = r["oldest_missing_at"]
                .as_str()
                .and_then(|t| edge_proto::time::UnixMillis::parse_rfc3339(t).ok())
                .map(|t| edge_proto::time::UnixMillis(now).seconds_since(t));
            Some(Sample {
                device_id,
                at,
                lag,
                behind_s,
                audit_backlog: r["audit_backlog"].as_u64(),
                records: r["health"]["records"].as_u64(),
                connected: r["connected"].as_bool().unwrap_or(false),
            })
        })
        .collect())
}

/// Sample every unit every `[sync] history_every_s`, for as long as the hub runs: the first
/// sample at once, then at each bucket boundary.
pub fn spawn_sampler(hub: Arc<crate::server::Hub>) -> anyhow::Result<()> {
    let history = Arc::new(History::of_hub(&hub)?);
    let every_ms =
        i64::try_from(hub.config.sync.history_every_s.clamp(1, 3600)).unwrap_or(300) * 1000;
    tokio::spawn(async move {
        let mut last_at: Option<i64> = None;
        loop {
            let now = crate::server::now().0;
            // This period's bucket, and never the one just sampled again (a wake a little
            // early, or a clock stepped back).
            let at =
                (now - now.rem_euclid(every_ms)).max(last_at.map_or(i64::MIN, |l| l + every_ms));
            last_at = Some(at);
            let (h, hist) = (hub.clone(), history.clone());
            let done = crate::server::blocking(move || -> anyhow::Result<usize> {
                let samples = take(&h, at, now)?;
                hist.record(&samples, now)?;
                Ok(samples.len())
            })
            .await;
            match done {
                Ok(Ok(n)) => tracing::debug!(units = n, "unit history sampled"),
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot sample the units' history")
                }
            }
            let now = crate::server::now().0;
            let next = at + every_ms;
            // At most one period (a clock stepped back must not stop the sampling for hours).
            let wait = u64::try_from((next - now).clamp(200, every_ms)).unwrap_or(200);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    });
    Ok(())
}
