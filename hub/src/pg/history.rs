//! The units' history on PostgreSQL (`migrations/0008_unit_history.sql`; see
//! [`crate::history`]): one row per (bucket, unit), shared by every hub on the database.

use super::{block_on, client, client_mut, pg, PgStore};
use crate::history::Sample;
use crate::store::StoreError;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: "unit_history".into(),
        why: e.to_string(),
    }
}

impl PgStore {
    /// Store one bucket's samples (a connected unit's sample replaces a disconnected one's, as
    /// a hub the unit is on knows its live cursor) and drop those before `cutoff`; one
    /// transaction.
    pub fn history_record(&self, samples: &[Sample], cutoff: i64) -> Result<(), StoreError> {
        let mut c = self.conn()?;
        let tx = block_on(client_mut(&mut c).transaction()).map_err(pg)?;
        let stmt = block_on(tx.prepare(
            "INSERT INTO unit_history (bucket, device, connected, sample) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (bucket, device) DO UPDATE SET connected = EXCLUDED.connected, sample = EXCLUDED.sample \
             WHERE EXCLUDED.connected AND NOT unit_history.connected",
        ))
        .map_err(pg)?;
        for s in samples {
            let json = serde_json::to_value(s).map_err(corrupt)?;
            block_on(tx.execute(&stmt, &[&s.at, &s.device_id, &s.connected, &json])).map_err(pg)?;
        }
        block_on(tx.execute("DELETE FROM unit_history WHERE bucket < $1", &[&cutoff]))
            .map_err(pg)?;
        block_on(tx.commit()).map_err(pg)
    }

    /// The fleet's totals per bucket from `since`, oldest first, grouped in the database.
    pub fn history_fleet(&self, since: i64) -> Result<Vec<crate::history::FleetPoint>, StoreError> {
        let c = self.conn()?;
        let rows = block_on(client(&c).query(
            "SELECT bucket, count(*), count(*) FILTER (WHERE connected), \
             count(*) FILTER (WHERE coalesce((sample->>'lag')::bigint, 0) > 0), \
             coalesce(sum((sample->>'audit_backlog')::bigint), 0)::bigint, \
             coalesce(max((sample->>'lag')::bigint), 0)::bigint \
             FROM unit_history WHERE bucket >= $1 GROUP BY bucket ORDER BY bucket",
            &[&since],
        ))
        .map_err(pg)?;
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(rows
            .iter()
            .map(|r| crate::history::FleetPoint {
                at: r.get(0),
                units: u(r.get(1)),
                connected: u(r.get(2)),
                behind: u(r.get(3)),
                audit_backlog: u(r.get(4)),
                max_lag: u(r.get(5)),
            })
            .collect())
    }

    /// Samples from `since`, oldest first (then by unit), the latest `limit`.
    pub fn history_since(
        &self,
        device: Option<&str>,
        since: i64,
        limit: usize,
    ) -> Result<Vec<Sample>, StoreError> {
        let c = self.conn()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match device {
            Some(d) => block_on(client(&c).query(
                "SELECT sample FROM unit_history WHERE device = $1 AND bucket >= $2 ORDER BY bucket DESC LIMIT $3",
                &[&d, &since, &limit],
            )),
            None => block_on(client(&c).query(
                "SELECT sample FROM unit_history WHERE bucket >= $1 ORDER BY bucket DESC, device DESC LIMIT $2",
                &[&since, &limit],
            )),
        }
        .map_err(pg)?;
        rows.iter()
            .rev()
            .map(|r| serde_json::from_value(r.get::<_, serde_json::Value>(0)).map_err(corrupt))
            .collect()
    }
}

impl PgStore {
    /// Add an ingest's entry and keep only the latest `keep`; one transaction.
    pub fn ingest_log_record(
        &self,
        entry: &serde_json::Value,
        keep: usize,
    ) -> Result<(), StoreError> {
        let mut c = self.conn()?;
        let tx = block_on(client_mut(&mut c).transaction()).map_err(pg)?;
        block_on(tx.execute("INSERT INTO ingest_log (entry) VALUES ($1)", &[entry])).map_err(pg)?;
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        block_on(tx.execute(
            "DELETE FROM ingest_log WHERE id <= (SELECT id FROM ingest_log ORDER BY id DESC OFFSET $1 LIMIT 1)",
            &[&keep],
        ))
        .map_err(pg)?;
        block_on(tx.commit()).map_err(pg)
    }

    /// The latest `n` ingest entries, newest first.
    pub fn ingest_log_latest(&self, n: usize) -> Result<Vec<serde_json::Value>, StoreError> {
        let c = self.conn()?;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        Ok(block_on(client(&c).query(
            "SELECT entry FROM ingest_log ORDER BY id DESC LIMIT $1",
            &[&n],
        ))
        .map_err(pg)?
        .iter()
        .map(|r| r.get::<_, serde_json::Value>(0))
        .collect())
    }
}
